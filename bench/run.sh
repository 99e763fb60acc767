#!/usr/bin/env bash
# Sluice side by side with a direct connection and with PgBouncer, in one run
# on this machine: pgbench -S at several client counts, and a large result
# read by SELECT and by COPY. Prints medians and ratios and writes
# bench/results/<UTC time>-proxy.json. See bench/README.md.
#
# Everything runs on loopback from a temp dir that is removed on exit:
# a throwaway PostgreSQL, PgBouncer (session pooling) and Sluice.
#
# Env: BENCH_SECONDS (10)    seconds per pgbench run
#      BENCH_REPEAT (3)      runs per configuration; the median is reported
#      BENCH_CLIENTS ("1 10 50")
#      BENCH_ROWS (1000000)  rows in the large-result table
#      BENCH_SKIP_LARGE=1    skip the large-result part
#      BENCH_SKIP_SLUICE=1   measure direct and PgBouncer only
#      BENCH_QUICK=1         smoke run: 2 s runs, 1 repetition, 100k rows
#      BENCH_BUILD=1         rebuild Sluice (cargo build --release) even if a binary exists
#      BENCH_KEEP_AWAKE=1    during 1-client runs, keep every CPU busy with a nice-19
#                            spinner (see README: idle vCPUs of a VM wake slowly)
#      SLUICE_BIN            Sluice binary (default: release build, see find_sluice)
set -euo pipefail

bench_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$bench_dir")
cd "$root"

seconds=${BENCH_SECONDS:-10}
repeat=${BENCH_REPEAT:-3}
clients=${BENCH_CLIENTS:-"1 10 50"}
rows=${BENCH_ROWS:-1000000}
if [ -n "${BENCH_QUICK:-}" ]; then seconds=2; repeat=1; rows=100000; fi
targets="direct bouncer sluice"

log() { echo "[bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in psql pgbench python3; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install postgresql-client / python3)"
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pg_bin/initdb" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin"

# --- Sluice binary: $SLUICE_BIN, else a release build (built if missing). ---
find_sluice() {
  if [ -n "${SLUICE_BIN:-}" ]; then echo "$SLUICE_BIN"; return; fi
  # $CARGO_TARGET_DIR if set, else the project's usual target dir, else ./target
  local c
  for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/sluice"} \
           "$HOME/.cache/sluice/target/release/sluice" "$root/target/release/sluice"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}
sluice=""; sluice_note=""
if [ -n "${BENCH_SKIP_SLUICE:-}" ]; then
  targets="direct bouncer"; sluice_note="skipped (BENCH_SKIP_SLUICE)"
else
  sluice=$(find_sluice)
  if [ -z "${SLUICE_BIN:-}" ] && { [ -z "$sluice" ] || [ -n "${BENCH_BUILD:-}" ]; }; then
    # same target dir as scripts/test.sh, so the build is shared
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
    log "building sluice (cargo build --release -p sluice) into $CARGO_TARGET_DIR..."
    if cargo build --release -p sluice --message-format=short 2>&1 | tail -5 >&2; then
      sluice="$CARGO_TARGET_DIR/release/sluice"
    else
      sluice=""
    fi
  fi
  if [ -z "$sluice" ] || [ ! -x "$sluice" ]; then
    log "WARNING: no Sluice binary (${sluice:-not found, build failed}); measuring direct and PgBouncer only"
    targets="direct bouncer"; sluice_note="not run: no binary"; sluice=""
  fi
fi

# --- PgBouncer: Debian's package. ---
if ! command -v pgbouncer >/dev/null; then
  log "installing pgbouncer..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q pgbouncer >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; } \
    || die "could not install pgbouncer"
fi

# --- Temp dir and cleanup. PostgreSQL and PgBouncer refuse root: run them as
# the postgres user then. ---
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' system user"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
work=""; sluice_pid=""; plain_pid=""; pg_started=""; child=""
stop_pid() {  # pid: TERM, wait up to 5 s, then KILL
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
awake_pids=""
keep_awake() {  # start one lowest-priority busy loop per CPU
  local i
  for i in $(seq 1 "$(nproc)"); do
    nice -n 19 sh -c 'while :; do :; done' &
    awake_pids="$awake_pids $!"
  done
}
let_sleep() {
  local p
  for p in $awake_pids; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  awake_pids=""
}

cleanup() {
  set +e
  let_sleep
  [ -n "$child" ] && stop_pid "$child"
  [ -n "$sluice_pid" ] && stop_pid "$sluice_pid"
  [ -n "$plain_pid" ] && stop_pid "$plain_pid"
  [ -s "$work/pgbouncer.pid" ] && stop_pid "$(cat "$work/pgbouncer.pid")"
  [ -n "$pg_started" ] && as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" -eq 0 ] && chown postgres "$work"

# run OUT CMD...: CMD's output into file OUT, CMD's status. CMD runs in the
# background and the shell waits for it. In the foreground, a client that
# catches Ctrl-C itself (psql does, to cancel its query) would make bash ignore
# the Ctrl-C; a background job does not see it, and `wait` returns at once so
# that the INT trap runs and cleanup stops the job.
run() {
  local out=$1 rc=0; shift
  "$@" >"$out" 2>&1 &
  child=$!
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
pg_port=$(free_port); bouncer_port=$(free_port); sluice_port=$(free_port); http_port=$(free_port)
plain_port=$(free_port); plain_http_port=$(free_port)

# --- PostgreSQL: trust on the local socket, SCRAM on 127.0.0.1. ---
log "starting PostgreSQL ($("$pg_bin/postgres" --version | awk '{print $3}')) on 127.0.0.1:$pg_port"
as_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die "initdb failed"; }
cat >> "$work/pg/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
CONF
pg_started=1
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w -t 60 start >/dev/null \
  || { tail -20 "$work/pg.log" >&2; die "PostgreSQL did not start"; }
psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$pg_port" -U postgres -d postgres \
  -c "create role bench login password 'bench'" -c "create database bench owner bench"

# --- PgBouncer, session pooling, SCRAM against the userlist. ---
log "starting PgBouncer ($(pgbouncer --version | awk 'NR==1{print $2}')) on 127.0.0.1:$bouncer_port"
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
log_connections = 0
log_disconnections = 0
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
echo '"bench" "bench"' > "$work/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown postgres "$work/pgbouncer.ini" "$work/userlist.txt"
as_pg pgbouncer -q -d "$work/pgbouncer.ini" || { cat "$work/pgbouncer.log" >&2; die "PgBouncer did not start"; }

export PGUSER=bench PGPASSWORD=bench PGDATABASE=bench PGHOST=127.0.0.1 PGSSLMODE=disable
port_of() { case $1 in direct) echo "$pg_port";; bouncer) echo "$bouncer_port";; sluice) echo "$sluice_port";; sluice_transparent) echo "$plain_port";; esac; }
wait_sql() {  # target: until "select 1" works, up to 10 s
  local i
  for i in $(seq 1 100); do
    psql -X -q -t -p "$(port_of "$1")" -c "select 1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
wait_sql direct || die "cannot log in to PostgreSQL as bench"
wait_sql bouncer || { tail -20 "$work/pgbouncer.log" >&2; die "cannot log in through PgBouncer"; }

# --- Sluice. ---
http_ok() {
  if command -v curl >/dev/null; then curl -fs -o /dev/null "$1"
  else python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; fi
}
start_sluice() {  # 0 when Sluice serves and lets bench log in
  local hash i
  log "starting Sluice ($("$sluice" --version 2>/dev/null | head -1)) on 127.0.0.1:$sluice_port: $sluice"
  hash=$(printf bench | "$sluice" passwd 2>"$work/sluice.log") || return 1
  case $hash in SCRAM-SHA-256\$*) ;; *) echo "sluice passwd printed: $hash" >>"$work/sluice.log"; return 1;; esac
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
password_hash = "$hash"
TOML
  # own session: a Ctrl-C in the terminal is for this script, which stops Sluice itself
  BENCH_DB_PASSWORD=bench SLUICE_LOG=${SLUICE_LOG:-warn} \
    setsid "$sluice" serve --config "$work/sluice.toml" --data-dir "$work/sluice-data" >"$work/sluice.log" 2>&1 &
  sluice_pid=$!
  for i in $(seq 1 300); do  # up to 30 s for /healthz, then a login
    kill -0 "$sluice_pid" 2>/dev/null || return 1
    http_ok "http://127.0.0.1:$http_port/healthz" && { wait_sql sluice; return; }
    sleep 0.1
  done
  return 1
}
if [ -n "$sluice" ] && ! start_sluice; then
  tail -20 "$work/sluice.log" >&2
  log "WARNING: Sluice did not become ready (passwd, /healthz or login); measuring direct and PgBouncer only"
  [ -n "$sluice_pid" ] && stop_pid "$sluice_pid"
  sluice_pid=""; targets="direct bouncer"; sluice_note="not run: did not start"
fi
# A second Sluice, transparent: masking, statement policy and audit off.
# What the proxy itself costs (the base the foundation issue's goals are
# about), side by side with the default Sluice that does all three.
pg_targets=$targets; large_targets=$targets
if [ -n "$sluice_pid" ]; then
  sed -e "s/127.0.0.1:$sluice_port/127.0.0.1:$plain_port/" -e "s/127.0.0.1:$http_port/127.0.0.1:$plain_http_port/" \
    "$work/sluice.toml" > "$work/sluice-transparent.toml"
  printf '\n[masking]\nenabled = false\n[policy]\nenabled = false\n[audit]\nenabled = false\n' >> "$work/sluice-transparent.toml"
  BENCH_DB_PASSWORD=bench SLUICE_LOG=${SLUICE_LOG:-warn} \
    setsid "$sluice" serve --config "$work/sluice-transparent.toml" --data-dir "$work/sluice-transparent-data" >"$work/sluice-transparent.log" 2>&1 &
  plain_pid=$!
  for i in $(seq 1 300); do
    kill -0 "$plain_pid" 2>/dev/null || break
    http_ok "http://127.0.0.1:$plain_http_port/healthz" && wait_sql sluice_transparent \
      && { pg_targets="$targets sluice_transparent"; large_targets=$pg_targets; break; }
    sleep 0.1
  done
  [ "$pg_targets" = "$targets" ] && log "WARNING: the transparent Sluice did not start; measuring without it"
fi
vm_kib() {  # field (VmHWM, VmRSS) of the Sluice process, in KiB
  [ -n "$sluice_pid" ] && awk -v f="$1:" '$1 == f {print $2}' "/proc/$sluice_pid/status" 2>/dev/null || true
}

# Raw samples, one line each: part, clients|rows, mode|kind, target, value, latency_ms
results="$work/results.tsv"
: > "$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- pgbench -S. Each configuration: the targets one after another, then
# again, R times, so that machine noise hits all of them alike. ---
log "pgbench -i -s 10 (direct)"
run "$work/pgbench-init.log" pgbench -i -s 10 -q -p "$pg_port" \
  || { cat "$work/pgbench-init.log" >&2; die "pgbench -i failed"; }

for c in $clients; do
  j=$(( c < 2 ? c : 2 ))
  if [ "$c" = 1 ] && [ -n "${BENCH_KEEP_AWAKE:-}" ]; then keep_awake; fi
  for mode in simple prepared; do
    for r in $(seq 1 "$repeat"); do
      for target in $pg_targets; do
        if run "$work/out" pgbench -S -n -M "$mode" -c "$c" -j "$j" -T "$seconds" -p "$(port_of "$target")"; then
          out=$(cat "$work/out")
          tps=$(awk '/^tps = /{print $3}' <<<"$out")
          lat=$(awk '/^latency average/{print $4}' <<<"$out")
        else
          log "pgbench failed against $target:"; tail -5 "$work/out" >&2
          tps=fail; lat=""
        fi
        printf 'pgbench\t%s\t%s\t%s\t%s\t%s\n' "$c" "$mode" "$target" "$tps" "$lat" >> "$results"
        log "pgbench -S -c $c -M $mode run $r/$repeat $target: $tps tps, $lat ms"
      done
    done
  done
  let_sleep
done
rss_after_pgbench=$(vm_kib VmHWM)

# --- Large result: the whole table, by SELECT and by COPY. ---
# SELECT: pgbench with a one-statement script, one transaction; its tps
#   (without connection time) is 1 / query time. libpq collects the rows,
#   nothing formats them, so the client stays cheap.
# COPY: psql \copy (SELECT ...) to /dev/null (COPY ... TO STDOUT on the wire),
#   timed by psql's \timing, also without connection time.
if [ -z "${BENCH_SKIP_LARGE:-}" ]; then
  log "creating table big: $rows rows of ~100 bytes"
  run "$work/out" psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" \
    -c "create table big as select g as id, md5(g::text) as hash, md5((g+1)::text) || repeat('x', 30) as pad from generate_series(1, $rows) g" \
    -c "vacuum analyze big" -c "select count(*) from big" || { cat "$work/out" >&2; die "creating big failed"; }
  echo "select * from big" > "$work/select-big.sql"
  for kind in select copy; do
    for r in $(seq 1 "$repeat"); do
      for target in $large_targets; do
        port=$(port_of "$target")
        if [ "$kind" = select ]; then
          run "$work/out" pgbench -n -M simple -c 1 -t 1 -f "$work/select-big.sql" -p "$port" || true
          out=$(cat "$work/out")
          secs=$(awk '/^tps = /{print 1/$3}' <<<"$out")
        else
          run "$work/out" psql -X -q -v ON_ERROR_STOP=1 -p "$port" -c '\timing on' \
                  -c "\\copy (select * from big) to '/dev/null'" || true
          out=$(cat "$work/out")
          secs=$(awk '/^Time: /{print $2/1000}' <<<"$out")
        fi
        if [ -n "$secs" ]; then
          rps=$(python3 -c "print(round($rows / $secs))")
        else
          log "large $kind failed against $target:"; tail -5 <<<"$out" >&2; rps=fail
        fi
        printf 'large\t%s\t%s\t%s\t%s\t\n' "$rows" "$kind" "$target" "$rps" >> "$results"
        log "large $kind run $r/$repeat $target: $rps rows/s"
      done
    done
  done
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
rss_peak=$(vm_kib VmHWM); rss_now=$(vm_kib VmRSS)
if [ -n "$sluice_pid" ] && ! kill -0 "$sluice_pid" 2>/dev/null; then
  log "WARNING: Sluice exited during the run"; tail -20 "$work/sluice.log" >&2
  sluice_note="exited during the run"
fi

# --- Report: table on stdout, JSON in bench/results/. ---
mkdir -p "$bench_dir/results"
out_json="$bench_dir/results/$(date -u +%Y%m%dT%H%M%SZ)-proxy.json"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$([ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo true || echo false)
BENCH_META=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  seconds "$seconds" repeat "$repeat" rows "$rows" targets "$targets" \
  nproc "$(nproc)" kernel "$(uname -r)" \
  cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
  mem_total_kib "$(awk '/^MemTotal/{print $2}' /proc/meminfo)" \
  loadavg_start "$load_start" loadavg_end "$load_end" \
  commit "$commit" dirty "$dirty" \
  postgres "$("$pg_bin/postgres" --version)" pgbouncer "$(pgbouncer --version | head -1)" \
  pgbench "$(pgbench --version)" \
  sluice_bin "$sluice" sluice_version "$([ -n "$sluice" ] && "$sluice" --version 2>/dev/null || true)" \
  sluice_bin_mtime "$([ -n "$sluice" ] && date -u -r "$sluice" +%Y-%m-%dT%H:%M:%SZ || true)" \
  sluice_note "$sluice_note" keep_awake "${BENCH_KEEP_AWAKE:-}" \
  rss_peak_kib "$rss_peak" rss_now_kib "$rss_now" rss_peak_after_pgbench_kib "$rss_after_pgbench") \
  python3 "$bench_dir/report.py" "$results" "$out_json"

# A run that was meant to measure Sluice and could not is not a success.
if [ -z "${BENCH_SKIP_SLUICE:-}" ] && [ -n "$sluice_note" ]; then
  log "Sluice: $sluice_note"; exit 2
fi
