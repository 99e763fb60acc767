#!/usr/bin/env bash
# Install what the test suite needs, only what is missing, through apt, pip
# and npm and nothing else:
#   apt: PostgreSQL server and client, PgBouncer, the JDBC driver
#        (libpostgresql-jdbc-java), a JDK when javac is missing, clang and
#        libclang-dev (for pg_query's bindings); python3-pip, nodejs and npm
#        only when those tools are missing altogether.
#   pip: tests/clients/python/requirements.txt (psycopg, asyncpg).
#   npm: `npm ci` in tests/clients/node (pg and friends) and in tests/idp
#        (oidc-provider, the test identity provider), from the lock files.
# Idempotent: a second run does nothing and prints nothing. Meant to run as
# root on Debian 12 (uses sudo for apt otherwise). On failure it says which
# step failed and shows that step's output.
set -euo pipefail
cd "$(dirname "$0")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# Run a step quietly; on failure print its output and stop.
step() {
  local what="$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "install-test-deps: FAILED: $what" >&2
    echo "--- command: $*" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-test-deps: not root and no sudo" >&2; exit 1; }
  as_root=(sudo)
fi

# --- apt ---------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

wanted=(postgresql postgresql-client pgbouncer libpostgresql-jdbc-java clang libclang-dev)
missing=()
for pkg in "${wanted[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
  apt_opts=(-q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
  step "apt-get update" "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update
  step "apt-get install ${missing[*]}" "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}"
fi

# Debian's postgresql package starts a cluster on port 5432 that the tests
# do not use; they run their own servers. Leave it as the package left it.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
  || { echo "install-test-deps: no PostgreSQL server binary under /usr/lib/postgresql" >&2; exit 1; }
[ -f /usr/share/java/postgresql.jar ] \
  || { echo "install-test-deps: /usr/share/java/postgresql.jar is missing" >&2; exit 1; }

# --- pip ---------------------------------------------------------------------
req=tests/clients/python/requirements.txt
# Satisfied when every `name==version` pin is installed at that version.
pins_satisfied() {
  python3 - "$req" <<'EOF'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", line)
    if not m:
        sys.exit(1)  # not a plain pin: let pip decide
    name, version = m.group(1), m.group(3)
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if m.group(2) and "binary" in m.group(2):
        try:
            if metadata.version(name + "-binary") != version:
                sys.exit(1)
        except metadata.PackageNotFoundError:
            sys.exit(1)
EOF
}
if ! pins_satisfied; then
  pip_opts=(-q --disable-pip-version-check --no-input)
  # Debian's own python3 refuses pip installs (PEP 668) unless told.
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    pip_opts+=(--break-system-packages)
  fi
  step "pip install -r $req" python3 -m pip install "${pip_opts[@]}" -r "$req"
  pins_satisfied || { echo "install-test-deps: $req still not satisfied after pip install" >&2; exit 1; }
fi

# --- npm ---------------------------------------------------------------------
node_dir=tests/clients/node
stamp="$node_dir/node_modules/.sluice-lock.sha256"
lock_sum="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ] || [ ! -d "$node_dir/node_modules/pg" ]; then
  step "npm ci in $node_dir" bash -c "cd '$node_dir' && npm ci --no-audit --no-fund --loglevel=error"
  echo "$lock_sum" >"$stamp"
fi

idp_dir=tests/idp
idp_stamp="$idp_dir/node_modules/.sluice-lock.sha256"
idp_sum="$(sha256sum "$idp_dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$idp_stamp" ] || [ "$(cat "$idp_stamp")" != "$idp_sum" ] || [ ! -d "$idp_dir/node_modules/oidc-provider" ]; then
  step "npm ci in $idp_dir" bash -c "cd '$idp_dir' && npm ci --no-audit --no-fund --loglevel=error"
  echo "$idp_sum" >"$idp_stamp"
fi
