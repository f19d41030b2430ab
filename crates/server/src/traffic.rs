//! Which limits count a request: the key's effective limits (plan plus overrides),
//! the anonymous plan for anonymous visitors, filtered by scope (provider, model,
//! endpoint) and bound to their subjects (key, project, client IP, anonymous id).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::HeaderMap;
use tollgate_core::limit::effective_limits;
use tollgate_core::{LimitSpec, Plan, SubjectKind};
use tollgate_store::LimitItem;

use crate::auth::Authed;
use crate::error::ApiError;

/// The header that names an anonymous visitor.
pub const ANONYMOUS_ID_HEADER: &str = "x-anonymous-id";

/// What a request is, for choosing the limits that count it.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub client_ip: Option<IpAddr>,
    pub anonymous_id: Option<String>,
}

impl Traffic {
    /// The traffic a ledger record describes (rebuilding counters after a restart).
    pub fn of_record(record: &tollgate_core::UsageRecord) -> Self {
        Self {
            provider: record.provider.clone(),
            model: record.model.clone().unwrap_or_default(),
            endpoint: record.endpoint.clone(),
            client_ip: record.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
            anonymous_id: record.anonymous_id.clone(),
        }
    }

    /// The client's address: the socket peer, or with `forwarded_hops > 0` the entry
    /// that many hops from the right of `X-Forwarded-For` (the address the nearest
    /// trusted proxy saw). Entries further left are client-controlled and ignored.
    pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, forwarded_hops: usize) -> Option<IpAddr> {
        if forwarded_hops > 0 {
            let entries: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(entry) = entries.len().checked_sub(forwarded_hops).and_then(|i| entries.get(i))
                && let Ok(ip) = entry.parse::<IpAddr>()
            {
                return Some(ip);
            }
        }
        peer.map(|p| p.ip())
    }

    /// The anonymous visitor id from `X-Anonymous-Id`: 1-128 visible ASCII characters.
    pub fn anonymous_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(value) = headers.get(ANONYMOUS_ID_HEADER) else { return Ok(None) };
        let text = value.to_str().ok().map(str::trim).unwrap_or_default();
        if text.is_empty() || text.len() > 128 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest {
                message: "X-Anonymous-Id must be 1-128 visible ASCII characters".into(),
                param: Some("X-Anonymous-Id".into()),
            });
        }
        Ok(Some(text.to_owned()))
    }
}

/// Every limit that counts this request, bound to its subject. Limits whose subject
/// cannot be identified (an IP limit with no address) are skipped.
pub fn limit_items(authed: &Authed, traffic: &Traffic, anonymous_plan: Option<&Plan>) -> Vec<LimitItem> {
    let key = &authed.key;
    let effective;
    let limits: &[LimitSpec] = if key.limit_overrides.is_empty() {
        &authed.plan.limits
    } else {
        effective = effective_limits(&authed.plan.limits, &key.limit_overrides);
        &effective
    };
    // The anonymous plan applies on top of the key's limits to requests that name an
    // anonymous visitor (a key whose own plan has anonymous limits counts every
    // request as a visitor's, named by the header or the IP).
    let anonymous: &[LimitSpec] = match (anonymous_plan, &traffic.anonymous_id) {
        (Some(plan), Some(_)) if plan.name != authed.plan.name => &plan.limits,
        _ => &[],
    };
    let mut subjects = Subjects::default();
    let mut items = Vec::with_capacity(limits.len() + anonymous.len());
    for spec in limits.iter().chain(anonymous) {
        if !spec.matches(&traffic.provider, &traffic.model, &traffic.endpoint) {
            continue;
        }
        if let Some(subject) = subjects.get(spec.subject, authed, traffic) {
            items.push(LimitItem { subject, spec: spec.clone() });
        }
    }
    items
}

/// Subject names, made once per request and shared by every limit of that subject.
/// IP and anonymous subjects are per project: one visitor of two products is two
/// visitors.
#[derive(Default)]
struct Subjects {
    key: Option<Arc<str>>,
    project: Option<Arc<str>>,
    ip: Option<Arc<str>>,
    anonymous: Option<Arc<str>>,
}

impl Subjects {
    fn get(&mut self, kind: SubjectKind, authed: &Authed, traffic: &Traffic) -> Option<Arc<str>> {
        let project = &authed.key.project_id;
        let slot = match kind {
            SubjectKind::Key => &mut self.key,
            SubjectKind::Project => &mut self.project,
            SubjectKind::Ip => &mut self.ip,
            SubjectKind::Anonymous => &mut self.anonymous,
        };
        if slot.is_none() {
            *slot = match kind {
                SubjectKind::Key => Some(Arc::from(format!("key:{}", authed.key.id))),
                SubjectKind::Project => Some(Arc::from(format!("project:{project}"))),
                SubjectKind::Ip => traffic.client_ip.map(|ip| Arc::from(format!("ip:{project}:{ip}"))),
                SubjectKind::Anonymous => match (&traffic.anonymous_id, traffic.client_ip) {
                    (Some(id), _) => Some(Arc::from(format!("anon:{project}:{id}"))),
                    (None, Some(ip)) => Some(Arc::from(format!("anon:{project}:ip:{ip}"))),
                    (None, None) => None,
                },
            };
        }
        slot.clone()
    }
}

/// The subject an anonymous visitor's usage was counted under, for attaching it to a
/// key when the visitor signs up.
pub fn anonymous_subject(project: &str, anonymous_id: &str) -> String {
    format!("anon:{project}:{anonymous_id}")
}

/// The socket peer of a request, when the server was started with connect info
/// (always, through `startup`; not in router-only tests).
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}
