//! What a request asks the mock to do, from its `x-mock-*` headers: latency, an
//! injected status, reported usage, a protocol fault, the model to name, the number of
//! stream chunks, the headers to echo.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::{
    ApiError, HEADER_CHUNKS, HEADER_FAULT, HEADER_LATENCY, HEADER_MODEL, HEADER_STATUS, HEADER_USAGE, MockConfig,
    bad_mock_header,
};

/// Protocol faults injected with `x-mock-fault`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `malformed`: 200 with a body that is not JSON (streams: an SSE event
    /// whose data is not JSON).
    Malformed,
    /// `no-usage`: a valid answer without `usage` (streams: no usage chunk,
    /// even when `include_usage` was requested).
    NoUsage,
    /// `reset`: send part of the body (streams: two chunks), then abort the
    /// connection.
    Reset,
    /// `stall`: send part of the body (streams: one chunk), then nothing more.
    Stall,
    /// `hold-usage`: a stream sends every content chunk, then holds the usage chunk
    /// and `[DONE]` until [`MockUpstream::release_held_usage`].
    HoldUsage,
    /// `cut`: a 200 head, then the connection aborted before any byte of the body
    /// (a stream that breaks before its first event).
    Cut,
}

impl Fault {
    fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "malformed" => Some(Self::Malformed),
            "no-usage" => Some(Self::NoUsage),
            "reset" => Some(Self::Reset),
            "stall" => Some(Self::Stall),
            "hold-usage" => Some(Self::HoldUsage),
            "cut" => Some(Self::Cut),
            _ => None,
        }
    }
}

/// What the `x-mock-*` headers (and the config) ask of one request.
pub(crate) struct Directives {
    pub(crate) latency: Duration,
    pub(crate) status: Option<StatusCode>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) fault: Option<Fault>,
    /// The model the answer names, if not the request's.
    pub(crate) model: Option<String>,
    /// Content chunks of a streamed answer (`None`: the reply's own pieces).
    pub(crate) chunks: Option<usize>,
}

impl Directives {
    pub(crate) fn parse(headers: &HeaderMap, config: &MockConfig) -> Result<Self, ApiError> {
        let latency_ms = match header_str(headers, HEADER_LATENCY)? {
            Some(v) => v.trim().parse::<u64>().map_err(|_| bad_mock_header(HEADER_LATENCY, v))?,
            None => config.latency_ms,
        };
        let status = match header_str(headers, HEADER_STATUS)? {
            Some(v) => {
                let code = v
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (400..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| bad_mock_header(HEADER_STATUS, v))?;
                Some(code)
            }
            None => None,
        };
        let (prompt_tokens, completion_tokens) = match header_str(headers, HEADER_USAGE)? {
            Some(v) => {
                let parsed = v
                    .split_once(',')
                    .and_then(|(p, c)| Some((p.trim().parse::<u64>().ok()?, c.trim().parse::<u64>().ok()?)));
                parsed.ok_or_else(|| bad_mock_header(HEADER_USAGE, v))?
            }
            None => (config.prompt_tokens, config.completion_tokens),
        };
        let fault = match header_str(headers, HEADER_FAULT)? {
            Some(v) => Some(Fault::parse(v).ok_or_else(|| bad_mock_header(HEADER_FAULT, v))?),
            None => None,
        };
        let model = header_str(headers, HEADER_MODEL)?.map(|m| m.trim().to_owned());
        let chunks = match header_str(headers, HEADER_CHUNKS)? {
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| bad_mock_header(HEADER_CHUNKS, v))?,
            ),
            None => None,
        };
        Ok(Self {
            latency: Duration::from_millis(latency_ms),
            status,
            prompt_tokens,
            completion_tokens,
            fault,
            model,
            chunks,
        })
    }

    pub(crate) fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens.saturating_add(self.completion_tokens),
        })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        Some(value) => value.to_str().map(Some).map_err(|_| bad_mock_header(name, "<non-ASCII>")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse() {
        assert_eq!(Fault::parse("reset"), Some(Fault::Reset));
        assert_eq!(Fault::parse(" no-usage "), Some(Fault::NoUsage));
        assert_eq!(Fault::parse("explode"), None);
    }
}
