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
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::oneshot;
use tollgate_core::{Authed, Decision, ProjectSettings, Traffic};
use tollgate_providers::{Endpoint, RequestView, Upstream, UpstreamError};

use std::sync::Arc;

use crate::forward::{Attempt, Forwarding, forward};
use crate::route::Route;

use tollgate_cache::Entry;
use tollgate_providers::TokenUsage;

use crate::cache::CacheStatus;
use crate::error::{GatewayError, UpstreamFailure};
use crate::settle::{Outcome, Settlement, new_record};
use crate::stream::AccountingStream;
use crate::{Gateway, GatewaySettings};

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
        // The routed targets' keys, in plan order (no allocation for a direct request).
        let mut keys: Vec<Option<Arc<crate::byok::ProviderKey>>> = Vec::new();
        let mut direct_key = None;
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
                Ok(key) => direct_key = key,
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
        // The targets before the admitted one were refused by their limits: not tried.
        if let Some(route) = &mut route {
            route.targets.drain(..first);
            route_items.drain(..first.min(route_items.len()));
            keys.drain(..first.min(keys.len()));
        }
        let attempts = match self.attempts(endpoint, route, route_items, keys, direct_key, upstream_body) {
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
    /// or a route's targets (from the admitted one on), each with its body (the model
    /// rewritten, or translated), its limit items and the project's key for it.
    fn attempts(
        &self,
        endpoint: Endpoint,
        route: Option<Route>,
        items: Vec<Vec<tollgate_core::LimitItem>>,
        keys: Vec<Option<Arc<crate::byok::ProviderKey>>>,
        direct_key: Option<Arc<crate::byok::ProviderKey>>,
        body: Bytes,
    ) -> Result<Vec<Attempt>, tollgate_providers::RequestError> {
        let Some(route) = route else {
            let provider = self.routing.default_for(endpoint).clone();
            let path = provider.path(endpoint, "");
            let key = direct_key;
            let attempt =
                Attempt { provider, path, body, target: None, model: None, items: None, translate: false, key };
            return Ok(vec![attempt]);
        };
        let mut attempts = Vec::with_capacity(route.targets.len());
        for ((target, items), key) in route.targets.into_iter().zip(items).zip(keys) {
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
            attempts.push(Attempt {
                path: target.provider.path(endpoint, &target.model),
                provider: target.provider,
                body,
                target: Some(target.id),
                model: Some(target.model),
                items: Some(items),
                translate,
                key,
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

pub(crate) fn failure(e: &UpstreamError) -> UpstreamFailure {
    if !matches!(e, UpstreamError::Timeout(_)) {
        tracing::warn!(error = %e, "upstream call failed");
    }
    UpstreamFailure::from(e)
}
