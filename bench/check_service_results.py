#!/usr/bin/env python3
"""Checks a service benchmark results file: every figure has its rows, with positive numbers.

  check_service_results.py RESULTS.jsonl
  check_service_results.py --run BENCH --server-bin S --worker-bin W --json F [--markdown M]
      runs `BENCH --quick` first (the ctest bench.service_quick), then checks F.
Exits 1 naming what is missing.
"""
import argparse
import json
import subprocess
import sys

# (name, the key of its count, the counts every run has; None: any) and the fields that must be > 0.
COMMON = ["p50_ms", "p99_ms", "mean_ms", "max_ms", "samples", "cores"]
FIGURES = [
    ("get_job", "clients", [1, 16, 64],
     ["calls_per_client", "calls_per_second", "server_cpu_ms_per_call", "client_cpu_ms_per_call", "store_jobs"]),
    ("list_jobs", "clients", [1, 16, 64],
     ["calls_per_client", "calls_per_second", "server_cpu_ms_per_call", "client_cpu_ms_per_call", "store_jobs"]),
    ("plan_job_cold", "clients", [1], []),
    ("plan_job_cached", "clients", [1], []),
    ("submit_to_first_step", "clients", [1], []),
    ("watch_job", "watchers", None,
     ["channels", "window_s", "events_published", "events_per_second", "delivered_fraction", "connect_s",
      "server_cpu_cores", "client_cpu_cores", "server_cpu_us_per_event", "client_cpu_us_per_event",
      "server_busiest_thread_cores", "rss_before_bytes",
      "rss_connected_bytes", "rss_window_bytes", "memory_per_watcher_bytes"]),
]


def check(path):
    errors = []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for name, key, counts, fields in FIGURES:
        mine = [r for r in rows if r.get("name") == name]
        if not mine:
            errors.append(f"no {name} row")
            continue
        seen = sorted({r.get(key) for r in mine})
        if counts is not None and seen != counts:
            errors.append(f"{name}: rows for {key} {seen}, expected {counts}")
        if counts is None and len(seen) < 2:
            errors.append(f"{name}: rows for {key} {seen}, expected two counts")
        for r in mine:
            for field in [key] + COMMON + fields:
                value = r.get(field)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                    errors.append(f"{name} ({key} {r.get(key)}): {field} is {value!r}, expected a positive number")
            if r["p99_ms"] < r["p50_ms"]:
                errors.append(f"{name} ({key} {r.get(key)}): p99 {r['p99_ms']} below p50 {r['p50_ms']}")
            if not r.get("worker"):
                errors.append(f"{name}: no worker field")
    cached = {r.get("plan_cached") for r in rows if r.get("name") == "submit_to_first_step"}
    if cached != {False, True}:
        errors.append(f"submit_to_first_step: plan_cached variants {sorted(cached)}, expected both")
    return rows, errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="?")
    parser.add_argument("--run")
    parser.add_argument("--server-bin")
    parser.add_argument("--worker-bin")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    path = args.json or args.results
    if not path:
        parser.error("give RESULTS.jsonl or --json")
    if args.run:
        command = [args.run, "--quick", "--server-bin", args.server_bin, "--worker-bin", args.worker_bin,
                   "--json", args.json]
        if args.markdown:
            command += ["--markdown", args.markdown]
        print(" ".join(command), flush=True)
        code = subprocess.call(command)
        if code != 0:
            print(f"the benchmark exited with {code}", file=sys.stderr)
            return 1
    rows, errors = check(path)
    for e in errors:
        print("FAIL:", e, file=sys.stderr)
    print(f"{len(rows)} rows checked, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
