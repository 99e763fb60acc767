#!/usr/bin/env bash
# Fuzz the admin REST API of a running Sluice against its own OpenAPI
# document with schemathesis (PyPI; pinned in tests/clients/python/requirements.txt,
# installed by scripts/install-test-deps.sh).
#
#   SLUICE_ADMIN_TOKEN=... tests/api/schemathesis.sh http://127.0.0.1:7080
#
# Environment:
#   SLUICE_ADMIN_TOKEN     a static admin token of that Sluice (required; an
#                          environment variable, so it is not in `ps` output)
#   SCHEMATHESIS_EXAMPLES  examples per operation (default 30)
#   SCHEMATHESIS_CHECKS    checks to run (default: every check except
#                          positive_data_acceptance, which cannot hold for
#                          /api/policy/validate: most strings are not Cedar)
#   SCHEMATHESIS_SEED      a seed, to replay a run (default: random, printed)
#
# The document is fetched with the token (it needs a role) into a temporary
# file, then every operation is called with generated valid and invalid
# input. Exit status 0 means no check failed.
set -euo pipefail

base=${1:?usage: SLUICE_ADMIN_TOKEN=... $0 BASE_URL}
base=${base%/}
: "${SLUICE_ADMIN_TOKEN:?set SLUICE_ADMIN_TOKEN to a static admin token}"
examples=${SCHEMATHESIS_EXAMPLES:-30}
default_checks=not_a_server_error,status_code_conformance,content_type_conformance
default_checks+=,response_headers_conformance,response_schema_conformance
default_checks+=,negative_data_rejection,missing_required_header,unsupported_method
default_checks+=,allow_header_conformance,ignored_auth,use_after_free,ensure_resource_availability
checks=${SCHEMATHESIS_CHECKS:-$default_checks}
seed=${SCHEMATHESIS_SEED:-$(( (RANDOM << 15) | RANDOM ))}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$base/api/openapi.json" "$work/openapi.json" <<'PY'
import os, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={
    "Authorization": "Bearer " + os.environ["SLUICE_ADMIN_TOKEN"]})
with urllib.request.urlopen(req, timeout=30) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY

echo "schemathesis: $base, $examples examples per operation, checks $checks, seed $seed"
cd "$work"
exec python3 -m schemathesis.cli run "$work/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $SLUICE_ADMIN_TOKEN" \
  --generation-with-security-parameters false \
  --checks "$checks" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$examples" \
  --seed "$seed" \
  --generation-database none \
  --request-timeout 30 \
  --workers 1 \
  --no-color
