"""GPU check of issue 11 (real-hardware hazards): four probes, each under its
own time limit, together within --budget seconds (default 170):
- gate: tests/gpu/probe_hazards.c (built here with cc against the driver, no
  Criterion) under LD_PRELOAD=libckpt.so: the legacy stream and 2 non-blocking
  streams read a tagged buffer, with a cross-stream event wait between the
  holds, through offload+restore swaps, under CUDA_DEVICE_MAX_CONNECTIONS = 1,
  8 and 32: every swap made (no gate timeout), bytes right, no hang (watchdog);
- swap: the same program: 2 streams sweep a 64 MiB tagged buffer while 1000
  gated swaps run; checksums, no error; the time of unmap, map, set-access and
  release while 2 streams are held, MEASURED BY THE PROBE (its own VMM range,
  the calls libckpt's swap makes; libckpt keeps no per-call timing), and the
  wall time of one libckpt swap (offload or restore + wait) as the host sees it;
- graph: a model with checkpoint regions (torch.utils.checkpoint under
  CKPT_PATCH=torch): torch.cuda.graph capture of a whole step and
  torch.compile(mode="reduce-overhead"): 10 replays each equal to eager
  (bitwise: loss and every gradient);
- side: a side stream consumes the checkpoint regions' outputs (survivors)
  through wait_stream/record_stream for 50 steps, with
  CUDA_DEVICE_MAX_CONNECTIONS=1 and unset, each under a 120 s watchdog: the
  side stream's sums and the losses bitwise equal to a plain run.
CPU dry run (--cpu-dry-run): gate and swap run for real against the simulated
device (tests/simdev's libcuda.so.1, smaller buffer, fewer swaps) and count;
graph and side run on the CPU: torch cannot capture CUDA graphs there, so the
graph probe checks torch.compile(backend="eager") replays only and the side
probe has no second stream (plumbing only): those assertions are not counted.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import results

PROBE_RE = re.compile(r"^PROBE (\{.*\})$", re.M)


# ---- the torch children --------------------------------------------------------

def model(dev, d=256):
    import torch
    from torch.utils.checkpoint import checkpoint

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))
                for _ in range(4))

        def forward(self, x, outs=None):
            h = x
            for b in self.blocks:
                h = checkpoint(b, h, use_reentrant=False)  # a region under CKPT_PATCH=torch
                if outs is not None:
                    outs.append(h)
            return h

    torch.manual_seed(1234)
    return Net().to(dev)


def fingerprint(loss, net):
    m = hashlib.sha256(loss.detach().double().cpu().numpy().tobytes())
    for p in net.parameters():
        m.update(p.grad.detach().cpu().numpy().tobytes())
    return m.hexdigest()


def child_graph(args):
    import torch

    dry = args.cpu_dry_run
    dev = "cpu" if dry else "cuda"
    d, tokens = (64, 32) if dry else (1024, 4096)
    net = model(dev, d)
    x = torch.randn(tokens, d, device=dev)
    out = {"eager": None, "graph": [], "compiled": [], "graph_error": "", "compile_error": ""}

    def eager():
        net.zero_grad(set_to_none=True)
        loss = net(x).square().mean()
        loss.backward()
        return fingerprint(loss, net)

    out["eager"] = eager()
    out["eager_again"] = eager()
    if not dry:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as torch's docs do
                for _ in range(3):
                    eager()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            net.zero_grad(set_to_none=True)
            with torch.cuda.graph(g):
                static_loss = net(x).square().mean()
                static_loss.backward()
            for _ in range(10):
                g.replay()
                torch.cuda.synchronize()
                out["graph"].append(fingerprint(static_loss, net))
            del g
        except Exception as exc:  # reported, not fatal: the compile half still runs
            out["graph_error"] = repr(exc)[:400]
    try:
        fwd = lambda t: net(t).square().mean()  # noqa: E731
        cfwd = torch.compile(fwd, backend="eager") if dry else torch.compile(fwd, mode="reduce-overhead")
        for i in range(13):  # 3 warm-ups (cudagraph trees record on the later ones), 10 compared
            net.zero_grad(set_to_none=True)
            loss = cfwd(x)
            loss.backward()
            if dev == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                out["compiled"].append(fingerprint(loss.clone(), net))
    except Exception as exc:
        out["compile_error"] = repr(exc)[:400]
    with open(args.child, "w") as f:
        json.dump(out, f)
    return 0


def child_side(args):
    import torch

    dry = args.cpu_dry_run
    dev = "cpu" if dry else "cuda"
    d, tokens = (64, 32) if dry else (1024, 4096)  # 16 MiB region outputs on the GPU
    net = model(dev, d)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(tokens, d, device=dev)
    steps = []
    side = torch.cuda.Stream() if not dry else None
    main = torch.cuda.current_stream() if not dry else None
    for step in range(args.steps):
        opt.zero_grad(set_to_none=True)
        outs = []
        h = net(x, outs)
        with torch.no_grad():
            if side is not None:
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    sums = torch.stack([o.double().sum() for o in outs])
                for o in outs:
                    o.record_stream(side)
            else:
                sums = torch.stack([o.double().sum() for o in outs])
        del outs
        loss = h.square().mean()
        loss.backward()  # the backward's restores run while the side stream may still read
        if side is not None:
            main.wait_stream(side)
        opt.step()
        steps.append(hashlib.sha256(sums.cpu().numpy().tobytes() + loss.detach().double().cpu().numpy().tobytes())
                     .hexdigest()[:16])
    with open(args.child, "w") as f:
        json.dump({"steps": steps}, f)
    return 0


# ---- the parent ---------------------------------------------------------------

class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def limit(self, want):
        """want, or what is left of the budget (0: nothing left)."""
        left = self.end - time.monotonic() - 3
        return max(0.0, min(float(want), left))


def build_probe(args, work):
    exe = os.path.join(work, "probe_hazards")
    inc = args.cuda_include or os.environ.get("CUDA_INCLUDE") or "/usr/local/cuda/include"
    cmd = [os.environ.get("CC", "cc"), "-std=gnu11", "-O2", "-Wall", "-I" + os.path.join(results.REPO, "include"),
           "-I" + inc, os.path.join(results.GPU_DIR, "probe_hazards.c"), "-o", exe]
    libdirs = [simdev_dir()] if args.cpu_dry_run else ["", "/usr/local/cuda/lib64/stubs"]
    log = []
    for libdir in libdirs:
        link = (["-L" + libdir] if libdir else []) + ["-l:libcuda.so.1" if libdir != "/usr/local/cuda/lib64/stubs"
                                                      else "-lcuda", "-ldl"]
        r = subprocess.run(cmd + link, capture_output=True, text=True)
        log.append(f"$ {' '.join(cmd + link)}\n{r.stdout}{r.stderr}")
        if r.returncode == 0:
            return exe, "\n".join(log)
    return None, "\n".join(log)


def simdev_dir():
    build = os.environ.get("CKPT_BUILD_DIR") or os.path.join(results.REPO, "build")
    return os.path.join(build, "tests", "simdev")


def run_probe(exe, args, sub, mib, count, extra_env, timeout):
    env = results.preload_env(args.lib, {"CKPT_MODE": "host", "CKPT_OFFLOAD": "manual", "CKPT_DEBUG": "WARN",
                                         "PROBE_WATCHDOG_S": str(max(5, int(timeout) - 2))})
    if args.cpu_dry_run:
        env["LD_LIBRARY_PATH"] = simdev_dir() + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    env.update(extra_env)
    try:
        r = subprocess.run([exe, sub, str(mib), str(count)], env=env, capture_output=True, text=True,
                           timeout=timeout, cwd=results.REPO)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"timed out after {timeout:.0f} s: {exc}", 124
    m = PROBE_RE.search(out)
    data = json.loads(m.group(1)) if m else None
    return rc, data, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_common_args(p)
    p.add_argument("--cuda-include", help="folder holding cuda.h (default $CUDA_INCLUDE, /usr/local/cuda/include)")
    p.add_argument("--probes", default="gate,swap,graph,side")
    p.add_argument("--budget", type=float, default=170, help="seconds for all probes together")
    p.add_argument("--steps", type=int, default=None, help="side probe steps (50; 10 in a dry run)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-kind", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps is None:
        args.steps = 10 if args.cpu_dry_run else 50
    if args.child:
        return child_graph(args) if args.child_kind == "graph" else child_side(args)
    res = results.Result("hazards", "Real-hardware hazards: gates, swaps, graphs, side streams (issue 11)",
                         dry_run=args.cpu_dry_run)
    work = results.work_dir(args, "hazards")
    budget = Budget(args.budget)
    wanted = args.probes.split(",")
    for name, fn in (("gate", probe_gate), ("swap", probe_swap), ("graph", probe_graph), ("side", probe_side)):
        if name not in wanted:
            continue
        try:
            fn(res, args, work, budget)
        except Exception as exc:  # one probe failing still leaves a report of the others
            res.fail(f"{name} probe ran", repr(exc))
    res.notes.append("swap: unmap/map/set-access/release are measured by the probe itself (medians of its own "
                     "remaps of a VMM range of the buffer's size with two streams held by a wait-value, as "
                     "libckpt's gate holds them); libckpt's swap is timed as offload/restore + ckpt_wait.")
    if args.cpu_dry_run:
        res.notes.append("dry run: gate and swap ran against the simulated device (8 MiB, fewer swaps) and count; "
                         "graph (no CUDA graphs on the CPU: torch.compile backend=eager only) and side (no second "
                         "stream) are plumbing only.")
    return res.finish(args.json)


_exe = {}


def probe_exe(res, args, work):
    if "exe" not in _exe:
        exe, log = build_probe(args, work)
        with open(os.path.join(work, "probe-build.log"), "w") as f:
            f.write(log)
        res.check("probe_hazards.c builds against the driver" + (" (simulated)" if args.cpu_dry_run else ""),
                  exe is not None, "ok" if exe else results.tail(log, 4), needs_gpu=False)
        _exe["exe"] = exe
    return _exe["exe"]


def probe_gate(res, args, work, budget):
    exe = probe_exe(res, args, work)
    if not exe:
        return
    mib, rounds = (8, 10) if args.cpu_dry_run else (64, 20)
    where = " (simulated device)" if args.cpu_dry_run else ""
    for conn in ("1", "8", "32"):
        limit = budget.limit(30)
        if limit < 5:
            res.fail(f"gate probe, CUDA_DEVICE_MAX_CONNECTIONS={conn}", "not run: out of the check's time budget")
            continue
        rc, d, out = run_probe(exe, args, "gate", mib, rounds, {"CUDA_DEVICE_MAX_CONNECTIONS": conn}, limit)
        with open(os.path.join(work, f"gate-conn{conn}.log"), "w") as f:
            f.write(out)
        ok = rc == 0 and d is not None
        detail = (f"{d['offloads']} offloads + {d['restores']} restores of {mib} MiB, gate timeouts "
                  f"{d['gate_timeouts']}, bad words {d['bad_words']}, streams known {d['streams_known']}, "
                  f"{d['seconds']:.2f} s" if d else f"exit {rc}: {results.tail(out, 3)}")
        res.check(f"gate probe{where}: legacy + 2 non-blocking streams held, cross-stream wait, "
                  f"CUDA_DEVICE_MAX_CONNECTIONS={conn}: every swap made, bytes right, no hang", ok, detail,
                  needs_gpu=False)
        if d:
            res.figure(f"gate conn={conn}: seconds for {rounds} offload+restore rounds", d["seconds"])


def probe_swap(res, args, work, budget):
    exe = probe_exe(res, args, work)
    if not exe:
        return
    mib, swaps = (8, 200) if args.cpu_dry_run else (64, 1000)
    limit = budget.limit(60)
    if limit < 5:
        res.fail("swap probe", "not run: out of the check's time budget")
        return
    rc, d, out = run_probe(exe, args, "swap", mib, swaps, {}, limit)
    with open(os.path.join(work, "swap.log"), "w") as f:
        f.write(out)
    where = " (simulated device)" if args.cpu_dry_run else ""
    ok = rc == 0 and d is not None
    detail = (f"{d['offloads'] + d['restores']} swaps, {d['checks']} sweep checks, bad words {d['bad_words']}, "
              f"gate timeouts {d['gate_timeouts']}, driver errors {d['driver_errors']}, {d['seconds']:.2f} s"
              if d else f"exit {rc}: {results.tail(out, 3)}")
    res.check(f"swap probe{where}: 2 streams sweep a {mib} MiB tagged buffer while {swaps} gated swaps run: "
              "checksums right, no error", ok, detail, needs_gpu=False)
    if d:
        res.figure("libckpt swap (offload or restore + ckpt_wait), host wall, mean ms", d["swap_wall_ms_mean"],
                   f"{mib} MiB")
        for key, label in (("unmap_us", "cuMemUnmap"), ("map_us", "cuMemMap"), ("set_access_us", "cuMemSetAccess"),
                           ("release_us", "cuMemRelease")):
            res.figure(f"{label} with 2 streams held, median us (probe-measured)", d[key],
                       f"{d['remap_mib']} MiB, {d['remap_reps']} reps")


def torch_child(args, work, kind, label, env, timeout, launcher):
    script = [args.python, os.path.abspath(__file__), "--child-kind", kind, "--steps", str(args.steps)]
    script += ["--cpu-dry-run"] if args.cpu_dry_run else []
    path = os.path.join(work, re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".json")
    return results.run_child(label, launcher + script + ["--child", path], env, path, timeout, work)


def probe_graph(res, args, work, budget):
    limit = budget.limit(90)
    if limit < 10:
        res.fail("graph probe", "not run: out of the check's time budget")
        return
    env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_PATCH": "torch"})
    c = torch_child(args, work, "graph", "graph ckpt-run", env, limit, ["bash", args.ckpt_run, "--"])
    if not c.ok:
        res.fail("graph probe: the child completed under ckpt-run", c.why())
        return
    d = c.data
    res.check("graph probe: eager twice under libckpt, bitwise equal", d["eager"] == d["eager_again"],
              f"{d['eager'][:12]} / {d['eager_again'][:12]}", needs_gpu=False)
    g = d["graph"]
    res.check("graph probe: torch.cuda.graph of a step with checkpoint regions, 10 replays equal to eager",
              len(g) == 10 and all(x == d["eager"] for x in g),
              d["graph_error"] or f"{sum(x == d['eager'] for x in g)} of {len(g)} replays equal")
    k = d["compiled"]
    what = ("torch.compile(backend=eager) (dry run)" if args.cpu_dry_run
            else 'torch.compile(mode="reduce-overhead")')
    res.check(f"graph probe: {what}, 10 replays equal to eager", len(k) == 10 and all(x == d["eager"] for x in k),
              d["compile_error"] or f"{sum(x == d['eager'] for x in k)} of {len(k)} replays equal")
    s = c.summary
    if s is not None:
        res.check("graph probe: libckpt offloaded and restored the eager steps' survivors",
                  s["offloaded_mib"] > 0 and s["restored_mib"] > 0,
                  f"offloaded {s['offloaded_mib']:.0f} MiB, restored {s['restored_mib']:.0f} MiB, "
                  f"driver-errors={s['driver_errors']}")
        res.figure("graph probe: libckpt exit summary", s.get("line", ""))
    else:
        res.fail("graph probe: libckpt summary line at exit", "not found: was libckpt preloaded?")


def probe_side(res, args, work, budget):
    limit = budget.limit(120)
    if limit < 10:
        res.fail("side probe", "not run: out of the check's time budget")
        return
    plain = torch_child(args, work, "side", "side plain", results.plain_env(), limit, [])
    if not plain.ok:
        res.fail("side probe: the plain run completed", plain.why())
        return
    for conn in ("1", None):
        name = f"CUDA_DEVICE_MAX_CONNECTIONS={conn}" if conn else "CUDA_DEVICE_MAX_CONNECTIONS unset"
        limit = budget.limit(120)  # the watchdog: a hang is a time-out of the child
        if limit < 10:
            res.fail(f"side probe, {name}", "not run: out of the check's time budget")
            continue
        env = results.plain_env({"CKPT_LIBRARY": args.lib, "CKPT_MODE": "host", "CKPT_PATCH": "torch"})
        env.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
        if conn:
            env["CUDA_DEVICE_MAX_CONNECTIONS"] = conn
        c = torch_child(args, work, "side", f"side ckpt-run conn {conn or 'unset'}", env, limit,
                        ["bash", args.ckpt_run, "--"])
        if not c.ok:
            res.fail(f"side probe, {name}: completed within {limit:.0f} s", c.why())
            continue
        a, b = plain.data["steps"], c.data["steps"]
        same = sum(x == y for x, y in zip(a, b))
        res.check(f"side probe, {name}: a side stream reads the regions' outputs (wait_stream/record_stream), "
                  f"{args.steps} steps: sums and losses bitwise equal to the plain run",
                  len(a) == len(b) == args.steps and same == args.steps, f"{same} of {len(a)} steps equal, "
                  f"{c.seconds:.1f} s")
        s = c.summary
        if s is not None:
            res.check(f"side probe, {name}: libckpt offloaded and restored, no driver errors",
                      s["offloaded_mib"] > 0 and s["restored_mib"] > 0 and s["driver_errors"] == 0,
                      f"offloaded {s['offloaded_mib']:.0f} MiB, restored {s['restored_mib']:.0f} MiB, "
                      f"driver-errors={s['driver_errors']}")
        else:
            res.fail(f"side probe, {name}: libckpt summary line at exit", "not found: was libckpt preloaded?")


if __name__ == "__main__":
    sys.exit(main())
