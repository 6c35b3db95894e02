#!/usr/bin/env python3
"""The anchor benchmark of DESIGN.md and the GPU comparison of issue 14: median
fwd+bwd step of a stack of encoder layers, for each way of saving activation
memory, side by side in one run, each mode in a process of its own:

  none                no checkpointing
  checkpoint          torch.utils.checkpoint per layer (use_reentrant=False)
  save_on_cpu         torch.autograd.graph.save_on_cpu(pin_memory=True)
  libckpt_regions     scripts/ckpt-run --patch none --regions TransformerEncoderLayer (offload only)
  libckpt_checkpoint  scripts/ckpt-run (CKPT_PATCH=torch) + torch.utils.checkpoint per layer
  libckpt_budget      offload only with CKPT_BUDGET=auto (offload what the copies hide)
  libckpt_loaded      libckpt loaded with CKPT_MODE=none (interposition only), no checkpointing

Presets: --full is the anchor (16 layers, d=2048, 16 heads, ff=8192, batch 8 x
2048 tokens, bf16, dropout 0.1); --small (default) is a quick run of the same
shape of model. Every run also does the long-context configuration (8 layers,
d=4096, 32 heads, ff=16384, batch 1 x 16384 tokens: offload-only has compute
to hide behind; --no-long skips it) with the modes the issue-14 targets need,
and a plain pinned copy (torch, 1 GiB, each direction alone and both at once)
to compare libckpt's copies with (its copy rate per direction, measured by
libckpt in the same run, from the stats). The last table is the issue-14
targets, each met or missed with the measured value. Peak activation memory
is measured the same way in every mode: device memory in use from
cuMemGetInfo (total - free), sampled every ~1 ms by a thread and at the end of
each forward and backward, during 2 steps, minus the memory in use before them
after emptying torch's pool and libckpt's mapping cache; every mode uses
PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync. Prints markdown tables for
BENCHMARKS.md. Estimated time on an H200 (docs/H200.md: 215 ms anchor step,
55 GB/s link): --small ~1.5 min, long-context ~2 min, copies ~10 s.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "gpu"))
import results  # noqa: E402

PRESETS = {
    "full": dict(layers=16, d=2048, heads=16, ff=8192, batch=8, seq=2048, steps=20, warmup=5, timeout=420),
    "small": dict(layers=8, d=1024, heads=16, ff=4096, batch=4, seq=2048, steps=10, warmup=3, timeout=150),
    # ~2.5 GiB of saved activations per layer, ~20 GiB in all without checkpointing: fits an H200
    "long": dict(layers=8, d=4096, heads=32, ff=16384, batch=1, seq=16384, steps=5, warmup=2, timeout=150),
    "cpu": dict(layers=2, d=64, heads=4, ff=128, batch=2, seq=32, steps=3, warmup=1, timeout=120),
    "cpu-long": dict(layers=2, d=64, heads=4, ff=128, batch=1, seq=64, steps=2, warmup=1, timeout=120),
}
LONG_MODES = ["none", "save_on_cpu", "libckpt_regions", "libckpt_budget"]
# mode -> extra environment of its ckpt-run (on top of CKPT_MODE=host CKPT_OFFLOAD=auto)
MODE_ENV = {"libckpt_budget": {"CKPT_BUDGET": "auto"}, "libckpt_loaded": {"CKPT_MODE": "none"}}
# mode -> (description, how the worker runs the layers, ckpt-run flags or None for a plain process)
MODES = {
    "none": ("no checkpointing", "none", None),
    "checkpoint": ("`torch.utils.checkpoint` per layer", "checkpoint", None),
    "save_on_cpu": ("`save_on_cpu(pin_memory=True)`", "save_on_cpu", None),
    "libckpt_regions": ("libckpt `CKPT_REGIONS=TransformerEncoderLayer` (offload only)", "none",
                        ["--patch", "none", "--regions", "TransformerEncoderLayer"]),
    "libckpt_checkpoint": ("libckpt `CKPT_PATCH=torch` + `torch.utils.checkpoint`", "checkpoint", []),
    "libckpt_budget": ("libckpt offload only, `CKPT_BUDGET=auto`", "none",
                       ["--patch", "none", "--regions", "TransformerEncoderLayer"]),
    "libckpt_loaded": ("libckpt loaded, `CKPT_MODE=none`", "none", ["--patch", "none"]),
}


def worker(args):
    """One mode in this process: times steps, then measures peak memory."""
    import torch
    import torch.nn as nn
    from torch.utils.checkpoint import checkpoint

    import devmem

    cfg = PRESETS[args.preset]
    cuda = torch.cuda.is_available() and args.preset != "cpu"
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: the long preset has 1.6 G parameters
        layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg["d"], cfg["heads"], cfg["ff"], 0.1, batch_first=True)
            for _ in range(cfg["layers"])).to(dtype=torch.bfloat16)
    x = torch.randn(cfg["batch"], cfg["seq"], cfg["d"], device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sampler = None

    def step():
        layers.zero_grad(set_to_none=False)  # gradients stay allocated: part of the baseline
        ctx = (torch.autograd.graph.save_on_cpu(pin_memory=cuda) if args.worker == "save_on_cpu"
               else contextlib.nullcontext())
        with ctx:
            out = x
            for layer in layers:
                out = checkpoint(layer, out, use_reentrant=False) if args.worker == "checkpoint" else layer(out)
            loss = out.float().pow(2).mean()
        if sampler:
            sampler.mark()
        loss.backward()
        if sampler:
            sampler.mark()

    for _ in range(cfg["warmup"]):
        step()
    sync()
    times = []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    devmem.empty_caches()
    sampler = devmem.PeakSampler().start()
    for _ in range(2):
        step()
        sync()
    sampler.stop()
    out = {"mode": args.label, "step_ms": times, "median_ms": statistics.median(times), "memory": sampler.as_dict(),
           "card": torch.cuda.get_device_name() if cuda else "cpu", "ckpt_stats": libckpt_stats()}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{args.label}: median {out['median_ms']:.1f} ms, peak activation memory "
          f"{sampler.extra / devmem.GiB:.2f} GiB")


def libckpt_stats():
    """libckpt's counters when it is loaded in this process (ckpt-run), else {}."""
    try:
        import ckpt
        from ckpt import library
    except ImportError:
        return {}
    if not library.available() or library.get_or_none() is None:
        return {}
    return ckpt.stats()


def copy_worker(args):
    """A plain pinned copy with torch: 1 GiB each direction alone, then both at once."""
    import torch

    cuda = torch.cuda.is_available() and not args.preset.startswith("cpu")
    n = (1 << 30) if cuda else (1 << 20)
    out = {"card": torch.cuda.get_device_name() if cuda else "cpu", "bytes": n}
    if not cuda:
        out.update(d2h_gbps=None, h2d_gbps=None, duplex_gbps=None)
    else:
        host_a = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        host_b = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        dev_a = torch.empty(n, dtype=torch.uint8, device="cuda")
        dev_b = torch.empty(n, dtype=torch.uint8, device="cuda")
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

        def timed(fn, reps=5):
            best = float("inf")
            for _ in range(reps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            return best

        def both():
            with torch.cuda.stream(s1):
                host_a.copy_(dev_a, non_blocking=True)
            with torch.cuda.stream(s2):
                dev_b.copy_(host_b, non_blocking=True)

        out["d2h_gbps"] = n / timed(lambda: host_a.copy_(dev_a, non_blocking=True)) / 1e9
        out["h2d_gbps"] = n / timed(lambda: dev_b.copy_(host_b, non_blocking=True)) / 1e9
        out["duplex_gbps"] = 2 * n / timed(both) / 1e9
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"copy: {out}")


def describe(cfg, preset):
    return (f"{preset} preset: {cfg['layers']} encoder layers, d={cfg['d']}, {cfg['heads']} heads, ff={cfg['ff']}, "
            f"batch {cfg['batch']} x {cfg['seq']} tokens, bf16, dropout 0.1; median of {cfg['steps']} steps "
            f"after {cfg['warmup']} warm-up")


def run_modes(args, res, preset, modes, work):
    """Each mode in its own process; returns {mode: (title, child)}."""
    cfg = PRESETS[preset]
    timeout = args.mode_timeout or cfg["timeout"]
    rows = {}
    for mode in modes:
        if mode not in MODES:
            res.fail(f"mode {mode}", f"unknown; known: {', '.join(MODES)}")
            continue
        title, style, ckpt_flags = MODES[mode]
        out = os.path.join(work, f"step-time-{preset}-{mode}.json")
        cmd = [args.python, os.path.abspath(__file__), "--worker", style, "--label", mode, "--preset", preset,
               "--json", out]
        if ckpt_flags is None:
            env = results.plain_env()
        else:
            env = results.plain_env(dict({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_OFFLOAD": "auto"},
                                         **MODE_ENV.get(mode, {})))
            cmd = ["bash", args.ckpt_run] + ckpt_flags + ["--"] + cmd
        child = results.run_child(f"bench {preset} {mode}", cmd, env, out, timeout, work)
        res.check(f"{preset} {mode} ran", child.ok, child.why() or f"{child.seconds:.0f} s", needs_gpu=False)
        rows[mode] = (title, child)
    return rows


def mode_table(res, preset, rows):
    cfg = PRESETS[preset]
    base = rows["none"][1].data["median_ms"] if "none" in rows and rows["none"][1].ok else None
    card = next((c.data.get("card") for _, c in rows.values() if c.ok), "?")
    lines = [f"card: {card}", "",
             "| mode | median step ms | x none | peak activation memory GiB | libckpt offloaded GiB/step |",
             "|---|---|---|---|---|"]
    for mode, (title, c) in rows.items():
        if not c.ok:
            lines.append(f"| {title} | failed | | | |")
            continue
        ms, mem = c.data["median_ms"], c.data["memory"]["extra_bytes"] / results.GiB
        ratio = f"x{ms / base:.2f}" if base else "n/a"
        off = f"{offloaded_per_step(c, cfg) / results.GiB:.2f}" if c.summary else "-"
        lines.append(f"| {title} | {ms:.0f} | {ratio} | {mem:.2f} | {off} |")
        res.figure(f"{preset} {mode}: median step", f"{ms:.1f} ms", ratio)
        res.figure(f"{preset} {mode}: peak activation memory", f"{mem:.2f} GiB")
    res.tables.append(describe(cfg, preset) + "\n\n" + "\n".join(lines))


def offloaded_per_step(c, cfg):
    """Offloaded bytes per step: libckpt's exit summary / all steps run."""
    return (c.summary or {}).get("offloaded_mib", 0) * results.MiB / (cfg["warmup"] + cfg["steps"] + 2)


def targets(res, preset, rows, long_rows, long_preset, copy):
    """The issue-14 GPU targets, each met or missed with the measured value."""
    def ok(m, r=rows):
        return m in r and r[m][1].ok

    def ms(m, r=rows):
        return r[m][1].data["median_ms"]

    def peak(m, r=rows):
        return r[m][1].data["memory"]["extra_bytes"]

    out = []

    def line(target, met, value):
        if res.dry_run:  # a CPU run says nothing of the GPU targets: the plumbing only
            met = None
        out.append(f"| {target} | {'n/a' if met is None else ('met' if met else '**missed**')} | {value} |")

    if ok("checkpoint") and ok("libckpt_checkpoint"):
        r = ms("libckpt_checkpoint") / ms("checkpoint")
        line(f"{preset}: checkpoint + host offload <= 1.01x torch.utils.checkpoint", r <= 1.01, f"x{r:.3f}")
        released = (rows["libckpt_checkpoint"][1].summary or {}).get("released_peak_mib", 0) * results.MiB
        saved = peak("checkpoint") - peak("libckpt_checkpoint")
        line(f"{preset}: its peak lower by >= 90% of the offloaded bytes (device released peak)",
             released > 0 and saved >= 0.9 * released,
             f"{saved / results.GiB:.2f} GiB lower, {released / results.GiB:.2f} GiB released"
             + (f" ({saved / released:.0%})" if released > 0 else ""))
    else:
        line(f"{preset}: checkpoint + host offload <= 1.01x torch.utils.checkpoint", None, "not run")
    lr, lp = long_rows or {}, long_preset
    link = copy.get("d2h_gbps") if copy else None
    if ok("libckpt_regions", lr) and ok("none", lr) and link:
        c = lr["libckpt_regions"][1]
        bound = max(ms("none", lr), offloaded_per_step(c, PRESETS[lp]) / (link * 1e9) * 1e3)
        r = ms("libckpt_regions", lr) / bound
        line(f"{lp}: offload-only <= 1.10x max(compute, bytes / link)", r <= 1.10,
             f"x{r:.3f} (step {ms('libckpt_regions', lr):.0f} ms, bound {bound:.0f} ms)")
        if ok("save_on_cpu", lr):
            f = ms("save_on_cpu", lr) / ms("libckpt_regions", lr)
            line(f"{lp}: offload-only >= 2.5x faster than save_on_cpu", f >= 2.5, f"{f:.2f}x")
    else:
        line(f"{lp}: offload-only <= 1.10x max(compute, bytes / link)", None, "not run")
    for name, r_, p_ in ((preset, rows, preset), (lp, lr, lp)):
        if ok("libckpt_budget", r_) and ok("none", r_):
            r = ms("libckpt_budget", r_) / ms("none", r_)
            st = r_["libckpt_budget"][1].data.get("ckpt_stats") or {}
            line(f"{p_}: CKPT_BUDGET=auto <= 1.03x no checkpointing", r <= 1.03,
                 f"x{r:.3f}, peak {peak('libckpt_budget', r_) / results.GiB:.2f} vs "
                 f"{peak('none', r_) / results.GiB:.2f} GiB, kept {st.get('budget_kept_regions', '?')} regions")
    ck = {}
    for r_ in (lr, rows):
        for m in ("libckpt_regions", "libckpt_budget", "libckpt_checkpoint"):
            if ok(m, r_) and not ck:
                st = r_[m][1].data.get("ckpt_stats") or {}
                if st.get("budget_d2h_gbps"):
                    ck = st
    for d in ("d2h", "h2d"):
        plain, ours = (copy or {}).get(f"{d}_gbps"), ck.get(f"budget_{d}_gbps")
        if plain and ours:
            line(f"libckpt copies >= 90% of a plain pinned copy, {d}", ours >= 0.9 * plain,
                 f"{ours:.1f} vs {plain:.1f} GB/s ({ours / plain:.0%})")
        else:
            line(f"libckpt copies >= 90% of a plain pinned copy, {d}", None, "not measured")
    duplex = (copy or {}).get("duplex_gbps")
    line("copies >= 90 GB/s duplex", None,
         f"plain pinned duplex {duplex:.1f} GB/s; libckpt's own duplex rate is not measured by this bench"
         if duplex else "not measured")
    if ok("libckpt_loaded") and ok("none"):
        r = ms("libckpt_loaded") / ms("none")
        line(f"{preset}: loaded with CKPT_MODE=none <= 1.005x without libckpt", r <= 1.005, f"x{r:.4f}")
    res.tables.append("Issue 14 GPU targets\n\n| target | | measured |\n|---|---|---|\n" + "\n".join(out))


def parent(args):
    dry = args.cpu_dry_run
    preset = "cpu" if dry else ("full" if args.full else "small")
    long_preset = "cpu-long" if dry else "long"
    work = args.work or tempfile.mkdtemp(prefix="bench-step-time-")
    os.makedirs(work, exist_ok=True)
    res = results.Result("bench_step_time", f"Step time, {preset} preset", dry_run=dry)
    res.figures_in_markdown = False
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = run_modes(args, res, preset, modes, work)
    mode_table(res, preset, rows)
    long_rows = {}
    if not args.no_long:
        long_rows = run_modes(args, res, long_preset, LONG_MODES, work)
        mode_table(res, long_preset, long_rows)
    out = os.path.join(work, "copy.json")
    child = results.run_child("bench copy", [args.python, os.path.abspath(__file__), "--worker", "copy",
                                             "--preset", preset, "--json", out], results.plain_env(), out, 60, work)
    res.check("plain pinned copy ran", child.ok, child.why() or f"{child.seconds:.0f} s", needs_gpu=False)
    copy = child.data if child.ok else None
    if copy and copy.get("d2h_gbps"):
        res.tables.append(f"Plain pinned copy (torch, {copy['bytes'] >> 20} MiB, best of 5), {copy['card']}: "
                          f"d2h {copy['d2h_gbps']:.1f} GB/s, h2d {copy['h2d_gbps']:.1f} GB/s, "
                          f"both at once {copy['duplex_gbps']:.1f} GB/s")
    targets(res, preset, rows, long_rows, long_preset, copy)
    res.notes.append("peak activation memory: device memory in use (cuMemGetInfo total-free, sampled every ~1 ms "
                     "and at the end of each forward and backward) during 2 steps, minus the memory in use before "
                     "them after emptying torch's pool and libckpt's mapping cache; the same method in every mode, "
                     "all with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync, each mode in its own process.")
    res.notes.append("libckpt offloaded GiB/step: offloaded bytes from libckpt's exit summary / all steps run.")
    res.notes.append("libckpt's copy rate: offloaded (restored) bytes / copy-event time of its jobs, measured by "
                     "libckpt in the run (stats budget_d2h_gbps / budget_h2d_gbps), from the first libckpt mode "
                     "that measured it (long-context offload-only first).")
    return res.finish(args.json)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="quick preset (default)")
    size.add_argument("--full", action="store_true", help="the DESIGN.md anchor")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--mode-timeout", type=float, help="seconds per mode (default: by preset)")
    p.add_argument("--no-long", action="store_true", help="skip the long-context configuration")
    p.add_argument("--worker", choices=["none", "checkpoint", "save_on_cpu", "copy"], help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--preset", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "copy":
        copy_worker(args)
        return 0
    if args.worker:
        worker(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
