#!/bin/sh
# `meson test --wrapper` for scripts/check-sanitizers.
# - A test that preloads the sanitizer-instrumented libckpt.so gets the
#   sanitizer runtime in front of it in LD_PRELOAD (the runtime must come
#   first in the initial library list, which also matters for programs that
#   are not instrumented themselves).
# - With SANITIZER_LOG_DIR set, the reports of this test (its processes and
#   every child they start) go to a directory of their own,
#   $SANITIZER_LOG_DIR/test.PID (the test's command line and CKPT_*/SIMDEV_*
#   settings in its file "command"), and a test that fails while it has reports exits 66, the
#   exit code of a sanitizer report: check-sanitizers then knows that the
#   test failed because of reports (which count anyway), not by itself.
if [ -n "${LD_PRELOAD:-}" ] && [ -n "${SANITIZER_RUNTIME:-}" ]; then
  case ":$LD_PRELOAD:" in
  *":$SANITIZER_RUNTIME:"*) ;;
  *) LD_PRELOAD="$SANITIZER_RUNTIME:$LD_PRELOAD" ;;
  esac
  export LD_PRELOAD
fi
[ -n "${SANITIZER_LOG_DIR:-}" ] || exec "$@"

dir=$SANITIZER_LOG_DIR/test.$$
mkdir -p "$dir" || exec "$@"
# (with the settings that tell apart tests of one program and arguments)
echo "$* $(env | grep -E '^(CKPT|SIMDEV)_' | sort | tr '\n' ' ')" >"$dir/command"
# The last log_path in an options string wins.
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$dir/asan"
[ -n "${UBSAN_OPTIONS:-}" ] && export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$dir/ubsan"
[ -n "${TSAN_OPTIONS:-}" ] && export TSAN_OPTIONS="$TSAN_OPTIONS:log_path=$dir/tsan"
# meson stops a test by signalling its process group: the test goes with us.
"$@"
rc=$?
n=0
for f in "$dir"/*; do
  case $f in */command) continue ;; esac
  [ -s "$f" ] && n=$((n + 1))
done
if [ $n -gt 0 ]; then
  echo "sanitizer-wrap: $n sanitizer report file(s) from this test in $dir" >&2
  [ $rc -ne 0 ] && rc=66
fi
exit $rc
