//! The ledger in commit order, for sinks that publish every record elsewhere (the
//! usage events sink, `crates/events`).
//!
//! Ledger ids are text and carry no order, and `ts_ms` is when a request arrived, not
//! when its record was committed: a batch that commits late holds older times. So each
//! stored record also gets a `seq`, assigned in the transaction that stores it, such
//! that a reader that has seen every record up to `seq` = n never sees a record with a
//! smaller `seq` appear later. SQLite has one writer at a time (the transaction takes
//! the write lock first); PostgreSQL batches take a counter row's lock
//! (`UPDATE … SET next = next + n RETURNING`) that is held until they commit, so
//! batches commit in the order of their numbers. A plain sequence would not do: its
//! numbers are handed out at insert, not at commit.
//!
//! A sink keeps its position in the same store ([`LedgerFeed::advance_feed_cursor`]),
//! and advances it only after the records up to it were delivered: delivery is at
//! least once, and a crash between the two replays from the stored position.

use async_trait::async_trait;
use tollgate_core::UsageRecord;

use crate::StoreResult;

/// A stored ledger record and its place in commit order.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedRecord {
    /// Increasing in commit order; gaps are allowed (a replayed id uses a number and
    /// stores nothing).
    pub seq: i64,
    pub record: UsageRecord,
}

/// The records a sink has not yet delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedBacklog {
    pub records: u64,
    /// The earliest `ts_ms` among them (retention keeps rows from here on).
    pub oldest_ts_ms: Option<i64>,
}

/// The ledger read in commit order, with the stored positions of its sinks.
#[async_trait]
pub trait LedgerFeed: Send + Sync + 'static {
    /// Where `sink` stands: every record with `seq` up to this was delivered (0 for a
    /// sink never advanced).
    async fn feed_cursor(&self, sink: &str) -> StoreResult<i64>;
    /// At most `limit` records with `seq > after`, in `seq` order.
    async fn feed_after(&self, after: i64, limit: usize) -> StoreResult<Vec<FeedRecord>>;
    /// Stores `sink`'s position as `seq` (never moves it back).
    async fn advance_feed_cursor(&self, sink: &str, seq: i64, now_ms: i64) -> StoreResult<()>;
    /// How many records have `seq > after`, and the oldest time among them.
    async fn feed_backlog(&self, after: i64) -> StoreResult<FeedBacklog>;
}
