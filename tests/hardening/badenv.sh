#!/usr/bin/env bash
# Bad environments: each case must end with the program's data intact (the
# program checks every byte and exits 0), libckpt degraded to pass-through
# where it has to, and at most the one clear message the case expects on
# stderr (lines starting "libckpt[").
#
#   badenv.sh LIBCKPT_SO SIMDEV_DIR HARD_BADENV HARD_NODRIVER
#
# Cases that need another user (a file of someone else's, a directory we
# cannot write) run the program as nobody when we are root, and are skipped
# otherwise.
set -u
lib=$1 simdev=$2 prog=$3 nodriver=$4
fail=0 passed=0 skipped=0
tmp=$(mktemp -d)
chmod 755 "$tmp"
trap 'rm -rf "$tmp"; find /dev/shm -maxdepth 1 -name "libckpt.*.*" -type l -lname "$tmp/*" -delete 2>/dev/null' EXIT

# A clean libckpt environment: the outer CKPT_* variables must not leak in.
for v in $(env | sed -n 's/^\(CKPT_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
unset SIMDEV_FAIL SIMDEV_HOST_BYTES PYTORCH_CUDA_ALLOC_CONF
export CKPT_MODE=host CKPT_MIN_BYTES=1 CKPT_DEBUG=WARN NVTX_INJECTION64_PATH=

as_other=()
other_uid=
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && getent passwd nobody >/dev/null; then
  other_uid=$(id -u nobody)
  as_other=(setpriv --reuid="$other_uid" --regid="$(id -g nobody)" --clear-groups)
fi

out=$tmp/stderr
# run NAME EXPECT_LINES PATTERN -- CMD...: CMD must exit 0 and print exactly
# EXPECT_LINES libckpt lines ("<=N": at most N), one of them matching PATTERN
# (if given), and nothing on stdout.
run() {
  local name=$1 want=$2 pattern=$3
  shift 4
  "$@" >"$tmp/stdout" 2>"$out"
  local rc=$? lines
  lines=$(grep -c '^libckpt\[' "$out")
  local why=
  [ $rc -eq 0 ] || why="exit status $rc"
  if [ "${want#<=}" != "$want" ]; then
    [ -z "$why" ] && [ "$lines" -gt "${want#<=}" ] && why="$lines libckpt lines, expected at most ${want#<=}"
    want=${want#<=}
  else
    [ -z "$why" ] && [ "$lines" -ne "$want" ] && why="$lines libckpt lines, expected $want"
  fi
  [ -z "$why" ] && [ -n "$pattern" ] && [ "$want" -gt 0 ] && ! grep -q -- "$pattern" "$out" && why="no line matching '$pattern'"
  [ -z "$why" ] && [ -s "$tmp/stdout" ] && why="unexpected output on stdout"
  if [ -n "$why" ]; then
    echo "FAIL $name: $why"
    sed 's/^/    | /' "$out" | head -40
    [ "$(wc -l <"$out")" -gt 40 ] && echo "    | ... ($(wc -l <"$out") lines)"
    fail=1
  else
    echo "ok   $name"
    passed=$((passed + 1))
  fi
}
skip() { echo "skip $1: $2"; skipped=$((skipped + 1)); }
# fact NAME CONDITION-TEXT COMMAND...: an extra check after a case.
fact() {
  local name=$1 what=$2
  shift 2
  if ! "$@"; then echo "FAIL $name: $what"; fail=1; fi
}

sim=(env LD_PRELOAD="$lib" LD_LIBRARY_PATH="$simdev")

# ---- the driver ------------------------------------------------------------

if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  skip driver-missing "this machine has a real libcuda.so.1"
else
  run driver-missing "<=1" "" -- env LD_PRELOAD="$lib" LD_LIBRARY_PATH="$tmp/empty" "$nodriver"
fi

# A driver without VMM: allocations pass through untagged, one warning.
run no-vmm-cuMemCreate 1 "untagged\|pass-through\|VMM\|virtual memory" -- \
  env SIMDEV_FAIL=cuMemCreate:*:CUDA_ERROR_NOT_SUPPORTED "${sim[@]}" "$prog" passthrough
run no-vmm-cuMemAddressReserve 1 "untagged\|pass-through\|VMM\|virtual memory" -- \
  env SIMDEV_FAIL=cuMemAddressReserve:*:CUDA_ERROR_NOT_SUPPORTED "${sim[@]}" "$prog" passthrough
# No host-located memory: survivors stay on the device, one warning.
run no-host-memory 1 "host" -- env SIMDEV_HOST_BYTES=0 "${sim[@]}" "$prog" nohost

# ---- PYTORCH_CUDA_ALLOC_CONF ---------------------------------------------------

run alloc-conf-incompatible 1 "PYTORCH_CUDA_ALLOC_CONF" -- \
  env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "${sim[@]}" "$prog" work
run alloc-conf-compatible 0 "" -- \
  env PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync "${sim[@]}" "$prog" work
run alloc-conf-no-cuda-process 0 "" -- \
  env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True LD_PRELOAD="$lib" /bin/true
if command -v python3 >/dev/null; then
  run alloc-conf-no-cuda-python 0 "" -- \
    env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True LD_PRELOAD="$lib" python3 -c pass
fi

# ---- CKPT_DEBUG_FILE (a bad CKPT_KEEP_LAST makes one warning to log) -----------

mkdir "$tmp/ro" && chmod 555 "$tmp/ro"
if [ -n "$other_uid" ]; then
  run debug-file-unwritable-dir 2 "cannot open CKPT_DEBUG_FILE" -- \
    "${as_other[@]}" env CKPT_DEBUG_FILE="$tmp/ro/log" CKPT_KEEP_LAST=bogus "${sim[@]}" "$prog" work
  fact debug-file-unwritable-dir "the warning itself went missing" grep -q "CKPT_KEEP_LAST='bogus'" "$out"
  # Another user's log file: never appended to.
  mkdir -m 1777 "$tmp/shared" && echo "someone else's" >"$tmp/shared/log" && chmod 644 "$tmp/shared/log"
  run debug-file-other-users 2 "cannot open CKPT_DEBUG_FILE" -- \
    "${as_other[@]}" env CKPT_DEBUG_FILE="$tmp/shared/log" CKPT_KEEP_LAST=bogus "${sim[@]}" "$prog" work
  fact debug-file-other-users "the other user's file changed" \
    test "$(cat "$tmp/shared/log")" = "someone else's"
elif [ "$(id -u)" != 0 ]; then
  run debug-file-unwritable-dir 2 "cannot open CKPT_DEBUG_FILE" -- \
    env CKPT_DEBUG_FILE="$tmp/ro/log" CKPT_KEEP_LAST=bogus "${sim[@]}" "$prog" work
  skip debug-file-other-users "needs root to create another user's file"
else
  skip debug-file-unwritable-dir "root without setpriv/nobody: every directory is writable"
  skip debug-file-other-users "root without setpriv/nobody"
fi
# A symlink planted where the log goes: never followed (O_NOFOLLOW).
echo victim >"$tmp/victim"
ln -s "$tmp/victim" "$tmp/log-link"
run debug-file-symlink 2 "cannot open CKPT_DEBUG_FILE" -- \
  env CKPT_DEBUG_FILE="$tmp/log-link" CKPT_KEEP_LAST=bogus "${sim[@]}" "$prog" work
fact debug-file-symlink "the symlink's target was written" test "$(cat "$tmp/victim")" = victim
fact debug-file-symlink "the symlink was replaced" test -L "$tmp/log-link"
run debug-file-no-cuda-process 0 "" -- \
  env CKPT_DEBUG_FILE="$tmp/ro/log" CKPT_KEEP_LAST=bogus LD_PRELOAD="$lib" /bin/true

# ---- CKPT_TRACE -----------------------------------------------------------------

ln -s "$tmp/victim" "$tmp/trace-link"
run trace-symlink 1 "CKPT_TRACE" -- env CKPT_TRACE="$tmp/trace-link" "${sim[@]}" "$prog" work
fact trace-symlink "the symlink's target was written" test "$(cat "$tmp/victim")" = victim
fact trace-symlink "the symlink was replaced" test -L "$tmp/trace-link"
echo "an earlier trace" >"$tmp/old-trace"
run trace-existing-file 1 "CKPT_TRACE" -- env CKPT_TRACE="$tmp/old-trace" "${sim[@]}" "$prog" work
fact trace-existing-file "an existing trace was overwritten" test "$(cat "$tmp/old-trace")" = "an earlier trace"
if [ -n "$other_uid" ]; then
  run trace-unwritable-dir 1 "CKPT_TRACE" -- \
    "${as_other[@]}" env CKPT_TRACE="$tmp/ro/trace" "${sim[@]}" "$prog" work
fi

# ---- the live stats segment, /dev/shm/libckpt.<uid>.<pid> -----------------------
# bash -c '...; exec prog' keeps the pid, so the name can be planted first.

run shm-symlink 1 "live stats" -- "${sim[@]}" bash -c \
  'ln -s "$1" "/dev/shm/libckpt.$(id -u).$$" && exec "$2" work' _ "$tmp/victim" "$prog"
fact shm-symlink "the symlink's target was written" test "$(cat "$tmp/victim")" = victim
if [ -n "$other_uid" ]; then
  run shm-other-users-file 1 "live stats" -- "${sim[@]}" bash -c \
    'f=/dev/shm/libckpt.$(id -u).$$; echo theirs >"$f" && chown "$1" "$f" && echo "$f" >"$2" && exec "$3" work' \
    _ "$other_uid" "$tmp/shm-name" "$prog"
  f=$(cat "$tmp/shm-name" 2>/dev/null)
  fact shm-other-users-file "the other user's file was changed or removed" test "$(cat "$f" 2>/dev/null)" = theirs
  rm -f "$f"
else
  skip shm-other-users-file "needs root to create another user's file"
fi
# Our own leftover from an earlier process with this pid: replaced silently.
run shm-own-stale 0 "" -- "${sim[@]}" bash -c \
  'f=/dev/shm/libckpt.$(id -u).$$; echo stale >"$f" && chmod 600 "$f" && echo "$f" >"$1" && exec "$2" work' \
  _ "$tmp/shm-name" "$prog"
f=$(cat "$tmp/shm-name" 2>/dev/null)
fact shm-own-stale "the segment was left behind at exit" test ! -e "$f"

echo "badenv: $passed passed, $skipped skipped$([ $fail -ne 0 ] && echo ", FAILURES")"
exit $fail
