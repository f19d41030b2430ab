// Express middleware: each request's API key is checked (and charged) with tollgate's
// POST /api/v1/keys/verify; refusals are answered here with the status and headers a
// client expects, in OpenAI's error shape. Node 18+ (global fetch).
//
//   import express from "express";
//   import { tollgateVerify } from "./tollgate.js";
//   const app = express();
//   app.use(tollgateVerify({ url: "http://127.0.0.1:8080" }));
//   app.get("/hello", (req, res) => res.send(`hello ${req.tollgate.project}`));

const REFUSALS = {
  NOT_FOUND: [401, "invalid_api_key", "invalid_request_error", "Invalid API key."],
  REVOKED: [403, "key_revoked", "permission_error", "This API key has been revoked."],
  EXPIRED: [403, "key_expired", "permission_error", "This API key has expired."],
  RATE_LIMITED: [429, "rate_limit_exceeded", "rate_limit_error", "Rate limit exceeded."],
  QUOTA_EXCEEDED: [429, "quota_exceeded", "quota_exceeded_error", "Quota exceeded."],
};

function refuse(res, status, code, type, message, retryAfter) {
  if (retryAfter) res.set("Retry-After", String(retryAfter));
  res.status(status).json({ error: { message, type, code } });
}

/**
 * @param {object} options
 * @param {string} options.url        tollgate's base URL
 * @param {number} [options.cost=1]   requests each call charges
 * @param {boolean} [options.failOpen=false]  serve unchecked when tollgate is unreachable
 * @param {number} [options.timeoutMs=2000]   longest wait for tollgate
 * @param {string} [options.header="authorization"]  "authorization" (Bearer) or a header with the bare key
 */
export function tollgateVerify({ url, cost = 1, failOpen = false, timeoutMs = 2000, header = "authorization" }) {
  const endpoint = `${url.replace(/\/+$/, "")}/api/v1/keys/verify`;
  return async function tollgate(req, res, next) {
    const raw = req.get(header) || "";
    const key = header === "authorization" ? raw.replace(/^Bearer\s+/i, "").trim() : raw.trim();
    if (!key || (header === "authorization" && key === raw.trim())) {
      return refuse(res, 401, "missing_api_key", "invalid_request_error", "No API key was provided.");
    }
    let answer;
    try {
      const r = await fetch(endpoint, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ key, cost }),
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (!r.ok) throw new Error(`tollgate answered ${r.status}`);
      answer = await r.json();
    } catch (err) {
      if (failOpen) {
        res.set("x-tollgate-verify", "unavailable");
        return next();
      }
      return refuse(res, 503, "verify_unavailable", "api_error", "The key service is unavailable; try again shortly.");
    }
    if (!answer.valid) {
      const [status, code, type, message] = REFUSALS[answer.code] || REFUSALS.NOT_FOUND;
      return refuse(res, status, code, type, message, answer.retry_after);
    }
    const tightest = (answer.limits || []).reduce((a, l) => (a && a.remaining <= l.remaining ? a : l), null);
    if (tightest) {
      res.set("X-RateLimit-Limit", String(tightest.limit));
      res.set("X-RateLimit-Remaining", String(tightest.remaining));
    }
    req.tollgate = { keyId: answer.key_id, project: answer.project, plan: answer.plan };
    next();
  };
}
