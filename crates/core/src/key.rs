//! API keys, admin tokens and the records behind them.
//!
//! An API key reads `tg_<public id>_<secret><checksum>`:
//! - the public id (12 base62 characters, ~71 bits) names the key in lists, logs and
//!   limits without exposing it;
//! - the secret (22 base62 characters, ~131 bits) is what makes it a credential;
//! - the checksum (6 base62 characters of CRC-32 over everything before it) lets the
//!   gateway refuse a mistyped or made-up key without touching a store, as GitHub's
//!   tokens do.
//!
//! Only [`KeyHash`] (SHA-256 of the whole key) is ever stored. Secrets have enough
//! entropy that a slow password hash would add latency and no safety.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limit::LimitSpec;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const KEY_PREFIX: &str = "tg_";
pub const PUBLIC_ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 22;
pub const CHECKSUM_LEN: usize = 6;
pub const KEY_LEN: usize = KEY_PREFIX.len() + PUBLIC_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
pub const ADMIN_PREFIX: &str = "tga_";
pub const ADMIN_SECRET_LEN: usize = 32;
/// Random bytes a caller passes to make one key or token (rejection sampling keeps
/// the characters uniform; 96 bytes are enough with overwhelming probability).
pub const RANDOM_BYTES: usize = 96;

/// SHA-256 of a whole key or token: what the stores keep and look up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

/// Why a presented key was refused before any lookup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    #[error("API key has the wrong format (expected tg_<id>_<secret>)")]
    Format,
    #[error("API key checksum does not match: it was mistyped or truncated")]
    Checksum,
}

fn base62_chars(random: &[u8], n: usize, out: &mut String) -> Option<usize> {
    let mut used = 0;
    let mut taken = 0;
    for &b in random {
        used += 1;
        // 248 = 4 * 62: bytes at or above it would bias the distribution.
        if b < 248 {
            out.push(char::from(BASE62[usize::from(b % 62)]));
            taken += 1;
            if taken == n {
                return Some(used);
            }
        }
    }
    None
}

fn checksum(body: &str) -> String {
    let mut n = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A full API key, as shown once to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    text: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}_…)", &self.text[..KEY_PREFIX.len() + PUBLIC_ID_LEN])
    }
}

impl ApiKey {
    /// A new key with a fresh public id. `None` only if the random bytes were
    /// exhausted by rejection sampling (ask again with new bytes).
    pub fn generate(random: &[u8]) -> Option<Self> {
        let mut public_id = String::with_capacity(PUBLIC_ID_LEN);
        let used = base62_chars(random, PUBLIC_ID_LEN, &mut public_id)?;
        Self::with_public_id(&public_id, &random[used..])
    }

    /// A new secret for an existing public id (regeneration keeps the key id).
    pub fn with_public_id(public_id: &str, random: &[u8]) -> Option<Self> {
        if public_id.len() != PUBLIC_ID_LEN || !is_base62(public_id) {
            return None;
        }
        let mut text = String::with_capacity(KEY_LEN);
        text.push_str(KEY_PREFIX);
        text.push_str(public_id);
        text.push('_');
        base62_chars(random, SECRET_LEN, &mut text)?;
        let sum = checksum(&text);
        text.push_str(&sum);
        Some(Self { text })
    }

    /// Checks the format and checksum of a presented key. No store is touched.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let body = text.strip_prefix(KEY_PREFIX).ok_or(KeyParseError::Format)?;
        if text.len() != KEY_LEN || body.as_bytes()[PUBLIC_ID_LEN] != b'_' {
            return Err(KeyParseError::Format);
        }
        let (id, rest) = body.split_at(PUBLIC_ID_LEN);
        let secret = &rest[1..];
        if !is_base62(id) || !is_base62(secret) {
            return Err(KeyParseError::Format);
        }
        let (unsummed, sum) = text.split_at(KEY_LEN - CHECKSUM_LEN);
        if checksum(unsummed) != sum {
            return Err(KeyParseError::Checksum);
        }
        Ok(Self { text: text.to_owned() })
    }

    pub fn public_id(&self) -> &str {
        &self.text[KEY_PREFIX.len()..KEY_PREFIX.len() + PUBLIC_ID_LEN]
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.text)
    }

    /// The secret itself. Callers show it once and never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// An admin token `tga_<32 base62>`: global (operator) or scoped to one project.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    text: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

impl AdminToken {
    pub fn generate(random: &[u8]) -> Option<Self> {
        let mut text = String::from(ADMIN_PREFIX);
        base62_chars(random, ADMIN_SECRET_LEN, &mut text)?;
        Some(Self { text })
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.text)
    }

    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `tga_` and the first four characters after it: enough to tell tokens apart
    /// in a list, far too little to guess the rest (28 base62 characters remain).
    pub fn prefix(&self) -> &str {
        &self.text[..ADMIN_PREFIX.len() + 4]
    }
}

/// The tenant: owns keys, limits and settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// What the operator decides for the project (a project-scoped admin token may
    /// read it, never change it).
    #[serde(default)]
    pub settings: ProjectSettings,
}

impl Project {
    /// A project with the default settings.
    pub fn new(id: impl Into<String>, name: impl Into<String>, created_at_ms: i64) -> Self {
        Self { id: id.into(), name: name.into(), created_at_ms, settings: ProjectSettings::default() }
    }
}

/// The plan new keys get when none is named, and the one plan a project's own admin
/// token may assign unless the operator allows others.
pub const DEFAULT_PLAN: &str = "free";

/// A project's operator-only settings: what its own admin token may do to its keys,
/// the budgets every key of it shares, and how its requests bill upstream.
///
/// Stored as one JSON document, so a field added later reads as its default from
/// rows written before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectSettings {
    /// Plans a project-scoped admin token may put keys on (the operator may use any).
    pub allowed_plans: Vec<String>,
    /// How far a project-scoped admin token may raise a key's limit above its plan,
    /// per limit slot. A token may always lower a limit or add one the plan lacks.
    pub max_overrides: Vec<LimitSpec>,
    /// Project-wide limits (subject `project`): charged on every request of every
    /// key of the project, whatever its plan.
    pub limits: Vec<LimitSpec>,
    /// Sent upstream as `OpenAI-Organization` on this project's requests (the
    /// client's header is never passed on).
    pub openai_organization: Option<String>,
    /// Sent upstream as `OpenAI-Project` on this project's requests.
    pub openai_project: Option<String>,
    /// The IANA time zone of the project's day and month windows: its project-wide
    /// limits, and the plans of its keys that name no zone of their own. Unset: UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<crate::Zone>,
    /// Response caching for the project's requests (off unless the operator turns it on).
    #[serde(skip_serializing_if = "CacheSettings::is_default")]
    pub cache: CacheSettings,
    /// Whose provider key a request of this project uses when the project stored none
    /// of its own for the provider (bring your own key, docs/providers.md).
    #[serde(skip_serializing_if = "ByokFallback::is_default")]
    pub byok_fallback: ByokFallback,
}

/// What a project's request uses when the project has no provider key of its own for
/// the provider it goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByokFallback {
    /// The operator's key (`upstream.api_key`, `anthropic.api_key`).
    #[default]
    Operator,
    /// None: the request is refused (`provider_key_required`), so the operator never
    /// pays for this project's calls.
    Never,
}

impl ByokFallback {
    pub fn is_default(&self) -> bool {
        *self == ByokFallback::Operator
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ByokFallback::Operator => "operator",
            ByokFallback::Never => "never",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(ByokFallback::Operator),
            "never" => Some(ByokFallback::Never),
            _ => None,
        }
    }
}

/// A project's response cache (docs/caching.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Answers of this project are cached and served from the cache.
    pub enabled: bool,
    /// How long an entry is served, in seconds.
    pub ttl_secs: u64,
    /// Only requests whose answer is reproducible (temperature 0, or a seed) are
    /// cached; false caches every request.
    pub deterministic_only: bool,
    /// What a hit counts against the limits.
    pub hits_count: HitsCount,
    /// Chat requests are also answered by the semantic cache: a stored answer to a
    /// conversation whose embedding is close enough (same model, system prompt, tools
    /// and parameters exactly).
    pub semantic: bool,
    /// The least cosine similarity of a semantic hit.
    pub semantic_threshold: Similarity,
}

/// A cosine similarity in [0, 1], kept in millionths so settings stay `Eq`; written
/// and read as a JSON number (`0.95`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Similarity(u32);

/// The default least similarity of a semantic hit.
pub const DEFAULT_SEMANTIC_THRESHOLD: Similarity = Similarity(950_000);

impl Similarity {
    /// `value` if it is in [0, 1] (rounded to millionths).
    pub fn new(value: f64) -> Option<Self> {
        (value.is_finite() && (0.0..=1.0).contains(&value)).then(|| Self((value * 1_000_000.0).round() as u32))
    }

    pub fn get(self) -> f64 {
        f64::from(self.0) / 1_000_000.0
    }
}

impl Default for Similarity {
    fn default() -> Self {
        DEFAULT_SEMANTIC_THRESHOLD
    }
}

impl Serialize for Similarity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for Similarity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(d)?;
        Self::new(value).ok_or_else(|| serde::de::Error::custom("a similarity must be a number from 0 to 1"))
    }
}

/// Which limits a cache hit counts against. Default: a request, not its tokens or
/// cost (a hit costs nothing upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HitsCount {
    pub requests: bool,
    /// The cached answer's tokens count against token limits.
    pub tokens: bool,
    /// What the answer would have cost counts against cost limits.
    pub cost: bool,
}

impl Default for HitsCount {
    fn default() -> Self {
        Self { requests: true, tokens: false, cost: false }
    }
}

/// Default time to live of a cache entry.
pub const DEFAULT_CACHE_TTL_SECS: u64 = 3_600;
/// Longest time to live a project may set (30 days).
pub const MAX_CACHE_TTL_SECS: u64 = 30 * 86_400;

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_secs: DEFAULT_CACHE_TTL_SECS,
            deterministic_only: true,
            hits_count: HitsCount::default(),
            semantic: false,
            semantic_threshold: DEFAULT_SEMANTIC_THRESHOLD,
        }
    }
}

impl CacheSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ProjectSettings {
    fn default() -> Self {
        Self {
            allowed_plans: vec![DEFAULT_PLAN.to_owned()],
            max_overrides: Vec::new(),
            limits: Vec::new(),
            openai_organization: None,
            openai_project: None,
            time_zone: None,
            cache: CacheSettings::default(),
            byok_fallback: ByokFallback::Operator,
        }
    }
}

impl ProjectSettings {
    /// Whether a project-scoped token may put a key on `plan`.
    pub fn allows_plan(&self, plan: &str) -> bool {
        self.allowed_plans.iter().any(|p| p == plan)
    }

    /// Checks that `overrides` on a key of `plan` raise no limit beyond what the
    /// plan gives or `max_overrides` allows; names the first that does.
    pub fn check_overrides(&self, plan: &[LimitSpec], overrides: &[LimitSpec]) -> Result<(), String> {
        for o in overrides {
            let same = |l: &&LimitSpec| l.slot() == o.slot();
            let ceiling = match (plan.iter().find(same), self.max_overrides.iter().find(same)) {
                // A slot the plan does not limit: a new limit only restricts.
                (None, _) => continue,
                (Some(p), None) => p.limit,
                (Some(p), Some(m)) => p.limit.max(m.limit),
            };
            if o.limit > ceiling {
                return Err(format!(
                    "{} = {} is above what this project may set ({ceiling}); only the operator can raise it",
                    o.name(),
                    o.limit
                ));
            }
        }
        Ok(())
    }
}

/// What the stores keep about a key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The public id (the middle part of the key).
    pub id: String,
    pub project_id: String,
    pub name: Option<String>,
    pub plan: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub limit_overrides: Vec<LimitSpec>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// Bumped on every change; caches never replace a newer version with an older one.
    pub version: u64,
}

/// Whether a key may be used at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked,
    Expired,
}

impl KeyRecord {
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_at_ms.is_some_and(|t| t <= now_ms) {
            KeyState::Revoked
        } else if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u8) -> Vec<u8> {
        (0..RANDOM_BYTES).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)).collect()
    }

    #[test]
    fn similarities_are_numbers_from_0_to_1_and_settings_default_to_0_95() {
        assert_eq!(Similarity::new(0.9).map(Similarity::get), Some(0.9));
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(Similarity::new(bad), None, "{bad}");
        }
        let settings: CacheSettings = serde_json::from_str(r#"{"enabled":true,"semantic":true}"#).expect("parse");
        assert_eq!((settings.semantic, settings.semantic_threshold.get()), (true, 0.95));
        let written = serde_json::to_value(&settings).expect("write");
        assert_eq!(written["semantic_threshold"], 0.95);
        let read: CacheSettings = serde_json::from_value(written).expect("read back");
        assert_eq!(read, settings);
        assert!(serde_json::from_str::<CacheSettings>(r#"{"semantic_threshold":2}"#).is_err());
        // Rows written before the semantic cache read as its defaults.
        let old: CacheSettings = serde_json::from_str(r#"{"enabled":true,"ttl_secs":60}"#).expect("old");
        assert_eq!((old.semantic, old.semantic_threshold), (false, DEFAULT_SEMANTIC_THRESHOLD));
    }

    #[test]
    fn generated_keys_parse_and_keep_their_id() {
        let key = ApiKey::generate(&bytes(1)).unwrap();
        assert_eq!(key.expose().len(), KEY_LEN);
        let parsed = ApiKey::parse(key.expose()).unwrap();
        assert_eq!(parsed.public_id(), key.public_id());
        assert_eq!(parsed.hash(), key.hash());
        let rotated = ApiKey::with_public_id(key.public_id(), &bytes(9)).unwrap();
        assert_eq!(rotated.public_id(), key.public_id());
        assert_ne!(rotated.hash(), key.hash());
    }

    #[test]
    fn a_single_typo_fails_the_checksum() {
        let key = ApiKey::generate(&bytes(2)).unwrap();
        let text = key.expose();
        for i in KEY_PREFIX.len()..text.len() {
            if i == KEY_PREFIX.len() + PUBLIC_ID_LEN {
                continue;
            }
            let mut b = text.as_bytes().to_vec();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(b).unwrap();
            assert!(ApiKey::parse(&typo).is_err(), "typo at {i} accepted");
        }
    }

    #[test]
    fn malformed_keys_are_refused_without_panicking() {
        for bad in
            ["", "tg_", "sk-abc", "tg_\u{0}\u{1}", &"x".repeat(KEY_LEN), "tg_ééééééééééééééééééééééééééééééééééééééé"]
        {
            assert!(ApiKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_hex_round_trip() {
        let h = KeyHash::of("abc");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(h.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
