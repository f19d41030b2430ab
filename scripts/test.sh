#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine (Debian bookworm, root,
# Rust + cargo-nextest, python3 with pip). Each set-up step is idempotent and
# prints one line, so running this twice is cheap and the log stays readable.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
export TOLLGATE_TEST_REDIS_URL="${TOLLGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TOLLGATE_TEST_DATABASE_URL="${TOLLGATE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tollgate_test}"
export TOLLGATE_TEST_NATS_URL="${TOLLGATE_TEST_NATS_URL:-nats://127.0.0.1:4222}"

say() { printf '[test.sh] %s\n' "$*"; }
warn() { printf '[test.sh] WARNING: %s\n' "$*" >&2; }

# Root runs commands directly; anyone else needs sudo for apt and services.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    as_root apt-get install -y -qq "$@" >/dev/null
}

# --- Python SDK (the compatibility tests drive tollgate with it) -----------
setup_openai() {
    if python3 -c 'import openai' 2>/dev/null; then
        say "python openai: present"
        return 0
    fi
    # Debian's system python is "externally managed" (PEP 668) and refuses a
    # plain pip install; on a throwaway test machine overriding that is fine.
    if python3 -m pip install --quiet openai 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages openai; then
        python3 -c 'import openai' 2>/dev/null || return 1
        say "python openai: installed"
        return 0
    fi
    return 1
}
if ! setup_openai; then
    echo "[test.sh] ERROR: the Python 'openai' package is not importable and could not be installed." >&2
    echo "[test.sh]        Install it with: python3 -m pip install openai" >&2
    exit 1
fi

# --- FastAPI (the verify middleware example, docs/examples/middleware/fastapi) -
setup_fastapi() {
    if python3 -c 'import fastapi, httpx' 2>/dev/null; then
        say "python fastapi: present"
        return 0
    fi
    python3 -m pip install --quiet fastapi httpx 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages fastapi httpx || return 1
    python3 -c 'import fastapi, httpx' 2>/dev/null || return 1
    say "python fastapi: installed"
}
if ! setup_fastapi; then
    echo "[test.sh] ERROR: FastAPI and httpx could not be installed (python3 -m pip install fastapi httpx)." >&2
    exit 1
fi

# --- schemathesis (fuzzes the OpenAPI document against a running gateway) ----
setup_schemathesis() {
    if command -v schemathesis >/dev/null 2>&1; then
        say "schemathesis: present"
        return 0
    fi
    python3 -m pip install --quiet schemathesis 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages schemathesis || return 1
    # pip may put the script where PATH does not look (~/.local/bin for a user install).
    if ! command -v schemathesis >/dev/null 2>&1; then
        local bin
        bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        [ -x "$bin/schemathesis" ] && export PATH="$bin:$PATH"
        [ -x "$HOME/.local/bin/schemathesis" ] && export PATH="$HOME/.local/bin:$PATH"
    fi
    command -v schemathesis >/dev/null 2>&1 || return 1
    say "schemathesis: installed"
}
if ! setup_schemathesis; then
    echo "[test.sh] ERROR: schemathesis could not be installed (python3 -m pip install schemathesis)." >&2
    exit 1
fi

# --- Alerts: the Standard Webhooks reference verifier and an SMTP sink ---------
# The alerts tests check webhook signatures with the official `standardwebhooks`
# library and receive e-mail with a real `aiosmtpd` sink; without them they fail.
setup_alerts_python() {
    if python3 -c 'import standardwebhooks, aiosmtpd' 2>/dev/null; then
        say "python standardwebhooks, aiosmtpd: present"
        return 0
    fi
    python3 -m pip install --quiet standardwebhooks aiosmtpd 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages standardwebhooks aiosmtpd || return 1
    python3 -c 'import standardwebhooks, aiosmtpd' 2>/dev/null || return 1
    say "python standardwebhooks, aiosmtpd: installed"
}
if ! setup_alerts_python; then
    echo "[test.sh] ERROR: standardwebhooks and aiosmtpd could not be installed (python3 -m pip install standardwebhooks aiosmtpd)." >&2
    exit 1
fi

# --- Express (the verify middleware example, docs/examples/middleware/express) -
setup_express() {
    local dir=docs/examples/middleware/express
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm || return 1
    fi
    if [ -d "$dir/node_modules/express" ]; then
        say "npm express: present"
        return 0
    fi
    (cd "$dir" && npm ci --no-audit --no-fund --silent) || return 1
    say "npm express: installed"
}
if ! setup_express; then
    echo "[test.sh] ERROR: Express could not be installed (cd docs/examples/middleware/express && npm ci)." >&2
    exit 1
fi

# --- Chromium and playwright-core (the dashboard's browser test, tests/browser) ---
# Debian's chromium, never a browser download: playwright-core has no install script,
# and the test starts /usr/bin/chromium itself.
setup_dashboard_browser() {
    local dir=tests/browser
    if ! command -v chromium >/dev/null; then
        apt_install chromium || return 1
    fi
    if [ ! -d "$dir/node_modules/playwright-core" ]; then
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent) || return 1
    fi
    command -v chromium >/dev/null && [ -d "$dir/node_modules/playwright-core" ] || return 1
    say "chromium, npm playwright-core: present"
}
if ! setup_dashboard_browser; then
    echo "[test.sh] ERROR: chromium or playwright-core could not be installed (apt-get install chromium; cd tests/browser && npm ci)." >&2
    exit 1
fi

# --- Go, Ruby and curl (docs/examples/api runs in every language) -----------
setup_example_toolchains() {
    local missing=()
    command -v go >/dev/null || missing+=(golang-go)
    command -v ruby >/dev/null || missing+=(ruby)
    command -v curl >/dev/null || missing+=(curl)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}" || return 1
    fi
    command -v go >/dev/null && command -v ruby >/dev/null && command -v curl >/dev/null || return 1
    say "go, ruby, curl: present"
}
if ! setup_example_toolchains; then
    echo "[test.sh] ERROR: go, ruby or curl is missing and could not be installed (Debian: golang-go ruby curl)." >&2
    exit 1
fi

# --- promtool (the /metrics test checks the scrape with Prometheus's linter) ---
setup_promtool() {
    if command -v promtool >/dev/null; then
        say "promtool: present"
        return 0
    fi
    apt_install prometheus || return 1
    command -v promtool >/dev/null || return 1
    say "promtool: installed"
}
if ! setup_promtool; then
    echo "[test.sh] ERROR: promtool is missing and could not be installed (Debian package 'prometheus')." >&2
    exit 1
fi

# --- Redis (distributed backend tests) ---------------------------------------
setup_redis() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        apt_install redis-server || return 1
    fi
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        say "redis: running"
        return 0
    fi
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || return 1
    for _ in $(seq 50); do
        if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
            say "redis: started"
            return 0
        fi
        sleep 0.1
    done
    return 1
}
setup_redis || warn "redis is not available; tests that need ${TOLLGATE_TEST_REDIS_URL} will fail or skip"

# --- PostgreSQL (distributed backend tests) ----------------------------------
pg_version() {
    # Newest installed major version, e.g. "15".
    ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1
}

pg_psql() {
    # Local socket as the postgres superuser; works with Debian's default
    # peer authentication, unlike TCP which wants a password.
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"
    else
        psql -X -q -v ON_ERROR_STOP=1 -U postgres -h 127.0.0.1 "$@"
    fi
}

setup_postgres() {
    if ! command -v pg_isready >/dev/null || [ -z "$(pg_version)" ]; then
        apt_install postgresql || return 1
    fi
    if ! pg_isready -q; then
        local version
        version="$(pg_version)"
        if [ -z "$version" ]; then
            # Installed without the default cluster (create_main_cluster=false).
            version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
            as_root pg_createcluster "$version" main >/dev/null || return 1
        fi
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
        for _ in $(seq 50); do
            pg_isready -q && break
            sleep 0.1
        done
        pg_isready -q || return 1
    fi
    if [ "$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'tollgate_test'")" != "1" ]; then
        if [ "$(id -u)" -eq 0 ]; then
            runuser -u postgres -- createdb tollgate_test || return 1
        else
            createdb -U postgres -h 127.0.0.1 tollgate_test || return 1
        fi
    fi
    # The test URL has no password. Debian's pg_hba.conf asks for one over
    # TCP, so allow the postgres user into the test database from loopback.
    if ! psql -X -q "$TOLLGATE_TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
        local hba
        hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
        [ -f "$hba" ] || return 1
        if ! grep -q '^host tollgate_test postgres 127.0.0.1/32 trust' "$hba"; then
            # First matching line wins, so the rule goes on top.
            as_root sed -i '1i host tollgate_test postgres 127.0.0.1/32 trust' "$hba" || return 1
            pg_psql -c 'SELECT pg_reload_conf()' >/dev/null || return 1
            sleep 0.2
        fi
        psql -X -q "$TOLLGATE_TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1 || return 1
    fi
    say "postgres: running, database tollgate_test ready"
}
setup_postgres || warn "postgres is not available; tests that need ${TOLLGATE_TEST_DATABASE_URL} will fail or skip"

# --- NATS with JetStream (the usage events sink tests, docs/events.md) -------
# The server's first line (INFO {...}) says whether JetStream is on.
nats_info() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222 && head -n 1 <&3' 2>/dev/null
}
setup_nats() {
    local info
    info="$(nats_info || true)"
    if [[ "$info" == INFO* ]]; then
        if [[ "$info" == *'"jetstream":true'* ]]; then
            say "nats-server: running with JetStream"
            return 0
        fi
        warn "a NATS server answers on 127.0.0.1:4222 without JetStream (restart it with -js)"
        return 1
    fi
    if ! command -v nats-server >/dev/null; then
        apt_install nats-server || return 1
    fi
    local dir="${TMPDIR:-/tmp}/tollgate-nats"
    mkdir -p "$dir/jetstream"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$dir/jetstream" >"$dir/nats-server.log" 2>&1 &
    for _ in $(seq 50); do
        info="$(nats_info || true)"
        if [[ "$info" == *'"jetstream":true'* ]]; then
            say "nats-server: started with JetStream (log in $dir/nats-server.log)"
            return 0
        fi
        sleep 0.1
    done
    return 1
}
if [ "$TOLLGATE_TEST_NATS_URL" = "nats://127.0.0.1:4222" ]; then
    setup_nats || warn "nats-server with JetStream is not available; the usage events tests will fail"
else
    say "nats-server: using TOLLGATE_TEST_NATS_URL"
fi

# --- Rust tests --------------------------------------------------------------
status=0
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; they are tests too. They run first so that the
    # run closes on nextest's summary of the whole suite.
    say "running: cargo test --workspace --doc"
    cargo test --workspace --doc || status=$?
    say "running: cargo nextest run --workspace --no-fail-fast"
    cargo nextest run --workspace --no-fail-fast || status=$?
else
    say "running: cargo test --workspace (cargo-nextest not found)"
    cargo test --workspace --no-fail-fast || status=$?
fi
exit "$status"
