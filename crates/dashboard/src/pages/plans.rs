//! The plans page: limits as tables, the operator's edit forms with their errors.
use super::*;

pub struct LimitRow {
    pub name: String,
    pub metric: String,
    pub window: String,
    pub subject: String,
    pub scope: String,
    pub limit: String,
}

pub struct PlanView {
    pub name: String,
    pub description: String,
    pub time_zone: Option<String>,
    pub zone_input: String,
    pub limits: Vec<LimitRow>,
    pub limits_json: String,
    pub errors: FieldErrors,
    pub open: bool,
}

/// A plan of `GET /api/v1/plans`; `edited` keeps what the operator typed, with the
/// API's errors, when a save was refused.
pub fn plan_view(p: &Value, edited: Option<(&PlanForm, FieldErrors)>) -> PlanView {
    let limits: Vec<LimitRow> = p
        .get("limits")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let metric = str_of(l, "metric");
                    let scope: Vec<String> = ["provider", "model", "endpoint"]
                        .iter()
                        .filter_map(|f| l.get(*f).and_then(Value::as_str).map(|v| format!("{f} {v}")))
                        .collect();
                    let subject = str_of(l, "subject");
                    LimitRow {
                        name: str_of(l, "name").to_owned(),
                        metric: metric.to_owned(),
                        window: str_of(l, "window").to_owned(),
                        subject: if subject.is_empty() { "key".to_owned() } else { subject.to_owned() },
                        scope: if scope.is_empty() { "all traffic".to_owned() } else { scope.join(", ") },
                        limit: format::metric_value(metric, u64_of(l, "limit") as f64),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let raw_limits: Vec<Value> = p
        .get("limits")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let mut l = l.clone();
                    if let Some(o) = l.as_object_mut() {
                        o.remove("name");
                    }
                    l
                })
                .collect()
        })
        .unwrap_or_default();
    let time_zone = p.get("time_zone").and_then(Value::as_str).map(str::to_owned);
    let mut view = PlanView {
        name: str_of(p, "name").to_owned(),
        description: str_of(p, "description").to_owned(),
        zone_input: time_zone.clone().unwrap_or_default(),
        time_zone,
        limits,
        limits_json: serde_json::to_string_pretty(&raw_limits).unwrap_or_else(|_| "[]".into()),
        errors: FieldErrors::default(),
        open: false,
    };
    if let Some((form, errors)) = edited {
        view.description = form.description.clone();
        view.zone_input = form.time_zone.clone();
        view.limits_json = form.limits.clone();
        view.errors = errors;
        view.open = true;
    }
    view
}

/// A plan form as submitted.
#[derive(Clone, Debug, Default)]
pub struct PlanForm {
    pub name: String,
    pub description: String,
    pub time_zone: String,
    pub limits: String,
}

#[derive(Template)]
#[template(path = "plans.html")]
struct Plans<'a> {
    layout: Layout,
    notice: Option<&'a str>,
    allowed: String,
    plans: Vec<PlanView>,
    new_errors: FieldErrors,
    new_name: &'a str,
    new_description: &'a str,
    new_zone: &'a str,
    new_limits: &'a str,
}

pub fn plans(
    layout: Layout,
    plans: Vec<PlanView>,
    allowed: &[String],
    notice: Option<&str>,
    new_plan: Option<(&PlanForm, FieldErrors)>,
) -> Rendered {
    let (form, new_errors) = match new_plan {
        Some((f, e)) => (f.clone(), e),
        None => (
            PlanForm {
                limits: "[{\"metric\": \"requests\", \"window\": \"minute\", \"limit\": 60}]".into(),
                ..PlanForm::default()
            },
            FieldErrors::default(),
        ),
    };
    Plans {
        layout,
        notice,
        allowed: allowed.join(", "),
        plans,
        new_errors,
        new_name: &form.name,
        new_description: &form.description,
        new_zone: &form.time_zone,
        new_limits: &form.limits,
    }
    .render()
}
