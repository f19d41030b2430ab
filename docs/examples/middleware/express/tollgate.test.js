// Run by crates/server/tests/gateway/examples.rs against a real tollgate:
// TOLLGATE_URL, TOLLGATE_TEST_KEY (a fresh key on the free plan: 10 requests a
// minute), TOLLGATE_TEST_REVOKED_KEY.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import express from "express";
import { tollgateVerify } from "./tollgate.js";

const { TOLLGATE_URL, TOLLGATE_TEST_KEY, TOLLGATE_TEST_REVOKED_KEY } = process.env;

function serve(middleware) {
  const app = express();
  app.use(middleware);
  app.get("/hello", (req, res) => res.send(`hello ${req.tollgate ? req.tollgate.project : "stranger"}`));
  return new Promise((resolve) => {
    const server = app.listen(0, "127.0.0.1", () => resolve(server));
  });
}

const base = (server) => `http://127.0.0.1:${server.address().port}`;
const call = (server, key) =>
  fetch(`${base(server)}/hello`, key ? { headers: { authorization: `Bearer ${key}` } } : {});

test("valid keys pass and are charged; refusals get 401, 403 and 429 with Retry-After", async () => {
  assert.ok(TOLLGATE_URL && TOLLGATE_TEST_KEY && TOLLGATE_TEST_REVOKED_KEY, "set by the Rust test");
  const server = await serve(tollgateVerify({ url: TOLLGATE_URL }));
  try {
    const ok = await call(server, TOLLGATE_TEST_KEY);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "hello acme");
    assert.equal(ok.headers.get("x-ratelimit-limit"), "10");
    assert.equal(ok.headers.get("x-ratelimit-remaining"), "9");
    for (let i = 0; i < 9; i++) assert.equal((await call(server, TOLLGATE_TEST_KEY)).status, 200);
    const limited = await call(server, TOLLGATE_TEST_KEY);
    assert.equal(limited.status, 429);
    assert.ok(Number(limited.headers.get("retry-after")) >= 1);
    assert.equal((await limited.json()).error.code, "rate_limit_exceeded");
    assert.equal((await call(server)).status, 401);
    assert.equal((await call(server, "tg_nope")).status, 401);
    assert.equal((await call(server, TOLLGATE_TEST_REVOKED_KEY)).status, 403);
  } finally {
    server.close();
  }
});

test("an unreachable tollgate fails open or closed as configured", async () => {
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const dead = `http://127.0.0.1:${port}`;
  const open = await serve(tollgateVerify({ url: dead, failOpen: true, timeoutMs: 500 }));
  const closed = await serve(tollgateVerify({ url: dead, timeoutMs: 500 }));
  try {
    const r = await call(open, "tg_any");
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("x-tollgate-verify"), "unavailable");
    const c = await call(closed, "tg_any");
    assert.equal(c.status, 503);
    assert.equal((await c.json()).error.code, "verify_unavailable");
  } finally {
    open.close();
    closed.close();
  }
});
