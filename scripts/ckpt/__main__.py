"""`python3 -m ckpt env [--export]`: the environment additions of ckpt.launch_env."""

import sys

from .launch import main as _env_main

USAGE = "usage: python3 -m ckpt env [--export]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "env":
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(_env_main(sys.argv[2:]))
