#!/usr/bin/env bash
# Soak test (not part of CI): a release tollgate in front of the mock upstream under
# moderate load for DURATION seconds (default 600), then a short report:
#   - resident memory of the gateway at start (before load), after warm-up, at the end;
#   - requests, non-2xx answers and socket errors as wrk saw them;
#   - ledger completeness: the gateway is stopped (SIGTERM) and started again, which
#     rebuilds its counters from the ledger alone; the key's counted requests must
#     then cover every 2xx wrk received (none lost), with at most CONNECTIONS more
#     (requests still in flight when wrk stopped, answered after it stopped reading);
#     and the rebuilt counter must equal the live counter before the restart.
#
# Usage: scripts/soak.sh                 # ten minutes
#        DURATION=20 scripts/soak.sh     # a quick run
# Knobs: DURATION, CONNECTIONS (8), THREADS (2), MOCK_LATENCY_MS (2: each connection
# waits for the mock, which keeps the load moderate), PORT_BASE (19470), KEEP=1 keeps
# the work directory (logs, data, wrk output).
# Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${DURATION:-600}"
CONNECTIONS="${CONNECTIONS:-8}"
THREADS="${THREADS:-2}"
MOCK_LATENCY_MS="${MOCK_LATENCY_MS:-2}"
PORT_BASE="${PORT_BASE:-19470}"
MOCK_PORT="$PORT_BASE"
GATEWAY_PORT="$((PORT_BASE + 1))"
GATEWAY="http://127.0.0.1:${GATEWAY_PORT}"
ADMIN_TOKEN="soak-admin-token-$(date +%s)-$$"
PROVIDER_KEY="sk-soak-provider-key"

say() { printf '[soak] %s\n' "$*"; }
die() { printf '[soak] ERROR: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d /tmp/tollgate-soak.XXXXXX)"
MOCK_PID=""
GATEWAY_PID=""
SAMPLER_PID=""
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in "$SAMPLER_PID" "$GATEWAY_PID" "$MOCK_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ "${KEEP:-0}" = "1" ]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for tool in curl jq; do
    command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null || die "$tool is needed"
done
if ! command -v wrk >/dev/null; then
    say "installing wrk"
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || die "wrk is needed (apt-get install wrk)"
fi

say "building the release binary"
cargo build --release -q -p tollgate-server
BIN="target/release/tollgate"

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Polls a URL until it answers 200, for at most 60 s.
wait_ready() {
    local url="$1" deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$url did not become ready; see $WORK"
        sleep 0.1
    done
}

start_gateway() {
    TOLLGATE_LISTEN="127.0.0.1:${GATEWAY_PORT}" \
    TOLLGATE_DATA_DIR="$WORK/data" \
    TOLLGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    TOLLGATE_SHUTDOWN_GRACE_SECS=10 \
    OPENAI_BASE_URL="http://127.0.0.1:${MOCK_PORT}/v1" \
    OPENAI_API_KEY="$PROVIDER_KEY" \
    RUST_LOG="${RUST_LOG:-warn}" \
        "$BIN" serve >>"$WORK/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    wait_ready "$GATEWAY/health"
}

stop_gateway() {
    kill -TERM "$GATEWAY_PID"
    wait "$GATEWAY_PID" || die "the gateway did not shut down cleanly; see $WORK/gateway.log"
    GATEWAY_PID=""
}

admin() {
    local method="$1" path="$2" body="${3:-}"
    if [ -n "$body" ]; then
        curl -fsS -X "$method" "$GATEWAY$path" -H "Authorization: Bearer $ADMIN_TOKEN" \
            -H 'Content-Type: application/json' -d "$body"
    else
        curl -fsS -X "$method" "$GATEWAY$path" -H "Authorization: Bearer $ADMIN_TOKEN"
    fi
}

"$BIN" mock-upstream --port "$MOCK_PORT" --latency-ms "$MOCK_LATENCY_MS" \
    --expected-api-key "$PROVIDER_KEY" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
wait_ready "http://127.0.0.1:${MOCK_PORT}/health"
start_gateway

# A plan whose limits the load never reaches, so every answer should be a 200.
admin PUT /api/v1/plans/soak '{"description":"soak test","limits":[
    {"metric":"requests","window":"minute","limit":1000000000},
    {"metric":"requests","window":"month","limit":1000000000000}]}' >/dev/null
admin POST /api/v1/projects '{"id":"soak"}' >/dev/null
created="$(admin POST /api/v1/keys '{"project":"soak","plan":"soak","name":"soak"}')"
KEY="$(jq -r .key <<<"$created")"
KEY_ID="$(jq -r .id <<<"$created")"

cat >"$WORK/chat.lua" <<EOF
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer ${KEY}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello from the soak test"}],"max_tokens":32}'
EOF

month_used() {
    admin GET "/api/v1/usage/status?key=$KEY_ID" |
        jq -r '[.limits[] | select(.metric == "requests" and .window == "month") | .used][0]'
}

RSS_START="$(rss_kb "$GATEWAY_PID")"
: >"$WORK/rss.txt"
(
    while kill -0 "$GATEWAY_PID" 2>/dev/null; do
        printf '%s %s\n' "$SECONDS" "$(rss_kb "$GATEWAY_PID" 2>/dev/null || echo 0)" >>"$WORK/rss.txt"
        sleep 5
    done
) &
SAMPLER_PID=$!

say "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s POST /v1/chat/completions (mock latency ${MOCK_LATENCY_MS} ms)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/chat.lua" \
    "$GATEWAY/v1/chat/completions" >"$WORK/wrk.txt" 2>&1 || die "wrk failed: $(cat "$WORK/wrk.txt")"
RSS_END="$(rss_kb "$GATEWAY_PID")"
kill -TERM "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
# The first sample after 10 s of load: memory once pools, caches and buffers are warm.
RSS_WARM="$(awk 'NR == 3 { print $2 }' "$WORK/rss.txt")"
RSS_PEAK="$(awk -v end="$RSS_END" 'BEGIN { m = end } $2 > m { m = $2 } END { print m }' "$WORK/rss.txt")"

TOTAL="$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")"
NON2XX="$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' "$WORK/wrk.txt")"
NON2XX="${NON2XX:-0}"
SOCKET_ERRORS="$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$WORK/wrk.txt")"
SOCKET_ERRORS="${SOCKET_ERRORS:-0}"
OK=$((TOTAL - NON2XX))
RPS="$(awk '/Requests\/sec/ { print $2 }' "$WORK/wrk.txt")"
P50="$(awk '$1 == "50%" { print $2 }' "$WORK/wrk.txt")"
P99="$(awk '$1 == "99%" { print $2 }' "$WORK/wrk.txt")"

LIVE_USED="$(month_used)"
say "stopping the gateway (SIGTERM) and starting it again: counters are rebuilt from the ledger"
stop_gateway
start_gateway
LEDGER_COUNTED="$(month_used)"
LEDGER_REQUESTS=""
PAGED_MISMATCH=""
if [ "$LEDGER_COUNTED" -le 200000 ]; then
    # Small enough to page through: count the ledger's rows for the key directly.
    cursor=""
    counted=0
    rows=0
    while :; do
        page="$(admin GET "/api/v1/usage?key=$KEY_ID&limit=1000${cursor:+&cursor=$cursor}")"
        rows=$((rows + $(jq '.data | length' <<<"$page")))
        counted=$((counted + $(jq '[.data[] | select(.counted and .status >= 200 and .status < 300)] | length' <<<"$page")))
        cursor="$(jq -r '.next_cursor // empty' <<<"$page")"
        [ -n "$cursor" ] || break
    done
    LEDGER_REQUESTS="$counted counted 2xx rows of $rows"
    if [ "$counted" != "$LEDGER_COUNTED" ]; then
        PAGED_MISMATCH="paging the ledger found $counted counted 2xx rows, the rebuilt counter says $LEDGER_COUNTED"
    fi
fi
stop_gateway
ERRORS_LOGGED="$(grep -c '"level":"ERROR"\| ERROR ' "$WORK/gateway.log" || true)"

verdict=PASS
notes=()
if [ "$LEDGER_COUNTED" -lt "$OK" ]; then
    verdict=FAIL
    notes+=("LOST: wrk got $OK 2xx answers but the ledger counts only $LEDGER_COUNTED")
fi
if [ "$((LEDGER_COUNTED - OK))" -gt "$CONNECTIONS" ]; then
    verdict=FAIL
    notes+=("the ledger counts $((LEDGER_COUNTED - OK)) more than wrk saw, more than the $CONNECTIONS in flight")
fi
if [ "$LIVE_USED" != "$LEDGER_COUNTED" ]; then
    verdict=FAIL
    notes+=("the live counter ($LIVE_USED) differs from the one rebuilt from the ledger ($LEDGER_COUNTED)")
fi
if [ -n "$PAGED_MISMATCH" ]; then
    verdict=FAIL
    notes+=("$PAGED_MISMATCH")
fi
if [ "$NON2XX" -ne 0 ] || [ "$SOCKET_ERRORS" -ne 0 ]; then
    verdict=FAIL
    notes+=("$NON2XX non-2xx answers and $SOCKET_ERRORS socket errors under moderate load")
fi

cat <<EOF

==== tollgate soak report ====
duration            ${DURATION} s, wrk -t${THREADS} -c${CONNECTIONS}, mock latency ${MOCK_LATENCY_MS} ms
requests            ${TOTAL} (${RPS} req/s), p50 ${P50}, p99 ${P99}
2xx / non-2xx       ${OK} / ${NON2XX}   socket errors: ${SOCKET_ERRORS}
RSS (KiB)           start ${RSS_START}, after warm-up ${RSS_WARM:-n/a}, end ${RSS_END}, peak ${RSS_PEAK}
ledger (rebuilt)    ${LEDGER_COUNTED} counted requests for the key; live counter before restart ${LIVE_USED}
ledger (paged)      ${LEDGER_REQUESTS:-skipped (too many rows to page)}
ledger - 2xx        $((LEDGER_COUNTED - OK)) (requests in flight when wrk stopped; at most ${CONNECTIONS})
errors logged       ${ERRORS_LOGGED}
verdict             ${verdict}
EOF
for note in "${notes[@]}"; do
    echo "  - $note"
done
[ "$verdict" = PASS ]
