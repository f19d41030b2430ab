#!/bin/sh
# Admin, proxy and verify calls with curl. Needs TOLLGATE_ADMIN_TOKEN.
set -eu
URL="${TOLLGATE_URL:-http://127.0.0.1:8080}"
ADMIN="Authorization: Bearer ${TOLLGATE_ADMIN_TOKEN:?set TOLLGATE_ADMIN_TOKEN}"
PROJECT="curl-$$"

# Admin: a project and a key on the free plan (the key is shown once).
curl -sf "$URL/api/v1/projects" -H "$ADMIN" -H 'Content-Type: application/json' \
  -d "{\"id\": \"$PROJECT\"}" >/dev/null
KEY=$(curl -sf "$URL/api/v1/keys" -H "$ADMIN" -H 'Content-Type: application/json' \
  -d "{\"project\": \"$PROJECT\", \"plan\": \"free\"}" | sed -n 's/.*"key": *"\(tg_[^"]*\)".*/\1/p')
[ -n "$KEY" ] || { echo "no key in the answer" >&2; exit 1; }

# Proxy: an OpenAI chat completion through tollgate; -i shows the rate-limit headers.
curl -sf -i "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}' \
  | grep -qi '^x-ratelimit-remaining: 9'

# Verify: valid and under its limits?
curl -sf "$URL/api/v1/keys/verify" -H 'Content-Type: application/json' -d "{\"key\": \"$KEY\"}" \
  | grep -q '"code": *"VALID"'
echo ok
