//! The mock's errors, in OpenAI's shape (`{"error":{"message","type","param","code"}}`),
//! and the ones `x-mock-status` injects, typed and coded the way OpenAI reports them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::RETRY_AFTER_SECS;

/// An error answered in OpenAI's shape:
/// `{"error":{"message","type","param","code"}}`. A struct rather than a
/// ready `Response` keeps handler results small.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) code: Option<&'static str>,
    pub(crate) param: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        // Only injected 429s exist, and they promise a Retry-After.
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

pub(crate) fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
) -> ApiError {
    ApiError { status, message: message.to_owned(), kind, code, param }
}

pub(crate) fn bad_request(message: &str, param: Option<&'static str>) -> ApiError {
    openai_error(StatusCode::BAD_REQUEST, message, "invalid_request_error", None, param)
}

pub(crate) fn bad_mock_header(name: &str, value: &str) -> ApiError {
    bad_request(&format!("mock upstream: invalid {name} header value {value:?}"), None)
}

/// The error body for an `x-mock-status` status, with types and codes chosen
/// the way OpenAI reports them, so gateways can be tested against both.
pub(crate) fn injected_error(status: StatusCode) -> ApiError {
    let (kind, code, message) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key"), "Incorrect API key provided."),
        403 => ("permission_error", None, "You are not allowed to use this model."),
        404 => ("invalid_request_error", Some("model_not_found"), "The model does not exist."),
        429 => {
            ("requests", Some("rate_limit_exceeded"), "Rate limit reached for requests (injected by mock upstream).")
        }
        503 => ("server_error", None, "The server is overloaded or not ready yet (injected by mock upstream)."),
        500..=599 => {
            ("server_error", None, "The server had an error while processing your request (injected by mock upstream).")
        }
        _ => ("invalid_request_error", None, "Invalid request (injected by mock upstream)."),
    };
    openai_error(status, message, kind, code, None)
}
