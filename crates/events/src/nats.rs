//! The JetStream end: connect, make sure the stream exists (or create it), publish a
//! batch and wait for every acknowledgement.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use tollgate_core::Secret;
use tollgate_store::FeedRecord;

use crate::{EventsError, UsageEvent};

/// Where and how events are published (`[events]` in the server's configuration).
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `nats://host:4222`, credentials included if any (`nats://user:pass@host`,
    /// `nats://token@host`): never logged.
    pub url: Secret,
    /// The subject every event is published on.
    pub subject: String,
    /// The JetStream stream that captures `subject`.
    pub stream: String,
    /// Create the stream (file storage, capturing `subject`, with `duplicate_window`)
    /// when it does not exist; without it a missing stream is an error the tailer
    /// retries on.
    pub create_stream: bool,
    /// How long JetStream remembers message ids, for a stream tollgate creates.
    pub duplicate_window: Duration,
    /// How long a connection attempt, a stream request and each acknowledgement may
    /// take.
    pub timeout: Duration,
}

/// What JetStream answered for a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acks {
    /// Messages stored.
    pub stored: u64,
    /// Messages JetStream already held by that id (a batch published again).
    pub duplicates: u64,
}

/// A connection to JetStream, publishing on one subject into one stream.
pub struct NatsSink {
    jetstream: jetstream::Context,
    subject: String,
    stream: String,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink").field("subject", &self.subject).field("stream", &self.stream).finish()
    }
}

impl NatsSink {
    /// Connects, then finds the stream (creating it if `create_stream`).
    pub async fn connect(settings: &NatsSettings) -> Result<Self, EventsError> {
        // Credentials go to the client apart from the address, which the client may
        // log (at debug level) when a connection fails.
        let (address, credentials) = split_credentials(settings.url.expose());
        let options = match credentials {
            Credentials::None => async_nats::ConnectOptions::new(),
            Credentials::Token(token) => async_nats::ConnectOptions::with_token(token),
            Credentials::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
        };
        let client = options
            .name("tollgate")
            .connection_timeout(settings.timeout)
            .request_timeout(Some(settings.timeout))
            .connect(address.as_str())
            .await
            .map_err(|e| EventsError::Connect(e.to_string()))?;
        let jetstream = jetstream::ContextBuilder::new().timeout(settings.timeout).build(client);
        let stream_error = |message: String| EventsError::Stream { stream: settings.stream.clone(), message };
        let info = if settings.create_stream {
            let config = stream::Config {
                name: settings.stream.clone(),
                subjects: vec![settings.subject.clone()],
                duplicate_window: settings.duplicate_window,
                storage: stream::StorageType::File,
                ..stream::Config::default()
            };
            jetstream.get_or_create_stream(config).await.map_err(|e| stream_error(e.to_string()))?
        } else {
            jetstream.get_stream(&settings.stream).await.map_err(|e| stream_error(e.to_string()))?
        };
        let captured = info.cached_info().config.subjects.iter().any(|s| subject_matches(s, &settings.subject));
        if !captured {
            return Err(stream_error(format!("does not capture the subject {:?}", settings.subject)));
        }
        Ok(Self { jetstream, subject: settings.subject.clone(), stream: settings.stream.clone() })
    }

    /// Publishes every record (the body is its [`UsageEvent`], the `Nats-Msg-Id` its
    /// id), then waits for every acknowledgement. Any failure fails the whole batch:
    /// the caller publishes it again, and JetStream drops the copies it holds.
    pub async fn publish(&self, records: &[FeedRecord]) -> Result<Acks, EventsError> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let body = serde_json::to_vec(&UsageEvent::of(record))?;
            let message = PublishMessage::build().payload(body.into()).message_id(record.record.id.as_str());
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| EventsError::Publish(e.to_string()))?;
            pending.push(ack);
        }
        let mut acks = Acks::default();
        for ack in pending {
            let ack = ack.await.map_err(|e| EventsError::Ack(e.to_string()))?;
            if ack.stream != self.stream {
                return Err(EventsError::Ack(format!(
                    "stored by stream {:?}, not {:?}: two streams capture the subject",
                    ack.stream, self.stream
                )));
            }
            if ack.duplicate {
                acks.duplicates += 1;
            } else {
                acks.stored += 1;
            }
        }
        Ok(acks)
    }
}

/// Credentials written into a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    None,
    /// `nats://token@host`
    Token(String),
    /// `nats://user:password@host`
    UserPassword(String, String),
}

/// The URL without its user part (`nats://host:4222`), and the credentials it held
/// (percent-escapes decoded). Several servers separated by commas keep the first
/// one's credentials and lose every one's user part.
fn split_credentials(url: &str) -> (String, Credentials) {
    let mut credentials = Credentials::None;
    let mut servers = Vec::new();
    for server in url.split(',') {
        let (scheme, server) = server.trim().split_once("://").unwrap_or(("nats", server.trim()));
        let (user, host) = match server.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, server),
        };
        if let (Some(user), Credentials::None) = (user, &credentials) {
            credentials = match user.split_once(':') {
                Some((name, password)) => Credentials::UserPassword(unescape(name), unescape(password)),
                None => Credentials::Token(unescape(user)),
            };
        }
        servers.push(format!("{scheme}://{host}"));
    }
    (servers.join(","), credentials)
}

/// Decodes `%XX` escapes (a password holding `@` or `:` must be written escaped).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a stream's subject filter (with NATS's `*` and `>` wildcards) covers
/// `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in filter.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::{Credentials, split_credentials, subject_matches};

    #[test]
    fn credentials_are_taken_out_of_the_address() {
        assert_eq!(split_credentials("nats://127.0.0.1:4222"), ("nats://127.0.0.1:4222".into(), Credentials::None));
        assert_eq!(
            split_credentials("nats://s3cret@host:4222"),
            ("nats://host:4222".into(), Credentials::Token("s3cret".into()))
        );
        assert_eq!(
            split_credentials("tls://bob:p%40ss@a:4222,tls://b:4222"),
            ("tls://a:4222,tls://b:4222".into(), Credentials::UserPassword("bob".into(), "p@ss".into()))
        );
    }

    #[test]
    fn subject_filters_follow_the_nats_wildcards() {
        assert!(subject_matches("tollgate.usage", "tollgate.usage"));
        assert!(subject_matches("tollgate.*", "tollgate.usage"));
        assert!(subject_matches("tollgate.>", "tollgate.usage.eu"));
        assert!(subject_matches(">", "tollgate"));
        assert!(!subject_matches("tollgate.*", "tollgate.usage.eu"));
        assert!(!subject_matches("tollgate.usage.eu", "tollgate.usage"));
        assert!(!subject_matches("other", "tollgate.usage"));
    }
}
