//! The conformance suite every [`AlertStore`] passes (SQLite and PostgreSQL run it:
//! `store-embedded/tests/alerts.rs`, `store-postgres/tests/alerts.rs`). Each scenario
//! takes a fresh, empty store.

use std::sync::Arc;

use crate::{
    AlertStore, AttemptOutcome, AttemptRecord, ChannelConfig, ChannelKind, ChannelRecord, DeliveryQuery,
    DeliveryStatus, EventRecord, LimitMatcher, RuleRecord,
};
use tollgate_store::StoreError;

pub const NOW: i64 = 1_700_000_000_000;

/// Every scenario, by name, for backends that run them one by one.
pub const SCENARIOS: &[&str] = &[
    "rules_round_trip",
    "channels_round_trip",
    "an_event_is_enqueued_once",
    "claims_leases_and_outcomes",
    "concurrent_claims_are_disjoint",
];

pub fn rule(id: &str, project: Option<&str>) -> RuleRecord {
    RuleRecord {
        id: id.into(),
        project_id: project.map(Into::into),
        name: Some(format!("rule {id}")),
        matcher: LimitMatcher { metric: Some(tollgate_core::Metric::Requests), ..LimitMatcher::default() },
        thresholds: vec![80, 90, 100],
        kind: crate::RuleKind::LimitThreshold,
        key_id: None,
        score_threshold: None,
        min_volume: None,
        notify_resolved: false,
        channels: vec!["ch1".into()],
        enabled: true,
        created_at_ms: NOW,
        updated_at_ms: NOW,
    }
}

pub fn channel(id: &str, project: Option<&str>) -> ChannelRecord {
    ChannelRecord {
        id: id.into(),
        project_id: project.map(Into::into),
        name: None,
        kind: ChannelKind::Webhook,
        config: ChannelConfig {
            url: Some("https://example.com/hook".into()),
            smtp_host: None,
            smtp_port: None,
            smtp_tls: None,
            smtp_username: None,
            from: None,
            to: vec![],
        },
        sealed_secret: Some("v1:00000000:c2VhbGVk".into()),
        secret_hint: Some("…abcd".into()),
        enabled: true,
        created_at_ms: NOW,
    }
}

pub fn event(id: &str, project: &str) -> EventRecord {
    EventRecord {
        id: id.into(),
        project_id: Some(project.into()),
        rule_id: Some("r1".into()),
        kind: crate::outbox::KIND_THRESHOLD.into(),
        data: serde_json::json!({ "used": 80, "limit": 100 }),
        created_at_ms: NOW,
    }
}

pub async fn rules_round_trip(store: &dyn AlertStore) {
    store.create_rule(rule("r1", Some("p1"))).await.expect("create");
    store.create_rule(rule("r2", None)).await.expect("create default");
    store.create_rule(rule("r3", Some("p2"))).await.expect("create");
    assert!(matches!(store.create_rule(rule("r1", Some("p1"))).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_rule("r1").await.expect("get"), Some(rule("r1", Some("p1"))));
    let ids = |v: Vec<RuleRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_rules(None).await.expect("list")), ["r1", "r2", "r3"]);
    assert_eq!(ids(store.list_rules(Some("p1")).await.expect("list")), ["r1"]);
    let mut changed = rule("r1", Some("p1"));
    changed.thresholds = vec![50];
    changed.enabled = false;
    store.update_rule(changed.clone()).await.expect("update");
    assert_eq!(store.get_rule("r1").await.expect("get"), Some(changed));
    assert!(matches!(store.update_rule(rule("nope", None)).await, Err(StoreError::NotFound { .. })));
    assert!(store.delete_rule("r1").await.expect("delete"));
    assert!(!store.delete_rule("r1").await.expect("delete again"));
    assert_eq!(store.get_rule("r1").await.expect("get"), None);
}

pub async fn channels_round_trip(store: &dyn AlertStore) {
    store.create_channel(channel("c1", Some("p1"))).await.expect("create");
    store.create_channel(channel("c2", None)).await.expect("create");
    assert!(matches!(store.create_channel(channel("c1", None)).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_channel("c1").await.expect("get"), Some(channel("c1", Some("p1"))));
    assert_eq!(store.list_channels(Some("p1")).await.expect("list").len(), 1);
    assert_eq!(store.list_channels(None).await.expect("list").len(), 2);
    let mut changed = channel("c1", Some("p1"));
    changed.enabled = false;
    store.update_channel(changed.clone()).await.expect("update");
    assert_eq!(store.get_channel("c1").await.expect("get"), Some(changed));
    assert!(matches!(store.update_channel(channel("nope", None)).await, Err(StoreError::NotFound { .. })));
    assert!(store.delete_channel("c1").await.expect("delete"));
    assert!(!store.delete_channel("c1").await.expect("delete again"));
}

pub async fn an_event_is_enqueued_once(store: &dyn AlertStore) {
    let e = event("evt_1", "p1");
    let deliveries = crate::outbox::deliveries_for(&e, &["c1".into(), "c2".into()], NOW);
    assert!(store.enqueue(e.clone(), deliveries.clone()).await.expect("enqueue"));
    assert!(!store.enqueue(e.clone(), deliveries.clone()).await.expect("again"), "the same event adds nothing");
    assert_eq!(store.get_event("evt_1").await.expect("get"), Some(e));
    let all = store.list_deliveries(DeliveryQuery { limit: 100, ..DeliveryQuery::default() }).await.expect("list");
    assert_eq!(all.len(), 2);
    let mine = DeliveryQuery { project_id: Some("p2".into()), limit: 100, ..DeliveryQuery::default() };
    assert!(store.list_deliveries(mine).await.expect("list").is_empty());
    assert_eq!(store.get_delivery(&deliveries[0].id).await.expect("get").as_ref(), Some(&deliveries[0]));
}

pub async fn claims_leases_and_outcomes(store: &dyn AlertStore) {
    let e = event("evt_2", "p1");
    let deliveries = crate::outbox::deliveries_for(&e, &["c1".into()], NOW);
    let id = deliveries[0].id.clone();
    store.enqueue(e, deliveries).await.expect("enqueue");
    assert!(store.claim_due(NOW - 1, 1_000, 10).await.expect("claim").is_empty(), "not yet due");
    let claimed = store.claim_due(NOW, 1_000, 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(store.claim_due(NOW + 10, 1_000, 10).await.expect("claim").is_empty(), "held by its lease");
    // The holder died: after the lease, another worker gets it.
    let again = store.claim_due(NOW + 1_001, 1_000, 10).await.expect("claim");
    assert_eq!(again.len(), 1);
    let attempt = |n, ok| AttemptRecord {
        delivery_id: id.clone(),
        attempt: n,
        at_ms: NOW + 2_000,
        ok,
        status_code: Some(if ok { 200 } else { 500 }),
        error: (!ok).then(|| "receiver answered 500".to_owned()),
    };
    store.record_attempt(attempt(1, false), AttemptOutcome::RetryAt(NOW + 5_000)).await.expect("attempt");
    let d = store.get_delivery(&id).await.expect("get").expect("there");
    assert_eq!((d.status, d.attempts, d.next_attempt_ms), (DeliveryStatus::Pending, 1, NOW + 5_000));
    assert_eq!(d.last_error.as_deref(), Some("receiver answered 500"));
    assert!(store.claim_due(NOW + 4_999, 1_000, 10).await.expect("claim").is_empty(), "released, not yet due");
    assert_eq!(store.claim_due(NOW + 5_000, 1_000, 10).await.expect("claim").len(), 1);
    store.record_attempt(attempt(2, false), AttemptOutcome::Dead).await.expect("attempt");
    let d = store.get_delivery(&id).await.expect("get").expect("there");
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Dead, 2));
    assert!(store.claim_due(NOW + 100_000, 1_000, 10).await.expect("claim").is_empty(), "dead is never claimed");
    let dead = DeliveryQuery { status: Some(DeliveryStatus::Dead), limit: 10, ..DeliveryQuery::default() };
    assert_eq!(store.list_deliveries(dead).await.expect("list").len(), 1);
    assert!(store.redeliver(&id, NOW + 200_000).await.expect("redeliver"));
    assert!(!store.redeliver("msg_nope", NOW).await.expect("redeliver"));
    let d = store.get_delivery(&id).await.expect("get").expect("there");
    assert_eq!((d.status, d.attempts, d.next_attempt_ms), (DeliveryStatus::Pending, 0, NOW + 200_000));
    assert_eq!(store.claim_due(NOW + 200_000, 1_000, 10).await.expect("claim").len(), 1);
    store.record_attempt(attempt(1, true), AttemptOutcome::Delivered).await.expect("attempt");
    let d = store.get_delivery(&id).await.expect("get").expect("there");
    assert_eq!((d.status, d.delivered_at_ms), (DeliveryStatus::Delivered, Some(NOW + 2_000)));
    let attempts = store.list_attempts(&id).await.expect("attempts");
    assert_eq!(attempts.len(), 3, "every attempt is kept, redelivered ones too");
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3], "numbered by the store");
    assert_eq!(attempts.iter().map(|a| a.ok).collect::<Vec<_>>(), [false, false, true]);
}

pub async fn concurrent_claims_are_disjoint(store: Arc<dyn AlertStore>) {
    let mut ids = Vec::new();
    for i in 0..40 {
        let e = event(&format!("evt_c{i}"), "p1");
        let deliveries = crate::outbox::deliveries_for(&e, &["c1".into()], NOW);
        ids.push(deliveries[0].id.clone());
        store.enqueue(e, deliveries).await.expect("enqueue");
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim_due(NOW, 60_000, 3).await.expect("claim");
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    ids.sort();
    assert_eq!(all, ids, "every delivery claimed exactly once");
}
