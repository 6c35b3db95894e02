"""GPU check of issue 4 (zero-code-change torch integration): the unmodified
training script tests/gpu/train_gpt_ckpt.py (never imports ckpt), run plainly
and under scripts/ckpt-run, deterministic:
- with torch.utils.checkpoint per layer, under the default CKPT_PATCH=torch:
  identical loss curve for 5 steps, peak device memory lower by about the
  checkpoint inputs libckpt offloaded;
- with --no-checkpoint, under CKPT_REGIONS=TransformerEncoderLayer (offload
  only): the same two properties.
libckpt's figures come from its exit summary line (CKPT_STATS_AT_EXIT=1).
"""

import argparse
import os
import sys

import results

GiB, MiB = results.GiB, results.MiB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="", help="extra flags for train_gpt_ckpt.py (e.g. '--layers 8')")
    p.add_argument("--memory-ratio", type=float, default=0.5,
                   help="pass when the peak drops by at least this fraction of libckpt's released peak")
    p.add_argument("--only", choices=["checkpoint", "regions"], help="run one of the two scenarios")
    args = p.parse_args()
    res = results.Result("torch_integration", "Torch integration, unmodified script (issue 4)",
                         dry_run=args.cpu_dry_run)
    return results.run_check(res, args, "torch", run)


def run(res, args, work):
    script = [args.python, os.path.join(results.GPU_DIR, "train_gpt_ckpt.py"), "--steps", str(args.steps)]
    script += args.model.split()
    if args.cpu_dry_run:
        script += ["--device", "cpu", "--layers", "2", "--d", "64", "--heads", "4", "--ff", "128", "--batch", "2",
                   "--seq", "16", "--vocab", "128"]
    # ckpt-run finds the library through CKPT_LIBRARY and appends it to LD_PRELOAD itself;
    # run through bash so a copy of the tree that lost the exec bit still works.
    launch_env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_OFFLOAD": "auto"})
    scenarios = [
        ("checkpoint", "torch.utils.checkpoint per layer, CKPT_PATCH=torch", [], ["bash", args.ckpt_run, "--"]),
        ("regions", "no checkpoint, CKPT_REGIONS=TransformerEncoderLayer", ["--no-checkpoint"],
         ["bash", args.ckpt_run, "--patch", "none", "--regions", "TransformerEncoderLayer", "--"]),
    ]
    rows = []
    for key, title, flags, launcher in scenarios:
        if args.only and args.only != key:
            continue
        out_plain = os.path.join(work, f"torch-{key}-plain.json")
        out_ckpt = os.path.join(work, f"torch-{key}-libckpt.json")
        plain = results.run_child(f"torch {key} plain", script + flags + ["--json", out_plain],
                                  results.plain_env(), out_plain, args.child_timeout, work)
        ckpt = results.run_child(f"torch {key} ckpt-run", launcher + script + flags + ["--json", out_ckpt],
                                 launch_env, out_ckpt, args.child_timeout, work)
        bad = [c.why() for c in (plain, ckpt) if not c.ok]
        if bad:
            res.fail(f"{title}: both runs completed", "; ".join(bad))
            continue
        a, b, s = plain.data, ckpt.data, ckpt.summary
        res.check(f"{title}: identical loss curve ({args.steps} steps)", a["losses_hex"] == b["losses_hex"],
                  "plain " + " ".join(f"{v:.6f}" for v in a["losses"]) + " / ckpt-run "
                  + " ".join(f"{v:.6f}" for v in b["losses"]), needs_gpu=False)
        if s is None:
            res.fail(f"{title}: libckpt summary line at exit", "not found in stderr: was libckpt preloaded?")
            continue
        res.check(f"{title}: regions were opened", s["regions"] > 0, f"regions={s['regions']}", needs_gpu=False)
        res.check(f"{title}: tensors were offloaded and restored",
                  s["offloaded_mib"] > 0 and s["restored_mib"] > 0,
                  f"tagged={s['tagged']}, offloaded {s['offloaded_mib']:.0f} MiB, restored {s['restored_mib']:.0f} MiB")
        res.check(f"{title}: no driver errors, no restore OOM, host pool not exhausted",
                  s["driver_errors"] == 0 and s["restore_oom"] == 0 and s["pool_full"] == 0,
                  f"driver-errors={s['driver_errors']} restore-oom={s['restore_oom']} pool-full={s['pool_full']}")
        live = b.get("libckpt_stats") or {}
        res.check(f"{title}: no tagged memory outlives the steps", live.get("tagged_allocs_live", 1) == 0,
                  f"{live.get('tagged_allocs_live')} tagged allocations, "
                  f"{live.get('tagged_bytes_live', 0) / MiB:.1f} MiB still live after the last step (a persistent "
                  "buffer created inside a region, such as the cuBLAS workspace of the first matmul, is tagged)")
        released = s["released_peak_mib"] * MiB
        saving = a["memory"]["extra_bytes"] - b["memory"]["extra_bytes"]
        ratio = saving / released if released else 0.0
        expected = ""
        if key == "checkpoint":
            expected = f"; the checkpoint inputs are {a['layer_input_bytes'] / MiB:.0f} MiB per layer"
        res.check(f"{title}: peak device memory lower by about what libckpt released",
                  released > 0 and ratio >= args.memory_ratio,
                  f"peak {a['memory']['extra_bytes'] / GiB:.2f} -> {b['memory']['extra_bytes'] / GiB:.2f} GiB: "
                  f"saved {saving / GiB:.2f} GiB = {ratio:.0%} of the released peak {released / GiB:.2f} GiB"
                  + expected)
        res.figure(f"{key}: libckpt exit summary", s.get("line", ""))
        rows.append((title, a, b, s))
    if rows:
        res.tables.append(table(rows, args.steps))
    res.notes.append("peak = max device memory in use (cuMemGetInfo total-free, sampled every ~1 ms and at the "
                     "end of each forward and backward) minus the memory in use at the start of training, "
                     "after torch.cuda.empty_cache(); both runs use PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync.")


def table(rows, steps):
    lines = ["| scenario | step ms plain / ckpt-run | peak extra GiB plain / ckpt-run | offloaded GiB/step "
             "| released peak GiB | copy s | stall s |", "|---|---|---|---|---|---|---|"]
    for title, a, b, s in rows:
        lines.append(f"| {title} | {a['step_ms_median']:.1f} / {b['step_ms_median']:.1f} | "
                     f"{a['memory']['extra_bytes'] / GiB:.2f} / {b['memory']['extra_bytes'] / GiB:.2f} | "
                     f"{s['offloaded_mib'] / 1024 / steps:.2f} | {s['released_peak_mib'] / 1024:.2f} | "
                     f"{s['copy_s']:.3f} | {s['stall_s']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
