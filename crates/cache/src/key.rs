//! The exact cache key: SHA-256 over the project, the endpoint and the canonical JSON
//! of the request's output-affecting fields.
//!
//! Canonical JSON: object members sorted by key (recursively), no whitespace, strings
//! escaped as serde_json escapes them, numbers with an integral value (`0.0`, `1e2`)
//! written as integers, others as serde_json writes them. So key order, whitespace and
//! `0` vs `0.0` do not change the key. Every top-level member is part of the key
//! except those in [`IGNORED_FIELDS`], which do not change what the model answers:
//! a stream and a non-stream request share their entry. Unknown members are kept
//! (when in doubt, a field is taken to matter).

use std::io::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level request members that are not part of the key.
pub const IGNORED_FIELDS: &[&str] =
    &["stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"];

/// A cache key: 32 bytes of SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex, for the names of keys in external stores.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }
}

/// The key of `request` (a parsed JSON object) sent by `project` to `endpoint`.
pub fn exact_key(project: &str, endpoint: &str, request: &Value) -> CacheKey {
    let mut hasher = HashWriter(Sha256::new());
    // Length-prefixed, so no project and endpoint pair can collide with another.
    for part in [project, endpoint] {
        hasher.0.update((part.len() as u64).to_le_bytes());
        hasher.0.update(part.as_bytes());
    }
    match request {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> =
                map.iter().filter(|(k, _)| !IGNORED_FIELDS.contains(&k.as_str())).collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(&mut hasher, &members);
        }
        other => write_canonical(&mut hasher, other),
    }
    CacheKey(hasher.0.finalize().into())
}

/// The canonical JSON of `value` as a string (what [`exact_key`] hashes, for tests
/// and docs).
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_object<W: Write>(out: &mut W, members: &[(&String, &Value)]) {
    let _ = out.write_all(b"{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            let _ = out.write_all(b",");
        }
        let _ = serde_json::to_writer(&mut *out, k);
        let _ = out.write_all(b":");
        write_canonical(out, v);
    }
    let _ = out.write_all(b"}");
}

fn write_canonical<W: Write>(out: &mut W, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(out, &members);
        }
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(out, v);
            }
            let _ = out.write_all(b"]");
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.is_finite()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                let _ = write!(out, "{}", f as i64);
            } else {
                let _ = write!(out, "{n}");
            }
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// Whether the request's answer is reproducible: `temperature` is 0, or a `seed` is
/// set. Requests without a temperature sample at the provider's default (1).
pub fn is_deterministic(request: &Value) -> bool {
    let temperature_zero = request.get("temperature").and_then(Value::as_f64).is_some_and(|t| t == 0.0);
    let seeded = request.get("seed").is_some_and(|s| s.is_i64() || s.is_u64());
    temperature_zero || seeded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(project: &str, body: &str) -> CacheKey {
        exact_key(project, "chat.completions", &serde_json::from_str(body).expect("json"))
    }

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_change_the_key() {
        let a = key("p", r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = key("p", r#"{ "messages" : [ { "content":"hi", "role":"user" } ], "temperature":0.0, "model":"m" }"#);
        assert_eq!(a, b);
        let streamed = key(
            "p",
            r#"{"model":"m","temperature":0,"stream":true,"stream_options":{"include_usage":true},"user":"u","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(a, streamed);
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        let base = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
        let a = key("p", base);
        assert_ne!(a, key("q", base), "projects never share a key");
        for other in [
            r#"{"model":"n","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"tools":[],"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#,
        ] {
            assert_ne!(a, key("p", other), "{other}");
        }
        assert_ne!(
            exact_key("p", "a", &Value::Null),
            exact_key("pa", "", &Value::Null),
            "length-prefixed project and endpoint"
        );
    }

    #[test]
    fn canonical_json_sorts_and_trims() {
        let v: Value = serde_json::from_str(r#"{"b":[1.0, {"d":"x","c":2.5}],"a":null}"#).expect("json");
        assert_eq!(canonical_json(&v), r#"{"a":null,"b":[1,{"c":2.5,"d":"x"}]}"#);
    }

    #[test]
    fn determinism() {
        let d = |s: &str| is_deterministic(&serde_json::from_str(s).expect("json"));
        assert!(d(r#"{"temperature":0}"#));
        assert!(d(r#"{"temperature":0.0}"#));
        assert!(d(r#"{"temperature":0.7,"seed":42}"#));
        assert!(!d(r#"{}"#));
        assert!(!d(r#"{"temperature":0.2}"#));
        assert!(!d(r#"{"seed":"x"}"#));
    }
}
