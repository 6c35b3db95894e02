"""Assembles gpu-check's report: one markdown file for BENCHMARKS.md and one
JSON, from the status lines gpu-check wrote (one per check: name, exit code,
seconds, result JSON, stderr log, note) and each check's own result JSON.
Prints the summary table; exits 0 when every check passed.
"""

import argparse
import json
import os
import sys

import results


def load_status(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 6:
                continue
            name, rc, seconds, json_path, log_path, note = parts[:6]
            data = None
            if json_path and os.path.exists(json_path):
                try:
                    with open(json_path) as jf:
                        data = json.load(jf)
                except ValueError:
                    data = None
            log_tail = ""
            if log_path and os.path.exists(log_path):
                with open(log_path, errors="replace") as lf:
                    log_tail = results.tail(lf.read(), 30)
            rc = int(rc) if rc.lstrip("-").isdigit() else -1
            if note.startswith("skipped"):
                verdict = "SKIPPED"
            elif rc in (124, 137):
                verdict = "TIMEOUT"
            elif data is None:
                verdict = "FAIL (no result)"
            else:
                verdict = "PASS" if data.get("ok") and rc == 0 else "FAIL"
            rows.append({"name": name, "rc": rc, "seconds": float(seconds or 0), "verdict": verdict,
                         "note": note, "result": data, "log_tail": log_tail, "log": log_path})
    return rows


def failed_assertions(data):
    return [a["what"] for a in (data or {}).get("assertions", []) if a["counted"] and not a["ok"]]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--status", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--command", default="scripts/gpu-check")
    p.add_argument("--build", default="")
    p.add_argument("--gpu", default="")
    p.add_argument("--elapsed", type=float, default=0)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()

    facts = results.machine()
    rows = load_status(args.status)
    build_ok = args.build.startswith("ok")
    ok = build_ok and bool(rows) and all(r["verdict"] in ("PASS",) for r in rows)
    if args.gpu and not args.gpu.startswith("yes") and not args.dry_run:
        ok = False
    title = "libckpt GPU check" + (" (CPU dry run)" if args.dry_run else "")
    summary = ["| check | result | seconds | failed assertions / note |", "|---|---|---|---|"]
    for r in rows:
        failed = "; ".join(failed_assertions(r["result"]))
        if r["verdict"] != "PASS" and not failed and not r["note"]:
            failed = f"exit {r['rc']}"
        summary.append(f"| {r['name']} | {r['verdict']} | {r['seconds']:.0f} | "
                       f"{(failed or r['note']).replace('|', '/')} |")
    md = [f"## {title} — {'PASS' if ok else 'FAIL'}", "",
          f"{facts['gpu']}; {facts['torch']}; {facts['date']}; host {facts['host']}; commit {facts['commit']}", "",
          f"command: `{args.command}`; build: {args.build}; GPU: {args.gpu}; total {args.elapsed:.0f} s", ""]
    md += summary + [""]
    for r in rows:
        if r["result"] and r["result"].get("markdown"):
            md += [r["result"]["markdown"]]
        if r["verdict"] != "PASS" and r["log_tail"]:
            md += [f"#### {r['name']}: last lines of {os.path.basename(r['log'])}", "", "```", r["log_tail"], "```", ""]
    text = "\n".join(md).rstrip() + "\n"
    with open(args.md, "w") as f:
        f.write(text)
    with open(args.json, "w") as f:
        json.dump({"ok": ok, "dry_run": args.dry_run, "machine": facts, "command": args.command,
                   "build": args.build, "gpu": args.gpu, "elapsed_s": args.elapsed, "checks": rows}, f, indent=1)
    print("\n".join(summary))
    print(f"\ngpu-check: {'PASS' if ok else 'FAIL'} — report: {args.md} (and {os.path.basename(args.json)})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
