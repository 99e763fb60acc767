#!/usr/bin/env bash
# Run one real-driver scenario against the server named by the libpq
# environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) and
# SCENARIO_SSLMODE (disable | require):
#
#   tests/clients/run.sh python-psycopg | python-asyncpg | node | java
#
# The exit code is the scenario's. Dependencies come from
# scripts/install-test-deps.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

usage() {
  echo "usage: $0 python-psycopg|python-asyncpg|node|java" >&2
  exit 2
}
[ $# -eq 1 ] || usage

for v in PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE; do
  if [ -z "${!v:-}" ]; then
    echo "$0: $v is not set" >&2
    exit 2
  fi
done
case "${SCENARIO_SSLMODE:=disable}" in
  disable | require) export SCENARIO_SSLMODE ;;
  *) echo "$0: SCENARIO_SSLMODE must be disable or require, not '$SCENARIO_SSLMODE'" >&2; exit 2 ;;
esac

missing() {
  echo "$0: $1 (run scripts/install-test-deps.sh)" >&2
  exit 3
}

case "$1" in
  python-psycopg)
    python3 -c 'import psycopg' 2>/dev/null || missing "python module psycopg is not installed"
    exec python3 "$here/python/psycopg_scenario.py" ;;
  python-asyncpg)
    python3 -c 'import asyncpg' 2>/dev/null || missing "python module asyncpg is not installed"
    exec python3 "$here/python/asyncpg_scenario.py" ;;
  node)
    [ -d "$here/node/node_modules/pg" ] || missing "node modules are not installed in $here/node"
    exec node "$here/node/pg_scenario.js" ;;
  java)
    jar=/usr/share/java/postgresql.jar
    [ -f "$jar" ] || missing "$jar is missing (Debian package libpostgresql-jdbc-java)"
    command -v javac >/dev/null || missing "javac is not installed"
    # A fresh output directory per run: several runs may compile at once.
    out="$(mktemp -d "${TMPDIR:-/tmp}/sluice-jdbc.XXXXXX")"
    trap 'rm -rf "$out"' EXIT
    javac -encoding UTF-8 -Xlint:all -Werror -cp "$jar" -d "$out" "$here/java/PgJdbcScenario.java"
    rc=0
    java -cp "$jar:$out" PgJdbcScenario || rc=$?
    exit "$rc" ;;
  *) usage ;;
esac
