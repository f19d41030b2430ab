//! Which limits count a request: the key's effective limits (plan plus overrides),
//! the anonymous plan for anonymous visitors, filtered by scope (provider, model,
//! endpoint) and bound to their subjects (key, project, client IP, anonymous id).
//!
//! Pure: the caller says what the request is ([`Traffic`]); reading it off HTTP
//! headers is the server's business.

use std::net::IpAddr;
use std::sync::Arc;

use crate::limit::effective_limits;
use crate::{KeyRecord, LimitSpec, Plan, ProjectSettings, SubjectKind, UsageRecord, Zone};

/// One limit of one subject, as a request presents it to the limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitItem {
    /// Whose counter: `key:<id>`, `project:<id>`, `ip:<project>:<addr>`,
    /// `anon:<project>:<id>`.
    pub subject: Arc<str>,
    pub spec: LimitSpec,
    /// The zone of a day or month window (UTC unless the plan or project names one).
    pub zone: Zone,
}

impl LimitItem {
    /// An item whose calendar windows are in UTC.
    pub fn new(subject: impl Into<Arc<str>>, spec: LimitSpec) -> Self {
        Self { subject: subject.into(), spec, zone: Zone::UTC }
    }

    pub fn in_zone(mut self, zone: Zone) -> Self {
        self.zone = zone;
        self
    }

    /// `[start, end)` of this item's calendar window containing `ms` (a day or month
    /// in its zone).
    pub fn calendar_bounds(&self, ms: i64) -> (i64, i64) {
        self.zone.bounds(self.spec.window, ms)
    }

    /// Whether usage at `at_ms` still counts in this item's window at `now_ms`.
    pub fn counts_now(&self, at_ms: i64, now_ms: i64) -> bool {
        self.zone.counts_now(self.spec.window, at_ms, now_ms)
    }
}

/// A usable key with its plan and its project's settings resolved.
#[derive(Clone, Debug)]
pub struct Authed {
    pub key: Arc<KeyRecord>,
    pub plan: Arc<Plan>,
    /// The key's project's settings: its project-wide limits count every request.
    pub project: Arc<ProjectSettings>,
}

impl Authed {
    /// The zone of the key's plan's calendar windows: the plan's, else the project's,
    /// else UTC.
    pub fn plan_zone(&self) -> Zone {
        self.plan.time_zone.clone().or_else(|| self.project.time_zone.clone()).unwrap_or_default()
    }
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

/// Every limit that counts this request, bound to its subject: the key's effective
/// limits, the anonymous plan's for a visitor, and the project's own limits, which
/// apply whatever the key's plan. Two limits on one counter (a project limit in the
/// slot of a plan's) become one item with the lower limit, so nothing is charged
/// twice. Limits whose subject cannot be identified (an IP limit with no address)
/// are skipped.
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
    let project = &authed.project.limits;
    // Zones: a plan's own, else the project's, else UTC; project limits the project's.
    let project_zone = authed.project.time_zone.clone().unwrap_or_default();
    let plan_zone = authed.plan_zone();
    let anonymous_zone = anonymous_plan.and_then(|p| p.time_zone.clone()).unwrap_or_else(|| project_zone.clone());
    let mut items: Vec<LimitItem> = Vec::with_capacity(limits.len() + anonymous.len() + project.len());
    let zoned = limits
        .iter()
        .map(|spec| (spec, &plan_zone))
        .chain(anonymous.iter().map(|spec| (spec, &anonymous_zone)))
        .chain(project.iter().map(|spec| (spec, &project_zone)));
    for (spec, zone) in zoned {
        if !spec.matches(&traffic.provider, &traffic.model, &traffic.endpoint) {
            continue;
        }
        if let Some(subject) = subjects.get(spec.subject, authed, traffic) {
            match items.iter_mut().find(|i| i.subject == subject && i.spec.slot() == spec.slot()) {
                Some(same) => same.spec.limit = same.spec.limit.min(spec.limit),
                None => items.push(LimitItem { subject, spec: spec.clone(), zone: zone.clone() }),
            }
        }
        if spec.subject == SubjectKind::Anonymous
            && traffic.anonymous_id.is_some()
            && let Some(ip) = traffic.client_ip
        {
            let mut per_address = spec.clone();
            per_address.limit = spec.limit.saturating_mul(ANONYMOUS_PER_ADDRESS_FACTOR);
            let subject = Arc::from(format!("anon:{}:addr:{}", authed.key.project_id, address_block(ip)));
            items.push(LimitItem { subject, spec: per_address, zone: zone.clone() });
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
                SubjectKind::Ip => traffic.client_ip.map(|ip| Arc::from(format!("ip:{project}:{}", address_block(ip)))),
                SubjectKind::Anonymous => match (&traffic.anonymous_id, traffic.client_ip) {
                    (Some(id), _) => Some(Arc::from(format!("anon:{project}:{id}"))),
                    (None, Some(ip)) => Some(Arc::from(format!("anon:{project}:ip:{}", address_block(ip)))),
                    (None, None) => None,
                },
            };
        }
        slot.clone()
    }
}

/// How much more than one visitor every anonymous visitor behind one address (block)
/// may use together. `X-Anonymous-Id` is the client's own word: a new id per request
/// would be a fresh quota each time, so with an id the anonymous limits also count
/// per address, at this multiple (an office behind one NAT is several visitors).
pub const ANONYMOUS_PER_ADDRESS_FACTOR: u64 = 10;

/// The block an address is limited by: IPv4 whole, IPv6 by its /64 (the block one
/// client usually holds; a /128 limit is no limit, a host has 2^64 of them).
pub fn address_block(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/64", std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The subject an anonymous visitor's usage was counted under, for attaching it to a
/// key when the visitor signs up.
pub fn anonymous_subject(project: &str, anonymous_id: &str) -> String {
    format!("anon:{project}:{anonymous_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metric, Window};

    fn authed(plan: Vec<LimitSpec>, project: Vec<LimitSpec>) -> Authed {
        let key = KeyRecord {
            id: "k".into(),
            project_id: "p".into(),
            name: None,
            plan: "x".into(),
            metadata: Default::default(),
            limit_overrides: vec![],
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
            version: 1,
        };
        let settings = ProjectSettings { limits: project, ..ProjectSettings::default() };
        Authed {
            key: Arc::new(key),
            plan: Arc::new(Plan { name: "x".into(), description: None, limits: plan, time_zone: None }),
            project: Arc::new(settings),
        }
    }

    #[test]
    fn project_limits_count_every_key_and_share_a_counter_with_the_plan_once() {
        let month = |n| LimitSpec::new(Metric::Requests, Window::Month, n).with_subject(SubjectKind::Project);
        let minute = LimitSpec::new(Metric::Requests, Window::Minute, 10);
        let a = authed(vec![minute.clone(), month(1_000)], vec![month(500)]);
        let items = limit_items(&a, &Traffic::default(), None);
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(&*items[1].subject, "project:p");
        assert_eq!(items[1].spec.limit, 500, "the lower of the plan's and the project's");
        let a = authed(vec![minute], vec![month(500)]);
        let items = limit_items(&a, &Traffic::default(), None);
        assert_eq!(items.iter().map(|i| i.spec.limit).collect::<Vec<_>>(), vec![10, 500]);
    }

    #[test]
    fn overrides_may_lower_add_or_raise_up_to_the_allowed_ceiling() {
        let plan = [LimitSpec::new(Metric::Requests, Window::Minute, 10)];
        let mut settings = ProjectSettings::default();
        let ok =
            |s: &ProjectSettings, n| s.check_overrides(&plan, &[LimitSpec::new(Metric::Requests, Window::Minute, n)]);
        assert!(ok(&settings, 5).is_ok());
        assert!(ok(&settings, 10).is_ok());
        assert!(ok(&settings, 11).is_err());
        assert!(settings.check_overrides(&plan, &[LimitSpec::new(Metric::Requests, Window::Day, 1 << 40)]).is_ok());
        settings.max_overrides = vec![LimitSpec::new(Metric::Requests, Window::Minute, 50)];
        assert!(ok(&settings, 50).is_ok());
        assert!(ok(&settings, 51).unwrap_err().contains("requests_per_minute"));
    }

    fn traffic(ip: &str, anonymous_id: Option<&str>) -> Traffic {
        Traffic { client_ip: ip.parse().ok(), anonymous_id: anonymous_id.map(str::to_owned), ..Traffic::default() }
    }

    #[test]
    fn ipv6_clients_are_limited_per_slash_64() {
        let authed =
            authed(vec![LimitSpec::new(Metric::Requests, Window::Day, 5).with_subject(SubjectKind::Ip)], vec![]);
        let a = limit_items(&authed, &traffic("2001:db8:1:2::1", None), None);
        let b = limit_items(&authed, &traffic("2001:db8:1:2:ffff:ffff:ffff:fffe", None), None);
        let c = limit_items(&authed, &traffic("2001:db8:1:3::1", None), None);
        assert_eq!(a[0].subject, b[0].subject, "one /64, one counter");
        assert_ne!(a[0].subject, c[0].subject);
        assert_eq!(&*a[0].subject, "ip:p:2001:db8:1:2::/64");
        let v4 = limit_items(&authed, &traffic("203.0.113.9", None), None);
        assert_eq!(&*v4[0].subject, "ip:p:203.0.113.9");
    }

    #[test]
    fn an_anonymous_id_also_counts_per_address() {
        let anonymous = Plan {
            name: "anonymous".into(),
            description: None,
            limits: vec![LimitSpec::new(Metric::Requests, Window::Day, 50).with_subject(SubjectKind::Anonymous)],
            time_zone: None,
        };
        let authed = authed(vec![], vec![]);
        let items = limit_items(&authed, &traffic("203.0.113.9", Some("visitor-1")), Some(&anonymous));
        let subjects: Vec<(&str, u64)> = items.iter().map(|i| (&*i.subject, i.spec.limit)).collect();
        assert_eq!(subjects, [("anon:p:visitor-1", 50), ("anon:p:addr:203.0.113.9", 500)]);
    }
}
