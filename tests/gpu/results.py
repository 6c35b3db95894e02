"""What every GPU check shares: its result (assertions, figures, markdown for
BENCHMARKS.md, JSON for gpu-check), the machine's facts, and child processes
run plain or under libckpt. Imports no torch: the checks' parents stay light.
"""

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_DIR = os.path.join(REPO, "tests", "gpu")
GiB = float(1 << 30)
MiB = float(1 << 20)


def default_library():
    build = os.environ.get("CKPT_BUILD_DIR") or os.path.join(REPO, "build")
    return os.environ.get("CKPT_LIBRARY") or os.path.join(build, "preload", "libckpt.so")


# ---- the machine ----------------------------------------------------------

def _run_text(cmd, timeout=20):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=plain_env())
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _torch_versions():
    """torch and CUDA versions read from torch/version.py: importing torch costs seconds."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
        with open(os.path.join(os.path.dirname(spec.origin), "version.py")) as f:
            text = f.read()
    except (AttributeError, OSError, ImportError, TypeError, ValueError):
        return "torch not found"
    version = re.search(r"__version__[^=]*=\s*'([^']*)'", text)
    cuda = re.search(r"^cuda[^=]*=\s*'([^']*)'", text, re.M)
    return f"torch {version.group(1) if version else '?'}, CUDA {cuda.group(1) if cuda else 'none'}"


def machine():
    """GPU, driver, torch, date, commit: the header of every table."""
    gpu = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    gpu = gpu.splitlines()[0] if gpu else "no GPU (nvidia-smi absent or failed)"
    commit = _run_text(["git", "-C", REPO, "describe", "--always", "--dirty"]) or "unknown"
    torch_v = _torch_versions()
    return {
        "gpu": gpu,
        "torch": torch_v,
        "host": os.uname().nodename,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


# ---- child processes --------------------------------------------------------

def _is_ours(entry):
    return "libckpt" in os.path.basename(entry) or os.sep + "_boot" in entry


def plain_env(extra=None):
    """This environment without libckpt: no preload, no NVTX injection of it,
    no ckpt sitecustomize. The allocator setting stays: compare like with like."""
    env = dict(os.environ)
    preload = [p for p in re.split(r"[:\s]+", env.get("LD_PRELOAD", "")) if p and "libckpt" not in p]
    env["LD_PRELOAD"] = ":".join(preload)
    if not env["LD_PRELOAD"]:
        del env["LD_PRELOAD"]
    if "libckpt" in env.get("NVTX_INJECTION64_PATH", ""):
        del env["NVTX_INJECTION64_PATH"]
    path = [p for p in env.get("PYTHONPATH", "").split(":") if p and not _is_ours(p)]
    if path:
        env["PYTHONPATH"] = ":".join(path)
    else:
        env.pop("PYTHONPATH", None)
    for var in ("CKPT_PATCH", "CKPT_REGIONS"):
        env.pop(var, None)
    # libckpt sets this when it is loaded; a plain run must use the same allocator.
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")
    env.update(extra or {})
    return env


def preload_env(lib, extra=None):
    """plain_env() with libckpt preloaded (the constructor sets the NVTX hook)."""
    env = plain_env()
    env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env.update(extra or {})
    return env


# libckpt's exit line (CKPT_STATS_AT_EXIT=1), read key by key so that a field
# added or moved does not break the checks: "libckpt[pid] summary: mode=host
# regions=12 tagged=3 offloaded=1.0 MiB ... device released peak=2.0 MiB copy=0.1 s ..."
SUMMARY_LINE = re.compile(r"libckpt\[\d+\] summary: (.*)")
# A value ends at a space, ')', ',' or ':' ("no CUDA device was used (regions=10): ...").
SUMMARY_PAIR = re.compile(r"([a-z][a-z -]*?)=([^\s),:]+)(?: (MiB|GiB|s)\b)?")
SUMMARY_KEYS = {"regions": "regions", "tagged": "tagged", "offloaded": "offloaded_mib", "restored": "restored_mib",
                "device released peak": "released_peak_mib", "copy": "copy_s", "stall": "stall_s",
                "pool-full": "pool_full", "restore-oom": "restore_oom", "driver-errors": "driver_errors"}


def parse_summary(text):
    """The last libckpt exit summary in text as numbers (absent fields: 0); None if no line."""
    lines = SUMMARY_LINE.findall(text or "")
    if not lines:
        return None
    out = {name: 0 for name in SUMMARY_KEYS.values()}
    out["mode"], out["line"] = "?", lines[-1].strip()
    for key, value, unit in SUMMARY_PAIR.findall(lines[-1]):
        if key == "mode":
            out["mode"] = value
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if unit == "GiB":
            number *= 1024
        out[SUMMARY_KEYS.get(key, key)] = int(number) if number.is_integer() and not unit else number
    return out


class Child:
    """One finished child: rc, seconds, its JSON result (or None), its output."""

    def __init__(self, label, cmd, rc, seconds, data, stdout, stderr, timed_out):
        self.label, self.cmd, self.rc, self.seconds = label, cmd, rc, seconds
        self.data, self.stdout, self.stderr, self.timed_out = data, stdout, stderr, timed_out
        self.summary = parse_summary(stderr)

    @property
    def ok(self):
        return self.rc == 0 and self.data is not None

    def why(self):
        if self.timed_out:
            return f"{self.label}: timed out after {self.seconds:.0f} s"
        if self.rc != 0:
            return f"{self.label}: exit {self.rc}: {tail(self.stderr, 6)}"
        if self.data is None:
            return f"{self.label}: wrote no result"
        return ""


def tail(text, lines=20):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def run_child(label, cmd, env, json_path, timeout, log_dir=None):
    """Runs cmd (which writes json_path). Its output goes to files as it runs
    (log_dir, else a temporary folder), so a child killed by a time-out still
    leaves its log; the tail is echoed to our stderr."""
    import tempfile

    if os.path.exists(json_path):
        os.unlink(json_path)
    log_dir = log_dir or tempfile.mkdtemp(prefix="gpucheck-child-")
    stem = os.path.join(log_dir, re.sub(r"[^A-Za-z0-9_.-]+", "_", label))
    print(f"[{label}] $ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    timed_out = False
    with open(stem + ".out", "w") as out_f, open(stem + ".err", "w") as err_f:
        err_f.write(f"$ {shlex.join(cmd)}\n")
        err_f.flush()
        try:
            rc = subprocess.run(cmd, env=env, stdout=out_f, stderr=err_f, timeout=timeout, cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = 124, True
    seconds = time.monotonic() - t0
    with open(stem + ".out", errors="replace") as f:
        out = f.read()
    with open(stem + ".err", errors="replace") as f:
        err = f.read()
    for text in (out, err.split("\n", 1)[-1]):  # err starts with the command, printed above
        if text.strip():
            print(tail(text, 25), file=sys.stderr)
    data = None
    if os.path.exists(json_path):
        try:
            with open(json_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
    print(f"[{label}] exit {rc} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return Child(label, cmd, rc, seconds, data, out, err, timed_out)


# ---- the result of one check --------------------------------------------------

def fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


class Result:
    """Assertions and figures of one check; finish() writes JSON + prints markdown.

    An assertion with needs_gpu=True does not count in a CPU dry run (the run
    then only proves the plumbing: arguments, children, report)."""

    def __init__(self, name, title, dry_run=False):
        self.name, self.title, self.dry_run = name, title, dry_run
        self.assertions = []
        self.figures = []  # (label, value, note)
        self.tables = []  # markdown strings
        self.notes = []
        self.figures_in_markdown = True  # off where a table already shows them (they stay in the JSON)
        self.command = shlex.join([sys.executable] + sys.argv)
        self.env = {k: v for k, v in os.environ.items()
                    if k.startswith("CKPT_") or k in ("LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")}

    def check(self, what, ok, detail="", needs_gpu=True):
        counted = not (self.dry_run and needs_gpu)
        self.assertions.append({"what": what, "ok": bool(ok), "detail": str(detail), "counted": counted})
        print(f"  {'PASS' if ok else ('FAIL' if counted else 'n/a ')}  {what}: {detail}", file=sys.stderr)
        return bool(ok)

    def figure(self, label, value, note=""):
        self.figures.append((label, value, note))

    def fail(self, what, detail):
        """An error that stopped the check (always counted)."""
        return self.check(what, False, detail, needs_gpu=False)

    @property
    def ok(self):
        return all(a["ok"] for a in self.assertions if a["counted"])

    def markdown(self, facts=None):
        facts = facts or machine()
        verdict = "PASS" if self.ok else "FAIL"
        if self.dry_run:
            verdict += " (CPU dry run: GPU-only assertions not counted)"
        lines = [f"### {self.title} — {verdict}", "",
                 f"{facts['gpu']}; {facts['torch']}; {facts['date']}; commit {facts['commit']}", "",
                 f"command: `{self.command}`"]
        if self.env:
            lines.append("environment: " + ", ".join(f"`{k}={v}`" for k, v in sorted(self.env.items())))
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for a in self.assertions:
            mark = "PASS" if a["ok"] else ("FAIL" if a["counted"] else "n/a (dry run)")
            lines.append(f"| {a['what']} | {mark} | {a['detail'].replace('|', '/')} |")
        if self.figures and self.figures_in_markdown:
            lines += ["", "| figure | value | note |", "|---|---|---|"]
            lines += [f"| {label} | {fmt(value)} | {note} |" for label, value, note in self.figures]
        for table in self.tables:
            lines += ["", table]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def finish(self, json_path=None):
        """Prints the markdown, writes the JSON; the process exit code."""
        facts = machine()
        md = self.markdown(facts)
        print(md)
        if json_path:
            data = {"name": self.name, "title": self.title, "ok": self.ok, "dry_run": self.dry_run,
                    "machine": facts, "command": self.command, "env": self.env,
                    "assertions": self.assertions,
                    "figures": [{"label": l, "value": v, "note": n} for l, v, n in self.figures],
                    "markdown": md}
            with open(json_path, "w") as f:
                json.dump(data, f, indent=1)
        return 0 if self.ok else 1


def add_common_args(parser):
    parser.add_argument("--json", help="write the result here (for gpu-check)")
    parser.add_argument("--lib", default=default_library(), type=os.path.abspath,
                        help="libckpt.so (default: $CKPT_LIBRARY, else $CKPT_BUILD_DIR or <repo>/build)")
    parser.add_argument("--ckpt-run", default=os.path.join(REPO, "scripts", "ckpt-run"), type=os.path.abspath)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--work", default=None, type=os.path.abspath,
                        help="folder for the children's results and logs")
    parser.add_argument("--child-timeout", type=float, default=150)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="no GPU: tiny model on the CPU, GPU-only assertions not counted")


def work_dir(args, name):
    import tempfile

    path = args.work or tempfile.mkdtemp(prefix=f"gpucheck-{name}-")
    os.makedirs(path, exist_ok=True)
    return path


def run_check(res, args, name, run):
    """Runs run(res, args, work) in the check's work folder (work_dir) and
    writes the report: a crash of the check is a failed row, never a lost report."""
    work = work_dir(args, name)
    try:
        run(res, args, work)
    except Exception as exc:
        res.fail("check ran", repr(exc))
    return res.finish(args.json)
