//! The semantic half of the cache phase (docs/caching.md), after the exact lookup
//! missed: the request's conversation is embedded through the upstream's
//! `/embeddings` (model `cache.semantic_embedding_model`), that call is recorded in the
//! ledger as its own row (endpoint `embeddings`, the project's key, its cost; not
//! counted against the key's limits), and the project's index is searched in the
//! request's partition for a stored answer at or above the project's threshold. A
//! miss stores its answer under the embedding once it completed.
//!
//! Any failure (the embedding call failing, slow, or answering something that is not
//! an embedding) is a miss, logged, never an error for the client.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use tollgate_cache::semantic::{SemanticRow, parse_embedding};
use tollgate_cache::{CacheKey, Entry};
use tollgate_core::{Authed, UsageRecord, UsageSource};
use tollgate_providers::{Endpoint, TokenUsage};

use crate::Gateway;
use crate::cache::CachePlan;

/// The semantic part of a cache plan.
#[derive(Clone, Debug)]
pub struct SemanticPlan {
    pub partition: CacheKey,
    /// What is embedded.
    pub conversation: String,
    /// The project's least similarity of a hit.
    pub threshold: f32,
}

/// Where a semantic miss is stored: under its embedding in its partition.
#[derive(Clone, Debug)]
pub struct SemanticTarget {
    pub project: String,
    pub partition: CacheKey,
    pub vector: Vec<f32>,
}

/// The largest embeddings answer read (3,072 floats as JSON are about 70 KB).
const MAX_EMBEDDING_ANSWER: usize = 4 * 1024 * 1024;

impl Gateway {
    /// The conversation's embedding as a unit vector, or `None` on any failure. Every
    /// call is recorded in the ledger: with its usage and cost when the upstream
    /// answered, as a 502 (failed) or 504 (timed out) without usage otherwise.
    pub async fn embed_conversation(&self, authed: &Authed, conversation: &str) -> Option<Vec<f32>> {
        let model = self.settings.semantic_embedding_model.as_str();
        let body = serde_json::json!({ "model": model, "input": conversation, "encoding_format": "float" });
        let body = Bytes::from(serde_json::to_vec(&body).ok()?);
        // Only the operator's per-project billing headers: a client's headers are for
        // its own call.
        let headers = crate::proxy::forwarded_headers(&self.settings, &HeaderMap::new(), Some(&authed.project));
        // The project's own provider key pays for its embeddings, as for its requests; a
        // project that must bring one and has none gets no semantic lookup (a miss).
        let key = match self.provider_key_for(authed, &self.settings.provider).await {
            Ok(key) => key,
            Err(error) => {
                tracing::debug!(%error, "semantic cache: no usable provider key for the embedding; a miss");
                return None;
            }
        };
        let (upstream, auth) = self.upstream_with_key(Endpoint::Embeddings, key.as_deref());
        let started = std::time::Instant::now();
        let now_ms = crate::now_ms();
        let call = async {
            let up = upstream
                .send_with_key(reqwest::Method::POST, Endpoint::Embeddings.upstream_path(), headers, Some(body), auth)
                .await?;
            let mut answer = Vec::new();
            let mut stream = up.body;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if answer.len() + chunk.len() > MAX_EMBEDDING_ANSWER {
                    return Err(tollgate_providers::UpstreamError::Config("embedding answer too large".into()));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok::<_, tollgate_providers::UpstreamError>((up.status, up.request_id, answer))
        };
        let outcome = tokio::time::timeout(self.settings.semantic_timeout, call).await;
        let record = |status: u16, upstream_request_id: Option<String>| UsageRecord {
            id: self.ids.next(),
            ts_ms: now_ms,
            project_id: authed.key.project_id.clone(),
            key_id: authed.key.id.clone(),
            endpoint: "embeddings".to_owned(),
            provider: self.settings.provider.clone(),
            model: Some(model.to_owned()),
            status,
            // The gateway's own call for the cache, not the client's request: its cost
            // is spend, not a charge against the key's limits.
            counted: false,
            requests: 1,
            latency_ms: started.elapsed().as_millis() as u64,
            upstream_request_id,
            ..UsageRecord::default()
        };
        let (status, upstream_id, answer) = match outcome {
            Ok(Ok(answered)) => answered,
            // A call that failed or was given up still has its row (502 or 504, no usage
            // known): the upstream may have billed it, and every call is on record.
            Ok(Err(error)) => {
                tracing::warn!(%error, "semantic cache: the embedding call failed; a miss");
                self.ledger.append(record(502, None));
                return None;
            }
            Err(_) => {
                tracing::warn!("semantic cache: the embedding call timed out; a miss");
                self.ledger.append(record(504, None));
                return None;
            }
        };
        let parsed = (status == 200).then(|| parse_embedding(&answer)).flatten();
        let mut record = record(status, upstream_id);
        if let Some((_, Some(tokens))) = &parsed {
            let usage =
                TokenUsage { prompt_tokens: *tokens, completion_tokens: 0, total_tokens: *tokens, cached_tokens: 0 };
            crate::settle::price_reported(self, &mut record, usage, Some(model));
        } else {
            record.usage_source = UsageSource::Reported;
        }
        self.ledger.append(record);
        match parsed {
            Some((vector, _)) => Some(vector),
            None => {
                tracing::warn!(status, "semantic cache: the embedding answer is not an embedding; a miss");
                None
            }
        }
    }

    /// The stored answer closest to `vector` in the plan's partition, at or above the
    /// project's threshold and fresh for the project's TTL, and its similarity.
    pub fn semantic_lookup(
        &self,
        authed: &Authed,
        plan: &CachePlan,
        semantic: &SemanticPlan,
        vector: &[f32],
        now_ms: i64,
    ) -> Option<(Entry, f32)> {
        let cache = self.semantic.as_ref()?;
        let hit =
            cache.index.lookup(&authed.key.project_id, &semantic.partition, vector, semantic.threshold, now_ms)?;
        let entry = Entry::decode(&hit.entry)?;
        let ttl_ms = i64::try_from(plan.ttl.as_millis()).unwrap_or(i64::MAX);
        (now_ms.saturating_sub(entry.created_ms) < ttl_ms).then_some((entry, hit.similarity))
    }

    /// Stores an encoded entry under its embedding (off the response path, in a
    /// tracked task): in this instance's index, and in distributed mode in PostgreSQL,
    /// which tells the other instances. A failure is logged.
    pub fn semantic_put(
        &self,
        key: CacheKey,
        ttl: std::time::Duration,
        target: SemanticTarget,
        created_ms: i64,
        value: Bytes,
    ) {
        let Some(cache) = self.semantic.clone() else { return };
        let expires_ms = created_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let row = SemanticRow {
            key,
            project: target.project,
            partition: target.partition,
            vector: target.vector,
            entry: value,
            created_ms,
            expires_ms,
        };
        let timeout = self.settings.semantic_timeout;
        self.tasks.spawn(async move {
            match tokio::time::timeout(timeout, cache.insert(row, crate::now_ms())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, store = cache.store_kind(), "semantic cache store failed"),
                Err(_) => tracing::warn!(store = cache.store_kind(), "semantic cache store timed out"),
            }
        });
    }
}
