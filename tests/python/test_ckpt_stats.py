"""scripts/ckpt-stats against a program running under libckpt on the simulated
device (tests/integ/stats.c): the live segment read from another process,
stale segments after kill -9, call sites, traces (table, JSON schema, plot),
and bad input (exit 2, one line, no traceback)."""

import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time

import jsonschema
import pytest
import referencing

from conftest import BUILD_DIR, LIBCKPT, REPO, SCRIPTS

from ckpt import stats_segment, stats_trace

CKPT_STATS = SCRIPTS / "ckpt-stats"
INTEG = BUILD_DIR / "tests" / "integ_stats"
SCHEMAS = {p.stem: json.loads(p.read_text()) for p in (pathlib.Path(__file__).parent / "schema").glob("*.json")}
REGISTRY = referencing.Registry().with_resources(
    (s["$id"], referencing.Resource.from_contents(s)) for s in SCHEMAS.values())


def validate(doc, schema):
    jsonschema.Draft202012Validator(SCHEMAS[schema], registry=REGISTRY).validate(doc)


@pytest.fixture
def integ(libckpt):
    if not INTEG.is_file():
        pytest.skip(f"{INTEG} is not built")
    return libckpt


def program_env(libckpt, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_") and k != "LD_PRELOAD"}
    env.update(LD_PRELOAD=str(libckpt), LD_LIBRARY_PATH=str(BUILD_DIR / "tests" / "simdev"), CKPT_MODE="host",
               CKPT_MIN_BYTES="4M", CKPT_OFFLOAD="manual", CKPT_DEBUG="WARN", NVTX_INJECTION64_PATH="")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ckpt_stats(*args, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run([sys.executable, str(CKPT_STATS), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def ok_json(*args):
    r = ckpt_stats(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def bad(*args, says):
    """Runs ckpt-stats expecting a one-line error that matches `says`, exit 2."""
    r = ckpt_stats(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(says, lines[0]), lines[0]


class Serving:
    """integ_stats serve: does its workload, prints its counters, waits for EOF."""

    def __init__(self, libckpt, **env):
        self.proc = subprocess.Popen([str(INTEG), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=program_env(libckpt, **env))
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.printed = json.loads(line)
        self.pid = self.proc.pid
        self.path = stats_segment.segment_path(self.pid)

    def finish(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serving(integ):
    made = []

    def start(**env):
        made.append(Serving(integ, **env))
        return made[-1]

    yield start
    for s in made:
        s.kill()
        if os.path.lexists(s.path):
            os.unlink(s.path)


# ---- the live segment ---------------------------------------------------------

def test_segment_read_live_agrees_with_the_program(serving):
    s = serving()
    st = os.stat(s.path)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()
    doc = ok_json(s.pid)
    validate(doc, "segment")
    assert doc["pid"] == s.pid and doc["command"] == "integ_stats" and doc["mode"] == "host"
    for name, value in s.printed["stats"].items():
        assert doc["stats"][name] == value, name  # exactly, floats included
    act, steps, blocks = s.printed["act_bytes"], s.printed["steps"], s.printed["blocks"]
    moved = steps * blocks * 2
    assert doc["stats"]["offloads"] == moved and doc["stats"]["offloaded_bytes_total"] == moved * act
    rows = {r["name"]: r for r in doc["regions"]}
    assert rows["block"]["regions"] == steps * blocks and rows["block"]["offloaded_bytes"] == moved * act
    assert rows["block"]["restored_bytes"] == moved * act and rows["head"]["offloads"] == 0
    assert doc["achieved_gbps"] > 0 and rows["block"]["achieved_gbps"] > 0
    assert doc["call_sites"] == {"state": "off", "sites": []}

    text = ckpt_stats(s.pid)
    assert text.returncode == 0, text.stderr
    assert f"libckpt in pid {s.pid} (integ_stats), mode host" in text.stdout
    assert re.search(r"^block\s+8\s+16\s", text.stdout, re.M), text.stdout
    assert "GB/s" in text.stdout and "call sites: off" in text.stdout

    listing = ok_json()
    validate(listing, "list")
    assert s.pid in [p["pid"] for p in listing["processes"]]
    assert str(s.pid) in ckpt_stats().stdout

    watch = subprocess.Popen([sys.executable, str(CKPT_STATS), str(s.pid), "--watch", "0.1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    s.finish()
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert out.count(f"libckpt in pid {s.pid}") >= 2 and f"process {s.pid} is gone" in out
    assert not os.path.lexists(s.path), "segment left behind after exit"


def test_stale_segment_after_kill_is_reported_and_cleaned(serving):
    s = serving()
    os.kill(s.pid, signal.SIGKILL)
    s.proc.wait()
    assert os.path.exists(s.path)
    listing = ok_json()
    validate(listing, "list")
    assert s.pid not in [p["pid"] for p in listing["processes"]]
    assert [x for x in listing["stale"] if x["pid"] == s.pid and x["path"] == s.path]
    assert f"stale: {s.path}" in ckpt_stats().stdout
    shown = ckpt_stats(s.pid)  # its last counters are still readable, with a warning
    assert shown.returncode == 0 and "is gone" in shown.stderr
    cleaned = ckpt_stats("--clean")
    assert cleaned.returncode == 0 and f"removed {s.path}" in cleaned.stdout
    assert not os.path.lexists(s.path)
    assert s.pid not in [x["pid"] for x in ok_json()["stale"]]


def test_segment_left_by_an_exec_is_stale(integ):
    p = subprocess.Popen([str(INTEG), "exec"], stdout=subprocess.PIPE, text=True, env=program_env(integ))
    path = stats_segment.segment_path(p.pid)
    try:
        assert p.stdout.readline() == "ready\n"
        deadline = time.time() + 10
        while os.readlink(f"/proc/{p.pid}/exe") != os.path.realpath("/bin/sleep"):
            assert time.time() < deadline
            time.sleep(0.01)
        assert os.path.exists(path), "the exec'd image must not remove or recreate it"
        stale = [x for x in ok_json()["stale"] if x["pid"] == p.pid]
        assert stale and "no longer maps its segment" in stale[0]["reason"]
        assert f"removed {path}" in ckpt_stats("--clean").stdout
    finally:
        p.kill()
        p.wait()
        if os.path.lexists(path):
            os.unlink(path)


def test_call_sites_name_the_allocating_function(serving):
    s = serving(CKPT_STACKS=1)
    deadline = time.time() + 10
    while True:  # the observer thread symbolises off the hot path
        doc = ok_json(s.pid)
        sites = doc["call_sites"]["sites"]
        if doc["call_sites"]["state"] != "on" or (sites and all(not f.startswith("0x") for f in sites[0]["frames"])):
            break
        assert time.time() < deadline, sites
        time.sleep(0.05)
    validate(doc, "segment")
    ldd = subprocess.run(["ldd", str(LIBCKPT)], capture_output=True, text=True).stdout
    if "libunwind" in ldd:  # meson finds libunwind whenever it is installed
        assert doc["call_sites"]["state"] == "on", "built with libunwind: libckpt must record call sites"
    else:
        assert doc["call_sites"]["state"] == "unavailable"
        assert "call sites: unavailable" in ckpt_stats(s.pid).stdout
        return
    top = doc["call_sites"]["sites"][0]
    assert any("alloc_activation" in f for f in top["frames"]), top
    assert not any("libckpt" in f for f in top["frames"]), "libckpt's own frames are shown"
    act = sum(x["offloaded_bytes"] for x in sites if any("alloc_activation" in f for f in x["frames"]))
    assert act == doc["stats"]["offloaded_bytes_total"]
    assert "integ_stats!alloc_activation" in ckpt_stats(s.pid).stdout


# ---- traces -------------------------------------------------------------------------

@pytest.fixture
def trace_file(integ, tmp_path):
    env = program_env(integ, CKPT_TRACE=tmp_path / "run.%p.trace", CKPT_STACKS=1, CKPT_PROFILE=1)
    r = subprocess.run([str(INTEG), "check"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (path,) = tmp_path.glob("run.*.trace")
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def test_trace_table_json_and_plot(trace_file, tmp_path):
    text = ckpt_stats("--trace", trace_file)
    assert text.returncode == 0, text.stderr
    assert re.search(r"^block\s+8\s+8\s", text.stdout, re.M), text.stdout
    assert re.search(r"^step\s+start s", text.stdout, re.M)
    assert "alloc_activation" in text.stdout  # the call sites written at exit

    doc = ok_json("--trace", trace_file)
    validate(doc, "trace")
    rows = {r["name"]: r for r in doc["regions"]}
    assert rows["block"]["regions"] == 8 and rows["head"]["regions"] == 2 and rows["publish"]["regions"] == 1
    total = rows["block"]["offloaded_bytes"]
    assert total == 16 * (8 * 2**20 + 4096) == rows["block"]["restored_bytes"]
    assert rows["block"]["offload_jobs"] == rows["block"]["restore_jobs"] == 8
    assert sum(s["offloaded_bytes"] for s in doc["steps"]) == total
    assert [s["regions"] for s in doc["steps"]][:2] == [5, 5]
    assert doc["dropped"] == 0 and doc["call_sites"]

    png = tmp_path / "mem.png"
    r = ckpt_stats("--trace", trace_file, "--plot", png)
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_traces_give_one_line_and_exit_2(trace_file, tmp_path):
    data = trace_file.read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data[:-7])
    bad("--trace", cut, says=r"truncated trace: it ends 33 bytes into a record")
    short = tmp_path / "short.trace"
    short.write_bytes(data[:12])
    bad("--trace", short, says=r"truncated, or not a libckpt trace")
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    bad("--trace", foreign, says=r"not a libckpt trace \(bad magic\)")
    newer = tmp_path / "newer.trace"
    newer.write_bytes(data[:8] + struct.pack("<I", 99) + data[12:])
    bad("--trace", newer, says=r"trace version 99")
    # a text record announced but cut off
    rec = stats_trace.RECORD.pack(1, stats_trace.NAME, 3, 1, 0, 0, 0)
    announced = tmp_path / "announced.trace"
    announced.write_bytes(data[:stats_trace.HEADER.size] + rec)
    bad("--trace", announced, says=r"announces 3 text records")
    bad("--trace", tmp_path / "missing.trace", says=r"No such file")
    bad("--trace", foreign, "--plot", tmp_path / "x.png", says=r"bad magic")
    assert not (tmp_path / "x.png").exists()


# ---- bad segments and PIDs ------------------------------------------------------

@pytest.fixture
def bystander():
    """A live process that does not run libckpt."""
    p = subprocess.Popen(["sleep", "60"])
    yield p.pid
    p.kill()
    p.wait()


def test_unknown_pid_and_a_process_without_libckpt(bystander):
    gone = subprocess.Popen(["true"])
    gone.wait()
    bad(gone.pid, says=rf"no process {gone.pid}")
    bad(bystander, says=rf"process {bystander} is not running libckpt")


def test_another_users_segment_is_refused(bystander):
    other = os.getuid() + 4242
    path = stats_segment.segment_path(bystander, uid=other)
    pathlib.Path(path).write_bytes(b"\0" * 64)
    try:
        bad(bystander, says=rf"belongs to uid {other}, not to you")
        assert ok_json()["other_users"] >= 1
    finally:
        os.unlink(path)


def test_malformed_segment_is_refused(bystander):
    path = stats_segment.segment_path(bystander)
    with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as f:
        f.write(b"CKPTSTAX" + b"\1" * 400)
    try:
        bad(bystander, says=r"not a libckpt stats segment \(bad magic")
        listing = ok_json()
        assert [u for u in listing["unreadable"] if u["pid"] == bystander]
        pathlib.Path(path).write_bytes(b"\0" * 20)
        bad(bystander, says=r"20 bytes, too short")
    finally:
        os.unlink(path)


def test_reader_validates_and_bounds_the_seqlock(serving, tmp_path, monkeypatch):
    s = serving()
    good = bytearray(pathlib.Path(s.path).read_bytes())
    s.finish()
    h = stats_segment._parse_header(bytes(good), "x")
    copy = tmp_path / "seg"

    def read(data):
        copy.write_bytes(bytes(data))
        return stats_segment.read_path(str(copy))

    assert read(good).stats["offloads"] == 16
    torn = bytearray(good)
    struct.pack_into("<Q", torn, h["live_off"], struct.unpack_from("<Q", good, h["live_off"])[0] | 1)
    monkeypatch.setattr(stats_segment, "SNAPSHOT_TRIES", 20)
    with pytest.raises(stats_segment.SegmentError, match="no consistent snapshot after 20 tries"):
        read(torn)
    for offset, value, says in [(8, 2, "segment version 2"),
                                (12, len(good) + 8, "header says"),
                                (44, len(good), "live_off"),
                                (20, 10, "name_size 10 is smaller")]:
        broken = bytearray(good)
        struct.pack_into("<I", broken, offset, value)
        with pytest.raises(stats_segment.SegmentError, match=says):
            read(broken)
    many = bytearray(good)
    struct.pack_into("<I", many, h["live_off"] + 24, 100000)
    with pytest.raises(stats_segment.SegmentError, match="exceed the table sizes"):
        read(many)


def test_python_layouts_mirror_the_c_headers():
    seg_h = (REPO / "hooks" / "stats_segment.h").read_text()
    body = re.search(r"struct ckpt_seg_header \{(.*?)\};", seg_h, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = [n for decl in re.findall(r"\w+\s+([\w\s,\[\]]+);", body) for n in re.findall(r"(\w+)(?:\[\d+\])?", decl)
             if not n.isdigit()]
    assert names == list(stats_segment.HEADER_FIELDS)
    assert stats_segment.HEADER.size == 144
    obs = (REPO / "hooks" / "observe.h").read_text()
    body = re.sub(r"/\*.*?\*/", "", re.search(r"struct ckpt_name_stats \{(.*?)\};", obs, re.S).group(1), flags=re.S)
    fields = [n for decl in re.findall(r"(?:uint64_t|double)\s+([\w\s,]+);", body) for n in re.findall(r"\w+", decl)]
    assert fields == list(stats_segment.NAME_FIELDS)
    trace_h = (REPO / "hooks" / "trace_format.h").read_text()
    assert re.search(r'CKPT_TRACE_MAGIC "(\w+)"', trace_h).group(1).encode() == stats_trace.MAGIC
    assert stats_trace.HEADER.size == stats_trace.RECORD.size == 40


def test_text_says_when_regions_are_carried():
    """A pipeline schedule's carried regions (stats field regions_carried) are
    named on the regions line, and nothing is said when there are none."""
    from types import SimpleNamespace

    from ckpt import library, stats_cli

    stats = {name: 0 for name, _ in library.CkptStats._fields_ if name != "size"}
    seg = SimpleNamespace(stats=stats, pid=1, publishes=1, updated=0, regions=[], stacks="off", sites=[],
                          flags={"profile": False, "sync": False, "trace": False},
                          header={"start_realtime_ns": 0, "command": "x", "mode": "host"})
    assert "carried" not in stats_cli.segment_text(seg)
    stats["regions_carried"] = 3
    line = [l for l in stats_cli.segment_text(seg).splitlines() if l.strip().startswith("regions")][0]
    assert "3 carried into this cycle" in line
