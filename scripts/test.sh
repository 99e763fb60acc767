#!/usr/bin/env bash
# Run every test: install what is missing (PostgreSQL, PgBouncer, drivers),
# check formatting and lints, then the whole suite against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

./scripts/install-test-deps.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
cargo nextest run --workspace --profile ci "$@"
