"""`python3 -m ckpt COMMAND`: the package's command-line tools."""

import sys

USAGE = """\
usage: python3 -m ckpt COMMAND [ARGS...]

The Python side of libckpt (activation checkpointing by offload to host
memory, as an LD_PRELOAD library). Commands:

  run [OPTIONS] -- CMD...   the same as ckpt-run: CMD with libckpt preloaded
                            (python3 -m ckpt run --help)
  stats [ARGS...]           the same as ckpt-stats: live counters, traces, plots
                            (python3 -m ckpt stats --help)
  env [--export]            what a launcher adds to the environment so that
                            CKPT_PATCH / CKPT_REGIONS take effect at start-up
  library                   where libckpt.so is: the bundled copy of a pip
                            install, the one preloaded in this process, or none
  -h, --help                this text

In a program: `import ckpt` (regions, stats, offload/restore), or
`from ckpt import checkpointing` for DeepSpeed's activation-checkpointing API.
"""


def _library() -> int:
    from . import library

    lib = library.get_or_none()
    bundled = library.bundled_path()
    print(f"bundled: {bundled or '(none: not a pip install)'}")
    print(f"loaded:  {(lib.path or '(preloaded)') if lib else '(none in this process)'}")
    return 0 if (bundled or lib) else 1


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "env":
        from .launch import main as env_main

        return env_main(rest)
    if cmd == "run":
        from .run import main as run_main

        return run_main(rest)
    if cmd == "stats":
        from .stats_cli import main as stats_main

        return stats_main(rest)
    if cmd == "library":
        return _library()
    sys.stderr.write(f"python3 -m ckpt: unknown command {cmd!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
