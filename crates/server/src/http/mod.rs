//! What only HTTP knows: the one error type in OpenAI's shape, extractors that turn
//! rejections into it, the rate-limit header families, the client's address and
//! anonymous id, and timestamps as the API accepts them.

pub mod client;
pub mod error;
pub mod extract;
pub mod guard;
pub mod headers;

use serde_json::Value;
use tollgate_core::calendar::parse_timestamp;

use crate::http::error::ApiError;

/// A timestamp field of a request: RFC 3339 or Unix seconds (a string or a number);
/// `null` or absent is `None`. The one parser of the admin and usage APIs.
pub fn timestamp_field(field: &str, value: &Value) -> Result<Option<i64>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => parse_timestamp(s)
            .map(Some)
            .ok_or_else(|| ApiError::invalid_field(field, "must be an RFC 3339 timestamp or Unix seconds")),
        Value::Number(n) => n
            .as_i64()
            .and_then(|s| s.checked_mul(1000))
            .map(Some)
            .ok_or_else(|| ApiError::invalid_field(field, "must be Unix seconds")),
        _ => Err(ApiError::invalid_field(field, "must be an RFC 3339 timestamp or Unix seconds")),
    }
}

/// A timestamp as requests may give it: RFC 3339 text or Unix seconds (the OpenAPI
/// schema of what [`timestamp_field`] accepts; null where the field allows it).
pub struct TimestampInput;

impl utoipa::PartialSchema for TimestampInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
            )
            .description(Some("RFC 3339 or Unix seconds"))
            .into()
    }
}

impl utoipa::ToSchema for TimestampInput {}
