//! Bring-your-own provider keys: a project's own key for a provider (docs/providers.md,
//! "Bring your own key"), kept sealed.
//!
//! The stores persist a [`ProviderKeyRecord`] as they are given it: the key is sealed
//! by the caller (`tollgate-seal`, AES-256-GCM, the purpose from
//! [`seal_purpose`] as associated data) before it reaches a store, so no backend ever
//! sees it in clear. One record per (project, provider).

use async_trait::async_trait;

use crate::StoreResult;

/// A project's key for one provider, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKeyRecord {
    pub project_id: String,
    /// A configured provider name (`upstream.provider`, `anthropic.provider`).
    pub provider: String,
    /// `v1:<key id>:<base64>`: the key sealed for [`seal_purpose`] of this project and
    /// provider; never the key in clear.
    pub sealed_key: String,
    /// What lists show to tell keys apart ([`hint`]).
    pub hint: String,
    /// Where the project's calls to this provider go instead of the operator's base
    /// URL (only under one the operator allows, `byok.allowed_base_urls`).
    pub base_url: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for ProviderKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealed value is no secret without the master key, but it has no place
        // in a log either.
        f.debug_struct("ProviderKeyRecord")
            .field("project_id", &self.project_id)
            .field("provider", &self.provider)
            .field("hint", &self.hint)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The associated data a project's key for `provider` is sealed with: a ciphertext
/// copied to another project or provider does not open there.
pub fn seal_purpose(project_id: &str, provider: &str) -> String {
    format!("provider-key:{project_id}:{provider}")
}

/// What lists show of a provider key: its first 3 and last 4 characters
/// (`sk-…wxyz`); for a key shorter than 12 characters, only its last 2 (`…yz`), so a
/// short key is not half shown.
pub fn hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        return format!("…{tail}");
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Where a listing of every project's keys continues: after this (project, provider).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderKeyCursor {
    pub project_id: String,
    pub provider: String,
}

/// The provider keys of every project, sealed.
#[async_trait]
pub trait ProviderKeyStore: Send + Sync + 'static {
    /// Creates or replaces the key of `(record.project_id, record.provider)`. A
    /// replaced key keeps its `created_at_ms`. Returns the record as stored.
    async fn put_provider_key(&self, record: ProviderKeyRecord) -> StoreResult<ProviderKeyRecord>;
    async fn get_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<Option<ProviderKeyRecord>>;
    /// One project's keys, ordered by provider.
    async fn list_provider_keys(&self, project_id: &str) -> StoreResult<Vec<ProviderKeyRecord>>;
    /// True if there was such a key.
    async fn delete_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<bool>;
    /// Every project's keys ordered by (project, provider), at most `limit`, after
    /// `after` (rotation reads them in bounded pages).
    async fn provider_keys_page(
        &self,
        after: Option<&ProviderKeyCursor>,
        limit: usize,
    ) -> StoreResult<Vec<ProviderKeyRecord>>;
    /// Replaces the sealed key of `(project_id, provider)` only if it is still
    /// `expected` (a key changed meanwhile is left as its writer made it); true if
    /// replaced. `updated_at_ms` is left alone: re-sealing changes nothing a user set.
    async fn reseal_provider_key(
        &self,
        project_id: &str,
        provider: &str,
        expected: &str,
        sealed_key: &str,
    ) -> StoreResult<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_show_little_of_a_key() {
        assert_eq!(hint("sk-proj-abcdefghijwxyz"), "sk-…wxyz");
        assert_eq!(hint("abcdefghijkl"), "abc…ijkl");
        assert_eq!(hint("short-key"), "…ey");
        assert_eq!(hint("k"), "…k");
        assert_eq!(hint(""), "…");
        assert_eq!(seal_purpose("p1", "openai"), "provider-key:p1:openai");
    }
}
