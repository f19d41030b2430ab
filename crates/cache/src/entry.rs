//! A cache entry: the whole JSON answer as the upstream gave it (or as assembled from
//! its stream), with what accounting needs without parsing it again.
//!
//! Encoding (little-endian): `TGC1`, created (i64 Unix ms), prompt, completion and
//! cached tokens (u64 each), the model's length (u16) and bytes, then the body.

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: &[u8; 4] = b"TGC1";
const HEAD: usize = 4 + 8 + 8 * 3 + 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// When the answer was stored, Unix ms (its age is reported on a hit).
    pub created_ms: i64,
    /// The model the answer names (what it was priced by).
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// The JSON answer.
    pub body: Bytes,
}

impl Entry {
    pub fn encode(&self) -> Bytes {
        let model = self.model.as_deref().unwrap_or_default().as_bytes();
        let model = &model[..model.len().min(usize::from(u16::MAX))];
        let mut out = BytesMut::with_capacity(HEAD + model.len() + self.body.len());
        out.put_slice(MAGIC);
        out.put_i64_le(self.created_ms);
        out.put_u64_le(self.prompt_tokens);
        out.put_u64_le(self.completion_tokens);
        out.put_u64_le(self.cached_tokens);
        out.put_u16_le(model.len() as u16);
        out.put_slice(model);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// The entry in `bytes`, or `None` if they are not one (a foreign or corrupt
    /// value is a miss).
    pub fn decode(bytes: &Bytes) -> Option<Self> {
        if bytes.len() < HEAD || &bytes[..4] != MAGIC {
            return None;
        }
        let u64_at =
            |at: usize| bytes.get(at..at + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_le_bytes);
        let created_ms = u64_at(4)? as i64;
        let (prompt_tokens, completion_tokens, cached_tokens) = (u64_at(12)?, u64_at(20)?, u64_at(28)?);
        let model_len = usize::from(u16::from_le_bytes([bytes[36], bytes[37]]));
        let model = bytes.get(HEAD..HEAD + model_len)?;
        let model = std::str::from_utf8(model).ok()?;
        Some(Self {
            created_ms,
            model: (!model.is_empty()).then(|| model.to_owned()),
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            body: bytes.slice(HEAD + model_len..),
        })
    }

    /// The entry's age at `now_ms`, in whole seconds (the `Age` header).
    pub fn age_secs(&self, now_ms: i64) -> u64 {
        (now_ms.saturating_sub(self.created_ms).max(0) / 1000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let e = Entry {
            created_ms: 1_700_000_000_123,
            model: Some("gpt-4o-mini".into()),
            prompt_tokens: 12,
            completion_tokens: 7,
            cached_tokens: 3,
            body: Bytes::from_static(br#"{"id":"x"}"#),
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        let none = Entry { model: None, body: Bytes::new(), ..e };
        assert_eq!(Entry::decode(&none.encode()), Some(none));
        for bad in [&b""[..], b"TGC1", b"nope-nope-nope-nope-nope-nope-nope-nope-nope"] {
            assert_eq!(Entry::decode(&Bytes::copy_from_slice(bad)), None);
        }
        let mut truncated = e_with_model().encode().to_vec();
        truncated.truncate(HEAD + 2);
        assert_eq!(Entry::decode(&Bytes::from(truncated)), None);
    }

    fn e_with_model() -> Entry {
        Entry {
            created_ms: 0,
            model: Some("a-long-model-name".into()),
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            body: Bytes::new(),
        }
    }
}
