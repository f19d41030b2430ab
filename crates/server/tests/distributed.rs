//! The distributed backend end to end: real tollgate instances on port 0 sharing one
//! Redis and one PostgreSQL (`TOLLGATE_TEST_REDIS_URL`, `TOLLGATE_TEST_DATABASE_URL`,
//! both set by `scripts/test.sh`), in front of the mock upstream.
//!
//! - exact admission across instances: 400 concurrent requests split over two
//!   instances against a quota of 100 admit exactly 100, and every 2xx is in the
//!   PostgreSQL ledger after a graceful shutdown;
//! - a key revoked through one instance is refused by the other within a second;
//! - with a private Redis killed mid-test, a fail-open instance keeps serving under
//!   its local share of the limit and a fail-closed one answers 503; both go back to
//!   Redis by themselves when it is restarted, and the rebuild job restores the month
//!   counter from the ledger.
//!
//! - a key on a plan and project made a moment ago elsewhere (no change notice, no
//!   refresh yet) is served at once: the plan and project are loaded on demand.
//! - a project's own provider key is sealed in PostgreSQL, refused without a master
//!   key, and used by every instance (bring your own key).
//!
//! Each test works in a PostgreSQL schema and under a Redis key prefix of its own.
//! Without the variables, or with a server unreachable, the tests fail: a skip would
//! pass silently in a CI that lost its services.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_mock_upstream::{self as mock, MockConfig};
use tollgate_server::app::AppState;
use tollgate_server::app::Application;
use tollgate_server::config::{Config, RawConfig, Secret};
use tollgate_store::Ledger;
use tollgate_store_distributed::Distributed;
use tollgate_store_postgres::{PostgresSettings, PostgresStore};

const ADMIN_TOKEN: &str = "test-operator-token-0123456789";

struct Env {
    redis_url: String,
    database_url: String,
}

/// Where Redis and PostgreSQL are: `TOLLGATE_TEST_REDIS_URL` and
/// `TOLLGATE_TEST_DATABASE_URL`, else the local defaults scripts/test.sh uses. Never
/// skipped: a missing service fails these tests rather than letting them pass.
fn env() -> Option<Env> {
    let redis_url = std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let database_url = std::env::var("TOLLGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tollgate_test".to_owned());
    Some(Env { redis_url, database_url })
}

fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{label}_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A PostgreSQL schema of the test's own, migrated, dropped by `drop`.
struct Schema {
    name: String,
    url: String,
    store: PostgresStore,
}

/// Fails the test when the configured Redis does not answer (a skip would hide it).
async fn require_redis(url: &str) {
    let settings =
        tollgate_store_redis::RedisSettings { url: url.to_owned(), cluster: false, timeout: Duration::from_secs(5) };
    let conn = tollgate_store_redis::RedisConn::connect(&settings).await.expect("redis settings");
    if let Err(e) = conn.ping(settings.timeout).await {
        panic!("TOLLGATE_TEST_REDIS_URL={url} is set but Redis does not answer: {e}");
    }
}

impl Schema {
    async fn create(env: &Env) -> Schema {
        require_redis(&env.redis_url).await;
        let name = unique("tgtest");
        let mut settings = PostgresSettings::new(&env.database_url);
        settings.schema = Some(name.clone());
        let store = match PostgresStore::open(&settings).await {
            Ok(s) => s,
            Err(e) => {
                panic!("TOLLGATE_TEST_DATABASE_URL={} is set but PostgreSQL cannot be used: {e}", env.database_url)
            }
        };
        let separator = if env.database_url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}options=-c%20search_path%3D{name}", env.database_url);
        Schema { name, url, store }
    }

    async fn count(&self, sql: &str) -> i64 {
        let client = self.store.pool().get().await.expect("client");
        client.query_one(sql, &[]).await.expect("count").get(0)
    }

    async fn drop(self) {
        self.store.ledger().close().await.expect("close");
        self.store.drop_schema(&self.name).await.expect("drop schema");
    }
}

async fn spawn_mock() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    let port = listener.local_addr().expect("addr").port();
    let config = MockConfig { expected_api_key: Some("sk-provider-test".into()), ..MockConfig::default() };
    tokio::spawn(mock::serve(listener, config, std::future::pending()));
    format!("http://127.0.0.1:{port}/v1")
}

struct Instance {
    base: String,
    http: reqwest::Client,
    state: AppState,
    parts: Arc<Distributed>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn config(mock_url: &str, redis_url: &str, database_url: &str, prefix: &str) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        store: tollgate_server::config::StoreKind::Distributed,
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        shutdown_grace_secs: 5,
        redis_url: Some(Secret::new(redis_url)),
        redis_key_prefix: prefix.to_owned(),
        redis_timeout_ms: 300,
        database_url: Some(Secret::new(database_url)),
        database_pool_size: 4,
        instances: 2,
        ..RawConfig::default()
    };
    raw.upstream.base_url = mock_url.to_owned();
    raw.upstream.api_key = Some(Secret::new("sk-provider-test"));
    raw.upstream.timeout_secs = 5;
    raw
}

async fn start(mut raw: RawConfig) -> Instance {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Unused by the distributed store; set so nothing lands in the working directory.
    let dir = tempfile::tempdir().expect("dir");
    raw.data_dir = dir.path().to_path_buf();
    let config = Config::from_raw(raw).expect("valid distributed config");
    let app = Application::build(config).await.expect("build distributed app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let parts = app.backend().distributed.clone().expect("distributed backend");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
    Instance { base, http, state, parts, shutdown: Some(tx), server: Some(server), _dir: dir }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Instance {
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut r = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.send(r).await
    }

    async fn chat(&self, key: &str) -> Reply {
        let body = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] });
        self.send(self.http.post(format!("{}/v1/chat/completions", self.base)).bearer_auth(key).json(&body)).await
    }

    /// Creates a project, a plan with `limits` and a key on it; returns the key.
    async fn project_key(&self, project: &str, limits: Value) -> (String, String) {
        let r = self.admin(reqwest::Method::POST, "/api/v1/projects", Some(json!({ "id": project }))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let plan = format!("plan-{project}");
        let r =
            self.admin(reqwest::Method::POST, "/api/v1/plans", Some(json!({ "name": plan, "limits": limits }))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r =
            self.admin(reqwest::Method::POST, "/api/v1/keys", Some(json!({ "project": project, "plan": plan }))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (r.body["key"].as_str().expect("key").to_owned(), r.body["id"].as_str().expect("id").to_owned())
    }

    /// Graceful shutdown, as SIGTERM does.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean shutdown");
        }
    }
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_redis_prefix(redis_url: &str, prefix: &str) {
    let settings = tollgate_store_redis::RedisSettings {
        url: redis_url.to_owned(),
        cluster: false,
        timeout: Duration::from_secs(5),
    };
    let Ok(conn) = tollgate_store_redis::RedisConn::connect(&settings).await else { return };
    let limiter = tollgate_store_redis::RedisLimiter::new(
        conn,
        tollgate_store_redis::KeySpace::new(prefix),
        Duration::from_secs(5),
    );
    let _ = limiter.delete_all_keys().await;
}

/// 400 concurrent requests spread round-robin over `n` instances against a quota of
/// 100 (on one Redis, or a Redis Cluster when `cluster`): exactly 100 admitted, every
/// answer in the one PostgreSQL ledger.
async fn exact_admission_across(n: usize, redis_url: &str, cluster: bool) {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    // 400 requests at once on 2 cores with a debug build keep tasks waiting for a
    // worker far longer than any Redis round trip: a generous timeout keeps this test
    // about exactness, not about the breaker (which has a test of its own).
    let mut raw = config(&mock, redis_url, &schema.url, &prefix);
    raw.redis_timeout_ms = 5_000;
    raw.redis_cluster = cluster;
    raw.instances = n as u32;
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(Arc::new(start(raw.clone()).await));
    }
    let (key, _) =
        instances[0].project_key("exact", json!([{ "metric": "requests", "window": "month", "limit": 100 }])).await;
    // The plan was created through the first: the others pick it up from the notice.
    for other in &instances[1..] {
        eventually(Duration::from_secs(3), "every instance sees the new plan", || async {
            other.state.plans.get("plan-exact").is_some()
        })
        .await;
    }

    let mut tasks = Vec::new();
    for i in 0..400 {
        let instance = instances[i % n].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move { instance.chat(&key).await.status }));
    }
    let (mut ok, mut limited, mut other) = (0, 0, Vec::new());
    for task in tasks {
        match task.await.expect("request task") {
            200 => ok += 1,
            429 => limited += 1,
            s => other.push(s),
        }
    }
    assert!(other.is_empty(), "unexpected statuses: {other:?}");
    for (i, instance) in instances.iter().enumerate() {
        let stats = instance.parts.limiter.stats();
        assert_eq!(
            stats.local_decisions.load(Ordering::Relaxed),
            0,
            "instance {i} fell back to its local limiter (Redis slower than redis_timeout_ms?)"
        );
    }
    assert_eq!(ok, 100, "exactly the quota admitted across {n} instances");
    assert_eq!(limited, 300);

    for instance in instances {
        Arc::try_unwrap(instance).ok().expect("sole owner").stop().await;
    }
    assert_eq!(
        schema.count("SELECT count(*) FROM usage WHERE project_id = 'exact' AND status = 200").await,
        100,
        "every 2xx is in the PostgreSQL ledger after a graceful shutdown"
    );
    // Refusals are counted in one row per key, endpoint and minute (`requests`).
    let refused = "SELECT coalesce(sum(requests), 0)::bigint FROM usage WHERE project_id = 'exact' AND status = 429";
    assert_eq!(schema.count(refused).await, 300);
    // A run that crosses a minute boundary can leave three rows per instance: the
    // first minute's, the second's, and a late one for the first minute (a request
    // dated before the boundary, refused after its aggregate was written).
    assert!(
        schema.count("SELECT count(*) FROM usage WHERE project_id = 'exact' AND status = 429").await <= 3 * n as i64,
        "one row per instance and minute, not one per refusal"
    );
    schema.drop().await;
    if !cluster {
        delete_redis_prefix(redis_url, &prefix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_admit_exactly_the_quota_and_ledger_every_success() {
    let Some(env) = env() else { return };
    exact_admission_across(2, &env.redis_url, false).await;
}

/// Issue 18: the same at three instances on a Redis Cluster (three masters with a
/// replica each, started by the test: `tollgate_testkit::RedisCluster`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_a_redis_cluster_admit_exactly_the_quota() {
    let cluster = tokio::task::spawn_blocking(tollgate_testkit::RedisCluster::start).await.expect("cluster");
    exact_admission_across(3, &cluster.url(), true).await;
}

/// Issue 18: on a Redis Cluster, a key revoked on one of three instances is refused
/// by the other two within a second (the change bus is the cluster's pub/sub).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_of_three_instances_on_a_cluster_is_refused_everywhere_within_a_second() {
    let Some(env) = env() else { return };
    let cluster = tokio::task::spawn_blocking(tollgate_testkit::RedisCluster::start).await.expect("cluster");
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &cluster.url(), &schema.url, &prefix);
    raw.redis_cluster = true;
    raw.redis_timeout_ms = 2_000;
    raw.instances = 3;
    let (a, b, c) = (start(raw.clone()).await, start(raw.clone()).await, start(raw).await);
    let (key, id) = a.project_key("revoke", json!([{ "metric": "requests", "window": "minute", "limit": 1000 }])).await;
    for other in [&b, &c] {
        eventually(Duration::from_secs(3), "the plan is seen", || async {
            other.state.plans.get("plan-revoke").is_some()
        })
        .await;
        assert_eq!(other.chat(&key).await.status, 200, "the key is cached");
    }
    let r = a.admin(reqwest::Method::DELETE, &format!("/api/v1/keys/{id}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for other in [&b, &c] {
        eventually(Duration::from_secs(1), "the revoked key is refused", || async {
            other.chat(&key).await.status == 403
        })
        .await;
    }
    for instance in [a, b, c] {
        instance.stop().await;
    }
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let a = start(config(&mock, &env.redis_url, &schema.url, &prefix)).await;
    let b = start(config(&mock, &env.redis_url, &schema.url, &prefix)).await;

    let (key, id) = a.project_key("revoke", json!([{ "metric": "requests", "window": "minute", "limit": 1000 }])).await;
    eventually(Duration::from_secs(3), "B sees the plan", || async { b.state.plans.get("plan-revoke").is_some() })
        .await;
    // B has the key cached (the TTL alone would keep it 30 s).
    assert_eq!(b.chat(&key).await.status, 200);
    assert_eq!(b.chat(&key).await.status, 200);

    let r = a.admin(reqwest::Method::DELETE, &format!("/api/v1/keys/{id}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let took = eventually(Duration::from_secs(1), "B refuses the revoked key", || async {
        let r = b.chat(&key).await;
        r.status == 403 && r.body["error"]["code"].is_string()
    })
    .await;
    eprintln!("revocation reached the other instance in {took:?}");

    a.stop().await;
    b.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

/// A redis-server of the test's own, on a free port, that the test stops and starts.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = StdListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let mut redis = PrivateRedis { port, dir: tempfile::tempdir().expect("dir"), child: None };
        redis.resume();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed when TOLLGATE_TEST_REDIS_URL is set (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fails_open_or_closed_and_both_recover() {
    let Some(env) = env() else { return };
    let mut redis = PrivateRedis::start();
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = "tgtest:outage:".to_owned();
    let mut open_raw = config(&mock, &redis.url(), &schema.url, &prefix);
    open_raw.on_store_error = tollgate_server::config::OnStoreError::Open;
    let mut closed_raw = config(&mock, &redis.url(), &schema.url, &prefix);
    closed_raw.on_store_error = tollgate_server::config::OnStoreError::Closed;
    let open = start(open_raw).await;
    let closed = start(closed_raw).await;

    // 10 a minute shared by 2 instances; 1000 a month.
    let limits = json!([
        { "metric": "requests", "window": "minute", "limit": 10 },
        { "metric": "requests", "window": "month", "limit": 1000 },
    ]);
    let (key, _) = open.project_key("outage", limits).await;
    eventually(Duration::from_secs(3), "plan everywhere", || async { closed.state.plans.get("plan-outage").is_some() })
        .await;
    assert_eq!(open.chat(&key).await.status, 200);
    assert_eq!(closed.chat(&key).await.status, 200);
    let mut counted = 2;

    redis.kill();

    // Fail open: served, under this instance's share of the minute limit (10 / 2).
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let r = open.chat(&key).await;
        assert!(started.elapsed() < Duration::from_secs(2), "a request waited {:?} on a dead Redis", started.elapsed());
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "local limiter with limit / instances");
    counted += 5;
    assert!(open.parts.limiter.is_down(), "the breaker opened");
    assert!(open.parts.limiter.stats().local_decisions.load(Ordering::Relaxed) >= 7);

    // Fail closed: 503 in OpenAI's error shape, quickly.
    for _ in 0..4 {
        let started = Instant::now();
        let r = closed.chat(&key).await;
        assert!(started.elapsed() < Duration::from_secs(2), "a request waited {:?} on a dead Redis", started.elapsed());
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "service_unavailable", "{:?}", r.body);
        assert!(r.body["error"]["message"].is_string());
    }

    // Readiness says so: the fail-closed instance is not ready (a load balancer sends
    // its traffic elsewhere), the fail-open one is; both stay alive (`/health`).
    let ready = |i: &Instance| {
        let (http, url) = (i.http.clone(), format!("{}/ready", i.base));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(ready(&closed).await, 503);
    assert_eq!(ready(&open).await, 200);

    // Redis comes back (empty: no persistence). Both instances return to it alone.
    redis.resume();
    eventually(Duration::from_secs(10), "fail-open instance back on Redis", || async { !open.parts.limiter.is_down() })
        .await;
    eventually(Duration::from_secs(10), "fail-closed instance serves again", || async {
        closed.chat(&key).await.status == 200
    })
    .await;
    assert_eq!(ready(&closed).await, 200, "ready again");
    counted += 1;
    // The restarted Redis lost the month counter; the rebuild job (also triggered by
    // the recovery) raises it to what the ledger holds.
    open.state.tasks.close();
    open.state.tasks.wait().await;
    open.state.tasks.reopen();
    closed.state.tasks.close();
    closed.state.tasks.wait().await;
    closed.state.tasks.reopen();
    open.state.ledger.flush().await.expect("flush open");
    closed.state.ledger.flush().await.expect("flush closed");
    tollgate_store_distributed::rebuild_calendar_counters(
        &open.state.job_context(),
        &open.parts,
        tollgate_gateway::now_ms(),
    )
    .await
    .expect("rebuild");
    let r = open.chat(&key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    counted += 1;
    let remaining: u64 = r.headers["x-quota-remaining"].to_str().expect("header").parse().expect("number");
    assert_eq!(remaining, 1000 - counted, "the month counter holds every counted request, outage included");
    assert!(!closed.parts.limiter.is_down());

    open.stop().await;
    closed.stop().await;
    assert_eq!(
        schema.count("SELECT count(*) FROM usage WHERE project_id = 'outage' AND status = 200").await,
        counted as i64
    );
    schema.drop().await;
}

/// Issue 10, item 18: failing open must not hand a spent budget out again. When Redis
/// goes away, the local limiter is seeded with the ledger's day and month totals
/// before it decides, so a month quota 8/10 spent leaves exactly 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_open_starts_from_the_ledgers_totals_not_from_zero() {
    let Some(env) = env() else { return };
    let mut redis = PrivateRedis::start();
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let mut raw = config(&mock, &redis.url(), &schema.url, "tgtest:seed:");
    raw.on_store_error = tollgate_server::config::OnStoreError::Open;
    raw.instances = 1;
    let open = start(raw).await;
    let (key, _) = open.project_key("seeded", json!([{ "metric": "requests", "window": "month", "limit": 10 }])).await;
    for _ in 0..8 {
        assert_eq!(open.chat(&key).await.status, 200);
    }
    open.state.ledger.flush().await.expect("flush");

    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(open.chat(&key).await.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429], "8 of 10 spent before the outage: 2 left, not 10");
    assert!(open.parts.limiter.is_down(), "the breaker opened");
    assert!(open.parts.limiter.is_seeded(), "the local limiter was seeded");
    open.stop().await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_on_a_plan_and_project_this_instance_has_not_loaded_is_served_at_once() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let b = start(config(&mock, &env.redis_url, &schema.url, &prefix)).await;

    // Made straight in PostgreSQL, as another instance would, but with no change
    // notice: B learns of none of it before the request (its refresh runs every
    // second; without loading on demand this answered 500 "names missing plan").
    use tollgate_core::{ApiKey, KeyRecord, LimitSpec, Metric, Plan, Project, SubjectKind, Window};
    use tollgate_store::Catalog;
    let catalog = schema.store.catalog();
    for round in 0..3 {
        let (plan, project) = (format!("late-plan-{round}"), format!("late-{round}"));
        let limits = vec![LimitSpec::new(Metric::Requests, Window::Minute, 1000)];
        catalog.put_plan(Plan { name: plan.clone(), description: None, limits, time_zone: None }).await.expect("plan");
        let mut p = Project::new(&project, &project, 1);
        p.settings.limits = vec![LimitSpec::new(Metric::Requests, Window::Month, 1).with_subject(SubjectKind::Project)];
        catalog.create_project(p).await.expect("project");
        let key = ApiKey::generate(&[round as u8 + 11; 96]).expect("key");
        let record = KeyRecord {
            id: key.public_id().to_owned(),
            project_id: project.clone(),
            name: None,
            plan: plan.clone(),
            metadata: serde_json::Map::new(),
            limit_overrides: Vec::new(),
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            version: 1,
        };
        catalog.create_key(record, key.hash()).await.expect("key");

        let r = b.chat(key.expose()).await;
        assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
        let r = b.chat(key.expose()).await;
        assert_eq!(r.status, 429, "round {round}: the project's own limit, loaded with it: {:?}", r.body);
    }

    // A key whose plan does not exist at all is a clear 403, never a 500.
    let key = ApiKey::generate(&[99; 96]).expect("key");
    let record = KeyRecord {
        id: key.public_id().to_owned(),
        project_id: "late-0".to_owned(),
        name: None,
        plan: "no-such-plan".to_owned(),
        metadata: serde_json::Map::new(),
        limit_overrides: Vec::new(),
        created_at_ms: 1,
        expires_at_ms: None,
        revoked_at_ms: None,
        version: 1,
    };
    catalog.create_key(record, key.hash()).await.expect("key");
    let r = b.chat(key.expose()).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "plan_unavailable");

    b.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

fn rebuilds(instance: &Instance) -> u64 {
    instance.parts.rebuilds.load(Ordering::Relaxed)
}

/// Issue 10, item 17: every instance used to run the full-month aggregate of the
/// counter rebuild every period. Now one instance does, the holder of a lease in
/// Redis; the other skips while it is held and takes over when the holder stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_instance_runs_the_periodic_counter_rebuild() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.counter_rebuild_secs = 1;
    let a = start(raw.clone()).await;
    let b = start(raw).await;
    eventually(Duration::from_secs(60), "three periodic rebuilds", || async { rebuilds(&a) + rebuilds(&b) >= 3 }).await;
    let (ran_a, ran_b) = (rebuilds(&a), rebuilds(&b));
    assert!(ran_a == 0 || ran_b == 0, "both instances ran the rebuild: {ran_a} and {ran_b}");
    // The holder stops (releasing its lease): the other one takes over.
    let (holder, other) = if ran_a > 0 { (a, b) } else { (b, a) };
    holder.stop().await;
    eventually(Duration::from_secs(60), "the other instance takes over", || async { rebuilds(&other) > 0 }).await;
    other.stop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
    schema.drop().await;
}

/// Issue 10, item 20: the rebuild job raises each day counter in its own zone's
/// window. A project in Kolkata (UTC+05:30) spends 3 of 10 a day; Redis loses its
/// counters; the job must raise the counter Kolkata's day is in, or the next
/// request would see 9 left instead of 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rebuild_job_raises_day_counters_in_their_time_zone() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let app = start(config(&mock, &env.redis_url, &schema.url, &prefix)).await;
    let (key, _) = app.project_key("kolkata", json!([{ "metric": "requests", "window": "day", "limit": 10 }])).await;
    let r = app
        .admin(reqwest::Method::PATCH, "/api/v1/projects/kolkata", Some(json!({ "time_zone": "Asia/Kolkata" })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(Duration::from_secs(10), "the project's zone reaches the plan cache", || async {
        app.state.plans.project("kolkata").and_then(|p| p.time_zone.clone()).is_some()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    app.state.tasks.close();
    app.state.tasks.wait().await;
    app.state.tasks.reopen();
    app.state.ledger.flush().await.expect("flush");
    app.parts.redis.delete_all_keys().await.expect("lose Redis's counters");
    let raised = tollgate_store_distributed::rebuild_calendar_counters(
        &app.state.job_context(),
        &app.parts,
        tollgate_gateway::now_ms(),
    )
    .await
    .expect("rebuild");
    assert!(raised >= 1, "the day counter was raised");
    let r = app.chat(&key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-quota-remaining"].to_str().expect("header"), "6", "3 before, this one now");
    app.stop().await;
    schema.drop().await;
}

/// In distributed mode `/metrics` adds the Redis breaker and the key cache, and the
/// whole scrape still passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_the_breaker_and_the_key_cache_and_pass_promtool() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let a = start(config(&mock, &env.redis_url, &schema.url, &prefix)).await;
    let (key, _) = a.project_key("metrics", json!([{ "metric": "requests", "window": "month", "limit": 100 }])).await;
    assert_eq!(a.chat(&key).await.status, 200);
    let text = a.http.get(format!("{}/metrics", a.base)).send().await.expect("scrape").text().await.expect("body");
    assert!(text.contains("tollgate_breaker_open{breaker=\"redis_limiter\"} 0"), "{text}");
    // Whether the key just used is still cached depends on when its creation notice
    // arrived (a lookup racing an invalidation is not cached): the gauge, not a value.
    assert!(text.contains("tollgate_key_cache_entries{kind=\"known\"} "), "{text}");
    assert!(text.contains("tollgate_ledger_commit_duration_seconds_count"), "PostgreSQL commits are timed");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; scripts/test.sh installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
    a.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

/// Issue 18: instances register themselves; `/health/detailed` (operator token) lists
/// every running one and the holders of the job leases; a graceful stop deregisters;
/// retention runs on one instance at a time (its lease), taken over when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_register_and_one_holds_each_job_lease() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.analytics.retention_every_secs = 1;
    let (a, b) = (start(raw.clone()).await, start(raw).await);
    let ids = |r: &Reply| -> Vec<String> {
        r.body["cluster"]["instances"]
            .as_array()
            .map(|list| list.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), "both registered and retention leased", || async {
        let r = a.admin(reqwest::Method::GET, "/health/detailed", None).await;
        r.status == 200 && ids(&r).len() == 2 && r.body["cluster"]["leases"]["retention"].is_string()
    })
    .await;
    let r = a.admin(reqwest::Method::GET, "/health/detailed", None).await;
    let holder = r.body["cluster"]["leases"]["retention"].as_str().map(str::to_owned);
    assert_eq!(r.body["store"], "distributed");
    let (id_a, id_b) = (a.parts.instance_id.clone(), b.parts.instance_id.clone());
    let listed = ids(&r);
    assert!(listed.contains(&id_a) && listed.contains(&id_b), "{listed:?}");
    let holder = holder.expect("a retention holder");
    assert!(holder == id_a || holder == id_b, "the holder is one of them: {holder}");
    // A project token may not read it.
    let (key, _) = a.project_key("health", json!([])).await;
    drop(key);
    let project_token =
        a.admin(reqwest::Method::POST, "/api/v1/admin-tokens", Some(json!({ "project": "health", "name": "t" }))).await;
    assert_eq!(project_token.status, 201, "{:?}", project_token.body);
    let token = project_token.body["token"].as_str().expect("a project token");
    let r = a.send(a.http.get(format!("{}/health/detailed", a.base)).bearer_auth(token)).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    // The holder stops: it deregisters and the other takes retention over.
    let (stopping, staying) = if holder == id_a { (a, b) } else { (b, a) };
    stopping.stop().await;
    let staying_id = staying.parts.instance_id.clone();
    eventually(Duration::from_secs(10), "the other instance takes retention over", || async {
        let r = staying.admin(reqwest::Method::GET, "/health/detailed", None).await;
        ids(&r) == [staying_id.clone()] && r.body["cluster"]["leases"]["retention"] == staying_id.as_str()
    })
    .await;
    staying.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

/// A `tollgate serve` process on the distributed store, configured by environment.
fn serve_process(mock_url: &str, env: &Env, schema_url: &str, prefix: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_STORE", "distributed")
        .env("TOLLGATE_REDIS_URL", &env.redis_url)
        .env("TOLLGATE_REDIS_KEY_PREFIX", prefix)
        .env("TOLLGATE_DATABASE_URL", schema_url)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_COUNTER_REBUILD_SECS", "1")
        .env("OPENAI_BASE_URL", mock_url)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tollgate serve")
}

/// Issue 18: the holder of a job's lease is killed (SIGKILL: it cannot release it);
/// another instance takes the job over once the lease expires (three rebuild periods
/// here), and the lease has one holder throughout (PostgreSQL decides, on its clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_lease_holder_is_replaced_when_its_lease_expires() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let holder_sql = "SELECT coalesce(max(holder), '') FROM tollgate_leases WHERE name = 'counter-rebuild' \
                      AND expires_at_ms >= (extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    let text = |sql: &'static str| {
        let store = schema.store.clone();
        async move {
            let client = store.pool().get().await.expect("client");
            client.query_one(sql, &[]).await.map(|r| r.get::<_, String>(0)).unwrap_or_default()
        }
    };
    let mut first = serve_process(&mock, &env, &schema.url, &prefix);
    eventually(Duration::from_secs(60), "the first instance takes the rebuild lease", || async {
        !text(holder_sql).await.is_empty()
    })
    .await;
    let killed = text(holder_sql).await;
    let mut second = serve_process(&mock, &env, &schema.url, &prefix);
    eventually(Duration::from_secs(60), "the second instance registers", || async {
        schema.count("SELECT count(*) FROM tollgate_instances").await == 2
    })
    .await;
    assert_eq!(text(holder_sql).await, killed, "the live holder keeps its lease");
    first.kill().expect("SIGKILL the holder");
    let _ = first.wait();
    let took = eventually(Duration::from_secs(60), "the other instance takes the lease over", || async {
        let now = text(holder_sql).await;
        !now.is_empty() && now != killed
    })
    .await;
    eprintln!("the rebuild lease changed hands {took:?} after the holder was killed");
    let heir = text(holder_sql).await;
    let live: i64 = {
        let client = schema.store.pool().get().await.expect("client");
        client
            .query_one("SELECT count(*) FROM tollgate_instances WHERE id = $1", &[&heir])
            .await
            .expect("registry")
            .get(0)
    };
    assert_eq!(live, 1, "the heir is the registered survivor");
    let _ = second.kill();
    let _ = second.wait();
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

/// A webhook receiver counting what it gets (every request answered 200).
async fn webhook_receiver() -> (String, Arc<std::sync::Mutex<Vec<(String, Value)>>>) {
    use axum::http::HeaderMap;
    let got: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                sink.lock().expect("lock").push((id, body));
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_send_exactly_one_webhook_per_threshold() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.redis_timeout_ms = 5_000;
    raw.alerts.master_key = Some(Secret::new("42".repeat(32)));
    raw.alerts.allow_private_targets = true;
    raw.alerts.poll_ms = 20;
    let a = start(raw.clone()).await;
    let b = start(raw).await;
    let (key, _) = a.project_key("alerting", json!([{ "metric": "requests", "window": "month", "limit": 100 }])).await;
    eventually(Duration::from_secs(3), "B sees the new plan", || async {
        b.state.plans.get("plan-alerting").is_some()
    })
    .await;
    let (url, got) = webhook_receiver().await;
    let r = a
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "alerting", "kind": "webhook", "url": url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let rule = json!({ "project": "alerting", "channels": [r.body["id"]] });
    let r = a.admin(reqwest::Method::POST, "/api/v1/alerts/rules", Some(rule)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A reloaded its rules on the change; B reloads them now (else within rules_refresh_ms).
    b.state.alerts.reload_rules().await.expect("B reloads rules");

    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let instance = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move { instance.chat(&key).await.status }));
    }
    let mut ok = 0;
    for task in tasks {
        if task.await.expect("request task") == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 100);
    let delivered = "SELECT count(*) FROM alert_deliveries WHERE status = 'delivered'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while schema.count(delivered).await < 3 {
        assert!(Instant::now() < deadline, "three deliveries not made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(schema.count("SELECT count(*) FROM alert_events").await, 3, "one event per threshold");
    assert_eq!(schema.count("SELECT count(*) FROM alert_deliveries").await, 3);
    assert_eq!(schema.count("SELECT count(*) FROM alert_attempts").await, 3, "each sent by one instance, once");
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 3, "exactly one webhook per threshold across both instances: {got:?}");
    let mut thresholds: Vec<u64> =
        got.iter().map(|(_, b)| b["data"]["threshold_percent"].as_u64().unwrap_or(0)).collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [80, 90, 100]);
    let a = Arc::try_unwrap(a).ok().expect("sole owner of a");
    let b = Arc::try_unwrap(b).ok().expect("sole owner of b");
    a.stop().await;
    b.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

impl Instance {
    /// A deterministic chat request to a cached project; returns (status, x-tollgate-cache).
    async fn cached_chat(&self, key: &str) -> (u16, Option<String>) {
        let body =
            json!({ "model": "gpt-4o-mini", "temperature": 0, "messages": [{ "role": "user", "content": "Hello" }] });
        let r =
            self.send(self.http.post(format!("{}/v1/chat/completions", self.base)).bearer_auth(key).json(&body)).await;
        let outcome = r.headers.get("x-tollgate-cache").and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A miss is stored in a tracked task: wait for it.
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.state.tasks.reopen();
        (r.status, outcome)
    }

    async fn enable_cache(&self, project: &str) {
        let r = self
            .admin(
                reqwest::Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(json!({ "cache": { "enabled": true, "ttl_secs": 600 } })),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_exact_cache_entries_in_redis_with_their_ttl() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.redis_timeout_ms = 5_000;
    let a = start(raw.clone()).await;
    let b = start(raw).await;
    let (key, _) = a.project_key("shared", json!([{ "metric": "requests", "window": "month", "limit": 1000 }])).await;
    let (other, _) = a.project_key("other", json!([{ "metric": "requests", "window": "month", "limit": 1000 }])).await;
    a.enable_cache("shared").await;
    a.enable_cache("other").await;
    eventually(Duration::from_secs(3), "B sees both projects' cache on", || async {
        ["shared", "other"].iter().all(|p| b.state.plans.project(p).is_some_and(|s| s.cache.enabled))
    })
    .await;

    assert_eq!(a.cached_chat(&key).await, (200, Some("miss".into())));
    assert_eq!(b.cached_chat(&key).await, (200, Some("hit".into())), "B is answered from A's entry");
    assert_eq!(a.cached_chat(&key).await, (200, Some("hit".into())));
    assert_eq!(b.cached_chat(&other).await, (200, Some("miss".into())), "another project shares nothing");

    // One entry per project in Redis, under the deployment's prefix, expiring.
    let settings = tollgate_store_redis::RedisSettings {
        url: env.redis_url.clone(),
        cluster: false,
        timeout: Duration::from_secs(5),
    };
    let mut conn = tollgate_store_redis::RedisConn::connect(&settings).await.expect("redis");
    let entries: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}cache:*")).query_async(&mut conn).await.expect("KEYS");
    assert_eq!(entries.len(), 2, "{entries:?}");
    for entry in &entries {
        let ttl: i64 = redis::cmd("PTTL").arg(entry).query_async(&mut conn).await.expect("PTTL");
        assert!(ttl > 0 && ttl <= 600_000, "{entry}: {ttl}");
    }

    a.stop().await;
    b.stop().await;
    let hits = "SELECT count(*) FROM usage WHERE project_id = 'shared' AND usage_source = 'cache' AND cost_micros = 0 \
                AND uncached_cost_micros > 0";
    assert_eq!(schema.count(hits).await, 2, "both hits in the ledger at zero cost with their potential cost");
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_that_cannot_be_reached_is_a_miss_never_an_error() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    // Nothing listens on port 1: Redis (counters and cache) is unreachable from the start.
    let mut raw = config(&mock, "redis://127.0.0.1:1", &schema.url, &prefix);
    raw.on_store_error = tollgate_server::config::OnStoreError::Open;
    let a = start(raw).await;
    let (key, _) = a.project_key("down", json!([{ "metric": "requests", "window": "month", "limit": 1000 }])).await;
    a.enable_cache("down").await;
    for _ in 0..3 {
        assert_eq!(a.cached_chat(&key).await, (200, Some("miss".into())));
    }
    a.stop().await;
    schema.drop().await;
}

/// A chat request of the semantic tests: (status, x-tollgate-cache, x-tollgate-cache-kind),
/// once the instance's tracked tasks (the store of a miss) are done.
async fn semantic_chat(instance: &Instance, key: &str, user: &str) -> (u16, Option<String>, Option<String>) {
    let body = json!({ "model": "tollgate-test", "temperature": 0,
        "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": user }] });
    let r = instance
        .send(instance.http.post(format!("{}/v1/chat/completions", instance.base)).bearer_auth(key).json(&body))
        .await;
    let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let outcome = (r.status, header("x-tollgate-cache"), header("x-tollgate-cache-kind"));
    instance.state.tasks.close();
    instance.state.tasks.wait().await;
    instance.state.tasks.reopen();
    outcome
}

fn semantic_entries(instance: &Instance) -> usize {
    instance.state.semantic.as_ref().map_or(0, |s| s.index.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semantic_entry_stored_through_one_instance_is_a_hit_through_another() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.redis_timeout_ms = 5_000;
    raw.cache.semantic_embedding_model = mock::semantic::SEMANTIC_EMBEDDING_MODEL.to_owned();
    raw.prices.insert(
        mock::semantic::SEMANTIC_EMBEDDING_MODEL.into(),
        tollgate_pricing::PriceOverride {
            input_per_mtok_micros: 1_000_000,
            cached_input_per_mtok_micros: None,
            output_per_mtok_micros: 0,
            long_context: None,
        },
    );
    let a = start(raw.clone()).await;
    let b = start(raw.clone()).await;
    let (key, _) = a.project_key("semantic", json!([{ "metric": "requests", "window": "month", "limit": 1000 }])).await;
    let r = a
        .admin(
            reqwest::Method::PATCH,
            "/api/v1/projects/semantic",
            Some(json!({ "cache": { "enabled": true, "ttl_secs": 600, "semantic": true, "semantic_threshold": 0.9 } })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(Duration::from_secs(3), "B sees the project's semantic cache on", || async {
        b.state.plans.project("semantic").is_some_and(|s| s.cache.semantic)
    })
    .await;

    let miss = semantic_chat(&a, &key, "What is the capital of France?").await;
    assert_eq!(miss, (200, Some("miss".into()), None));
    assert_eq!(semantic_entries(&a), 1);
    assert_eq!(schema.count("SELECT count(*) FROM tollgate_semantic_cache").await, 1, "stored durably");
    // B learns of it from the change bus (or, failing that, its periodic catch-up).
    let took =
        eventually(Duration::from_secs(15), "B's index has A's entry", || async { semantic_entries(&b) == 1 }).await;
    eprintln!("A's semantic entry reached B's index in {took:?}");
    let hit = semantic_chat(&b, &key, "what is the capital of France, please?").await;
    assert_eq!(hit, (200, Some("hit".into()), Some("semantic".into())), "B answers the paraphrase from A's entry");

    // An instance started now loads the entry at start.
    let c = start(raw).await;
    eventually(Duration::from_secs(15), "C loads the entry at start", || async { semantic_entries(&c) == 1 }).await;
    let hit = semantic_chat(&c, &key, "what is the capital of France, please?").await;
    assert_eq!(hit.2.as_deref(), Some("semantic"));

    // A row whose notice never came (written straight to PostgreSQL) is found by the
    // periodic catch-up (its one step called here).
    let now = tollgate_store::clock::now_ms();
    let row = tollgate_cache::semantic::SemanticRow {
        key: tollgate_cache::CacheKey([7; 32]),
        project: "semantic".into(),
        partition: tollgate_cache::CacheKey([8; 32]),
        vector: vec![0.6, 0.8],
        entry: bytes::Bytes::from_static(b"not announced"),
        created_ms: now,
        expires_ms: now + 60_000,
    };
    tollgate_cache::semantic::SemanticStore::insert(&schema.store.semantic(), &row).await.expect("insert");
    let semantic = b.state.semantic.clone().expect("a semantic cache");
    assert_eq!(semantic.catch_up(tollgate_store::clock::now_ms()).await.expect("catch up"), 1);
    assert_eq!(semantic_entries(&b), 2);

    a.stop().await;
    b.stop().await;
    c.stop().await;
    let embeddings = "SELECT count(*) FROM usage WHERE project_id = 'semantic' AND endpoint = 'embeddings' \
                      AND status = 200 AND cost_micros > 0 AND NOT counted";
    assert_eq!(schema.count(embeddings).await, 3, "one priced embedding row per lookup, on each instance");
    let hits = "SELECT count(*) FROM usage WHERE project_id = 'semantic' AND usage_source = 'cache' \
                AND cost_micros = 0 AND uncached_cost_micros > 0";
    assert_eq!(schema.count(hits).await, 2, "both semantic hits at zero cost with their potential cost");
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
}

#[path = "support/jetstream.rs"]
mod jetstream;

/// Issue 18, the usage events sink on two instances: one of them (the holder of the
/// `usage-events` lease) publishes, and every record of the shared PostgreSQL ledger
/// reaches the stream exactly once, whichever instance answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_publish_every_ledger_record_once_through_one_sink() {
    let Some(env) = env() else { return };
    let url = jetstream::nats_url();
    let js = jetstream::require_jetstream(&url).await;
    let (stream, subject) = jetstream::unique_stream();
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let raw = || {
        let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
        raw.events.nats_url = Some(Secret::new(&url));
        raw.events.stream = stream.clone();
        raw.events.subject = subject.clone();
        raw.events.poll_interval_ms = 20;
        raw.events.batch = 8;
        raw
    };
    let a = start(raw()).await;
    let b = start(raw()).await;
    let (key, _) =
        a.project_key("events-acme", json!([{ "metric": "requests", "window": "month", "limit": 100000 }])).await;
    for i in 0..40 {
        let instance = if i % 2 == 0 { &a } else { &b };
        assert_eq!(instance.chat(&key).await.status, 200);
    }
    a.state.ledger.flush().await.expect("flush a");
    b.state.ledger.flush().await.expect("flush b");
    let rows = schema.count("SELECT count(*) FROM usage").await;
    assert_eq!(rows, 40, "every answer in the ledger");
    jetstream::eventually(Duration::from_secs(60), "every record in the stream", || async {
        jetstream::message_count(&js, &stream).await >= rows as u64
    })
    .await;
    let got = jetstream::read_stream(&js, &stream).await;
    assert_eq!(got.messages, rows as u64, "one message per ledger record");
    let ids: std::collections::HashSet<String> = {
        let client = schema.store.pool().get().await.expect("client");
        let found = client.query("SELECT id FROM usage", &[]).await.expect("ids");
        found.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    assert_eq!(got.ids.keys().cloned().collect::<std::collections::HashSet<_>>(), ids);
    assert!(got.ids.values().all(|n| *n == 1), "no record twice");
    assert!(got.bodies.values().all(|b| b["project"] == "events-acme" && b["status"] == 200));
    let seqs: Vec<i64> = got.order.iter().map(|id| got.bodies[id]["ledger_seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "published in the shared ledger's commit order: {seqs:?}");
    let stats = |i: &Instance| i.state.events.clone().expect("the sink is configured");
    let (sa, sb) = (stats(&a), stats(&b));
    let published = |t: &tollgate_events::Tailer| t.stats.published.load(Ordering::Relaxed);
    let duplicates = |t: &tollgate_events::Tailer| t.stats.duplicates.load(Ordering::Relaxed);
    assert_eq!(published(&sa) + published(&sb), rows as u64, "each record published by one sink, once");
    assert_eq!(duplicates(&sa) + duplicates(&sb), 0, "no sink published what the other did");
    let active: Vec<&Instance> =
        [&a, &b].into_iter().filter(|i| stats(i).stats.active.load(Ordering::Relaxed)).collect();
    assert_eq!(active.len(), 1, "one instance runs the sink");
    let holder = a.parts.events_lease.current_holder().await.expect("lease");
    assert_eq!(holder.as_deref(), Some(active[0].parts.instance_id.as_str()), "the lease holder publishes");
    let other = if std::ptr::eq(active[0], &a) { &sb } else { &sa };
    assert_eq!(published(other), 0, "the other instance publishes nothing");
    a.stop().await;
    b.stop().await;
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
    jetstream::delete_stream(&js, &stream).await;
}

/// A `tollgate serve` process on the distributed store with the usage events sink on,
/// listening on `port`; returns once it logs that it listens.
async fn serve_with_events(
    mock_url: &str,
    env: &Env,
    schema_url: &str,
    prefix: &str,
    port: u16,
    events: (&str, &str, &str),
) -> Child {
    use std::io::{BufRead, BufReader};
    let (url, stream, subject) = events;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_STORE", "distributed")
        .env("TOLLGATE_REDIS_URL", &env.redis_url)
        .env("TOLLGATE_REDIS_KEY_PREFIX", prefix)
        .env("TOLLGATE_DATABASE_URL", schema_url)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_INSTANCES", "2")
        .env("TOLLGATE_EVENTS__NATS_URL", url)
        .env("TOLLGATE_EVENTS__STREAM", stream)
        .env("TOLLGATE_EVENTS__SUBJECT", subject)
        .env("TOLLGATE_EVENTS__BATCH", "5")
        .env("TOLLGATE_EVENTS__POLL_INTERVAL_MS", "20")
        .env("OPENAI_BASE_URL", mock_url)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        // Keep draining after readiness so the child never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tollgate listening")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .expect("tollgate did not start within 60 s")
        .expect("tollgate exited before listening");
    child
}

/// Issue 18: the instance running the usage events sink is killed (SIGKILL: it cannot
/// release its lease); the other takes the `usage-events` lease over once it expires
/// and continues from the cursor stored in PostgreSQL: every record, answered by
/// either instance before or after the kill, is in the stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_events_sink_is_taken_over_and_every_record_is_published_once() {
    let Some(env) = env() else { return };
    let url = jetstream::nats_url();
    let js = jetstream::require_jetstream(&url).await;
    let (stream, subject) = jetstream::unique_stream();
    let events = (url.as_str(), stream.as_str(), subject.as_str());
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let free = || StdListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let bases: Vec<String> = (0..2).map(|_| format!("http://127.0.0.1:{}", free())).collect();
    let port = |base: &str| base.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
    let mut children = Vec::new();
    for base in &bases {
        children.push(serve_with_events(&mock, &env, &schema.url, &prefix, port(base), events).await);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let get = |base: String, path: &'static str| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await.expect("request");
            r.json::<Value>().await.expect("json")
        }
    };
    let post = |base: String, path: &'static str, body: Value| {
        let http = http.clone();
        async move {
            let r = http.post(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.expect("post");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.expect("json")
        }
    };
    post(bases[0].clone(), "/api/v1/projects", json!({ "id": "events-takeover" })).await;
    let limits = json!([{ "metric": "requests", "window": "month", "limit": 100000 }]);
    post(bases[0].clone(), "/api/v1/plans", json!({ "name": "plan-events-takeover", "limits": limits })).await;
    let key =
        post(bases[0].clone(), "/api/v1/keys", json!({ "project": "events-takeover", "plan": "plan-events-takeover" }))
            .await["key"]
            .as_str()
            .expect("key")
            .to_owned();
    let chat = |base: String| {
        let (http, key) = (http.clone(), key.clone());
        async move {
            let body = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] });
            let r = http.post(format!("{base}/v1/chat/completions")).bearer_auth(key).json(&body).send().await;
            assert_eq!(r.expect("chat").status(), 200);
        }
    };
    for i in 0..20 {
        chat(bases[i % 2].clone()).await;
    }
    let in_stream = |n: i64| {
        let js = js.clone();
        let stream = stream.clone();
        async move { jetstream::message_count(&js, &stream).await >= n as u64 }
    };
    eventually(Duration::from_secs(60), "the first records in the stream", || in_stream(20)).await;
    let health = get(bases[0].clone(), "/health/detailed").await;
    let holder = health["cluster"]["leases"]["usage-events"].as_str().expect("a holder").to_owned();
    let mut ids = Vec::new();
    for base in &bases {
        ids.push(
            get(base.clone(), "/health/detailed").await["cluster"]["this_instance"].as_str().expect("id").to_owned(),
        );
    }
    let killed = ids.iter().position(|id| *id == holder).expect("the holder is one of the two");
    let survivor = 1 - killed;
    children[killed].kill().expect("SIGKILL the sink's instance");
    let _ = children[killed].wait();
    for _ in 0..20 {
        chat(bases[survivor].clone()).await;
    }
    // The survivor's ledger batches are written within a moment of the answers
    // (durability "sync"): the count is final once the answers are in.
    let rows = schema.count("SELECT count(*) FROM usage").await;
    assert_eq!(rows, 40, "every answer in the ledger");
    let took = eventually(Duration::from_secs(90), "the survivor takes the sink over and publishes the rest", || {
        in_stream(rows)
    })
    .await;
    eprintln!("the usage events sink changed hands and caught up {took:?} after the kill");
    let got = jetstream::read_stream(&js, &stream).await;
    assert_eq!(got.messages, rows as u64, "the stream holds exactly the ledger's records");
    assert!(got.ids.values().all(|n| *n == 1), "no record twice");
    let stored: std::collections::HashSet<String> = {
        let client = schema.store.pool().get().await.expect("client");
        client.query("SELECT id FROM usage", &[]).await.expect("ids").iter().map(|r| r.get::<_, String>(0)).collect()
    };
    assert_eq!(got.ids.keys().cloned().collect::<std::collections::HashSet<_>>(), stored);
    let health = get(bases[survivor].clone(), "/health/detailed").await;
    assert_eq!(health["cluster"]["leases"]["usage-events"], ids[survivor].as_str(), "{health}");
    assert_eq!(health["events"]["active"], true, "{health}");
    let _ = children[survivor].kill();
    let _ = children[survivor].wait();
    schema.drop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
    jetstream::delete_stream(&js, &stream).await;
}

/// Bring your own key on PostgreSQL: without a master key nothing is stored (409
/// `master_key_missing`); with one, the key is sealed in PostgreSQL (its text in no
/// row), used by the instance it was stored through at once and by another within
/// `byok.cache_ttl_ms`, and after its deletion the operator's key is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_keys_are_sealed_in_postgresql_and_used_by_every_instance() {
    let Some(env) = env() else { return };
    let schema = Schema::create(&env).await;
    let mock = spawn_mock().await;
    let prefix = format!("{}:", unique("tgtest"));
    let mut raw = config(&mock, &env.redis_url, &schema.url, &prefix);
    raw.redis_timeout_ms = 5_000;
    const PROJECT_KEY: &str = "sk-byok-PGCANARY-0123456789abcdef";

    // No master key: the distributed store cannot make one, so storing is refused.
    let keyless = start(raw.clone()).await;
    keyless.project_key("byok-pg", json!([{ "metric": "requests", "window": "month", "limit": 1000 }])).await;
    let put = json!({ "api_key": PROJECT_KEY });
    let r =
        keyless.admin(reqwest::Method::PUT, "/api/v1/projects/byok-pg/provider-keys/openai", Some(put.clone())).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "master_key_missing", "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("secrets.master_key")), "{:?}", r.body);
    assert_eq!(schema.count("SELECT count(*) FROM tollgate_provider_keys").await, 0);
    keyless.stop().await;

    raw.secrets.master_key = Some(Secret::new("5a".repeat(32)));
    raw.byok.cache_ttl_ms = Some(200);
    let a = start(raw.clone()).await;
    let b = start(raw).await;
    let r = a
        .admin(reqwest::Method::POST, "/api/v1/keys", Some(json!({ "project": "byok-pg", "plan": "plan-byok-pg" })))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let key = r.body["key"].as_str().expect("key").to_owned();
    assert_eq!(b.chat(&key).await.status, 200, "B caches that the project has no key of its own");

    let r = a.admin(reqwest::Method::PUT, "/api/v1/projects/byok-pg/provider-keys/openai", Some(put)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["hint"], "sk-…cdef", "{:?}", r.body);
    assert!(!r.body.to_string().contains(PROJECT_KEY));
    // The mock knows only the operator's key: its 401 says the project's key was sent.
    let r = a.chat(&key).await;
    assert_eq!(r.status, 401, "through A at once: {:?}", r.body);
    eventually(Duration::from_secs(5), "B uses the project's key", || async { b.chat(&key).await.status == 401 }).await;

    let client = schema.store.pool().get().await.expect("client");
    let rows = client.query("SELECT row_to_json(k)::text FROM tollgate_provider_keys k", &[]).await.expect("rows");
    assert_eq!(rows.len(), 1);
    for row in rows {
        let text: String = row.get(0);
        assert!(!text.contains(PROJECT_KEY) && !text.contains("PGCANARY"), "a key in clear in PostgreSQL: {text}");
        assert!(text.contains("\"v1:"), "sealed: {text}");
    }

    let r = b.admin(reqwest::Method::DELETE, "/api/v1/projects/byok-pg/provider-keys/openai", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(b.chat(&key).await.status, 200, "B forgot it at once: the operator's key again");
    eventually(Duration::from_secs(5), "A uses the operator's key again", || async {
        a.chat(&key).await.status == 200
    })
    .await;
    a.stop().await;
    b.stop().await;
    delete_redis_prefix(&env.redis_url, &prefix).await;
    schema.drop().await;
}
