//! The OpenAPI 3.1 document of everything under `/api/v1`, generated from the code:
//! each handler's `#[utoipa::path]` (method, path, parameters, body, answers), the
//! request and answer types' `ToSchema` derives, and [`CommonAnswers`], which adds the
//! error answers every operation can give (the OpenAI error shape, [`ErrorBody`]) and
//! the security schemes. Served at `GET /api/v1/openapi.json` (no token needed: it
//! holds no secret) and browsable at `/api/v1/docs` with Swagger UI, whose assets are
//! compiled into the binary (`utoipa-swagger-ui`'s `vendored`): no CDN, works offline.
//!
//! A route added under `/api/v1` without an entry here fails the test
//! `openapi::every_api_route_is_documented` (crates/server/tests/gateway/openapi.rs).

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::app::AppState;
use crate::http::error::ErrorBody;
use crate::routes::{admin, alerts, analytics, export, ledger, projects, provider_keys, tokens, usage, verify};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";
/// Where Swagger UI is served (its page and assets are under this path).
pub const UI_PATH: &str = "/api/v1/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "The admin, verify, usage, analytics and alerts API of tollgate, an LLM gateway and quota \
            service. Every error is `{\"error\": {\"message\", \"type\", \"code\", \"param\"?, \"details\"?}}` \
            (docs/errors.md); the OpenAI-compatible proxy routes under `/v1` are OpenAI's own API and are \
            not described here.",
        license(name = "Apache-2.0")
    ),
    paths(
        openapi_json,
        admin::list_plans,
        admin::create_plan,
        admin::get_plan,
        admin::replace_plan,
        admin::update_plan,
        admin::delete_plan,
        admin::list_keys,
        admin::create_key,
        admin::get_key,
        admin::update_key,
        admin::delete_key,
        admin::revoke_key,
        admin::regenerate_key,
        ledger::list_usage,
        verify::verify,
        usage::ingest_events,
        usage::status,
        usage::attach_anonymous,
        export::usage_export,
        export::rollup_export,
        analytics::summary,
        analytics::timeseries,
        analytics::forecast,
        analytics::anomalies,
        projects::list_projects,
        projects::create_project,
        projects::get_project,
        projects::update_project,
        tokens::create_project_token,
        tokens::list_tokens,
        tokens::create_token,
        tokens::get_token,
        tokens::delete_token,
        tokens::revoke_token,
        provider_keys::put_provider_key,
        provider_keys::list_provider_keys,
        provider_keys::delete_provider_key,
        provider_keys::rotate_secrets,
        alerts::list_rules,
        alerts::create_rule,
        alerts::get_rule,
        alerts::update_rule,
        alerts::delete_rule,
        alerts::list_channels,
        alerts::create_channel,
        alerts::get_channel,
        alerts::update_channel,
        alerts::delete_channel,
        alerts::test_channel,
        alerts::list_events,
        alerts::list_deliveries,
        alerts::get_delivery,
        alerts::redeliver,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonAnswers),
    security(("admin_token" = [])),
    tags(
        (name = "plans", description = "Named bundles of limits"),
        (name = "keys", description = "API keys: made, changed, rotated and revoked per project"),
        (name = "verify", description = "Is this key valid and under its limits?"),
        (name = "usage", description = "The usage ledger, reported usage, limit status, anonymous visitors"),
        (name = "analytics", description = "Summaries, time series, forecasts, anomalies and exports of the rollups"),
        (name = "projects", description = "Tenants and their settings"),
        (name = "admin tokens", description = "Operator and project-scoped admin tokens"),
        (name = "provider keys", description = "Bring your own key: a project's own provider keys, sealed at rest \
            and shown only as hints, used before the operator's (docs/providers.md); and the rotation of every \
            sealed secret to the current master key"),
        (name = "alerts", description = "Alerts when a limit fills up (80, 90 and 100 % by default): rules that \
            watch limits, channels that send (signed webhooks, Slack, e-mail; secrets sealed, shown never or \
            once), and the durable outbox of events and deliveries with their attempts, retries and dead \
            letters to redeliver (docs/alerts.md). A project token sees only its project's; rules and channels \
            without a project are the operator's defaults."),
        (name = "openapi", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document, in JSON: `GET /api/v1/openapi.json` (no token needed).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "openapi", security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json",
        body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document_json())
}

/// The document serialized once per process.
pub fn document_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_vec(&ApiDoc::openapi()).unwrap_or_default())
}

/// The document's routes and Swagger UI (which loads the document from [`DOCUMENT_PATH`]).
pub fn routes() -> Router<AppState> {
    let ui = utoipa_swagger_ui::SwaggerUi::new(UI_PATH).config(utoipa_swagger_ui::Config::from(DOCUMENT_PATH));
    Router::new().route(DOCUMENT_PATH, get(openapi_json)).merge(ui)
}

/// The security schemes, and the error answers every operation may give, added to each
/// operation that does not already describe that status.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build())
        };
        components.add_security_scheme(
            "admin_token",
            bearer("An admin token: the operator's (every project) or a project-scoped one (its project only)."),
        );
        components.add_security_scheme("api_key", bearer("A tollgate API key (`tg_...`): only its own status."));
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if path == DOCUMENT_PATH {
                continue;
            }
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                let mut common = vec![
                    ("400", "A malformed request: a bad parameter, path or body (`param` names it)"),
                    ("401", "No token, or one that is unknown, revoked or expired"),
                    ("403", "The token may not do this (`forbidden`, `plan_unavailable`, a revoked key)"),
                    ("404", "No such object, or one of a project this token may not see"),
                    ("500", "A bug in tollgate (logged; the message says nothing more)"),
                    ("503", "The store is unavailable; try again shortly"),
                ];
                if operation.request_body.is_some() {
                    common.push(("413", "The body is larger than `max_body_bytes`"));
                }
                for (status, description) in common {
                    if !operation.responses.responses.contains_key(status) {
                        operation.responses.responses.insert(status.to_owned(), error(description).into());
                    }
                }
            }
        }
    }
}
