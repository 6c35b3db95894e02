"""Reads libckpt's live stats segments, /dev/shm/libckpt.<uid>.<pid>, from
another process (the layout of hooks/stats_segment.h).

The library rewrites the segment under a seqlock: a sequence number that is
odd while it writes. A reader copies the bytes between two reads of the
sequence and keeps the copy when both are the same even number, retrying a
bounded number of times. Everything read is validated (magic, version,
sizes, offsets, counts) before use; a problem raises SegmentError with a
one-line reason.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .library import CkptStats

SHM_DIR = "/dev/shm"
NAME_RE = re.compile(r"^libckpt\.(\d+)\.(\d+)$")
MAGIC = b"CKPTSTAT"
VERSION = 1
SNAPSHOT_TRIES = 2000

# struct ckpt_seg_header, explicit padding (struct has none with "<").
HEADER = struct.Struct("<8s13Ii I4xQQ32s16sII")
HEADER_FIELDS = ("magic", "version", "seg_size", "stats_size", "name_size", "site_size", "max_names",
                 "max_sites", "max_frames", "frame_len", "live_off", "stats_off", "names_off", "sites_off",
                 "pid", "uid", "start_realtime_ns", "proc_start_ticks", "command", "mode", "stacks", "flags")
LIVE = struct.Struct("<QQQII")  # seq, publishes, updated_realtime_ns, nnames, nsites
NAME_ROW = struct.Struct("<48s7Q4d")  # struct ckpt_name_stats
NAME_FIELDS = ("regions", "tagged_allocs", "tagged_bytes", "offloads", "offloaded_bytes", "restores",
               "restored_bytes", "copy_seconds", "stall_seconds", "fwd_seconds", "bwd_seconds")
SITE_HEAD = struct.Struct("<QQII")  # offloaded_bytes, allocs, id, nframes; then pc[], frame[][]

STACKS = {0: "off", 1: "on", 2: "unavailable"}
FLAG_PROFILE, FLAG_SYNC, FLAG_TRACE = 1, 2, 4

# struct ckpt_stats from the ctypes mirror the binding keeps (one list).
_CTYPE_CODES = {ctypes.c_uint64: "Q", ctypes.c_double: "d"}
STATS_FIELDS = [name for name, _ in CkptStats._fields_]
STATS = struct.Struct("<" + "".join(_CTYPE_CODES[t] for _, t in CkptStats._fields_))

# stats budget_mode / budget_why: the values of include/ckpt.h's budget enums
BUDGET_MODES = {0: "off", 1: "auto", 2: "bytes"}
BUDGET_WHY = {0: "nothing decided yet",
              1: "measuring the link and the regions' compute (one offload a step until both are known)",
              2: "the copies hide behind the compute: offloading",
              3: "the copies would not hide behind the compute: keeping the rest on the device",
              4: "survivors over the budget: offloading the oldest",
              5: "survivors under the budget: kept on the device"}


class SegmentError(Exception):
    """A segment that cannot be read: the message says why, in one line."""


@dataclass
class Segment:
    path: str
    pid: int
    uid: int
    header: Dict[str, object]
    publishes: int
    updated: float  # unix time of the last publish (0: never)
    stats: Dict[str, float]
    regions: List[Dict[str, object]]
    sites: List[Dict[str, object]]
    stacks: str
    flags: Dict[str, bool] = field(default_factory=dict)


def segment_path(pid: int, uid: Optional[int] = None) -> str:
    return os.path.join(SHM_DIR, f"libckpt.{os.getuid() if uid is None else uid}.{pid}")


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_header(data: bytes, path: str, total: Optional[int] = None) -> Dict[str, object]:
    """The validated header; `total` is the segment's size (default len(data))."""
    total = len(data) if total is None else total
    if len(data) < HEADER.size:
        raise SegmentError(f"{path}: {len(data)} bytes, too short for a libckpt stats segment")
    h = dict(zip(HEADER_FIELDS, HEADER.unpack_from(data)))
    if h["magic"] != MAGIC:
        raise SegmentError(f"{path}: not a libckpt stats segment (bad magic; still being created?)")
    if h["version"] != VERSION:
        raise SegmentError(f"{path}: segment version {h['version']}, this ckpt-stats reads version {VERSION}")
    size = h["seg_size"]
    if size > total:
        raise SegmentError(f"{path}: header says {size} bytes, the segment has {total}")
    need = {"stats_size": 8, "name_size": NAME_ROW.size,
            "site_size": SITE_HEAD.size + h["max_frames"] * (8 + h["frame_len"])}
    for key, least in need.items():
        if h[key] < least:
            raise SegmentError(f"{path}: {key} {h[key]} is smaller than {least}")
    parts = [("live_off", LIVE.size), ("stats_off", h["stats_size"]),
             ("names_off", h["name_size"] * h["max_names"]), ("sites_off", h["site_size"] * h["max_sites"])]
    for key, length in parts:
        if h[key] < HEADER.size or h[key] + length > size:
            raise SegmentError(f"{path}: {key} {h[key]} (+{length}) lies outside the {size}-byte segment")
    h["command"] = _cstr(h["command"])
    h["mode"] = _cstr(h["mode"])
    return h


def _snapshot(data_source, h: Dict[str, object], path: str) -> bytes:
    """Bytes of one consistent publish (seqlock read)."""
    off, size = h["live_off"], h["seg_size"]
    for attempt in range(SNAPSHOT_TRIES):
        (seq1,) = struct.unpack_from("<Q", data_source, off)
        if not seq1 & 1:
            data = bytes(data_source[:size])
            (seq2,) = struct.unpack_from("<Q", data_source, off)
            if seq1 == seq2:
                return data
        time.sleep(0 if attempt < 100 else 0.001)
    raise SegmentError(f"{path}: no consistent snapshot after {SNAPSHOT_TRIES} tries "
                       "(its writer died while publishing?)")


def _parse(data: bytes, h: Dict[str, object], path: str) -> Segment:
    seq, publishes, updated_ns, nnames, nsites = LIVE.unpack_from(data, h["live_off"])
    if nnames > h["max_names"] or nsites > h["max_sites"]:
        raise SegmentError(f"{path}: {nnames} names / {nsites} sites exceed the table sizes")
    raw = data[h["stats_off"]:h["stats_off"] + h["stats_size"]]
    known = min(len(STATS_FIELDS), h["stats_size"] // 8)  # a newer library may have more fields
    fmt = STATS.format[:1 + known]
    stats = dict(zip(STATS_FIELDS[:known], struct.unpack_from(fmt, raw)))
    stats.pop("size", None)
    regions = []
    for i in range(nnames):
        row = NAME_ROW.unpack_from(data, h["names_off"] + i * h["name_size"])
        regions.append({"name": _cstr(row[0]), **dict(zip(NAME_FIELDS, row[1:]))})
    sites = []
    nf, fl = h["max_frames"], h["frame_len"]
    for i in range(nsites):
        base = h["sites_off"] + i * h["site_size"]
        offloaded, allocs, site_id, nframes = SITE_HEAD.unpack_from(data, base)
        nframes = min(nframes, nf)
        pcs = struct.unpack_from(f"<{nf}Q", data, base + SITE_HEAD.size)
        texts = base + SITE_HEAD.size + 8 * nf
        frames = [_cstr(data[texts + k * fl:texts + (k + 1) * fl]) or f"{pcs[k]:#x}" for k in range(nframes)]
        sites.append({"id": site_id, "offloaded_bytes": offloaded, "allocs": allocs, "frames": frames})
    flags = {"profile": bool(h["flags"] & FLAG_PROFILE), "sync": bool(h["flags"] & FLAG_SYNC),
             "trace": bool(h["flags"] & FLAG_TRACE)}
    return Segment(path=path, pid=h["pid"], uid=h["uid"], header=h, publishes=publishes,
                   updated=updated_ns / 1e9, stats=stats, regions=regions, sites=sites,
                   stacks=STACKS.get(h["stacks"], "unknown"), flags=flags)


def read_path(path: str) -> Segment:
    """Reads one segment file, owner-checked; SegmentError on any problem."""
    m = NAME_RE.match(os.path.basename(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SegmentError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SegmentError(f"{path}: not a regular file")
        if st.st_uid != os.getuid():
            raise SegmentError(f"{path}: belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
        if st.st_size < HEADER.size:
            raise SegmentError(f"{path}: {st.st_size} bytes, too short for a libckpt stats segment")
        with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as mm:
            h = _parse_header(mm[:HEADER.size], path, st.st_size)  # written once, before the magic
            data = _snapshot(mm, h, path)
    finally:
        os.close(fd)
    seg = _parse(data, _parse_header(data, path), path)
    if m and (int(m.group(1)), int(m.group(2))) != (seg.uid, seg.pid):
        raise SegmentError(f"{path}: its header says uid {seg.uid} pid {seg.pid}, its name does not")
    return seg


def proc_start_ticks(pid: int) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    try:
        return int(text[text.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def maps_segment(pid: int, uid: int) -> Optional[bool]:
    """Whether the process still maps its segment (None: cannot tell). After
    an exec the pid and start time stay, the mapping does not."""
    tail = f"/libckpt.{uid}.{pid}"
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(line.rstrip("\n").endswith(tail) for line in f)
    except OSError:
        return None


def stale_reason(seg_pid: int, start_ticks: int, uid: Optional[int] = None) -> Optional[str]:
    """Why the segment's process is gone, or None while it runs."""
    if not pid_alive(seg_pid):
        return f"process {seg_pid} is gone"
    now = proc_start_ticks(seg_pid)
    if start_ticks and now is not None and now != start_ticks:
        return f"pid {seg_pid} now belongs to another process"
    if maps_segment(seg_pid, os.getuid() if uid is None else uid) is False:
        return f"process {seg_pid} no longer maps its segment (it exec'd or is exiting)"
    return None


@dataclass
class Listing:
    live: List[Segment]
    stale: List[Dict[str, object]]       # path, pid, reason
    unreadable: List[Dict[str, object]]  # path, pid, error (a live process's segment we could not read)
    others: int                          # segments of other users, not shown


def list_segments() -> Listing:
    out = Listing(live=[], stale=[], unreadable=[], others=0)
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError as e:
        raise SegmentError(f"{SHM_DIR}: {e.strerror}") from None
    me = os.getuid()
    for name in names:
        m = NAME_RE.match(name)
        if not m:
            continue
        uid, pid = int(m.group(1)), int(m.group(2))
        path = os.path.join(SHM_DIR, name)
        if uid != me:
            out.others += 1
            continue
        try:
            seg = read_path(path)
        except SegmentError as e:
            if pid_alive(pid):
                out.unreadable.append({"path": path, "pid": pid, "error": str(e)})
            else:
                out.stale.append({"path": path, "pid": pid, "reason": f"process {pid} is gone (unreadable: {e})"})
            continue
        reason = stale_reason(pid, seg.header["proc_start_ticks"], uid)
        if reason:
            out.stale.append({"path": path, "pid": pid, "reason": reason})
        else:
            out.live.append(seg)
    return out


def clean_stale() -> List[Dict[str, object]]:
    """Removes the current user's stale segments; returns what was removed."""
    removed = []
    for s in list_segments().stale:
        try:
            os.unlink(s["path"])
            removed.append(s)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SegmentError(f"{s['path']}: cannot remove: {e.strerror}") from None
    return removed


def read_pid(pid: int) -> Segment:
    """The segment of `pid` for the current user, or SegmentError saying why not."""
    path = segment_path(pid)
    if os.path.lexists(path):
        return read_path(path)
    try:
        others = [n for n in os.listdir(SHM_DIR) if (m := NAME_RE.match(n)) and int(m.group(2)) == pid]
    except OSError:
        others = []
    if others:
        uid = NAME_RE.match(others[0]).group(1)
        raise SegmentError(f"pid {pid}: its libckpt segment belongs to uid {uid}, not to you (uid {os.getuid()})")
    if not pid_alive(pid):
        raise SegmentError(f"no process {pid}")
    raise SegmentError(f"process {pid} is not running libckpt (no {path}; CKPT_STATS_SHM=0, or no CUDA call yet)")
