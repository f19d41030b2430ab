#!/usr/bin/env bash
# The analytics benchmark: generates N synthetic ledger rows through the store's bulk
# path, starts tollgate on them and times every analytics endpoint over HTTP (p50/p99
# over a 30-day range) and a streaming export (rows/s, resident memory). Figures go
# to BENCHMARKS.md ("Analytics").
#
#   bench/analytics.sh                       # embedded, 1,000,000 rows
#   ROWS=10000000 bench/analytics.sh         # the issue's 10 million
#   bench/analytics.sh --distributed         # PostgreSQL (+ Redis) too
#
# TOLLGATE_DATABASE_URL (default: a fresh database on the local PostgreSQL, dropped on
# exit) and TOLLGATE_REDIS_URL (default redis://127.0.0.1:6379) for --distributed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${ROWS:-1000000}"
ITERATIONS="${ITERATIONS:-100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --profile bench-tools -p tollgate-bench --bin tollgate-analytics-bench
BIN="$CARGO_TARGET_DIR/bench-tools/tollgate-analytics-bench"
dir="$(mktemp -d)"
db=""
cleanup() {
  rm -rf "$dir"
  if [[ -n "$db" ]]; then psql -X -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS $db" || true; fi
}
trap cleanup EXIT
echo "## embedded, $ROWS rows"
"$BIN" bench --data-dir "$dir/embedded" --rows "$ROWS" --iterations "$ITERATIONS"
if [[ "${1:-}" == "--distributed" ]]; then
  url="${TOLLGATE_DATABASE_URL:-}"
  if [[ -z "$url" ]]; then
    db="tollgate_bench_analytics_$$"
    psql -X -q postgres://postgres@127.0.0.1:5432/postgres -c "CREATE DATABASE $db"
    url="postgres://postgres@127.0.0.1:5432/$db"
  fi
  echo "## PostgreSQL, $ROWS rows"
  "$BIN" bench --database-url "$url" --redis-url "${TOLLGATE_REDIS_URL:-redis://127.0.0.1:6379}" \
    --data-dir "$dir/distributed" --rows "$ROWS" --iterations "$ITERATIONS"
fi
