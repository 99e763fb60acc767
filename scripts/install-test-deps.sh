#!/usr/bin/env bash
# Install what the test suite needs, only what is missing: PostgreSQL server
# and client, PgBouncer, the JDBC driver, a JDK, the Python and Node drivers.
# Idempotent; quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# pg_query (the PostgreSQL parser) is built with bindgen, which needs libclang.
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

py=python3
if ! $py -c 'import psycopg, asyncpg' >/dev/null 2>&1; then
  echo "== pip install -r tests/clients/python/requirements.txt"
  $py -m pip install -q --disable-pip-version-check -r tests/clients/python/requirements.txt
fi

if [ ! -d tests/clients/node/node_modules/pg ]; then
  echo "== npm ci (tests/clients/node)"
  (cd tests/clients/node && npm ci --silent --no-audit --no-fund)
fi
