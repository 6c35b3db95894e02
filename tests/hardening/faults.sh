#!/usr/bin/env bash
# Fault injection walk: every driver call libckpt makes on the offload /
# restore path fails in turn at its 1st, 2nd, 3rd ... call (SIMDEV_FAIL's
# run-time form, simdev_fail()), one process per case, and after each:
#   - the data is bit-exact (faults.c checks every byte, on streams and host),
#   - no stream touched unmapped memory (FAULT: on a GPU the context would be
#     dead, a sticky error that ends training), nothing hung or crashed,
#   - the failure was reported (stats.driver_errors > 0 or a WARN line).
#
#   faults.sh HARD_FAULTS [MAX_NTH]     (environment: LD_PRELOAD etc. as the
#                                        integration tests set it)
# MAX_NTH (default $FAULTS_MAX_NTH, else 24): walk NTH = 1..MAX_NTH, then 6 more spread over the
# rest of the calls seen in a clean run. FAULTS_CALLS="a b" narrows the walk.
# Every call fails with CUDA_ERROR_UNKNOWN (999: nothing retries it), and the
# allocating calls a second time with CUDA_ERROR_OUT_OF_MEMORY (which libckpt
# may absorb by trimming its caches and retrying: reported or not, fine).
# A failure that leaves no trace (no driver_errors, no WARN) is listed as
# UNREPORTED; with FAULTS_STRICT=1 that fails the run too (some are handled
# by design: a fallback that succeeds). The table goes to stdout;
# FAULTS_TABLE=FILE also writes it there.
set -u
prog=$1
max=${2:-${FAULTS_MAX_NTH:-24}}
calls=${FAULTS_CALLS:-"cuMemCreate cuMemMap cuMemSetAccess cuMemUnmap cuMemcpyDtoDAsync_v2 cuEventRecord
  cuEventSynchronize cuEventQuery cuStreamWaitValue32_v2 cuStreamBatchMemOp_v2 cuMemAddressReserve cuStreamCreate
  cuEventCreate cuStreamWaitEvent cuMemHostAlloc cuMemHostGetDevicePointer_v2"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CKPT_KEEP_LAST=${CKPT_KEEP_LAST:-1} CKPT_PREFETCH=${CKPT_PREFETCH:-1} CKPT_MIN_BYTES=1 CKPT_DEBUG=WARN
unset SIMDEV_FAIL CKPT_DEBUG_FILE

table=${FAULTS_TABLE:-$tmp/table}
: >"$table"
bad=0 cases=0 silent=0 unreached=0
declare -A worst
row() { printf '%-34s %7s  %-12s %s\n' "$@" | tee -a "$table"; }
row CALL:CODE NTH RESULT DETAIL

oom_calls=" cuMemCreate cuMemAddressReserve cuMemMap cuMemHostAlloc "
passes=""
for call in $calls; do
  passes="$passes $call:999"
  [[ "$oom_calls" == *" $call "* ]] && passes="$passes $call:2"
done

for pass in $passes; do
  call=${pass%%:*} code=${pass#*:}
  HARD_NO_GDB=1 timeout 60 "$prog" "$call" 0 >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [ $rc -ne 0 ]; then
    row "$call:$code" 0 "BASELINE" "the run without a failure fails (exit $rc): $(head -c 300 "$tmp/err")"
    bad=1
    continue
  fi
  n=$(sed -n 's/.* calls=\([0-9]*\) .*/\1/p' "$tmp/out")
  if [ -z "$n" ] || [ "$n" -eq 0 ]; then
    row "$call:$code" - "not-called" "libckpt does not call it in this run"
    continue
  fi
  nths=$(seq 1 $((n < max ? n : max)) | tr '\n' ' ')
  if [ "$n" -gt "$max" ]; then
    nths="$nths$(for k in 1 2 3 4 5 6; do echo $((max + 1 + (n - max - 1) * k / 6)); done | sort -un | tr '\n' ' ')"
  fi
  nunrep=0
  for nth in $nths; do
    cases=$((cases + 1))
    log=$tmp/log
    rm -f "$log"
    CKPT_DEBUG_FILE=$log HARD_NO_GDB=1 timeout 60 "$prog" "$call" "$nth" "$code" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    line=$(grep '^faults ' "$tmp/out")
    reached=$(sed -n 's/.* reached=\([0-9]*\) .*/\1/p' <<<"$line")
    errs=$(sed -n 's/.* driver_errors=\([0-9]*\) .*/\1/p' <<<"$line")
    warns=$(cat "$log" 2>/dev/null | grep -c ' WARN ')
    detail="driver_errors=${errs:-?} warnings=$warns"
    case $rc in
    0)
      if [ "${reached:-0}" != 1 ]; then
        result=not-reached
        unreached=$((unreached + 1))
      elif [ "${errs:-0}" -gt 0 ] || [ "$warns" -gt 0 ]; then
        result=ok
      elif [ "$code" = 2 ]; then
        result=ok # out of memory, absorbed (trim and retry)
      else
        result=UNREPORTED
        silent=$((silent + 1))
        [ "${FAULTS_STRICT:-0}" = 1 ] && bad=1
      fi
      ;;
    1)
      bad=1
      if grep -q 'simdev: illegal address' "$tmp/err"; then result="FAULT"; else result="DATA-LOST"; fi
      detail="$detail; $(grep -m2 -E '^DATA|^FAIL|^simdev:' "$tmp/err" | cut -c1-160 | tr '\n' ' ')"
      ;;
    2) result="FAULT"; bad=1; detail="$detail; a stream touched unmapped memory" ;;
    3 | 124) result="HANG"; bad=1 ;;
    *) result="CRASH($rc)"; bad=1; detail="$detail; $(tail -c 200 "$tmp/err" | tr '\n' ' ')" ;;
    esac
    case $result in
    ok | not-reached) ;;
    UNREPORTED) nunrep=$((nunrep + 1)); [ "${FAULTS_VERBOSE:-0}" = 1 ] && row "$call:$code" "$nth" "$result" "$detail" ;;
    *) row "$call:$code" "$nth" "$result" "$detail" ;;
    esac
    worst[$pass]=${worst[$pass]:-ok}
    case $result in ok | not-reached) ;; UNREPORTED) [ "${worst[$pass]}" = ok ] && worst[$pass]=$result ;; *) worst[$pass]=$result ;; esac
  done
  nths=${nths% }
  row "$call:$code" "1-${nths##* }" "${worst[$pass]}" "walked $(wc -w <<<"$nths") of $n calls$([ $nunrep -gt 0 ] && echo ", $nunrep unreported (FAULTS_VERBOSE=1 lists them)")"
done
echo "faults: $cases cases, $unreached not reached, $silent unreported, $([ $bad -eq 0 ] && echo "no data lost" || echo FAILURES)"
exit $bad
