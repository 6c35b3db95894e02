"""ckpt-run: run a command with libckpt preloaded.

The console script `ckpt-run` (pip install) and scripts/ckpt-run (the
repository's launcher) both end here. Only the standard library is used:
the launcher must start fast and must not import torch.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

from . import library
from .launch import BOOT_DIR, launch_env

PROG = "ckpt-run"

USAGE = """\
usage: ckpt-run [--sim] [--mode MODE] [--patch torch|none] [--regions CLASSES]
                [--library PATH] [--quiet] [--] CMD [ARGS...]

Runs CMD with libckpt preloaded (LD_PRELOAD), the ckpt Python package loaded
at interpreter start when CKPT_PATCH/CKPT_REGIONS ask for it, and libckpt's
summary line printed when CMD exits (CKPT_STATS_AT_EXIT=1): the device peak
without and with libckpt, the stall, then the counters (to CKPT_DEBUG_FILE
when that is set).

  --sim             use the simulated driver, NCCL and cuRAND (tests/simdev of a
                    build tree: libcuda.so.1, libnccl.so.2, libcurand.so.10)
                    instead of the real ones
  --mode MODE       CKPT_MODE: none, host, peer or peer+host (default: as set,
                    else host)
  --patch WHAT      CKPT_PATCH for Python programs: torch (default: every
                    torch.utils.checkpoint call becomes a region) or none
  --regions CLASSES CKPT_REGIONS: comma-separated module class names whose
                    forward is a region
  --library PATH    the libckpt.so to preload (also CKPT_LIBRARY)
  --quiet           no summary line at exit (CKPT_STATS_AT_EXIT=0)
  -h, --help        this text

The library is, in this order: --library, $CKPT_LIBRARY,
$CKPT_BUILD_DIR/preload/libckpt.so, <repo>/build/preload/libckpt.so (when run
from a source tree), the copy bundled with the installed package.
Exit status: CMD's; 2 for a usage error or no library; 127 when CMD is not
found, 126 when it cannot be executed.
"""

_MODES = ("none", "host", "peer", "peer+host")
_PATCHES = ("torch", "none")
# option -> (environment variable, accepted values or None)
_VALUED = {
    "--mode": ("CKPT_MODE", _MODES),
    "--patch": ("CKPT_PATCH", _PATCHES),
    "--regions": ("CKPT_REGIONS", None),
    "--library": ("CKPT_LIBRARY", None),
}


class UsageError(Exception):
    pass


def _fail(message: str, status: int = 2) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    if status == 2:
        sys.stderr.write(f"{PROG}: see ckpt-run --help\n")
    return status


def parse(argv: Sequence[str]):
    """(settings, command): settings maps option names to values."""
    settings: Dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a in ("-h", "--help"):
            settings["help"] = "1"
            return settings, []
        if a == "--sim":
            settings["sim"] = "1"
        elif a == "--quiet":
            settings["quiet"] = "1"
        elif a.split("=", 1)[0] in _VALUED:
            name = a.split("=", 1)[0]
            if "=" in a:
                value = a.split("=", 1)[1]
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                i += 1
                value = args[i]
            else:
                value = ""
            accepted = _VALUED[name][1]
            if not value:
                what = ", ".join(accepted) if accepted else ("a path" if name == "--library" else "a value")
                raise UsageError(f"{name} needs a value ({what})")
            if accepted and value.lower() not in accepted:
                raise UsageError(f"{name} {value}: not one of {', '.join(accepted)}")
            settings[name] = value
        elif a.startswith("-"):
            raise UsageError(f"unknown option {a}")
        else:
            break
        i += 1
    return settings, args[i:]


def bundled_library() -> Optional[str]:
    """libckpt.so installed inside the package (pip install), if there."""
    return library.bundled_path()


def find_library(settings: Dict[str, str], env: Dict[str, str], repo: Optional[str]) -> List[str]:
    """Candidate paths, first = preferred."""
    out = []
    if settings.get("--library"):
        return [settings["--library"]]
    if env.get("CKPT_LIBRARY"):
        return [env["CKPT_LIBRARY"]]
    build = build_dir(env, repo)
    if build:
        out.append(os.path.join(build, "preload", "libckpt.so"))
    b = bundled_library()
    if b:
        out.append(b)
    return out


def build_dir(env: Dict[str, str], repo: Optional[str]) -> Optional[str]:
    if env.get("CKPT_BUILD_DIR"):
        return env["CKPT_BUILD_DIR"]
    if repo:
        return os.path.join(repo, "build")
    return None


def _resolve_command(cmd: str, path: str) -> Optional[str]:
    if os.sep in cmd:
        return cmd if os.path.exists(cmd) else None
    return shutil.which(cmd, path=path)


def prepare(argv: Sequence[str], env: Dict[str, str], repo: Optional[str] = None):
    """(environment, command) to exec; raises UsageError."""
    settings, command = parse(argv)
    if settings.get("help"):
        return None, []
    if not command:
        raise UsageError("no command given (ckpt-run [options] -- CMD [ARGS...])")
    env = dict(env)
    candidates = find_library(settings, env, repo)
    lib = next((c for c in candidates if os.path.isfile(c)), None)
    if lib is None:
        if candidates:
            tried = ", ".join(candidates)
            raise UsageError(f"libckpt.so not found (tried {tried}): build it (meson setup build && "
                             "meson compile -C build), pip install the package, or set CKPT_LIBRARY")
        raise UsageError("libckpt.so not found: set CKPT_LIBRARY=/path/to/libckpt.so or CKPT_BUILD_DIR")
    lib = os.path.abspath(lib)
    if settings.get("sim"):
        build = build_dir(env, repo)
        simdir = os.path.join(build, "tests", "simdev") if build else None
        if not simdir or not os.path.isfile(os.path.join(simdir, "libcuda.so.1")):
            where = os.path.join(simdir, "libcuda.so.1") if simdir else "a build tree (set CKPT_BUILD_DIR)"
            raise UsageError(f"--sim: the simulated driver is not built: {where}")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (os.path.abspath(simdir),
                                                             env.get("LD_LIBRARY_PATH", "")) if p)
    for name, (var, _) in _VALUED.items():
        if name in settings and name != "--library":
            env[var] = settings[name]
    if settings.get("quiet"):
        env["CKPT_STATS_AT_EXIT"] = "0"
    env["LD_PRELOAD"] = ":".join(p for p in (env.get("LD_PRELOAD", ""), lib) if p)
    env.setdefault("CKPT_STATS_AT_EXIT", "1")
    if not env.get("CKPT_PATCH"):
        env["CKPT_PATCH"] = "torch"
    if not env.get("CKPT_LIBRARY"):
        env.pop("CKPT_LIBRARY", None)
    # The Python package: loaded at interpreter start (its boot sitecustomize
    # chains to any other sitecustomize), and importable from a source tree.
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if repo:
        scripts = os.path.dirname(os.path.dirname(BOOT_DIR))
        parts = [scripts] + [p for p in parts if p != scripts]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(launch_env(env))
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    resolved = _resolve_command(command[0], env.get("PATH", os.defpath))
    if resolved is None:
        where = "no such file" if os.sep in command[0] else "not found on PATH"
        raise CommandError(127, f"{command[0]}: {where}")
    if os.path.isdir(resolved) or not os.access(resolved, os.X_OK):
        raise CommandError(126, f"{command[0]}: not an executable file")
    return env, command


class CommandError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def source_tree() -> Optional[str]:
    """The repository this package sits in (<repo>/scripts/ckpt), or None when installed."""
    scripts = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.dirname(scripts)
    if os.path.basename(scripts) == "scripts" and os.path.isfile(os.path.join(repo, "meson.build")):
        return repo
    return None


def main(argv: Optional[Sequence[str]] = None, repo: Optional[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if repo is None:
        repo = source_tree()
    try:
        env, command = prepare(argv, dict(os.environ), repo)
    except UsageError as e:
        return _fail(str(e))
    except CommandError as e:
        return _fail(str(e), e.status)
    if env is None:
        sys.stdout.write(USAGE)
        return 0
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        return _fail(f"{command[0]}: {e.strerror}", 126)
    return 126  # not reached


def console() -> int:
    """Entry point of the installed `ckpt-run` console script."""
    return main()


if __name__ == "__main__":
    sys.exit(main())
