#!/usr/bin/env bash
# Cost of judging a statement as the proxy pays it (no database needed):
# verdict by exact text (hit), by template (same statement, other
# constants) and on a miss (pg_query analysis + Cedar decision), in µs.
# Targets (issue 5): hit < 1 µs, miss < 30 µs on OLTP statements.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
exec cargo run --release --quiet -p sluice-proxy --example guard_cost
