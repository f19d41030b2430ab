//! Upstream LLM providers: the pooled HTTP client that forwards requests, usage
//! extraction from what the provider answers (whole JSON bodies and SSE streams),
//! token counting, and the price table that turns tokens into micro-dollars.
//!
//! Invariants: nothing here buffers a response before the client sees it (bodies are
//! streams of `Bytes` passed on as they come), nothing here knows about keys, limits
//! or the ledger, and every error says whether it came from the upstream and whether
//! a retry may help. Tokenizers are loaded once per process and shared.

pub mod pricing;
pub mod sse;
pub mod tokenize;
pub mod upstream;
pub mod usage;

pub use pricing::{Cost, LongContextOverride, LongContextTier, ModelPrice, PriceLookup, PriceOverride, PriceTable};
pub use sse::{SseRewriter, StreamSummary, request_with_include_usage};
pub use tokenize::{
    Encoding, OutputTokensError, count_chat_prompt, count_completion_prompt, count_embedding_input, count_text,
    encoding_for_model, estimate_output_tokens,
};
pub use upstream::{Upstream, UpstreamConfig, UpstreamError, UpstreamResponse};
pub use usage::{TokenUsage, UsageScanner};
