//! The Redis limiter against a real Redis (`TOLLGATE_TEST_REDIS_URL`, which
//! `scripts/test.sh` sets): the shared conformance suite, one test per scenario, each
//! under a key prefix of its own; then what only this backend can be asked: decisions
//! on Redis's clock, calendar arithmetic in Lua agreeing with `tollgate_core`, the
//! same decisions as the embedded limiter on random traffic, script reload after
//! `SCRIPT FLUSH`, key expiry and hash tags.
//!
//! Without the variable every test prints a notice and passes; with it set and Redis
//! unreachable, every test fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_core::calendar::{MS_PER_DAY, day_start, next_month_start};
use tollgate_core::{Amounts, LimitSpec, Metric, Window};
use tollgate_store::conformance::{self, NOW};
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest};
use tollgate_store_embedded::EmbeddedLimiter;
use tollgate_store_redis::{CalendarTarget, KeySpace, RedisConn, RedisLimiter, RedisSettings};

const TIMEOUT: Duration = Duration::from_secs(5);

fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("tgtest:{}:{nanos:x}:{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A limiter under a fresh prefix, or `None` (with a notice) when no Redis is
/// configured. Panics when one is configured and does not answer.
async fn redis_limiter(clock_from_request: bool) -> Option<Arc<RedisLimiter>> {
    // Never skipped: without the service these tests fail rather than pass.
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let settings = RedisSettings { url: url.clone(), cluster: false, timeout: TIMEOUT };
    let conn = RedisConn::connect(&settings).await.expect("redis connection settings");
    if let Err(e) = conn.ping(TIMEOUT).await {
        panic!("TOLLGATE_TEST_REDIS_URL={url} is set but Redis does not answer: {e}");
    }
    let limiter =
        RedisLimiter::new(conn, KeySpace::new(unique_prefix()), TIMEOUT).with_clock_from_request(clock_from_request);
    Some(Arc::new(limiter))
}

async fn cleanup(limiter: &RedisLimiter) {
    limiter.delete_all_keys().await.expect("delete test keys");
}

macro_rules! conformance_scenarios {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let Some(limiter) = redis_limiter(true).await else { return };
            conformance::limiter::$name(limiter.clone()).await;
            cleanup(&limiter).await;
        }
    )+};
}

mod conformance_suite {
    use super::*;
    conformance_scenarios!(
        exact_admission_under_concurrency,
        all_or_nothing,
        binding_refusal_is_reported,
        zero_amount_limits_are_reported,
        settle_adjusts_once,
        settle_with_zero_refunds,
        reserve_without_hold_is_final,
        repeated_reserve_does_not_double_charge,
        retry_and_reset_times,
        apply_charges_without_checking,
        a_reservation_lives_as_long_as_its_hold,
        prune_drops_idle_counters,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_whole_group_on_one_limiter() {
        let Some(limiter) = redis_limiter(true).await else { return };
        conformance::run_limiter(limiter.clone()).await;
        cleanup(&limiter).await;
    }
}

fn item(subject: &str, metric: Metric, window: Window, limit: u64) -> LimitItem {
    LimitItem::new(subject, LimitSpec::new(metric, window, limit))
}

fn reserve<'a>(id: &'a str, items: &'a [LimitItem], amounts: Amounts, now_ms: i64, hold: bool) -> ReserveRequest<'a> {
    ReserveRequest {
        partition: "p",
        request_id: id,
        items,
        amounts,
        now_ms,
        hold,
        hold_ms: tollgate_store::DEFAULT_RESERVATION_TTL_MS,
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Without the test clock, the caller's `now_ms` is ignored: two gateways with clocks
/// a year apart count in the same windows, and resets follow Redis's clock.
#[tokio::test]
async fn decisions_follow_redis_time_not_the_callers_clock() {
    let Some(limiter) = redis_limiter(false).await else { return };
    let minute = item("key:clock", Metric::Requests, Window::Minute, 2);
    let month = item("key:clock", Metric::Requests, Window::Month, 100);
    let items = [minute, month];
    let before = wall_ms();
    let a = limiter.reserve(reserve("clock-1", &items, Amounts::ONE_REQUEST, 0, false)).await.expect("reserve");
    let b = limiter
        .reserve(reserve("clock-2", &items, Amounts::ONE_REQUEST, before + 365 * MS_PER_DAY, false))
        .await
        .expect("reserve");
    let after = wall_ms();
    assert!(a.allowed() && b.allowed());
    assert_eq!(b.statuses[0].used, 2, "both charges landed in one window despite the skew");
    let reset = b.statuses[0].reset_at_ms;
    assert!(reset > before && reset <= after + 61_000, "minute reset {reset} follows Redis time");
    let month_end = b.statuses[1].reset_at_ms;
    assert!(
        month_end == next_month_start(before) || month_end == next_month_start(after),
        "month reset {month_end} is the next month start by Redis time"
    );
    let c = limiter.reserve(reserve("clock-3", &items, Amounts::ONE_REQUEST, 42, false)).await.expect("reserve");
    let refusal = c.refused.expect("third request in the minute is refused");
    assert_eq!(refusal.index, 0);
    let retry = refusal.retry_at_ms.expect("fits later");
    assert!(retry > before && retry <= after + 61_000);

    // Held reservations and settlement on Redis time as well.
    let held = limiter.reserve(reserve("clock-4", &items[1..], Amounts::requests(5), 7, true)).await.expect("hold");
    assert_eq!(held.statuses[0].used, 7, "2 admitted + 5 held (the refused one charged nothing)");
    limiter
        .settle(SettleRequest { partition: "p", request_id: "clock-4", actual: Amounts::ONE_REQUEST, now_ms: 0 })
        .await
        .expect("settle");
    let peek = limiter.peek("p", &items[1..], Amounts::default(), 0).await.expect("peek");
    assert_eq!(peek.statuses[0].used, 3, "settled from 5 to 1");
    cleanup(&limiter).await;
}

/// Day and month windows computed in Lua agree with `tollgate_core::calendar` over
/// centuries of instants, month ends and leap days included.
#[tokio::test]
async fn lua_calendar_agrees_with_core() {
    let Some(limiter) = redis_limiter(true).await else { return };
    let month = item("key:cal", Metric::Requests, Window::Month, 1);
    let day = item("key:cal", Metric::Requests, Window::Day, 1);
    let items = [month, day];
    let mut instants = vec![0, 1, MS_PER_DAY - 1, NOW];
    // Month and year boundaries, leap days (2000, 2024, 2100 is not one).
    for text in [
        "2000-02-29T12:00:00Z",
        "2024-02-29T23:59:59.999Z",
        "2024-03-01T00:00:00Z",
        "2100-02-28T23:59:59.999Z",
        "2100-03-01T00:00:00Z",
        "2026-12-31T23:59:59.999Z",
        "2027-01-01T00:00:00Z",
    ] {
        instants.push(tollgate_core::calendar::parse_timestamp(text).expect("timestamp"));
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        instants.push((x % 4_102_444_800_000) as i64); // up to 2100
    }
    for t in instants {
        let peek = limiter.peek("p", &items, Amounts::default(), t).await.expect("peek");
        assert_eq!(peek.statuses[0].reset_at_ms, next_month_start(t), "month end of {t}");
        assert_eq!(peek.statuses[1].reset_at_ms, day_start(t) + MS_PER_DAY, "day end of {t}");
    }
}

/// A tiny deterministic generator (no dependency for one test).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// On random traffic (reserve with and without hold, settle, peek, apply; several
/// limits sharing counters; time moving by milliseconds to days) the Redis limiter
/// makes exactly the decisions of the embedded one: same admissions, same used,
/// remaining, reset and retry times.
#[tokio::test]
async fn same_decisions_as_the_embedded_limiter() {
    let Some(redis) = redis_limiter(true).await else { return };
    let embedded = EmbeddedLimiter::new();
    let pool = [
        item("key:a", Metric::Requests, Window::Minute, 5),
        item("key:a", Metric::Requests, Window::Hour, 20),
        item("key:a", Metric::TotalTokens, Window::Minute, 300),
        item("key:a", Metric::TotalTokens, Window::Day, 2_000),
        item("key:a", Metric::Requests, Window::Month, 60),
        item("key:b", Metric::CostMicros, Window::Month, 5_000),
        item("key:b", Metric::Requests, Window::Minute, 3),
        item("key:b", Metric::Requests, Window::Minute, 4), // shares key:b's minute counter
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut now = NOW - 3 * 60_000;
    let mut held: Vec<String> = Vec::new();
    for step in 0..1_500 {
        now += match rng.below(10) {
            0..=5 => rng.below(800) as i64,
            6..=8 => rng.below(20_000) as i64,
            _ => rng.below(2 * MS_PER_DAY as u64) as i64,
        };
        let mut items: Vec<LimitItem> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            items.push(pool[rng.below(pool.len() as u64) as usize].clone());
        }
        let amounts = Amounts {
            requests: rng.below(3),
            input_tokens: rng.below(150),
            output_tokens: rng.below(100),
            cost_micros: rng.below(900),
        };
        match rng.below(10) {
            0..=5 => {
                let id = format!("diff-{step}");
                let hold = rng.below(2) == 0;
                let request = reserve(&id, &items, amounts, now, hold);
                let want = embedded.reserve(request.clone()).await.expect("embedded reserve");
                let got = redis.reserve(request).await.expect("redis reserve");
                assert_eq!(got, want, "step {step}: reserve {id} at {now} of {items:?} with {amounts:?}");
                if hold && want.allowed() {
                    held.push(id);
                }
            }
            6 | 7 if !held.is_empty() => {
                let id = held.swap_remove(rng.below(held.len() as u64) as usize);
                let settle = SettleRequest { partition: "p", request_id: &id, actual: amounts, now_ms: now };
                embedded.settle(settle.clone()).await.expect("embedded settle");
                redis.settle(settle).await.expect("redis settle");
            }
            8 => {
                embedded.apply("p", &items, amounts, now).await.expect("embedded apply");
                redis.apply("p", &items, amounts, now).await.expect("redis apply");
            }
            _ => {
                let want = embedded.peek("p", &items, amounts, now).await.expect("embedded peek");
                let got = redis.peek("p", &items, amounts, now).await.expect("redis peek");
                assert_eq!(got, want, "step {step}: peek at {now} of {items:?} with {amounts:?}");
            }
        }
    }
    // Every counter agrees at the end.
    let want = embedded.peek("p", &pool, Amounts::default(), now).await.expect("embedded peek");
    let got = redis.peek("p", &pool, Amounts::default(), now).await.expect("redis peek");
    assert_eq!(got, want);
    cleanup(&redis).await;
}

/// The scripts come back by themselves after `SCRIPT FLUSH` (EVALSHA, NOSCRIPT, load).
#[tokio::test]
async fn scripts_reload_after_script_flush() {
    let Some(limiter) = redis_limiter(true).await else { return };
    let items = [item("key:flush", Metric::Requests, Window::Minute, 10)];
    limiter.preload().await.expect("preload");
    assert!(limiter.reserve(reserve("f1", &items, Amounts::ONE_REQUEST, NOW, true)).await.expect("reserve").allowed());
    let mut conn = limiter.connection().clone();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.expect("script flush");
    let d = limiter.reserve(reserve("f2", &items, Amounts::ONE_REQUEST, NOW, true)).await.expect("reserve again");
    assert_eq!(d.statuses[0].used, 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.expect("script flush");
    limiter
        .settle(SettleRequest { partition: "p", request_id: "f2", actual: Amounts::default(), now_ms: NOW })
        .await
        .expect("settle after flush");
    let peek = limiter.peek("p", &items, Amounts::default(), NOW).await.expect("peek");
    assert_eq!(peek.statuses[0].used, 1);
    cleanup(&limiter).await;
}

/// Every key carries the partition's hash tag and an expiry no later than its
/// window's end; a held reservation expires when its request's hold runs out.
#[tokio::test]
async fn keys_carry_the_hash_tag_and_expire_with_their_window() {
    let Some(limiter) = redis_limiter(false).await else { return };
    let items = [
        item("key:ttl", Metric::Requests, Window::Minute, 10),
        item("key:ttl", Metric::Requests, Window::Hour, 10),
        item("key:ttl", Metric::Requests, Window::Day, 10),
        item("key:ttl", Metric::Requests, Window::Month, 10),
    ];
    let request = ReserveRequest {
        partition: "tag-project",
        request_id: "ttl-1",
        items: &items,
        amounts: Amounts::ONE_REQUEST,
        now_ms: 0,
        hold: true,
        hold_ms: 2 * 60 * 60 * 1_000,
    };
    assert!(limiter.reserve(request).await.expect("reserve").allowed());
    let mut conn = limiter.connection().clone();
    let pattern = format!("{}*", limiter.keys().prefix());
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.expect("keys");
    assert_eq!(keys.len(), 5, "four counters and one reservation: {keys:?}");
    let now = wall_ms();
    for key in &keys {
        assert!(key.contains("{tag-project}"), "{key} lacks the hash tag");
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.expect("pttl");
        let bound = if key.contains(":r:") {
            // A reservation lives as long as its request's hold, not a fixed 10 minutes.
            assert!(ttl > tollgate_store::DEFAULT_RESERVATION_TTL_MS, "{key}: ttl {ttl} below the request's hold");
            2 * 60 * 60 * 1_000
        } else if key.contains("|minute|") {
            61_000
        } else if key.contains("|hour|") {
            3_660_000
        } else if key.contains("|day|") {
            day_start(now) + MS_PER_DAY - now
        } else {
            next_month_start(now) - now
        };
        assert!(ttl > 0 && ttl <= bound + 1_000, "{key}: ttl {ttl} not within {bound}");
    }
    cleanup(&limiter).await;
}

/// The rebuild job's primitive raises a calendar counter to the ledger's total and
/// never lowers one.
#[tokio::test]
async fn raise_calendar_counters_never_lowers() {
    let Some(limiter) = redis_limiter(true).await else { return };
    let month = item("key:raise", Metric::Requests, Window::Month, 100);
    let day = item("key:raise", Metric::Requests, Window::Day, 100);
    let minute = item("key:raise", Metric::Requests, Window::Minute, 100);
    let items = [month.clone(), day.clone()];
    limiter.apply("p", &items, Amounts::requests(10), NOW).await.expect("apply");
    let target = |item: &LimitItem, amount: u64| {
        let (window_start_ms, window_end_ms) = item.calendar_bounds(NOW);
        CalendarTarget { item: item.clone(), window_start_ms, window_end_ms, amount }
    };
    let raised = limiter
        .raise_calendar_counters("p", &[target(&month, 25), target(&day, 4), target(&minute, 99)], NOW)
        .await
        .expect("raise");
    assert_eq!(raised, 1, "only the month was below its target; minute windows are not raised");
    let peek = limiter.peek("p", &items, Amounts::default(), NOW).await.expect("peek");
    assert_eq!((peek.statuses[0].used, peek.statuses[1].used), (25, 10));
    // A target for a window that is over by now lands nowhere.
    let stale = CalendarTarget {
        item: day.clone(),
        window_start_ms: day_start(NOW) - MS_PER_DAY,
        window_end_ms: day_start(NOW),
        amount: 50,
    };
    assert_eq!(limiter.raise_calendar_counters("p", &[stale], NOW).await.expect("raise stale"), 0);
    cleanup(&limiter).await;
}

/// A limiter on a fresh local Redis Cluster (three masters with a replica each,
/// `tollgate_testkit::RedisCluster`, started by the test itself: never skipped).
async fn cluster_limiter() -> (tollgate_testkit::RedisCluster, Arc<RedisLimiter>) {
    let cluster = tokio::task::spawn_blocking(tollgate_testkit::RedisCluster::start).await.expect("cluster start");
    let settings = RedisSettings { url: cluster.url(), cluster: true, timeout: TIMEOUT };
    let conn = match RedisConn::connect(&settings).await {
        Ok(conn) => conn,
        Err(e) => panic!("the local Redis Cluster at {} does not answer: {e}", cluster.url()),
    };
    let limiter =
        Arc::new(RedisLimiter::new(conn, KeySpace::new(unique_prefix()), TIMEOUT).with_clock_from_request(true));
    limiter.preload().await.expect("scripts load on the cluster");
    (cluster, limiter)
}

fn cluster_request<'a>(partition: &'a str, request_id: &'a str, items: &'a [LimitItem]) -> ReserveRequest<'a> {
    ReserveRequest {
        partition,
        request_id,
        items,
        amounts: Amounts::ONE_REQUEST,
        now_ms: NOW,
        hold: false,
        hold_ms: tollgate_store::DEFAULT_RESERVATION_TTL_MS,
    }
}

/// The whole limiter suite on a Redis Cluster; several partitions land on different
/// masters and each decision stays in one slot (one hash tag per partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_group_on_a_redis_cluster() {
    let (cluster, limiter) = cluster_limiter().await;
    conformance::run_limiter(limiter.clone()).await;
    let masters: std::collections::BTreeSet<u16> = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
        .iter()
        .map(|p| cluster.master_of(&format!("{{{p}}}")))
        .collect();
    assert!(masters.len() > 1, "the partitions are spread over several masters");
    for partition in ["alpha", "beta", "gamma", "delta"] {
        let items =
            [item("key:c", Metric::Requests, Window::Minute, 1), item("key:c", Metric::Requests, Window::Month, 5)];
        let request = ReserveRequest { hold: true, ..cluster_request(partition, "cluster-1", &items) };
        assert!(limiter.reserve(request.clone()).await.expect("reserve").allowed());
        let again = ReserveRequest { request_id: "cluster-2", ..request };
        assert!(!limiter.reserve(again).await.expect("reserve").allowed(), "{partition}: minute limit of 1");
        let settle = SettleRequest { partition, request_id: "cluster-1", actual: Amounts::default(), now_ms: NOW };
        limiter.settle(settle).await.expect("settle");
        let peek = limiter.peek(partition, &items, Amounts::default(), NOW).await.expect("peek");
        assert_eq!((peek.statuses[0].used, peek.statuses[1].used), (0, 0), "{partition}: refunded");
    }
}

/// A master dies (SIGKILL): decisions on its slots fail (the caller's breaker and
/// fail mode apply) or wait, never count twice; other masters' partitions keep
/// deciding; once its replica is promoted, exact counting resumes on that slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_failover_pauses_its_slots_then_exact_counting_resumes() {
    let (mut cluster, limiter) = cluster_limiter().await;
    let items = [item("key:f", Metric::Requests, Window::Month, 1_000_000)];
    let victim = "alpha";
    let victim_master = cluster.master_of("{alpha}");
    let other = ["beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
        .into_iter()
        .find(|p| cluster.master_of(&format!("{{{p}}}")) != victim_master)
        .expect("a partition on another master");
    for i in 0..10 {
        let id = format!("before-{i}");
        assert!(limiter.reserve(cluster_request(victim, &id, &items)).await.expect("reserve").allowed());
    }
    let killed = cluster.kill_master_of("{alpha}");
    // Another master's partition decides throughout.
    let id = "other-during".to_owned();
    assert!(limiter.reserve(cluster_request(other, &id, &items)).await.expect("other partition").allowed());
    cluster.wait_failover("{alpha}", killed);
    // The promoted replica decides; from here every charge counts exactly once.
    let mut start = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while start.is_none() {
        match limiter.peek(victim, &items, Amounts::default(), NOW).await {
            Ok(peek) => start = Some(peek.statuses[0].used),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "the slot never came back: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let start = start.expect("a count after the failover");
    assert!(start <= 10, "nothing counted twice: {start}");
    for i in 0..25 {
        let id = format!("after-{i}");
        assert!(limiter.reserve(cluster_request(victim, &id, &items)).await.expect("reserve after failover").allowed());
    }
    let peek = limiter.peek(victim, &items, Amounts::default(), NOW).await.expect("peek");
    assert_eq!(peek.statuses[0].used, start + 25, "exact counting resumed on the promoted replica");
}

/// The counter rebuild's lease (issue 10, item 17): one holder at a time; the holder
/// renews it, another cannot take it until it is released (or expires), and then can.
#[tokio::test]
async fn a_lease_has_one_holder_at_a_time() {
    let Some(limiter) = redis_limiter(false).await else { return };
    let key = limiter.keys().lease("counter-rebuild");
    let ttl = Duration::from_secs(60);
    let lease = |holder: &str| {
        tollgate_store_redis::Lease::new(limiter.connection().clone(), key.clone(), holder.to_owned(), ttl, TIMEOUT)
    };
    let (a, b) = (lease("instance-a"), lease("instance-b"));
    assert!(a.acquire_or_renew().await.expect("a takes it"), "a free lease is taken");
    assert!(!b.acquire_or_renew().await.expect("b tries"), "a held lease is not taken by another");
    assert!(a.acquire_or_renew().await.expect("a renews"), "the holder renews it");
    let mut conn = limiter.connection().clone();
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("pttl");
    assert!(pttl > 0 && pttl <= 60_000, "the lease expires by itself: {pttl}");
    b.release().await.expect("b releases what it does not hold");
    assert!(!b.acquire_or_renew().await.expect("b tries again"), "only the holder can release it");
    a.release().await.expect("a releases");
    assert!(b.acquire_or_renew().await.expect("b takes it"), "a released lease is taken at once");
    assert!(!a.acquire_or_renew().await.expect("a tries"), "and is b's now");
    cleanup(&limiter).await;
}
