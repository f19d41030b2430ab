// Drives the dashboard of a running tollgate in Debian's headless Chromium.
// Started by crates/server/tests/gateway/dashboard_browser.rs, which passes:
//   TOLLGATE_URL, TOLLGATE_ADMIN_TOKEN (operator), TOLLGATE_PROJECT_TOKEN (acme),
//   TOLLGATE_OTHER_KEY (a key id of another project), TOLLGATE_WEBHOOK_URL (a local
//   receiver), TOLLGATE_DEAD_URL (a port nobody answers), TOLLGATE_OTHER_CHANNEL (an
//   alert channel of another project), CHROMIUM, SCREENSHOTS (a folder).
// Every wait is for a selector or a condition with a deadline; nothing sleeps.
import { chromium } from "playwright-core";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

const base = process.env.TOLLGATE_URL;
const operatorToken = process.env.TOLLGATE_ADMIN_TOKEN;
const projectToken = process.env.TOLLGATE_PROJECT_TOKEN;
const otherKey = process.env.TOLLGATE_OTHER_KEY;
const shots = process.env.SCREENSHOTS;
const webhookUrl = process.env.TOLLGATE_WEBHOOK_URL;
const deadUrl = process.env.TOLLGATE_DEAD_URL;
const otherChannel = process.env.TOLLGATE_OTHER_CHANNEL;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function api(path, token = operatorToken) {
  const r = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` } });
  check(r.ok, `${path}: ${r.status}`);
  return r.json();
}

async function chat(secret, headers = {}) {
  const r = await fetch(base + "/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json", ...headers },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello from the browser test" }] }),
  });
  await r.arrayBuffer();
  return r.status;
}

/// Reloads `url` until `ready(page)` holds, for at most `ms`.
async function until(page, url, ready, what, ms = 90000) {
  const deadline = Date.now() + ms;
  for (;;) {
    await page.goto(url);
    if (await ready(page)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await page.waitForLoadState("networkidle");
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, name), fullPage: true });
}

async function signIn(page, token) {
  await page.goto(base + "/dashboard");
  await page.waitForSelector("input#token");
  check(page.url().endsWith("/dashboard/login"), `signed out, /dashboard leads to sign-in, not ${page.url()}`);
  await page.fill("#token", token);
  await page.press("#token", "Enter");
  await page.waitForSelector("h1:has-text('Overview')");
}

function csvRows(text) {
  // RFC 4180 is enough here: ids and the fields compared hold no quotes or commas.
  const lines = text.trim().split(/\r?\n/);
  const header = lines.shift().split(",");
  return lines.map((l) => Object.fromEntries(l.split(",").map((v, i) => [header[i], v])));
}

// Generous waits: the suite runs this beside other tests on two busy cores.
const TIMEOUT_MS = 90000;
const browser = await chromium.launch({
  timeout: TIMEOUT_MS,
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  // ----- the operator -----
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  context.setDefaultTimeout(TIMEOUT_MS);
  const page = await context.newPage();
  page.on("dialog", (d) => d.accept());
  await page.goto(base + "/dashboard/login");
  await shot(page, "sign-in.png");
  await signIn(page, operatorToken);

  // Create a key; the secret is shown once and the copy button copies it.
  await page.click("nav >> text=Keys");
  await page.waitForSelector("h1:has-text('Keys')");
  await page.selectOption("#cproject", "acme");
  await page.fill("#cname", "checkout-service");
  await page.selectOption("#cplan", "free");
  await page.click("button:has-text('Create key')");
  const secretEl = await page.waitForSelector("[data-testid=secret]");
  const secret = (await secretEl.textContent()).trim();
  check(secret.startsWith("tg_"), `a key secret, not ${secret}`);
  await page.click("button[data-copy=secret]");
  await page.waitForSelector("button[data-copied=true]");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied === secret, "the copy button copies the secret");
  await shot(page, "key-created.png");
  await page.click("text=Done");
  await page.waitForSelector("h1:has-text('Key checkout-service')");
  const keyId = page.url().split("/").pop().split("?")[0];

  // Proxied requests with it, then the overview chart and the explorer show them.
  for (let i = 0; i < 4; i++) check((await chat(secret)) === 200, "a proxied request is answered");
  const requestsOf = async (p) =>
    Number((await p.getAttribute("figure[data-chart=requests] svg", "data-total")) || 0);
  const before = await api(`/api/v1/usage?key=${keyId}`);
  check(before.data.length <= 4, "no more rows than requests");
  await until(
    page,
    `${base}/dashboard/keys/${keyId}`,
    async (p) => (await p.locator("[data-testid=rows] tr[data-id]").count()) >= 4,
    "the key's four requests on its page",
  );
  await until(
    page,
    `${base}/dashboard?range=24h&project=acme`,
    async (p) => (await requestsOf(p)) >= 4,
    "the requests in the overview chart",
  );
  check((await page.locator("[data-quota]").count()) > 0, "quota bars on the overview");
  check((await page.locator(".quota[data-class=warn]").count()) > 0, "an amber quota (80 % or more)");
  check((await page.locator(".quota[data-class=over]").count()) > 0, "a red quota (100 %)");
  await page.goto(`${base}/dashboard?range=24h`);
  await page.waitForSelector("figure[data-chart=requests]");
  await shot(page, "overview.png");

  // The quota bars refresh themselves (the script polls the fragment every 15 s).
  await page.goto(`${base}/dashboard?range=24h&project=acme`);
  await page.waitForSelector("#quotas[data-refreshed]");
  check((await page.locator("#quotas [data-quota]").count()) > 0, "the refreshed fragment holds the quota bars");

  await page.goto(`${base}/dashboard/usage?key=${keyId}`);
  const explorerRows = await page.locator("[data-testid=rows] tr[data-id]").count();
  check(explorerRows >= 4, `the explorer lists the key's requests (${explorerRows})`);
  await page.goto(`${base}/dashboard/usage?range=24h&group_by=model`);
  await page.waitForSelector("[data-testid=rows]");
  await shot(page, "usage.png");

  // Export CSV with the key filter: the same rows as the API.
  await page.goto(`${base}/dashboard/usage?key=${keyId}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("[data-testid=export-csv]")]);
  const csv = csvRows(await readFile(await download.path(), "utf8"));
  const fromApi = await api(`/api/v1/usage?key=${keyId}&limit=1000`);
  check(csv.length === fromApi.data.length, `CSV rows ${csv.length} = API rows ${fromApi.data.length}`);
  const apiById = new Map(fromApi.data.map((r) => [r.id, r]));
  for (const row of csv) {
    const r = apiById.get(row.id);
    check(r, `CSV row ${row.id} is in the API`);
    check(row.key_id === keyId && r.key_id === keyId, "the CSV holds the key's rows");
    check(Number(row.prompt_tokens) === r.prompt_tokens, "prompt tokens agree");
    check(Number(row.cost_micros) === r.cost_micros, "cost agrees");
    check(Number(row.status) === r.status, "status agrees");
  }

  // Keys list and plans, then a refused plan edit shows its error beside the field.
  await page.goto(`${base}/dashboard/keys`);
  await page.waitForSelector("[data-testid=keys]");
  await shot(page, "keys.png");
  await page.goto(`${base}/dashboard/plans`);
  await page.waitForSelector("[data-plan=free]");
  await shot(page, "plans.png");
  await page.click("[data-plan=free] summary");
  await page.fill("#l-free", '[{"metric": "requests", "window": "fortnight", "limit": 5}]');
  await page.click("button:has-text('Save free')");
  await page.waitForSelector("#l-free-error");
  check(page.url().endsWith("/dashboard/plans/free"), "the refused form is shown again");
  await shot(page, "plans-validation.png");

  // Revoke, with confirmation: the key's requests are refused from then on.
  await page.goto(`${base}/dashboard/keys/${keyId}`);
  await shot(page, "key.png");
  await page.check("input[name=confirm]");
  await page.click("button:has-text('Revoke key')");
  await page.waitForSelector("text=The key is revoked");
  const refusedStatus = await chat(secret);
  check(refusedStatus === 403, `a revoked key's request is refused with 403 key_revoked (${refusedStatus})`);

  // A form posted without its CSRF token is refused, and nothing is made.
  const csrfless = await page.evaluate(async () => {
    const r = await fetch("/dashboard/keys", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "project=acme&name=forged",
    });
    return r.status;
  });
  check(csrfless === 403, `a form without the CSRF token is refused (${csrfless})`);
  const keysNow = await api("/api/v1/keys?project=acme");
  check(!keysNow.data.some((k) => k.name === "forged"), "the refused form made no key");

  // Alerts: a webhook channel (its signing secret shown once), a test send to the
  // local receiver, a refused then a created rule, and the event history with a dead
  // letter redelivered.
  await page.click("nav >> text=Alerts");
  await page.waitForSelector("h1:has-text('Alerts')");
  await page.selectOption("#cproject", "acme");
  await page.fill("#cname", "ops-webhook");
  await page.selectOption("#ckind", "webhook");
  await page.fill("#curl", webhookUrl);
  await page.click("button:has-text('Create channel')");
  const whsecEl = await page.waitForSelector("[data-testid=secret]");
  const whsec = (await whsecEl.textContent()).trim();
  check(whsec.startsWith("whsec_"), `a webhook signing secret, not ${whsec}`);
  await page.click("button[data-copy=secret]");
  await page.waitForSelector("button[data-copied=true]");
  check((await page.evaluate(() => navigator.clipboard.readText())) === whsec, "the copy button copies the signing secret");
  await shot(page, "alert-channel-created.png");
  await page.click("text=Done");
  await page.waitForSelector("[data-testid=channels]");
  const channelId = await page.getAttribute("tr[data-channel]:has-text('ops-webhook')", "data-channel");
  await page.click(`tr[data-channel="${channelId}"] button:has-text('Test send')`);
  const result = await page.waitForSelector("[data-testid=test-result]");
  check((await result.textContent()).includes("delivered"), `the test send is delivered: ${await result.textContent()}`);
  await page.selectOption("#rproject", "acme");
  await page.fill("#rname", "acme daily requests");
  await page.selectOption("#rmetric", "requests");
  await page.selectOption("#rwindow", "day");
  await page.fill("#rthresholds", "0, 90");
  await page.check(`input[name=channels][value="${channelId}"]`);
  await page.click("button:has-text('Create rule')");
  await page.waitForSelector("#rthresholds-error");
  check((await page.textContent("#rthresholds-error")).includes("1 to 1000"), "the API's message beside the field");
  check((await page.inputValue("#rname")) === "acme daily requests", "the refused form keeps what was typed");
  await shot(page, "alerts-validation.png");
  await page.fill("#rthresholds", "80, 90, 100");
  await page.click("button:has-text('Create rule')");
  await page.waitForSelector("text=Rule created");
  check((await page.locator("tr[data-rule]:has-text('80%, 90%, 100%')").count()) === 1, "the rule with its thresholds");
  await shot(page, "alerts.png");
  // A channel nobody answers: its test send is retried, then a dead letter.
  const dead = await fetch(base + "/api/v1/alerts/channels", {
    method: "POST",
    headers: { Authorization: `Bearer ${operatorToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ project: "acme", name: "broken-receiver", kind: "webhook", url: deadUrl }),
  });
  check(dead.status === 201, `a channel to a dead port (${dead.status})`);
  const deadId = (await dead.json()).id;
  await page.goto(`${base}/dashboard/alerts`);
  await page.click(`tr[data-channel="${deadId}"] button:has-text('Test send')`);
  await page.waitForSelector("[data-testid=test-result]");
  await until(
    page,
    `${base}/dashboard/alerts/events`,
    async (p) => (await p.locator("tr[data-status=dead]").count()) > 0,
    "the dead letter on the events page",
  );
  check((await page.locator("tr[data-status=delivered]").count()) > 0, "the delivered test send");
  check((await page.locator("tr[data-status=dead] ol.attempts li").count()) >= 2, "the dead letter's attempts");
  await shot(page, "alert-events.png");
  await page.click("tr[data-status=dead] button:has-text('Redeliver')");
  await page.waitForSelector("text=Redelivery queued");

  // A phone-sized viewport reads the overview too.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  phone.setDefaultTimeout(TIMEOUT_MS);
  const phonePage = await phone.newPage();
  await signIn(phonePage, operatorToken);
  await phonePage.goto(`${base}/dashboard?range=24h`);
  await phonePage.waitForSelector("figure[data-chart=requests]");
  const overflow = await phonePage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `no sideways scrolling on a phone (${overflow}px)`);
  await shot(phonePage, "overview-phone.png");
  await phone.close();

  // Sign-out ends the session.
  await page.click("button:has-text('Sign out')");
  await page.waitForSelector("input#token");
  await page.goto(base + "/dashboard/keys");
  check(page.url().endsWith("/dashboard/login"), "after sign-out the pages need a sign-in");
  await context.close();

  // ----- a project token -----
  const scoped = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  scoped.setDefaultTimeout(TIMEOUT_MS);
  const sp = await scoped.newPage();
  await signIn(sp, projectToken);
  check((await sp.textContent("[data-testid=scope]")).includes("acme"), "the session shows its project");
  for (const path of [`/dashboard/keys/${otherKey}`, "/dashboard?project=globex", "/dashboard/usage?project=globex"]) {
    const r = await sp.goto(base + path);
    check(r.status() === 404, `${path} is a 404 for another project's token (${r.status()})`);
  }
  await sp.goto(base + "/dashboard/keys");
  await sp.waitForSelector("[data-testid=keys]");
  check((await sp.locator(`tr[data-key="${otherKey}"]`).count()) === 0, "another project's key is not listed");
  check((await sp.locator("tr[data-key]").count()) > 0, "its own keys are");
  // Another project's alert channel: not listed, and its ids are 404.
  await sp.goto(base + "/dashboard/alerts");
  await sp.waitForSelector("h1:has-text('Alerts')");
  check((await sp.locator(`tr[data-channel="${otherChannel}"]`).count()) === 0, "another project's channel is not listed");
  check((await sp.locator("tr[data-channel]").count()) > 0, "its own channels are");
  const foreign = await sp.evaluate(async (id) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const r = await fetch(`/dashboard/alerts/channels/${id}/test`, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `csrf=${encodeURIComponent(csrf)}`,
    });
    return r.status;
  }, otherChannel);
  check(foreign === 404, `another project's channel is a 404 (${foreign})`);
  await sp.goto(base + "/dashboard");
  await sp.waitForSelector("figure[data-chart=requests]");
  await shot(sp, "overview-project.png");
  await scoped.close();
  console.log("ok");
} finally {
  await browser.close();
}
