"""Inspection that tells the truth (issue 15, part 5-6), on the toy training
program under ckpt-run --sim: the trace's offloaded and restored bytes equal
the exit counters', the exit summary's device peak is the trace's, memory is
sampled at region boundaries and swaps, the summary goes to CKPT_DEBUG_FILE,
a process that used no device says so; CKPT_PATCH without the Python package
warns once; an unusable CKPT_DEBUG_FILE is reported at start."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import BUILD_DIR, SCRIPTS, child_env

from ckpt import stats_trace as st

TOY = BUILD_DIR / "scripts" / "examples" / "toy_train"
SIMDEV = BUILD_DIR / "tests" / "simdev"
MiB = 1 << 20
SUMMARY = re.compile(r"libckpt\[\d+\] summary: (.*)")
SAVING = re.compile(r"device peak ([\d.]+) (MiB|GiB) \u2192 ([\d.]+) (MiB|GiB) \((?:\u2212(\d+)%|no saving)\)")


@pytest.fixture
def toy(libckpt):
    if not TOY.is_file() or not (SIMDEV / "libcuda.so.1").is_file():
        pytest.skip(f"{TOY} or the simulated driver is not built")
    return TOY


def ckpt_run(args, timeout=240, **extra):
    env = child_env(CKPT_BUILD_DIR=BUILD_DIR, **extra)
    return subprocess.run([str(SCRIPTS / "ckpt-run"), "--sim", "--mode", "host", "--", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout)


def summary_fields(stderr):
    lines = SUMMARY.findall(stderr)
    assert len(lines) == 1, stderr
    line = lines[0]
    fields = {k: float(v) for k, v in re.findall(r"(offloaded|restored)=([\d.]+) MiB", line)}
    return line, fields


def stats_json(trace):
    r = subprocess.run([sys.executable, str(SCRIPTS / "ckpt-stats"), "--trace", str(trace), "--json"],
                       capture_output=True, text=True, timeout=120, env=child_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """8 layers of 4 MiB, 3 steps: the last layer's offload of each step is
    cancelled by backward (rolled back), the case the trace used to count."""
    if not TOY.is_file() or not (SIMDEV / "libcuda.so.1").is_file():
        pytest.skip(f"{TOY} or the simulated driver is not built")
    trace = tmp_path_factory.mktemp("truth") / "toy.trace"
    r = ckpt_run([TOY, 8, 4, 3, 40], CKPT_TRACE=trace)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, trace


def test_trace_totals_equal_the_exit_counters(demo_run):
    r, trace = demo_run
    line, counters = summary_fields(r.stderr)
    doc = stats_json(trace)
    assert doc["version"] == st.VERSION == 2
    tot = doc["totals"]
    assert tot["offloaded_bytes"] == counters["offloaded"] * MiB, (tot, line)
    assert tot["restored_bytes"] == counters["restored"] * MiB, (tot, line)
    assert sum(row["offloaded_bytes"] for row in doc["regions"]) == tot["offloaded_bytes"]
    assert sum(s["offloaded_bytes"] for s in doc["steps"]) == tot["offloaded_bytes"]
    # A C program under ckpt-run (CKPT_PATCH=torch by default) is not Python: no warning.
    assert "had no effect" not in r.stderr


def test_without_libckpt_does_not_drift_and_matches_the_summary(demo_run):
    r, trace = demo_run
    tr = st.read_trace(str(trace))
    steps = [0.0] + st.step_times(tr) + [tr.duration + 1]
    ts, used, without = st.memory_series(tr)
    per_step = [max((w for t, w in zip(ts, without) if a <= t < b), default=None) for a, b in zip(steps, steps[1:])]
    per_step = [p for p in per_step if p is not None]
    # The old trace counted each step's rolled-back offload (one 4 MiB layer)
    # as released for good: "without" grew by a layer a step, 8 MiB by step 3.
    assert len(per_step) >= 3 and max(per_step) - min(per_step) < 8 * MiB, [p / MiB for p in per_step]
    line, _ = summary_fields(r.stderr)
    m = SAVING.search(line)
    assert m, line
    peak = st.peak_saving(tr)
    unit = float(1 << 30) if m.group(2) == "GiB" else float(MiB)
    assert float(m.group(1)) == pytest.approx(peak["without_libckpt"] / unit, abs=0.05), line
    assert float(m.group(3)) == pytest.approx(peak["used"] / unit, abs=0.05), line
    assert peak["without_libckpt"] > peak["used"], line  # 8 layers: the offloads save at the peak


def test_memory_is_sampled_at_region_boundaries_and_swaps(demo_run):
    _, trace = demo_run
    ev = st.read_trace(str(trace)).events
    after = {k: 0 for k in (st.REGION_OPEN, st.REGION_CLOSE, st.OFFLOAD_END, st.RESTORE_END)}
    for a, b in zip(ev, ev[1:]):
        if a.kind in after and b.kind == st.MEM:
            after[a.kind] += 1
    assert all(after.values()), after
    assert all(e.kind != st.MEM or e.bytes % MiB == 0 for e in ev)
    assert any(e.kind == st.MEM and e.bytes > 0 for e in ev), "samples carry the bytes libckpt released"


def test_version_1_traces_still_read(tmp_path):
    recs = [(0.0, st.MEM, 0, 0, 512 * MiB), (0.1, st.OFFLOAD_END, 1, 256 * MiB, 1), (0.1, st.MEM, 0, 0, 256 * MiB)]
    out = [st.HEADER.pack(st.MAGIC, 1, st.HEADER.size, st.RECORD.size, 7, 0, 0)]
    out += [st.RECORD.pack(int(t * 1e9), k, 0, reg, b, 0, v) for t, k, reg, b, v in recs]
    path = tmp_path / "v1.trace"
    path.write_bytes(b"".join(out))
    doc = stats_json(path)
    assert doc["version"] == 1 and doc["totals"]["offloaded_bytes"] == 256 * MiB
    assert doc["device_peak"]["without_libckpt"] == 512 * MiB  # rebuilt from the jobs


def test_summary_goes_to_the_debug_file(toy, tmp_path):
    log = tmp_path / "ckpt.log"
    r = ckpt_run([toy, 3, 4, 1, 0], CKPT_DEBUG_FILE=log)
    assert r.returncode == 0, r.stderr
    assert "summary:" not in r.stderr
    text = log.read_text()
    assert len(SUMMARY.findall(text)) == 1 and SAVING.search(text), text


def preload_python(libckpt, code, **extra):
    env = child_env(preload=libckpt, LD_LIBRARY_PATH=SIMDEV, CKPT_MODE="host", NVTX_INJECTION64_PATH="", **extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


REGION_ONLY = "import ctypes; l = ctypes.CDLL(None); l.ckpt_region_begin(b'x'); l.ckpt_region_end()"


def test_a_process_that_used_no_device_says_so(libckpt):
    r = preload_python(libckpt, REGION_ONLY, CKPT_STATS_AT_EXIT=1)
    assert r.returncode == 0, r.stderr
    assert re.search(r"libckpt\[\d+\] summary: no CUDA device was used", r.stderr), r.stderr
    assert "offloaded=" not in r.stderr


def test_patch_without_the_python_package_warns_once(libckpt):
    r = preload_python(libckpt, REGION_ONLY, CKPT_PATCH="torch", CKPT_REGIONS="Block")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("had no effect") == 1, r.stderr
    assert "CKPT_PATCH=torch and CKPT_REGIONS=Block had no effect" in r.stderr
    assert "ckpt-run" in r.stderr
    quiet = preload_python(libckpt, REGION_ONLY)
    assert "had no effect" not in quiet.stderr, quiet.stderr


def test_patch_through_ckpt_run_does_not_warn(libckpt):
    env = child_env(CKPT_BUILD_DIR=BUILD_DIR, NVTX_INJECTION64_PATH="")
    r = subprocess.run([str(SCRIPTS / "ckpt-run"), "--sim", "--quiet", "--", sys.executable, "-c",
                        REGION_ONLY], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "had no effect" not in r.stderr, r.stderr


@pytest.mark.parametrize("where,reason", [("missing-dir/ckpt.log", "No such file or directory"),
                                          ("a-file/ckpt.log", "Not a directory")])
def test_unusable_debug_file_is_reported_at_start(libckpt, tmp_path, where, reason):
    (tmp_path / "a-file").write_text("")
    path = tmp_path / where
    r = preload_python(libckpt, "import ctypes; ctypes.CDLL(None).ckpt_mode()", CKPT_DEBUG_FILE=path)
    assert r.returncode == 0, r.stderr
    want = f"cannot open CKPT_DEBUG_FILE {path}: {reason}; logging to stderr"
    assert r.stderr.count(want) == 1, r.stderr


def test_hook_overhead_help_does_not_run_the_benchmark():
    r = subprocess.run([str(SCRIPTS / "bench" / "hook-overhead"), "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "machine:" not in r.stdout, r.stdout + r.stderr
    assert "--gpu" in r.stdout and "Hook overhead" in r.stdout
