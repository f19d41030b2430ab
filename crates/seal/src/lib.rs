//! Secrets that must be usable later (webhook signing secrets, Slack URLs, SMTP
//! passwords, bring-your-own provider keys) cannot be hashed: they are sealed with
//! AES-256-GCM under a master key.
//!
//! A sealed value is `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, the key id
//! being the first 8 hex digits of the key's SHA-256: a [`Sealer`] holds one current
//! key (which seals) and any number of older ones (which still open), so the master
//! key can be rotated without re-sealing everything at once. The nonce is 96 random
//! bits per seal. The associated data binds a ciphertext to its purpose (`what`), so
//! a sealed SMTP password cannot be swapped in as a webhook secret.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// A master key: 32 bytes.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("a master key must be 32 bytes, given as 64 hex digits or base64 (it is {0} bytes)")]
    KeyLength(usize),
    #[error("the master key is neither 64 hex digits nor base64")]
    KeyEncoding,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key '{0}', which is not configured")]
    UnknownKey(String),
    #[error("sealed value does not open with its key (corrupt, or sealed for another use)")]
    Open,
    #[error("no randomness available")]
    Random,
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != 32 {
            return Err(SealError::KeyLength(bytes.len()));
        }
        let digest = Sha256::digest(bytes);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(Self { id, cipher })
    }

    /// 64 hex digits, or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| SealError::KeyEncoding))
                .collect::<Result<_, _>>()?;
            return Self::from_bytes(&bytes);
        }
        let bytes = STANDARD.decode(text).map_err(|_| SealError::KeyEncoding)?;
        Self::from_bytes(&bytes)
    }

    /// A fresh random key, as 64 hex digits.
    pub fn generate_hex() -> Result<String, SealError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals with the current key; opens with any configured key.
#[derive(Clone, Debug)]
pub struct Sealer {
    current: MasterKey,
    older: Vec<MasterKey>,
}

impl Sealer {
    pub fn new(current: MasterKey, older: Vec<MasterKey>) -> Self {
        Self { current, older }
    }

    pub fn key_id(&self) -> &str {
        self.current.id()
    }

    /// Seals `secret` for `what` (the associated data).
    pub fn seal(&self, what: &str, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let payload = Payload { msg: secret.as_bytes(), aad: what.as_bytes() };
        let ciphertext =
            self.current.cipher.encrypt(Nonce::from_slice(&nonce), payload).map_err(|_| SealError::Open)?;
        let mut blob = Vec::with_capacity(12 + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!("v1:{}:{}", self.current.id, STANDARD.encode(blob)))
    }

    /// Whether `sealed` is sealed under the current key (rotation leaves it alone).
    pub fn is_current(&self, sealed: &str) -> bool {
        key_id_of(sealed) == Some(self.current.id())
    }

    /// `sealed` opened for `what` and sealed again under the current key (rotation).
    pub fn reseal(&self, what: &str, sealed: &str) -> Result<String, SealError> {
        let clear = self.open(what, sealed)?;
        self.seal(what, &clear)
    }

    /// Opens a value sealed for `what`.
    pub fn open(&self, what: &str, sealed: &str) -> Result<String, SealError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(self.older.iter())
            .find(|k| k.id == kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let blob = STANDARD.decode(body).map_err(|_| SealError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let clear = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: what.as_bytes() })
            .map_err(|_| SealError::Open)?;
        String::from_utf8(clear).map_err(|_| SealError::Open)
    }
}

/// The id of the key a value was sealed with (`None` if it is not a sealed value).
pub fn key_id_of(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(kid), Some(_)) => Some(kid),
        _ => None,
    }
}

/// The last four characters of a secret, for lists (`…abcd`).
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; 32]).expect("key")
    }

    #[test]
    fn seals_and_opens_and_binds_purpose_and_key() {
        let sealer = Sealer::new(key(1), vec![]);
        let sealed = sealer.seal("webhook", "whsec_abc").expect("seal");
        assert!(!sealed.contains("whsec_abc"));
        assert!(sealed.starts_with(&format!("v1:{}:", sealer.key_id())));
        assert_eq!(sealer.open("webhook", &sealed).expect("open"), "whsec_abc");
        assert_eq!(sealer.open("smtp", &sealed), Err(SealError::Open));
        assert_ne!(sealed, sealer.seal("webhook", "whsec_abc").expect("seal"), "a fresh nonce each time");
        // Rotation: a new current key still opens what the old one sealed.
        let rotated = Sealer::new(key(2), vec![key(1)]);
        assert_eq!(rotated.open("webhook", &sealed).expect("open"), "whsec_abc");
        let other = Sealer::new(key(3), vec![]);
        assert!(matches!(other.open("webhook", &sealed), Err(SealError::UnknownKey(_))));
        assert_eq!(sealer.open("webhook", "v1:zz"), Err(SealError::Malformed));
        // Re-sealing moves a value to the current key; it still opens.
        assert!(!rotated.is_current(&sealed));
        assert_eq!(key_id_of(&sealed), Some(sealer.key_id()));
        let moved = rotated.reseal("webhook", &sealed).expect("reseal");
        assert!(rotated.is_current(&moved));
        assert_eq!(rotated.open("webhook", &moved).expect("open"), "whsec_abc");
        assert_eq!(key_id_of("not sealed"), None);
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex = MasterKey::generate_hex().expect("random");
        assert!(MasterKey::parse(&hex).is_ok());
        assert!(MasterKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert_eq!(MasterKey::parse(&STANDARD.encode([7u8; 16])).err(), Some(SealError::KeyLength(16)));
        assert_eq!(hint("whsec_abcdef"), "…cdef");
    }
}
