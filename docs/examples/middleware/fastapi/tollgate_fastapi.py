"""FastAPI (Starlette) middleware: each request's API key is checked (and charged)
with tollgate's POST /api/v1/keys/verify; refusals are answered here with the status
and headers a client expects, in OpenAI's error shape.

    from fastapi import FastAPI, Request
    from tollgate_fastapi import TollgateVerify

    app = FastAPI()
    app.add_middleware(TollgateVerify, url="http://127.0.0.1:8080")

    @app.get("/hello")
    def hello(request: Request):
        return {"project": request.state.tollgate["project"]}
"""

import httpx
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

REFUSALS = {
    "NOT_FOUND": (401, "invalid_api_key", "invalid_request_error", "Invalid API key."),
    "REVOKED": (403, "key_revoked", "permission_error", "This API key has been revoked."),
    "EXPIRED": (403, "key_expired", "permission_error", "This API key has expired."),
    "RATE_LIMITED": (429, "rate_limit_exceeded", "rate_limit_error", "Rate limit exceeded."),
    "QUOTA_EXCEEDED": (429, "quota_exceeded", "quota_exceeded_error", "Quota exceeded."),
}


def _refuse(status, code, kind, message, retry_after=None):
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


class TollgateVerify(BaseHTTPMiddleware):
    """url: tollgate's base URL; cost: requests each call charges; fail_open: serve
    unchecked when tollgate is unreachable (default: refuse with 503); timeout:
    seconds to wait for tollgate; header: "authorization" (Bearer) or a header
    holding the bare key."""

    def __init__(self, app, url, cost=1, fail_open=False, timeout=2.0, header="authorization"):
        super().__init__(app)
        self.endpoint = url.rstrip("/") + "/api/v1/keys/verify"
        self.cost = cost
        self.fail_open = fail_open
        self.header = header
        self.client = httpx.AsyncClient(timeout=timeout)

    async def dispatch(self, request, call_next):
        raw = request.headers.get(self.header, "").strip()
        if self.header == "authorization":
            key = raw[7:].strip() if raw.lower().startswith("bearer ") else ""
        else:
            key = raw
        if not key:
            return _refuse(401, "missing_api_key", "invalid_request_error", "No API key was provided.")
        try:
            r = await self.client.post(self.endpoint, json={"key": key, "cost": self.cost})
            r.raise_for_status()
            answer = r.json()
        except (httpx.HTTPError, ValueError):
            if self.fail_open:
                response = await call_next(request)
                response.headers["x-tollgate-verify"] = "unavailable"
                return response
            return _refuse(503, "verify_unavailable", "api_error", "The key service is unavailable; try again shortly.")
        if not answer.get("valid"):
            status, code, kind, message = REFUSALS.get(answer.get("code"), REFUSALS["NOT_FOUND"])
            return _refuse(status, code, kind, message, answer.get("retry_after"))
        request.state.tollgate = {k: answer.get(k) for k in ("key_id", "project", "plan")}
        response = await call_next(request)
        limits = answer.get("limits") or []
        if limits:
            tightest = min(limits, key=lambda l: l["remaining"])
            response.headers["X-RateLimit-Limit"] = str(tightest["limit"])
            response.headers["X-RateLimit-Remaining"] = str(tightest["remaining"])
        return response
