#!/usr/bin/env bash
# libckpt preloaded into processes that never touch CUDA prints nothing and
# exits as the program does.
set -u
lib=$1
fail=0
run() {
  local out
  out=$(LD_PRELOAD=$lib "$@" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL: '$*' under LD_PRELOAD: exit $rc, output: '$out'"
    fail=1
  fi
}
run /bin/true
run python3 -c pass
run bash -c 'ls / >/dev/null'
run sh -c 'exit 0'
# Even with a bad CKPT_* value: nothing is read until CUDA is used.
CKPT_MODE=bogus run /bin/true
out=$(LD_PRELOAD=$lib bash -c 'exit 3' 2>&1); rc=$?
[ $rc -eq 3 ] && [ -z "$out" ] || { echo "FAIL: exit status not preserved ($rc) or output '$out'"; fail=1; }
[ $fail -eq 0 ] && echo "harmless: ok"
exit $fail
