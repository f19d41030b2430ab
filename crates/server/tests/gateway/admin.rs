//! The admin API: auth, validation, plans, regeneration, tenant isolation.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_admin_api_refuses_missing_and_wrong_tokens() {
    let app = spawn_app().await;
    let r = reply(app.http.get(app.url("/api/v1/keys"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_admin_token");
    let r = app.admin_as("tga_wrong", Method::GET, "/api/v1/plans", None).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn plans_are_seeded_and_editable() {
    let app = spawn_app().await;
    let r = app.admin(Method::GET, "/api/v1/plans", None).await;
    let names: Vec<&str> =
        r.body["data"].as_array().expect("plans").iter().filter_map(|p| p["name"].as_str()).collect();
    for plan in ["free", "starter", "pro", "enterprise"] {
        assert!(names.contains(&plan), "{plan} missing from {names:?}");
    }
    let r = app.admin(Method::GET, "/api/v1/plans/starter", None).await;
    assert_eq!(
        r.body["limits"][0],
        json!({ "name": "requests_per_minute", "metric": "requests", "window": "minute", "limit": 50 })
    );
    assert_eq!(r.body["limits"][1]["limit"], 250_000);

    // Edit free down to 2/min: keys on it follow at once.
    let key = app.project_key("acme", "free").await;
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/free",
            Some(json!({ "limits": [{ "metric": "requests", "window": "minute", "limit": 2 }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.chat(&key).await.status, 200);
    assert_eq!(app.chat(&key).await.status, 200);
    assert_eq!(app.chat(&key).await.status, 429);

    // Validation names the field.
    let r = app.admin(Method::POST, "/api/v1/plans", Some(json!({ "name": "Bad Name", "limits": [] }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "name");
    let r = app
        .admin(
            Method::POST,
            "/api/v1/plans",
            Some(json!({ "name": "x", "limits": [{ "metric": "requests", "window": "week", "limit": 1 }] })),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]["message"].as_str().is_some_and(|m| m.contains("window") || m.contains("week")),
        "{:?}",
        r.body
    );
    let r = app.admin(Method::DELETE, "/api/v1/plans/free", None).await;
    assert_eq!(r.status, 409, "a plan in use cannot be deleted");
    let r = app.admin(Method::POST, "/api/v1/keys", Some(json!({ "project": "acme", "plan": "nope" }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "plan");
    let r = app.admin(Method::POST, "/api/v1/keys", Some(json!({ "project": "ghost" }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "project");
}

#[tokio::test]
async fn regenerate_keeps_the_id_and_honours_the_grace_period() {
    let app = spawn_app().await;
    let old = app.project_key("acme", "pro").await;
    let id = &old[3..15];
    let r = app
        .admin(Method::POST, &format!("/api/v1/keys/{id}/regenerate"), Some(json!({ "grace_period_secs": 3600 })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new = r.body["key"].as_str().expect("new secret").to_owned();
    assert_eq!(&new[3..15], id);
    assert_ne!(new, old);
    assert_eq!(app.chat(&new).await.status, 200);
    assert_eq!(app.chat(&old).await.status, 200, "old secret works during the grace period");

    let r = app.admin(Method::POST, &format!("/api/v1/keys/{id}/regenerate"), None).await;
    let newest = r.body["key"].as_str().unwrap_or_else(|| panic!("{} {:?}", r.status, r.body)).to_owned();
    assert_eq!(app.chat(&newest).await.status, 200);
    assert_eq!(app.chat(&new).await.status, 401, "no grace: the previous secret stops at once");

    // Usage history stays on the same key id.
    let usage = app.usage(&format!("?key={id}")).await;
    assert_eq!(usage["data"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_project_token_sees_only_its_own_project() {
    let app = spawn_app().await;
    let key_a = app.project_key("alpha", "free").await;
    let key_b = app.project_key("beta", "free").await;
    let (id_a, id_b) = (&key_a[3..15], &key_b[3..15]);
    app.chat(&key_b).await;
    let r = app.admin(Method::POST, "/api/v1/projects/alpha/tokens", None).await;
    assert_eq!(r.status, 201);
    let token = r.body["token"].as_str().expect("token").to_owned();

    let ok = app.admin_as(&token, Method::GET, &format!("/api/v1/keys/{id_a}"), None).await;
    assert_eq!(ok.status, 200);
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/keys/{id_b}"), None),
        (Method::PATCH, format!("/api/v1/keys/{id_b}"), Some(json!({ "plan": "pro" }))),
        (Method::POST, format!("/api/v1/keys/{id_b}/revoke"), None),
        (Method::POST, format!("/api/v1/keys/{id_b}/regenerate"), None),
        (Method::DELETE, format!("/api/v1/keys/{id_b}"), None),
        (Method::GET, "/api/v1/projects/beta".to_owned(), None),
        (Method::GET, "/api/v1/keys?project=beta".to_owned(), None),
        (Method::GET, "/api/v1/usage?project=beta".to_owned(), None),
        (Method::GET, format!("/api/v1/usage?key={id_b}"), None),
        (Method::POST, "/api/v1/keys".to_owned(), Some(json!({ "project": "beta" }))),
    ] {
        let r = app.admin_as(&token, method.clone(), &path, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
    }
    for (method, path, body) in [
        (Method::POST, "/api/v1/projects", json!({ "id": "x" })),
        (Method::PUT, "/api/v1/plans/free", json!({ "limits": [] })),
        (Method::POST, "/api/v1/projects/alpha/tokens", json!({})),
    ] {
        let r = app.admin_as(&token, method, path, Some(body)).await;
        assert_eq!(r.status, 403, "{path}: {:?}", r.body);
    }
    let listed = app.admin_as(&token, Method::GET, "/api/v1/keys", None).await;
    let ids: Vec<&str> =
        listed.body["data"].as_array().expect("keys").iter().filter_map(|k| k["id"].as_str()).collect();
    assert_eq!(ids, vec![id_a]);
    let usage = app.admin_as(&token, Method::GET, "/api/v1/usage", None).await;
    assert_eq!(usage.body["data"].as_array().map(Vec::len), Some(0));
    let projects = app.admin_as(&token, Method::GET, "/api/v1/projects", None).await;
    assert_eq!(projects.body["data"].as_array().map(Vec::len), Some(1));
    // The other project's key is untouched.
    assert_eq!(app.chat(&key_b).await.status, 200);
}
