//! The provider key conformance suite against SQLite, and what the database file holds.

use tollgate_store::conformance;
use tollgate_store_embedded::EmbeddedStore;

fn fresh() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (EmbeddedStore::open(dir.path()).expect("open"), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_round_trip() {
    let (store, _dir) = fresh();
    conformance::provider_keys::provider_keys_round_trip(&store.provider_keys()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_pages_and_reseal() {
    let (store, _dir) = fresh();
    conformance::provider_keys::provider_keys_pages_and_reseal(&store.provider_keys()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        conformance::provider_keys::provider_keys_round_trip(&store.provider_keys()).await;
        store.close().await.expect("close");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let keys =
        tollgate_store::ProviderKeyStore::list_provider_keys(&store.provider_keys(), "pk-a").await.expect("list");
    assert_eq!(keys.len(), 1, "{keys:?}");
}
