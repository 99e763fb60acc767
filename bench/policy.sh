#!/usr/bin/env bash
# What policy costs, in one run on this machine (issue 5, item 8):
#  1. micro-benchmark (no database): judging one statement in the guard,
#     verdict by exact text (hit), by template (same statement, other
#     constants) and on a miss (pg_query analysis + Cedar decision), on
#     pgbench's statements and on long analytical queries, in µs;
#  2. pgbench -S through two Sluice processes in front of one throwaway
#     PostgreSQL, policy on (default config) and policy off
#     ([policy] enabled = false), interleaved, and the ratio on/off.
# Targets: hit < 1 µs, miss < 30 µs on OLTP statements, TPS >= 0.95x off.
# Prints tables and writes bench/results/<UTC time>-policy.json. See
# bench/README.md, "Policy cost".
#
# Env: BENCH_SECONDS (10)    seconds per pgbench run
#      BENCH_REPEAT (3)      on/off pairs per configuration; medians reported
#      BENCH_CLIENTS ("1 10 50")
#      BENCH_MODES ("simple prepared")
#      BENCH_QUICK=1         smoke run: 2 s runs, 1 pair, short micro-benchmark
#      BENCH_SKIP_MICRO=1    skip the micro-benchmark
#      BENCH_SKIP_TPS=1      skip PostgreSQL, Sluice and pgbench
#      BENCH_BUILD=1         rebuild Sluice (cargo build --release) even if a binary exists
#      SLUICE_BIN            Sluice binary (default: release build, as bench/run.sh)
#      GUARD_COST_BIN        prebuilt guard_cost example (default: cargo build --release --example)
#      BENCH_FEATURE         policy (default) or audit: what is switched off in the
#                            second Sluice; bench/audit.sh sets audit (issue 7, item 8)
set -euo pipefail

feature=${BENCH_FEATURE:-policy}
case $feature in policy|audit) ;; *) echo "BENCH_FEATURE: policy or audit, not $feature" >&2; exit 2;; esac

bench_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$bench_dir")
cd "$root"

seconds=${BENCH_SECONDS:-10}
repeat=${BENCH_REPEAT:-3}
clients=${BENCH_CLIENTS:-"1 10 50"}
modes=${BENCH_MODES:-"simple prepared"}
micro_args=()
if [ -n "${BENCH_QUICK:-}" ]; then seconds=2; repeat=1; micro_args=(--quick); fi

log() { echo "[${BENCH_FEATURE:-policy}] $*" >&2; }
die() { log "error: $*"; exit 1; }
notes=()  # what was meant to run and did not: exit status 2

command -v python3 >/dev/null || die "python3 not found"
if [ -z "${BENCH_SKIP_TPS:-}" ]; then
  for tool in psql pgbench; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install postgresql-client)"
  done
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pg_bin/initdb" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin"
fi

# --- Temp dir and cleanup. PostgreSQL refuses root: run it as postgres then. ---
if [ "$(id -u)" -eq 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi
work=""; pg_started=""; child=""; pid_on=""; pid_off=""
stop_pid() {  # pid: TERM, wait up to 5 s, then KILL
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  set +e
  [ -n "$child" ] && stop_pid "$child"
  [ -n "$pid_on" ] && stop_pid "$pid_on"
  [ -n "$pid_off" ] && stop_pid "$pid_off"
  [ -n "$pg_started" ] && as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate -w stop >/dev/null 2>&1
  [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM
work=$(mktemp -d "/tmp/sluice-$feature-bench.XXXXXX")
chmod 755 "$work"

# run OUT CMD...: CMD in the background (so that Ctrl-C reaches the INT trap),
# its output into OUT, its status returned. As in bench/run.sh.
run() {
  local out=$1 rc=0; shift
  "$@" >"$out" 2>&1 &
  child=$!
  wait "$child" || rc=$?
  child=""
  return "$rc"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. Micro-benchmark: before anything else runs, so it has the CPUs to itself. ---
micro_json="$work/micro.json"
if [ -z "${BENCH_SKIP_MICRO:-}" ] && [ "$feature" = audit ]; then
  # The audit writer alone: events/s into SQLite, verified afterwards.
  micro_target=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
  log "building the writer_bench example (cargo build --release -p sluice-audit --example writer_bench) into $micro_target..."
  if CARGO_TARGET_DIR=$micro_target cargo build --release -p sluice-audit --example writer_bench \
       --message-format=short >"$work/micro-build.log" 2>&1; then
    events=200000; [ -n "${BENCH_QUICK:-}" ] && events=20000
    for r in $(seq 1 "$repeat"); do
      log "writer_bench run $r/$repeat: $events events, verified"
      "$micro_target/release/examples/writer_bench" --events "$events" --verify | tee -a "$work/writer.txt" >&2 \
        || { notes+=("writer_bench: failed"); break; }
    done
  else
    tail -20 "$work/micro-build.log" >&2; notes+=("writer_bench: build failed")
  fi
elif [ -z "${BENCH_SKIP_MICRO:-}" ]; then
  guard_cost=${GUARD_COST_BIN:-}
  if [ -z "$guard_cost" ]; then
    micro_target=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
    log "building the guard_cost example (cargo build --release -p sluice-proxy --example guard_cost) into $micro_target..."
    if CARGO_TARGET_DIR=$micro_target cargo build --release -p sluice-proxy --example guard_cost \
         --message-format=short >"$work/micro-build.log" 2>&1; then
      guard_cost="$micro_target/release/examples/guard_cost"
    else
      tail -20 "$work/micro-build.log" >&2
      log "WARNING: the guard_cost example did not build; no micro-benchmark"
      notes+=("micro-benchmark: build failed")
    fi
  fi
  if [ -n "$guard_cost" ]; then
    log "micro-benchmark: $guard_cost ${micro_args[*]:-}"
    echo
    if ! "$guard_cost" "${micro_args[@]}" --json "$micro_json"; then
      log "WARNING: the micro-benchmark failed"; notes+=("micro-benchmark: failed"); rm -f "$micro_json"
    fi
  fi
fi

# --- 2. pgbench -S through Sluice, policy on and off. ---
results="$work/results.tsv"
: > "$results"
sluice=""; checked_on=""; checked_off=""; probe_on=""; probe_off=""
if [ -z "${BENCH_SKIP_TPS:-}" ]; then
  # Sluice binary: as bench/run.sh.
  find_sluice() {
    if [ -n "${SLUICE_BIN:-}" ]; then echo "$SLUICE_BIN"; return; fi
    local c
    for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/sluice"} \
             "$HOME/.cache/sluice/target/release/sluice" "$root/target/release/sluice"; do
      [ -x "$c" ] && { echo "$c"; return; }
    done
  }
  sluice=$(find_sluice)
  if [ -z "${SLUICE_BIN:-}" ] && { [ -z "$sluice" ] || [ -n "${BENCH_BUILD:-}" ]; }; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
    log "building sluice (cargo build --release -p sluice) into $CARGO_TARGET_DIR..."
    if cargo build --release -p sluice --message-format=short 2>&1 | tail -5 >&2; then
      sluice="$CARGO_TARGET_DIR/release/sluice"
    else
      sluice=""
    fi
  fi
  [ -n "$sluice" ] && [ -x "$sluice" ] || die "no Sluice binary (${sluice:-not found, build failed}); set SLUICE_BIN"

  [ "$(id -u)" -eq 0 ] && { id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' system user"; chown postgres "$work"; }
  free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  }
  pg_port=$(free_port); on_port=$(free_port); on_http=$(free_port); off_port=$(free_port); off_http=$(free_port)

  # PostgreSQL as in bench/run.sh: trust on the local socket, SCRAM on 127.0.0.1.
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

  export PGUSER=bench PGPASSWORD=bench PGDATABASE=bench PGHOST=127.0.0.1 PGSSLMODE=disable
  port_of() { case $1 in direct) echo "$pg_port";; on) echo "$on_port";; off) echo "$off_port";; esac; }
  wait_sql() {  # target: until "select 1" works, up to 10 s
    local i
    for i in $(seq 1 100); do
      psql -X -q -t -p "$(port_of "$1")" -c "select 1" >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    return 1
  }
  wait_sql direct || die "cannot log in to PostgreSQL as bench"
  http_ok() {
    if command -v curl >/dev/null; then curl -fs -o /dev/null "$1"
    else python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; fi
  }
  http_get() {
    python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
  }

  # Two Sluice processes: the same config but for [policy]; a production
  # target, so that the production guardrails are the ones judged.
  log "Sluice: $("$sluice" --version 2>/dev/null | head -1) ($sluice)"
  hash=$(printf bench | "$sluice" passwd 2>"$work/passwd.log") || { cat "$work/passwd.log" >&2; die "sluice passwd failed"; }
  case $hash in SCRAM-SHA-256\$*) ;; *) die "sluice passwd printed: $hash";; esac
  start_sluice() {  # on|off: starts it, sets pid_on/pid_off; 0 when bench can log in through it
    local which=$1 port http policy pid i
    port=$(port_of "$which")
    if [ "$which" = on ]; then http=$on_http; policy=""; else http=$off_http; policy="[$feature]"$'\nenabled = false'; fi
    cat > "$work/sluice-$which.toml" <<TOML
[listen]
postgres = "127.0.0.1:$port"
http = "127.0.0.1:$http"
plaintext = "allow"

[[targets]]
name = "bench"
environment = "production"
upstream = "127.0.0.1:$pg_port"
database = "bench"
user = "bench"
password_env = "BENCH_DB_PASSWORD"
tls = "disable"

[[users]]
name = "bench"
kind = "service"
password_hash = "$hash"

$policy
TOML
    log "starting Sluice $feature $which on 127.0.0.1:$port (http $http)"
    BENCH_DB_PASSWORD=bench SLUICE_LOG=${SLUICE_LOG:-warn} \
      setsid "$sluice" serve --config "$work/sluice-$which.toml" --data-dir "$work/sluice-data-$which" \
      >"$work/sluice-$which.log" 2>&1 &
    pid=$!
    if [ "$which" = on ]; then pid_on=$pid; else pid_off=$pid; fi
    for i in $(seq 1 300); do  # up to 30 s for /healthz, then a login
      kill -0 "$pid" 2>/dev/null || return 1
      http_ok "http://127.0.0.1:$http/healthz" && { wait_sql "$which"; return; }
      sleep 0.1
    done
    return 1
  }
  for which in on off; do
    start_sluice "$which" || { tail -20 "$work/sluice-$which.log" >&2; die "Sluice ($feature $which) did not become ready"; }
  done

  # Is the policy really on in one and off in the other? A DROP in
  # production is refused by a built-in guardrail when it is judged.
  probe() {
    psql -X -q -p "$(port_of "$1")" -c "drop table if exists sluice_policy_probe" 2>&1 | tr '\n' ' ' || true
  }
  probe_on=$(probe on); probe_off=$(probe off)
  if [ "$feature" = policy ]; then
    case $probe_on in *"blocked by"*) ;; *) die "policy on: DROP TABLE was not refused ($probe_on)";; esac
    case $probe_off in *"blocked by"*) die "policy off: DROP TABLE was refused ($probe_off)";; esac
    log "probe: policy on refuses DROP TABLE, policy off lets it through"
  fi

  log "pgbench -i -s 10 (direct)"
  run "$work/pgbench-init.log" pgbench -i -s 10 -q -p "$pg_port" \
    || { cat "$work/pgbench-init.log" >&2; die "pgbench -i failed"; }
  # Warm the cache and both processes before the first measured run.
  for which in direct on off; do
    run "$work/out" pgbench -S -n -c 2 -j 2 -T 1 -p "$(port_of "$which")" \
      || { tail -5 "$work/out" >&2; die "warm-up pgbench against $which failed"; }
  done

  # Each configuration: on/off pairs, R times, alternating which goes first
  # (on off, off on, ...), so that drift in machine load hits both alike.
  # Besides TPS, per run: the CPU time the Sluice process spent per
  # transaction (utime + stime of all its threads, from /proc), much less
  # sensitive to the rest of the machine than TPS; and the audit events it
  # recorded and lost (queue or spool full) from /metrics.
  clk_tck=$(getconf CLK_TCK)
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
  metrics() {  # http port: "events lost checked" from /metrics (0 when unavailable)
    { http_get "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk '
      $1 == "sluice_audit_events_total" {e = $2}
      $1 == "sluice_audit_dropped_total" || $1 == "sluice_audit_refused_total" {l += $2}
      $1 == "sluice_statements_checked_total" {c = $2}
      END {print e + 0, l + 0, c + 0}'
  }
  pid_of() { [ "$1" = on ] && echo "$pid_on" || echo "$pid_off"; }
  http_of() { [ "$1" = on ] && echo "$on_http" || echo "$off_http"; }
  dead=""
  check_alive() {  # on|off: 1 (and a note, its status and log tail) when it has exited
    local pid rc=0
    pid=$(pid_of "$1")
    kill -0 "$pid" 2>/dev/null && return 0
    wait "$pid" 2>/dev/null || rc=$?
    log "Sluice $feature $1 (pid $pid) has exited, status $rc$( ((rc > 128)) && echo " (signal $((rc - 128)))"); its log ends:"
    { grep -v 'audit event not recorded' "$work/sluice-$1.log" || true; } | tail -20 >&2
    notes+=("sluice $feature $1 exited during the run (status $rc)")
    dead=1
    return 1
  }
  for c in $clients; do
    j=$(( c < 2 ? c : 2 ))
    for mode in $modes; do
      for r in $(seq 1 "$repeat"); do
        if (( r % 2 )); then order="on off"; else order="off on"; fi
        for which in $order; do
          pid=$(pid_of "$which")
          ticks0=$(cpu_ticks "$pid"); read -r ev0 lost0 _ < <(metrics "$(http_of "$which")")
          if run "$work/out" pgbench -S -n -M "$mode" -c "$c" -j "$j" -T "$seconds" -p "$(port_of "$which")"; then
            ticks1=$(cpu_ticks "$pid"); read -r ev1 lost1 _ < <(metrics "$(http_of "$which")")
            out=$(cat "$work/out")
            tps=$(awk '/^tps = /{print $3}' <<<"$out")
            lat=$(awk '/^latency average/{print $4}' <<<"$out")
            txns=$(awk -F': ' '/^number of transactions actually processed/{print $2+0}' <<<"$out")
            cpu=$(python3 -c "import sys; t, n, hz = map(float, sys.argv[1:]); print(round(t / hz * 1e6 / n, 2) if n else '')" \
                    "$((ticks1 - ticks0))" "${txns:-0}" "$clk_tck")
            events=$((ev1 - ev0)); lost=$((lost1 - lost0))
          else
            log "pgbench failed against $feature $which:"; tail -5 "$work/out" >&2
            tps=fail; lat=""; cpu=""; events=""; lost=""
          fi
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$mode" "$r" "$which" "$tps" "$lat" "$cpu" "$events" "$lost" >> "$results"
          log "pgbench -S -c $c -M $mode pair $r/$repeat $feature $which: $tps tps, $lat ms, sluice ${cpu:-?} µs CPU/txn, audit events ${events:-?} recorded, ${lost:-?} lost"
          check_alive on || break 4
          check_alive off || break 4
        done
      done
    done
  done
  [ -n "$dead" ] && log "WARNING: stopped measuring: a Sluice process exited"

  # The guard's own counter: statements judged (verdict cache misses) in each process.
  if [ -z "$dead" ]; then
    read -r _ _ checked_on < <(metrics "$on_http")
    read -r _ _ checked_off < <(metrics "$off_http")
  fi
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report: tables on stdout, JSON in bench/results/. ---
mkdir -p "$bench_dir/results"
out_json="$bench_dir/results/$(date -u +%Y%m%dT%H%M%SZ)-$feature.json"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$([ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo true || echo false)
BENCH_META=$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  feature "$feature" writer "$(grep -h 'events/s' "$work/writer.txt" 2>/dev/null | tr '\n' '|' || true)" \
  seconds "$seconds" repeat "$repeat" clients "$clients" modes "$modes" scale 10 \
  quick "${BENCH_QUICK:-}" skip_micro "${BENCH_SKIP_MICRO:-}" skip_tps "${BENCH_SKIP_TPS:-}" \
  nproc "$(nproc)" kernel "$(uname -r)" \
  cpu "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
  mem_total_kib "$(awk '/^MemTotal/{print $2}' /proc/meminfo)" \
  loadavg_start "$load_start" loadavg_end "$load_end" \
  commit "$commit" dirty "$dirty" \
  postgres "$([ -n "${pg_bin:-}" ] && "$pg_bin/postgres" --version || true)" \
  pgbench "$(command -v pgbench >/dev/null && pgbench --version || true)" \
  sluice_bin "$sluice" sluice_version "$([ -n "$sluice" ] && "$sluice" --version 2>/dev/null || true)" \
  sluice_bin_mtime "$([ -n "$sluice" ] && date -u -r "$sluice" +%Y-%m-%dT%H:%M:%SZ || true)" \
  checked_on "$checked_on" checked_off "$checked_off" probe_on "$probe_on" probe_off "$probe_off" \
  notes "$(IFS=';'; echo "${notes[*]:-}")") \
  python3 "$bench_dir/policy_report.py" "$results" "$micro_json" "$out_json"

if [ "${#notes[@]}" -gt 0 ]; then
  log "incomplete: ${notes[*]}"; exit 2
fi
