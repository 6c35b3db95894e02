"""GPU check of issue 3 (host offload): a transformer whose layers are regions
(C API via ctypes, and NVTX ranges), CKPT_MODE=host, trained in children
plain and under libckpt, deterministic:
- gradients and losses bitwise equal to the plain run;
- peak device memory (cuMemGetInfo sampled ~1 ms) lower by about what libckpt
  released (stats device_bytes_released_peak);
- the library's copy throughput, (offloaded + restored bytes) /
  copy_seconds_total, against a plain pinned copy of the same bytes in the
  same process (target: at least 90%).
"""

import argparse
import os
import sys

import results

GiB = results.GiB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--via", default="ctypes,nvtx", help="how regions are opened: ctypes, nvtx or both")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--model", default="--layers 8 --d 1024 --heads 16 --ff 4096 --batch 4 --seq 1024 --dtype fp32",
                   help="model flags for tests/gpu/train_regions.py")
    p.add_argument("--memory-ratio", type=float, default=0.5,
                   help="pass when the peak drops by at least this fraction of device_bytes_released_peak")
    p.add_argument("--throughput-target", type=float, default=0.9)
    args = p.parse_args()
    res = results.Result("offload", "Host offload (issue 3)", dry_run=args.cpu_dry_run)
    return results.run_check(res, args, "offload", run)


def run(res, args, work):
    model = args.model.split()
    if args.cpu_dry_run:
        model = ["--layers", "2", "--d", "64", "--heads", "4", "--ff", "128", "--batch", "2", "--seq", "16",
                 "--device", "cpu"]
    base = [args.python, os.path.join(results.GPU_DIR, "train_regions.py"), "--steps", str(args.steps),
            "--memory"] + model
    host = {"CKPT_MODE": "host", "CKPT_OFFLOAD": "auto"}
    plans = [("plain", results.plain_env(), ["--regions", "none"])]
    for via in [v.strip() for v in args.via.split(",") if v.strip()]:
        extra = ["--regions", via] + (["--pinned-copy"] if len(plans) == 1 else [])
        plans.append((f"libckpt {via}", results.preload_env(args.lib, host), extra))
    runs = {}
    for label, env, extra in plans:
        out = os.path.join(work, "offload-" + label.replace(" ", "-") + ".json")
        runs[label] = results.run_child(f"offload {label}", base + extra + ["--json", out], env, out,
                                        args.child_timeout, work)
    plain = runs.pop("plain")
    if not plain.ok:
        res.fail("plain run completed", plain.why())
        return
    p = plain.data
    rows = [("plain", p, None)]
    for label, child in runs.items():
        if not child.ok:
            res.fail(f"{label}: run completed", child.why())
            continue
        d = child.data
        s = (d.get("libckpt") or {}).get("stats") or {}
        rows.append((label, d, s))
        res.check(f"{label}: losses bitwise equal to plain", d["losses_hex"] == p["losses_hex"],
                  f"{d['losses_hex']} vs {p['losses_hex']}", needs_gpu=False)
        first_bad = next((i for i, (a, b) in enumerate(zip(d["grad_digests"], p["grad_digests"])) if a != b), None)
        detail = "all steps" if first_bad is None else f"differ from step {first_bad + 1}"
        if first_bad is not None:
            names = [n for n, a, b in zip(p["param_names"], p["param_digests_last"], d["param_digests_last"]) if a != b]
            detail += f"; last step: {len(names)} tensors differ, first {names[:3]}"
        res.check(f"{label}: gradients bitwise equal to plain", first_bad is None, detail, needs_gpu=False)
        off, rest = s.get("offloaded_bytes_total", 0), s.get("restored_bytes_total", 0)
        res.check(f"{label}: tensors were offloaded and restored", off > 0 and rest > 0,
                  f"offloads {s.get('offloads')}, {off / GiB:.2f} GiB; restores {s.get('restores')}, "
                  f"{rest / GiB:.2f} GiB")
        res.check(f"{label}: nothing left on the host after the last step", s.get("host_bytes_in_use", 1) == 0,
                  f"host_bytes_in_use {s.get('host_bytes_in_use')}")
        errors = {k: s.get(k) for k in ("driver_errors", "restore_oom", "host_pool_exhausted")}
        res.check(f"{label}: no driver errors, no restore OOM, host pool not exhausted",
                  not any(errors.values()), ", ".join(f"{k}={v}" for k, v in errors.items()))
        res.check(f"{label}: no tagged memory outlives the steps", s.get("tagged_allocs_live", 1) == 0,
                  f"{s.get('tagged_allocs_live')} tagged allocations, {s.get('tagged_bytes_live', 0) / 2**20:.1f} MiB "
                  "still live after the last step (a persistent buffer created inside a region, such as the "
                  "cuBLAS workspace of the first matmul, gets offloaded with it)")
        res.check(f"{label}: every restore call succeeded", not d["restore_errors"],
                  f"{d['restore_calls']} calls, error codes {d['restore_errors']}")
        released = s.get("device_bytes_released_peak", 0)
        saving = p["memory"]["extra_bytes"] - d["memory"]["extra_bytes"]
        ratio = saving / released if released else 0.0
        res.check(f"{label}: peak device memory lower by about the bytes released",
                  released > 0 and ratio >= args.memory_ratio,
                  f"peak {p['memory']['extra_bytes'] / GiB:.2f} -> {d['memory']['extra_bytes'] / GiB:.2f} GiB: "
                  f"saved {saving / GiB:.2f} GiB = {ratio:.0%} of device_bytes_released_peak "
                  f"{released / GiB:.2f} GiB (need >= {args.memory_ratio:.0%})")
        res.figure(f"{label}: memory saved / released peak", f"{saving / GiB:.2f} / {released / GiB:.2f} GiB",
                   f"{ratio:.0%}")
        res.figure(f"{label}: stall waiting for restores", s.get("stall_seconds_total", 0.0),
                   f"seconds over {args.steps} steps")
        if d.get("pinned_copy"):
            throughput(res, args, label, s, d["pinned_copy"])
    res.tables.append(table(rows, args.steps))
    res.notes.append("peak = max device memory in use (cuMemGetInfo total-free, sampled every ~1 ms in a thread "
                     "and at the end of each forward and backward) minus the memory in use before the first "
                     "step, after emptying torch's pool and libckpt's mapping cache; every run uses "
                     "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync.")
    res.notes.append("Deterministic runs: math attention, torch.use_deterministic_algorithms, "
                     "CUBLAS_WORKSPACE_CONFIG=:4096:8, fixed seeds; regions restored by a pre-hook on each "
                     "layer output's grad_fn (ckpt_restore / ckpt_restore_ptr).")


def throughput(res, args, label, s, pinned):
    moved = s.get("offloaded_bytes_total", 0) + s.get("restored_bytes_total", 0)
    seconds = s.get("copy_seconds_total", 0.0)
    lib_gbps = moved / seconds / 1e9 if seconds > 0 else 0.0
    ratio = lib_gbps / pinned["gbps"] if pinned.get("gbps") else 0.0
    res.figure(f"{label}: copy throughput", f"{lib_gbps:.1f} GB/s",
               f"(offloaded + restored) {moved / GiB:.2f} GiB / copy_seconds_total {seconds:.3f} s")
    res.figure(f"{label}: offload-only figure", f"{s.get('offloaded_bytes_total', 0) / seconds / 1e9:.1f} GB/s"
               if seconds > 0 else "n/a", "offloaded bytes / copy_seconds_total (counts only one direction)")
    res.figure("plain pinned copy, same process", f"d2h {pinned['d2h_gbps']:.1f}, h2d {pinned['h2d_gbps']:.1f}, "
               f"both {pinned['gbps']:.1f} GB/s",
               f"{pinned['bytes'] / GiB:.2f} GiB in {pinned['chunk_bytes'] / 2**20:.0f} MiB copies, "
               "torch .copy_(non_blocking=True), CUDA events, best of 3")
    res.check(f"{label}: copy throughput >= {args.throughput_target:.0%} of a plain pinned copy",
              ratio >= args.throughput_target, f"{lib_gbps:.1f} / {pinned['gbps']:.1f} GB/s = {ratio:.0%}")


def table(rows, steps):
    lines = ["| run | median step ms | peak extra GiB | offloaded GiB/step | released peak GiB | copy GB/s |",
             "|---|---|---|---|---|---|"]
    for label, d, s in rows:
        mem = d["memory"]["extra_bytes"] / GiB
        if s:
            moved = s["offloaded_bytes_total"] + s["restored_bytes_total"]
            gbps = f"{moved / s['copy_seconds_total'] / 1e9:.1f}" if s["copy_seconds_total"] > 0 else "n/a"
            lines.append(f"| {label} | {d['step_ms_median']:.1f} | {mem:.2f} | "
                         f"{s['offloaded_bytes_total'] / steps / GiB:.2f} | "
                         f"{s['device_bytes_released_peak'] / GiB:.2f} | {gbps} |")
        else:
            lines.append(f"| {label} | {d['step_ms_median']:.1f} | {mem:.2f} | - | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
