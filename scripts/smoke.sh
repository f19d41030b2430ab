#!/usr/bin/env bash
# The README's first command, run as a newcomer would, as a smoke test (.ci/run calls
# it after the test suite). It takes the command text verbatim from the README (the
# sh block after the `<!-- run-command -->` marker) and the mock upstream's command
# from the "Five minutes" section (after `<!-- mock-command -->`), runs both from the
# repository root with a temporary data directory and free ports (given through the
# environment, as the README documents), waits for /health, creates a project and a
# key with the CLI, makes one proxied chat completion with curl, and stops the
# gateway with SIGTERM. Any failed step fails the script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

say() { printf '[smoke] %s\n' "$*"; }
die() { printf '[smoke] FAILED: %s\n' "$*" >&2; exit 1; }

# The first ```sh block after a marker line, joined into one command.
block_after() {
    awk -v marker="$1" '
        index($0, marker) { found = 1; next }
        found && /^```sh/ { inside = 1; next }
        inside && /^```/ { exit }
        inside { print }
    ' README.md
}

RUN_COMMAND="$(block_after '<!-- run-command -->')"
MOCK_COMMAND="$(block_after '<!-- mock-command -->' | head -n 1)"
[ -n "$RUN_COMMAND" ] || die "README.md has no run command after <!-- run-command -->"
[ -n "$MOCK_COMMAND" ] || die "README.md has no mock command after <!-- mock-command -->"
say "run command: $RUN_COMMAND"
say "mock command: $MOCK_COMMAND"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d)"
MOCK_PORT="$(free_port)"
GATEWAY_PORT="$(free_port)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # url, seconds, log, pid of the command that should answer
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ! kill -0 "$4" 2>/dev/null; then
            tail -n 40 "$3" >&2 || true
            die "the command exited before $1 answered"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 40 "$3" >&2 || true
            die "$1 did not answer within $2 s"
        fi
        sleep 0.5
    done
}

# The mock's command names port 9000; run it on a free port instead.
MOCK_COMMAND="${MOCK_COMMAND/--port 9000/--port $MOCK_PORT}"
setsid bash -c "$MOCK_COMMAND" >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
pids+=("$MOCK_PID")
# A cold release build takes 10 to 15 minutes on two idle cores, and over 30 when the
# machine is busy; the wait fails at once if cargo exits (a failed build).
wait_for "http://127.0.0.1:$MOCK_PORT/v1/models" 3600 "$WORK/mock.log" "$MOCK_PID"
say "mock upstream answers on port $MOCK_PORT"

export TOLLGATE_ADMIN_TOKEN="smoke-admin-token-0123456789"
export TOLLGATE_URL="http://127.0.0.1:$GATEWAY_PORT"
(
    export OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1"
    export TOLLGATE_LISTEN="127.0.0.1:$GATEWAY_PORT"
    export TOLLGATE_DATA_DIR="$WORK/data"
    exec setsid bash -c "$RUN_COMMAND"
) >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
pids+=("$GATEWAY_PID")
wait_for "$TOLLGATE_URL/health" 1800 "$WORK/gateway.log" "$GATEWAY_PID"
say "gateway answers /health on port $GATEWAY_PORT"

TOLLGATE="$ROOT/target/release/tollgate"
[ -x "$TOLLGATE" ] || die "no binary at target/release/tollgate after the run command"
"$TOLLGATE" projects create acme >"$WORK/project.json" || die "tollgate projects create"
"$TOLLGATE" keys create --project acme --plan free >"$WORK/key.json" || die "tollgate keys create"
KEY="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/key.json")"
[ -n "$KEY" ] || die "no key in the CLI's answer"
say "project and key created with the CLI"

STATUS="$(curl -sS -o "$WORK/chat.json" -w '%{http_code}' "$TOLLGATE_URL/v1/chat/completions" \
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}')"
[ "$STATUS" = "200" ] || { cat "$WORK/chat.json" >&2; die "chat completion answered $STATUS"; }
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); assert r["choices"][0]["message"]["content"], r' \
    "$WORK/chat.json" || die "chat completion has no content"
say "one proxied chat completion: 200"

# SIGTERM to the server process itself (cargo run execs nothing: find the child).
SERVER_PID="$(pgrep -f "target/release/tollgate serve" -n -s "$(ps -o sid= -p "$GATEWAY_PID" | tr -d ' ')" || true)"
[ -n "$SERVER_PID" ] || die "cannot find the gateway process"
kill -TERM "$SERVER_PID"
for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVER_PID" 2>/dev/null && die "the gateway did not stop on SIGTERM"
grep -q "shutdown complete" "$WORK/gateway.log" || { tail -n 20 "$WORK/gateway.log" >&2; die "no clean shutdown"; }
say "gateway stopped cleanly: the README's run command works"
