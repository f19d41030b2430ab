//! Phase 3a, route: which provider and model each attempt of a request goes to.
//!
//! A request naming a model that is no route goes to its endpoint's default provider
//! (`[upstream]` for OpenAI's endpoints, `[anthropic]` for `/v1/messages`) as it is:
//! one attempt, body untouched, nothing added to the hot path but one map lookup. A
//! request naming a route (`[routing.routes]`) gets the router's plan (the split's arm
//! first, then the fallbacks in order), each target resolved to its configured
//! provider, with the body's `model` rewritten to the target's.
//!
//! Which providers can serve which endpoint: OpenAI-compatible ones (OpenAI, Azure
//! OpenAI, Gemini's OpenAI-compatible endpoint, any base URL) the OpenAI endpoints;
//! Anthropic `/v1/messages`, and chat completions translated to Messages and back
//! (tools included). A target that cannot serve the request's endpoint is left out of
//! its plan.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tollgate_providers::{Endpoint, RequestError, Upstream};
use tollgate_router::{BreakerSettings, Health, Router};

/// The wire format and addressing a provider speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible base URL (vLLM, Ollama, Groq, Mistral,
    /// OpenRouter, Together; Gemini's OpenAI-compatible endpoint).
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{deployment}/{path}?api-version=…`
    /// with an `api-key` header; the deployment is the model's (`deployments`), or
    /// the model's name.
    Azure { api_version: String, deployments: HashMap<String, String> },
    /// Anthropic's Messages API.
    Anthropic,
}

impl ProviderKind {
    /// The label `/health/detailed` and the docs use.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Azure { .. } => "azure",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    /// Whether a request to `endpoint` can be sent to this kind of provider (a chat
    /// completion to Anthropic is translated, [`ProviderKind::translates`]).
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        match self {
            ProviderKind::Anthropic => endpoint.is_anthropic() || self.translates(endpoint),
            ProviderKind::OpenAi | ProviderKind::Azure { .. } => !endpoint.is_anthropic(),
        }
    }

    /// Whether a request to `endpoint` is translated for this kind: an OpenAI chat
    /// completion to Anthropic's Messages and its answer back
    /// ([`tollgate_providers::translate`]).
    pub fn translates(&self, endpoint: Endpoint) -> bool {
        *self == ProviderKind::Anthropic && endpoint == Endpoint::ChatCompletions
    }
}

/// One configured provider: its name (what limits, records and routes use), its kind
/// and its pooled client.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub upstream: Arc<Upstream>,
}

impl Provider {
    /// The path (and query) `endpoint` is sent to for `model`.
    pub fn path(&self, endpoint: Endpoint, model: &str) -> std::borrow::Cow<'static, str> {
        match &self.kind {
            ProviderKind::Azure { api_version, deployments } => {
                let deployment = deployments.get(model).map_or(model, String::as_str);
                std::borrow::Cow::Owned(format!(
                    "/openai/deployments/{}{}?api-version={}",
                    encode_path_segment(deployment),
                    endpoint.upstream_path(),
                    api_version
                ))
            }
            ProviderKind::Anthropic => std::borrow::Cow::Borrowed(Endpoint::Messages.upstream_path()),
            ProviderKind::OpenAi => std::borrow::Cow::Borrowed(endpoint.upstream_path()),
        }
    }
}

/// A deployment name as one URL path segment: what is not unreserved is
/// percent-encoded, so a model id cannot change the path it is put into.
fn encode_path_segment(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

/// The providers, routes and target health of a gateway.
pub struct Routing {
    pub providers: HashMap<String, Arc<Provider>>,
    /// The provider OpenAI's endpoints go to when the model is no route.
    pub default_openai: Arc<Provider>,
    /// The provider `/v1/messages` goes to when the model is no route.
    pub default_anthropic: Arc<Provider>,
    pub router: Router,
    pub health: Health,
    /// Longest wait for an attempt's response head while another target remains
    /// (`routing.attempt_timeout_ms`): a hung target falls back in time.
    pub attempt_timeout: Duration,
    /// The last cheap probe (`GET /models`) of each provider with an idle target.
    pub probes: Mutex<HashMap<String, Probe>>,
}

/// What the last probe of a provider found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    pub ok: bool,
    /// The provider's status, when it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub at_ms: i64,
    /// Why it failed, when it got no answer.
    pub error: Option<String>,
}

impl Routing {
    /// No routes: every request goes to its endpoint's default provider.
    pub fn direct(default_openai: Arc<Provider>, default_anthropic: Arc<Provider>) -> Routing {
        let mut providers = HashMap::new();
        providers.insert(default_openai.name.clone(), default_openai.clone());
        providers.insert(default_anthropic.name.clone(), default_anthropic.clone());
        Routing {
            providers,
            default_openai,
            default_anthropic,
            router: Router::default(),
            health: Health::new(BreakerSettings::default()),
            attempt_timeout: Duration::from_secs(30),
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// Probes, with one `GET /models` each (never a paid completion), the providers
    /// of routed targets that had no call for `idle_ms`: `/health/detailed` then
    /// reports them even without traffic. The breaker is left to live traffic.
    pub async fn probe_idle(&self, now_ms: i64, idle_ms: i64) {
        let idle = self.health.idle(&self.target_ids(), now_ms, idle_ms);
        let mut names: Vec<&str> = idle.iter().filter_map(|t| t.split_once('/').map(|(p, _)| p)).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let Some(provider) = self.providers.get(name) else { continue };
            let path = match &provider.kind {
                ProviderKind::Azure { api_version, .. } => format!("/openai/models?api-version={api_version}"),
                _ => "/models".to_owned(),
            };
            let started = std::time::Instant::now();
            let sent =
                provider.upstream.send(reqwest::Method::GET, &path, reqwest::header::HeaderMap::new(), None).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let probe = match sent {
                Ok(answer) => Probe {
                    ok: (200..300).contains(&answer.status),
                    status: Some(answer.status),
                    latency_ms,
                    at_ms: crate::now_ms(),
                    error: None,
                },
                Err(e) => {
                    Probe { ok: false, status: None, latency_ms, at_ms: crate::now_ms(), error: Some(e.to_string()) }
                }
            };
            self.probes.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), probe);
        }
    }

    /// Each provider's name, kind and last probe, sorted by name.
    pub fn providers_health(&self) -> Vec<serde_json::Value> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = self.providers.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let p = &self.providers[name];
                serde_json::json!({
                    "name": name,
                    "kind": p.kind.label(),
                    "base_url": p.upstream.base_url(),
                    "probe": probes.get(name),
                })
            })
            .collect()
    }

    /// The default provider of `endpoint`.
    pub fn default_for(&self, endpoint: Endpoint) -> &Arc<Provider> {
        if endpoint.is_anthropic() { &self.default_anthropic } else { &self.default_openai }
    }

    /// Every routed target's id (`provider/model`), for `/health/detailed`.
    pub fn target_ids(&self) -> Vec<String> {
        self.router.targets().iter().map(|t| t.id()).collect()
    }

    /// The targets of a request naming `model` (see the module doc), or `None` when it
    /// names no route.
    pub fn plan(
        &self,
        endpoint: Endpoint,
        model: &str,
        body: &Bytes,
        key_id: &str,
    ) -> Option<Result<Route, RequestError>> {
        if self.router.is_empty() || !self.router.has_route(model) {
            return None;
        }
        let user = sticky_user(endpoint, body);
        let plan = self.router.plan(model, user.as_deref(), key_id)?;
        let arm = plan.arm.map(|_| plan.attempts[0].id());
        let targets: Vec<Target> = plan
            .attempts
            .into_iter()
            .filter_map(|t| {
                let provider = self.providers.get(&t.provider)?.clone();
                provider.kind.serves(endpoint).then(|| Target { id: t.id(), provider, model: t.model })
            })
            .collect();
        if targets.is_empty() {
            return Some(Err(RequestError {
                message: format!("model: route '{model}' has no target that serves {}", endpoint.name()),
                param: Some("model".into()),
            }));
        }
        Some(Ok(Route { name: plan.route, arm, targets }))
    }
}

/// The caller-supplied id a split is sticky by: chat's and the others' `user`,
/// Messages' `metadata.user_id`. Read only for routed requests.
fn sticky_user(endpoint: Endpoint, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        user_id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Sticky {
        user: Option<String>,
        metadata: Option<Metadata>,
    }
    let sticky: Sticky = serde_json::from_slice(body).ok()?;
    if endpoint.is_anthropic() { sticky.metadata.and_then(|m| m.user_id) } else { sticky.user }
        .filter(|u| !u.is_empty() && u.len() <= 256)
}

/// One target of a routed request.
#[derive(Clone)]
pub struct Target {
    /// `provider/model`.
    pub id: String,
    pub provider: Arc<Provider>,
    pub model: String,
}

/// A routed request's plan.
pub struct Route {
    /// The alias the request named.
    pub name: String,
    /// For a split, the id of the caller's arm (the first target).
    pub arm: Option<String>,
    pub targets: Vec<Target>,
}

/// `body` with its `model` member set to `model` (a routed request's body is sent
/// to each target under that target's model name).
pub fn with_model(body: &Bytes, model: &str) -> Result<Bytes, RequestError> {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| RequestError { message: format!("body: {e}"), param: None })?;
    value.insert("model".to_owned(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| RequestError { message: format!("body: {e}"), param: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_paths_name_the_deployment_and_the_api_version() {
        let upstream = Arc::new(
            Upstream::new(&tollgate_providers::UpstreamConfig {
                base_url: "http://127.0.0.1:1".into(),
                api_key: None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                pool_max_idle_per_host: 1,
                auth: Default::default(),
                default_headers: vec![],
            })
            .expect("upstream"),
        );
        let provider = Provider {
            name: "azure".into(),
            kind: ProviderKind::Azure {
                api_version: "2024-10-21".into(),
                deployments: [("gpt-4o".to_owned(), "prod-4o".to_owned())].into(),
            },
            upstream,
        };
        assert_eq!(
            provider.path(Endpoint::ChatCompletions, "gpt-4o"),
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            provider.path(Endpoint::Embeddings, "a/b c"),
            "/openai/deployments/a%2Fb%20c/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn the_model_is_rewritten_and_the_rest_kept() {
        let body = Bytes::from_static(br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"stream":true}"#);
        let out: serde_json::Value = serde_json::from_slice(&with_model(&body, "gpt-4o-mini").expect("json")).unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream"], true);
        assert_eq!(out["messages"][0]["content"], "hi");
        assert_eq!(sticky_user(Endpoint::ChatCompletions, br#"{"user":"u1"}"#).as_deref(), Some("u1"));
        assert_eq!(sticky_user(Endpoint::Messages, br#"{"metadata":{"user_id":"u2"}}"#).as_deref(), Some("u2"));
        assert_eq!(sticky_user(Endpoint::ChatCompletions, br#"{"user":""}"#), None);
    }
}
