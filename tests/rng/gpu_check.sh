#!/bin/sh
# GPU check of issue 13 (for a session with a device): builds tests/rng/replay.c
# against the REAL libcurand.so.10 and libcuda.so.1 (shim.c stands in for the
# preload) and runs every scenario. `rules` checks the offset rules of
# hooks/rng.h on DEVICE generators: they were measured on host generators
# (tests/rng/host_rules.c), and cuRAND says host and device behave alike;
# this is where that is confirmed. Run from the repository root; ~1 minute.
#   sh tests/rng/gpu_check.sh [out-dir]
set -eu
CUDA=${CUDA_HOME:-/usr/local/cuda}
OUT=${1:-${OUT:-/tmp}}
BIN="$OUT/rng_replay_gpu"
${CC:-cc} -std=gnu11 -O2 -Iinclude -Ihooks -I"$CUDA/include" \
  tests/rng/replay.c tests/rng/shim.c hooks/rng.c hooks/rng_api.c hooks/log.c \
  -rdynamic -L"$CUDA/lib64" -lcurand -lcuda -ldl -lpthread -lm -Wl,-rpath,"$CUDA/lib64" -o "$BIN"
rc=0
for t in rules replay inside destroyed unsupported tracker fork_in_region; do
  timeout 120 "$BIN" "$t" || rc=1
done
exit $rc
