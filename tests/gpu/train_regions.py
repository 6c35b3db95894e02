"""Trains the encoder stack with each layer in a libckpt region, for the
tagging and offload checks: regions opened through the C API (ctypes) or an
NVTX range named ckpt_*, or none (the plain run). Restores each region before
backward reaches it (a pre-hook on the layer output's grad_fn, as the Python
package's CKPT_REGIONS integration does). Writes one JSON: losses as hex
floats, gradient digests per step, step times, peak device memory from
cuMemGetInfo, libckpt's stats, and (--pinned-copy) the throughput of a plain
pinned copy of the bytes libckpt moved per step, measured in this process.
"""

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import sys
import time

import torch

import ckpt_capi
import devmem
import encoder


def digest(tensors):
    """sha256 of the tensors' bytes (a bitwise fingerprint), one per tensor and overall."""
    every, each = hashlib.sha256(), []
    for t in tensors:
        host = t.detach().contiguous().cpu()
        raw = ctypes.string_at(host.data_ptr(), host.numel() * host.element_size())
        every.update(raw)
        each.append(hashlib.sha256(raw).hexdigest()[:16])
    return every.hexdigest(), each


def pinned_copy_gbps(total, chunk):
    """GB/s of a plain pinned copy: `total` bytes as back-to-back copies of
    `chunk` bytes on one stream (as the library copies survivor by survivor),
    device->host then host->device, CUDA events around the batch, best of 3."""
    chunk = max(1 << 20, min(chunk, total))
    n = max(1, total // chunk)
    total = n * chunk
    dev = torch.empty(total, dtype=torch.uint8, device="cuda")
    host = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    stream = torch.cuda.Stream()
    result = {"bytes": total, "chunk_bytes": chunk}
    best = {}
    for name, dst, src in (("d2h", host, dev), ("h2d", dev, host)):
        times = []
        for _ in range(4):  # the first is a warm-up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(stream):
                start.record()
                for i in range(n):
                    dst[i * chunk:(i + 1) * chunk].copy_(src[i * chunk:(i + 1) * chunk], non_blocking=True)
                end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        best[name] = min(times[1:])
        result[name + "_gbps"] = total / best[name] / 1e9
    # Both directions, as the library's copy_seconds_total counts them: bytes moved / time.
    result["gbps"] = 2 * total / (best["d2h"] + best["h2d"]) / 1e9
    del dev, host
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    encoder.add_model_args(p)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--regions", choices=["none", "ctypes", "nvtx"], default="none")
    p.add_argument("--restore", choices=["hook", "none"], default="hook",
                   help="hook: ckpt_restore before backward reaches a layer; none: backward reads host memory")
    p.add_argument("--memory", action="store_true", help="sample peak device memory (cuMemGetInfo)")
    p.add_argument("--pinned-copy", action="store_true", help="also time a plain pinned copy (GPU only)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    encoder.make_deterministic(args.seed)
    cuda = args.device == "cuda"
    lib = ckpt_capi.load()
    if args.regions != "none" and lib is None:
        sys.exit("train_regions: --regions %s needs libckpt preloaded (LD_PRELOAD)" % args.regions)
    layers, x = encoder.build(args, args.device)
    opt = torch.optim.SGD(layers.parameters(), lr=args.lr)
    if lib is not None and cuda:
        lib.set_stream(torch.cuda.current_stream().cuda_stream)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    restore_rc = []

    def restore_hook(region_id=None, ptr=None):
        def hook(grad_outputs):
            rc = lib.restore(region_id) if region_id is not None else lib.restore_ptr(ptr)
            restore_rc.append(rc)
            return None
        return hook

    # Matmuls first, as a framework's warm-up would: cuBLAS creates its workspace (32 MiB with
    # this CUBLAS_WORKSPACE_CONFIG) at the first one, and inside a region it would be tagged and
    # offloaded with the layer. The unmodified script of check_torch_integration covers that case.
    with torch.no_grad():
        probe = x[:1, :8]
        (probe @ probe.transpose(-1, -2)).sum().item()  # cuBLAS
        torch.nn.functional.linear(probe, layers[0].linear1.weight, layers[0].linear1.bias).sum().item()  # cuBLASLt
        del probe
    devmem.empty_caches()
    sampler = devmem.PeakSampler()
    if args.memory:
        sampler.start()
    losses, grad_digests, step_ms, last_param_digests = [], [], [], []
    for step in range(args.steps):
        if lib is not None and args.regions == "ctypes":
            lib.step()
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        out = x
        for i, layer in enumerate(layers):
            if args.regions == "ctypes":
                lib.region_begin(b"layer%d" % i)
            elif args.regions == "nvtx":
                torch.cuda.nvtx.range_push(f"ckpt_layer{i}")
            out = layer(out)
            region_id = None
            if args.regions == "ctypes":
                region_id = lib.region_end()
            elif args.regions == "nvtx":
                torch.cuda.nvtx.range_pop()
            if args.regions != "none" and args.restore == "hook" and out.grad_fn is not None:
                out.grad_fn.register_prehook(
                    restore_hook(region_id=region_id) if region_id is not None and region_id > 0
                    else restore_hook(ptr=out.data_ptr()))
        loss = encoder.loss_of(out)
        sampler.mark()
        loss.backward()
        sampler.mark()
        opt.step()
        sync()
        step_ms.append((time.perf_counter() - t0) * 1000)
        losses.append(loss.item())
        overall, each = digest(param.grad for param in layers.parameters())
        grad_digests.append(overall)
        last_param_digests = each
        del out, loss
    sync()
    if args.memory:
        sampler.stop()

    result = {
        "regions": args.regions, "restore": args.restore, "steps": args.steps,
        "losses": losses, "losses_hex": [float(v).hex() for v in losses],
        "grad_digests": grad_digests, "param_digests_last": last_param_digests,
        "param_names": [n for n, _ in layers.named_parameters()],
        "step_ms": step_ms, "step_ms_median": statistics.median(step_ms),
        "memory": sampler.as_dict() if args.memory else None,
        "layer_input_bytes": encoder.layer_input_bytes(args),
        "restore_calls": len(restore_rc), "restore_errors": sorted({rc for rc in restore_rc if rc < 0}),
        "libckpt": None,
    }
    if lib is not None:
        # Every tensor a step made is gone now: what is still tagged was allocated inside a region
        # and kept (e.g. a library workspace created lazily by the first layer's first matmul).
        result["libckpt"] = {"mode": lib.mode_name(), "path": ckpt_capi.preloaded_path(), "stats": lib.stats()}
    if args.pinned_copy and cuda:
        s = result["libckpt"]["stats"] if lib is not None else {}
        per_step = s.get("offloaded_bytes_total", 0) // max(1, args.steps)
        chunk = s.get("offloaded_bytes_total", 0) // max(1, s.get("offloads", 0)) or (64 << 20)
        total = min(max(per_step, 256 << 20), 2 << 30)
        result["pinned_copy"] = pinned_copy_gbps(total, chunk)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("losses", "step_ms_median")}))


if __name__ == "__main__":
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    main()
