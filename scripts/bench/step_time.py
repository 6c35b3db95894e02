#!/usr/bin/env python3
"""The anchor benchmark of DESIGN.md: median fwd+bwd step of a stack of
encoder layers, for each way of saving activation memory, side by side in one
run, each mode in a process of its own:

  none                no checkpointing
  checkpoint          torch.utils.checkpoint per layer (use_reentrant=False)
  save_on_cpu         torch.autograd.graph.save_on_cpu(pin_memory=True)
  libckpt_regions     scripts/ckpt-run --patch none --regions TransformerEncoderLayer (offload only)
  libckpt_checkpoint  scripts/ckpt-run (CKPT_PATCH=torch) + torch.utils.checkpoint per layer

Presets: --full is the anchor (16 layers, d=2048, 16 heads, ff=8192, batch 8 x
2048 tokens, bf16, dropout 0.1); --small (default) is a quick run of the same
shape of model. Peak activation memory is measured the same way in every
mode: device memory in use from cuMemGetInfo (total - free), sampled every
~1 ms by a thread and at the end of each forward and backward, during 2
steps, minus the memory in use before them after emptying torch's pool and
libckpt's mapping cache; every mode uses PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync.
Prints a markdown table for BENCHMARKS.md.
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
    "cpu": dict(layers=2, d=64, heads=4, ff=128, batch=2, seq=32, steps=3, warmup=1, timeout=120),
}
# mode -> (description, how the worker runs the layers, ckpt-run flags or None for a plain process)
MODES = {
    "none": ("no checkpointing", "none", None),
    "checkpoint": ("`torch.utils.checkpoint` per layer", "checkpoint", None),
    "save_on_cpu": ("`save_on_cpu(pin_memory=True)`", "save_on_cpu", None),
    "libckpt_regions": ("libckpt `CKPT_REGIONS=TransformerEncoderLayer` (offload only)", "none",
                        ["--patch", "none", "--regions", "TransformerEncoderLayer"]),
    "libckpt_checkpoint": ("libckpt `CKPT_PATCH=torch` + `torch.utils.checkpoint`", "checkpoint", []),
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
    layers = nn.ModuleList(
        nn.TransformerEncoderLayer(cfg["d"], cfg["heads"], cfg["ff"], 0.1, batch_first=True)
        for _ in range(cfg["layers"])).to(device=device, dtype=torch.bfloat16)
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
    out = {"mode": args.label, "step_ms": times, "median_ms": statistics.median(times), "memory": sampler.as_dict()}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{args.label}: median {out['median_ms']:.1f} ms, peak activation memory "
          f"{sampler.extra / devmem.GiB:.2f} GiB")


def describe(cfg, preset):
    return (f"{preset} preset: {cfg['layers']} encoder layers, d={cfg['d']}, {cfg['heads']} heads, ff={cfg['ff']}, "
            f"batch {cfg['batch']} x {cfg['seq']} tokens, bf16, dropout 0.1; median of {cfg['steps']} steps "
            f"after {cfg['warmup']} warm-up")


def parent(args):
    preset = "cpu" if args.cpu_dry_run else ("full" if args.full else "small")
    cfg = PRESETS[preset]
    timeout = args.mode_timeout or cfg["timeout"]
    work = args.work or tempfile.mkdtemp(prefix="bench-step-time-")
    os.makedirs(work, exist_ok=True)
    res = results.Result("bench_step_time", f"Step time, {preset} preset", dry_run=args.cpu_dry_run)
    res.figures_in_markdown = False
    rows = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            res.fail(f"mode {mode}", f"unknown; known: {', '.join(MODES)}")
            continue
        title, style, ckpt_flags = MODES[mode]
        out = os.path.join(work, f"step-time-{mode}.json")
        cmd = [args.python, os.path.abspath(__file__), "--worker", style, "--label", mode, "--preset", preset,
               "--json", out]
        if ckpt_flags is None:
            env = results.plain_env()
        else:
            env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_OFFLOAD": "auto"})
            cmd = ["bash", args.ckpt_run] + ckpt_flags + ["--"] + cmd
        child = results.run_child(f"bench {mode}", cmd, env, out, timeout, work)
        res.check(f"{mode} ran", child.ok, child.why() or f"{child.seconds:.0f} s", needs_gpu=False)
        rows.append((mode, title, child))
    base = next((c.data["median_ms"] for m, _, c in rows if m == "none" and c.ok), None)
    lines = ["| mode | median step ms | x none | peak activation memory GiB | libckpt offloaded GiB/step |",
             "|---|---|---|---|---|"]
    for mode, title, c in rows:
        if not c.ok:
            lines.append(f"| {title} | failed | | | |")
            continue
        ms, mem = c.data["median_ms"], c.data["memory"]["extra_bytes"] / results.GiB
        ratio = f"x{ms / base:.2f}" if base else "n/a"
        steps_seen = cfg["warmup"] + cfg["steps"] + 2
        off = f"{c.summary['offloaded_mib'] / 1024 / steps_seen:.2f}" if c.summary else "-"
        lines.append(f"| {title} | {ms:.0f} | {ratio} | {mem:.2f} | {off} |")
        res.figure(f"{mode}: median step", f"{ms:.1f} ms", ratio)
        res.figure(f"{mode}: peak activation memory", f"{mem:.2f} GiB")
    res.tables.append(describe(cfg, preset) + "\n\n" + "\n".join(lines))
    res.notes.append("peak activation memory: device memory in use (cuMemGetInfo total-free, sampled every ~1 ms "
                     "and at the end of each forward and backward) during 2 steps, minus the memory in use before "
                     "them after emptying torch's pool and libckpt's mapping cache; the same method in every mode, "
                     "all with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync, each mode in its own process.")
    res.notes.append("libckpt offloaded GiB/step: offloaded bytes from libckpt's exit summary / all steps run.")
    return res.finish(args.json)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="quick preset (default)")
    size.add_argument("--full", action="store_true", help="the DESIGN.md anchor")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    p.add_argument("--mode-timeout", type=float, help="seconds per mode (default: by preset)")
    p.add_argument("--worker", choices=["none", "checkpoint", "save_on_cpu"], help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--preset", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
