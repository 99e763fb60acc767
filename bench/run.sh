#!/usr/bin/env bash
# Sluice side by side with a direct connection and with PgBouncer, in one run
# on this machine. Prints a table of medians and ratios and writes
# bench/results/<timestamp>-proxy.json. See bench/README.md.
#
# Env: BENCH_SECONDS (10), BENCH_REPEAT (3), BENCH_CLIENTS ("1 10 50"),
#      BENCH_ROWS (1000000), BENCH_SKIP_LARGE=1, BENCH_QUICK=1 (smoke run),
#      SLUICE_BIN (default: release build under $CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${BENCH_SECONDS:-10}
repeat=${BENCH_REPEAT:-3}
clients=${BENCH_CLIENTS:-"1 10 50"}
rows=${BENCH_ROWS:-1000000}
if [ -n "${BENCH_QUICK:-}" ]; then seconds=2; repeat=1; rows=100000; fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
sluice=${SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}
if [ -z "${SLUICE_BIN:-}" ]; then
  echo "building sluice (release)..." >&2
  cargo build --release -p sluice --quiet
fi
command -v pgbouncer >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
sluice_pid=""
cleanup() {
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -f "$work/pgbouncer.pid" ] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

pg_port=$(free_port); bouncer_port=$(free_port); sluice_port=$(free_port); http_port=$(free_port)

echo "starting PostgreSQL, PgBouncer and Sluice..." >&2
as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
cat >> "$work/pg/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 300
fsync = off
synchronous_commit = off
shared_buffers = 256MB
CONF
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start >/dev/null
psql -X -q -h "$work" -p "$pg_port" -U postgres -c "create role bench login password 'bench'" -c "create database bench owner bench"

cat > "$work/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$pg_port dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
echo '"bench" "bench"' > "$work/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pgbouncer.ini" "$work/userlist.txt"
as_pg pgbouncer -d "$work/pgbouncer.ini"

cat > "$work/sluice.toml" <<TOML
[listen]
postgres = "127.0.0.1:$sluice_port"
http = "127.0.0.1:$http_port"
plaintext = "allow"

[[targets]]
name = "bench"
environment = "development"
upstream = "127.0.0.1:$pg_port"
database = "bench"
user = "bench"
password_env = "BENCH_DB_PASSWORD"
tls = "disable"

[[users]]
name = "bench"
kind = "service"
password_hash = "$(printf bench | "$sluice" passwd)"
TOML
BENCH_DB_PASSWORD=bench SLUICE_LOG=warn "$sluice" serve --config "$work/sluice.toml" --data-dir "$work/sluice-data" 2>"$work/sluice.log" &
sluice_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

export PGUSER=bench PGPASSWORD=bench PGDATABASE=bench PGHOST=127.0.0.1 PGSSLMODE=disable
port_of() { case $1 in direct) echo "$pg_port";; bouncer) echo "$bouncer_port";; sluice) echo "$sluice_port";; esac; }

pgbench -i -s 10 -q -p "$pg_port" >/dev/null 2>&1
results="$work/results.tsv"
: > "$results"

# pgbench -S: interleave the three targets within each repetition so that
# machine noise hits them alike.
for c in $clients; do
  j=$(( c < 2 ? c : 2 ))
  for mode in simple prepared; do
    for r in $(seq 1 "$repeat"); do
      for target in direct bouncer sluice; do
        out=$(pgbench -S -n -M "$mode" -c "$c" -j "$j" -T "$seconds" -p "$(port_of $target)" 2>&1) || { echo "$out" >&2; exit 1; }
        tps=$(awk '/^tps = /{print $3}' <<<"$out")
        lat=$(awk '/^latency average/{print $4}' <<<"$out")
        printf 'pgbench\t%s\t%s\t%s\t%s\t%s\n' "$c" "$mode" "$target" "$tps" "$lat" >> "$results"
        echo "  pgbench -S c=$c $mode $target: $tps tps" >&2
      done
    done
  done
done

if [ -z "${BENCH_SKIP_LARGE:-}" ]; then
  psql -X -q -p "$pg_port" -c "create table big as select g as id, md5(g::text) || md5((g+1)::text) || repeat('x', 30) as pad from generate_series(1, $rows) g" -c "vacuum analyze big"
  for r in $(seq 1 "$repeat"); do
    for target in direct bouncer sluice; do
      for kind in select copy; do
        if [ $kind = select ]; then
          sql="select * from big"
          start=$(date +%s.%N); psql -X -q -A -t -p "$(port_of $target)" -c "$sql" -o /dev/null; end=$(date +%s.%N)
        else
          start=$(date +%s.%N); psql -X -q -p "$(port_of $target)" -c "copy big to stdout" > /dev/null; end=$(date +%s.%N)
        fi
        rps=$(python3 -c "print(round($rows / ($end - $start)))")
        printf 'large\t%s\t%s\t%s\t%s\t\n' "$rows" "$kind" "$target" "$rps" >> "$results"
        echo "  large $kind $target: $rps rows/s" >&2
      done
    done
  done
fi
rss_kib=$(awk '/VmHWM/{print $2}' "/proc/$sluice_pid/status")

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$results" "$rss_kib" "bench/results/$stamp-proxy.json" "$seconds" "$repeat" <<'PY'
import json, os, platform, statistics, subprocess, sys
from collections import defaultdict

path, rss_kib, out_path, seconds, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
runs = defaultdict(list)
lat = defaultdict(list)
for line in open(path):
    kind, a, b, target, value, latency = line.rstrip("\n").split("\t")
    runs[(kind, a, b, target)].append(float(value))
    if latency:
        lat[(kind, a, b, target)].append(float(latency))
med = {k: statistics.median(v) for k, v in runs.items()}

report = {"pgbench": [], "large": [], "sluice_peak_rss_mib": round(rss_kib / 1024, 1),
          "seconds": seconds, "repeat": repeat,
          "machine": {"nproc": os.cpu_count(), "kernel": platform.release()},
          "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
print()
print(f"pgbench -S (median of {repeat} runs of {seconds}s; TPS, avg latency ms)")
print(f"{'clients':>7} {'mode':>9} | {'direct':>9} {'pgbouncer':>9} {'sluice':>9} | {'lat d':>6} {'lat b':>6} {'lat s':>6} | {'s/direct':>8} {'s/bouncer':>9}  target")
for (kind, c, mode, target) in sorted({(k[0], k[1], k[2], "") for k in med if k[0] == "pgbench"}, key=lambda k: (int(k[1]), k[2])):
    d, b, s = (med[(kind, c, mode, t)] for t in ("direct", "bouncer", "sluice"))
    ld, lb, ls = (statistics.median(lat[(kind, c, mode, t)]) for t in ("direct", "bouncer", "sluice"))
    goal = 0.9 if c == "1" else 1.0
    flag = "ok" if s / b >= goal else "MISS"
    print(f"{c:>7} {mode:>9} | {d:>9.0f} {b:>9.0f} {s:>9.0f} | {ld:>6.3f} {lb:>6.3f} {ls:>6.3f} | {s/d:>8.2f} {s/b:>9.2f}  >= {goal}x bouncer: {flag}")
    report["pgbench"].append({"clients": int(c), "mode": mode, "tps": {"direct": d, "pgbouncer": b, "sluice": s},
                              "latency_ms": {"direct": ld, "pgbouncer": lb, "sluice": ls},
                              "sluice_vs_direct": round(s / d, 3), "sluice_vs_pgbouncer": round(s / b, 3)})
large = sorted({(k[1], k[2]) for k in med if k[0] == "large"})
if large:
    print()
    print("large result (median rows/s)")
    print(f"{'kind':>7} {'rows':>8} | {'direct':>10} {'pgbouncer':>10} {'sluice':>10} | {'s/direct':>8}  target")
    for rows, kind in large:
        d, b, s = (med[("large", rows, kind, t)] for t in ("direct", "bouncer", "sluice"))
        flag = "ok" if s / d >= 0.8 else "MISS"
        print(f"{kind:>7} {rows:>8} | {d:>10.0f} {b:>10.0f} {s:>10.0f} | {s/d:>8.2f}  >= 0.8x direct: {flag}")
        report["large"].append({"kind": kind, "rows": int(rows), "rows_per_s": {"direct": d, "pgbouncer": b, "sluice": s},
                                "sluice_vs_direct": round(s / d, 3)})
print()
rss = rss_kib / 1024
print(f"sluice peak RSS: {rss:.1f} MiB  (< 64 MiB: {'ok' if rss < 64 else 'MISS'})")
json.dump(report, open(out_path, "w"), indent=2)
print(f"written {out_path}")
PY
