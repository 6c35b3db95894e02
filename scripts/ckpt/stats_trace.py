"""Reads a CKPT_TRACE file (the layout of hooks/trace_format.h), summarises
it per region name and per step, and plots device memory and the copy
stream's activity over time.

A record carries `text` = how many following records hold NUL-padded text
(region names, call-site frames); they are not events themselves.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MAGIC = b"CKPTTRCE"
VERSION = 1
HEADER = struct.Struct("<8sIIIiQQ")  # magic, version, header_size, record_size, pid, start mono, start realtime
RECORD = struct.Struct("<QHHiQQQ")   # t_ns, kind, text, region, bytes, stream, value

REGION_OPEN, REGION_CLOSE, OFFLOAD_START, OFFLOAD_END, RESTORE_START, RESTORE_END, STALL, STEP, MEM = range(1, 10)
NAME, SITE, FWD, BWD, DROPPED = 32, 33, 34, 35, 36


class TraceError(Exception):
    """A file that is not a readable trace: the message says why, in one line."""


@dataclass
class Event:
    t: float  # seconds since the trace began
    kind: int
    region: int
    bytes: int
    stream: int
    value: int


@dataclass
class Trace:
    path: str
    pid: int
    start_realtime: float
    events: List[Event]
    names: Dict[int, str]          # name id -> region name
    region_names: Dict[int, str]   # region id -> region name
    sites: List[Dict[str, object]] = field(default_factory=list)
    dropped: int = 0

    @property
    def duration(self) -> float:
        return self.events[-1].t if self.events else 0.0


def read_trace(path: str) -> Trace:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror}") from None
    if len(data) < HEADER.size:
        raise TraceError(f"{path}: {len(data)} bytes: truncated, or not a libckpt trace")
    magic, version, header_size, record_size, pid, start_mono, start_rt = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TraceError(f"{path}: not a libckpt trace (bad magic)")
    if version != VERSION:
        raise TraceError(f"{path}: trace version {version}, this ckpt-stats reads version {VERSION}")
    if header_size < HEADER.size or record_size < RECORD.size or header_size > len(data):
        raise TraceError(f"{path}: header size {header_size} / record size {record_size} not understood")
    body = len(data) - header_size
    if body % record_size:
        raise TraceError(f"{path}: truncated trace: it ends {body % record_size} bytes into a record "
                         f"(after {body // record_size} whole records)")
    n = body // record_size
    trace = Trace(path=path, pid=pid, start_realtime=start_rt / 1e9, events=[], names={}, region_names={})
    i = 0
    while i < n:
        off = header_size + i * record_size
        t_ns, kind, ntext, region, nbytes, stream, value = RECORD.unpack_from(data, off)
        if i + 1 + ntext > n:
            raise TraceError(f"{path}: truncated trace: record {i} announces {ntext} text records, "
                             f"{n - i - 1} follow")
        text = b"".join(data[off + k * record_size:off + (k + 1) * record_size]
                        for k in range(1, 1 + ntext)).split(b"\0", 1)[0].decode("utf-8", "replace")
        i += 1 + ntext
        t = (t_ns - start_mono) / 1e9
        if kind == NAME:
            trace.names[region] = text
        elif kind == SITE:
            trace.sites.append({"id": region, "offloaded_bytes": nbytes, "allocs": value,
                                "frames": text.split("\n") if text else []})
        elif kind == DROPPED:
            trace.dropped += value
        else:
            if kind == REGION_OPEN:
                trace.region_names[region] = trace.names.get(value, "") if value else ""
            trace.events.append(Event(t, kind, region, nbytes, stream, value))
    return trace


def _gbps(nbytes: float, seconds: float) -> Optional[float]:
    return nbytes / seconds / 1e9 if seconds > 0 else None


def per_region(trace: Trace) -> List[Dict[str, object]]:
    """Counters per region name, in order of first appearance."""
    rows: Dict[str, Dict[str, float]] = {}

    def row(region: int) -> Dict[str, float]:
        name = trace.region_names.get(region, f"#{region}")
        return rows.setdefault(name, {"name": name, "regions": 0, "offload_jobs": 0, "offloaded_bytes": 0,
                                      "restore_jobs": 0, "restored_bytes": 0, "copy_seconds": 0.0,
                                      "stall_seconds": 0.0, "fwd_seconds": 0.0, "bwd_seconds": 0.0})

    for e in trace.events:
        if e.kind == REGION_OPEN:
            row(e.region)["regions"] += 1
        elif e.kind in (OFFLOAD_END, RESTORE_END):
            r = row(e.region)
            which = "offload" if e.kind == OFFLOAD_END else "restore"
            r[f"{which}_jobs"] += 1
            r["offloaded_bytes" if which == "offload" else "restored_bytes"] += e.bytes
            r["copy_seconds"] += e.value / 1e9
        elif e.kind == STALL:
            row(e.region)["stall_seconds"] += e.value / 1e9
        elif e.kind in (FWD, BWD):
            row(e.region)["fwd_seconds" if e.kind == FWD else "bwd_seconds"] += e.value / 1e9
    out = list(rows.values())
    for r in out:
        r["achieved_gbps"] = _gbps(r["offloaded_bytes"] + r["restored_bytes"], r["copy_seconds"])
    return out


def per_step(trace: Trace) -> List[Dict[str, object]]:
    """One row per step: from the start, or a step record, to the next."""
    steps: List[Dict[str, object]] = []

    def new(t: float) -> Dict[str, object]:
        s = {"step": len(steps), "start": t, "seconds": 0.0, "regions": 0, "offloaded_bytes": 0,
             "restored_bytes": 0, "stall_seconds": 0.0, "device_used_peak": None}
        steps.append(s)
        return s

    cur = new(0.0)
    for e in trace.events:
        if e.kind == STEP:
            cur = new(e.t)
        elif e.kind == REGION_OPEN:
            cur["regions"] += 1
        elif e.kind == OFFLOAD_END:
            cur["offloaded_bytes"] += e.bytes
        elif e.kind == RESTORE_END:
            cur["restored_bytes"] += e.bytes
        elif e.kind == STALL:
            cur["stall_seconds"] += e.value / 1e9
        elif e.kind == MEM:
            peak = cur["device_used_peak"]
            cur["device_used_peak"] = e.value if peak is None else max(peak, e.value)
    end = trace.duration
    for a, b in zip(steps, steps[1:] + [None]):
        a["seconds"] = (b["start"] if b else end) - a["start"]
    if len(steps) > 1 and steps[0]["regions"] == 0 and steps[0]["offloaded_bytes"] == 0:
        steps.pop(0)  # nothing happened before the first ckpt_step()
        for k, s in enumerate(steps):
            s["step"] = k
    return steps


def copy_intervals(trace: Trace) -> Dict[str, List[Tuple[float, float]]]:
    """Offload and restore jobs as (enqueued, applied) intervals of the copy stream."""
    open_jobs: Dict[Tuple[str, int], deque] = defaultdict(deque)
    out: Dict[str, List[Tuple[float, float]]] = {"offload": [], "restore": []}
    for e in trace.events:
        if e.kind in (OFFLOAD_START, RESTORE_START):
            open_jobs[("offload" if e.kind == OFFLOAD_START else "restore", e.region)].append(e.t)
        elif e.kind in (OFFLOAD_END, RESTORE_END):
            which = "offload" if e.kind == OFFLOAD_END else "restore"
            q = open_jobs[(which, e.region)]
            if q:
                out[which].append((q.popleft(), e.t))
    return out


def memory_series(trace: Trace) -> Tuple[List[float], List[int], List[int]]:
    """Times, device bytes used, and used + bytes libckpt holds offloaded then."""
    released = 0
    ts, used, without = [], [], []
    for e in trace.events:
        if e.kind == OFFLOAD_END:
            released += e.bytes
        elif e.kind == RESTORE_END:
            released = max(0, released - e.bytes)
        elif e.kind == MEM:
            ts.append(e.t)
            used.append(e.value)
            without.append(e.value + released)
    return ts, used, without


def summary(trace: Trace) -> Dict[str, object]:
    return {"path": os.path.abspath(trace.path), "pid": trace.pid, "version": VERSION,
            "start_time": trace.start_realtime, "duration_seconds": trace.duration,
            "events": len(trace.events), "dropped": trace.dropped, "regions": per_region(trace),
            "steps": per_step(trace), "call_sites": trace.sites}


def plot(trace: Trace, out_png: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise TraceError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts, used, without = memory_series(trace)
    jobs = copy_intervals(trace)
    fig, (mem_ax, copy_ax) = plt.subplots(2, 1, figsize=(11, 6), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]})
    gib = float(1 << 30)
    if ts:
        mem_ax.step(ts, [u / gib for u in without], where="post", label="without libckpt (used + offloaded)",
                    color="tab:red", alpha=0.7)
        mem_ax.step(ts, [u / gib for u in used], where="post", label="device used", color="tab:blue")
        mem_ax.legend(loc="upper left")
    else:
        mem_ax.text(0.5, 0.5, "no device memory samples in this trace", ha="center", va="center",
                    transform=mem_ax.transAxes)
    mem_ax.set_ylabel("GiB")
    mem_ax.set_title(f"libckpt trace of pid {trace.pid}: device memory")
    for row, (which, color) in enumerate((("offload", "tab:orange"), ("restore", "tab:green"))):
        bars = [(a, max(b - a, 1e-6)) for a, b in jobs[which]]
        if bars:
            copy_ax.broken_barh(bars, (row * 10 + 1, 8), facecolors=color)
    copy_ax.set_yticks([5, 15])
    copy_ax.set_yticklabels(["offload", "restore"])
    copy_ax.set_ylim(0, 20)
    copy_ax.set_xlabel("seconds since the trace began")
    copy_ax.set_title("copy stream (job enqueued -> applied)")
    fig.tight_layout()
    try:
        fig.savefig(out_png, format="png")
    except OSError as e:
        raise TraceError(f"{out_png}: {e.strerror}") from None
    finally:
        plt.close(fig)
