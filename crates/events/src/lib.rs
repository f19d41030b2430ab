//! The usage events sink (docs/events.md): every ledger record published to NATS
//! JetStream, for downstream billing and warehouses.
//!
//! Where at-least-once lives: records are not published by the request path. A
//! [`Tailer`] reads the ledger in commit order after its stored cursor
//! ([`tollgate_store::LedgerFeed`]), publishes a batch with each record's id as its
//! `Nats-Msg-Id`, waits for every JetStream acknowledgement, and only then stores the
//! new cursor in the same store. A crash (or a NATS outage) anywhere in between leaves
//! the cursor where it was: the batch is published again, and JetStream drops the
//! copies it already holds by their message id (within the stream's duplicate window).
//!
//! - [`event`]: the message body, a record as JSON (its schema is docs/events.md's);
//! - [`nats`]: the JetStream connection, the stream check (or creation), publishing
//!   with acks;
//! - [`tailer`]: one pass (`run_once`) and what `/metrics` and `/health/detailed` show.
//!
//! The schedule (poll, back-off, the lease that lets one instance of many run it) is
//! the server's (`tollgate_server::events`).

pub mod event;
pub mod nats;
pub mod tailer;

pub use event::UsageEvent;
pub use nats::{NatsSettings, NatsSink};
pub use tailer::{Tailer, TailerStats};

/// What went wrong publishing events. None of the messages holds the server URL (it
/// may carry credentials).
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("JetStream stream {stream:?}: {message}")]
    Stream { stream: String, message: String },
    #[error("publishing to JetStream: {0}")]
    Publish(String),
    #[error("JetStream did not acknowledge a message: {0}")]
    Ack(String),
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] tollgate_store::StoreError),
}
