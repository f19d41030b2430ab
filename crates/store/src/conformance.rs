//! The conformance suite every storage backend runs.
//!
//! The scenarios are written once, as plain `pub async fn`s over trait objects, and
//! panic (through `assert!`) on the first deviation. A backend calls them from its own
//! tests, for example one `#[tokio::test]` per scenario, each on a fresh store:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn exact_admission_under_concurrency() {
//!     let store = open_fresh_store();
//!     conformance::limiter::exact_admission_under_concurrency(store.limiter()).await;
//! }
//! ```
//!
//! Rules the scenarios follow so that they hold for every backend:
//! - no wall clock: every time is derived from [`NOW`], a fixed instant;
//! - every scenario uses ids (projects, keys, subjects) of its own, so scenarios may
//!   share a catalog or a ledger. Two exceptions want a store of their own:
//!   [`catalog::admin_tokens`] (it checks that a fresh catalog has no operator token)
//!   and the limiter scenarios (they call `prune` and count held reservations, which
//!   see every subject). [`run_catalog`], [`run_limiter`] and [`run_ledger`] run a
//!   whole group in an order that works on one instance;
//! - what is durable across a restart (close, reopen) is backend specific and left to
//!   the backend's own tests.
//!
//! The concurrency scenario spawns tokio tasks, so run it on a multi-threaded runtime
//! to exercise real contention.

pub mod catalog;
pub mod feed;
pub mod ledger;
pub mod limiter;
pub mod provider_keys;

use std::sync::Arc;

use crate::{Catalog, Ledger, Limiter};

/// The fixed "now" of every scenario: 2023-11-14T22:13:20Z.
pub const NOW: i64 = 1_700_000_000_000;

/// Every catalog scenario, in an order that works on one fresh catalog.
pub async fn run_catalog(catalog: &dyn Catalog) {
    catalog::admin_tokens(catalog).await;
    catalog::projects(catalog).await;
    catalog::project_settings(catalog).await;
    catalog::plans(catalog).await;
    catalog::keys_create_get_list(catalog).await;
    catalog::update_key_versions_and_revocation(catalog).await;
    catalog::rotate_key_secret(catalog).await;
    catalog::lookup_unknown_hash(catalog).await;
}

/// Every provider key scenario ([`crate::ProviderKeyStore`]); they use ids of their own.
pub async fn run_provider_keys(store: &dyn crate::ProviderKeyStore) {
    provider_keys::provider_keys_round_trip(store).await;
    provider_keys::provider_keys_pages_and_reseal(store).await;
}

/// Every limiter scenario, in an order that works on one fresh limiter (the pruning
/// scenario moves time forward by days, so it runs last).
pub async fn run_limiter(limiter: Arc<dyn Limiter>) {
    limiter::exact_admission_under_concurrency(limiter.clone()).await;
    limiter::all_or_nothing(limiter.clone()).await;
    limiter::binding_refusal_is_reported(limiter.clone()).await;
    limiter::zero_amount_limits_are_reported(limiter.clone()).await;
    limiter::settle_adjusts_once(limiter.clone()).await;
    limiter::settle_with_zero_refunds(limiter.clone()).await;
    limiter::reserve_without_hold_is_final(limiter.clone()).await;
    limiter::repeated_reserve_does_not_double_charge(limiter.clone()).await;
    limiter::retry_and_reset_times(limiter.clone()).await;
    limiter::calendar_windows_follow_the_zone(limiter.clone()).await;
    limiter::apply_charges_without_checking(limiter.clone()).await;
    limiter::a_reservation_lives_as_long_as_its_hold(limiter.clone()).await;
    limiter::prune_drops_idle_counters(limiter).await;
}

/// Every ledger scenario; they share nothing, so any ledger will do.
pub async fn run_ledger(ledger: &dyn Ledger) {
    ledger::append_flush_query(ledger).await;
    ledger::append_is_idempotent(ledger).await;
    ledger::query_filters_order_and_pages(ledger).await;
    ledger::records_since_is_oldest_first(ledger).await;
    ledger::many_appends_then_flush(ledger).await;
    ledger::append_new_reports_replays(ledger).await;
    ledger::refusals_are_aggregated_per_key_and_minute(ledger).await;
    ledger::usage_totals_sum_counted_usage_per_bucket(ledger).await;
    ledger::anonymous_records_are_one_visitors_in_pages(ledger).await;
}
