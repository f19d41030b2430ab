//! Phase 5, settle and record: the ledger record of a request and the settlement of
//! its reservation, on every exit path.
//!
//! A [`Settlement`] is made as soon as a reservation is held. It is finished with
//! what the answer told ([`Outcome`]); if it is dropped unfinished (a panic in a later
//! phase, a task aborted at shutdown), its `Drop` records the request with the
//! reserved estimate, marked `usage_source: "estimated"`, and settles to it. So no
//! branch has to remember to record: every path ends here.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use tollgate_core::{Amounts, Authed, HitsCount, Traffic, UsageRecord, UsageSource};
use tollgate_providers::sse::StreamSummary;
use tollgate_providers::{Endpoint, TokenUsage};
use tollgate_store::SettleRequest;

use crate::admit::price;
use crate::count::{self, Delivered};
use crate::{Gateway, now_ms};

/// A boxed future the answer or a tracked task waits on.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when the request's ledger record is durable (`durability = "sync"`), or
/// with why it is not (the commit failed, or took longer than `commit_timeout`);
/// `None` when nothing need wait.
pub type Commit = Option<CommitFuture>;

/// See [`Commit`].
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Waits for the ledger to commit what was appended, at most `commit_timeout`.
pub fn commit_wait(gateway: &Gateway, request_id: String) -> CommitFuture {
    let ledger = gateway.ledger.clone();
    let timeout = gateway.settings.commit_timeout;
    Box::pin(async move {
        let error = match tokio::time::timeout(timeout, ledger.flush()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the ledger did not commit within {} ms", timeout.as_millis()),
        };
        tracing::error!(%request_id, %error, "ledger commit failed: the answer becomes an error");
        Err(error)
    })
}

/// Status recorded for a request that ended without an answer from tollgate (the
/// client's connection was gone, or a phase failed): nginx's "client closed request".
pub const STATUS_ABANDONED: u16 = 499;

/// What the upstream's answer told us, collected as it streamed by.
pub enum Outcome {
    /// A JSON answer; `usage` is its usage block, if any; `body` the whole answer
    /// when it was held (to count its text when no usage was reported); `model` the
    /// model it names (what it is priced by).
    Json { usage: Option<TokenUsage>, body: Option<Bytes>, model: Option<String> },
    /// A streamed answer.
    Stream(StreamSummary),
    /// Nothing usable (an error before or instead of an answer).
    Nothing,
    /// Answered from the response cache: the entry's usage and model, and which limits
    /// the hit counts against (the project's `cache.hits_count`).
    Cached { usage: TokenUsage, model: Option<String>, counts: HitsCount },
}

/// The ledger record of a new request.
pub fn new_record(authed: &Authed, id: &str, now: i64, endpoint: &str, traffic: &Traffic) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms: now,
        project_id: authed.key.project_id.clone(),
        key_id: authed.key.id.clone(),
        endpoint: endpoint.to_owned(),
        provider: traffic.provider.clone(),
        model: (!traffic.model.is_empty()).then(|| traffic.model.clone()),
        requests: 1,
        client_ip: traffic.client_ip.map(|ip| ip.to_string()),
        anonymous_id: traffic.anonymous_id.clone(),
        ..UsageRecord::default()
    }
}

struct Pending {
    gateway: Gateway,
    record: UsageRecord,
    endpoint: Endpoint,
    /// The request body, kept by reference to count prompt tokens if the upstream
    /// reports none.
    body: Bytes,
    estimate: Amounts,
    /// Refund everything (the provider failed or throttled).
    refund: bool,
    /// The upstream answered 2xx: tokens were spent.
    success: bool,
    started: Instant,
    /// When the upstream call was sent (for its duration in `/metrics` and the
    /// access log).
    sent: Option<Instant>,
}

/// The obligation to record and settle one admitted request; see the module doc.
pub struct Settlement {
    pending: Option<Pending>,
}

impl Settlement {
    pub fn new(
        gateway: Gateway,
        record: UsageRecord,
        endpoint: Endpoint,
        body: Bytes,
        estimate: Amounts,
        started: Instant,
    ) -> Self {
        Self {
            pending: Some(Pending {
                gateway,
                record,
                endpoint,
                body,
                estimate,
                refund: false,
                success: false,
                started,
                sent: None,
            }),
        }
    }

    /// The pipeline this settlement records to, while it is unfinished.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.pending.as_ref().map(|p| &p.gateway)
    }

    /// The upstream call is being sent now; returns that instant.
    pub fn sent(&mut self) -> Instant {
        let now = Instant::now();
        if let Some(p) = &mut self.pending {
            p.sent = Some(now);
        }
        now
    }

    /// The upstream's own id of the call, kept in the record.
    pub fn upstream_request_id(&mut self, id: Option<String>) {
        if let Some(p) = &mut self.pending {
            p.record.upstream_request_id = id;
        }
    }

    /// The request now goes to `provider` and `model` (a routed request's target):
    /// what its record names, and prices it by when the answer names no model.
    pub fn retarget(&mut self, provider: &str, model: Option<&str>) {
        if let Some(p) = &mut self.pending {
            if p.record.provider != provider {
                p.record.provider = provider.to_owned();
            }
            if let Some(model) = model {
                p.record.model = Some(model.to_owned());
            }
        }
    }

    /// Records attempt `n` of a routed request, which failed with `status` and fell
    /// back to the next target: its own ledger row (`<request id>-<n>`, the target's
    /// provider and model), refunded: it is not the client's usage.
    pub fn record_attempt(&mut self, n: u32, status: u16) {
        let Some(p) = &mut self.pending else { return };
        let record = UsageRecord {
            id: format!("{}-{n}", p.record.id),
            status,
            counted: false,
            latency_ms: p.sent.map_or(0, |s| s.elapsed().as_millis() as u64),
            upstream_request_id: None,
            ..p.record.clone()
        };
        p.gateway.ledger.append(record);
    }

    /// Moves the held reservation to `items` (a fallback target whose provider- or
    /// model-scoped limits differ): released where it was, reserved again under the
    /// same request id. False when the target's limits refuse it (nothing is then
    /// held, and the target is skipped).
    pub async fn move_reservation(&mut self, items: &[tollgate_core::LimitItem]) -> bool {
        let Some(p) = &mut self.pending else { return false };
        let gateway = p.gateway.clone();
        let (partition, request_id) = (p.record.project_id.clone(), p.record.id.clone());
        let release = SettleRequest {
            partition: &partition,
            request_id: &request_id,
            actual: Amounts::default(),
            now_ms: now_ms(),
        };
        if let Err(e) = gateway.limiter.settle(release).await {
            tracing::error!(%request_id, error = %e, "releasing a reservation for a fallback failed");
        }
        let reserve = tollgate_store::ReserveRequest {
            partition: &partition,
            request_id: &request_id,
            items,
            amounts: p.estimate,
            now_ms: now_ms(),
            hold: true,
            hold_ms: gateway.settings.reservation_hold_ms(),
        };
        match gateway.limiter.reserve(reserve).await {
            Ok(decision) => decision.allowed(),
            Err(e) => {
                tracing::warn!(%request_id, error = %e, "reserving for a fallback target failed: skipped");
                false
            }
        }
    }

    /// The upstream answered with `status`: 2xx spent tokens; its own failures (5xx)
    /// and throttling (429) are refunded, they are not the client's usage.
    pub fn answered(&mut self, status: u16) {
        if let Some(p) = &mut self.pending {
            p.record.status = status;
            p.success = (200..300).contains(&status);
            p.refund = status >= 500 || status == 429;
        }
    }

    /// The request failed with `status` for reasons that are not the client's
    /// (upstream unreachable, broken, invalid): recorded and refunded.
    pub fn failed(&mut self, status: u16) {
        if let Some(p) = &mut self.pending {
            p.record.status = status;
            p.success = false;
            p.refund = true;
        }
    }

    /// Records the request, settles its reservation in a tracked task, and returns
    /// what the answer must wait for before it ends.
    pub fn finish(mut self, outcome: Outcome) -> Commit {
        let pending = self.pending.take()?;
        let gateway = pending.gateway.clone();
        let (commit, settle) = close(pending, outcome);
        spawn_tracked(&gateway, settle);
        commit
    }

    /// Like [`finish`](Self::finish), but returns the settlement for the caller to
    /// run (a caller already in a tracked task saves a spawn).
    pub fn finish_inline(mut self, outcome: Outcome) -> (Commit, Option<BoxFuture>) {
        match self.pending.take() {
            Some(pending) => {
                let (commit, settle) = close(pending, outcome);
                (commit, Some(settle))
            }
            None => (None, None),
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(mut pending) = self.pending.take() else { return };
        tracing::warn!(request_id = %pending.record.id, "request ended without an outcome; recording its estimate");
        if pending.record.status == 0 {
            pending.record.status = STATUS_ABANDONED;
        }
        pending.refund = false;
        let gateway = pending.gateway.clone();
        let (_commit, settle) = close_estimated(pending);
        spawn_tracked(&gateway, settle);
    }
}

fn spawn_tracked(gateway: &Gateway, settle: BoxFuture) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            gateway.tasks.spawn_on(settle, &runtime);
        }
        Err(_) => tracing::error!("no runtime to settle on: the reservation is released when it expires"),
    }
}

/// When a request started and when its upstream call was sent.
#[derive(Clone, Copy)]
struct Timing {
    endpoint: Endpoint,
    started: Instant,
    sent: Option<Instant>,
}

impl Timing {
    /// Counts the request into `/metrics` and writes its access-log line.
    fn observe(self, gateway: &Gateway, record: &UsageRecord) {
        let total = self.started.elapsed();
        let upstream = self.sent.map(|s| s.elapsed());
        gateway.metrics.recorded(record, crate::metrics::Route::from_endpoint(self.endpoint), total, upstream);
        crate::access::log(gateway, record, total, upstream);
    }
}

/// Appends the record and returns (durability wait, settlement).
fn commit_and_settle(gateway: Gateway, record: UsageRecord, actual: Amounts, timing: Timing) -> (Commit, BoxFuture) {
    timing.observe(&gateway, &record);
    // The record is queued before the client sees the end of the body, and with
    // `durability = "sync"` the end waits for the commit: a client that got a
    // complete 2xx finds it in the ledger, even after a crash.
    let request_id = record.id.clone();
    let partition = record.project_id.clone();
    gateway.ledger.append(record);
    let commit: Commit = gateway.settings.durable_responses.then(|| commit_wait(&gateway, request_id.clone()));
    let settle = Box::pin(async move {
        let settle = SettleRequest { partition: &partition, request_id: &request_id, actual, now_ms: now_ms() };
        if let Err(e) = gateway.limiter.settle(settle).await {
            tracing::error!(%request_id, error = %e, "settlement failed");
        }
    }) as BoxFuture;
    (commit, settle)
}

fn close(pending: Pending, outcome: Outcome) -> (Commit, BoxFuture) {
    let Pending { gateway, mut record, endpoint, body, refund, success, started, sent, .. } = pending;
    let timing = Timing { endpoint, started, sent };
    record.latency_ms = started.elapsed().as_millis() as u64;
    if let Outcome::Cached { usage, model, counts } = outcome {
        return close_cached(gateway, record, usage, model.as_deref(), counts, timing);
    }
    if refund {
        record.counted = false;
        return commit_and_settle(gateway, record, Amounts::default(), timing);
    }
    record.counted = true;
    if success {
        let (reported, delivered, model) = match outcome {
            Outcome::Json { usage, body, model } => (usage, body.map_or(Delivered::Nothing, Delivered::Json), model),
            Outcome::Stream(summary) => (summary.usage, Delivered::Text(summary.completion_text), summary.model),
            Outcome::Nothing | Outcome::Cached { .. } => (None, Delivered::Nothing, None),
        };
        match reported {
            Some(usage) => account_reported(&gateway, &mut record, usage, model.as_deref()),
            None => {
                let commit = count_then_record(gateway, record, timing, body, delivered, model);
                return (commit, Box::pin(async {}));
            }
        }
    }
    let actual = record.amounts();
    commit_and_settle(gateway, record, actual, timing)
}

/// A cache hit: priced as the answer would have been (`uncached_cost_micros`, the
/// potential cost), recorded at zero cost with `usage_source: "cache"`, and settled to
/// what the project's `hits_count` says a hit counts. The record carries only what it
/// charged, so a counter rebuild from the ledger counts it the same way (tokens are
/// kept in the record only when they count; a hit's cost is always zero in the ledger).
fn close_cached(
    gateway: Gateway,
    mut record: UsageRecord,
    usage: TokenUsage,
    model: Option<&str>,
    counts: HitsCount,
    timing: Timing,
) -> (Commit, BoxFuture) {
    account_reported(&gateway, &mut record, usage, model);
    let potential = record.uncached_cost_micros.max(record.cost_micros);
    record.cost_micros = 0;
    record.uncached_cost_micros = potential;
    record.usage_source = UsageSource::Cache;
    gateway.metrics.cache_saved(potential);
    if !counts.tokens {
        record.prompt_tokens = 0;
        record.completion_tokens = 0;
        record.cached_tokens = 0;
    }
    record.counted = counts.requests || counts.tokens || counts.cost;
    let actual = Amounts {
        requests: u64::from(counts.requests),
        input_tokens: record.prompt_tokens,
        output_tokens: record.completion_tokens,
        cost_micros: if counts.cost { potential } else { 0 },
    };
    commit_and_settle(gateway, record, actual, timing)
}

/// A request that ended with no outcome: charged and recorded as reserved.
fn close_estimated(pending: Pending) -> (Commit, BoxFuture) {
    let Pending { gateway, mut record, estimate, started, sent, endpoint, .. } = pending;
    let timing = Timing { endpoint, started, sent };
    record.latency_ms = started.elapsed().as_millis() as u64;
    record.counted = true;
    record.requests = estimate.requests;
    record.prompt_tokens = estimate.input_tokens;
    record.completion_tokens = estimate.output_tokens;
    record.cost_micros = estimate.cost_micros;
    record.usage_source = UsageSource::Estimated;
    record.price_estimated = !gateway.settings.prices.price(record.model.as_deref().unwrap_or_default()).known;
    commit_and_settle(gateway, record, estimate, timing)
}

/// Fills a record of the gateway's own call (the semantic cache's embedding) from its
/// reported usage, priced like any call.
pub(crate) fn price_reported(gateway: &Gateway, record: &mut UsageRecord, u: TokenUsage, model: Option<&str>) {
    account_reported(gateway, record, u, model);
}

/// Fills the record's tokens from the reported usage, and its cost.
fn account_reported(gateway: &Gateway, record: &mut UsageRecord, u: TokenUsage, model: Option<&str>) {
    record.prompt_tokens = u.prompt_tokens;
    record.completion_tokens = u.completion_tokens;
    record.cached_tokens = u.cached_tokens.min(u.prompt_tokens);
    record.usage_source = UsageSource::Reported;
    apply_price(gateway, record, model);
}

/// Prices the record by the model the answer names when the table knows it, else by
/// the requested model; a model without a known price gets the default price and the
/// record is marked `price_estimated`.
fn apply_price(gateway: &Gateway, record: &mut UsageRecord, answered_model: Option<&str>) {
    let table = &gateway.settings.prices;
    let answered = answered_model.map(|m| table.price(m)).filter(|l| l.known);
    let (model_price, estimated) = match answered {
        Some(lookup) => (lookup.price, false),
        None => price(table, record.model.as_deref().unwrap_or_default()),
    };
    let cost = model_price.cost(record.prompt_tokens, record.cached_tokens, record.completion_tokens);
    record.cost_micros = cost.micros;
    record.uncached_cost_micros = cost.uncached_micros;
    record.price_version = Some(table.version().to_owned());
    record.price_estimated = estimated;
}

/// The rare path (no usage reported): the prompt and the delivered text are counted
/// off the async workers in a tracked task, which then records and settles; the
/// answer's end waits (with `durability = "sync"`) until the record is committed.
fn count_then_record(
    gateway: Gateway,
    mut record: UsageRecord,
    timing: Timing,
    body: Bytes,
    delivered: Delivered,
    answered_model: Option<String>,
) -> Commit {
    let (queued_tx, queued_rx) = tokio::sync::oneshot::channel::<()>();
    let commit: Commit = gateway.settings.durable_responses.then(|| {
        let wait = commit_wait(&gateway, record.id.clone());
        Box::pin(async move {
            // The counting task queues the record first; if it is gone, the
            // settlement's `Drop` recorded the estimate instead, and waits for nothing.
            if queued_rx.await.is_err() {
                return Ok(());
            }
            wait.await
        }) as CommitFuture
    });
    let tracked = gateway.clone();
    let work = Box::pin(async move {
        let model = record.model.clone().unwrap_or_default();
        record.prompt_tokens = count::prompt_tokens(timing.endpoint, body).await;
        record.completion_tokens = count::completion_tokens(model, delivered).await;
        record.usage_source = UsageSource::Counted;
        apply_price(&gateway, &mut record, answered_model.as_deref());
        let actual = record.amounts();
        let (_commit, settle) = commit_and_settle(gateway, record, actual, timing);
        let _ = queued_tx.send(());
        settle.await;
    }) as BoxFuture;
    spawn_tracked(&tracked, work);
    commit
}
