//! The semantic cache: answers to conversations close enough in meaning to one
//! answered before, in the same partition (same model, system prompt, tools and
//! parameters; [`request`]), at or above the project's similarity threshold.
//!
//! - [`request`]: what is embedded and what partitions;
//! - [`hnsw`]: the nearest-neighbour graph;
//! - [`index`]: one instance's bounded index of graphs, per project and partition;
//! - [`SemanticCache`]: the index, and in distributed mode the durable
//!   [`SemanticStore`] (PostgreSQL) every instance loads from and catches up with.

pub mod hnsw;
pub mod index;
pub mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;

pub use index::{SemanticHit, SemanticIndex};
pub use request::{SemanticRequest, semantic_request};

use crate::{CacheError, CacheKey};

/// One stored conversation: its embedding (a unit vector) and the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SemanticRow {
    /// The exact key of the request that stored it (a request stored again replaces).
    pub key: CacheKey,
    pub project: String,
    pub partition: CacheKey,
    pub vector: Vec<f32>,
    /// The encoded [`crate::Entry`].
    pub entry: Bytes,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// Where rows are kept durably and shared between instances (PostgreSQL).
#[async_trait::async_trait]
pub trait SemanticStore: Send + Sync {
    /// Stores `row` (replacing one with its project and key) and tells the other
    /// instances.
    async fn insert(&self, row: &SemanticRow) -> Result<(), CacheError>;
    /// Rows stored at or after `since_ms` (by the store's clock) and not expired at
    /// `now_ms`, newest first, at most `limit`.
    async fn since(&self, since_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<SemanticRow>, CacheError>;
    fn kind(&self) -> &'static str;
}

/// How far back a catch-up looks before the previous one began: rows committed late
/// (a slow transaction, clocks apart) are still found; rows seen twice are kept once.
pub const CATCH_UP_LOOKBACK_MS: i64 = 30_000;

/// The most rows one load reads.
pub const LOAD_LIMIT: usize = 100_000;

/// The index and, in distributed mode, its durable store.
pub struct SemanticCache {
    pub index: SemanticIndex,
    store: Option<Arc<dyn SemanticStore>>,
    /// When the last successful catch-up began (store clock, Unix ms); 0 before the
    /// first.
    caught_up_from: AtomicI64,
}

impl SemanticCache {
    pub fn new(index: SemanticIndex, store: Option<Arc<dyn SemanticStore>>) -> Self {
        Self { index, store, caught_up_from: AtomicI64::new(0) }
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.as_ref().map_or("memory", |s| s.kind())
    }

    pub fn is_shared(&self) -> bool {
        self.store.is_some()
    }

    /// Stores `row` here, then in the durable store (which tells the other instances).
    pub async fn insert(&self, row: SemanticRow, now_ms: i64) -> Result<(), CacheError> {
        self.index.insert(&row, now_ms);
        match &self.store {
            Some(store) => store.insert(&row).await,
            None => Ok(()),
        }
    }

    /// Loads what the durable store holds that this index may lack: everything
    /// unexpired on the first call, then what was stored since the previous call
    /// began (less [`CATCH_UP_LOOKBACK_MS`]). Returns how many rows were new here.
    pub async fn catch_up(&self, now_ms: i64) -> Result<usize, CacheError> {
        let Some(store) = &self.store else { return Ok(0) };
        let from = self.caught_up_from.load(Ordering::Relaxed);
        let since = if from == 0 { i64::MIN } else { from - CATCH_UP_LOOKBACK_MS };
        let rows = store.since(since, now_ms, LOAD_LIMIT).await?;
        // Oldest first, so a per-project cap keeps the newest.
        let added = rows.iter().rev().filter(|row| self.index.insert(row, now_ms)).count();
        self.caught_up_from.store(now_ms, Ordering::Relaxed);
        self.index.prune(now_ms);
        Ok(added)
    }
}

/// The parts of an OpenAI embeddings answer the cache reads (typed: no JSON tree of
/// a few thousand floats per lookup).
#[derive(serde::Deserialize)]
struct EmbeddingAnswer {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<EmbeddingUsage>,
}

#[derive(serde::Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct EmbeddingUsage {
    prompt_tokens: Option<u64>,
}

/// The first embedding of an OpenAI embeddings answer (as floats) as a unit vector, and
/// its `usage.prompt_tokens`; `None` for anything else.
pub fn parse_embedding(body: &[u8]) -> Option<(Vec<f32>, Option<u64>)> {
    let answer: EmbeddingAnswer = serde_json::from_slice(body).ok()?;
    let raw = &answer.data.first()?.embedding;
    if raw.is_empty() || raw.len() > 16_384 {
        return None;
    }
    let tokens = answer.usage.and_then(|u| u.prompt_tokens);
    Some((hnsw::normalised(raw)?, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_answers_parse_and_garbage_does_not() {
        let (v, tokens) = parse_embedding(
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[3,4]}],"usage":{"prompt_tokens":7,"total_tokens":7}}"#,
        )
        .expect("parsed");
        assert_eq!((v, tokens), (vec![0.6, 0.8], Some(7)));
        for bad in [&b"{}"[..], b"nope", br#"{"data":[{"embedding":[0,0]}]}"#, br#"{"data":[{"embedding":"AAAA"}]}"#] {
            assert_eq!(parse_embedding(bad), None);
        }
    }
}
