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
    /// How far the feed goes past `after`: the last stored `seq` minus `after` (0 when
    /// nothing is after it). Read from the end of the `seq` index, so cheap however
    /// far behind a sink is; it counts numbers, so a number a replayed id used and
    /// stored nothing under (PostgreSQL) counts too.
    async fn feed_lag(&self, after: i64) -> StoreResult<u64>;
    /// The earliest `ts_ms` among the records with `seq > after` (`None`: none), for
    /// retention, which keeps rows from there on. Reads every such record's time: call
    /// it as rarely as retention runs.
    async fn feed_oldest_after(&self, after: i64) -> StoreResult<Option<i64>>;
}
