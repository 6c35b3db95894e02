#!/bin/sh
# GPU check of issue 13 (for a session with a device): builds tests/rng/replay.c
# against the REAL libcurand.so.10 and libcuda.so.1 (linked with those two only,
# no Criterion) and runs every scenario under LD_PRELOAD=libckpt.so. `rules`
# checks the offset rules of hooks/rng.h on DEVICE generators: they were
# measured on host generators (tests/rng/host_rules.c), and cuRAND says host and
# device behave alike; this is where that is confirmed. Run from the repository
# root; ~1 minute. scripts/gpu-check runs it as part of the check `rng`.
#   sh tests/rng/gpu_check.sh [out-dir] [libckpt.so]
# Finds curand.h and libcurand.so.10 in $CUDA_HOME, /usr/local/cuda, or torch's
# pip packages (nvidia/cu13, nvidia/curand); links libcuda through the
# toolkit's stub when there is one.
set -eu
OUT=${1:-${OUT:-/tmp}}
LIB=${2:-${CKPT_LIBRARY:-build/preload/libckpt.so}}
PY=${PYTHON:-python3}
[ -f "$LIB" ] || { echo "gpu_check: no libckpt.so at $LIB (build it, or pass its path)" >&2; exit 2; }

inc="" curand_lib="" stub=""
for d in ${CUDA_HOME:-} /usr/local/cuda $("$PY" -c '
import os
try:
    import nvidia
    for b in nvidia.__path__:
        for s in ("cu13", "cu12", "curand", "cuda_runtime"):
            print(os.path.join(b, s))
except Exception:
    pass' 2>/dev/null); do
  [ -d "$d" ] || continue
  [ -z "$inc" ] && [ -f "$d/include/curand.h" ] && [ -f "$d/include/cuda.h" ] && inc="$d/include"
  [ -z "$inc" ] && [ -f "$d/include/curand.h" ] && inc="$d/include"
  for l in "$d/lib64" "$d/lib"; do
    [ -z "$curand_lib" ] && [ -f "$l/libcurand.so.10" ] && curand_lib=$l
    [ -z "$stub" ] && [ -f "$l/stubs/libcuda.so" ] && stub="$l/stubs"
  done
done
[ -n "$inc" ] && [ -n "$curand_lib" ] || { echo "gpu_check: curand.h ($inc) or libcurand.so.10 ($curand_lib) not found" >&2; exit 2; }
# cuda.h may live apart from curand.h (CUDA 12 wheels): the meson build's include folder too.
extra_inc=""
[ -f "$inc/cuda.h" ] || extra_inc="-I${CUDA_INCLUDE:-/usr/local/cuda/include}"
BIN="$OUT/rng_replay_gpu"
mkdir -p "$OUT"
# libcurand.so.10 by path: its pip copy has no unversioned libcurand.so.
${CC:-cc} -std=gnu11 -O2 -Iinclude -I"$inc" $extra_inc tests/rng/replay.c \
  "$curand_lib/libcurand.so.10" ${stub:+-L"$stub"} -lcuda -ldl -lpthread -lm -Wl,-rpath,"$curand_lib" -o "$BIN"
echo "gpu_check: replay program built against $curand_lib/libcurand.so.10 (curand.h from $inc)"
rc=0
for t in rules replay inside destroyed unsupported tracker fork_in_region dlsym; do
  LD_PRELOAD="$(cd "$(dirname "$LIB")" && pwd)/$(basename "$LIB")" CKPT_MODE=host CKPT_DEBUG=WARN \
    timeout 120 "$BIN" "$t" || rc=1
done
exit $rc
