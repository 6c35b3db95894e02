#!/usr/bin/env python3
"""Fuzzing the Python readers of libckpt's binary formats.

  fuzz_readers.py replay [TARGET...]           every input of tests/fuzz/corpus/<TARGET> once
  fuzz_readers.py mutate TARGET [SECONDS]      bounded random mutation of that corpus (default 20 s)
  fuzz_readers.py atheris TARGET [ARGS...]     coverage-guided, with atheris (pip install atheris);
                                               ARGS go to libFuzzer (-max_total_time=20 CORPUS_DIR ...)

Targets:
  trace     scripts/ckpt/stats_trace.py: read_trace, then summary, per_region,
            per_step and what `ckpt-stats --trace` prints (text and JSON)
  segment   scripts/ckpt/stats_segment.py: read_path on a file of the input's
            bytes, then what `ckpt-stats PID` prints (text and JSON)

A reader may refuse an input only with its documented error (TraceError,
SegmentError: "one-line error and exit status 2"); any other exception is a
bug, reported with the input saved under $FUZZ_CRASH_DIR (default
tests/fuzz/crashes/<target>/; commit
it into tests/fuzz/corpus/<target>/ once fixed: replay then keeps it fixed).
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPTS = os.path.join(REPO, "scripts")
sys.path.insert(0, SCRIPTS)

from ckpt import stats_segment, stats_trace  # noqa: E402


def _load_cli():
    """scripts/ckpt-stats (no .py) as a module, for its formatting code."""
    loader = importlib.machinery.SourceFileLoader("ckpt_stats_cli", os.path.join(SCRIPTS, "ckpt-stats"))
    spec = importlib.util.spec_from_loader("ckpt_stats_cli", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


CLI = _load_cli()
SCRATCH = tempfile.mkdtemp(prefix="ckpt-fuzz-readers-")


def _write(name, data):
    path = os.path.join(SCRATCH, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def target_trace(data: bytes):
    path = _write("trace", data)
    try:
        tr = stats_trace.read_trace(path)
    except stats_trace.TraceError:
        return
    sm = stats_trace.summary(tr)
    stats_trace.per_region(tr)
    stats_trace.per_step(tr)
    stats_trace.copy_intervals(tr)
    stats_trace.memory_series(tr)
    json.dumps(sm)
    CLI.trace_text(sm)


def target_segment(data: bytes):
    # Half the inputs under a segment's own name (the reader then checks the
    # uid and pid of the name against the header), half under another name.
    name = f"libckpt.{os.getuid()}.{len(data) % 7 + 1}" if data[:1] and data[0] & 1 else "segment"
    path = _write(name, data)
    try:
        seg = stats_segment.read_path(path)
    except stats_segment.SegmentError:
        return
    json.dumps(CLI.segment_json(seg))
    CLI.segment_text(seg)


TARGETS = {"trace": target_trace, "segment": target_segment}


def corpus(target):
    d = os.path.join(HERE, "corpus", target)
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if not n.startswith(".")]


def save_crash(target, data):
    d = os.environ.get("FUZZ_CRASH_DIR") or os.path.join(HERE, "crashes", target)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "crash-" + hashlib.sha1(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)
    return path


def run_one(target, data):
    """None, or the traceback text of an undocumented exception."""
    try:
        TARGETS[target](data)
    except Exception:  # noqa: BLE001 - anything undocumented is the finding
        return traceback.format_exc()
    return None


def mutate(data: bytes, rng: random.Random, pool) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        if op == 0 and b:  # flip bits
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # a random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2 and len(b) >= 4:  # an interesting 32-bit value at an aligned offset
            i = rng.randrange(len(b) // 4) * 4
            v = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(b)])
            b[i:i + 4] = v.to_bytes(4, "little")
        elif op == 3 and len(b) >= 8:  # ... or 64-bit
            i = rng.randrange(len(b) // 8) * 8
            v = rng.choice([0, 1, 1 << 63, (1 << 64) - 1, (1 << 32), rng.getrandbits(64)])
            b[i:i + 8] = v.to_bytes(8, "little")
        elif op == 4 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 5 and b:  # delete a range
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 64)]
        elif op == 6:  # insert bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 48)))
        elif op == 7 and b:  # duplicate a range (records)
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.choice([8, 40, 48, 64, 200]))
            b[i:i] = b[i:j]
        elif op == 8 and pool:  # splice with another input
            other = rng.choice(pool)
            i = rng.randrange(len(b) + 1)
            j = rng.randrange(len(other) + 1)
            b = b[:i] + other[j:j + rng.randint(1, 4096)]
    return bytes(b)


def cmd_replay(targets):
    bad = 0
    for t in targets or sorted(TARGETS):
        files = corpus(t)
        for path in files:
            with open(path, "rb") as f:
                err = run_one(t, f.read())
            if err:
                bad += 1
                print(f"{t}: {os.path.relpath(path, REPO)}: {err.strip().splitlines()[-1]}\n{err}")
        print(f"replay {t}: {len(files)} inputs, {bad} failures")
    return 1 if bad else 0


def cmd_mutate(target, seconds, seed=None):
    seed = int(time.time()) if seed is None else seed
    rng = random.Random(seed)
    pool = []
    for p in corpus(target):
        with open(p, "rb") as f:
            pool.append(f.read())
    deadline = time.monotonic() + seconds
    runs = 0
    failures = {}
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), rng, pool)
        runs += 1
        err = run_one(target, data)
        if err:
            key = err.strip().splitlines()[-1]
            if key not in failures:
                failures[key] = save_crash(target, data)
                print(f"{target}: {key}\n  input: {os.path.relpath(failures[key], REPO)}\n{err}")
    print(f"mutate {target}: {runs} inputs in {seconds} s (seed {seed}), {len(failures)} distinct failures")
    return 1 if failures else 0


def cmd_atheris(target, args):
    import atheris  # noqa: PLC0415 - optional

    def one(data):
        err = run_one(target, data)
        if err:
            path = save_crash(target, data)
            sys.stderr.write(f"{target}: undocumented exception, input saved in {path}\n{err}")
            raise RuntimeError(err.strip().splitlines()[-1])

    atheris.Setup([sys.argv[0]] + args, one)
    atheris.Fuzz()


def main(argv):
    if not argv or argv[0] not in ("replay", "mutate", "atheris"):
        print(__doc__)
        return 2
    try:
        if argv[0] == "replay":
            return cmd_replay(argv[1:])
        if argv[0] == "mutate":
            return cmd_mutate(argv[1], float(argv[2]) if len(argv) > 2 else 20.0)
        return cmd_atheris(argv[1], argv[2:])
    finally:
        for n in os.listdir(SCRATCH):
            os.unlink(os.path.join(SCRATCH, n))
        os.rmdir(SCRATCH)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
