#!/usr/bin/env bash
# Sluice demo: a throwaway PostgreSQL with sample customer PII, Sluice in
# front of it, and a client session through Sluice: masking with zero
# configuration, a blocked DROP, the rows-affected limit, and the
# tamper-evident audit record of it all.
#
#   ./scripts/demo.sh            interactive: leaves everything running until Ctrl-C
#   DEMO_EXIT=1 ./scripts/demo.sh  run the scripted session and clean up
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# --- what the demo needs -----------------------------------------------------
need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q "${need_apt[@]}" >/dev/null
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

say "building sluice (release)"
cargo build --release -p sluice --quiet
sluice="$CARGO_TARGET_DIR/release/sluice"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); px_port=$(free_port); http_port=$(free_port)

work=$(mktemp -d /tmp/sluice-demo.XXXXXX)
chmod 755 "$work"
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  run_pg "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# --- a throwaway PostgreSQL with sample PII -----------------------------------
say "starting a throwaway PostgreSQL on port $pg_port"
run_pg "$pg_bin/initdb" -D "$work/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
cat >> "$work/pg/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
fsync = off
CONF
run_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start >/dev/null
db_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
psql -X -q -h "$work" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 <<SQL
create role shop_app login password '$db_password';
create database shop owner shop_app;
SQL
psql -X -q -h "$work" -p "$pg_port" -U shop_app -d shop -v ON_ERROR_STOP=1 <<'SQL'
create table customers (
  id          serial primary key,
  full_name   text not null,
  email       text not null,
  phone       text,
  card_number text,
  ssn         text,
  created_at  timestamptz default now()
);
insert into customers (full_name, email, phone, card_number, ssn)
select f || ' ' || l,
       lower(f) || '.' || lower(l) || g || '@example.com',
       '+1-202-555-' || lpad((1000 + g)::text, 4, '0'),
       -- Visa test numbers (valid Luhn)
       (array['4111111111111111','4012888888881881','4222222222222','5555555555554444','378282246310005'])[1 + g % 5],
       lpad((100 + g)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0') || '-' || lpad((1000 + g * 7)::text, 4, '0')
from generate_series(1, 200) g,
     lateral (select (array['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','John'])[1 + g % 8] as f,
                     (array['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Backus'])[1 + (g / 8) % 8] as l) n;
create table orders (id serial primary key, customer_id int references customers, total numeric(10,2));
insert into orders (customer_id, total) select 1 + g % 200, (g * 13 % 500) + 0.99 from generate_series(1, 1000) g;
SQL

# --- Sluice in front of it ----------------------------------------------------
say "starting Sluice: PostgreSQL protocol on $px_port, admin HTTP on $http_port"
alice_password="demo-alice"
alice_hash=$(printf %s "$alice_password" | "$sluice" passwd)
# dana, a DBA, approves through the admin API with a static approver token
dana_token="demo-dana-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
dana_sha=$(printf %s "$dana_token" | sha256sum | cut -d' ' -f1)
cat > "$work/sluice.toml" <<TOML
[listen]
postgres = "127.0.0.1:$px_port"
http = "127.0.0.1:$http_port"

[[targets]]
name = "shop-prod"
environment = "production"
upstream = "127.0.0.1:$pg_port"
database = "shop"
user = "shop_app"
password_env = "SHOP_DB_PASSWORD"
tls = "disable"
max_rows_affected = 100       # one UPDATE/DELETE may change at most 100 rows here

[approvals]
mode = "refuse"               # a statement that needs approval is refused with a request id

[[users]]
name = "alice"
kind = "human"
groups = ["dev"]
password_hash = "$alice_hash"

[admin]
tokens = [{ name = "dana", role = "approver", groups = ["dba"], token_sha256 = "$dana_sha" }]
TOML
SHOP_DB_PASSWORD="$db_password" "$sluice" serve --config "$work/sluice.toml" --data-dir "$work/data" >"$work/sluice.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null || { cat "$work/sluice.log"; exit 1; }

conn="host=127.0.0.1 port=$px_port user=alice dbname=shop-prod sslmode=require"
say "alice connects through Sluice with her own password (she never sees the database's)"
echo "\$ psql \"$conn\""
PGPASSWORD="$alice_password" psql -X "$conn" -v ON_ERROR_STOP=0 <<'SQL'
\echo '-- alice is signed in to Sluice over TLS ...'
\conninfo
\echo '-- ... and Sluice talks to the database as its own role'
select current_user as upstream_role;
\echo '-- PII is masked in flight, with zero configuration: names and emails become'
\echo '-- stable tokens (joins and GROUP BY still work), cards and SSNs keep their last four'
select id, full_name, email, phone, card_number, ssn from customers order by id limit 5;
\echo '-- value detectors catch PII in computed columns too'
select 'contact ' || email || ' / ' || phone as note from customers order by id limit 2;
\echo '-- and a value computed from a name is masked like the name column it comes from'
select upper(full_name) as shouted, split_part(full_name, ' ', 1) as first_name_only from customers order by id limit 2;
\echo '-- tokens are deterministic: grouping by a masked column still counts right'
select email, count(*) from (select email from customers union all select email from customers) t group by email order by email limit 2;
\echo '-- an error comes back exactly as PostgreSQL sends it'
select 1/0;
\echo '-- shop-prod is a production target: a DROP is blocked before the database sees it'
drop table customers;
\echo '-- so is a DELETE without a real WHERE clause'
delete from customers where 1 = 1;
\echo '-- and a schema change needs approval'
alter table customers drop column ssn;
\echo '-- an UPDATE that would change more rows than the target allows (100) is rolled back'
update customers set phone = null where id > 50;
\echo '-- the session goes on, and nothing was lost'
select count(*) as customers, (select count(*) from orders) as orders from customers;
SQL

say "dana, a DBA, reviews alice's request and approves it; alice runs it again, once"
export SLUICE_ADMIN_URL="http://127.0.0.1:$http_port"
echo "\$ sluice approvals list"
SLUICE_TOKEN="$dana_token" "$sluice" approvals list | cut -c1-160 | sed 's/^/  /'
request=$(SLUICE_TOKEN="$dana_token" "$sluice" approvals list --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["approvals"][0]["id"])')
echo "\$ sluice approvals approve $request -m 'CHG-1042: ssn moves to the vault'"
SLUICE_TOKEN="$dana_token" "$sluice" approvals approve "$request" -m 'CHG-1042: ssn moves to the vault' | sed 's/^/  /'
PGPASSWORD="$alice_password" psql -X "$conn" -v ON_ERROR_STOP=0 <<'SQL'
\echo '-- the same statement, now approved, runs once'
alter table customers drop column ssn;
\echo '-- and a second time needs a new approval'
alter table customers drop column ssn;
SQL

say "the same check offline, for CI pipelines that vet migrations: sluice policy test"
echo "\$ sluice policy test --environment production --as alice 'TRUNCATE orders'"
"$sluice" policy test --environment production --as alice 'TRUNCATE orders' | sed -n '1,4p' || true

say "a wrong password is refused by Sluice itself"
PGPASSWORD=wrong psql -X "$conn" -c 'select 1' 2>&1 | sed 's/^/  /' || true

say "Sluice's log of those sessions"
grep -E "session (started|ended)|authentication failed|statement refused" "$work/sluice.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^/  /' | tail -8

say "the audit trail: who did what, what policy decided, what was masked"
data="$work/data"
# Events are written asynchronously; wait until the last one (the refused
# sign-in) is in the store.
for _ in $(seq 1 50); do
  [ "$("$sluice" audit search --data-dir "$data" --principal alice --kind auth.failure --format json 2>/dev/null | grep -c '"code": *"auth.failure"')" -ge 1 ] && break
  sleep 0.1
done
echo "\$ sluice audit search --data-dir $data --principal alice --limit 12"
"$sluice" audit search --data-dir "$data" --principal alice --limit 12 2>&1 | cut -c1-160 | sed 's/^/  /'
echo "\$ sluice usage --data-dir $data --column customers.email"
"$sluice" usage --data-dir "$data" --column customers.email | sed 's/^/  /'
echo "\$ sluice audit verify --data-dir $data"
"$sluice" audit verify --data-dir "$data" | sed 's/^/  /'
echo "-- the same check without Sluice's binary, from a dump and the key file (see docs/audit.md)"
echo "\$ sluice audit dump --data-dir $data | python3 tools/verify_trail.py --key-file $data/audit/initial.key -"
"$sluice" audit dump --data-dir "$data" | python3 tools/verify_trail.py --key-file "$data/audit/initial.key" - 2>&1 | sed 's/^/  /'

say "compliance evidence for auditors (SOC 2 CC6/CC7, NIST AC/AU): sluice evidence"
echo "\$ sluice evidence --data-dir $data --from 1h   # markdown; also --format html|json"
"$sluice" evidence --data-dir "$data" --from 1h | sed -n '1,40p' | cut -c1-160 | sed 's/^/  /' || true

say "metrics (http://127.0.0.1:$http_port/metrics)"
curl -fs "http://127.0.0.1:$http_port/metrics" | grep -E '^sluice_(sessions_total|auth_failures_total|statements_denied_total|statements_held_total|audit_events_total)'

if [ -z "${DEMO_EXIT:-}" ] && [ -t 0 ]; then
  say "Sluice is running. Connect yourself:"
  echo "  PGPASSWORD=$alice_password psql \"$conn\""
  echo "  Ctrl-C stops Sluice and the throwaway database."
  wait "${pids[0]}"
fi
