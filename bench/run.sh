#!/usr/bin/env bash
# bench/run.sh: what tollgate costs per request, measured against the upstream alone.
#
# One command from a clean checkout. It builds the release binaries if needed, installs
# wrk (Debian) if missing, starts the mock upstream and tollgate on free loopback ports
# with a temporary data directory, creates a project and a key on a plan with every
# control switched on (requests, tokens and cost over several windows, limits high
# enough never to refuse), and then, for each concurrency, runs bounded-time loads of:
#
#   chat     non-streaming chat completion: upstream alone (straight to the mock), through
#            a bare reverse proxy (nginx, keep-alive both sides), and through tollgate
#            (auth, 8-limit reservation, forward, usage, ledger, settle)
#   chat4k   the same with a 4 KB prompt
#   stream   streamed chat completion (SSE): time to first byte and total latency
#   stream20 the same with 20 content chunks
#   verify   POST /api/v1/keys/verify alone (auth + one 8-limit decision + ledger)
#   chathit  a deterministic chat completion (temperature 0) answered from tollgate's
#            exact response cache, by a key of a second project whose cache is on
#            (auth, reservation, canonical-JSON key, lookup, ledger, settle; nothing
#            forwarded); compared with the upstream alone answering it
#   chatsem  a paraphrase of a stored question, answered from the semantic cache by a
#            key of a third project whose cache and semantic cache are on (threshold
#            0.9): the exact lookup misses, the conversation is embedded by the mock's
#            `mock-semantic-embedding` model (one upstream call, its own ledger row), the
#            project's HNSW index is searched and the hit answered; the chat itself is
#            not forwarded
#
# The gateway (tollgate, or nginx for the baseline) is pinned to its own core with
# taskset (BENCH_GATEWAY_CPU, default 1), the load generator and the upstream to the
# other (BENCH_LOAD_CPUS, default 0), and the gateway's CPU time per request is read
# from /proc/<pid>/stat before and after each run. It prints ONE table: requests/s and
# latency for the upstream alone, the bare proxy and tollgate, tollgate's throughput
# kept (% of the bare proxy, the figure that matters: both pay the same two hops), and
# the CPU microseconds each spends per request. Also RSS of tollgate idle and after the
# load. Everything it starts is stopped on exit; traffic stays on 127.0.0.1.
#
# Usage: bench/run.sh [--duration SECS] [--concurrency "1 16 64 256"] [--scenarios "chat stream verify"]
#                     [--distributed | --store embedded|distributed|both] [--durability "sync async"]
#                     [--out FILE] [--keep]
#
# Environment (flags win):
#   BENCH_DURATION      seconds per load run (default 5)
#   BENCH_CONCURRENCY   connection counts (default "1 16 64 256")
#   BENCH_SCENARIOS     scenarios to run (default "chat chat4k stream stream20 verify")
#   BENCH_GATEWAY_CPU   the core tollgate and the bare proxy run on (default 1)
#   BENCH_LOAD_CPUS     the cores of the load generator and the upstream (default 0)
#   BENCH_PROXY         0 to skip the nginx baseline (default 1)
#   BENCH_THREADS       load generator threads (default: number of CPUs)
#   BENCH_WARMUP        seconds of warm-up per store before measuring (default 1)
#   BENCH_DURABILITY    ledger durability settings to run each store with, e.g. "sync async"
#                       (default: none set, i.e. the build's default)
#   TOLLGATE_BIN        use this tollgate binary instead of building one
#   LOADGEN_BIN         use this tollgate-loadgen binary instead of building one
#   MOCK_BIN            run the mock upstream from this tollgate binary (default TOLLGATE_BIN)
#   TOLLGATE_REDIS_URL, TOLLGATE_DATABASE_URL   for the distributed store (default: a
#                       private redis-server on a free port, and a fresh database on the
#                       local PostgreSQL, dropped on exit)
#
# Adding a scenario: write a `scenario_NAME` function below (it sets the generator,
# the two URLs, the body and which latency rows to print) and name it in
# BENCH_SCENARIOS. Adding a store: a case in `store_env`.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${BENCH_DURATION:-5}"
CONCURRENCY="${BENCH_CONCURRENCY:-1 16 64 256}"
SCENARIOS="${BENCH_SCENARIOS:-chat chat4k stream stream20 verify}"
WARMUP="${BENCH_WARMUP:-1}"
THREADS="${BENCH_THREADS:-$(nproc 2>/dev/null || echo 2)}"
STORES="embedded"
DURABILITY="${BENCH_DURABILITY:-}"
OUT=""
KEEP=0

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --distributed) STORES="embedded distributed"; shift ;;
    --store)
      case "$2" in
        embedded|distributed) STORES="$2" ;;
        both) STORES="embedded distributed" ;;
        *) die "--store takes embedded, distributed or both" ;;
      esac
      shift 2 ;;
    --durability) DURABILITY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ---------------------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")"
PIDS=()
DROP_DATABASES=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Give each a few seconds to flush, then insist.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for db in ${DROP_DATABASES[@]+"${DROP_DATABASES[@]}"}; do
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
  if [[ $KEEP -eq 1 ]]; then note "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a command in the background with its output in $WORK/NAME.log; sets LAST_PID.
start() {
  local name="$1"; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

stop() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=()
  for p in "${PIDS[@]}"; do [[ "$p" != "$pid" ]] && kept+=("$p"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

# Waits until URL answers (any HTTP status) while PID lives; fails after SECS.
wait_http() {
  local url="$1" pid="$2" secs="$3"
  for _ in $(seq $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  return 1
}

rss_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------

if [[ -z "${TOLLGATE_BIN:-}" || -z "${LOADGEN_BIN:-}" ]]; then
  note "building release binaries (cargo decides whether anything changed)"
  (cd "$ROOT" && cargo build --release --quiet -p tollgate-server -p tollgate-bench) || die "cargo build failed"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  TOLLGATE_BIN="${TOLLGATE_BIN:-$TARGET_DIR/release/tollgate}"
  LOADGEN_BIN="${LOADGEN_BIN:-$TARGET_DIR/release/tollgate-loadgen}"
fi
[[ -x "$TOLLGATE_BIN" ]] || die "no tollgate binary at $TOLLGATE_BIN"
[[ -x "$LOADGEN_BIN" ]] || die "no tollgate-loadgen binary at $LOADGEN_BIN"

if ! command -v wrk >/dev/null; then
  note "installing wrk from Debian"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -qq wrk >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq wrk >/dev/null 2>&1; } \
    || die "could not install wrk (apt-get install wrk)"
fi
command -v curl >/dev/null || die "curl is needed"

# Pinning: the gateway alone on its core, everything else on the other(s).
GW_CPU="${BENCH_GATEWAY_CPU:-1}"
LOAD_CPUS="${BENCH_LOAD_CPUS:-0}"
PIN_GW=()
PIN_LOAD=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  PIN_GW=(taskset -c "$GW_CPU")
  PIN_LOAD=(taskset -c "$LOAD_CPUS")
  PINNING="gateway on CPU $GW_CPU, load generator and upstream on CPU $LOAD_CPUS"
else
  PINNING="not pinned (taskset missing or one CPU)"
fi
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# CPU time (user + system, in clock ticks) of PID and its children's threads: fields
# 14 and 15 of /proc/PID/stat (the command name, field 2, has no spaces here).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    [[ -r "/proc/$p/stat" ]] || continue
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  echo "$total"
}

PROXY="${BENCH_PROXY:-1}"
if [[ "$PROXY" == 1 ]] && ! command -v nginx >/dev/null; then
  note "installing nginx-light from Debian (the bare-proxy baseline)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq nginx-light >/dev/null 2>&1; } \
    || { note "could not install nginx: no bare-proxy baseline"; PROXY=0; }
fi

# ---------------------------------------------------------------------------------------
# Load generators: each prints one flat JSON line; `field LINE NAME` reads a number.
# ---------------------------------------------------------------------------------------

field() { sed -n "s/.*\"$2\":\([-0-9.]*\).*/\1/p" <<<"$1"; }
# The number of failed requests of a result line: non-2xx answers plus socket errors.
failures() { awk -v a="$(field "$1" non2xx)" -v b="$(field "$1" errors)" 'BEGIN { print a + b }'; }

# run_wrk URL CONNECTIONS SECONDS BODY_FILE HEADERS -> {"rps":..,"total_p50":..,...}
run_wrk() {
  local url="$1" conns="$2" secs="$3" body="$4" headers="$5" threads line
  threads=$(( conns < THREADS ? conns : THREADS ))
  line=$(BENCH_BODY_FILE="$body" BENCH_HEADERS="$headers" \
    ${PIN_LOAD[@]+"${PIN_LOAD[@]}"} wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 10s -s "$ROOT/bench/wrk/request.lua" "$url" \
    | sed -n 's/^BENCH_RESULT //p')
  [[ -n "$line" ]] || { echo '{"rps":0,"errors":-1}'; return; }
  # Same shape as the loadgen's line: wrk only knows the total latency.
  sed -e 's/"p50"/"total_p50"/; s/"p90"/"total_p90"/; s/"p99"/"total_p99"/; s/"p999"/"total_p999"/; s/"max"/"total_max"/' <<<"$line"
}

# run_loadgen URL CONNECTIONS SECONDS BODY_FILE HEADERS -> {"rps":..,"ttfb_p50":..,"total_p50":..,...}
run_loadgen() {
  local url="$1" conns="$2" secs="$3" body="$4" headers="$5" threads
  threads=$(( conns < THREADS ? conns : THREADS ))
  local args=("$url" -c "$conns" -d "$secs" -t "$threads")
  [[ -n "$body" ]] && args+=(--body-file "$body")
  while IFS= read -r h; do [[ -n "$h" ]] && args+=(-H "$h"); done <<<"$headers"
  ${PIN_LOAD[@]+"${PIN_LOAD[@]}"} "$LOADGEN_BIN" "${args[@]}" 2>>"$WORK/loadgen.log" || echo '{"rps":0,"errors":-1}'
}

# ---------------------------------------------------------------------------------------
# Scenarios. Each sets:
#   GEN        wrk | loadgen
#   BASE_URL   the upstream alone ("" when there is none to compare with)
#   TG_URL     the same call through tollgate
#   BODY       request body file ("" for none)
#   BASE_HDRS / TG_HDRS   headers, one "Name: value" per line
#   ROWS       latency rows to print: "total" or "ttfb total"
# ---------------------------------------------------------------------------------------

CHAT_BODY="$WORK/chat.json"
CHAT4K_BODY="$WORK/chat4k.json"
STREAM_BODY="$WORK/stream.json"
CACHED_BODY="$WORK/cached.json"
SEMANTIC_STORED_BODY="$WORK/semantic-stored.json"
SEMANTIC_BODY="$WORK/semantic.json"
VERIFY_BODY="$WORK/verify.json"
UPSTREAM_KEY="sk-bench-upstream-key"

scenario_chat() {
  GEN=wrk
  BASE_URL="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  TG_URL="http://127.0.0.1:$TG_PORT/v1/chat/completions"
  BODY="$CHAT_BODY"
  BASE_HDRS="Authorization: Bearer $UPSTREAM_KEY"
  TG_HDRS="Authorization: Bearer $BENCH_KEY"
  ROWS="total"
}

scenario_chat4k() {
  scenario_chat
  BODY="$CHAT4K_BODY"
}

scenario_stream() {
  GEN=loadgen
  BASE_URL="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  TG_URL="http://127.0.0.1:$TG_PORT/v1/chat/completions"
  BODY="$STREAM_BODY"
  BASE_HDRS="Authorization: Bearer $UPSTREAM_KEY"
  TG_HDRS="Authorization: Bearer $BENCH_KEY"
  ROWS="ttfb total"
}

scenario_stream20() {
  scenario_stream
  BASE_HDRS+=$'\n'"x-mock-chunks: 20"
  TG_HDRS+=$'\n'"x-mock-chunks: 20"
}

scenario_chathit() {
  scenario_chat
  BODY="$CACHED_BODY"
  TG_HDRS="Authorization: Bearer $CACHE_KEY"
}

scenario_chatsem() {
  scenario_chat
  BODY="$SEMANTIC_BODY"
  TG_HDRS="Authorization: Bearer $SEMANTIC_KEY"
}

scenario_verify() {
  GEN=wrk
  BASE_URL=""
  TG_URL="http://127.0.0.1:$TG_PORT/api/v1/keys/verify"
  BODY="$VERIFY_BODY"
  BASE_HDRS=""
  TG_HDRS=""
  ROWS="total"
}

for s in $SCENARIOS; do
  declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s' (have: $(declare -F | sed -n 's/.*scenario_//p' | tr '\n' ' '))"
done

printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}' >"$CHAT_BODY"
python3 -c 'import json, sys; text = ("The quarterly report shows that revenue grew by twelve percent. " * 80)[:4096]; sys.stdout.write(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]}))' >"$CHAT4K_BODY"
printf '%s' '{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}' >"$CACHED_BODY"
printf '%s' '{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}' >"$SEMANTIC_STORED_BODY"
printf '%s' '{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"hello, how are you today please?"}]}' >"$SEMANTIC_BODY"
printf '%s' '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}' >"$STREAM_BODY"

# ---------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------


# Sets STORE_ENV to the extra environment of a store, one VAR=value a line; fails (with
# a notice) when its services cannot be had. Runs in the main shell (never in `$(...)`),
# so the processes and the database it creates are known to `cleanup`.
store_env() {
  STORE_ENV=""
  case "$1" in
    embedded) ;;
    distributed)
      # Each run gets its own Redis and database, so runs never see each other's data.
      local redis="${TOLLGATE_REDIS_URL:-}" database="${TOLLGATE_DATABASE_URL:-}"
      if [[ -z "$redis" ]]; then
        command -v redis-server >/dev/null || { note "distributed: no TOLLGATE_REDIS_URL and no redis-server"; return 1; }
        local port; port=$(free_port)
        start "redis-$port" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no
        wait_redis "$port" "$LAST_PID" || { note "distributed: redis-server did not start"; return 1; }
        redis="redis://127.0.0.1:$port"
      fi
      if [[ -z "$database" ]]; then
        command -v psql >/dev/null || { note "distributed: no TOLLGATE_DATABASE_URL and no psql"; return 1; }
        local db="tollgate_bench_$$_${#DROP_DATABASES[@]}"
        psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null 2>&1 \
          || { note "distributed: cannot create a database on the local PostgreSQL (set TOLLGATE_DATABASE_URL)"; return 1; }
        DROP_DATABASES+=("$db")
        database="postgres://postgres@127.0.0.1:5432/$db"
      fi
      STORE_ENV="TOLLGATE_REDIS_URL=$redis"$'\n'"TOLLGATE_DATABASE_URL=$database"
      ;;
    *) die "unknown store '$1'" ;;
  esac
}

wait_redis() {
  local port="$1" pid="$2"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 1
    if command -v redis-cli >/dev/null; then
      redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------

ADMIN_TOKEN="bench-admin-token-$(date +%s)-$$"
MOCK_PORT=$(free_port)
# The mock may come from another build (MOCK_BIN), so two tollgate builds compared in
# one session face the same upstream.
MOCK_BIN="${MOCK_BIN:-$TOLLGATE_BIN}"
start mock ${PIN_LOAD[@]+"${PIN_LOAD[@]}"} "$MOCK_BIN" mock-upstream --port "$MOCK_PORT" --expected-api-key "$UPSTREAM_KEY"
MOCK_PID=$LAST_PID
wait_http "http://127.0.0.1:$MOCK_PORT/health" "$MOCK_PID" 10 || { cat "$WORK/mock.log" >&2; die "the mock upstream did not start"; }

# The bare-proxy baseline: nginx, one worker on the gateway's core, keep-alive to the
# mock, nothing buffered: two HTTP hops and nothing else.
NGX_PIDS=()
if [[ "$PROXY" == 1 ]]; then
  NGX_PORT=$(free_port)
  mkdir -p "$WORK/nginx/logs"
  {
    [[ $(id -u) -eq 0 ]] && echo "user root;"
    echo "worker_processes 1;"
    echo "daemon off;"
    echo "pid $WORK/nginx/nginx.pid;"
    echo "error_log $WORK/nginx/error.log warn;"
    echo "events { worker_connections 8192; }"
    echo "http {"
    echo "  access_log off;"
    for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $WORK/nginx/$t;"; done
    echo "  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 512; }"
    echo "  server {"
    echo "    listen 127.0.0.1:$NGX_PORT;"
    echo "    location / {"
    echo "      proxy_pass http://mock;"
    echo "      proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\";"
    echo "      proxy_buffering off;"
    echo "      proxy_request_buffering off;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$WORK/nginx/nginx.conf"
  start nginx ${PIN_GW[@]+"${PIN_GW[@]}"} nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
  NGX_MASTER=$LAST_PID
  if wait_http "http://127.0.0.1:$NGX_PORT/health" "$NGX_MASTER" 10; then
    NGX_PIDS=("$NGX_MASTER" $(pgrep -P "$NGX_MASTER" || true))
  else
    note "nginx did not start ($(tail -n 2 "$WORK/nginx/error.log" 2>/dev/null | tr '\n' ' ')): no bare-proxy baseline"
    PROXY=0
  fi
fi

# A plan with every control on. Limits are far above what a run can use, so nothing is
# refused, but every one is checked and charged on every request.
BIG=1000000000000
FULL_LIMITS=(
  "requests/minute=$BIG" "requests/hour=$BIG" "requests/day=$BIG" "requests/month=$BIG"
  "total_tokens/minute=$BIG" "total_tokens/day=$BIG" "cost_micros/day=$BIG" "cost_micros/month=$BIG"
)
REQUEST_LIMITS=("requests/minute=$BIG" "requests/month=$BIG")

# Starts tollgate on STORE; sets TG_PID, TG_PORT, BENCH_KEY, LIMITS_ON. Fails when the
# build refuses the store.
start_tollgate() {
  local variant="$1" store="${1%%:*}" durability="" env_lines
  [[ "$variant" == *:* ]] && durability="${variant#*:}"
  store_env "$store" || return 1
  env_lines="$STORE_ENV"
  TG_PORT=$(free_port)
  # The settings go in a config file: `TOLLGATE_LISTEN` & co. are ignored by builds whose
  # env filter compares the upper-case variable name with lower-case keys.
  local config="$WORK/tollgate-$store.toml" envs=() l
  {
    echo "listen = \"127.0.0.1:$TG_PORT\""
    echo "data_dir = \"$WORK/data-$store$durability\""
    echo "admin_token = \"$ADMIN_TOKEN\""
    [[ "$store" != embedded ]] && echo "store = \"$store\""
    [[ -n "$durability" ]] && echo "durability = \"$durability\""
    echo "[upstream]"
    echo "base_url = \"http://127.0.0.1:$MOCK_PORT/v1\""
    echo "api_key = \"$UPSTREAM_KEY\""
    echo "forward_headers = [\"x-mock-chunks\"]"
    if [[ " $SCENARIOS " == *" chatsem "* ]]; then
      echo "[cache]"
      echo "semantic_embedding_model = \"mock-semantic-embedding\""
    fi
  } >"$config"
  while IFS= read -r l; do
    [[ -n "$l" ]] || continue
    envs+=("$l")
    # Also the lower-case spelling, which the same builds do read.
    local name="${l%%=*}"
    envs+=("TOLLGATE_$(tr '[:upper:]' '[:lower:]' <<<"${name#TOLLGATE_}")=${l#*=}")
  done <<<"$env_lines"
  start "tollgate-$store$durability" ${PIN_GW[@]+"${PIN_GW[@]}"} env ${envs[@]+"${envs[@]}"} "$TOLLGATE_BIN" serve --config "$config"
  TG_PID=$LAST_PID
  if ! wait_http "http://127.0.0.1:$TG_PORT/health" "$TG_PID" 60; then
    local said; said=$(grep -v '^\s*$' "$WORK/tollgate-$store$durability.log" | tail -n 2 | tr '\n' ' ')
    stop "$TG_PID"
    note "store '$variant': tollgate did not start, skipped. It said: ${said:-nothing}"
    return 1
  fi
  export TOLLGATE_URL="http://127.0.0.1:$TG_PORT" TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN"
  "$TOLLGATE_BIN" projects create bench >/dev/null || die "projects create failed"
  if "$TOLLGATE_BIN" plans set bench $(printf -- '--limit %s ' "${FULL_LIMITS[@]}") >/dev/null 2>"$WORK/plan.err"; then
    LIMITS_ON="${FULL_LIMITS[*]//=$BIG/}"
  else
    note "this build refused token/cost limits ($(tr '\n' ' ' <"$WORK/plan.err")); requests limits only"
    "$TOLLGATE_BIN" plans set bench $(printf -- '--limit %s ' "${REQUEST_LIMITS[@]}") >/dev/null || die "plans set failed"
    LIMITS_ON="${REQUEST_LIMITS[*]//=$BIG/}"
  fi
  BENCH_KEY=$("$TOLLGATE_BIN" keys create --project bench --plan bench | sed -n 's/.*"key": *"\(tg_[^"]*\)".*/\1/p')
  [[ -n "$BENCH_KEY" ]] || die "keys create printed no key"
  printf '{"key":"%s","cost":1}' "$BENCH_KEY" >"$VERIFY_BODY"
  # A request that must pass, or nothing below means anything.
  local code
  code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" \
    -H 'Content-Type: application/json' --data-binary @"$CHAT_BODY" "http://127.0.0.1:$TG_PORT/v1/chat/completions")
  [[ "$code" == 200 ]] || { cat "$WORK/check.json" >&2; die "a chat completion through tollgate answered $code"; }
  # The cached scenario's project (its own, so the other scenarios pay nothing for the
  # cache), with the one entry it asks for stored.
  CACHE_KEY=""
  if [[ " $SCENARIOS " == *" chathit "* ]]; then
    "$TOLLGATE_BIN" projects create bench-cache >/dev/null || die "projects create bench-cache failed"
    code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -X PATCH -H "Authorization: Bearer $ADMIN_TOKEN" \
      -H 'Content-Type: application/json' --data '{"cache":{"enabled":true,"ttl_secs":86400}}' \
      "http://127.0.0.1:$TG_PORT/api/v1/projects/bench-cache")
    [[ "$code" == 200 ]] || { cat "$WORK/check.json" >&2; die "this build has no response cache (PATCH cache answered $code)"; }
    CACHE_KEY=$("$TOLLGATE_BIN" keys create --project bench-cache --plan bench | sed -n 's/.*"key": *"\(tg_[^"]*\)".*/\1/p')
    [[ -n "$CACHE_KEY" ]] || die "keys create printed no key"
    local outcome=""
    for _ in $(seq 50); do
      outcome=$(curl -s -o /dev/null -D - -H "Authorization: Bearer $CACHE_KEY" -H 'Content-Type: application/json' \
        --data-binary @"$CACHED_BODY" "http://127.0.0.1:$TG_PORT/v1/chat/completions" \
        | tr -d '\r' | sed -n 's/^x-tollgate-cache: //Ip')
      [[ "$outcome" == hit ]] && break
      sleep 0.1
    done
    [[ "$outcome" == hit ]] || die "the cached request is not a hit (x-tollgate-cache: ${outcome:-none})"
  fi
  # The semantic scenario's project: the question stored, its paraphrase a semantic hit.
  SEMANTIC_KEY=""
  if [[ " $SCENARIOS " == *" chatsem "* ]]; then
    "$TOLLGATE_BIN" projects create bench-semantic >/dev/null || die "projects create bench-semantic failed"
    code=$(curl -s -o "$WORK/check.json" -w '%{http_code}' -X PATCH -H "Authorization: Bearer $ADMIN_TOKEN" \
      -H 'Content-Type: application/json' \
      --data '{"cache":{"enabled":true,"ttl_secs":86400,"semantic":true,"semantic_threshold":0.9}}' \
      "http://127.0.0.1:$TG_PORT/api/v1/projects/bench-semantic")
    [[ "$code" == 200 ]] || { cat "$WORK/check.json" >&2; die "this build has no semantic cache (PATCH cache answered $code)"; }
    SEMANTIC_KEY=$("$TOLLGATE_BIN" keys create --project bench-semantic --plan bench | sed -n 's/.*"key": *"\(tg_[^"]*\)".*/\1/p')
    [[ -n "$SEMANTIC_KEY" ]] || die "keys create printed no key"
    curl -s -o /dev/null -H "Authorization: Bearer $SEMANTIC_KEY" -H 'Content-Type: application/json' \
      --data-binary @"$SEMANTIC_STORED_BODY" "http://127.0.0.1:$TG_PORT/v1/chat/completions"
    local kind=""
    for _ in $(seq 50); do
      kind=$(curl -s -o /dev/null -D - -H "Authorization: Bearer $SEMANTIC_KEY" -H 'Content-Type: application/json' \
        --data-binary @"$SEMANTIC_BODY" "http://127.0.0.1:$TG_PORT/v1/chat/completions" \
        | tr -d '\r' | sed -n 's/^x-tollgate-cache-kind: //Ip')
      [[ "$kind" == semantic ]] && break
      sleep 0.1
    done
    [[ "$kind" == semantic ]] || die "the paraphrase is not a semantic hit (x-tollgate-cache-kind: ${kind:-none})"
  fi
}

# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------

RESULTS="$WORK/results.tsv"   # store scenario conc row base_json proxy_json tg_json
: >"$RESULTS"
RSS_LINES=()

measure() {
  local gen="$1" url="$2" conns="$3" secs="$4" body="$5" headers="$6"
  "run_$gen" "$url" "$conns" "$secs" "$body" "$headers"
}

# measure_cpu PIDS GEN URL ... -> the result line with "cpu_us": CPU microseconds the
# processes PIDS (space-separated) spent per request during the run.
measure_cpu() {
  local pids="$1"; shift
  local before after line requests
  before=$(cpu_ticks $pids)
  line=$(measure "$@")
  after=$(cpu_ticks $pids)
  requests=$(field "$line" requests)
  local cpu
  cpu=$(awk -v d="$((after - before))" -v hz="$CLK_TCK" -v n="${requests:-0}" 'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / hz / n; else print 0 }')
  echo "${line%\}},\"cpu_us\":$cpu}"
}

VARIANTS=""
for store in $STORES; do
  if [[ -z "$DURABILITY" ]]; then VARIANTS+=" $store"; else for d in $DURABILITY; do VARIANTS+=" $store:$d"; done; fi
done

for store in $VARIANTS; do
  if ! start_tollgate "$store"; then
    RSS_LINES+=("$store: not run (see above)")
    continue
  fi
  sleep 1
  rss_idle=$(rss_kb "$TG_PID" VmRSS)
  note "store $store: tollgate pid $TG_PID on :$TG_PORT, mock on :$MOCK_PORT, limits: $LIMITS_ON"
  # Warm-up: fill tollgate's upstream pool and the first counters.
  scenario_chat
  measure wrk "$TG_URL" "$(tr ' ' '\n' <<<"$CONCURRENCY" | sort -n | tail -1)" "$WARMUP" "$BODY" "$TG_HDRS" >/dev/null
  for s in $SCENARIOS; do
    "scenario_$s"
    for c in $CONCURRENCY; do
      note "$store / $s / c=$c"
      base='{}'
      proxy='{}'
      if [[ -n "$BASE_URL" ]]; then
        base=$(measure "$GEN" "$BASE_URL" "$c" "$DURATION" "$BODY" "$BASE_HDRS")
        if [[ "$PROXY" == 1 ]]; then
          proxy=$(measure_cpu "${NGX_PIDS[*]}" "$GEN" "${BASE_URL/:$MOCK_PORT\//:$NGX_PORT/}" "$c" "$DURATION" "$BODY" "$BASE_HDRS")
        fi
      fi
      tg=$(measure_cpu "$TG_PID" "$GEN" "$TG_URL" "$c" "$DURATION" "$BODY" "$TG_HDRS")
      for row in $ROWS; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$store" "$s" "$c" "$row" "$base" "$proxy" "$tg" >>"$RESULTS"
      done
    done
  done
  rss_after=$(rss_kb "$TG_PID" VmRSS)
  rss_peak=$(rss_kb "$TG_PID" VmHWM)
  RSS_LINES+=("$store: idle $((rss_idle / 1024)) MB, after load $((rss_after / 1024)) MB, peak $((rss_peak / 1024)) MB")
  stop "$TG_PID"
done

# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

ms() { awk -v us="$1" 'BEGIN { if (us == "") print "-"; else printf "%.3f", us / 1000 }'; }

table() {
  echo "| store | scenario | conc | upstream rps | bare proxy rps | proxy µs CPU/req | tollgate rps | p50 ms | p99 ms | p99.9 ms | tollgate µs CPU/req | kept % of proxy | kept % of upstream | +p50 ms vs proxy | errors u/p/t |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  while IFS=$'\t' read -r store s c row base proxy tg; do
    local name="$s"
    [[ "$s" == stream* ]] && name="$s $row"
    local b_rps p_rps p_cpu p50 t_rps t50 t99 t999 t_cpu kept_p kept_u d50 b_err p_err t_err
    t_rps=$(field "$tg" rps); t50=$(field "$tg" "${row}_p50"); t99=$(field "$tg" "${row}_p99"); t999=$(field "$tg" "${row}_p999")
    t_cpu=$(field "$tg" cpu_us); t_err=$(failures "$tg")
    b_rps=$(field "$base" rps); b_err=$( [[ "$base" == '{}' ]] && echo - || failures "$base")
    p_rps=$(field "$proxy" rps); p_cpu=$(field "$proxy" cpu_us); p50=$(field "$proxy" "${row}_p50")
    p_err=$( [[ "$proxy" == '{}' ]] && echo - || failures "$proxy")
    kept_p=$(awk -v t="${t_rps:-0}" -v b="${p_rps:-0}" 'BEGIN { if (b > 0) printf "%.1f", 100 * t / b; else print "-" }')
    kept_u=$(awk -v t="${t_rps:-0}" -v b="${b_rps:-0}" 'BEGIN { if (b > 0) printf "%.1f", 100 * t / b; else print "-" }')
    d50=$(awk -v t="${t50:-0}" -v b="$p50" 'BEGIN { if (b == "") print "-"; else printf "%+.3f", (t - b) / 1000 }')
    num() { awk -v x="$1" 'BEGIN { if (x == "") print "-"; else printf "%.0f", x }'; }
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s/%s/%s |\n' \
      "$store" "$name" "$c" "$(num "$b_rps")" "$(num "$p_rps")" "${p_cpu:--}" \
      "$(num "$t_rps")" "$(ms "$t50")" "$(ms "$t99")" "$(ms "$t999")" "${t_cpu:--}" "$kept_p" "$kept_u" "$d50" \
      "$b_err" "$p_err" "$t_err"
  done <"$RESULTS"
}

report() {
  local cpu mem commit
  cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [[ -n "$(cd "$ROOT" && git status --porcelain -- crates 2>/dev/null)" ]]; then commit="$commit+dirty"; fi
  echo
  echo "tollgate bench: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit, $(nproc) CPUs ($cpu), $mem"
  echo "load: ${DURATION}s per run, generator threads $THREADS; chat/verify with wrk, stream with tollgate-loadgen; loopback; $PINNING"
  echo "limits on: ${LIMITS_ON:-none}; load average before the table: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  table
  echo
  for l in "${RSS_LINES[@]}"; do echo "RSS $l"; done
  echo "errors u/p/t = non-2xx + socket errors (upstream alone / bare proxy / tollgate); kept % of proxy = tollgate rps / nginx rps on the same core; µs CPU/req from /proc/<pid>/stat over the run"
}

if [[ -n "$OUT" ]]; then report | tee "$OUT"; else report; fi
