//! The domain of tollgate: keys, projects, plans, limits, windows, decisions and usage.
//!
//! Invariants of this crate (see ARCHITECTURE.md): it does no I/O, reads no clock
//! (callers pass `now` in Unix milliseconds), spawns nothing and knows neither HTTP
//! nor SQL. Everything here is plain data and arithmetic, so both storage backends and
//! the server agree on what a limit, a window and a decision mean.

pub mod calendar;
pub mod counter;
pub mod decision;
pub mod key;
pub mod limit;
pub mod secret;
pub mod traffic;
pub mod usage;
pub mod zone;

pub use counter::{CalendarCounter, LimitState, SlidingWindow};
pub use decision::{Decision, LimitStatus, Refusal};
pub use key::{
    AdminToken, ApiKey, ByokFallback, CacheSettings, DEFAULT_CACHE_TTL_SECS, DEFAULT_PLAN, DEFAULT_SEMANTIC_THRESHOLD,
    HitsCount, KeyHash, KeyParseError, KeyRecord, KeyState, MAX_CACHE_TTL_SECS, Project, ProjectSettings, Similarity,
};
pub use limit::{Amounts, LimitError, LimitSpec, Metric, Plan, Slot, SubjectKind, Window};
pub use secret::Secret;
pub use traffic::{
    ANONYMOUS_PER_ADDRESS_FACTOR, Authed, LimitItem, TRANSFER_ENDPOINT, Traffic, address_block, anonymous_subject,
    limit_items, record_items,
};
pub use usage::{UsageQuery, UsageRecord, UsageSource};
pub use zone::{UnknownZone, Zone};
