//! Response caching, transport-free and backend-free.
//!
//! - [`key`]: the exact cache key, a SHA-256 of the project and the canonical JSON
//!   of every output-affecting field of the request (sorted keys, no whitespace,
//!   integral numbers written as integers; `stream`, `stream_options`, `user` and
//!   other non-semantic fields dropped); whether a request is deterministic.
//! - [`entry`]: what is stored (the whole JSON answer, its usage, model and age), in a
//!   small binary encoding.
//! - [`CacheStore`]: the store trait; [`MemoryCache`] the in-process backend (LRU
//!   bounded by bytes, TTL per entry); the Redis backend lives in `store-redis`. Both
//!   run [`conformance`].
//! - [`replay`]: a cached answer as SSE chunks, read by SDKs like a live stream.
//! - [`assemble`]: a streamed answer assembled back into the JSON answer it stands for,
//!   only if it completed.
//! - [`semantic`]: the semantic cache: the partition and conversation of a chat
//!   request, an HNSW index per project and partition bounded in entries and bytes,
//!   and the durable store instances share in distributed mode.

pub mod assemble;
pub mod conformance;
pub mod entry;
pub mod key;
pub mod memory;
pub mod replay;
pub mod semantic;

use std::time::Duration;

use bytes::Bytes;

pub use entry::Entry;
pub use key::CacheKey;
pub use memory::MemoryCache;

/// Why a cache operation failed. The gateway treats every failure as a miss.
#[derive(Debug, thiserror::Error)]
#[error("cache: {0}")]
pub struct CacheError(pub String);

/// A store of encoded entries by key, each with its own time to live.
#[async_trait::async_trait]
pub trait CacheStore: Send + Sync {
    /// The entry stored under `key`, if any and not expired.
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, CacheError>;
    /// Stores `value` under `key` for `ttl`, replacing any entry there.
    async fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) -> Result<(), CacheError>;
    /// The backend's name for logs and `/health`.
    fn kind(&self) -> &'static str;
}
