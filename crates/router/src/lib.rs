//! Routing as pure logic: which upstream targets a request may try, in which order,
//! and which of them are healthy enough to be tried now. No I/O, no clock (callers
//! pass `now` in Unix ms), no async.
//!
//! - [`route`]: model aliases (`fast = ["openai/gpt-4o-mini", "backup/gpt-4o-mini"]`),
//!   weighted splits with sticky assignment ([`route::Router::plan`]).
//! - [`attempt`]: what ended an attempt and whether the next target may be tried.
//! - [`health`]: per target a passive circuit breaker, the `Retry-After` skip, and the
//!   recent error rate and latency that `/health/detailed` reports.

pub mod attempt;
pub mod health;
pub mod route;

pub use attempt::{Failure, parse_retry_after_ms};
pub use health::{Admit, BreakerSettings, BreakerState, Health, TargetHealth};
pub use route::{Plan, RouteError, RouteSpec, Router, TargetRef};
