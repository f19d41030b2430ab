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
        let client = async_nats::ConnectOptions::new()
            .name("tollgate")
            .connection_timeout(settings.timeout)
            .request_timeout(Some(settings.timeout))
            .connect(settings.url.expose())
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
    use super::subject_matches;

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
