"""Reads a CKPT_TRACE file (the layout of hooks/trace_format.h), summarises
it per region name and per step, and plots device memory and the copy
stream's activity over time.

A record carries `text` = how many following records hold NUL-padded text
(region names, call-site frames); they are not events themselves.

Versions 1 and 2 are read (what changed: hooks/trace_format.h). In a version 1
trace an offload or restore job's bytes are every item it copied, including
items rolled back rather than swapped, and memory samples do not carry the
bytes libckpt had released, so "without libckpt" is rebuilt from the jobs.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

MAGIC = b"CKPTTRCE"
VERSION = 2                # the version libckpt writes
READS = (1, 2)             # the versions this reader understands
HEADER = struct.Struct("<8sIIIiQQ")  # magic, version, header_size, record_size, pid, start mono, start realtime
RECORD = struct.Struct("<QHHiQQQ")   # t_ns, kind, text, region, bytes, stream, value

(REGION_OPEN, REGION_CLOSE, OFFLOAD_START, OFFLOAD_END, RESTORE_START, RESTORE_END, STALL, STEP, MEM,
 OFFLOAD_ROLLBACK, RESTORE_ROLLBACK) = range(1, 12)
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
    version: int = 1               # of the file; read_trace sets it

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
    if version not in READS:
        raise TraceError(f"{path}: trace version {version}, this ckpt-stats reads versions "
                         f"{', '.join(map(str, READS))}")
    if header_size < HEADER.size or record_size < RECORD.size or header_size > len(data):
        raise TraceError(f"{path}: header size {header_size} / record size {record_size} not understood")
    body = len(data) - header_size
    if body % record_size:
        raise TraceError(f"{path}: truncated trace: it ends {body % record_size} bytes into a record "
                         f"(after {body // record_size} whole records)")
    n = body // record_size
    trace = Trace(path=path, pid=pid, start_realtime=start_rt / 1e9, events=[], names={}, region_names={},
                  version=version)
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
                                      "restore_jobs": 0, "restored_bytes": 0, "offload_rolled_back_bytes": 0,
                                      "restore_rolled_back_bytes": 0, "copy_seconds": 0.0,
                                      "stall_seconds": 0.0, "fwd_seconds": 0.0, "bwd_seconds": 0.0})

    for e in trace.events:
        if e.kind == REGION_OPEN:
            row(e.region)["regions"] += 1
        elif e.kind in (OFFLOAD_END, RESTORE_END):
            r = row(e.region)
            which = "offload" if e.kind == OFFLOAD_END else "restore"
            if e.bytes or trace.version < 2:  # v2: a job wholly rolled back moved nothing
                r[f"{which}_jobs"] += 1
            r["offloaded_bytes" if which == "offload" else "restored_bytes"] += e.bytes
            r["copy_seconds"] += e.value / 1e9
        elif e.kind in (OFFLOAD_ROLLBACK, RESTORE_ROLLBACK):
            which = "offload" if e.kind == OFFLOAD_ROLLBACK else "restore"
            row(e.region)[f"{which}_rolled_back_bytes"] += e.bytes
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
    """Times, device bytes used, and "without libckpt": used + the device bytes
    libckpt had released by offloading at that moment (the exit summary's
    definition). Version 2 samples carry that figure; for version 1 it is
    rebuilt from the jobs (which there count rolled-back items too)."""
    released = 0
    ts, used, without = [], [], []
    for e in trace.events:
        if trace.version < 2 and e.kind == OFFLOAD_END:
            released += e.bytes
        elif trace.version < 2 and e.kind == RESTORE_END:
            released = max(0, released - e.bytes)
        elif e.kind == MEM:
            ts.append(e.t)
            used.append(e.value)
            without.append(e.value + (e.bytes if trace.version >= 2 else released))
    return ts, used, without


def peak_saving(trace: Trace) -> Dict[str, Optional[float]]:
    """Device peak as sampled, and what it would have been without the bytes
    libckpt held offloaded at each sample (None without samples)."""
    _, used, without = memory_series(trace)
    if not used:
        return {"used": None, "without_libckpt": None, "saved_fraction": None}
    peak, peak_without = max(used), max(without)
    saved = (peak_without - peak) / peak_without if peak_without > 0 else None
    return {"used": peak, "without_libckpt": peak_without, "saved_fraction": saved}


def _size(n: float, unit: Optional[str] = None) -> str:
    unit = unit or ("GiB" if n >= 4 * (1 << 30) else "MiB")
    div = float(1 << 30) if unit == "GiB" else float(1 << 20)
    v = n / div
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 or v >= 100 else f"{v:.1f}"


def peak_note(peak: Dict[str, Optional[float]]) -> Optional[str]:
    """'peak 512 → 256 MiB, −50%': without libckpt → with it, the saving."""
    if peak["used"] is None:
        return None
    before, after = peak["without_libckpt"], peak["used"]
    unit = "GiB" if before >= 4 * (1 << 30) else "MiB"
    pct = f", \u2212{peak['saved_fraction'] * 100:.0f}%" if peak["saved_fraction"] else ", no saving"
    return f"peak {_size(before, unit)} \u2192 {_size(after, unit)} {unit}{pct}"


def summary(trace: Trace) -> Dict[str, object]:
    return {"path": os.path.abspath(trace.path), "pid": trace.pid, "version": trace.version,
            "start_time": trace.start_realtime, "duration_seconds": trace.duration,
            "events": len(trace.events), "dropped": trace.dropped, "regions": per_region(trace),
            "steps": per_step(trace), "call_sites": trace.sites, "device_peak": peak_saving(trace),
            "totals": totals(trace)}


def totals(trace: Trace) -> Dict[str, int]:
    """Bytes swapped each way and bytes rolled back, over the whole trace:
    comparable with the counters' offloaded / restored bytes (version 2)."""
    out = {"offload_jobs": 0, "offloaded_bytes": 0, "restore_jobs": 0, "restored_bytes": 0,
           "offload_rolled_back_bytes": 0, "restore_rolled_back_bytes": 0}
    for r in per_region(trace):
        for k in out:
            out[k] += r[k]
    return out


def region_intervals(trace: Trace) -> List[Tuple[float, float, str, int]]:
    """Top-level regions as (open, close, name, depth) in order of opening;
    nested ones too, with their depth (0 = top level)."""
    stack: List[Tuple[int, float]] = []
    out: List[Tuple[float, float, str, int]] = []
    for e in trace.events:
        if e.kind == REGION_OPEN:
            stack.append((e.region, e.t))
        elif e.kind == REGION_CLOSE:
            for k in range(len(stack) - 1, -1, -1):
                if stack[k][0] == e.region:
                    rid, t0 = stack.pop(k)
                    out.append((t0, e.t, trace.region_names.get(rid, f"#{rid}"), k))
                    break
    end = trace.duration
    for k, (rid, t0) in enumerate(stack):  # still open when the trace ended
        out.append((t0, end, trace.region_names.get(rid, f"#{rid}"), k))
    out.sort()
    return out


def step_times(trace: Trace) -> List[float]:
    return [e.t for e in trace.events if e.kind == STEP]


def backward_spans(trace: Trace) -> List[Tuple[float, float]]:
    """Per step, from the first restore to the step's end: the backward pass
    as libckpt sees it (restores are asked for by backward)."""
    bounds = [0.0] + step_times(trace) + [trace.duration]
    firsts = [e.t for e in trace.events if e.kind == RESTORE_START]
    spans = []
    for a, b in zip(bounds, bounds[1:]):
        inside = [t for t in firsts if a <= t < b]
        if inside:
            spans.append((min(inside), b))
    return spans


PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def plot(trace: Trace, out_path: str) -> None:
    """Draws the trace into out_path; the format follows its extension
    (.png, .svg or .pdf)."""
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in PLOT_FORMATS:
        raise TraceError(f"{out_path}: the plot format follows the extension: .png, .svg or .pdf")
    try:
        import matplotlib
    except ImportError:
        raise TraceError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts, used, without = memory_series(trace)
    if ts and trace.duration > ts[-1]:  # hold the last sample to the end
        ts, used, without = ts + [trace.duration], used + used[-1:], without + without[-1:]
    jobs = copy_intervals(trace)
    regions = region_intervals(trace)
    steps = step_times(trace)
    peak = peak_saving(trace)
    unit = "GiB" if (peak["without_libckpt"] or 0) >= 4 * (1 << 30) else "MiB"
    div = float(1 << 30) if unit == "GiB" else float(1 << 20)

    fig, (mem_ax, reg_ax, copy_ax) = plt.subplots(3, 1, figsize=(13, 7.5), sharex=True,
                                                   gridspec_kw={"height_ratios": [3, 1, 1]})
    if ts:
        mem_ax.step(ts, [u / div for u in without], where="post",
                    label="without libckpt (used + released by libckpt)",
                    color="tab:red", alpha=0.7)
        mem_ax.step(ts, [u / div for u in used], where="post", label="device used (with libckpt)",
                    color="tab:blue")
        note = peak_note(peak)
        mem_ax.axhline(peak["without_libckpt"] / div, color="tab:red", lw=0.6, ls=":")
        mem_ax.axhline(peak["used"] / div, color="tab:blue", lw=0.6, ls=":")
        mem_ax.text(0.99, 0.04, note, transform=mem_ax.transAxes, ha="right", va="bottom", fontsize=12,
                    fontweight="bold", bbox=dict(boxstyle="round", fc="white", ec="0.6"))
        mem_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        mem_ax.set_ylim(bottom=0)
    else:
        mem_ax.text(0.5, 0.5, "no device memory samples in this trace", ha="center", va="center",
                    transform=mem_ax.transAxes)
    mem_ax.set_ylabel(unit)
    mem_ax.set_title(f"libckpt trace of pid {trace.pid}: device memory")

    # Regions (forward, one colour per name) and the backward pass.
    names = list(dict.fromkeys(name for _, _, name, _ in regions))
    cmap = plt.get_cmap("tab10")
    colour = {n: cmap(i % 10) for i, n in enumerate(names)}
    for a, b in backward_spans(trace):
        reg_ax.axvspan(a, b, ymin=0.05, ymax=0.45, color="0.85")
    visible = trace.duration * 4e-3 or 1e-6  # a region shorter than that is drawn that wide
    for t0, t1, name, depth in regions:
        h = 4.0 / (depth + 1)
        reg_ax.broken_barh([(t0, max(t1 - t0, visible))], (11 + depth * 0.5, h),
                           facecolors=colour[name], edgecolors="none")
    stalls = [(e.t, e.value / 1e9) for e in trace.events if e.kind == STALL and e.value > 0]
    if stalls:
        reg_ax.plot([t for t, _ in stalls], [3] * len(stalls), "v", color="tab:red", ms=5, label="stall")
    handles = [matplotlib.patches.Patch(color=colour[n], label=n or "(unnamed)") for n in names[:8]]
    handles.append(matplotlib.patches.Patch(color="0.85", label="backward (first restore -> step end)"))
    if stalls:
        handles.append(matplotlib.lines.Line2D([], [], marker="v", color="tab:red", ls="", label="stall"))
    reg_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, framealpha=0.9)
    reg_ax.set_yticks([5, 13])
    reg_ax.set_yticklabels(["backward", "regions"])
    reg_ax.set_ylim(0, 18)
    reg_ax.set_title("regions (forward) and compute (backward)", fontsize=10)

    # Copies per direction.
    totals = {w: sum(e.bytes for e in trace.events if e.kind == k)
              for w, k in (("offload", OFFLOAD_END), ("restore", RESTORE_END))}
    for row, (which, colour_) in enumerate((("offload", "tab:orange"), ("restore", "tab:green"))):
        bars = [(a, max(b - a, 1e-6)) for a, b in jobs[which]]
        if bars:
            copy_ax.broken_barh(bars, (row * 10 + 1, 8), facecolors=colour_, alpha=0.8)
    copy_ax.set_yticks([5, 15])
    copy_ax.set_yticklabels([f"offload D\u2192H\n{_size(totals['offload'], unit)} {unit}",
                             f"restore H\u2192D\n{_size(totals['restore'], unit)} {unit}"], fontsize=8)
    copy_ax.set_ylim(0, 20)
    copy_ax.set_xlabel("seconds since the trace began")
    copy_ax.set_title("copies per direction (job enqueued -> applied)", fontsize=10)

    # Step markers across the three lanes.
    for k, t in enumerate(steps):
        for ax in (mem_ax, reg_ax, copy_ax):
            ax.axvline(t, color="0.4", lw=0.8, ls="--")
        mem_ax.text(t, 0.98, f" step {k + 1}", transform=mem_ax.get_xaxis_transform(), va="top",
                    ha="left", fontsize=8, color="0.3")
    fig.tight_layout()
    try:
        fig.savefig(out_path, format=PLOT_FORMATS[ext])
    except OSError as e:
        raise TraceError(f"{out_path}: {e.strerror}") from None
    finally:
        plt.close(fig)
