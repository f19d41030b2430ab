//! The alert store conformance suite against SQLite, one test per scenario.

use std::sync::Arc;

use tollgate_alerts::{AlertStore, conformance};
use tollgate_store_embedded::EmbeddedStore;

fn fresh() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (EmbeddedStore::open(dir.path()).expect("open"), dir)
}

macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (store, _dir) = fresh();
            conformance::$name(&store.alerts()).await;
        }
    )+};
}

scenarios!(rules_round_trip, channels_round_trip, an_event_is_enqueued_once, claims_leases_and_outcomes);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_are_disjoint() {
    let (store, _dir) = fresh();
    let alerts: Arc<dyn AlertStore> = Arc::new(store.alerts());
    conformance::concurrent_claims_are_disjoint(alerts).await;
}

#[tokio::test]
async fn the_outbox_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = conformance::event("evt_r", "p1");
    let deliveries = tollgate_alerts::outbox::deliveries_for(&e, &["c1".into()], conformance::NOW);
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert!(store.alerts().enqueue(e.clone(), deliveries.clone()).await.expect("enqueue"));
        store.close().await.expect("close");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert!(!store.alerts().enqueue(e, deliveries).await.expect("enqueue again"), "already there");
    assert_eq!(store.alerts().claim_due(conformance::NOW, 1_000, 10).await.expect("claim").len(), 1);
}
