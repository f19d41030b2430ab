//! The keys pages: the list with search and paging, create (the secret shown once),
//! a key's page with its usage and quotas, edit, rotate and revoke.
use super::*;

pub(super) struct KeyCreateForm<'a> {
    project: &'a str,
    name: &'a str,
    plan: &'a str,
}

pub(super) async fn keys_page(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    render_keys(&d, &session, &q, StatusCode::OK, FieldErrors::default(), None).await
}

pub(super) async fn render_keys(
    d: &Dashboard,
    session: &Session,
    q: &Fields,
    status: StatusCode,
    errors: FieldErrors,
    form: Option<KeyCreateForm<'_>>,
) -> Page {
    let search = q.get("q");
    let project = scoped_project(session, q.get("project"));
    let after = q.get("after");
    // A search reads up to 1,000 keys and filters them; otherwise one page by id.
    let limit = if search.is_empty() { KEYS_PAGE } else { 1000 };
    let limit_s = limit.to_string();
    let list = d
        .read(
            session,
            &format!(
                "/api/v1/keys{}",
                query_string(&[("project", project.as_str()), ("after", after), ("limit", limit_s.as_str())])
            ),
        )
        .await?;
    let mut keys: Vec<Value> = list["data"].as_array().cloned().unwrap_or_default();
    let needle = search.to_lowercase();
    if !needle.is_empty() {
        keys.retain(|k| {
            ["id", "name"].iter().any(|f| k[*f].as_str().is_some_and(|v| v.to_lowercase().contains(&needle)))
        });
        keys.truncate(200);
    }
    let next_after = if search.is_empty() { list["next_after"].as_str().map(str::to_owned) } else { None };
    let mut listed: Vec<&str> = keys.iter().filter_map(|k| k["project"].as_str()).collect();
    listed.sort_unstable();
    listed.dedup();
    let mut statuses = Vec::new();
    for p in listed {
        let uri = format!("/api/v1/usage/status{}", query_string(&[("project", p)]));
        statuses.extend(d.read_optional(session, &uri).await);
    }
    let projects = if session.is_operator() { d.project_ids(session).await } else { Vec::new() };
    let plans = d.plan_names(session).await;
    let own = session.project.clone().unwrap_or_default();
    let default_project =
        if project.is_empty() { projects.first().cloned().unwrap_or_default() } else { project.clone() };
    let (form_project, form_name, form_plan) = match &form {
        Some(f) => (f.project.to_owned(), f.name.to_owned(), f.plan.to_owned()),
        None => {
            (if own.is_empty() { default_project } else { own }, String::new(), tollgate_core::DEFAULT_PLAN.to_owned())
        }
    };
    let layout = Layout::new("Keys", "keys", session.project.as_deref(), &session.csrf);
    let data = pages::KeysData {
        statuses: &statuses,
        q: search,
        project: if session.is_operator() { &project } else { "" },
        projects,
        plans,
        keys: &keys,
        next_after: next_after.as_deref(),
        has_prev: !after.is_empty(),
        errors,
        form_project: &form_project,
        form_name: &form_name,
        form_plan: &form_plan,
    };
    Ok(rendered(status, pages::keys(layout, data)))
}

pub(super) async fn create_key(State(d): State<Dashboard>, headers: HeaderMap, body: Bytes) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let project = scoped_project(&session, f.get("project"));
    let mut request = Map::new();
    request.insert("project".into(), json!(project));
    if !f.get("plan").is_empty() {
        request.insert("plan".into(), json!(f.get("plan")));
    }
    if !f.get("name").is_empty() {
        request.insert("name".into(), json!(f.get("name")));
    }
    match d.call(&session, Method::POST, "/api/v1/keys", Some(&Value::Object(request))).await {
        Ok(created) => {
            let layout = Layout::new("New key", "keys", session.project.as_deref(), &session.csrf);
            Ok(rendered(StatusCode::CREATED, pages::secret(layout, "Key created", &created, &base_url(&headers))))
        }
        Err(fail) if fail.status == StatusCode::UNAUTHORIZED => Err(see_other("/dashboard/login")),
        Err(fail) => {
            let form = KeyCreateForm { project: &project, name: f.get("name"), plan: f.get("plan") };
            let q = Fields(Vec::new());
            render_keys(&d, &session, &q, fail.status, fail.errors(), Some(form)).await
        }
    }
}

pub(super) fn key_uri(id: &str, rest: &str) -> String {
    format!("/api/v1/keys/{}{rest}", pages::query_escape(id))
}

pub(super) async fn key_page(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let notice = match q.get("done") {
        "saved" => Some("Saved.".to_owned()),
        "revoked" => Some("The key is revoked: its requests are refused from now on.".to_owned()),
        _ => None,
    };
    render_key(&d, &session, &id, StatusCode::OK, notice, None, FieldErrors::default()).await
}

pub(super) async fn render_key(
    d: &Dashboard,
    session: &Session,
    id: &str,
    status: StatusCode,
    notice: Option<String>,
    form: Option<KeyForm>,
    errors: FieldErrors,
) -> Page {
    let key = d.read(session, &key_uri(id, "")).await?;
    let by_key = [("key", id)];
    let month_ago = (now_ms() / 1000 - 30 * 24 * 3600).to_string();
    let summary = d
        .read_optional(
            session,
            &format!("/api/v1/analytics/summary{}", query_string(&[("key", id), ("from", &month_ago)])),
        )
        .await
        .unwrap_or(Value::Null);
    let key_status = d.read_optional(session, &format!("/api/v1/usage/status{}", query_string(&by_key))).await;
    let forecast = d.read_optional(session, &format!("/api/v1/analytics/forecast{}", query_string(&by_key))).await;
    let series = d.read_optional(session, &format!("/api/v1/analytics/timeseries{}", query_string(&by_key))).await;
    let rows = d
        .read_optional(session, &format!("/api/v1/usage{}", query_string(&[("key", id), ("limit", "20")])))
        .await
        .and_then(|u| u["data"].as_array().cloned())
        .unwrap_or_default();
    let plans = if session.is_operator() { d.plan_names(session).await } else { Vec::new() };
    let layout = Layout::new(format!("Key {id}"), "keys", session.project.as_deref(), &session.csrf);
    let data = pages::KeyData {
        form: form.unwrap_or_else(|| KeyForm::of(&key)),
        key: &key,
        notice,
        summary: &summary,
        status: key_status.as_ref(),
        forecast: forecast.as_ref(),
        series: series.as_ref(),
        rows: &rows,
        plans,
        errors,
    };
    Ok(rendered(status, pages::key_page(layout, data)))
}

pub(super) async fn edit_key(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let form = KeyForm {
        name: f.get("name").to_owned(),
        metadata: f.raw("metadata").to_owned(),
        plan: f.get("plan").to_owned(),
        limits: f.raw("limits").to_owned(),
    };
    let mut patch = Map::new();
    patch.insert("name".into(), if form.name.is_empty() { Value::Null } else { json!(form.name) });
    let parse = |field: &str, text: &str, empty: Value| -> Result<Value, FieldErrors> {
        if text.trim().is_empty() {
            return Ok(empty);
        }
        serde_json::from_str(text).map_err(|e| FieldErrors::one(Some(field), format!("{field}: not valid JSON ({e})")))
    };
    let mut errors = FieldErrors::default();
    let mut status = StatusCode::BAD_REQUEST;
    match parse("metadata", &form.metadata, json!({})) {
        Ok(v) => {
            patch.insert("metadata".into(), v);
        }
        Err(e) => errors.0.extend(e.0),
    }
    if session.is_operator() {
        if !form.plan.is_empty() {
            patch.insert("plan".into(), json!(form.plan));
        }
        match parse("limits", &form.limits, json!([])) {
            Ok(v) => {
                patch.insert("limits".into(), v);
            }
            Err(e) => errors.0.extend(e.0),
        }
    }
    if errors.is_empty() {
        match d.call(&session, Method::PATCH, &key_uri(&id, ""), Some(&Value::Object(patch))).await {
            Ok(_) => return Ok(see_other(&format!("/dashboard/keys/{}?done=saved", pages::query_escape(&id)))),
            Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
                return Err(d.fail_page(&session, fail));
            }
            Err(fail) => {
                status = fail.status;
                errors = fail.errors();
            }
        }
    }
    render_key(&d, &session, &id, status, None, Some(form), errors).await
}

pub(super) async fn rotate_key(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let grace = f.get("grace_period_secs");
    let Ok(grace) = (if grace.is_empty() { Ok(0) } else { grace.parse::<u64>() }) else {
        let errors = FieldErrors::one(Some("grace_period_secs"), "must be a whole number of seconds");
        return render_key(&d, &session, &id, StatusCode::BAD_REQUEST, None, None, errors).await;
    };
    match d
        .call(&session, Method::POST, &key_uri(&id, "/regenerate"), Some(&json!({ "grace_period_secs": grace })))
        .await
    {
        Ok(answer) => {
            let layout = Layout::new("New secret", "keys", session.project.as_deref(), &session.csrf);
            Ok(rendered(StatusCode::OK, pages::secret(layout, "Secret rotated", &answer, &base_url(&headers))))
        }
        Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
            Err(d.fail_page(&session, fail))
        }
        Err(fail) => render_key(&d, &session, &id, fail.status, None, None, fail.errors()).await,
    }
}

pub(super) async fn revoke_key(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    if f.get("confirm") != "yes" {
        let errors = FieldErrors::one(Some("confirm"), "Tick the box to confirm: revoking cannot be undone.");
        return render_key(&d, &session, &id, StatusCode::BAD_REQUEST, None, None, errors).await;
    }
    match d.call(&session, Method::POST, &key_uri(&id, "/revoke"), None).await {
        Ok(_) => Ok(see_other(&format!("/dashboard/keys/{}?done=revoked", pages::query_escape(&id)))),
        Err(fail) => Err(d.fail_page(&session, fail)),
    }
}
