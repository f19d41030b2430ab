//! Azure OpenAI's addressing: `/openai/deployments/{deployment}/…?api-version=…`, the
//! key as `api-key`. The answers are OpenAI's (the same handlers), with the deployment
//! remembered for tests ([`crate::MockUpstream::last_deployment`]).

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;

use crate::{ApiError, Inner, openai_error};

pub(crate) async fn chat_completions(
    state: State<Arc<Inner>>,
    Path(deployment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    serve(state, &deployment, &uri, headers, body, crate::chat_completions).await
}

pub(crate) async fn embeddings(
    state: State<Arc<Inner>>,
    Path(deployment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    serve(state, &deployment, &uri, headers, body, crate::embeddings).await
}

/// Refuses what Azure would (no `api-version`, a bearer token), remembers the
/// deployment, answers with `handler` and names the deployment (`x-mock-deployment`).
async fn serve<F, Fut>(
    State(inner): State<Arc<Inner>>,
    deployment: &str,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
    handler: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(State<Arc<Inner>>, HeaderMap, Bytes) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let has_version = uri.query().is_some_and(|q| q.split('&').any(|p| p.starts_with("api-version=") && p.len() > 12));
    if !has_version {
        return Err(openai_error(
            StatusCode::BAD_REQUEST,
            "Missing the api-version query parameter.",
            "invalid_request_error",
            Some("missing_api_version"),
            None,
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "Azure takes its key as api-key.",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        ));
    }
    *inner.last_deployment.lock().unwrap_or_else(|p| p.into_inner()) = Some(deployment.to_owned());
    let mut response = handler(State(inner), headers, body).await?;
    if let Ok(value) = HeaderValue::from_str(deployment) {
        response.headers_mut().insert(HeaderName::from_static("x-mock-deployment"), value);
    }
    Ok(response)
}
