#!/usr/bin/env bash
# bench/observe-callgrind.sh: what /metrics and the access log cost one proxied request,
# counted in CPU instructions under callgrind (deterministic, unlike CPU time on a busy
# machine; and metrics cannot be switched off for an A/B run of CPU time).
#
# Runs the release tollgate under `valgrind --tool=callgrind` in front of the mock
# upstream (every control on: the same 8-limit plan as bench/run.sh) twice, access log
# on (JSON lines) and off. In each run it sends a warm-up, then turns collection on
# (`--instr-atstart=no`, `callgrind_control -i on`) for REQUESTS non-streaming chat completions (tollgate-loadgen,
# 2 connections) and off again, so start-up is not counted. It prints, per request:
#   - every instruction the gateway executed while serving (all threads), both runs;
#     the difference is what the access log costs, its writer thread included;
#   - metrics: the instructions of code from crates/gateway/src/metrics.rs wherever it
#     was inlined, plus the callees of the metrics function that stays a real call
#     (`Metrics::recorded`, inclusive), from the access-log-on run.
#
# Usage: bench/observe-callgrind.sh [REQUESTS] [OUT_DIR]   (default 3000; OUT_DIR keeps
# the profiles). Environment: TOLLGATE_BIN, LOADGEN_BIN (default: the release build in
# CARGO_TARGET_DIR or target/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUESTS="${1:-3000}"
KEEP="${2:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOLLGATE_BIN="${TOLLGATE_BIN:-$TARGET_DIR/release/tollgate}"
LOADGEN_BIN="${LOADGEN_BIN:-$TARGET_DIR/release/tollgate-loadgen}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[[ -x "$TOLLGATE_BIN" && -x "$LOADGEN_BIN" ]] || { echo "build first: cargo build --release -p tollgate-server -p tollgate-bench" >&2; exit 1; }

WORK="${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/tollgate-callgrind.XXXXXX")}"
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "$KEEP" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

MOCK_PORT=$(port)
ADMIN_TOKEN="bench-admin-token-0123456789"
UPSTREAM_KEY="sk-bench-upstream-key"
"$TOLLGATE_BIN" mock-upstream --port "$MOCK_PORT" --expected-api-key "$UPSTREAM_KEY" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/health"
printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, how are you today?"}],"max_tokens":16}' >"$WORK/chat.json"

served_now() {
  curl -s "http://127.0.0.1:$1/metrics" \
    | awk '/^tollgate_http_requests_total\{route="\/v1\/chat\/completions"/ { s += $NF } END { printf "%d", s }'
}

# send PORT KEY N: at least N chat completions.
send() {
  local sent=0 line ok
  while [[ $sent -lt $3 ]]; do
    line=$("$LOADGEN_BIN" "http://127.0.0.1:$1/v1/chat/completions" -c 2 -d 3 -t 1 \
      --body-file "$WORK/chat.json" -H "Authorization: Bearer $2" 2>>"$WORK/loadgen.log")
    ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$line")
    [[ -n "$ok" && "$ok" -gt 0 ]] || { echo "loadgen failed: $line" >&2; exit 1; }
    sent=$((sent + ok))
  done
}

# profile NAME ACCESS_LOG: one callgrind run; sets SERVED, writes $WORK/NAME.{out,self,incl}.
profile() {
  local name="$1" access="$2" port pid key before after
  port=$(port)
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "data_dir = \"$WORK/data-$name\""
    echo "admin_token = \"$ADMIN_TOKEN\""
    echo "log_format = \"json\""
    echo "access_log = $access"
    echo "[upstream]"
    echo "base_url = \"http://127.0.0.1:$MOCK_PORT/v1\""
    echo "api_key = \"$UPSTREAM_KEY\""
  } >"$WORK/$name.toml"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/$name.out" \
    "$TOLLGATE_BIN" serve --config "$WORK/$name.toml" >"$WORK/$name.stdout" 2>"$WORK/$name.stderr" &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/health" || { tail "$WORK/$name.stderr" >&2; exit 1; }
  export TOLLGATE_URL="http://127.0.0.1:$port" TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN"
  local big=1000000000000
  "$TOLLGATE_BIN" projects create bench >/dev/null
  # shellcheck disable=SC2046
  "$TOLLGATE_BIN" plans set bench $(printf -- '--limit %s ' \
    "requests/minute=$big" "requests/hour=$big" "requests/day=$big" "requests/month=$big" \
    "total_tokens/minute=$big" "total_tokens/day=$big" "cost_micros/day=$big" "cost_micros/month=$big") >/dev/null
  key=$("$TOLLGATE_BIN" keys create --project bench --plan bench | sed -n 's/.*"key": *"\(tg_[^"]*\)".*/\1/p')
  send "$port" "$key" 300
  before=$(served_now "$port")
  callgrind_control -i on "$pid" >/dev/null
  send "$port" "$key" "$REQUESTS"
  callgrind_control -i off "$pid" >/dev/null
  after=$(served_now "$port")
  SERVED=$((after - before))
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$WORK/$name.out" >"$WORK/$name.self"
  callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$WORK/$name.out" >"$WORK/$name.incl"
}

total_ir() { awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$1"; }
per() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.0f", a / n }'; }
sum_ir() { awk -v pat="$1" '$0 ~ pat { gsub(",", "", $1); s += $1 } END { printf "%d", s }' "$2"; }

profile on true
served_on=$SERVED
on_total=$(total_ir "$WORK/on.self")
# Code from metrics.rs wherever it was inlined (self cost, by source file), plus the
# callees of Metrics::recorded (a real call: inclusive minus its own lines, counted above).
metrics_self=$(sum_ir 'crates/gateway/src/metrics[.]rs:' "$WORK/on.self")
recorded_incl=$(sum_ir 'metrics[.]rs:tollgate_gateway::metrics::Metrics::recorded' "$WORK/on.incl")
recorded_self=$(sum_ir 'metrics[.]rs:tollgate_gateway::metrics::Metrics::recorded' "$WORK/on.self")
metrics=$((metrics_self + recorded_incl - recorded_self))
profile off false
served_off=$SERVED
off_total=$(total_ir "$WORK/off.self")

on_per=$(per "$on_total" "$served_on")
off_per=$(per "$off_total" "$served_off")
echo "requests profiled: $served_on (access log on), $served_off (off)"
echo "gateway instructions/request, access log on (JSON lines): $on_per"
echo "gateway instructions/request, access log off:             $off_per"
echo "access log (the difference):                              $((on_per - off_per))"
echo "metrics (metrics.rs code + Metrics::recorded's callees):  $(per "$metrics" "$served_on")"
echo "largest entries from metrics.rs (self Ir, access log on):"
grep 'crates/gateway/src/metrics.rs:' "$WORK/on.self" | head -8 | sed 's/^/  /'
