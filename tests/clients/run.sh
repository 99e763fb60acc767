#!/usr/bin/env bash
# Run one driver scenario against the server named by PGHOST/PGPORT/...:
#   tests/clients/run.sh python-psycopg | python-asyncpg | node | java
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
  python-psycopg) exec python3 "$here/python/psycopg_scenario.py" ;;
  python-asyncpg) exec python3 "$here/python/asyncpg_scenario.py" ;;
  node) exec node "$here/node/pg_scenario.js" ;;
  java)
    jar=/usr/share/java/postgresql.jar
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    javac -encoding UTF-8 -cp "$jar" -d "$out" "$here/java/PgJdbcScenario.java"
    java -cp "$jar:$out" PgJdbcScenario ;;
  *) echo "usage: $0 python-psycopg|python-asyncpg|node|java" >&2; exit 2 ;;
esac
