"""Shared paths and helpers for the Python tests.

The package under test is the repository's own copy (scripts/ckpt), first on
sys.path whether or not it is pip-installed. libckpt.so is looked for in
$CKPT_BUILD_DIR/preload (default <repo>/build/preload); tests that need it
skip, saying so, when it has not been built.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
BUILD_DIR = pathlib.Path(os.environ.get("CKPT_BUILD_DIR") or REPO / "build")
LIBCKPT = BUILD_DIR / "preload" / "libckpt.so"

if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

# Variables that would change what a child process does; tests set their own.
_CKPT_VARIABLES = ("LD_PRELOAD", "CKPT_LIBRARY", "CKPT_PATCH", "CKPT_REGIONS", "PYTHONPATH")


@pytest.fixture
def libckpt():
    """Path of the built libckpt.so; skips the test when it is not built."""
    if not LIBCKPT.is_file():
        pytest.skip(f"libckpt.so is not built at {LIBCKPT} (meson setup build && meson compile -C build, "
                    "or set CKPT_BUILD_DIR)")
    return LIBCKPT


def child_env(preload=None, pythonpath=(), **extra):
    """A clean environment for a child Python: no inherited CKPT_*/preload
    settings, the repo's scripts/ importable, libckpt preloaded if given."""
    env = {k: v for k, v in os.environ.items() if k not in _CKPT_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(SCRIPTS)])
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    env["PYTHONWARNINGS"] = "default"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(args, env, timeout=300, cwd=None):
    """Runs `python3 args...`; returns the CompletedProcess (text, both streams)."""
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
