//! Extractors that turn malformed input into the OpenAI error shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::http::error::ApiError;

/// A value read only from a JSON object. serde's derive also reads a struct from an
/// array (`[null, null]` as a struct of two optional fields), which no body of this
/// API is: every body is an object, and anything else is a 400.
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData)).map(ObjectOnly)
    }
}

/// An optional JSON object body (`POST .../regenerate`, admin tokens): none (or only
/// whitespace) is `T::default()`, anything but an object a 400.
pub fn optional_object<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<ObjectOnly<T>>(body)
        .map(|o| o.0)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `axum::Json` whose rejections are 400s (or 413) in OpenAI's shape, naming the
/// field serde complained about.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<ObjectOnly<T>>::from_request(req, state).await {
            Ok(axum::Json(ObjectOnly(v))) => Ok(Json(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::bad_request("expected a JSON body with Content-Type: application/json"))
            }
            Err(JsonRejection::BytesRejection(r)) if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(0))
            }
            Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))),
        }
    }
}

/// `axum::extract::Query` with rejections in OpenAI's shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// `axum::extract::Path` with rejections in OpenAI's shape: a path segment that is
/// not UTF-8 once percent-decoded (`/api/v1/keys/%FF`) is a 400 naming the problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            // A route without the parameter: a bug here, not the client's.
            Err(e @ PathRejection::MissingPathParams(_)) => Err(ApiError::internal(e.body_text())),
            Err(e) => Err(ApiError::bad_request(format!("invalid path: {}", e.body_text()))),
        }
    }
}
