//! The plans page: every plan's limits; the operator edits or creates plans, a
//! refused value shown beside its field.
use super::*;

pub(super) async fn plans_page(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let notice = (Fields::query(&raw).get("done") == "saved").then_some("Saved.");
    render_plans(&d, &session, StatusCode::OK, notice, None, None).await
}

pub(super) async fn render_plans(
    d: &Dashboard,
    session: &Session,
    status: StatusCode,
    notice: Option<&str>,
    edited: Option<(&PlanForm, FieldErrors)>,
    new_plan: Option<(&PlanForm, FieldErrors)>,
) -> Page {
    let list = d.read(session, "/api/v1/plans").await?;
    let allowed = if session.is_operator() { Vec::new() } else { d.plan_names(session).await };
    let mut edited = edited;
    let views = list["data"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let this = edited.as_ref().is_some_and(|(f, _)| p["name"].as_str() == Some(f.name.as_str()));
                    pages::plan_view(p, if this { edited.take() } else { None })
                })
                .collect()
        })
        .unwrap_or_default();
    let layout = Layout::new("Plans & limits", "plans", session.project.as_deref(), &session.csrf);
    Ok(rendered(status, pages::plans(layout, views, &allowed, notice, new_plan)))
}

pub(super) fn plan_form(name: &str, f: &Fields) -> PlanForm {
    PlanForm {
        name: name.to_owned(),
        description: f.get("description").to_owned(),
        time_zone: f.get("time_zone").to_owned(),
        limits: f.raw("limits").to_owned(),
    }
}

/// The API body of a plan form, or the error beside `limits`.
pub(super) fn plan_body(form: &PlanForm) -> Result<Value, FieldErrors> {
    let limits: Value = serde_json::from_str(&form.limits)
        .map_err(|e| FieldErrors::one(Some("limits"), format!("limits: not valid JSON ({e})")))?;
    let opt = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    Ok(json!({ "description": opt(&form.description), "limits": limits, "time_zone": opt(&form.time_zone) }))
}

pub(super) async fn save_plan(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let form = plan_form(&name, &f);
    let (status, errors) = match plan_body(&form) {
        Err(errors) => (StatusCode::BAD_REQUEST, errors),
        Ok(body) => {
            let uri = format!("/api/v1/plans/{}", pages::query_escape(&name));
            match d.call(&session, Method::PUT, &uri, Some(&body)).await {
                Ok(_) => return Ok(see_other("/dashboard/plans?done=saved")),
                Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
                    return Err(d.fail_page(&session, fail));
                }
                Err(fail) => (fail.status, fail.errors()),
            }
        }
    };
    render_plans(&d, &session, status, None, Some((&form, errors)), None).await
}

pub(super) async fn create_plan(State(d): State<Dashboard>, headers: HeaderMap, body: Bytes) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let form = plan_form(f.get("name"), &f);
    let (status, errors) = match plan_body(&form) {
        Err(errors) => (StatusCode::BAD_REQUEST, errors),
        Ok(mut body) => {
            body["name"] = json!(form.name);
            match d.call(&session, Method::POST, "/api/v1/plans", Some(&body)).await {
                Ok(_) => return Ok(see_other("/dashboard/plans?done=saved")),
                Err(fail) if fail.status == StatusCode::UNAUTHORIZED => return Err(d.fail_page(&session, fail)),
                Err(fail) => (fail.status, fail.errors()),
            }
        }
    };
    render_plans(&d, &session, status, None, None, Some((&form, errors))).await
}
