//! The limiter on Redis: one Lua script per decision, one per settlement.
//!
//! `reserve` sends every item of a request to `decide.lua` in one `EVALSHA`: the script
//! checks all of them, charges all of them only if all fit, and records the charges
//! under the request id when the reservation is held. `settle` sends the actual
//! amounts to `settle.lua`, which applies `actual - reserved` to the windows charged,
//! while they still count, and deletes the record (so a second settle does nothing).
//! Redis runs a script atomically, so N concurrent requests on any number of gateway
//! instances against M remaining admit exactly min(N, M).
//!
//! Time: by default the scripts read Redis's `TIME`, so every instance decides on the
//! same clock whatever the drift of its own. [`RedisLimiter::with_clock_from_request`]
//! makes them use the caller's `now_ms` instead, which only the conformance suite
//! (fixed instants in 2023) and tests need. `apply` always charges at the time it is
//! given: it replays history.
//!
//! Numbers travel as integers but Lua computes in doubles: limits and amounts are
//! clamped to 2^53, which no real limit reaches.
//!
//! `prune` has nothing to do (keys expire by themselves) and returns 0.
//! `held_reservations` counts the reservations this instance made and has not seen
//! settled, forgetting each when its hold (`ReserveRequest::hold_ms`) runs out, as Redis does: across
//! instances it is a per-instance figure, which is what the in-flight overrun bound of
//! one instance needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;
use tollgate_core::{Amounts, Decision, LimitStatus, Refusal};
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest, StoreError, StoreResult};

use crate::keys::{KeySpace, metric_code, window_code};
use crate::{RedisConn, bounded};

/// The hold of a reservation made without a deadline of its own (tests, tools); a
/// proxied request's reservation lives `ReserveRequest::hold_ms`, derived from its
/// total deadline. Redis forgets a reservation when its hold runs out (its charge
/// then stays as reserved).
pub use tollgate_store::DEFAULT_RESERVATION_TTL_MS as RESERVATION_TTL_MS;

// The scripts do no calendar arithmetic: day and month bounds, in each limit's time
// zone, are computed here (`tollgate_core::Zone`) and passed in.
const DECIDE: &str = include_str!("lua/decide.lua");
const SETTLE: &str = include_str!("lua/settle.lua");
const RAISE: &str = include_str!("lua/raise.lua");

/// Largest integer a Lua double holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// One calendar counter the rebuild job wants raised to at least `amount` in the
/// window `[window_start_ms, window_end_ms)` (in the item's zone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalendarTarget {
    pub item: LimitItem,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub amount: u64,
}

/// The edges argument of `decide.lua` for `item` at `ms`: four calendar window edges
/// in the item's zone, or nothing for a sliding window.
fn edges(item: &LimitItem, ms: i64) -> String {
    if item.spec.window.is_rate() {
        return String::new();
    }
    let [a, b, c, d] = item.zone.edges(item.spec.window, ms);
    format!("{a},{b},{c},{d}")
}

/// The Redis limiter. Cheap to share behind an `Arc`.
pub struct RedisLimiter {
    conn: RedisConn,
    keys: KeySpace,
    timeout: Duration,
    clock_from_request: bool,
    decide: Script,
    settle: Script,
    raise: Script,
    /// Reservations this instance holds: request id -> when.
    held: Mutex<HashMap<String, Instant>>,
    /// Redis's clock minus ours, in ms, as last learned from a script that found its
    /// time outside the calendar edges sent (0 until then).
    clock_offset: AtomicI64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.keys.prefix())
            .field("clock_from_request", &self.clock_from_request)
            .finish_non_exhaustive()
    }
}

fn clamp(value: u64) -> u64 {
    value.min(MAX_EXACT)
}

fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

impl RedisLimiter {
    /// A limiter on `conn`, with every key under `keys`, each call bounded by
    /// `timeout`.
    pub fn new(conn: RedisConn, keys: KeySpace, timeout: Duration) -> Self {
        Self {
            conn,
            keys,
            timeout,
            clock_from_request: false,
            decide: Script::new(DECIDE),
            settle: Script::new(SETTLE),
            raise: Script::new(RAISE),
            held: Mutex::new(HashMap::new()),
            clock_offset: AtomicI64::new(0),
        }
    }

    /// Decide on the caller's `now_ms` instead of Redis's clock. For tests that pass
    /// fixed instants (the conformance suite); a deployment keeps Redis time.
    pub fn with_clock_from_request(mut self, yes: bool) -> Self {
        self.clock_from_request = yes;
        self
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    pub fn connection(&self) -> &RedisConn {
        &self.conn
    }

    /// Loads the scripts (so the first request finds them cached) and checks that
    /// Redis answers.
    pub async fn preload(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        for script in [&self.decide, &self.settle, &self.raise] {
            bounded(self.timeout, script.prepare_invoke().load_async(&mut conn)).await?;
        }
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `script` by its hash (`EVALSHA`, loading it on `NOSCRIPT`). Should Redis
    /// lose it again between the load and the retry (a `SCRIPT FLUSH`, a failover to
    /// a replica that never saw it), the call falls back to `EVAL` with the source.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        source: &'static str,
        keys: &[String],
        args: &[String],
    ) -> StoreResult<T> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let eval = redis::cmd("EVAL").arg(source).arg(keys.len()).arg(keys).arg(args).to_owned();
                bounded(self.timeout, eval.query_async(&mut conn)).await
            }
            Ok(Err(e)) => Err(crate::redis_error(e)),
            Err(_) => {
                Err(StoreError::unavailable(format!("redis did not answer within {} ms", self.timeout.as_millis())))
            }
        }
    }

    /// One call of `decide.lua`; returns the raw reply.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        op: &str,
        partition: &str,
        request_id: &str,
        items: &[LimitItem],
        amounts: Amounts,
        now_ms: i64,
        hold: Option<i64>,
    ) -> StoreResult<Vec<i64>> {
        // Calendar edges are computed around the time the script will decide at:
        // Redis's clock (as last seen from here) unless the caller's time is used.
        let redis_clock = !self.clock_from_request && op != "apply";
        let mut around =
            if redis_clock { now_ms.saturating_add(self.clock_offset.load(Ordering::Relaxed)) } else { now_ms };
        let mut keys = Vec::with_capacity(1 + items.len());
        keys.push(self.keys.reservation(partition, request_id));
        let mut args = Vec::with_capacity(6 + 5 * items.len());
        args.extend([
            op.to_owned(),
            flag(self.clock_from_request).to_owned(),
            now_ms.to_string(),
            flag(hold.is_some()).to_owned(),
            hold.unwrap_or(0).max(1).to_string(),
            items.len().to_string(),
        ]);
        for item in items {
            keys.push(self.keys.counter(partition, item));
            args.extend([
                window_code(item.spec.window).to_owned(),
                clamp(item.spec.limit).to_string(),
                clamp(amounts.get(item.spec.metric)).to_string(),
                metric_code(item.spec.metric).to_owned(),
                edges(item, around),
            ]);
        }
        let mut reply: Vec<i64> = self.run(&self.decide, DECIDE, &keys, &args).await?;
        if let [-1, redis_now] = reply[..] {
            // Redis's clock is more than a window away from ours: learn the offset and
            // decide again with edges around Redis's time (once: the script changed
            // nothing).
            self.clock_offset.store(redis_now.saturating_sub(now_ms), Ordering::Relaxed);
            around = redis_now;
            for (i, item) in items.iter().enumerate() {
                args[6 + 5 * i + 4] = edges(item, around);
            }
            reply = self.run(&self.decide, DECIDE, &keys, &args).await?;
            if reply.first() == Some(&-1) {
                return Err(StoreError::internal("the limiter script found its clock outside the windows twice"));
            }
        }
        if reply.len() != 3 + 2 * items.len() && op != "apply" {
            return Err(StoreError::internal(format!(
                "limiter script answered {} values for {} items",
                reply.len(),
                items.len()
            )));
        }
        Ok(reply)
    }

    /// Raises calendar counters to at least the given amounts (never lowers one), in
    /// one round trip for the partition. Returns how many were raised. Used by the
    /// counter rebuild job after Redis lost its data or the gateway counted locally.
    /// `now_ms` is only used with [`with_clock_from_request`](Self::with_clock_from_request).
    pub async fn raise_calendar_counters(
        &self,
        partition: &str,
        targets: &[CalendarTarget],
        now_ms: i64,
    ) -> StoreResult<usize> {
        let targets: Vec<&CalendarTarget> = targets.iter().filter(|t| !t.item.spec.window.is_rate()).collect();
        if targets.is_empty() {
            return Ok(0);
        }
        let mut keys = Vec::with_capacity(targets.len());
        let mut args = vec![flag(self.clock_from_request).to_owned(), now_ms.to_string()];
        for target in &targets {
            keys.push(self.keys.counter(partition, &target.item));
            args.extend([
                target.window_start_ms.to_string(),
                target.window_end_ms.to_string(),
                clamp(target.amount).to_string(),
            ]);
        }
        let raised: i64 = self.run(&self.raise, RAISE, &keys, &args).await?;
        Ok(usize::try_from(raised).unwrap_or(0))
    }

    /// Deletes every key under this limiter's prefix (standalone Redis only). For
    /// tests and tooling: a deployment lets keys expire.
    pub async fn delete_all_keys(&self) -> StoreResult<usize> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.keys.prefix());
        let mut cursor: u64 = 0;
        let mut deleted = 0usize;
        loop {
            let (next, found): (u64, Vec<String>) = bounded(
                self.timeout * 10,
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut conn),
            )
            .await?;
            if !found.is_empty() {
                let n: usize = bounded(self.timeout * 10, redis::cmd("DEL").arg(&found).query_async(&mut conn)).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Builds a decision from the script's reply `{flag, index, retry, used, reset, ...}`.
fn decision(reply: &[i64], items: &[LimitItem]) -> Decision {
    let refused = (reply[0] == 0).then(|| Refusal {
        index: usize::try_from(reply[1]).unwrap_or(0),
        retry_at_ms: (reply[2] >= 0).then_some(reply[2]),
    });
    let statuses = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let used = u64::try_from(reply[3 + 2 * i]).unwrap_or(0);
            LimitStatus {
                spec: item.spec.clone(),
                used,
                remaining: item.spec.limit.saturating_sub(used),
                reset_at_ms: reply[4 + 2 * i],
            }
        })
        .collect();
    Decision { statuses, refused }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn reserve(&self, request: ReserveRequest<'_>) -> StoreResult<Decision> {
        let ReserveRequest { partition, request_id, items, amounts, now_ms, hold, hold_ms } = request;
        let hold_ms = hold.then_some(hold_ms);
        let reply = self.decide("reserve", partition, request_id, items, amounts, now_ms, hold_ms).await?;
        if let (1, Some(hold_ms)) = (reply[0], hold_ms) {
            let expires = Instant::now() + Duration::from_millis(hold_ms.unsigned_abs());
            self.held().insert(request_id.to_owned(), expires);
        }
        Ok(decision(&reply, items))
    }

    async fn settle(&self, request: SettleRequest<'_>) -> StoreResult<()> {
        let SettleRequest { partition, request_id, actual, now_ms } = request;
        let keys = [self.keys.reservation(partition, request_id)];
        let args = [
            flag(self.clock_from_request).to_owned(),
            now_ms.to_string(),
            clamp(actual.requests).to_string(),
            clamp(actual.input_tokens).to_string(),
            clamp(actual.output_tokens).to_string(),
            clamp(actual.cost_micros).to_string(),
        ];
        let _settled: i64 = self.run(&self.settle, SETTLE, &keys, &args).await?;
        self.held().remove(request_id);
        Ok(())
    }

    async fn peek(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<Decision> {
        // The reservation key is only named (a peek never reads or writes it).
        let reply = self.decide("peek", partition, "", items, amounts, now_ms, None).await?;
        Ok(decision(&reply, items))
    }

    async fn apply(&self, partition: &str, items: &[LimitItem], amounts: Amounts, at_ms: i64) -> StoreResult<()> {
        self.decide("apply", partition, "", items, amounts, at_ms, None).await?;
        Ok(())
    }

    async fn prune(&self, _now_ms: i64) -> StoreResult<usize> {
        // Counters expire in Redis; only the local count of held reservations needs
        // to forget what Redis has forgotten.
        let now = Instant::now();
        self.held().retain(|_, expires| *expires > now);
        Ok(0)
    }

    async fn held_reservations(&self) -> StoreResult<usize> {
        Ok(self.held().len())
    }
}
