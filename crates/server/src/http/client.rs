//! Who the client is, as far as HTTP tells: its address (the socket peer, or a
//! configured number of trusted proxy hops into `X-Forwarded-For`) and the anonymous
//! visitor it names (`X-Anonymous-Id`).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::http::error::ApiError;

/// The header that names an anonymous visitor.
pub const ANONYMOUS_ID_HEADER: &str = "x-anonymous-id";

/// The client's address: the socket peer, or with `forwarded_hops > 0` the entry
/// that many hops from the right of `X-Forwarded-For` (the address the nearest
/// trusted proxy saw). Entries further left are client-controlled and ignored.
pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, forwarded_hops: usize) -> Option<IpAddr> {
    if forwarded_hops > 0 {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(entry) = entries.len().checked_sub(forwarded_hops).and_then(|i| entries.get(i))
            && let Ok(ip) = entry.parse::<IpAddr>()
        {
            return Some(ip);
        }
    }
    peer.map(|p| p.ip())
}

/// The anonymous visitor id from `X-Anonymous-Id`: 1-128 visible ASCII characters.
pub fn anonymous_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(ANONYMOUS_ID_HEADER) else { return Ok(None) };
    let text = value.to_str().ok().map(str::trim).unwrap_or_default();
    if text.is_empty() || text.len() > 128 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest {
            message: "X-Anonymous-Id must be 1-128 visible ASCII characters".into(),
            param: Some("X-Anonymous-Id".into()),
        });
    }
    Ok(Some(text.to_owned()))
}

/// The socket peer of a request, when the server was started with connect info
/// (always, through `startup`; not in router-only tests).
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}
