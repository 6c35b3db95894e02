"""GPU check of issue 2 (tagging), run under libckpt (scripts/ckpt-run --patch
none, or LD_PRELOAD=libckpt.so): tensors of at least CKPT_MIN_BYTES created
inside a region opened through the C API or an NVTX range named ckpt_* are
tagged one for one with that region (ckpt_query on each data_ptr); tensors
created outside, below the threshold, or in other NVTX ranges are not. Then a
3-step training of a small transformer, deterministic, run in a child without
libckpt and in one with it (a region per layer via ctypes): same loss to the
last bit.
"""

import argparse
import os
import sys

import results

MiB = 1 << 20


def tagging_part(res, args):
    import torch

    import ckpt_capi

    lib = ckpt_capi.load()
    if lib is None:
        res.fail("libckpt preloaded", "ckpt_region_begin is not in the process: run under scripts/ckpt-run "
                 "or LD_PRELOAD=libckpt.so")
        return
    res.figure("libckpt", ckpt_capi.preloaded_path() or "?", "mode " + lib.mode_name())
    device = "cpu" if args.cpu_dry_run else "cuda"
    min_bytes = args.min_bytes
    keep = []  # every tensor stays alive until it has been queried

    def alloc(nbytes):
        t = torch.empty(nbytes, dtype=torch.uint8, device=device)
        keep.append(t)
        return t

    # (label, expected region or None, tensor); sizes around the threshold.
    cases = []
    before = lib.stats()
    for size in (4 * MiB, 64 * MiB):
        cases.append(("outside any region", None, alloc(size)))

    rid = lib.region_begin(b"tagging_ctypes")
    res.check("ckpt_region_begin returns an id", rid > 0, f"returned {rid}", needs_gpu=False)
    inside = [min_bytes, min_bytes + 1, 6 * MiB, 64 * MiB, 3 * min_bytes + 4096]
    for size in inside:
        cases.append(("C API region", rid, alloc(size)))
    cases.append(("C API region, below CKPT_MIN_BYTES", None, alloc(min_bytes - 512)))
    end = lib.region_end()
    res.check("ckpt_region_end returns the same id", end == rid, f"begin {rid}, end {end}", needs_gpu=False)

    torch.cuda.nvtx.range_push("ckpt_tagging_nvtx")
    nvtx_tensors = [alloc(size) for size in (min_bytes, 16 * MiB, 40 * MiB)]
    small = alloc(MiB)
    torch.cuda.nvtx.range_pop()
    torch.cuda.nvtx.range_push("not_a_region")
    other = alloc(8 * MiB)
    torch.cuda.nvtx.range_pop()
    cases.append(("NVTX range 'other'", None, other))
    cases.append(("NVTX ckpt range, below CKPT_MIN_BYTES", None, small))
    for size in (4 * MiB,):
        cases.append(("after the regions", None, alloc(size)))
    after = lib.stats()

    # The NVTX region's id is whatever its first tensor says; all must agree.
    nvtx_ids = {lib.query(t.data_ptr())[1] for t in nvtx_tensors}
    nvtx_id = nvtx_ids.pop() if len(nvtx_ids) == 1 else -1
    res.check("NVTX ckpt_* range opened a region", after["regions_opened"] - before["regions_opened"] == 2,
              f"regions opened: {after['regions_opened'] - before['regions_opened']} (expected 2: C API + NVTX)",
              needs_gpu=False)
    res.check("NVTX region is a new region", nvtx_id > 0 and nvtx_id != rid, f"NVTX region id {nvtx_id}, C API {rid}")
    cases += [("NVTX ckpt range", nvtx_id if nvtx_id > 0 else "?", t) for t in nvtx_tensors]

    groups = {}
    for label, want, t in cases:
        rc, region, residency = lib.query(t.data_ptr())
        # Any byte of a tagged allocation answers, so the last byte too.
        rc_last, region_last, _ = lib.query(t.data_ptr() + t.numel() - 1)
        if want is None:
            good = rc == ckpt_capi.ENOENT and rc_last == ckpt_capi.ENOENT
        else:
            # Any residency but untagged: under CKPT_OFFLOAD=auto the C API region is offloaded once
            # the NVTX one closes, and stays tagged with its region.
            good = rc == 0 and region == want and residency != "untagged" and rc_last == 0 and region_last == want
        g = groups.setdefault(label, [0, 0, want, []])
        g[0] += good
        g[1] += 1
        if not good:
            g[3].append(f"{t.numel()} B: rc {rc} region {region} {residency}")
    for label, (good, total, want, bad) in groups.items():
        what = f"{label}: {'tagged with region ' + str(want) if want is not None else 'untagged'}"
        res.check(what, good == total, f"{good}/{total}" + (" — " + "; ".join(bad) if bad else ""))
        res.figure(label, f"{good} of {total} as expected")

    expected_tagged = len(inside) + len(nvtx_tensors)
    got = after["tagged_allocs"] - before["tagged_allocs"]
    res.check("stats: tagged_allocs grew by the tensors inside", got == expected_tagged,
              f"{got} tagged, {expected_tagged} expected")
    res.figure("tagged allocations (stats)", got, f"expected {expected_tagged}")
    # Tagged memory is usable: write and read back through torch.
    sums_ok = True
    for i, t in enumerate(nvtx_tensors + [c[2] for c in cases if c[0] == "C API region"]):
        t.fill_(i % 251)
        sums_ok &= int(t[-4096:].sum()) == (i % 251) * 4096
    res.check("tagged tensors read back what was written", sums_ok, "fill_ + sum on each", needs_gpu=False)
    del keep[:], cases, nvtx_tensors
    if not args.cpu_dry_run:
        torch.cuda.synchronize()
    final = lib.stats()
    res.figure("driver errors (stats)", final["driver_errors"])
    res.check("no driver errors", final["driver_errors"] == 0, f"{final['driver_errors']}")


def training_part(res, args, work):
    model = ["--layers", "4", "--d", "512", "--heads", "8", "--ff", "2048", "--batch", "4", "--seq", "512",
             "--dtype", "fp32", "--dropout", "0.1"]
    if args.cpu_dry_run:
        model = ["--layers", "2", "--d", "64", "--heads", "4", "--ff", "128", "--batch", "2", "--seq", "16"]
    base = [args.python, os.path.join(results.GPU_DIR, "train_regions.py"), "--steps", "3"] + model
    if args.cpu_dry_run:
        base += ["--device", "cpu"]
    runs = {}
    for label, env, extra in (
            ("plain", results.plain_env(), ["--regions", "none"]),
            ("libckpt", results.preload_env(args.lib), ["--regions", "ctypes"])):
        out = os.path.join(work, f"tagging-train-{label}.json")
        runs[label] = results.run_child(f"tagging train {label}", base + extra + ["--json", out], env, out,
                                        args.child_timeout, work)
    bad = [c.why() for c in runs.values() if not c.ok]
    if bad:
        res.fail("training runs completed", "; ".join(bad))
        return
    plain, ckpt = runs["plain"].data, runs["libckpt"].data
    for i, (a, b) in enumerate(zip(plain["losses_hex"], ckpt["losses_hex"])):
        res.figure(f"loss step {i + 1}: plain / libckpt", f"{a} / {b}", f"{plain['losses'][i]:.9g}")
    res.check("3-step training: same loss to the last bit", plain["losses_hex"] == ckpt["losses_hex"],
              f"plain {plain['losses_hex']} vs libckpt {ckpt['losses_hex']}", needs_gpu=False)
    res.check("3-step training: same gradients to the last bit", plain["grad_digests"] == ckpt["grad_digests"],
              "sha256 of all gradients after each step", needs_gpu=False)
    stats = (ckpt.get("libckpt") or {}).get("stats") or {}
    res.figure("training: regions opened / tensors tagged", f"{stats.get('regions_opened')} / "
               f"{stats.get('tagged_allocs')}", f"{ckpt['restore_calls']} restore calls")
    res.check("training: layer tensors were tagged", stats.get("tagged_allocs", 0) > 0,
              f"tagged_allocs={stats.get('tagged_allocs')}")
    res.figure("training: tagged allocations still live after the steps", stats.get("tagged_allocs_live"),
               f"{stats.get('tagged_bytes_live', 0) / MiB:.1f} MiB: buffers kept from inside a region "
               "(e.g. the cuBLAS workspace of the first matmul)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--min-bytes", type=int, default=4 * MiB, help="CKPT_MIN_BYTES in effect (default 4 MiB)")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args()
    res = results.Result("tagging", "Tagging (issue 2)", dry_run=args.cpu_dry_run)
    work = results.work_dir(args, "tagging")
    try:
        tagging_part(res, args)
    except Exception as exc:  # a crash is a result too
        res.fail("tagging part ran", repr(exc))
    if not args.skip_training:
        try:
            training_part(res, args, work)
        except Exception as exc:
            res.fail("training part ran", repr(exc))
    res.notes.append("Offload policy as set by the caller (gpu-check: CKPT_OFFLOAD=manual, so this checks "
                     "tagging alone); the plain run uses the same PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync.")
    return res.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
