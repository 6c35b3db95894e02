"""ckpt-stats: what libckpt is doing, live or after the fact.

  ckpt-stats                      processes running libckpt (yours); stale segments reported
  ckpt-stats --clean              remove your stale segments (processes that died without exiting)
  ckpt-stats PID                  counters of one process, per region name, top call sites
  ckpt-stats PID --watch [SECS]   the same, refreshed every SECS seconds (default 2)
  ckpt-stats --trace FILE         summary of a CKPT_TRACE file per region and per step
  ckpt-stats --trace FILE --plot out.png|.svg|.pdf
                                  device memory over time with and without what libckpt moved
                                  (the peak saved as a note), a lane of regions and backward,
                                  step markers, and the copies per direction
  --json                          machine-readable output (any of the above)
  --symbols DIR[:DIR...]          where to look for the programs and libraries named in call
                                  sites, to name the functions libckpt could not (static ones);
                                  also searched: the live process's maps, PATH, LD_LIBRARY_PATH,
                                  the library folders, the trace's folder; --no-resolve: do not

Bad input (unknown PID, another user's or a malformed segment, a truncated
or foreign trace) gives a one-line error and exit status 2.
"""

import argparse
import json
import os
import sys
import time

from .stats_segment import BUDGET_MODES, BUDGET_WHY, SegmentError, clean_stale, list_segments, read_pid, stale_reason
from .stats_trace import TraceError, peak_note, plot, read_trace, summary
from .symbols import Resolver


def human(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else None


def fmt_rate(r):
    return "-" if r is None else f"{r:.1f}"


def table(rows, columns):
    """rows: list of lists of str; columns: headers. Left-aligned first column."""
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    lines = []
    for r in [columns] + rows:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---- one process -------------------------------------------------------------

def budget_json(s):
    """What CKPT_BUDGET chose and why; None-safe for a library without the fields."""
    if "budget_mode" not in s:
        return {"mode": "unknown", "bytes": None, "why": None, "kept_regions": 0, "kept_bytes": 0,
                "survivor_bytes": 0, "d2h_gbps": None, "h2d_gbps": None, "copy_ratio": None}
    mode = BUDGET_MODES.get(s["budget_mode"], "unknown")
    return {"mode": mode, "bytes": s["budget_bytes"] if mode == "bytes" else None,
            "why": "off: CKPT_KEEP_LAST decides" if mode == "off" else BUDGET_WHY.get(s["budget_why"], "unknown"),
            "kept_regions": s["budget_kept_regions"], "kept_bytes": s["budget_kept_bytes"],
            "survivor_bytes": s["budget_survivor_bytes"], "d2h_gbps": s["budget_d2h_gbps"] or None,
            "h2d_gbps": s["budget_h2d_gbps"] or None, "copy_ratio": s["budget_copy_ratio"] or None}


def budget_text(s):
    b = budget_json(s)
    if b["mode"] in ("off", "unknown"):
        return f"  budget      {b['mode']}" + (" (CKPT_KEEP_LAST decides)" if b["mode"] == "off" else "")
    what = "auto" if b["mode"] == "auto" else f"{human(b['bytes'])}"
    link = (f"; link d2h {fmt_rate(b['d2h_gbps'])} GB/s, h2d {fmt_rate(b['h2d_gbps'])} GB/s"
            if b["mode"] == "auto" else "")
    ratio = f", copy/compute {b['copy_ratio']:.2f}" if b["copy_ratio"] else ""
    return (f"  budget      {what}: {b['why']}; kept {b['kept_regions']} regions ({human(b['kept_bytes'])}), "
            f"survivors on the device {human(b['survivor_bytes'])}{link}{ratio}")


def segment_json(seg):
    s = seg.stats
    moved = s.get("offloaded_bytes_total", 0) + s.get("restored_bytes_total", 0)
    regions = [dict(r, achieved_gbps=gbps(r["offloaded_bytes"] + r["restored_bytes"], r["copy_seconds"]))
               for r in seg.regions]
    h = seg.header
    return {"pid": seg.pid, "uid": seg.uid, "command": h["command"], "mode": h["mode"], "version": h["version"],
            "start_time": h["start_realtime_ns"] / 1e9, "updated": seg.updated, "publishes": seg.publishes,
            "profile": seg.flags["profile"], "sync": seg.flags["sync"], "trace": seg.flags["trace"],
            "stats": s, "achieved_gbps": gbps(moved, s.get("copy_seconds_total", 0.0)), "regions": regions,
            "budget": budget_json(s), "call_sites": {"state": seg.stacks, "sites": seg.sites}}


def segment_text(seg):
    s, h = seg.stats, seg.header
    now = time.time()
    up = now - h["start_realtime_ns"] / 1e9
    ago = f"updated {now - seg.updated:.1f} s ago" if seg.updated else "nothing published yet"
    moved = s["offloaded_bytes_total"] + s["restored_bytes_total"]
    out = [f"libckpt in pid {seg.pid} ({h['command']}), mode {h['mode']}, up {up:.1f} s, {ago}, "
           f"{seg.publishes} publishes",
           f"  regions     {s['regions_opened']} opened, {s['regions_closed']} closed"
           + (f"; {s['regions_carried']} carried into this cycle (not restored yet: a pipeline schedule)"
              if s.get("regions_carried") else ""),
           f"  tagged      {s['tagged_allocs']} allocations, {s['tagged_allocs_live']} live "
           f"({human(s['tagged_bytes_live'])}); untagged {s['untagged_allocs']}; "
           f"mapping cache hits {s['mapping_cache_hits']} ({human(s['mapping_cache_bytes'])} cached)",
           f"  moved       offloaded {s['offloads']} ({human(s['offloaded_bytes_total'])}), restored "
           f"{s['restores']} ({human(s['restored_bytes_total'])}); copy {s['copy_seconds_total']:.3f} s = "
           f"{fmt_rate(gbps(moved, s['copy_seconds_total']))} GB/s; stall {s['stall_seconds_total']:.3f} s",
           f"  device      used {human(s['device_used_now'])} (peak {human(s['device_used_peak'])}); released by "
           f"offload {human(s['device_bytes_released'])} (peak {human(s['device_bytes_released_peak'])})",
           f"  host pool   {human(s['host_pool_bytes'])} pinned, {human(s['host_bytes_in_use'])} in use; "
           f"full {s['host_pool_exhausted']} times",
           f"  errors      driver {s['driver_errors']}, restores without device memory {s['restore_oom']}",
           budget_text(s),
           f"  hooked      {s['hooked_calls']} driver calls"]
    if "peer_bytes_in_use" in s:  # peer partitioning, CKPT_VERIFY (fields appended after streams_known)
        out[-1:-1] = [f"  peer        slices {human(s['peer_bytes_in_use'])} in {human(s['peer_slab_bytes'])} of slabs "
                      f"({human(s['contiguous_bytes'])} contiguous); store allocations {s['store_allocs']}, "
                      f"avoided {s['allocs_avoided']}; mismatches {s['peer_mismatches']}, lost {s['peer_lost']}",
                      f"  verify      {s['verify_checked']} restores checked, {s['verify_failures']} failures"]
    if seg.regions:
        rows = [[r["name"] or "(unnamed)", r["regions"], r["tagged_allocs"], human(r["tagged_bytes"]), r["offloads"],
                 human(r["offloaded_bytes"]), r["restores"], human(r["restored_bytes"]),
                 f"{r['copy_seconds']:.3f}",
                 fmt_rate(gbps(r["offloaded_bytes"] + r["restored_bytes"], r["copy_seconds"])),
                 f"{r['stall_seconds']:.3f}",
                 f"{r['fwd_seconds']:.3f}" if seg.flags["profile"] else "-",
                 f"{r['bwd_seconds']:.3f}" if seg.flags["profile"] else "-"] for r in seg.regions]
        out += ["", table(rows, ["region", "count", "tagged", "tagged B", "offloads", "offloaded", "restores",
                                 "restored", "copy s", "GB/s", "stall s", "fwd s", "bwd s"])]
        if not seg.flags["profile"]:
            out.append("(fwd/bwd device times: CKPT_PROFILE=1)")
    out.append("")
    if seg.stacks == "unavailable":
        out.append("call sites: unavailable (libckpt was built without libunwind)")
    elif seg.stacks == "off":
        out.append("call sites: off (CKPT_STACKS=1 records them)")
    elif not seg.sites:
        out.append("call sites: none recorded yet")
    else:
        out.append("top call sites by offloaded bytes:")
        for site in seg.sites:
            out.append(f"  #{site['id']}: {human(site['offloaded_bytes'])} offloaded, {site['allocs']} allocations")
            out += [f"      {f}" for f in site["frames"]]
    return "\n".join(out)


_resolve = {"on": True, "dirs": []}


def _resolved(seg_or_sites, pid=None, near=None):
    """Call sites with the frames libckpt could not name resolved (ckpt.symbols)."""
    if not _resolve["on"]:
        return seg_or_sites
    dirs = list(_resolve["dirs"]) + ([near] if near else []) + [os.getcwd()]
    key = (pid, tuple(dirs))
    if _resolve.get("key") != key:  # --watch: one resolver (and symbol tables read once)
        _resolve["key"], _resolve["resolver"] = key, Resolver(search=dirs, pid=pid)
    return _resolve["resolver"].sites(seg_or_sites)


def show_pid(pid, as_json, watch):
    if watch is None:
        seg = read_pid(pid)
        if seg.sites:
            seg.sites = _resolved(seg.sites, pid=pid)
        gone = stale_reason(seg.pid, seg.header["proc_start_ticks"])
        if gone:
            print(f"ckpt-stats: warning: {gone}: these are its last counters (ckpt-stats --clean removes "
                  "the segment)", file=sys.stderr)
        print(json.dumps(segment_json(seg), indent=2) if as_json else segment_text(seg))
        return 0
    clear = sys.stdout.isatty() and not as_json
    first = True
    try:
        while True:
            try:
                seg = read_pid(pid)
                gone = stale_reason(seg.pid, seg.header["proc_start_ticks"])
            except SegmentError as e:
                if first:
                    raise
                gone = str(e)
            if gone and not first:
                print(f"ckpt-stats: process {pid} is gone ({gone})")
                return 0
            first = False
            if seg.sites:
                seg.sites = _resolved(seg.sites, pid=pid)
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(json.dumps(segment_json(seg)) if as_json else segment_text(seg), flush=True)
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0


# ---- all processes -------------------------------------------------------------

def show_list(as_json):
    ls = list_segments()
    if as_json:
        procs = [{"pid": g.pid, "command": g.header["command"], "mode": g.header["mode"],
                  "start_time": g.header["start_realtime_ns"] / 1e9, "updated": g.updated, "path": g.path,
                  "regions_opened": g.stats["regions_opened"],
                  "offloaded_bytes_total": g.stats["offloaded_bytes_total"],
                  "device_bytes_released": g.stats["device_bytes_released"]} for g in ls.live]
        print(json.dumps({"processes": procs, "stale": ls.stale, "unreadable": ls.unreadable,
                          "other_users": ls.others}, indent=2))
        return 0
    if ls.live:
        rows = [[g.pid, g.header["command"], g.header["mode"], g.stats["regions_opened"],
                 human(g.stats["offloaded_bytes_total"]), human(g.stats["device_bytes_released"]),
                 human(g.stats["host_pool_bytes"])] for g in ls.live]
        print(table(rows, ["pid", "command", "mode", "regions", "offloaded", "released now", "host pool"]))
    else:
        print("no process of yours is running libckpt")
    for u in ls.unreadable:
        print(f"unreadable: {u['error']}")
    for s in ls.stale:
        print(f"stale: {s['path']} ({s['reason']}); ckpt-stats --clean removes it")
    return 0


def clean(as_json):
    removed = clean_stale()
    if as_json:
        print(json.dumps({"removed": removed}, indent=2))
    else:
        for s in removed:
            print(f"removed {s['path']} ({s['reason']})")
        if not removed:
            print("no stale segments")
    return 0


# ---- a trace -------------------------------------------------------------------

def trace_text(sm):
    out = [f"trace {sm['path']}: pid {sm['pid']}, {sm['duration_seconds']:.3f} s, {sm['events']} events"
           + (f", {sm['dropped']} records DROPPED (buffer full)" if sm["dropped"] else "")]
    if sm["regions"]:
        rows = [[r["name"] or "(unnamed)", r["regions"], r["offload_jobs"], human(r["offloaded_bytes"]),
                 r["restore_jobs"], human(r["restored_bytes"]), f"{r['copy_seconds']:.3f}",
                 fmt_rate(r["achieved_gbps"]), f"{r['stall_seconds']:.3f}", f"{r['fwd_seconds']:.3f}",
                 f"{r['bwd_seconds']:.3f}"] for r in sm["regions"]]
        out += ["", table(rows, ["region", "count", "offload jobs", "offloaded", "restore jobs", "restored",
                                 "copy s", "GB/s", "stall s", "fwd s", "bwd s"])]
    tot = sm.get("totals") or {}
    if tot.get("offload_rolled_back_bytes") or tot.get("restore_rolled_back_bytes"):
        out.append(f"rolled back (copied, not swapped; not counted above): "
                   f"{human(tot['offload_rolled_back_bytes'])} of offloads, "
                   f"{human(tot['restore_rolled_back_bytes'])} of restores")
    peak = sm.get("device_peak") or {}
    if peak.get("used") is not None:
        out.append(f"device {peak_note(peak)} (without libckpt = in use + released by libckpt, at the samples)")
    if sm["steps"]:
        rows = [[s["step"], f"{s['start']:.3f}", f"{s['seconds']:.3f}", s["regions"], human(s["offloaded_bytes"]),
                 human(s["restored_bytes"]), f"{s['stall_seconds']:.3f}", human(s["device_used_peak"])]
                for s in sm["steps"]]
        out += ["", table(rows, ["step", "start s", "seconds", "regions", "offloaded", "restored", "stall s",
                                 "device peak"])]
    if sm["call_sites"]:
        out += ["", "top call sites by offloaded bytes:"]
        for site in sm["call_sites"]:
            out.append(f"  #{site['id']}: {human(site['offloaded_bytes'])} offloaded, {site['allocs']} allocations")
            out += [f"      {f}" for f in site["frames"]]
    return "\n".join(out)


def show_trace(path, as_json, png):
    tr = read_trace(path)
    sm = summary(tr)
    sm["call_sites"] = _resolved(sm["call_sites"], near=os.path.dirname(os.path.abspath(path)))
    if png:
        plot(tr, png)
    print(json.dumps(sm, indent=2) if as_json else trace_text(sm))
    if png and not as_json:
        print(f"\nplot written to {png}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="ckpt-stats", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("pid", nargs="?", type=int, help="a process running libckpt")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until the process exits")
    ap.add_argument("--clean", action="store_true", help="remove your stale segments")
    ap.add_argument("--trace", metavar="FILE", help="summarise a CKPT_TRACE file")
    ap.add_argument("--plot", metavar="FILE", help="with --trace: draw memory, regions and copies into FILE "
                    "(.png, .svg or .pdf)")
    ap.add_argument("--symbols", metavar="DIRS", default="",
                    help="colon-separated folders holding the programs and libraries of the call sites")
    ap.add_argument("--no-resolve", action="store_true", help="show call-site frames as libckpt recorded them")
    a = ap.parse_args(argv)
    _resolve["on"] = not a.no_resolve
    _resolve["dirs"] = [d for d in a.symbols.split(":") if d]
    if a.plot and not a.trace:
        ap.error("--plot needs --trace FILE")
    if a.trace and (a.pid is not None or a.clean or a.watch is not None):
        ap.error("--trace takes no PID, --clean or --watch")
    if a.watch is not None and (a.pid is None or a.watch <= 0):
        ap.error("--watch needs a PID and a positive interval")
    try:
        if a.trace:
            return show_trace(a.trace, a.json, a.plot)
        if a.clean:
            return clean(a.json)
        if a.pid is not None:
            return show_pid(a.pid, a.json, a.watch)
        return show_list(a.json)
    except (SegmentError, TraceError) as e:
        print(f"ckpt-stats: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
