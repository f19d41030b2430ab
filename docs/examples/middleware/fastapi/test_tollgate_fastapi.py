"""Run by crates/server/tests/gateway/examples.rs against a real tollgate:
TOLLGATE_URL, TOLLGATE_TEST_KEY (a fresh key on the free plan: 10 requests a minute),
TOLLGATE_TEST_REVOKED_KEY. Plain asserts: `python3 test_tollgate_fastapi.py`."""

import os
import socket
import sys

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tollgate_fastapi import TollgateVerify  # noqa: E402


def app_with(**options):
    app = FastAPI()
    app.add_middleware(TollgateVerify, **options)

    @app.get("/hello")
    def hello(request: Request):
        state = getattr(request.state, "tollgate", None)
        return {"project": state["project"] if state else None}

    return TestClient(app)


def test_keys_and_quotas():
    url, key, revoked = os.environ["TOLLGATE_URL"], os.environ["TOLLGATE_TEST_KEY"], os.environ["TOLLGATE_TEST_REVOKED_KEY"]
    # As a context manager the client keeps one event loop, as a server does.
    with app_with(url=url) as client:
        check_keys_and_quotas(client, key, revoked)


def check_keys_and_quotas(client, key, revoked):
    bearer = lambda k: {"authorization": f"Bearer {k}"}  # noqa: E731
    ok = client.get("/hello", headers=bearer(key))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"project": "acme"}
    assert ok.headers["x-ratelimit-limit"] == "10"
    assert ok.headers["x-ratelimit-remaining"] == "9"
    for _ in range(9):
        assert client.get("/hello", headers=bearer(key)).status_code == 200
    limited = client.get("/hello", headers=bearer(key))
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.get("/hello").status_code == 401
    assert client.get("/hello", headers=bearer("tg_nope")).status_code == 401
    assert client.get("/hello", headers=bearer(revoked)).status_code == 403


def test_fail_open_and_closed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    with app_with(url=dead, fail_open=True, timeout=0.5) as client:
        opened = client.get("/hello", headers={"authorization": "Bearer tg_any"})
    assert opened.status_code == 200 and opened.headers["x-tollgate-verify"] == "unavailable"
    with app_with(url=dead, timeout=0.5) as client:
        closed = client.get("/hello", headers={"authorization": "Bearer tg_any"})
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "verify_unavailable"


if __name__ == "__main__":
    test_keys_and_quotas()
    test_fail_open_and_closed()
    print("fastapi middleware: ok")
