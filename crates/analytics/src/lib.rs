//! Usage analytics for tollgate.
//!
//! The ledger is the truth; this crate defines what is derived from it and read by
//! dashboards, alerts and exports, without ever scanning raw rows at query time:
//! - [`rollup`]: the hourly aggregate of the ledger per project, key, model,
//!   provider, endpoint, status class, cache outcome and counted flag, with a
//!   fixed-bucket latency histogram ([`latency`]). The SQL backends update it in the
//!   same transaction that stores the ledger rows, from [`rollup::Rollups`], the one
//!   definition of how a record is aggregated (the brute-force reference of the
//!   conformance suite is the same function over the whole ledger);
//! - [`store`]: the [`AnalyticsStore`] trait the backends implement (grouped sums of
//!   hourly rollups, rollup pages, retention);
//! - [`projection`]: narrower copies of the rollup (per hour and per UTC day) that
//!   most queries read instead, chosen per query;
//! - [`query`]: the parameters of the analytics API, parsed and checked;
//! - [`zone`]: IANA time zones, and turning hours into local days;
//! - [`forecast`] and [`anomaly`]: pure functions over hourly series;
//! - [`conformance`]: the suite every backend runs, its property test included.
//!
//! No I/O and no clock here but through the store trait: the domain decides, stores
//! persist, the server speaks HTTP.

pub mod anomaly;
pub mod conformance;
pub mod forecast;
pub mod latency;
pub mod projection;
pub mod query;
pub mod rollup;
pub mod store;
pub mod zone;

pub use rollup::{CacheOutcome, RollupKey, RollupValues, Rollups};
pub use store::{AnalyticsStore, RollupGroup, RollupQuery, Sums};
