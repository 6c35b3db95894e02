"""GPU check of issue 12 (peer partitioning), at P = 1 only:
a model checkpointed through ckpt.checkpointing (the DeepSpeed drop-in) with
partition_activations, trained 2 steps plainly (no libckpt: checkpoints only
recompute) and under scripts/ckpt-run with CKPT_MODE=peer and peer+host
(CKPT_VERIFY=1). The libckpt runs initialise torch.distributed with the nccl
backend and a world of one rank; configure(mpu_) makes that 1-rank
tensor-parallel group libckpt's peer group (ncclGetUniqueId, the id
broadcast by torch.distributed, ncclCommInitRank in libckpt). The checkpoint
inputs are then partitioned (one slice: the whole tensor) and all-gathered
back with real NCCL before each recompute. Asserted: the group was joined,
inputs had CKPT_PEER residency after forward, every restore's checksum
matched, no mismatch or lost slice, and the gradients are bitwise equal to
the plain run.

Multi-GPU peer partitioning (P > 1) is NOT verified by this check: the
machines have one GPU. P = 2..4 runs only on the simulated device and NCCL
(meson suite peer, tests/python/test_peer_bootstrap.py).

--cpu-dry-run: CPU torch, gloo, and the simulated driver and NCCL
(ckpt-run --sim): the bootstrap runs for real, nothing is tagged.
"""

import argparse
import hashlib
import json
import os
import sys

import results

MULTI_GPU_NOTE = ("Multi-GPU peer partitioning (P > 1, real NCCL across devices or nodes) is unverified: "
                  "this check runs P = 1 on one GPU; P = 2..4 is tested only on the simulated device and NCCL.")


def _sim_context():
    """Dry run: the simulated device's primary context current (libckpt joins on it)."""
    import ctypes

    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    for rc in (cu.cuInit(0), cu.cuDeviceGet(ctypes.byref(dev), 0),
               cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), cu.cuCtxSetCurrent(ctx)):
        if rc != 0:
            raise RuntimeError(f"simulated driver: error {rc}")


def child(args):
    """Trains the model; writes gradient digests (and libckpt's answers) to args.child."""
    import datetime

    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.path.join(results.REPO, "scripts"))  # the repository's ckpt package
    import ckpt
    from ckpt import checkpointing as cp

    on_gpu = not args.cpu_dry_run
    dev = "cuda" if on_gpu else "cpu"
    if on_gpu:
        torch.cuda.set_device(0)
    lib = ckpt.library.get_or_none()
    under_libckpt = lib is not None and lib.preloaded  # CKPT_LIBRARY alone loads it without hooks
    out = {"libckpt": under_libckpt}
    if under_libckpt:
        if not on_gpu:
            _sim_context()
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method="file://" + args.child + ".store",
                                rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))

    class MPU:  # Megatron's names; a tensor-parallel group of one rank
        def get_tensor_model_parallel_rank(self):
            return 0

        def get_tensor_model_parallel_world_size(self):
            return 1

        def get_tensor_model_parallel_group(self):
            return dist.group.WORLD if dist.is_initialized() else None

    cp.configure(MPU(), partition_activations=True)
    if under_libckpt:
        out["mode"] = ckpt.mode()
        out["peer_group"] = list(cp.peer_group) if cp.peer_group else None
    d, tokens = (64, 64) if not on_gpu else (1024, 8 * 512)  # 16 MiB checkpoint inputs on the GPU
    torch.manual_seed(1234)
    layers = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))
        for _ in range(4)).to(dev)
    x = torch.randn(tokens, d, device=dev).requires_grad_()  # the reentrant checkpoint needs a grad input
    digests, residencies, peer_bytes = [], [], []
    for step in range(2):
        h, inputs = x, []
        for layer in layers:
            h = cp.checkpoint(layer, h)
            inputs.append(h)
        if under_libckpt:
            if on_gpu:
                torch.cuda.synchronize()
            peer_bytes.append(ckpt.stats().get("peer_bytes_in_use", 0))
            found = [ckpt.query(t.data_ptr()) for t in inputs[:-1]]
            residencies.append([f[1] if f else "untagged" for f in found])
        h.square().mean().backward()
        m = hashlib.sha256()
        for p in list(layers.parameters()) + [x]:
            m.update(p.grad.detach().cpu().numpy().tobytes())
            p.grad = None
        digests.append(m.hexdigest())
    out["digests"] = digests
    if under_libckpt:
        out["residencies"] = residencies
        out["peer_bytes_after_forward"] = peer_bytes
        out["stats"] = ckpt.stats()
    with open(args.child, "w") as f:  # before any teardown: a hang there still leaves the result
        json.dump(out, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--modes", default="peer,peer+host")
    args = p.parse_args()
    if args.child:
        return child(args)
    res = results.Result("peer", "Peer partitioning at P = 1, real NCCL (issue 12; multi-GPU unverified)",
                         dry_run=args.cpu_dry_run)
    res.notes.append(MULTI_GPU_NOTE)
    return results.run_check(res, args, "peer", run)


def run(res, args, work):
    script = [args.python, os.path.abspath(__file__)] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
    out_plain = os.path.join(work, "peer-plain.json")
    plain_env = results.plain_env()
    plain_env.pop("CKPT_LIBRARY", None)  # gpu-check exports it: the plain run must not load libckpt at all
    plain = results.run_child("peer plain", script + ["--child", out_plain], plain_env, out_plain,
                              args.child_timeout, work)
    if not plain.ok:
        res.fail("plain run completed", plain.why())
        return
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        tag = mode.replace("+", "-")
        out = os.path.join(work, f"peer-{tag}.json")
        env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": mode, "CKPT_VERIFY": "1",
                                 "CKPT_PEER_TIMEOUT_MS": "30000", "CKPT_PATCH": "none"})
        run_args = ["bash", args.ckpt_run, "--mode", mode] + (["--sim"] if args.cpu_dry_run else [])
        c = results.run_child(f"peer {mode}", run_args + ["--"] + script + ["--child", out], env, out,
                              args.child_timeout, work)
        if not c.ok:
            res.fail(f"{mode}: run completed", c.why())
            continue
        d = c.data
        res.check(f"{mode}: configure(mpu_) joined a 1-rank peer group (torch.distributed "
                  f"{'gloo, simulated NCCL' if args.cpu_dry_run else 'nccl, real NCCL'})",
                  d.get("libckpt") and d.get("peer_group") == [1, 0] and d.get("mode") == mode,
                  f"mode {d.get('mode')}, group {d.get('peer_group')}", needs_gpu=False)
        res.check(f"{mode}: gradients bitwise equal to the plain run (2 steps)", d["digests"] == plain.data["digests"],
                  f"plain {[x[:12] for x in plain.data['digests']]} / libckpt {[x[:12] for x in d['digests']]}",
                  needs_gpu=False)
        s = d.get("stats", {})
        res.check(f"{mode}: checkpoint inputs were partitioned (CKPT_PEER residency after forward)",
                  all("peer" in r for r in d.get("residencies", [])) and d.get("residencies"),
                  f"residencies {d.get('residencies')}, peer bytes after forward "
                  f"{[round(b / results.MiB, 1) for b in d.get('peer_bytes_after_forward', [])]} MiB")
        res.check(f"{mode}: all-gathered back and verified (CKPT_VERIFY: checksums matched)",
                  s.get("restores", 0) > 0 and s.get("verify_checked", 0) > 0 and s.get("verify_failures", 1) == 0,
                  f"restores {s.get('restores')}, verify checked {s.get('verify_checked')}, "
                  f"failures {s.get('verify_failures')}")
        res.check(f"{mode}: no mismatch, no lost slice, nothing left held",
                  s.get("peer_mismatches", 1) == 0 and s.get("peer_lost", 1) == 0
                  and s.get("peer_bytes_in_use", 1) == 0,
                  f"mismatches {s.get('peer_mismatches')}, lost {s.get('peer_lost')}, "
                  f"held {s.get('peer_bytes_in_use')}", needs_gpu=False)
        res.figure(f"{mode}: offloaded MiB", round(s.get("offloaded_bytes_total", 0) / results.MiB, 1))
        res.figure(f"{mode}: peer slab MiB", round(s.get("peer_slab_bytes", 0) / results.MiB, 1))


if __name__ == "__main__":
    sys.exit(main())
