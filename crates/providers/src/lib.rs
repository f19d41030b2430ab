//! Upstream LLM providers: the pooled HTTP client that forwards requests, and usage
//! extraction from what the provider answers.
//!
//! Invariants: nothing here buffers a response before the client sees it (bodies are
//! streams of `Bytes` passed on as they come), nothing here knows about keys, limits
//! or the ledger, and every error says whether it came from the upstream and whether
//! a retry may help.

pub mod upstream;
pub mod usage;

pub use upstream::{Upstream, UpstreamConfig, UpstreamError, UpstreamResponse};
pub use usage::{TokenUsage, UsageScanner};
