#!/usr/bin/env bash
# What the audit trail costs, in one run on this machine (issue 7, item 8):
#  1. the audit writer alone (crates/sluice-audit/examples/writer_bench):
#     statement events/s into SQLite, the trail verified afterwards
#     (goal >= 50k events/s);
#  2. pgbench -S through two Sluice processes in front of one throwaway
#     PostgreSQL, audit on (default) and off ([audit] enabled = false),
#     interleaved, and the ratio on/off (goal >= 0.95x).
# The same machinery as bench/policy.sh, with BENCH_FEATURE=audit; the same
# environment variables apply. Writes bench/results/<UTC time>-audit.json.
exec env BENCH_FEATURE=audit "$(dirname "$0")/policy.sh" "$@"
