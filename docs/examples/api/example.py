"""Admin, proxy and verify calls with Python's standard library (urllib).
Needs TOLLGATE_ADMIN_TOKEN. With the official SDK the proxy call is just
`OpenAI(base_url=URL + "/v1", api_key=key).chat.completions.create(...)`."""

import json
import os
import urllib.request

URL = os.environ.get("TOLLGATE_URL", "http://127.0.0.1:8080")
ADMIN = os.environ["TOLLGATE_ADMIN_TOKEN"]


def call(path, body, token=None):
    request = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request) as response:
        return json.load(response), response.headers


project = f"python-{os.getpid()}"
call("/api/v1/projects", {"id": project}, ADMIN)
key = call("/api/v1/keys", {"project": project, "plan": "free"}, ADMIN)[0]["key"]

answer, headers = call(
    "/v1/chat/completions",
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
    key,
)
assert answer["object"] == "chat.completion", answer
assert headers["x-ratelimit-remaining"] == "9", dict(headers)

verdict = call("/api/v1/keys/verify", {"key": key})[0]
assert verdict["valid"] and verdict["code"] == "VALID", verdict
print("ok")
