//! The verify endpoint answers every code.

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn verify_answers_each_code() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let id = key[3..15].to_owned();

    let r = app.verify(json!({ "key": key })).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["valid"], true);
    assert_eq!(r.body["code"], "VALID");
    assert_eq!(r.body["key_id"], id.as_str());
    assert_eq!(r.body["project"], "acme");
    assert_eq!(r.body["plan"], "free");
    assert_eq!(r.body["near_limit"], false);
    assert_eq!(
        r.body["limits"][0],
        json!({ "name": "requests_per_minute", "limit": 10, "remaining": 9, "reset": r.body["limits"][0]["reset"] })
    );
    assert_eq!(r.body["limits"][1]["remaining"], 49_999);

    // dry_run charges nothing.
    let r = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(r.body["limits"][0]["remaining"], 9);

    let r = app.verify(json!({ "key": key, "cost": 9 })).await;
    assert_eq!(r.body["code"], "VALID");
    let r = app.verify(json!({ "key": key })).await;
    assert_eq!((r.body["valid"].as_bool(), r.body["code"].as_str()), (Some(false), Some("RATE_LIMITED")));
    assert!(r.body["retry_after"].as_u64().is_some_and(|s| s >= 1));

    for bad in ["tg_nope", "", "sk-live-123"] {
        let r = app.verify(json!({ "key": bad })).await;
        assert_eq!((r.status, r.body["code"].as_str()), (200, Some("NOT_FOUND")));
    }

    app.create_key(json!({ "project": "acme" })).await;
    let (quota_key, _) = app
        .create_key(json!({ "project": "acme", "limits": [{ "metric": "requests", "window": "month", "limit": 10 }] }))
        .await;
    let r = app.verify(json!({ "key": quota_key, "cost": 8 })).await;
    assert_eq!(r.body["near_limit"], false);
    let r = app.verify(json!({ "key": quota_key, "cost": 1 })).await;
    assert_eq!(r.body["near_limit"], true, "9 of 10 is 90 %");
    let r = app.verify(json!({ "key": quota_key, "cost": 2 })).await;
    assert_eq!(r.body["code"], "QUOTA_EXCEEDED");

    let (expiring, expiring_id) = app.create_key(json!({ "project": "acme" })).await;
    let r = app
        .admin(
            Method::PATCH,
            &format!("/api/v1/keys/{expiring_id}"),
            Some(json!({ "expires_at": "2020-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.verify(json!({ "key": expiring })).await.body["code"], "EXPIRED");
    assert_eq!(app.chat(&expiring).await.body["error"]["code"], "key_expired");

    app.admin(Method::POST, &format!("/api/v1/keys/{id}/revoke"), None).await;
    assert_eq!(app.verify(json!({ "key": key })).await.body["code"], "REVOKED");

    let r = app.verify(json!({ "cost": 1 })).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("key")));
    let r = app.verify(json!({ "key": quota_key, "cost": -1 })).await;
    assert_eq!(r.status, 400);
}

/// Issue 10, item 13: `client_ip`, `anonymous_id` and `endpoint` choose the counters a
/// verify is charged to, so they are taken only from a caller with an admin token
/// (a project-scoped one only for its own project's keys), never from anyone.
#[tokio::test]
async fn verify_takes_caller_chosen_identities_only_from_an_admin() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for field in [json!({ "client_ip": "198.51.100.7" }), json!({ "anonymous_id": "v1" }), json!({ "endpoint": "x" })] {
        let mut body = json!({ "key": key });
        body.as_object_mut().expect("object").extend(field.as_object().expect("object").clone());
        let r = app.verify(body.clone()).await;
        assert_eq!(r.status, 401, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_admin_token", "{:?}", r.body);
        let r = reply(app.http.post(app.url("/api/v1/keys/verify")).bearer_auth(ADMIN_TOKEN).json(&body)).await;
        assert_eq!((r.status, r.body["code"].as_str()), (200, Some("VALID")), "{body}: {:?}", r.body);
    }
    // A project token of another project learns nothing and charges nothing.
    app.create_project("other").await;
    let token = app.admin(Method::POST, "/api/v1/projects/other/tokens", None).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let body = json!({ "key": key, "client_ip": "198.51.100.7" });
    let r = reply(app.http.post(app.url("/api/v1/keys/verify")).bearer_auth(&token).json(&body)).await;
    assert_eq!((r.status, r.body["code"].as_str()), (200, Some("NOT_FOUND")), "{:?}", r.body);
}

/// JSON answers give times in RFC 3339 (docs/api.md); only the seeds' 429 body keeps
/// its Unix seconds.
#[tokio::test]
async fn verify_gives_resets_in_rfc_3339_like_usage_status() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let r = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(r.status, 200);
    for limit in r.body["limits"].as_array().expect("limits") {
        let reset = limit["reset"].as_str().expect("a string");
        assert!(reset.len() >= 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T', "{reset}");
    }
}
