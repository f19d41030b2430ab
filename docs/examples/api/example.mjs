// Admin, proxy and verify calls with Node's fetch (Node 18+). Needs TOLLGATE_ADMIN_TOKEN.
// With the official SDK the proxy call is
// `new OpenAI({ baseURL: URL + "/v1", apiKey: key }).chat.completions.create(...)`.
const URL = process.env.TOLLGATE_URL ?? "http://127.0.0.1:8080";
const ADMIN = process.env.TOLLGATE_ADMIN_TOKEN;
if (!ADMIN) throw new Error("set TOLLGATE_ADMIN_TOKEN");

async function call(path, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(URL + path, { method: "POST", headers, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return [await r.json(), r.headers];
}

const project = `js-${process.pid}`;
await call("/api/v1/projects", { id: project }, ADMIN);
const [{ key }] = await call("/api/v1/keys", { project, plan: "free" }, ADMIN);

const [answer, headers] = await call(
  "/v1/chat/completions",
  { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] },
  key,
);
if (answer.object !== "chat.completion") throw new Error(JSON.stringify(answer));
if (headers.get("x-ratelimit-remaining") !== "9") throw new Error("expected 9 requests left this minute");

const [verdict] = await call("/api/v1/keys/verify", { key });
if (!verdict.valid || verdict.code !== "VALID") throw new Error(JSON.stringify(verdict));
console.log("ok");
