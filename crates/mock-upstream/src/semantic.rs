//! Embeddings in which similar texts are close, for testing semantic caches: the
//! model [`SEMANTIC_EMBEDDING_MODEL`] embeds a text as its lower-cased word unigrams
//! and bigrams hashed (FNV-1a, with a hashed sign) into [`DIMS`] dimensions,
//! L2-normalised. Texts sharing most of their words and word pairs have a cosine
//! similarity near 1; unrelated texts near 0. Deterministic across runs and machines.
//! Its usage counts one prompt token per word.

/// The model whose embeddings are semantic (every other model keeps the mock's
/// small pseudo-random vectors).
pub const SEMANTIC_EMBEDDING_MODEL: &str = "mock-semantic-embedding";

/// The embeddings' length.
pub const DIMS: usize = 256;

fn fnv(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ u64::from(b' ')).wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The words of `text`: lower-cased runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The embedding of `text` and its prompt tokens (one per word, at least one).
pub fn embed(text: &str) -> (Vec<f32>, u64) {
    let words = words(text);
    let mut vector = vec![0f32; DIMS];
    let mut add = |h: u64| {
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        vector[(h % DIMS as u64) as usize] += sign;
    };
    for w in &words {
        add(fnv(&[w]));
    }
    for pair in words.windows(2) {
        add(fnv(&[&pair[0], &pair[1]]));
    }
    let norm = vector.iter().map(|f| f * f).sum::<f32>().sqrt();
    if norm > 0.0 {
        for f in &mut vector {
            *f /= norm;
        }
    }
    (vector, words.len().max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        let (a, b) = (embed(a).0, embed(b).0);
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn similar_texts_are_close_and_others_are_not() {
        let q = "user: What is the capital of France?";
        assert!((cosine(q, "user: what is the capital of france") - 1.0).abs() < 1e-5, "case and punctuation");
        let paraphrase = cosine(q, "user: what is the capital of France, please?");
        let other = cosine(q, "user: How do I bake bread at home?");
        assert!(paraphrase > 0.9, "{paraphrase}");
        // The trap of semantic caches: a different question in the same words is close.
        let spain = cosine(q, "user: What is the capital of Spain?");
        assert!(spain > 0.8 && spain < 0.9, "{spain}");
        assert!(other < 0.3, "{other}");
        let (v, tokens) = embed(q);
        assert_eq!((v.len(), tokens), (DIMS, 7));
        assert_eq!(embed(q).0, v, "deterministic");
    }
}
