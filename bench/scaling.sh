#!/usr/bin/env bash
# The measured inputs of docs/scaling.md, on this machine:
#   1. Redis commands per proxied request and per verify (INFO commandstats around
#      N requests to a real gateway on the distributed store, 8 limits on the key);
#   2. decisions per second of the limiter's script on one Redis core (and its CPU
#      per call), from tollgate-scaling-bench redis;
#   3. rows per second one PostgreSQL takes from 1, 2 and 4 ledger writers, with the
#      batch size and commit rate (tollgate-scaling-bench ledger).
#
#   bench/scaling.sh              # REQUESTS=500 RUN_SECONDS=10
# It starts its own redis-server on a free port and its own PostgreSQL database on the
# local server (dropped on exit). Nothing here asserts a figure.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-500}"
SECONDS_PER_RUN="${RUN_SECONDS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --profile bench-tools -p tollgate-bench --bin tollgate-scaling-bench -p tollgate-server --bin tollgate
BIN="$CARGO_TARGET_DIR/bench-tools"
work="$(mktemp -d)"
pids=()
db="tollgate_bench_scaling_$$"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -X -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
psql -X -q postgres://postgres@127.0.0.1:5432/postgres -c "CREATE DATABASE $db"
database="postgres://postgres@127.0.0.1:5432/$db"

mock_port=$(free_port)
"$BIN/tollgate" mock-upstream --port "$mock_port" >"$work/mock.log" 2>&1 &
pids+=($!)
port=$(free_port)
token="bench-scaling-operator-token"
TOLLGATE_LISTEN="127.0.0.1:$port" TOLLGATE_STORE=distributed TOLLGATE_REDIS_URL="redis://127.0.0.1:$redis_port" \
  TOLLGATE_DATABASE_URL="$database" TOLLGATE_ADMIN_TOKEN="$token" TOLLGATE_DATA_DIR="$work/data" \
  OPENAI_BASE_URL="http://127.0.0.1:$mock_port/v1" OPENAI_API_KEY=sk-mock \
  "$BIN/tollgate" serve >"$work/tollgate.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$port"
wait_http "$base/health"
admin() { curl -fsS -H "authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
admin -X POST "$base/api/v1/projects" -d '{"id":"scaling"}' >/dev/null
big=1000000000000
admin -X POST "$base/api/v1/plans" -d "{\"name\":\"scaling\",\"limits\":[
  {\"metric\":\"requests\",\"window\":\"minute\",\"limit\":$big},{\"metric\":\"requests\",\"window\":\"hour\",\"limit\":$big},
  {\"metric\":\"requests\",\"window\":\"day\",\"limit\":$big},{\"metric\":\"requests\",\"window\":\"month\",\"limit\":$big},
  {\"metric\":\"total_tokens\",\"window\":\"minute\",\"limit\":$big},{\"metric\":\"total_tokens\",\"window\":\"day\",\"limit\":$big},
  {\"metric\":\"cost_micros\",\"window\":\"day\",\"limit\":$big},{\"metric\":\"cost_micros\",\"window\":\"month\",\"limit\":$big}]}" >/dev/null
key=$(admin -X POST "$base/api/v1/keys" -d '{"project":"scaling","plan":"scaling"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
# Warm up (key cache, scripts), then count.
for _ in $(seq 20); do curl -fsS -H "authorization: Bearer $key" -H 'content-type: application/json' -d "$chat" "$base/v1/chat/completions" >/dev/null; done

per_request() {
  local label="$1" n="$2"
  redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | python3 -c "
import sys
n = $n
rows = []
for line in sys.stdin:
    if not line.startswith('cmdstat_'): continue
    name, fields = line[len('cmdstat_'):].strip().split(':', 1)
    f = dict(kv.split('=') for kv in fields.split(','))
    if name in ('config', 'info', 'ping'): continue
    rows.append((name, int(f['calls']), float(f['usec_per_call'])))
total = sum(c for _, c, _ in rows)
print(f'$label: {total / n:.2f} Redis commands per request (' + ', '.join(f'{name} {c / n:.2f} at {u:.1f} µs' for name, c, u in rows) + ')')
"
}
gateway_pid=${pids[-1]}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$gateway_pid/stat"; }
redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
before=$(cpu_ticks)
for _ in $(seq "$REQUESTS"); do
  curl -fsS -H "authorization: Bearer $key" -H 'content-type: application/json' -d "$chat" "$base/v1/chat/completions" >/dev/null
done
after=$(cpu_ticks)
per_request "proxied chat completion (8 limits)" "$REQUESTS"
awk -v t=$((after - before)) -v n="$REQUESTS" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "gateway CPU per proxied request (distributed store, one curl at a time, a new connection each: an upper bound): %.0f µs\n", 1e6 * t / hz / n }'
redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
for _ in $(seq "$REQUESTS"); do
  curl -fsS -H 'content-type: application/json' -d "{\"key\":\"$key\"}" "$base/api/v1/keys/verify" >/dev/null
done
per_request "verify (8 limits)" "$REQUESTS"

echo
echo "## the decision script on one Redis (one core)"
"$BIN/tollgate-scaling-bench" redis --redis-url "redis://127.0.0.1:$redis_port" --concurrency 64 --seconds "$SECONDS_PER_RUN"
echo
echo "## rows per second into one PostgreSQL"
for n in 1 2 4; do
  "$BIN/tollgate-scaling-bench" ledger --database-url "$database" --instances "$n" --seconds "$SECONDS_PER_RUN" | tail -n +$([[ $n == 1 ]] && echo 1 || echo 3)
done
