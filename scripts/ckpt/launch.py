"""What a launcher must add to the environment so that ckpt loads at interpreter start.

With CKPT_PATCH or CKPT_REGIONS set, the training script is not supposed to
import ckpt, so Python itself has to: the folder scripts/ckpt/_boot holds a
`sitecustomize` module, which Python imports at start-up from the first
sys.path entry that has one. The launcher therefore sets

    PYTHONPATH=<repo>/scripts/ckpt/_boot[:<the PYTHONPATH it was given>]

(along with LD_PRELOAD=<build>/preload/libckpt.so, which is its own business).
That sitecustomize imports `ckpt.autopatch` from the copy of the package it
sits in, then runs the `sitecustomize` that it hides, if any. In bash:

    eval "$(python3 <repo>/scripts/ckpt/launch.py --export)"

or mirror it: if [ -n "$CKPT_PATCH$CKPT_REGIONS" ]; then
export PYTHONPATH="<repo>/scripts/ckpt/_boot${PYTHONPATH:+:$PYTHONPATH}"; fi
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Mapping

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")

# CKPT_PATCH values that mean "no patch".
_PATCH_OFF = ("", "0", "none", "off", "no", "false")


def wants_boot(env: Mapping[str, str]) -> bool:
    """True when env asks for an integration that needs ckpt loaded at start-up."""
    patch = env.get("CKPT_PATCH", "").strip().lower()
    regions = env.get("CKPT_REGIONS", "").strip()
    return patch not in _PATCH_OFF or bool(regions)


def _same_dir(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def launch_env(env: Mapping[str, str]) -> Dict[str, str]:
    """The variables to add to (or replace in) `env` before exec'ing Python.

    Empty when neither CKPT_PATCH nor CKPT_REGIONS asks for anything, or when
    the boot folder already comes first on PYTHONPATH.
    """
    if not wants_boot(env):
        return {}
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts and _same_dir(parts[0], BOOT_DIR):
        return {}
    parts = [BOOT_DIR] + [p for p in parts if not _same_dir(p, BOOT_DIR)]
    return {"PYTHONPATH": os.pathsep.join(parts)}


def main(argv=None) -> int:
    """Prints launch_env(os.environ): KEY=VALUE lines, or `export` lines with --export."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    export = "--export" in args
    for key, value in launch_env(os.environ).items():
        print(f"export {key}={shlex.quote(value)}" if export else f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
