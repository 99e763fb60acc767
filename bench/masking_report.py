#!/usr/bin/env python3
"""Turn bench/masking.sh's raw samples into a table (stdout) and a JSON file.

Usage: BENCH_META='{...}' masking_report.py RESULTS.tsv OUT.json
RESULTS.tsv lines:
  read  rows  select|copy  direct|mask_off|mask_on  rows_per_s|fail  sluice_cpu_us_per_row (empty for direct)
  rss   rows  select|copy  vmhwm_before_kib  vmhwm_after_kib  max_sampled_vmrss_kib  samples  rows_per_s|fail
Standard library only.
"""
import json
import os
import statistics
import sys
from collections import defaultdict

TARGETS = ("direct", "mask_off", "mask_on")
NAMES = {"direct": "direct", "mask_off": "sluice_masking_off", "mask_on": "sluice_masking_on"}
THROUGHPUT_GOAL = 0.6  # masking on / direct
RSS_GOAL_MIB = 64


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def fmt(x, width, digits=0):
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def mib(kib):
    return round(int(kib) / 1024, 1) if kib not in (None, "") else None


def num(v):
    return None if v in ("", "fail", None) else float(v)


def main():
    results_path, out_path = sys.argv[1], sys.argv[2]
    meta = json.loads(os.environ.get("BENCH_META", "{}"))
    for k in ("repeat", "rows", "rss_rows", "table_bytes", "nproc", "mem_total_kib"):
        if str(meta.get(k, "")).isdigit():
            meta[k] = int(meta[k])

    values, fails, cpu, rss = defaultdict(list), defaultdict(int), defaultdict(list), []
    for line in open(results_path):
        f = line.rstrip("\n").split("\t")
        if f[0] == "read":
            _, rows, kind, target, value, cpu_us = f
            if cpu_us and value != "fail":
                cpu[(int(rows), kind, target)].append(float(cpu_us))
            if value == "fail":
                fails[(int(rows), kind, target)] += 1
            else:
                values[(int(rows), kind, target)].append(float(value))
        elif f[0] == "rss":
            _, rows, kind, before, after, max_rss, samples, rps = f
            rss.append({"kind": kind, "rows": int(rows), "vmhwm_before_mib": mib(before),
                        "vmhwm_after_mib": mib(after), "max_sampled_vmrss_mib": mib(max_rss),
                        "samples": int(samples or 0), "rows_per_s": num(rps)})

    report = {
        "settings": {k: meta.get(k) for k in ("repeat", "rows", "rss_rows", "table_bytes")},
        "machine": {k: meta.get(k) for k in ("nproc", "kernel", "cpu", "mem_total_kib", "loadavg_start", "loadavg_end")},
        "git": {"commit": meta.get("commit"), "dirty": meta.get("dirty") == "true"},
        "versions": {k: meta.get(k) for k in ("postgres", "pgbench", "sluice_version")},
        "sluice": {"binary": meta.get("sluice_bin"), "binary_mtime": meta.get("sluice_bin_mtime")},
        "masking_check": {"columns": ["full_name", "email", "phone", "ssn", "card_number"],
                          "first_row_direct": meta.get("first_row_direct"),
                          "first_row_masked": meta.get("first_row_masked")},
        "reads": [],
        "rss": {},
    }

    repeat, rows = meta.get("repeat", "?"), meta.get("rows", "?")
    mb = meta.get("table_bytes")
    size = f", {mb / 1048576:.0f} MiB on disk" if isinstance(mb, int) else ""
    print()
    print(f"masking cost: table pii, {rows} rows of id + 5 sensitive columns (name, e-mail, phone, SSN, card){size}")
    print(f"median rows/s of {repeat} interleaved read(s), without connection time")
    print(f"{'read':>6} {'rows':>8} | {'direct':>9} {'mask off':>9} {'mask on':>9} |"
          f" {'off/direct':>10} {'on/direct':>9} {'on/off':>6} | {'CPU µs/row off':>14} {'on':>6} {'on-off':>6} |  goal")
    for kind in ("select", "copy"):
        keys = [k for k in values.keys() | fails.keys() if k[1] == kind]
        if not keys:
            continue
        n = keys[0][0]
        d, off, on = (med(values.get((n, kind, t), [])) for t in TARGETS)
        od, nd = ratio(off, d), ratio(on, d)
        verdict = "n/a" if nd is None else ("ok" if nd >= THROUGHPUT_GOAL else "MISS")
        label = "SELECT" if kind == "select" else "COPY"
        c_off, c_on = (med(cpu.get((n, kind, t), [])) for t in ("mask_off", "mask_on"))
        c_diff = None if c_off is None or c_on is None else c_on - c_off
        print(f"{label:>6} {n:>8} | {fmt(d, 9)} {fmt(off, 9)} {fmt(on, 9)} |"
              f" {fmt(od, 10, 2)} {fmt(nd, 9, 2)} {fmt(ratio(on, off), 6, 2)} |"
              f" {fmt(c_off, 14, 2)} {fmt(c_on, 6, 2)} {fmt(c_diff, 6, 2)} |"
              f"  >= {THROUGHPUT_GOAL}x direct: {verdict}")
        per_target = {}
        for t in TARGETS:
            v = values.get((n, kind, t), [])
            per_target[NAMES[t]] = {"median": med(v), "min": min(v) if v else None, "max": max(v) if v else None,
                                    "samples": v, "failed_runs": fails.get((n, kind, t), 0)}
            if t != "direct":
                per_target[NAMES[t]]["sluice_cpu_us_per_row"] = {"median": med(cpu.get((n, kind, t), [])),
                                                                 "samples": cpu.get((n, kind, t), [])}
        report["reads"].append({
            "kind": kind, "rows": n, "rows_per_s": per_target,
            "masking_off_vs_direct": od, "masking_on_vs_direct": nd, "masking_on_vs_off": ratio(on, off),
            "goal_masking_on_vs_direct": THROUGHPUT_GOAL, "goal_met": None if nd is None else nd >= THROUGHPUT_GOAL,
        })

    print()
    print(f"peak RSS of the masking Sluice, reading {meta.get('rss_rows', '?')} generated rows (5 sensitive columns each)")
    print(f"{'read':>6} {'rows':>9} | {'VmHWM before':>13} {'after':>7} {'growth':>7} | {'max VmRSS':>9} {'samples':>7} | {'rows/s':>8}")
    for r in rss:
        growth = (round(r["vmhwm_after_mib"] - r["vmhwm_before_mib"], 1)
                  if r["vmhwm_after_mib"] is not None and r["vmhwm_before_mib"] is not None else None)
        r["vmhwm_growth_mib"] = growth
        label = "SELECT" if r["kind"] == "select" else "COPY"
        print(f"{label:>6} {r['rows']:>9} | {fmt(r['vmhwm_before_mib'], 9, 1)} MiB {fmt(r['vmhwm_after_mib'], 7, 1)}"
              f" {fmt(growth, 7, 1)} | {fmt(r['max_sampled_vmrss_mib'], 5, 1)} MiB {r['samples']:>7} | {fmt(r['rows_per_s'], 8)}")
    peak = mib(meta.get("hwm_end_kib"))
    start, after_reads = mib(meta.get("hwm_start_kib")), mib(meta.get("hwm_after_reads_kib"))
    rss_ok = None if peak is None else peak < RSS_GOAL_MIB
    report["rss"] = {"reads": rss, "vmhwm_at_start_mib": start, "vmhwm_after_throughput_reads_mib": after_reads,
                     "peak_vmhwm_mib": peak, "vmrss_at_end_mib": mib(meta.get("rss_now_kib")),
                     "goal_peak_mib": RSS_GOAL_MIB, "goal_met": rss_ok}
    print(f"masking Sluice VmHWM: {fmt(start, 0, 1)} MiB after start, {fmt(after_reads, 0, 1)} MiB after the"
          f" {rows}-row reads, {fmt(peak, 0, 1)} MiB at the end  < {RSS_GOAL_MIB} MiB:"
          f" {'n/a' if rss_ok is None else ('ok' if rss_ok else 'MISS')}")

    goals = [x["goal_met"] for x in report["reads"]] + [rss_ok]
    report["goals_met"] = None if None in goals else all(goals)
    print(f"machine: {meta.get('nproc')} cores, {meta.get('cpu')}, load {meta.get('loadavg_start')} -> {meta.get('loadavg_end')};"
          f" commit {str(meta.get('commit'))[:10]}{' (dirty)' if report['git']['dirty'] else ''}")
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"written {os.path.relpath(out_path)}")


if __name__ == "__main__":
    main()
