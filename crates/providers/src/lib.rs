//! Upstream LLM providers and their wire formats (OpenAI's chat completions,
//! completions, embeddings and Responses; Anthropic's Messages): the pooled HTTP
//! client that forwards requests, the request view parsed once from a client's body
//! ([`request`]), and usage extraction from what the provider answers (whole JSON
//! bodies, [`usage`], and SSE streams, [`sse`] with its [`sse::Dialect`]s); and the
//! translation of chat completions to Anthropic's Messages and back ([`translate`]),
//! for chat clients routed to Claude models.
//!
//! Invariants: nothing here buffers a response before the client sees it (bodies are
//! streams of `Bytes` passed on as they come), nothing here knows about keys, limits
//! or the ledger, and every error says whether it came from the upstream and whether
//! a retry may help. Tokenizers are loaded once per process and shared.

pub mod request;
pub mod sse;
pub mod translate;
pub mod upstream;
pub mod usage;

pub use request::{Endpoint, RequestError, RequestView};
pub use sse::{SseRewriter, StreamSummary, request_with_include_usage};
pub use upstream::{ProviderAuth, Upstream, UpstreamAuth, UpstreamConfig, UpstreamError, UpstreamResponse};
pub use usage::{TokenUsage, UsageScanner};
