#!/usr/bin/env python3
"""Turn bench/run.sh's raw samples into a table (stdout) and a JSON file.

Usage: BENCH_META='{...}' report.py RESULTS.tsv OUT.json
RESULTS.tsv lines: part, clients|rows, mode|kind, target, value, latency_ms
(value is "fail" when that run failed). Standard library only.
"""
import json
import os
import statistics
import sys
from collections import defaultdict

TARGETS = ("direct", "bouncer", "sluice")
# The transparent Sluice: masking, statement policy and audit off.
TRANSPARENT = "sluice_transparent"
NAMES = {"direct": "direct", "bouncer": "pgbouncer", "sluice": "sluice", TRANSPARENT: TRANSPARENT}
RSS_GOAL_MIB = 64
LARGE_GOAL = 0.8  # sluice / direct


def pgbench_goal(clients):
    """Minimum sluice / pgbouncer TPS ratio."""
    return 0.9 if clients == 1 else 1.0


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def fmt(x, width, digits=0):
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def verdict(r, goal):
    return "n/a" if r is None else ("ok" if r >= goal else "MISS")


def main():
    results_path, out_path = sys.argv[1], sys.argv[2]
    meta = json.loads(os.environ.get("BENCH_META", "{}"))

    values, lats, fails = defaultdict(list), defaultdict(list), defaultdict(int)
    for line in open(results_path):
        part, a, b, target, value, latency = line.rstrip("\n").split("\t")
        key = (part, int(a), b)
        if value == "fail":
            fails[key + (target,)] += 1
            continue
        values[key + (target,)].append(float(value))
        if latency:
            lats[key + (target,)].append(float(latency))

    configs = sorted({k[:3] for k in list(values) + list(fails)}, key=lambda k: (k[0], k[1], k[2] not in ("simple", "select"), k[2]))
    for k in ("seconds", "repeat", "rows", "nproc", "mem_total_kib"):
        if str(meta.get(k, "")).isdigit():
            meta[k] = int(meta[k])
    report = {
        "settings": {k: meta.get(k) for k in ("seconds", "repeat", "rows", "targets")}
        | {"keep_awake_1_client": bool(meta.get("keep_awake"))},
        "machine": {k: meta.get(k) for k in ("nproc", "kernel", "cpu", "mem_total_kib", "loadavg_start", "loadavg_end")},
        "git": {"commit": meta.get("commit"), "dirty": meta.get("dirty") == "true"},
        "versions": {k: meta.get(k) for k in ("postgres", "pgbouncer", "pgbench", "sluice_version")},
        "sluice": {"binary": meta.get("sluice_bin"), "binary_mtime": meta.get("sluice_bin_mtime"),
                   "ran": "sluice" in (meta.get("targets") or "") and not meta.get("sluice_note"),
                   "note": meta.get("sluice_note") or None},
        "pgbench": [],
        "large": [],
    }

    def entry(key, targets=TARGETS):
        """Median, spread and samples per target for one configuration."""
        out = {}
        for t in targets:
            v = values.get(key + (t,), [])
            out[NAMES[t]] = {"median": med(v), "min": min(v) if v else None, "max": max(v) if v else None,
                             "samples": v, "failed_runs": fails.get(key + (t,), 0)}
        return out

    seconds, repeat = meta.get("seconds", "?"), meta.get("repeat", "?")
    pg = [k for k in configs if k[0] == "pgbench"]
    if pg:
        print()
        print(f"pgbench -S, scale 10: median of {repeat} run(s) of {seconds} s per target;"
              " transp = Sluice with masking, policy and audit off")
        print(f"{'clients':>7} {'mode':>8} | {'TPS direct':>10} {'pgbouncer':>10} {'sluice':>10} {'transp':>10} |"
              f" {'lat ms d':>8} {'b':>6} {'s':>6} | {'s/direct':>8} {'s/bouncer':>9} {'t/bouncer':>9}  goal: sluice, transp")
        for key in pg:
            _, c, mode = key
            d, b, s, t = (med(values.get(key + (x,), [])) for x in TARGETS + (TRANSPARENT,))
            ld, lb, ls = (med(lats.get(key + (x,), [])) for x in TARGETS)
            goal = pgbench_goal(c)
            sd, sb, tb = ratio(s, d), ratio(s, b), ratio(t, b)
            print(f"{c:>7} {mode:>8} | {fmt(d, 10)} {fmt(b, 10)} {fmt(s, 10)} {fmt(t, 10)} |"
                  f" {fmt(ld, 8, 3)} {fmt(lb, 6, 3)} {fmt(ls, 6, 3)} | {fmt(sd, 8, 2)} {fmt(sb, 9, 2)} {fmt(tb, 9, 2)}"
                  f"  >= {goal:.1f}x bouncer: {verdict(sb, goal)}, {verdict(tb, goal)}")
            e = entry(key, TARGETS + (TRANSPARENT,))
            for x in TARGETS + (TRANSPARENT,):
                e[NAMES[x]]["latency_ms_median"] = med(lats.get(key + (x,), []))
            report["pgbench"].append({
                "clients": c, "mode": mode, "tps": e,
                "sluice_vs_direct": sd, "sluice_vs_pgbouncer": sb,
                "transparent_vs_direct": ratio(t, d), "transparent_vs_pgbouncer": tb,
                "bouncer_vs_direct": ratio(b, d),
                "goal_sluice_vs_pgbouncer": goal, "goal_met": None if sb is None else sb >= goal,
                "goal_met_transparent": None if tb is None else tb >= goal,
            })

    large = [k for k in configs if k[0] == "large"]
    if large:
        print()
        print(f"large result: median rows/s of {repeat} read(s) (without connection time)")
        print(f"{'read':>7} {'rows':>8} | {'direct':>10} {'pgbouncer':>10} {'sluice':>10} {'transp':>10} |"
              f" {'s/direct':>8} {'t/direct':>8} {'b/direct':>8}  goal: sluice, transp")
        for key in large:
            _, rows, kind = key
            d, b, s = (med(values.get(key + (t,), [])) for t in TARGETS)
            t = med(values.get(key + (TRANSPARENT,), []))
            sd, td = ratio(s, d), ratio(t, d)
            label = "SELECT" if kind == "select" else "COPY"
            print(f"{label:>7} {rows:>8} | {fmt(d, 10)} {fmt(b, 10)} {fmt(s, 10)} {fmt(t, 10)} |"
                  f" {fmt(sd, 8, 2)} {fmt(td, 8, 2)} {fmt(ratio(b, d), 8, 2)}"
                  f"  >= {LARGE_GOAL}x direct: {verdict(sd, LARGE_GOAL)}, {verdict(td, LARGE_GOAL)}")
            report["large"].append({
                "kind": kind, "rows": rows, "rows_per_s": entry(key, TARGETS + (TRANSPARENT,)),
                "sluice_vs_direct": sd, "transparent_vs_direct": td,
                "bouncer_vs_direct": ratio(b, d),
                "goal_sluice_vs_direct": LARGE_GOAL, "goal_met": None if sd is None else sd >= LARGE_GOAL,
                "goal_met_transparent": None if td is None else td >= LARGE_GOAL,
            })

    def mib(field):
        v = meta.get(field)
        return round(int(v) / 1024, 1) if v else None

    rss = mib("rss_peak_kib")
    report["sluice"].update({"peak_rss_mib": rss, "rss_at_end_mib": mib("rss_now_kib"),
                             "peak_rss_after_pgbench_mib": mib("rss_peak_after_pgbench_kib"),
                             "goal_peak_rss_mib": RSS_GOAL_MIB,
                             "goal_met": None if rss is None else rss < RSS_GOAL_MIB})
    print()
    if rss is None:
        print(f"sluice: {report['sluice']['note'] or 'not measured'}")
    else:
        print(f"sluice peak RSS (VmHWM): {rss:.1f} MiB (after pgbench: {report['sluice']['peak_rss_after_pgbench_mib']} MiB,"
              f" at end: {report['sluice']['rss_at_end_mib']} MiB)  < {RSS_GOAL_MIB} MiB: {'ok' if rss < RSS_GOAL_MIB else 'MISS'}")
        if report["sluice"]["note"]:
            print(f"sluice: {report['sluice']['note']}")
    goals = [x["goal_met"] for x in report["pgbench"] + report["large"]] + [report["sluice"]["goal_met"]]
    report["goals_met"] = None if None in goals else all(goals)
    goals = [x["goal_met_transparent"] for x in report["pgbench"] + report["large"]] + [report["sluice"]["goal_met"]]
    report["goals_met_transparent"] = None if None in goals else all(goals)
    print(f"goals met: sluice {report['goals_met']}, transparent sluice {report['goals_met_transparent']}"
          " (peak RSS is the default Sluice's)")
    if report["settings"]["keep_awake_1_client"]:
        print("1-client runs had every CPU kept busy by a nice-19 spinner (BENCH_KEEP_AWAKE)")
    print(f"machine: {meta.get('nproc')} cores, {meta.get('cpu')}, load {meta.get('loadavg_start')} -> {meta.get('loadavg_end')};"
          f" commit {str(meta.get('commit'))[:10]}{' (dirty)' if report['git']['dirty'] else ''}")
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"written {os.path.relpath(out_path)}")


if __name__ == "__main__":
    main()
