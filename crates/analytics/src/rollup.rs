//! The hourly rollup: what one hour of the ledger adds up to, per group of
//! dimensions.
//!
//! [`Rollups`] is the one definition of how records aggregate. The SQL backends fill
//! one per ledger batch (borrowing the records' strings, so a batch costs one map
//! entry per distinct group, not an allocation per record) and write one upsert per
//! group in the transaction that inserts the rows. Only records the ledger stored
//! for the first time are added, so a replayed id (ignored by the ledger) is never
//! counted twice. The conformance suite checks the stored rollups against
//! [`Rollups`] over the whole ledger: the brute-force reference.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR};
use tollgate_core::{UsageRecord, UsageSource};

use crate::latency::{LATENCY_BUCKETS, bucket_of};
use crate::projection::{Grain, Kind};
use crate::store::Dimension;

/// Whether a cache answered part or all of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Nothing came from a cache.
    Miss,
    /// Some of it did (cached prompt tokens, a cheaper price), the rest was charged.
    Partial,
    /// All of it did: something would have been charged, nothing was.
    Hit,
}

impl CacheOutcome {
    pub fn of(record: &UsageRecord) -> Self {
        let saved = record.uncached_cost_micros.saturating_sub(record.cost_micros);
        if saved == 0 && record.cached_tokens == 0 {
            CacheOutcome::Miss
        } else if record.cost_micros == 0 && saved > 0 {
            CacheOutcome::Hit
        } else {
            CacheOutcome::Partial
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Miss => "miss",
            CacheOutcome::Partial => "partial",
            CacheOutcome::Hit => "hit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "miss" => CacheOutcome::Miss,
            "partial" => CacheOutcome::Partial,
            "hit" => CacheOutcome::Hit,
            _ => return None,
        })
    }
}

/// The start of the UTC hour holding `ts_ms`.
pub fn hour_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_HOUR) * MS_PER_HOUR
}

/// The start of the UTC day holding `ts_ms`.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_DAY) * MS_PER_DAY
}

/// The status class of an HTTP status: 2 for 2xx, 4 for 4xx, ...
pub fn status_class(status: u16) -> u16 {
    status / 100
}

/// The dimensions of one rollup row. `model` is empty for requests without one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RollupKey {
    pub hour_ms: i64,
    pub project_id: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub endpoint: String,
    pub status_class: u16,
    pub cache: CacheOutcome,
    /// Whether the amounts counted against limits (see [`UsageRecord::counted`]).
    pub counted: bool,
}

/// [`RollupKey`] borrowing a record's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RollupKeyRef<'a> {
    pub hour_ms: i64,
    pub project_id: &'a str,
    pub key_id: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub endpoint: &'a str,
    pub status_class: u16,
    pub cache: CacheOutcome,
    pub counted: bool,
}

impl<'a> RollupKeyRef<'a> {
    pub fn of(record: &'a UsageRecord) -> Self {
        Self {
            hour_ms: hour_of(record.ts_ms),
            project_id: &record.project_id,
            key_id: &record.key_id,
            model: record.model.as_deref().unwrap_or(""),
            provider: &record.provider,
            endpoint: &record.endpoint,
            status_class: status_class(record.status),
            cache: CacheOutcome::of(record),
            counted: record.counted,
        }
    }

    pub fn to_owned_key(&self) -> RollupKey {
        RollupKey {
            hour_ms: self.hour_ms,
            project_id: self.project_id.to_owned(),
            key_id: self.key_id.to_owned(),
            model: self.model.to_owned(),
            provider: self.provider.to_owned(),
            endpoint: self.endpoint.to_owned(),
            status_class: self.status_class,
            cache: self.cache,
            counted: self.counted,
        }
    }
}

/// What a group of records adds up to. Every field adds by component, so hours sum
/// into days and months, and groups into coarser groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RollupValues {
    /// Requests (a refusal aggregate row counts its `requests`).
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from a prompt cache (part of `input_tokens`).
    pub cached_tokens: u64,
    pub cost_micros: u64,
    /// What the requests would have cost without any cache (at least `cost_micros`):
    /// `potential_cost_micros - cost_micros` is what caching saved.
    pub potential_cost_micros: u64,
    /// Rows with a latency (every row but refusal aggregates).
    pub latency_count: u64,
    pub latency_sum_ms: u64,
    pub latency_max_ms: u64,
    pub latency_buckets: [u64; LATENCY_BUCKETS],
}

impl RollupValues {
    /// Adds one record.
    pub fn add_record(&mut self, r: &UsageRecord) {
        self.requests = self.requests.saturating_add(r.requests);
        self.input_tokens = self.input_tokens.saturating_add(r.prompt_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(r.cached_tokens);
        self.cost_micros = self.cost_micros.saturating_add(r.cost_micros);
        self.potential_cost_micros =
            self.potential_cost_micros.saturating_add(r.uncached_cost_micros.max(r.cost_micros));
        if r.usage_source != UsageSource::Refusals {
            self.latency_count += 1;
            self.latency_sum_ms = self.latency_sum_ms.saturating_add(r.latency_ms);
            self.latency_max_ms = self.latency_max_ms.max(r.latency_ms);
            self.latency_buckets[bucket_of(r.latency_ms)] += 1;
        }
    }

    /// Adds another group's values.
    pub fn merge(&mut self, other: &RollupValues) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.potential_cost_micros = self.potential_cost_micros.saturating_add(other.potential_cost_micros);
        self.latency_count = self.latency_count.saturating_add(other.latency_count);
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(other.latency_sum_ms);
        self.latency_max_ms = self.latency_max_ms.max(other.latency_max_ms);
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(other.latency_buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// What caching saved.
    pub fn saved_micros(&self) -> u64 {
        self.potential_cost_micros.saturating_sub(self.cost_micros)
    }

    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The `q` latency quantile, read from the histogram.
    pub fn latency_quantile(&self, q: f64) -> Option<u64> {
        crate::latency::quantile(&self.latency_buckets, self.latency_max_ms, q)
    }
}

/// The rollups of a batch of records, keyed by borrowed dimensions.
#[derive(Debug, Default)]
pub struct Rollups<'a> {
    groups: HashMap<RollupKeyRef<'a>, RollupValues>,
}

impl<'a> Rollups<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record the ledger stored for the first time.
    pub fn add(&mut self, record: &'a UsageRecord) {
        self.groups.entry(RollupKeyRef::of(record)).or_default().add_record(record);
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RollupKeyRef<'a>, &RollupValues)> {
        self.groups.iter()
    }

    /// These rollups with the dimensions `kind` drops set to their constant and the
    /// hours floored to `grain`: what one projection table receives
    /// ([`crate::projection`]).
    pub fn project(&self, kind: Kind, grain: Grain) -> Rollups<'a> {
        let mut out: HashMap<RollupKeyRef<'a>, RollupValues> = HashMap::with_capacity(self.groups.len());
        let keep = |d: Dimension, s: &'a str| if kind.keeps(d) { s } else { "" };
        for (k, v) in &self.groups {
            let key = RollupKeyRef {
                hour_ms: match grain {
                    Grain::Hour => k.hour_ms,
                    Grain::Day => day_of(k.hour_ms),
                },
                project_id: keep(Dimension::Project, k.project_id),
                key_id: keep(Dimension::Key, k.key_id),
                model: keep(Dimension::Model, k.model),
                provider: keep(Dimension::Provider, k.provider),
                endpoint: keep(Dimension::Endpoint, k.endpoint),
                status_class: if kind.keeps(Dimension::StatusClass) { k.status_class } else { 0 },
                cache: if kind.keeps(Dimension::Cache) { k.cache } else { CacheOutcome::Miss },
                counted: kind.keeps(Dimension::Counted) && k.counted,
            };
            out.entry(key).or_default().merge(v);
        }
        Rollups { groups: out }
    }

    /// The groups in one fixed order (hour, then every dimension). Writers that upsert
    /// concurrently into the same rows (many instances on one PostgreSQL) must lock
    /// them in the same order, or they deadlock.
    pub fn sorted(&self) -> Vec<(&RollupKeyRef<'a>, &RollupValues)> {
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_unstable_by_key(|(k, _)| {
            (k.hour_ms, k.project_id, k.key_id, k.model, k.provider, k.endpoint, k.status_class, k.cache, k.counted)
        });
        groups
    }

    /// The groups with owned keys, in key order (for comparisons).
    pub fn to_sorted(&self) -> BTreeMap<RollupKey, RollupValues> {
        self.groups.iter().map(|(k, v)| (k.to_owned_key(), v.clone())).collect()
    }
}

/// The brute-force reference: the rollups of `records`, in key order.
pub fn brute_force(records: &[UsageRecord]) -> BTreeMap<RollupKey, RollupValues> {
    let mut rollups = Rollups::new();
    for r in records {
        rollups.add(r);
    }
    rollups.to_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts_ms: i64, latency_ms: u64) -> UsageRecord {
        UsageRecord {
            id: format!("r{ts_ms}"),
            ts_ms,
            project_id: "p".into(),
            key_id: "k".into(),
            endpoint: "chat.completions".into(),
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            status: 200,
            counted: true,
            requests: 1,
            prompt_tokens: 100,
            completion_tokens: 10,
            cost_micros: 50,
            uncached_cost_micros: 80,
            cached_tokens: 40,
            latency_ms,
            ..UsageRecord::default()
        }
    }

    #[test]
    fn records_of_one_hour_and_group_add_up() {
        let records = [record(3_600_000, 10), record(3_600_000 + 59 * 60_000, 400), record(7_200_000, 5)];
        let rollups = brute_force(&records);
        assert_eq!(rollups.len(), 2, "two hours");
        let (key, first) = rollups.iter().next().expect("a group");
        assert_eq!(key.hour_ms, 3_600_000);
        assert_eq!(key.cache, CacheOutcome::Partial);
        assert_eq!(key.status_class, 2);
        assert_eq!((first.requests, first.input_tokens, first.cost_micros), (2, 200, 100));
        assert_eq!(first.saved_micros(), 60);
        assert_eq!((first.latency_count, first.latency_sum_ms, first.latency_max_ms), (2, 410, 400));
        assert_eq!(first.latency_buckets.iter().sum::<u64>(), 2);
    }

    #[test]
    fn refusal_aggregates_count_requests_but_no_latency() {
        let refusals = UsageRecord {
            usage_source: UsageSource::Refusals,
            requests: 7,
            status: 429,
            counted: false,
            cost_micros: 0,
            uncached_cost_micros: 0,
            cached_tokens: 0,
            ..record(0, 3)
        };
        let rollups = brute_force(&[refusals]);
        let (key, values) = rollups.iter().next().expect("a group");
        assert_eq!((key.status_class, key.counted, key.cache), (4, false, CacheOutcome::Miss));
        assert_eq!((values.requests, values.latency_count), (7, 0));
    }

    #[test]
    fn cache_outcomes() {
        let miss = UsageRecord { cached_tokens: 0, uncached_cost_micros: 50, ..record(0, 1) };
        let hit = UsageRecord { cost_micros: 0, uncached_cost_micros: 50, ..record(0, 1) };
        assert_eq!(CacheOutcome::of(&miss), CacheOutcome::Miss);
        assert_eq!(CacheOutcome::of(&hit), CacheOutcome::Hit);
        assert_eq!(CacheOutcome::of(&record(0, 1)), CacheOutcome::Partial);
        // An older row without an uncached cost saves nothing (never negative).
        let old = UsageRecord { cached_tokens: 0, uncached_cost_micros: 0, ..record(0, 1) };
        assert_eq!(CacheOutcome::of(&old), CacheOutcome::Miss);
        assert_eq!(brute_force(&[old]).values().next().expect("a group").saved_micros(), 0);
    }

    #[test]
    fn merging_equals_adding_records_together() {
        let (a, b) = (record(0, 10), record(1, 20_000));
        let mut together = RollupValues::default();
        together.add_record(&a);
        together.add_record(&b);
        let mut merged = RollupValues::default();
        merged.add_record(&a);
        let mut other = RollupValues::default();
        other.add_record(&b);
        merged.merge(&other);
        assert_eq!(merged, together);
    }
}
