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
use serde::Deserialize;
use tollgate_core::{Amounts, Authed, Traffic, UsageRecord, UsageSource};
use tollgate_providers::sse::StreamSummary;
use tollgate_providers::{Endpoint, TokenUsage};
use tollgate_store::SettleRequest;
use tollgate_tokenize::count_text;

use crate::admit::price;
use crate::{Gateway, now_ms};

/// A boxed future the answer or a tracked task waits on.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when the request's ledger record is durable (`durability = "sync"`), or
/// `None` when nothing need wait.
pub type Commit = Option<BoxFuture>;

/// Status recorded for a request that ended without an answer from tollgate (the
/// client's connection was gone, or a phase failed): nginx's "client closed request".
pub const STATUS_ABANDONED: u16 = 499;

/// What the upstream's answer told us, collected as it streamed by.
pub enum Outcome {
    /// A JSON answer; `usage` is its usage block, if any; `body` the whole answer
    /// when it was held (to count its text when no usage was reported).
    Json { usage: Option<TokenUsage>, body: Option<Bytes> },
    /// A streamed answer.
    Stream(StreamSummary),
    /// Nothing usable (an error before or instead of an answer).
    Nothing,
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
            }),
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

/// Appends the record and returns (durability wait, settlement).
fn commit_and_settle(gateway: Gateway, record: UsageRecord, actual: Amounts) -> (Commit, BoxFuture) {
    // The record is queued before the client sees the end of the body, and with
    // `durability = "sync"` the end waits for the commit: a client that got a
    // complete 2xx finds it in the ledger, even after a crash.
    let request_id = record.id.clone();
    let partition = record.project_id.clone();
    gateway.ledger.append(record);
    let commit: Commit = gateway.settings.durable_responses.then(|| {
        let ledger = gateway.ledger.clone();
        let id = request_id.clone();
        Box::pin(async move {
            if let Err(e) = ledger.flush().await {
                tracing::error!(request_id = %id, error = %e, "ledger commit failed");
            }
        }) as BoxFuture
    });
    let settle = Box::pin(async move {
        let settle = SettleRequest { partition: &partition, request_id: &request_id, actual, now_ms: now_ms() };
        if let Err(e) = gateway.limiter.settle(settle).await {
            tracing::error!(%request_id, error = %e, "settlement failed");
        }
    }) as BoxFuture;
    (commit, settle)
}

fn close(pending: Pending, outcome: Outcome) -> (Commit, BoxFuture) {
    let Pending { gateway, mut record, endpoint, body, refund, success, started, .. } = pending;
    record.latency_ms = started.elapsed().as_millis() as u64;
    let actual = if refund {
        record.counted = false;
        Amounts::default()
    } else {
        record.counted = true;
        if success {
            account_tokens(&gateway, &mut record, endpoint, &body, outcome);
        }
        record.amounts()
    };
    commit_and_settle(gateway, record, actual)
}

/// A request that ended with no outcome: charged and recorded as reserved.
fn close_estimated(pending: Pending) -> (Commit, BoxFuture) {
    let Pending { gateway, mut record, estimate, started, .. } = pending;
    record.latency_ms = started.elapsed().as_millis() as u64;
    record.counted = true;
    record.requests = estimate.requests;
    record.prompt_tokens = estimate.input_tokens;
    record.completion_tokens = estimate.output_tokens;
    record.cost_micros = estimate.cost_micros;
    record.usage_source = UsageSource::Estimated;
    commit_and_settle(gateway, record, estimate)
}

/// The generated text of a chat or completions answer (for counting its tokens when
/// the upstream reported none). Only runs on that rare path.
fn completion_text_from_json(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else { return String::new() };
    let mut text = String::new();
    for choice in answer.choices {
        if let Some(t) = choice.text {
            text.push_str(&t);
        }
        if let Some(c) = choice.message.and_then(|m| m.content) {
            text.push_str(&c);
        }
    }
    text
}

/// Fills the record's tokens (reported, or counted) and cost.
fn account_tokens(gateway: &Gateway, record: &mut UsageRecord, endpoint: Endpoint, body: &[u8], outcome: Outcome) {
    let model = record.model.clone().unwrap_or_default();
    let (reported, delivered_text) = match outcome {
        Outcome::Json { usage: None, body: Some(body) } => (None, Some(completion_text_from_json(&body))),
        Outcome::Json { usage, .. } => (usage, None),
        Outcome::Stream(summary) => (summary.usage, Some(summary.completion_text)),
        Outcome::Nothing => (None, None),
    };
    match reported {
        Some(u) => {
            record.prompt_tokens = u.prompt_tokens;
            record.completion_tokens = u.completion_tokens;
            record.cached_tokens = u.cached_tokens.min(u.prompt_tokens);
            record.usage_source = UsageSource::Reported;
        }
        None => {
            // The rare path (no usage reported): the body is parsed again here, off
            // the request's way, only to count its prompt.
            record.prompt_tokens = match tollgate_providers::RequestView::parse(endpoint, body) {
                Ok(view) => crate::admit::prompt_tokens(&view, body),
                Err(_) => body.len() as u64 / 4,
            };
            record.completion_tokens = delivered_text.map_or(0, |t| count_text(&model, &t));
            record.usage_source = UsageSource::Counted;
        }
    }
    let cost = price(&gateway.settings.prices, &model).cost(
        record.prompt_tokens,
        record.cached_tokens,
        record.completion_tokens,
    );
    record.cost_micros = cost.micros;
    record.uncached_cost_micros = cost.uncached_micros;
    record.price_version = Some(gateway.settings.prices.version().to_owned());
}
