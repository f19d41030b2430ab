//! `[events]`: the optional usage events sink (docs/events.md): every ledger record
//! published to NATS JetStream. Off unless `nats_url` is set.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::Secret;

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    /// The NATS server (`nats://host:4222`; credentials in the URL if any). Unset: no
    /// sink.
    pub nats_url: Option<Secret>,
    /// The subject events are published on.
    pub subject: String,
    /// The JetStream stream that captures `subject`.
    pub stream: String,
    /// Create the stream (file storage, capturing `subject`) if it does not exist.
    pub create_stream: bool,
    /// How long JetStream remembers message ids, for a stream tollgate creates.
    pub duplicate_window_secs: u64,
    /// Records published per batch (every one acknowledged before the next batch).
    pub batch: usize,
    /// How often the ledger is checked for new records when the sink has caught up.
    pub poll_interval_ms: u64,
    /// How long connecting, a stream request and each acknowledgement may take.
    pub timeout_ms: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            nats_url: None,
            subject: "tollgate.usage".into(),
            stream: "TOLLGATE_USAGE".into(),
            create_stream: true,
            duplicate_window_secs: 120,
            batch: 500,
            poll_interval_ms: 500,
            timeout_ms: 5_000,
        }
    }
}

/// The checked `[events]` settings (present only when a NATS URL is set).
#[derive(Clone, Debug)]
pub struct EventsSettings {
    pub nats: tollgate_events::NatsSettings,
    pub batch: usize,
    pub poll_interval: Duration,
}

/// A subject of dot-separated tokens without wildcards or spaces.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 255
        && subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b.is_ascii_graphic()))
}

pub(super) fn events_settings(raw: &RawEvents) -> Result<Option<EventsSettings>, ConfigError> {
    let Some(url) = raw.nats_url.as_ref().filter(|u| !u.expose().trim().is_empty()) else {
        return Ok(None);
    };
    let text = url.expose().trim();
    let scheme_ok = ["nats://", "tls://", "ws://", "wss://"].iter().any(|s| text.starts_with(s));
    if !scheme_ok || text.split_once("://").is_none_or(|(_, rest)| rest.is_empty()) {
        // Never echo the URL: it may hold credentials.
        return Err(invalid("events.nats_url", "must be a URL such as nats://127.0.0.1:4222"));
    }
    if !valid_subject(&raw.subject) {
        return Err(invalid("events.subject", "must be dot-separated tokens without wildcards or spaces"));
    }
    let stream_ok = !raw.stream.is_empty()
        && raw.stream.len() <= 255
        && raw.stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !stream_ok {
        return Err(invalid("events.stream", "must be 1-255 of A-Z, a-z, 0-9, '_', '-'"));
    }
    if raw.batch == 0 || raw.batch > 10_000 {
        return Err(invalid("events.batch", "must be from 1 to 10000"));
    }
    if raw.poll_interval_ms == 0 || raw.poll_interval_ms > 60_000 {
        return Err(invalid("events.poll_interval_ms", "must be from 1 to 60000"));
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 120_000 {
        return Err(invalid("events.timeout_ms", "must be from 1 to 120000"));
    }
    if raw.duplicate_window_secs == 0 || raw.duplicate_window_secs > 7 * 24 * 3600 {
        return Err(invalid("events.duplicate_window_secs", "must be from 1 to 604800"));
    }
    Ok(Some(EventsSettings {
        nats: tollgate_events::NatsSettings {
            url: Secret::new(text),
            subject: raw.subject.clone(),
            stream: raw.stream.clone(),
            create_stream: raw.create_stream,
            duplicate_window: Duration::from_secs(raw.duplicate_window_secs),
            timeout: Duration::from_millis(raw.timeout_ms),
        },
        batch: raw.batch,
        poll_interval: Duration::from_millis(raw.poll_interval_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(events_settings(&RawEvents::default()).expect("defaults").is_none());
        let on = RawEvents { nats_url: Some(Secret::new("nats://user:pw@127.0.0.1:4222")), ..RawEvents::default() };
        let settings = events_settings(&on).expect("valid").expect("on");
        assert_eq!(settings.nats.subject, "tollgate.usage");
        assert_eq!(settings.nats.stream, "TOLLGATE_USAGE");
        let bad_url = RawEvents { nats_url: Some(Secret::new("http://user:pw@host")), ..RawEvents::default() };
        let error = events_settings(&bad_url).expect_err("refused").to_string();
        assert!(
            error.contains("events.nats_url") && !error.contains("pw"),
            "names the setting, hides the URL: {error}"
        );
        let wildcard = RawEvents { subject: "tollgate.*".into(), ..on.clone() };
        assert!(events_settings(&wildcard).is_err());
        let stream = RawEvents { stream: "a.b".into(), ..on };
        assert!(events_settings(&stream).is_err());
    }
}
