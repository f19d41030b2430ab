//! Which limits count a request: the key's effective limits (plan plus overrides),
//! the anonymous plan for anonymous visitors, filtered by scope (provider, model,
//! endpoint) and bound to their subjects (key, project, client IP, anonymous id).
//!
//! Pure: the caller says what the request is ([`Traffic`]); reading it off HTTP
//! headers is the server's business.

use std::net::IpAddr;
use std::sync::Arc;

use crate::limit::effective_limits;
use crate::{KeyRecord, LimitSpec, Plan, SubjectKind, UsageRecord};

/// One limit of one subject, as a request presents it to the limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitItem {
    /// Whose counter: `key:<id>`, `project:<id>`, `ip:<project>:<addr>`,
    /// `anon:<project>:<id>`.
    pub subject: Arc<str>,
    pub spec: LimitSpec,
}

/// A usable key with its plan resolved.
#[derive(Clone, Debug)]
pub struct Authed {
    pub key: Arc<KeyRecord>,
    pub plan: Arc<Plan>,
}

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
    pub fn of_record(record: &UsageRecord) -> Self {
        Self {
            provider: record.provider.clone(),
            model: record.model.clone().unwrap_or_default(),
            endpoint: record.endpoint.clone(),
            client_ip: record.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
            anonymous_id: record.anonymous_id.clone(),
        }
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

/// The endpoint of ledger records that carry a visitor's usage over to their key.
pub const TRANSFER_ENDPOINT: &str = "anonymous.attach";

/// The limits a ledger record counts against when it is replayed into counters
/// (restarts, rebuilds). A transfer (endpoint [`TRANSFER_ENDPOINT`]) counts against
/// the key's own limits only: the project and IP counters already hold that usage
/// from the visitor's own records, so charging them again would count it twice.
pub fn record_items(authed: &Authed, record: &UsageRecord, anonymous_plan: Option<&Plan>) -> Vec<LimitItem> {
    let traffic = Traffic::of_record(record);
    if record.endpoint == TRANSFER_ENDPOINT {
        let mut items = limit_items(authed, &traffic, None);
        items.retain(|item| item.spec.subject == SubjectKind::Key);
        return items;
    }
    limit_items(authed, &traffic, anonymous_plan)
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
