//! Catalog scenarios: projects, plans, keys, secret rotation and admin tokens.

use serde_json::json;
use tollgate_core::{
    KeyHash, KeyRecord, KeyState, LimitSpec, Metric, Plan, Project, ProjectSettings, SubjectKind, Window,
};

use super::NOW;
use crate::{AdminTokenRecord, Catalog, KeyQuery, StoreError};

fn project(id: &str, name: &str) -> Project {
    Project::new(id, name, NOW)
}

fn plan(name: &str, per_minute: u64) -> Plan {
    Plan {
        name: name.to_owned(),
        description: Some(format!("{per_minute} requests/min")),
        limits: vec![
            LimitSpec::new(Metric::Requests, Window::Minute, per_minute),
            LimitSpec::new(Metric::Requests, Window::Month, per_minute * 1_000),
        ],
        time_zone: None,
    }
}

fn key(id: &str, project_id: &str, plan: &str) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        project_id: project_id.to_owned(),
        name: None,
        plan: plan.to_owned(),
        metadata: serde_json::Map::new(),
        limit_overrides: Vec::new(),
        created_at_ms: NOW,
        expires_at_ms: None,
        revoked_at_ms: None,
        version: 1,
    }
}

/// The hash a scenario uses for a made-up secret (the store never sees a secret).
fn secret(label: &str) -> KeyHash {
    KeyHash::of(&format!("conformance secret {label}"))
}

fn is_conflict<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict(_)))
}

fn is_not_found<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::NotFound { .. }))
}

async fn setup_project(catalog: &dyn Catalog, id: &str) {
    catalog.create_project(project(id, id)).await.expect("create project");
}

async fn setup_plan(catalog: &dyn Catalog, name: &str) {
    catalog.put_plan(plan(name, 10)).await.expect("put plan");
}

/// Projects: create, get, list, and `Conflict` on a taken id.
pub async fn projects(catalog: &dyn Catalog) {
    let a = project("conf-proj-a", "Project A");
    let b = project("conf-proj-b", "Project B");
    assert_eq!(catalog.create_project(a.clone()).await.expect("create a"), a);
    assert_eq!(catalog.create_project(b.clone()).await.expect("create b"), b);

    assert_eq!(catalog.get_project(&a.id).await.expect("get a"), Some(a.clone()));
    assert_eq!(catalog.get_project("conf-proj-missing").await.expect("get missing"), None);

    let dup = catalog.create_project(project(&a.id, "Impostor")).await;
    assert!(is_conflict(&dup), "duplicate project id must be a Conflict: {dup:?}");
    assert_eq!(
        catalog.get_project(&a.id).await.expect("get a again"),
        Some(a.clone()),
        "a refused duplicate must not overwrite the project"
    );

    let listed = catalog.list_projects().await.expect("list projects");
    assert!(listed.contains(&a) && listed.contains(&b), "list_projects: {listed:?}");
}

/// Plans: put (replaces), insert-if-absent (never overwrites), get, list, and delete
/// (refused with `Conflict` while any key, revoked or not, uses the plan).
pub async fn plans(catalog: &dyn Catalog) {
    let basic = plan("conf-plan-basic", 10);
    catalog.put_plan(basic.clone()).await.expect("put basic");
    assert_eq!(catalog.get_plan(&basic.name).await.expect("get basic"), Some(basic.clone()));

    // put replaces, including the limits and a description going away.
    let replaced = Plan {
        description: None,
        time_zone: Some(tollgate_core::Zone::parse("America/New_York").expect("zone")),
        ..plan(&basic.name, 20)
    };
    catalog.put_plan(replaced.clone()).await.expect("put replaced");
    assert_eq!(catalog.get_plan(&basic.name).await.expect("get replaced"), Some(replaced.clone()));

    // insert_plan_if_absent seeds but never overwrites.
    let inserted = catalog.insert_plan_if_absent(plan(&basic.name, 99)).await.expect("seed existing");
    assert!(!inserted, "insert_plan_if_absent must not overwrite an existing plan");
    assert_eq!(catalog.get_plan(&basic.name).await.expect("get kept"), Some(replaced.clone()));
    let seeded = plan("conf-plan-seeded", 5);
    assert!(catalog.insert_plan_if_absent(seeded.clone()).await.expect("seed new"));
    assert_eq!(catalog.get_plan(&seeded.name).await.expect("get seeded"), Some(seeded.clone()));

    let listed = catalog.list_plans().await.expect("list plans");
    assert!(listed.contains(&replaced) && listed.contains(&seeded), "list_plans: {listed:?}");
    assert_eq!(catalog.get_plan("conf-plan-missing").await.expect("get missing"), None);

    // A key on the plan blocks its deletion, even once revoked.
    setup_project(catalog, "conf-plan-owner").await;
    let record = key("confPlanKey1", "conf-plan-owner", &seeded.name);
    let created = catalog.create_key(record, secret("plan key")).await.expect("create key");
    let refused = catalog.delete_plan(&seeded.name).await;
    assert!(is_conflict(&refused), "delete of a plan in use must be a Conflict: {refused:?}");
    assert_eq!(catalog.get_plan(&seeded.name).await.expect("get in use"), Some(seeded.clone()));

    let revoked = catalog.update_key(KeyRecord { revoked_at_ms: Some(NOW), ..created }).await.expect("revoke");
    let refused = catalog.delete_plan(&seeded.name).await;
    assert!(is_conflict(&refused), "a revoked key still uses its plan: {refused:?}");

    // Moving the key to another plan frees it.
    catalog.update_key(KeyRecord { plan: basic.name.clone(), ..revoked }).await.expect("move key to another plan");
    assert!(catalog.delete_plan(&seeded.name).await.expect("delete unused plan"));
    assert_eq!(catalog.get_plan(&seeded.name).await.expect("get deleted"), None);
    assert!(!catalog.delete_plan(&seeded.name).await.expect("delete again"));
    assert!(!catalog.delete_plan("conf-plan-never").await.expect("delete unknown"));
}

/// Keys: create (every field round-trips), get, `Conflict` on a taken id or secret
/// hash, list ordered by id with `after_id` pagination and a project filter, and
/// lookup by secret hash.
pub async fn keys_create_get_list(catalog: &dyn Catalog) {
    setup_project(catalog, "conf-keys-1").await;
    setup_project(catalog, "conf-keys-2").await;
    setup_plan(catalog, "conf-keys-plan").await;

    let mut full = key("confKeysAAA1", "conf-keys-1", "conf-keys-plan");
    full.name = Some("search backend".to_owned());
    full.metadata = json!({ "team": "search", "tier": 3, "tags": ["a", "b"] }).as_object().cloned().unwrap_or_default();
    full.limit_overrides = vec![LimitSpec::new(Metric::TotalTokens, Window::Day, 5_000)];
    full.expires_at_ms = Some(NOW + 86_400_000);
    let b = key("confKeysBBB2", "conf-keys-1", "conf-keys-plan");
    let c = key("confKeysCCC3", "conf-keys-1", "conf-keys-plan");
    let other = key("confKeysAAB4", "conf-keys-2", "conf-keys-plan");

    // Created out of id order on purpose: listing must sort.
    for record in [&c, &full, &other, &b] {
        let created = catalog.create_key(record.clone(), secret(&record.id)).await.expect("create key");
        assert_eq!(&created, record, "create_key returns what it stored");
    }
    assert_eq!(catalog.get_key(&full.id).await.expect("get"), Some(full.clone()));
    assert_eq!(catalog.get_key("confKeysNone").await.expect("get missing"), None);

    let dup_id = catalog.create_key(key(&b.id, "conf-keys-2", "conf-keys-plan"), secret("fresh")).await;
    assert!(is_conflict(&dup_id), "duplicate key id must be a Conflict: {dup_id:?}");
    let dup_hash = catalog.create_key(key("confKeysDDD5", "conf-keys-1", "conf-keys-plan"), secret(&b.id)).await;
    assert!(is_conflict(&dup_hash), "a secret hash already in use must be a Conflict: {dup_hash:?}");
    assert_eq!(catalog.get_key("confKeysDDD5").await.expect("get refused"), None, "refused create left a key");
    assert_eq!(catalog.get_key(&b.id).await.expect("get b"), Some(b.clone()));
    let found = catalog.lookup_key(&secret(&b.id), NOW).await.expect("lookup b");
    assert_eq!(found.as_deref(), Some(&b), "a refused create must not steal a secret");

    let page = |project: Option<&str>, after: Option<&str>, limit: usize| KeyQuery {
        project_id: project.map(str::to_owned),
        after_id: after.map(str::to_owned),
        limit,
    };
    let ids = |keys: Vec<KeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();

    let all_1 = catalog.list_keys(page(Some("conf-keys-1"), None, 10)).await.expect("list");
    assert_eq!(all_1, vec![full.clone(), b.clone(), c.clone()], "list_keys orders by id");
    let first = catalog.list_keys(page(Some("conf-keys-1"), None, 2)).await.expect("page 1");
    assert_eq!(ids(first), [full.id.as_str(), b.id.as_str()]);
    let second = catalog.list_keys(page(Some("conf-keys-1"), Some(&b.id), 2)).await.expect("page 2");
    assert_eq!(ids(second), [c.id.as_str()]);
    let past_end = catalog.list_keys(page(Some("conf-keys-1"), Some(&c.id), 2)).await.expect("page 3");
    assert!(past_end.is_empty(), "after the last id: {past_end:?}");
    let in_2 = catalog.list_keys(page(Some("conf-keys-2"), None, 10)).await.expect("list 2");
    assert_eq!(in_2, vec![other.clone()]);
    let none = catalog.list_keys(page(Some("conf-keys-none"), None, 10)).await.expect("list none");
    assert!(none.is_empty());

    let everything = catalog.list_keys(page(None, None, 10_000)).await.expect("list all");
    assert!(everything.windows(2).all(|w| w[0].id < w[1].id), "list_keys without filter is ordered");
    let ours: Vec<String> = ids(everything).into_iter().filter(|id| id.starts_with("confKeys")).collect();
    assert_eq!(ours, [full.id.as_str(), other.id.as_str(), b.id.as_str(), c.id.as_str()]);
    let after = catalog.list_keys(page(None, Some(&full.id), 10_000)).await.expect("list after");
    assert!(after.iter().all(|k| k.id > full.id), "after_id without a project filter");

    for record in [&full, &b, &c, &other] {
        let found = catalog.lookup_key(&secret(&record.id), NOW).await.expect("lookup");
        assert_eq!(found.as_deref(), Some(record), "lookup by the secret's hash");
    }
}

/// `update_key` with optimistic versions, and revocation through it.
pub async fn update_key_versions_and_revocation(catalog: &dyn Catalog) {
    setup_project(catalog, "conf-update").await;
    setup_plan(catalog, "conf-update-plan").await;
    let original = key("confUpdate01", "conf-update", "conf-update-plan");
    let hash = secret("update");
    catalog.create_key(original.clone(), hash).await.expect("create");

    let renamed = KeyRecord { name: Some("renamed".to_owned()), ..original.clone() };
    let updated = catalog.update_key(renamed.clone()).await.expect("update");
    assert_eq!(updated.version, original.version + 1, "update bumps the version");
    assert_eq!(updated, KeyRecord { version: original.version + 1, ..renamed.clone() });
    assert_eq!(catalog.get_key(&original.id).await.expect("get"), Some(updated.clone()));
    let looked_up = catalog.lookup_key(&hash, NOW).await.expect("lookup");
    assert_eq!(looked_up.as_deref(), Some(&updated), "lookup sees the update at once");

    // The same stale version again: somebody else's write won.
    let stale = catalog.update_key(KeyRecord { name: Some("lost update".to_owned()), ..renamed }).await;
    assert!(is_conflict(&stale), "a stale version must be a Conflict: {stale:?}");
    assert_eq!(catalog.get_key(&original.id).await.expect("get after stale"), Some(updated.clone()));

    let missing = catalog.update_key(key("confUpdateNo", "conf-update", "conf-update-plan")).await;
    assert!(is_not_found(&missing), "updating an unknown key is NotFound: {missing:?}");

    // Revocation is an update; lookup still finds the key so the caller can say why.
    let revoked =
        catalog.update_key(KeyRecord { revoked_at_ms: Some(NOW + 5), ..updated.clone() }).await.expect("revoke");
    assert_eq!(revoked.version, updated.version + 1);
    let found = catalog.lookup_key(&hash, NOW + 10).await.expect("lookup revoked");
    let found = found.expect("a revoked key is still found by lookup");
    assert_eq!(found.revoked_at_ms, Some(NOW + 5));
    assert_eq!(found.state(NOW + 10), KeyState::Revoked);
    assert_eq!(found.version, revoked.version);
}

/// `rotate_key_secret`: the new secret works, old ones work until the grace period
/// ends (exclusive) or stop at once, and a grace period is never extended.
pub async fn rotate_key_secret(catalog: &dyn Catalog) {
    setup_project(catalog, "conf-rotate").await;
    setup_plan(catalog, "conf-rotate-plan").await;
    let record = key("confRotate01", "conf-rotate", "conf-rotate-plan");
    let (h1, h2, h3, h4) = (secret("rot 1"), secret("rot 2"), secret("rot 3"), secret("rot 4"));
    catalog.create_key(record.clone(), h1).await.expect("create");

    let grace_1 = NOW + 60_000;
    let v2 = catalog.rotate_key_secret(&record.id, h2, Some(grace_1)).await.expect("rotate 1");
    assert_eq!(v2.version, record.version + 1, "rotation bumps the version");
    assert_eq!(catalog.get_key(&record.id).await.expect("get"), Some(v2.clone()));
    for (hash, at, works) in [(h2, NOW, true), (h1, NOW, true), (h1, grace_1 - 1, true), (h1, grace_1, false)] {
        let found = catalog.lookup_key(&hash, at).await.expect("lookup");
        assert_eq!(found.is_some(), works, "secret {hash:?} at {at}");
        if let Some(found) = found {
            assert_eq!(*found, v2, "every secret of a key sees its latest record");
        }
    }
    let far = catalog.lookup_key(&h2, NOW + 1_000_000_000).await.expect("lookup new later");
    assert!(far.is_some(), "the newest secret does not expire");

    // A second rotation with a longer grace period does not bring h1 back longer.
    let grace_2 = NOW + 120_000;
    let v3 = catalog.rotate_key_secret(&record.id, h3, Some(grace_2)).await.expect("rotate 2");
    assert_eq!(v3.version, v2.version + 1);
    let probes = [
        (h1, grace_1 - 1, true),
        (h1, grace_1, false),
        (h2, grace_2 - 1, true),
        (h2, grace_2, false),
        (h3, grace_2, true),
    ];
    for (hash, at, works) in probes {
        let found = catalog.lookup_key(&hash, at).await.expect("lookup");
        assert_eq!(found.is_some(), works, "secret {hash:?} at {at} after the second rotation");
    }

    // Without a grace period every older secret stops at once.
    let v4 = catalog.rotate_key_secret(&record.id, h4, None).await.expect("rotate 3");
    assert_eq!(v4.version, v3.version + 1);
    for hash in [h1, h2, h3] {
        assert!(catalog.lookup_key(&hash, NOW).await.expect("lookup old").is_none(), "{hash:?} retired");
    }
    let found = catalog.lookup_key(&h4, NOW).await.expect("lookup newest");
    assert_eq!(found.as_deref(), Some(&v4));

    // A hash that belongs to another key is refused and changes nothing.
    setup_plan(catalog, "conf-rotate-plan-2").await;
    let neighbour = key("confRotate02", "conf-rotate", "conf-rotate-plan-2");
    let neighbour_hash = secret("neighbour");
    catalog.create_key(neighbour.clone(), neighbour_hash).await.expect("create neighbour");
    let stolen = catalog.rotate_key_secret(&record.id, neighbour_hash, None).await;
    assert!(is_conflict(&stolen), "rotating to a hash in use must be a Conflict: {stolen:?}");
    let found = catalog.lookup_key(&neighbour_hash, NOW).await.expect("lookup neighbour");
    assert_eq!(found.as_deref(), Some(&neighbour));
    let found = catalog.lookup_key(&h4, NOW).await.expect("lookup after refusal");
    assert_eq!(found.as_deref(), Some(&v4), "a refused rotation leaves the key as it was");

    let missing = catalog.rotate_key_secret("confRotateNo", secret("nobody"), None).await;
    assert!(is_not_found(&missing), "rotating an unknown key is NotFound: {missing:?}");
}

/// A hash nobody stored is `None`, not an error.
pub async fn lookup_unknown_hash(catalog: &dyn Catalog) {
    let found = catalog.lookup_key(&secret("never stored"), NOW).await.expect("lookup");
    assert!(found.is_none());
    let found = catalog.lookup_admin_token(&secret("never stored")).await.expect("lookup admin");
    assert!(found.is_none());
}

fn token(hash: &KeyHash, project_id: Option<&str>) -> AdminTokenRecord {
    AdminTokenRecord {
        id: AdminTokenRecord::id_for(hash),
        project_id: project_id.map(str::to_owned),
        name: Some("conformance".to_owned()),
        prefix: Some("tga_Conf".to_owned()),
        created_at_ms: NOW,
        expires_at_ms: None,
        revoked_at_ms: None,
    }
}

/// Admin tokens: scoped and operator tokens, lookup by hash and by id, listing per
/// project, expiry and revocation, and `has_operator_token` counting only usable
/// operator tokens. Needs a catalog with no admin token yet.
pub async fn admin_tokens(catalog: &dyn Catalog) {
    assert!(!catalog.has_operator_token(NOW).await.expect("has operator (empty)"));
    assert!(catalog.list_admin_tokens(None).await.expect("list (empty)").is_empty());

    let scoped = secret("admin scoped");
    let scoped_record = token(&scoped, Some("conf-admin"));
    let stored = catalog.create_admin_token(scoped_record.clone(), scoped).await.expect("create scoped");
    assert_eq!(stored, scoped_record);
    assert_eq!(catalog.lookup_admin_token(&scoped).await.expect("lookup scoped"), Some(scoped_record.clone()));
    assert_eq!(catalog.get_admin_token(&scoped_record.id).await.expect("get scoped"), Some(scoped_record.clone()));
    assert!(
        !catalog.has_operator_token(NOW).await.expect("has operator (scoped only)"),
        "a project-scoped token is not an operator token"
    );

    // An operator token that has expired does not count; one that has not does.
    let expired = secret("admin expired operator");
    let expired_record = AdminTokenRecord { expires_at_ms: Some(NOW - 1), ..token(&expired, None) };
    catalog.create_admin_token(expired_record.clone(), expired).await.expect("create expired");
    assert!(!catalog.has_operator_token(NOW).await.expect("has operator (expired only)"));
    assert_eq!(catalog.lookup_admin_token(&expired).await.expect("lookup expired"), Some(expired_record.clone()));
    assert_eq!(expired_record.state(NOW), KeyState::Expired);

    let operator = secret("admin operator");
    let operator_record = AdminTokenRecord { expires_at_ms: Some(NOW + 60_000), ..token(&operator, None) };
    catalog.create_admin_token(operator_record.clone(), operator).await.expect("create operator");
    assert!(catalog.has_operator_token(NOW).await.expect("has operator"));
    assert!(!catalog.has_operator_token(NOW + 60_000).await.expect("has operator after its expiry"));
    assert_eq!(catalog.lookup_admin_token(&operator).await.expect("lookup operator"), Some(operator_record.clone()));

    let dup = catalog.create_admin_token(token(&scoped, None), scoped).await;
    assert!(is_conflict(&dup), "a token hash already stored must be a Conflict: {dup:?}");
    assert_eq!(
        catalog.lookup_admin_token(&scoped).await.expect("lookup after dup"),
        Some(scoped_record.clone()),
        "a refused duplicate must not widen the token's scope"
    );
    assert_eq!(catalog.lookup_admin_token(&secret("admin none")).await.expect("lookup none"), None);

    // Listing: one project's, or all, ordered by id.
    let mine = catalog.list_admin_tokens(Some("conf-admin")).await.expect("list project");
    assert_eq!(mine, vec![scoped_record.clone()]);
    assert!(catalog.list_admin_tokens(Some("conf-other")).await.expect("list other").is_empty());
    let all = catalog.list_admin_tokens(None).await.expect("list all");
    let mut ids: Vec<&str> = [&scoped_record, &expired_record, &operator_record].map(|r| r.id.as_str()).to_vec();
    ids.sort_unstable();
    assert_eq!(all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ids);

    // Revocation: kept with its time, the first time wins, and an operator token
    // revoked no longer counts.
    let revoked = catalog.revoke_admin_token(&operator_record.id, NOW + 5).await.expect("revoke").expect("found");
    assert_eq!(revoked.revoked_at_ms, Some(NOW + 5));
    let again = catalog.revoke_admin_token(&operator_record.id, NOW + 9).await.expect("revoke again").expect("found");
    assert_eq!(again.revoked_at_ms, Some(NOW + 5), "a second revoke keeps the first time");
    assert_eq!(catalog.lookup_admin_token(&operator).await.expect("lookup revoked"), Some(revoked.clone()));
    assert_eq!(revoked.state(NOW + 5), KeyState::Revoked);
    assert!(!catalog.has_operator_token(NOW + 10).await.expect("has operator after revoke"));
    assert_eq!(catalog.revoke_admin_token("0000000000000000", NOW).await.expect("revoke unknown"), None);
    assert_eq!(catalog.get_admin_token("0000000000000000").await.expect("get unknown"), None);
}

/// Project settings: stored with the project, replaced by `update_project` (which
/// keeps `created_at_ms`), `NotFound` for a project that does not exist.
pub async fn project_settings(catalog: &dyn Catalog) {
    let created = catalog.create_project(project("conf-settings", "Settings")).await.expect("create");
    assert_eq!(created.settings, ProjectSettings::default());
    assert_eq!(created.settings.allowed_plans, vec!["free".to_owned()], "keys default to free, and only free");

    let settings = ProjectSettings {
        allowed_plans: vec!["free".to_owned(), "starter".to_owned()],
        max_overrides: vec![LimitSpec::new(Metric::Requests, Window::Minute, 100)],
        limits: vec![LimitSpec::new(Metric::CostMicros, Window::Month, 5_000_000).with_subject(SubjectKind::Project)],
        openai_organization: Some("org-conformance".to_owned()),
        openai_project: Some("proj_conformance".to_owned()),
        time_zone: Some(tollgate_core::Zone::parse("Asia/Kolkata").expect("zone")),
        cache: tollgate_core::CacheSettings {
            enabled: true,
            ttl_secs: 120,
            deterministic_only: false,
            hits_count: tollgate_core::HitsCount { requests: true, tokens: true, cost: false },
            semantic: true,
            semantic_threshold: tollgate_core::Similarity::new(0.875).expect("a similarity"),
        },
        byok_fallback: tollgate_core::ByokFallback::Never,
    };
    let changed = Project { name: "Renamed".to_owned(), created_at_ms: NOW + 1_000, settings, ..created.clone() };
    let stored = catalog.update_project(changed.clone()).await.expect("update");
    let expected = Project { created_at_ms: NOW, ..changed };
    assert_eq!(stored, expected, "update_project keeps created_at_ms");
    assert_eq!(catalog.get_project("conf-settings").await.expect("get"), Some(expected.clone()));
    assert!(catalog.list_projects().await.expect("list").contains(&expected));

    let missing = catalog.update_project(project("conf-settings-missing", "x")).await;
    assert!(is_not_found(&missing), "updating an unknown project is NotFound: {missing:?}");
    assert_eq!(catalog.get_project("conf-settings-missing").await.expect("get missing"), None);
}
