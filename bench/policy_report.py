#!/usr/bin/env python3
"""Turn bench/policy.sh's raw samples into a table (stdout) and a JSON file.

Usage: BENCH_META='{...}' policy_report.py RESULTS.tsv MICRO.json OUT.json
RESULTS.tsv lines: clients, mode, pair, on|off, tps, latency_ms,
sluice_cpu_us_per_txn, audit_events_recorded, audit_events_lost (tps is
"fail" when that run failed). MICRO.json: the guard_cost example's output
(may be missing). Standard library only.
"""
import json
import math
import os
import statistics
import sys
from collections import defaultdict

TPS_GOAL = 0.95  # policy on / policy off


def med(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def fmt(x, width, digits=0):
    return f"{'n/a':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def verdict(ok):
    return "n/a" if ok is None else ("ok" if ok else "MISS")


def micro_summary(micro):
    """One line per kind: worst hit / template / miss medians."""
    lines = []
    for kind in ("oltp", "analytical"):
        rows = [s for s in micro.get("statements", []) if s.get("kind") == kind]
        if not rows:
            continue

        def worst(field):
            xs = [s[field]["median"] for s in rows if s.get(field, {}).get("median") is not None]
            return max(xs) if xs else None

        lines.append((kind, worst("hit"), worst("template"), worst("miss")))
    return lines


def main():
    results_path, micro_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    meta = json.loads(os.environ.get("BENCH_META", "{}"))
    for k in ("seconds", "repeat", "scale", "nproc", "mem_total_kib", "checked_on", "checked_off"):
        if str(meta.get(k, "")).isdigit():
            meta[k] = int(meta[k])
        elif meta.get(k) == "":
            meta[k] = None

    micro = None
    if os.path.exists(micro_path):
        with open(micro_path) as f:
            micro = json.load(f)

    # (clients, mode) -> which -> pair -> tps
    tps = defaultdict(lambda: defaultdict(dict))
    lat = defaultdict(lambda: defaultdict(list))
    cpu = defaultdict(lambda: defaultdict(dict))
    audit = defaultdict(lambda: defaultdict(dict))  # recorded, lost
    fails = defaultdict(int)
    for line in open(results_path):
        c, mode, pair, which, value, latency, cpu_us, events, lost = (line.rstrip("\n").split("\t") + [""] * 3)[:9]
        key = (int(c), mode)
        if value == "fail":
            fails[key + (which,)] += 1
            continue
        tps[key][which][int(pair)] = float(value)
        if latency:
            lat[key][which].append(float(latency))
        if cpu_us:
            cpu[key][which][int(pair)] = float(cpu_us)
        if events and lost:
            audit[key][which][int(pair)] = (int(events), int(lost))

    feature = meta.get("feature") or "policy"
    report = {
        "feature": feature,
        "writer_bench": [l for l in (meta.get("writer") or "").split("|") if l] or None,
        "settings": {k: meta.get(k) for k in ("seconds", "repeat", "clients", "modes", "scale", "quick")},
        "machine": {k: meta.get(k) for k in ("nproc", "kernel", "cpu", "mem_total_kib", "loadavg_start", "loadavg_end")},
        "git": {"commit": meta.get("commit"), "dirty": meta.get("dirty") == "true"},
        "versions": {k: meta.get(k) for k in ("postgres", "pgbench", "sluice_version")},
        "sluice": {"binary": meta.get("sluice_bin") or None, "binary_mtime": meta.get("sluice_bin_mtime") or None,
                   "environment": "production",
                   "statements_checked_total": {f"{feature}_on": meta.get("checked_on"), f"{feature}_off": meta.get("checked_off")},
                   "probe": {f"{feature}_on": meta.get("probe_on") or None, f"{feature}_off": meta.get("probe_off") or None}},
        "notes": [n for n in (meta.get("notes") or "").split(";") if n],
        "micro": micro,
        "pgbench": [],
    }

    if report["writer_bench"]:
        print()
        print("audit writer alone (writer_bench, SQLite, verified; goal >= 50k events/s):")
        for line in report["writer_bench"]:
            print(f"  {line.strip()}")
    if micro:
        print()
        print("micro-benchmark, worst median per kind (µs per statement; table above):")
        print(f"{'kind':>10} | {'hit':>8} {'template':>9} {'miss':>8}")
        for kind, h, t, m in micro_summary(micro):
            print(f"{kind:>10} | {fmt(h, 8, 3)} {fmt(t, 9, 3)} {fmt(m, 8, 1)}")
        g = micro.get("goals", {})
        print(f"OLTP: hit < 1 µs: {verdict(g.get('hit'))}, template hit < 1 µs: {verdict(g.get('template'))},"
              f" miss < 30 µs: {verdict(g.get('miss'))}")

    configs = sorted(tps.keys() | {k[:2] for k in fails}, key=lambda k: (k[0], k[1] != "simple", k[1]))
    if configs:
        seconds, repeat = meta.get("seconds", "?"), meta.get("repeat", "?")
        print()
        print(f"pgbench -S through Sluice, scale 10, production target, {feature} on vs off: median of {repeat} interleaved pair(s) of {seconds} s")
        print(f"{'clients':>7} {'mode':>8} | {'TPS on':>9} {'TPS off':>9} | {'lat ms on':>9} {'off':>6} |"
              f" {'on/off':>6} {'pairs':>6} {'(min..max)':>13}  {'goal':<13} | {'CPU µs/txn on':>13} {'off':>6} {'on-off':>6} |"
              f" {'audit lost % on':>15} {'off':>5}")
        for key in configs:
            c, mode = key
            on, off = tps[key]["on"], tps[key]["off"]
            m_on, m_off = med(list(on.values())), med(list(off.values()))
            r = ratio(m_on, m_off)
            # Ratio within each pair: the two runs were next to each other in time.
            pairs = [on[p] / off[p] for p in sorted(on) if p in off and off[p]]
            pr = round(med(pairs), 3) if pairs else None
            spread = f"{min(pairs):.2f}..{max(pairs):.2f}" if pairs else "n/a"
            ok = None if r is None else r >= TPS_GOAL
            def lost_pct(which):
                """Audit events lost (queue or spool full) over all runs, in % of events."""
                rec = sum(e for e, _ in audit[key][which].values())
                lost = sum(l for _, l in audit[key][which].values())
                return round(100.0 * lost / (rec + lost), 2) if rec + lost else None

            cpu_on, cpu_off = med(list(cpu[key]["on"].values())), med(list(cpu[key]["off"].values()))
            cpu_diff = None if cpu_on is None or cpu_off is None else round(cpu_on - cpu_off, 2)
            goal_txt = f">= {TPS_GOAL}: {verdict(ok)}"
            print(f"{c:>7} {mode:>8} | {fmt(m_on, 9)} {fmt(m_off, 9)} |"
                  f" {fmt(med(lat[key]['on']), 9, 3)} {fmt(med(lat[key]['off']), 6, 3)} |"
                  f" {fmt(r, 6, 3)} {fmt(pr, 6, 3)} {spread:>13}  {goal_txt:<13} |"
                  f" {fmt(cpu_on, 13, 1)} {fmt(cpu_off, 6, 1)} {fmt(cpu_diff, 6, 1)} |"
                  f" {fmt(lost_pct('on'), 15, 1)} {fmt(lost_pct('off'), 5, 1)}")

            def side(which, d):
                v = list(d.values())
                return {"median": med(v), "min": min(v) if v else None, "max": max(v) if v else None,
                        "samples": [d[p] for p in sorted(d)], "latency_ms_median": med(lat[key][which]),
                        "failed_runs": fails.get(key + (which,), 0)}

            report["pgbench"].append({
                "clients": c, "mode": mode,
                f"{feature}_on": side("on", on), f"{feature}_off": side("off", off),
                "ratio_on_off": r, "pair_ratios": [round(x, 4) for x in pairs], "pair_ratio_median": pr,
                "sluice_cpu_us_per_txn": {f"{feature}_on": {"median": cpu_on, "samples": [cpu[key]["on"][p] for p in sorted(cpu[key]["on"])]},
                                          f"{feature}_off": {"median": cpu_off, "samples": [cpu[key]["off"][p] for p in sorted(cpu[key]["off"])]},
                                          "on_minus_off": cpu_diff},
                "audit_events": {w: {"recorded": [audit[key][w][p][0] for p in sorted(audit[key][w])],
                                     "lost": [audit[key][w][p][1] for p in sorted(audit[key][w])],
                                     "lost_percent": lost_pct(w)} for w in ("on", "off")},
                "goal": TPS_GOAL, "goal_met": ok,
            })
        ratios = [e["ratio_on_off"] for e in report["pgbench"] if e["ratio_on_off"]]
        if ratios:
            gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            report["ratio_on_off_geomean"] = round(gm, 3)
            print(f"{'':>16}   geometric mean of on/off over the configurations: {gm:.3f}")
        co, cf = meta.get("checked_on"), meta.get("checked_off")
        print(f"statements judged (sluice_statements_checked_total): {feature} on {co}, {feature} off {cf}")
        lost_any = any(l for k in audit for w in audit[k] for _, l in audit[k][w].values())
        if lost_any:
            print("WARNING: Sluice lost audit events (sluice_audit_dropped_total + sluice_audit_refused_total):"
                  " its audit writer did not keep up, and it did less work than it should have")

    goals = [e["goal_met"] for e in report["pgbench"]]
    if micro:
        goals += [micro.get("goals", {}).get(k) for k in ("hit", "template", "miss")]
    report["goals_met"] = None if not goals or None in goals else all(goals)
    print(f"machine: {meta.get('nproc')} cores, {meta.get('cpu')}, load {meta.get('loadavg_start')} -> {meta.get('loadavg_end')};"
          f" commit {str(meta.get('commit'))[:10]}{' (dirty)' if report['git']['dirty'] else ''}")
    for n in report["notes"]:
        print(f"note: {n}")
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"written {os.path.relpath(out_path)}")


if __name__ == "__main__":
    main()
