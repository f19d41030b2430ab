//! Provider key scenarios ([`ProviderKeyStore`]): put, replace, list, delete, pages and
//! the compare-and-swap re-seal of rotation. The sealed values here are opaque strings:
//! sealing is the caller's (the stores never see a key in clear).

use super::NOW;
use crate::provider_keys::{ProviderKeyCursor, ProviderKeyRecord, ProviderKeyStore};

fn record(project_id: &str, provider: &str, sealed: &str, at_ms: i64) -> ProviderKeyRecord {
    ProviderKeyRecord {
        project_id: project_id.to_owned(),
        provider: provider.to_owned(),
        sealed_key: sealed.to_owned(),
        hint: "sk-…abcd".to_owned(),
        base_url: None,
        created_at_ms: at_ms,
        updated_at_ms: at_ms,
    }
}

/// Put, get, replace (created kept), list per project in provider order, delete.
pub async fn provider_keys_round_trip(store: &dyn ProviderKeyStore) {
    assert_eq!(store.get_provider_key("pk-a", "openai").await.expect("get"), None);
    let first = store.put_provider_key(record("pk-a", "openai", "v1:00000001:Zmlyc3Q=", NOW)).await.expect("put");
    assert_eq!(first, record("pk-a", "openai", "v1:00000001:Zmlyc3Q=", NOW));
    let mut replacement = record("pk-a", "openai", "v1:00000001:c2Vjb25k", NOW + 5_000);
    replacement.base_url = Some("https://eu.example.com/v1".to_owned());
    replacement.hint = "sk-…wxyz".to_owned();
    let replaced = store.put_provider_key(replacement.clone()).await.expect("replace");
    assert_eq!(replaced, ProviderKeyRecord { created_at_ms: NOW, ..replacement.clone() }, "created_at_ms kept");
    assert_eq!(store.get_provider_key("pk-a", "openai").await.expect("get"), Some(replaced.clone()));

    let anthropic = store.put_provider_key(record("pk-a", "anthropic", "v1:00000001:YW50", NOW)).await.expect("put");
    store.put_provider_key(record("pk-b", "openai", "v1:00000001:b3RoZXI=", NOW)).await.expect("put other");
    let listed = store.list_provider_keys("pk-a").await.expect("list");
    assert_eq!(listed, vec![anthropic, replaced], "one project's keys, by provider");
    assert_eq!(store.list_provider_keys("pk-none").await.expect("list"), Vec::new());

    assert!(store.delete_provider_key("pk-a", "anthropic").await.expect("delete"));
    assert!(!store.delete_provider_key("pk-a", "anthropic").await.expect("delete again"));
    assert_eq!(store.get_provider_key("pk-a", "anthropic").await.expect("get"), None);
    assert_eq!(store.list_provider_keys("pk-a").await.expect("list").len(), 1);
    assert!(store.get_provider_key("pk-b", "openai").await.expect("get").is_some(), "another project's key stays");
}

/// Every project's keys in (project, provider) order, in pages that resume after a
/// cursor; a re-seal replaces only the value it expected, and keeps `updated_at_ms`.
pub async fn provider_keys_pages_and_reseal(store: &dyn ProviderKeyStore) {
    for project in ["pkp-1", "pkp-2", "pkp-3"] {
        for provider in ["anthropic", "openai"] {
            store.put_provider_key(record(project, provider, "v1:0000000a:b2xk", NOW)).await.expect("put");
        }
    }
    let mut seen = Vec::new();
    let mut after: Option<ProviderKeyCursor> = None;
    loop {
        let page = store.provider_keys_page(after.as_ref(), 4).await.expect("page");
        assert!(page.len() <= 4, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = Some(ProviderKeyCursor { project_id: last.project_id.clone(), provider: last.provider.clone() });
        seen.extend(page.into_iter().map(|r| (r.project_id, r.provider)));
    }
    let ours: Vec<(String, String)> = seen.into_iter().filter(|(p, _)| p.starts_with("pkp-")).collect();
    let expected: Vec<(String, String)> = ["pkp-1", "pkp-2", "pkp-3"]
        .iter()
        .flat_map(|p| ["anthropic", "openai"].map(|v| ((*p).to_owned(), v.to_owned())))
        .collect();
    assert_eq!(ours, expected, "every key once, in order");

    assert!(
        store.reseal_provider_key("pkp-2", "openai", "v1:0000000a:b2xk", "v1:0000000b:bmV3").await.expect("reseal"),
        "the expected value is replaced"
    );
    let resealed = store.get_provider_key("pkp-2", "openai").await.expect("get").expect("there");
    assert_eq!(resealed.sealed_key, "v1:0000000b:bmV3");
    assert_eq!(resealed.updated_at_ms, NOW, "a re-seal is not an update");
    assert!(
        !store.reseal_provider_key("pkp-2", "openai", "v1:0000000a:b2xk", "v1:0000000b:b3RoZXI=").await.expect("cas"),
        "a value changed meanwhile is left alone"
    );
    assert_eq!(
        store.get_provider_key("pkp-2", "openai").await.expect("get").expect("there").sealed_key,
        "v1:0000000b:bmV3"
    );
    assert!(!store.reseal_provider_key("pkp-9", "openai", "x", "y").await.expect("missing"), "no such key");
}
