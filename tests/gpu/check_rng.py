"""GPU check of issue 13 (random numbers in recomputes):
- cuRAND: tests/rng/gpu_check.sh builds tests/rng/replay.c against the real
  libcurand.so.10 and driver and runs every scenario under LD_PRELOAD=libckpt.so
  (bit-identical replay, the sequence after it unchanged, the offset rules on
  device generators, the tracker);
- torch dropout: a model with dropout inside torch.utils.checkpoint (reentrant
  and not), trained 2 steps plainly and under scripts/ckpt-run (CKPT_PATCH=torch,
  CKPT_MODE=host): the gradients are bitwise equal (torch's Philox seed/offset
  restored by the package, tensors offloaded and restored by libckpt).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys

import results


def child(args):
    """Trains the dropout model; writes gradient digests to args.child."""
    import torch
    from torch.utils.checkpoint import checkpoint

    dev = "cpu" if args.cpu_dry_run else "cuda"
    d, tokens = (64, 64) if args.cpu_dry_run else (1024, 8 * 512)  # 16 MiB layer inputs on the GPU
    torch.manual_seed(1234)
    layers = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU(), torch.nn.Dropout(0.1)) for _ in range(4)).to(dev)
    x = torch.randn(tokens, d, device=dev)
    digests = []
    for step in range(2):
        h = x
        for i, layer in enumerate(layers):
            h = checkpoint(layer, h, use_reentrant=bool(i % 2))
        h.square().mean().backward()
        m = hashlib.sha256()
        for p in layers.parameters():
            m.update(p.grad.detach().cpu().numpy().tobytes())
            p.grad = None
        digests.append(m.hexdigest())
    with open(args.child, "w") as f:
        json.dump({"digests": digests}, f)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    res = results.Result("rng", "Random numbers in recomputes (issue 13)", dry_run=args.cpu_dry_run)
    run(res, args, results.work_dir(args, "rng"))  # a crash is gpu-check's "exit 1", its traceback in rng.err
    return res.finish(args.json)


def run(res, args, work):
    # 1. cuRAND under the preload (needs a device: skipped in a dry run).
    if not args.cpu_dry_run:
        log = os.path.join(work, "curand.log")
        try:
            r = subprocess.run(["sh", os.path.join(results.REPO, "tests", "rng", "gpu_check.sh"), work, args.lib],
                               cwd=results.REPO, env=results.plain_env(), capture_output=True, text=True,
                               timeout=args.child_timeout * 2)
            out, rc = r.stdout + r.stderr, r.returncode
        except subprocess.TimeoutExpired as exc:
            out, rc = f"timed out: {exc}", 124
        with open(log, "w") as f:
            f.write(out)
        lines = [ln for ln in out.splitlines() if ln.endswith(": ok") or "FAIL" in ln]
        res.check("cuRAND replay program against the real cuRAND and driver, under libckpt", rc == 0,
                  "; ".join(lines[-10:]) or results.tail(out, 5))
    # 2. torch dropout, plain and under ckpt-run.
    script = [args.python, os.path.abspath(__file__)] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
    out_plain, out_ckpt = os.path.join(work, "dropout-plain.json"), os.path.join(work, "dropout-libckpt.json")
    plain = results.run_child("dropout plain", script + ["--child", out_plain], results.plain_env(), out_plain,
                              args.child_timeout, work)
    env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_PATCH": "torch"})
    ckpt = results.run_child("dropout ckpt-run", ["bash", args.ckpt_run, "--"] + script + ["--child", out_ckpt],
                             env, out_ckpt, args.child_timeout, work)
    bad = [c.why() for c in (plain, ckpt) if not c.ok]
    if bad:
        res.fail("dropout model: both runs completed", "; ".join(bad))
        return
    a, b = plain.data["digests"], ckpt.data["digests"]
    res.check("dropout model under CKPT_PATCH=torch: bitwise-equal gradients with and without libckpt (2 steps)",
              a == b, f"plain {[x[:12] for x in a]} / libckpt {[x[:12] for x in b]}", needs_gpu=False)
    s = ckpt.summary
    if s is not None:
        res.check("dropout model: libckpt offloaded and restored tensors", s["offloaded_mib"] > 0 and s["restored_mib"] > 0,
                  f"regions={s['regions']} offloaded {s['offloaded_mib']:.0f} MiB restored {s['restored_mib']:.0f} MiB")
    else:
        res.fail("dropout model: libckpt summary line at exit", "not found: was libckpt preloaded?")


if __name__ == "__main__":
    sys.exit(main())
