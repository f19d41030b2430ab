//! Phases 2 to 4 for the proxied routes (OpenAI's chat completions, completions,
//! embeddings and Responses, to the OpenAI-compatible upstream; Anthropic's Messages,
//! to the Anthropic upstream): parse the request view once,
//! admit, forward in a tracked task, and hand the answer (whole, or a stream that
//! settles when it ends) back to the transport.
//!
//! Why a tracked task: a client that hangs up drops its handler. Were the upstream
//! call awaited in the handler, it would be cut off with the request's usage
//! unknown. In the task it runs to its end whatever the client does, its usage is
//! recorded and the reservation settled; shutdown waits for it (`Gateway::tasks`).

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::oneshot;
use tollgate_core::{Authed, Decision, ProjectSettings, Traffic};
use tollgate_providers::sse::{Dialect, SseRewriter};
use tollgate_providers::translate::MessagesToChatStream;
use tollgate_providers::{Endpoint, RequestView, Upstream, UpstreamError, UsageScanner};
use tollgate_router::Failure;

use std::borrow::Cow;
use std::sync::Arc;
use tollgate_core::LimitItem;

use crate::route::{Provider, Route};

use tollgate_cache::Entry;
use tollgate_cache::assemble::StreamAssembler;
use tollgate_providers::TokenUsage;

use crate::cache::CacheStatus;
use crate::error::{GatewayError, UpstreamFailure};
use crate::settle::{Outcome, Settlement, new_record};
use crate::stream::{AccountingStream, CacheTap, UpstreamBody, Watcher};
use crate::{Gateway, GatewaySettings};

/// Largest response whose usage block is looked for (bigger ones pass through
/// untouched and are counted as they stream).
const MAX_SCANNED_RESPONSE: usize = 8 * 1024 * 1024;

/// A proxied request as the transport read it.
pub struct ProxyRequest {
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
    pub anonymous_id: Option<String>,
    /// The client's headers; only those in `upstream.forward_headers` go on.
    pub headers: HeaderMap,
    pub started: Instant,
    pub now_ms: i64,
}

/// The end of the pipeline for one request: the answer or why there is none, with
/// what the transport puts in its headers.
pub struct Proxied {
    /// Set once the request was given an id (at admission).
    pub request_id: Option<String>,
    pub now_ms: i64,
    pub decision: Option<Decision>,
    pub result: Result<Answer, GatewayError>,
    /// The requested model's label in `/metrics` ([`crate::metrics::Metrics::model`]).
    pub model_label: u16,
    /// What the cache phase did (`x-tollgate-cache`); `None` when the project's cache
    /// is off.
    pub cache: Option<CacheStatus>,
}

/// The upstream's answer, on its way to the client.
pub struct Answer {
    /// How long the upstream took before this answer could be handed over (its head
    /// for a stream, its whole body for a JSON answer): the part of the time to first
    /// byte that is not tollgate's own.
    pub upstream: std::time::Duration,
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub body: AnswerBody,
}

pub enum AnswerBody {
    /// Held whole (a JSON answer: one burst once the provider is done).
    Whole(Bytes),
    /// Passed through as it comes; settles when it ends or is dropped.
    Stream(Box<AccountingStream>),
}

/// The client headers configured to pass through (`upstream.forward_headers`), then
/// the upstream organization and project the operator set for the key's project
/// (`OpenAI-Organization`, `OpenAI-Project`), which replace any the client sent: a
/// tenant never chooses what the operator's provider key bills.
pub fn forwarded_headers(
    settings: &GatewaySettings,
    headers: &HeaderMap,
    project: Option<&ProjectSettings>,
) -> HeaderMap {
    let mut passed = HeaderMap::new();
    for name in &settings.forward_headers {
        for value in headers.get_all(name) {
            passed.append(name.clone(), value.clone());
        }
    }
    let Some(project) = project else { return passed };
    for (name, value) in
        [(OPENAI_ORGANIZATION, &project.openai_organization), (OPENAI_PROJECT, &project.openai_project)]
    {
        // Validated when the operator set it; a value that is somehow not a header
        // value is left out rather than failing the request.
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            passed.insert(HeaderName::from_static(name), value);
        }
    }
    passed
}

/// The header naming the OpenAI organization a request bills.
pub const OPENAI_ORGANIZATION: &str = "openai-organization";
/// The header naming the OpenAI project a request bills.
pub const OPENAI_PROJECT: &str = "openai-project";

impl Gateway {
    /// Admits, forwards and answers one request of an authenticated key.
    pub async fn proxy(&self, authed: &Authed, request: ProxyRequest) -> Proxied {
        let ProxyRequest { endpoint, body, client_ip, anonymous_id, headers, started, now_ms } = request;
        let no_model = self.metrics.no_model();
        let early = |result: GatewayError, model_label| Proxied {
            request_id: None,
            now_ms,
            decision: None,
            result: Err(result),
            model_label,
            cache: None,
        };
        // The one parse of the body: every later step reads this view.
        let mut view = match RequestView::parse(endpoint, &body) {
            Ok(v) => v,
            Err(e) => return early(e.into(), no_model),
        };
        let model_label = self.metrics.model(&view.model);
        // The route phase: a model naming a route is sent to its targets in turn; any
        // other to the endpoint's default provider as it is.
        let mut route = match self.routing.plan(endpoint, &view.model, &body, &authed.key.id) {
            None => None,
            Some(Ok(route)) => Some(route),
            Some(Err(e)) => return early(e.into(), model_label),
        };
        // Bring your own key: the project's own provider key for each target, or a
        // refusal before admission (nothing charged) when it must have one and has
        // none; a routed target it has no usable key for is left out.
        let mut keys: Vec<Option<Arc<crate::byok::ProviderKey>>> = Vec::new();
        if let Some(route) = &mut route {
            let mut kept = Vec::with_capacity(route.targets.len());
            let mut refused = None;
            for target in std::mem::take(&mut route.targets) {
                match self.provider_key_for(authed, &target.provider.name).await {
                    Ok(key) => {
                        keys.push(key);
                        kept.push(target);
                    }
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
            if let (true, Some(e)) = (kept.is_empty(), refused) {
                return early(e, model_label);
            }
            route.targets = kept;
        }
        let provider = match &route {
            Some(route) => &route.targets[0].provider.name,
            None if endpoint.is_anthropic() => &self.settings.anthropic_provider,
            None => &self.settings.provider,
        };
        let mut traffic = Traffic {
            provider: provider.clone(),
            model: match &route {
                Some(route) => route.targets[0].model.clone(),
                None => view.model.clone().into_owned(),
            },
            endpoint: endpoint.name().to_owned(),
            client_ip,
            anonymous_id,
        };
        if route.is_none() {
            match self.provider_key_for(authed, provider).await {
                Ok(key) => keys.push(key),
                Err(e) => return early(e, model_label),
            }
        }
        // Back-pressure: while the ledger's queue is full, new requests wait for room
        // (bounded), so the records of answered requests never need dropping.
        if !self.ledger_room().await {
            return early(GatewayError::LedgerBacklog, model_label);
        }
        // A routed request is admitted under its first target whose limits let it
        // through (provider- and model-scoped limits steer it: a target whose limit is
        // spent is skipped, not tried); the others are its fallbacks.
        let mut route_items: Vec<Vec<tollgate_core::LimitItem>> = Vec::new();
        let mut first = 0;
        let admission = loop {
            if let Some(route) = &route {
                let target = &route.targets[first];
                traffic.provider.clone_from(&target.provider.name);
                traffic.model.clone_from(&target.model);
                view.model = std::borrow::Cow::Owned(target.model.clone());
            }
            let items = self.limits_for(authed, &traffic);
            if route.is_some() {
                route_items.push(items.clone());
            }
            let admission = match self.admit(authed, &view, &body, items, now_ms).await {
                Ok(a) => a,
                Err(e) => return early(e, model_label),
            };
            let more = route.as_ref().is_some_and(|r| first + 1 < r.targets.len());
            if admission.decision.allowed() || !more {
                break admission;
            }
            first += 1;
        };
        // The fallbacks' limit items, for moving the reservation if one is used.
        if let Some(route) = &route {
            let mut fallback = traffic.clone();
            for target in &route.targets[route_items.len()..] {
                fallback.provider.clone_from(&target.provider.name);
                fallback.model.clone_from(&target.model);
                route_items.push(self.limits_for(authed, &fallback));
            }
        }
        self.metrics.decision(&admission.decision);
        let estimate = admission.estimate;
        let request_id = admission.request_id;
        let mut record = new_record(authed, &request_id, now_ms, endpoint.name(), &traffic);
        if let Some((_, refusal)) = admission.decision.refused_status() {
            // A request that can never fit is the client's error (400), not a wait.
            record.status = if refusal.retry_at_ms.is_some() { 429 } else { 400 };
            record.latency_ms = started.elapsed().as_millis() as u64;
            crate::access::log(self, &record, started.elapsed(), None);
            // One row per key and minute counts the refusals: a client looping on
            // 429s cannot outrun the writer.
            self.ledger.record_refusal(record);
            let result = Err(GatewayError::Refused { plan: authed.plan.name.clone() });
            return Proxied {
                request_id: Some(request_id),
                now_ms,
                decision: Some(admission.decision),
                result,
                model_label,
                cache: None,
            };
        }
        // The cache phase: one branch when the project's cache is off (or the
        // endpoint is not cached, `cache::cacheable`).
        let (cache_plan, cache_status) = match self.cache_plan(authed, &view, &body, &headers) {
            None => (None, None),
            Some(Err(status)) => (None, Some(status)),
            Some(Ok(plan)) => {
                let status = plan.status();
                (Some(plan), Some(status))
            }
        };
        // Exact first, then semantic (which costs an embedding call).
        let mut found: Option<(Entry, Option<f32>)> = None;
        if let Some(plan) = cache_plan.as_ref().filter(|p| p.lookup)
            && let Some(entry) = self.cache_lookup(plan, now_ms).await
        {
            found = Some((entry, None));
        }
        let mut embedding = None;
        if found.is_none()
            && let Some(plan) = &cache_plan
            && let Some(semantic) = &plan.semantic
        {
            match self.embed_conversation(authed, &semantic.conversation).await {
                Some(vector) => {
                    if plan.lookup {
                        found =
                            self.semantic_lookup(authed, plan, semantic, &vector, now_ms).map(|(e, s)| (e, Some(s)));
                        self.metrics.semantic(Some(found.is_some()));
                    }
                    embedding = Some(vector);
                }
                None => self.metrics.semantic(None),
            }
        }
        if let Some((entry, similarity)) = found
            && let Some((hit, is_sse)) = crate::cache::hit_body(&view, &entry)
        {
            drop(view);
            let mut settlement = Settlement::new(self.clone(), record, endpoint, body, estimate, started);
            settlement.answered(200);
            let usage = TokenUsage {
                prompt_tokens: entry.prompt_tokens,
                completion_tokens: entry.completion_tokens,
                total_tokens: entry.prompt_tokens.saturating_add(entry.completion_tokens),
                cached_tokens: entry.cached_tokens,
            };
            let counts = authed.project.cache.hits_count;
            let commit = settlement.finish(Outcome::Cached { usage, model: entry.model.clone(), counts });
            let committed = match commit {
                Some(commit) => commit.await,
                None => Ok(()),
            };
            let result = match committed {
                Ok(()) => Ok(Answer {
                    upstream: std::time::Duration::ZERO,
                    status: 200,
                    content_type: Some(if is_sse { "text/event-stream" } else { "application/json" }.to_owned()),
                    retry_after: None,
                    body: if is_sse {
                        let chunks = futures_util::stream::iter([Ok(hit)]);
                        AnswerBody::Stream(Box::new(AccountingStream::passthrough(Box::pin(chunks))))
                    } else {
                        AnswerBody::Whole(hit)
                    },
                }),
                Err(why) => Err(GatewayError::NotRecorded(why)),
            };
            let status = CacheStatus::Hit { age_secs: entry.age_secs(crate::now_ms()), similarity };
            self.metrics.cache(status);
            let cache = Some(status);
            return Proxied {
                request_id: Some(request_id),
                now_ms,
                decision: Some(admission.decision),
                result,
                model_label,
                cache,
            };
        }
        let cache_to = cache_plan.and_then(|p| p.store_to(&authed.key.project_id, embedding));
        if let Some(status) = cache_status {
            self.metrics.cache(status);
        }
        let strip_usage = view.strips_usage();
        let client_wants_usage = view.client_wants_usage;
        let upstream_body = view.upstream_body(&body);
        drop(view);
        let attempts = match self.attempts(endpoint, route, first, route_items, keys, upstream_body) {
            Ok(attempts) => attempts,
            Err(e) => {
                // Admitted but not forwardable: refunded, recorded as the client's 400.
                let mut settlement = Settlement::new(self.clone(), record, endpoint, body, estimate, started);
                settlement.failed(400);
                settlement.finish(Outcome::Nothing);
                return Proxied {
                    request_id: Some(request_id),
                    now_ms,
                    decision: Some(admission.decision),
                    result: Err(e.into()),
                    model_label,
                    cache: cache_status,
                };
            }
        };
        let settlement = Settlement::new(self.clone(), record, endpoint, body, estimate, started);
        // The OpenAI organization and project are the OpenAI upstream's business only.
        let project = (!endpoint.is_anthropic()).then_some(&*authed.project);
        let passed = forwarded_headers(&self.settings, &headers, project);
        let (answer_tx, answer_rx) = oneshot::channel();
        let gateway = self.clone();
        self.tasks.spawn(async move {
            let deadline = tokio::time::Instant::from_std(started) + gateway.settings.total_timeout;
            let how = Forwarding { strip_usage, client_wants_usage, deadline, cache_to };
            forward(gateway, endpoint, attempts, passed, settlement, how, answer_tx).await;
        });
        let result = answer_rx
            .await
            .unwrap_or_else(|_| Err(GatewayError::Internal("the forwarding task ended without an answer".into())));
        Proxied {
            request_id: Some(request_id),
            now_ms,
            decision: Some(admission.decision),
            result,
            model_label,
            cache: cache_status,
        }
    }

    /// The upstream an endpoint is forwarded to: Anthropic's for `/v1/messages`, the
    /// OpenAI-compatible one for the rest.
    pub fn upstream_for(&self, endpoint: Endpoint) -> &Upstream {
        if endpoint.is_anthropic() { &self.anthropic } else { &self.upstream }
    }

    /// The attempts of an admitted request: one to the endpoint's default provider,
    /// or a route's targets from the admitted one on, each with its body (the model
    /// rewritten) and its limit items.
    fn attempts(
        &self,
        endpoint: Endpoint,
        route: Option<Route>,
        first: usize,
        items: Vec<Vec<tollgate_core::LimitItem>>,
        keys: Vec<Option<Arc<crate::byok::ProviderKey>>>,
        body: Bytes,
    ) -> Result<Vec<Attempt>, tollgate_providers::RequestError> {
        let mut keys = keys.into_iter();
        let Some(route) = route else {
            let provider = self.routing.default_for(endpoint).clone();
            let path = provider.path(endpoint, "");
            let key = keys.next().flatten();
            let attempt =
                Attempt { provider, path, body, target: None, model: None, items: None, translate: false, key };
            return Ok(vec![attempt]);
        };
        let mut keys = keys.skip(first);
        let mut attempts = Vec::with_capacity(route.targets.len() - first);
        for (i, target) in route.targets.into_iter().enumerate().skip(first) {
            let translate = target.provider.kind.translates(endpoint);
            let body = if translate {
                tollgate_providers::translate::chat_to_messages(
                    &body,
                    &target.model,
                    self.settings.default_max_output_tokens,
                )?
            } else {
                crate::route::with_model(&body, &target.model)?
            };
            let items = items.get(i).cloned().unwrap_or_default();
            attempts.push(Attempt {
                path: target.provider.path(endpoint, &target.model),
                provider: target.provider,
                body,
                target: Some(target.id),
                model: Some(target.model),
                items: Some(items),
                translate,
                key: keys.next().flatten(),
            });
        }
        Ok(attempts)
    }

    /// Waits (at most `commit_timeout`) until the ledger's queue has room; false if
    /// it stayed full.
    pub async fn ledger_room(&self) -> bool {
        tokio::time::timeout(self.settings.commit_timeout, self.ledger.room()).await.is_ok()
    }

    /// `GET /v1/models`: passed through, not limited, not recorded.
    pub async fn models(&self, authed: &Authed, headers: &HeaderMap) -> Result<Answer, GatewayError> {
        self.get_passed_through(authed, headers, "/models").await
    }

    /// `GET /v1/models/{id}`: passed through like the list (the upstream's 404 for a
    /// model it does not have included). `id` must be a plausible model id: at most
    /// [`tollgate_providers::request::MAX_MODEL_LEN`] bytes of letters, digits and
    /// `.-_:@+/`, so it cannot change the upstream path it is put into.
    pub async fn model(&self, authed: &Authed, headers: &HeaderMap, id: &str) -> Result<Answer, GatewayError> {
        let plausible = !id.is_empty()
            && id.len() <= tollgate_providers::request::MAX_MODEL_LEN
            && !id.split('/').any(|part| part.is_empty() || part == "." || part == "..")
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@+/".contains(&b));
        if !plausible {
            return Err(GatewayError::Request(tollgate_providers::RequestError {
                message: "model: is not a valid model id".into(),
                param: Some("model".into()),
            }));
        }
        self.get_passed_through(authed, headers, &format!("/models/{id}")).await
    }

    /// `POST /v1/messages/count_tokens`: passed through to the Anthropic upstream,
    /// which does not charge for it: authenticated, not limited, not recorded. The
    /// body is checked as a Messages request first (a 400 here, not forwarded).
    pub async fn count_message_tokens(
        &self,
        authed: &Authed,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answer, GatewayError> {
        RequestView::parse(Endpoint::Messages, &body)?;
        let passed = forwarded_headers(&self.settings, headers, None);
        // The project's own Anthropic key, as for its messages.
        let key = self.provider_key_for(authed, &self.settings.anthropic_provider).await?;
        let (upstream, auth) = self.upstream_with_key(Endpoint::Messages, key.as_deref());
        self.pass_through(upstream, reqwest::Method::POST, "/messages/count_tokens", passed, Some(body), auth).await
    }

    async fn get_passed_through(
        &self,
        authed: &Authed,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Answer, GatewayError> {
        let passed = forwarded_headers(&self.settings, headers, Some(&authed.project));
        let key = self.provider_key_for(authed, &self.settings.provider).await?;
        let (upstream, auth) = self.upstream_with_key(Endpoint::ChatCompletions, key.as_deref());
        self.pass_through(upstream, reqwest::Method::GET, path, passed, None, auth).await
    }

    /// An unaccounted call: the upstream's answer streamed back as it is.
    async fn pass_through(
        &self,
        upstream: &Upstream,
        method: reqwest::Method,
        path: &str,
        passed: HeaderMap,
        body: Option<Bytes>,
        key: Option<&tollgate_providers::ProviderAuth>,
    ) -> Result<Answer, GatewayError> {
        let sent = Instant::now();
        match upstream.send_with_key(method, path, passed, body, key).await {
            Ok(up) => Ok(Answer {
                upstream: sent.elapsed(),
                status: up.status,
                content_type: up.content_type,
                retry_after: up.retry_after,
                body: AnswerBody::Stream(Box::new(AccountingStream::passthrough(up.body))),
            }),
            Err(e) => {
                let failure = failure(&e);
                self.metrics.upstream_error((&failure).into());
                Err(failure.into())
            }
        }
    }
}

fn failure(e: &UpstreamError) -> UpstreamFailure {
    if !matches!(e, UpstreamError::Timeout(_)) {
        tracing::warn!(error = %e, "upstream call failed");
    }
    UpstreamFailure::from(e)
}

/// How [`forward`] treats the answer.
struct Forwarding {
    /// Hide the usage chunk tollgate asked for.
    strip_usage: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    client_wants_usage: bool,
    /// The request's total deadline.
    deadline: tokio::time::Instant,
    /// Store a complete 200 answer in the cache as this says.
    cache_to: Option<crate::cache::CacheTarget>,
}

/// One attempt at a target: where it goes and what it sends.
pub(crate) struct Attempt {
    provider: Arc<Provider>,
    /// The path (and query) on the provider's base URL.
    path: Cow<'static, str>,
    body: Bytes,
    /// The target's id (`provider/model`) for its health, when routed.
    target: Option<String>,
    /// The target's model, when routed (recorded and priced by).
    model: Option<String>,
    /// The target's limit items, when routed: a fallback whose items differ from the
    /// held reservation's moves the reservation to them first.
    items: Option<Vec<LimitItem>>,
    /// A chat completion sent to Anthropic as Messages: its answer is translated back.
    translate: bool,
    /// The project's own provider key for this target (`None`: the operator's),
    /// [`crate::byok`].
    key: Option<Arc<crate::byok::ProviderKey>>,
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
async fn forward(
    gateway: Gateway,
    endpoint: Endpoint,
    attempts: Vec<Attempt>,
    headers: HeaderMap,
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
        let send = upstream.send_with_key(reqwest::Method::POST, &path, headers.clone(), Some(body), auth);
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
