//! Phase 3b, forward: the attempts of one admitted request, in its tracked task
//! ([`forward`]: fallbacks, the breaker, the reservation following the target), and
//! the answer of the one that answered handed to the waiting handler ([`deliver`]:
//! a whole JSON answer recorded before it is sent, a stream that settles when it
//! ends, a Messages answer translated back for a chat client).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use tokio::sync::oneshot;
use tollgate_cache::Entry;
use tollgate_cache::assemble::StreamAssembler;
use tollgate_core::LimitItem;
use tollgate_providers::sse::{Dialect, SseRewriter};
use tollgate_providers::translate::MessagesToChatStream;
use tollgate_providers::{Endpoint, UpstreamError, UsageScanner};
use tollgate_router::Failure;

use crate::Gateway;
use crate::error::{GatewayError, UpstreamFailure};
use crate::proxy::{Answer, AnswerBody, failure};
use crate::route::Provider;
use crate::settle::{Outcome, Settlement};
use crate::stream::{AccountingStream, CacheTap, UpstreamBody, Watcher};

/// Largest response whose usage block is looked for (bigger ones pass through
/// untouched and are counted as they stream).
const MAX_SCANNED_RESPONSE: usize = 8 * 1024 * 1024;

/// How [`forward`] treats the answer.
pub(crate) struct Forwarding {
    /// Hide the usage chunk tollgate asked for.
    pub(crate) strip_usage: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub(crate) client_wants_usage: bool,
    /// The request's total deadline.
    pub(crate) deadline: tokio::time::Instant,
    /// Store a complete 200 answer in the cache as this says.
    pub(crate) cache_to: Option<crate::cache::CacheTarget>,
}

/// One attempt at a target: where it goes and what it sends.
pub(crate) struct Attempt {
    pub(crate) provider: Arc<Provider>,
    /// The path (and query) on the provider's base URL.
    pub(crate) path: Cow<'static, str>,
    pub(crate) body: Bytes,
    /// The target's id (`provider/model`) for its health, when routed.
    pub(crate) target: Option<String>,
    /// The target's model, when routed (recorded and priced by).
    pub(crate) model: Option<String>,
    /// The target's limit items, when routed: a fallback whose items differ from the
    /// held reservation's moves the reservation to them first.
    pub(crate) items: Option<Vec<LimitItem>>,
    /// A chat completion sent to Anthropic as Messages: its answer is translated back.
    pub(crate) translate: bool,
    /// The project's own provider key for this target (`None`: the operator's),
    /// [`crate::byok`].
    pub(crate) key: Option<Arc<crate::byok::ProviderKey>>,
}

/// Why an attempt gave no answer, kept to answer with when no target is left.
enum Failed {
    Error(UpstreamError),
    /// Every remaining target was skipped (open breaker, `Retry-After`, limits).
    Nothing,
}

/// Tries the attempts in turn: a connection error, a timeout, a 5xx, a 429 or a
/// stream that breaks before its first byte moves on to the next target (each failed
/// attempt is its own ledger row, refunded); any other answer is delivered. The last
/// target's answer is delivered whatever it is.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    gateway: Gateway,
    endpoint: Endpoint,
    attempts: Vec<Attempt>,
    mut headers: HeaderMap,
    mut settlement: Settlement,
    how: Forwarding,
    answer: oneshot::Sender<Result<Answer, GatewayError>>,
) {
    let total = gateway.settings.total_timeout;
    let count = attempts.len();
    // The reservation is held under the first attempt's (the admitted target's) items.
    let mut held: Option<Vec<LimitItem>> = attempts.first().and_then(|a| a.items.clone());
    let mut failed = Failed::Nothing;
    let mut tried = 0u32;
    for (i, attempt) in attempts.into_iter().enumerate() {
        let more = i + 1 < count;
        let Attempt { provider, path, body, target, model, items, translate, key } = attempt;
        let health = &gateway.routing.health;
        if let Some(id) = &target {
            if !health.admit(id, crate::now_ms()).allowed() {
                continue;
            }
            // The reservation follows the target: refunded where it was, held where
            // the target's limits count (a target they refuse is skipped).
            if let Some(items) = items {
                match &held {
                    None => held = Some(items),
                    Some(current) if *current == items => {}
                    Some(_) => {
                        if !settlement.move_reservation(&items).await {
                            continue;
                        }
                        held = Some(items);
                    }
                }
            }
            settlement.retarget(&provider.name, model.as_deref());
        }
        tried += 1;
        let sent_at = settlement.sent();
        // A hung target must leave time for the next one.
        let until = if more {
            how.deadline.min(tokio::time::Instant::now() + gateway.routing.attempt_timeout)
        } else {
            how.deadline
        };
        // A project's own key goes with its own base URL, if it has one.
        let (upstream, auth) = match &key {
            Some(key) => (key.upstream().unwrap_or(&provider.upstream), Some(key.auth())),
            None => (&provider.upstream, None),
        };
        // Only a request with another target left keeps a copy of its headers.
        let sent_headers = if more { headers.clone() } else { std::mem::take(&mut headers) };
        let send = upstream.send_with_key(reqwest::Method::POST, &path, sent_headers, Some(body), auth);
        let sent = tokio::time::timeout_at(until, send).await.unwrap_or(Err(UpstreamError::Timeout(total)));
        let latency_ms = sent_at.elapsed().as_millis() as u64;
        let mut upstream = match sent {
            Ok(u) => u,
            Err(e) => {
                let why = if matches!(e, UpstreamError::Timeout(_)) { Failure::Timeout } else { Failure::Connect };
                if let Some(id) = &target {
                    health.failure(id, crate::now_ms(), latency_ms, why, None);
                }
                if more && e.retryable() {
                    let failure = failure(&e);
                    gateway.metrics.upstream_error((&failure).into());
                    settlement.record_attempt(tried, failure.status());
                    failed = Failed::Error(e);
                    continue;
                }
                failed = Failed::Error(e);
                break;
            }
        };
        let status = upstream.status;
        if status == 429 || status >= 500 {
            if let Some(id) = &target {
                let retry = tollgate_router::parse_retry_after_ms(upstream.retry_after.as_deref(), crate::now_ms());
                health.failure(id, crate::now_ms(), latency_ms, Failure::Status(status), retry);
            }
            if more {
                gateway.metrics.upstream_error(if status == 429 {
                    crate::metrics::UpstreamErrorKind::Throttled
                } else {
                    crate::metrics::UpstreamErrorKind::ServerError
                });
                settlement.record_attempt(tried, status);
                // Should every later target be skipped: a 502 for a failing provider; a
                // 429 leaves the 503 "no target now" (come back later).
                if status >= 500 {
                    failed = Failed::Error(UpstreamError::Connect(format!("the provider answered {status}")));
                }
                continue;
            }
        } else if more && status == 200 && is_event_stream(upstream.content_type.as_deref()) {
            // A stream that breaks before its first byte reached the client falls
            // back; after that byte there is no silent switch.
            let first = tokio::time::timeout_at(until, upstream.body.next()).await;
            match first {
                Ok(Some(Ok(chunk))) => {
                    let rest = std::mem::replace(&mut upstream.body, Box::pin(futures_util::stream::empty()));
                    upstream.body = Box::pin(futures_util::stream::iter([Ok(chunk)]).chain(rest));
                }
                _ => {
                    if let Some(id) = &target {
                        health.failure(id, crate::now_ms(), latency_ms, Failure::StreamBeforeFirstByte, None);
                    }
                    gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::Unreachable);
                    settlement.record_attempt(tried, 502);
                    failed = Failed::Error(UpstreamError::Body("the stream broke before its first event".into()));
                    continue;
                }
            }
            if let Some(id) = &target {
                health.success(id, crate::now_ms(), latency_ms);
            }
        } else if let Some(id) = &target {
            health.success(id, crate::now_ms(), latency_ms);
        }
        let has_api_key = key.is_some() || provider.upstream.has_api_key();
        let translate =
            translate.then(|| Translation { model: model.unwrap_or_default(), created_secs: crate::now_ms() / 1000 });
        deliver(gateway, endpoint, upstream, has_api_key, translate, settlement, how, sent_at, answer).await;
        return;
    }
    let failure = match failed {
        Failed::Error(e) => failure(&e),
        Failed::Nothing => UpstreamFailure::NoTarget,
    };
    gateway.metrics.upstream_error((&failure).into());
    fail(settlement, failure, answer).await;
}

fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// A Messages answer to translate back into a chat completion for the client.
struct Translation {
    /// The model the translated answer names (the target's).
    model: String,
    created_secs: i64,
}

/// Reads the answer and sends it to the waiting handler; a whole answer is recorded
/// before it is sent, and settled after. Everything ends by the request's deadline:
/// a stream, with an error event.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    gateway: Gateway,
    endpoint: Endpoint,
    upstream: tollgate_providers::UpstreamResponse,
    has_api_key: bool,
    translate: Option<Translation>,
    mut settlement: Settlement,
    how: Forwarding,
    sent_at: Instant,
    answer: oneshot::Sender<Result<Answer, GatewayError>>,
) {
    let Forwarding { strip_usage, client_wants_usage, deadline, cache_to } = how;
    // A translated answer is read (usage, stream events) as the Messages it is, and
    // not cached: the cache holds what the endpoint's own upstream answers.
    let (read_as, strip_usage, cache_to) = match &translate {
        Some(_) => (Endpoint::Messages, false, None),
        None => (endpoint, strip_usage, cache_to),
    };
    let total = gateway.settings.total_timeout;
    settlement.upstream_request_id(upstream.request_id.clone());
    if upstream.status == 401 && !has_api_key {
        // The upstream's own message would blame the client's key; the fault is the
        // gateway's configuration. Refunded: nothing is charged.
        gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::NoProviderKey);
        fail(settlement, UpstreamFailure::NoProviderKey, answer).await;
        return;
    }
    settlement.answered(upstream.status);
    if upstream.status >= 500 {
        gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::ServerError);
    } else {
        gateway.metrics.upstream_answered();
        if upstream.status == 429 {
            gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::Throttled);
        }
    }
    let success = (200..300).contains(&upstream.status);
    let is_sse = upstream.content_type.as_deref().is_some_and(|ct| ct.starts_with("text/event-stream"));
    let (status, content_type, retry_after) = (upstream.status, upstream.content_type, upstream.retry_after);
    let answer_with = |body| Answer {
        upstream: sent_at.elapsed(),
        status,
        content_type: content_type.clone(),
        retry_after: retry_after.clone(),
        body,
    };
    if is_sse {
        let rewriter = SseRewriter::with_dialect(Dialect::of(read_as), strip_usage);
        let mut stream =
            AccountingStream::new(upstream.body, Watcher::Sse(rewriter), settlement).with_deadline(deadline, total);
        if let Some(t) = &translate {
            let translator = MessagesToChatStream::new(&t.model, t.created_secs, client_wants_usage);
            stream = stream.with_translation(translator);
        }
        if upstream.status == 200
            && let Some(kind) = crate::cache::stream_kind(endpoint)
            && let Some(target) = cache_to
        {
            let assembler = StreamAssembler::new(kind, gateway.settings.cache_max_entry_bytes);
            stream = stream.with_cache(CacheTap { assembler, target });
        }
        let _ = answer.send(Ok(answer_with(AnswerBody::Stream(Box::new(stream)))));
        return;
    }
    let collected = tokio::time::timeout_at(deadline, collect_json(upstream.body)).await;
    match collected.unwrap_or(Collected::Broken(UpstreamError::Timeout(total))) {
        Collected::Whole(whole) => {
            let meta = if success {
                tollgate_providers::usage::checked_answer_for(read_as, &whole)
            } else {
                Ok(tollgate_providers::usage::AnswerMeta::default())
            };
            match meta {
                Ok(tollgate_providers::usage::AnswerMeta { usage, model }) => {
                    if status == 200
                        && let (Some(target), Some(u)) = (cache_to, usage.as_ref())
                    {
                        let entry = Entry {
                            created_ms: crate::now_ms(),
                            model: model.clone(),
                            prompt_tokens: u.prompt_tokens,
                            completion_tokens: u.completion_tokens,
                            cached_tokens: u.cached_tokens,
                            body: whole.clone(),
                        };
                        gateway.cache_put(target, entry);
                    }
                    // What the client gets: the answer, or translated back.
                    let client_body = match &translate {
                        None => Ok(whole.clone()),
                        Some(t) if success => {
                            tollgate_providers::translate::messages_to_chat(&whole, &t.model, t.created_secs)
                        }
                        Some(_) => Ok(tollgate_providers::translate::messages_error_to_chat(&whole)),
                    };
                    let client_body = match client_body {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream answered 2xx with a Messages body that does not translate");
                            gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::InvalidResponse);
                            fail(settlement, UpstreamFailure::Invalid, answer).await;
                            return;
                        }
                    };
                    let held = usage.is_none().then(|| whole.clone());
                    let (commit, settle) = settlement.finish_inline(Outcome::Json { usage, body: held, model });
                    let committed = match commit {
                        Some(commit) => commit.await,
                        None => Ok(()),
                    };
                    // A client must not get a 2xx whose usage is not in the ledger.
                    let result = match committed {
                        Ok(()) => Ok(answer_with(AnswerBody::Whole(client_body))),
                        Err(why) => Err(GatewayError::NotRecorded(why)),
                    };
                    let _ = answer.send(result);
                    if let Some(settle) = settle {
                        settle.await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream answered 2xx with a body that is not JSON");
                    gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::InvalidResponse);
                    fail(settlement, UpstreamFailure::Invalid, answer).await;
                }
            }
        }
        Collected::Broken(e) => {
            tracing::warn!(error = %e, "upstream body broke off");
            let failure = UpstreamFailure::from(&e);
            gateway.metrics.upstream_error((&failure).into());
            fail(settlement, UpstreamFailure::from(&e), answer).await;
        }
        // Too big to hold: pass it through as it comes, counting instead of parsing.
        Collected::TooBig { .. } if translate.is_some() => {
            // Over 8 MB is no chat answer to translate in memory.
            tracing::warn!("a Messages answer to translate was larger than {MAX_SCANNED_RESPONSE} bytes");
            gateway.metrics.upstream_error(crate::metrics::UpstreamErrorKind::InvalidResponse);
            fail(settlement, UpstreamFailure::Invalid, answer).await;
        }
        Collected::TooBig { head, rest } => {
            let stream = futures_util::stream::iter(head.into_iter().map(Ok)).chain(rest);
            let stream = AccountingStream::new(Box::pin(stream), Watcher::Json(UsageScanner::new(0)), settlement)
                .with_deadline(deadline, total);
            let _ = answer.send(Ok(answer_with(AnswerBody::Stream(Box::new(stream)))));
        }
    }
}

/// Records a request whose upstream answer was unusable as failed and refunded.
async fn fail(
    mut settlement: Settlement,
    failure: UpstreamFailure,
    answer: oneshot::Sender<Result<Answer, GatewayError>>,
) {
    settlement.failed(failure.status());
    if let Some(commit) = settlement.finish(Outcome::Nothing) {
        // The answer is an error already; a failed commit is logged.
        let _ = commit.await;
    }
    let _ = answer.send(Err(failure.into()));
}

/// A non-streaming answer, read whole (one JSON document: it arrives in one burst once
/// the provider is done, so holding it costs no latency) so that a broken or invalid
/// answer becomes a clear 502 and the usage is known before the client gets it.
enum Collected {
    Whole(Bytes),
    Broken(UpstreamError),
    TooBig { head: Vec<Bytes>, rest: UpstreamBody },
}

async fn collect_json(mut body: UpstreamBody) -> Collected {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                len += chunk.len();
                chunks.push(chunk);
                if len > MAX_SCANNED_RESPONSE {
                    return Collected::TooBig { head: chunks, rest: body };
                }
            }
            Some(Err(e)) => return Collected::Broken(e),
            None => break,
        }
    }
    Collected::Whole(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(len);
            for c in &chunks {
                whole.extend_from_slice(c);
            }
            whole.freeze()
        }
    })
}
