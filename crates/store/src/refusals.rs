//! Refusal aggregates: a refused request is not a ledger row of its own but one count
//! in the row of its key, endpoint and status for its minute
//! ([`UsageSource::Refusals`]). A client looping on 429s then adds one row a minute
//! instead of one per refusal, and never outruns the writer.
//!
//! The [`BatchWriter`](crate::batch::BatchWriter) owns one [`Refusals`]: counting
//! takes a mutex for a hash-map update; the writer takes the aggregates whose minute
//! has ended and writes them like any record; `flush_refusals` and `close` take all of
//! them, so nothing is lost on a graceful shutdown. An aggregate's id is the id of its
//! first refusal with a `refusals_` prefix, unique across instances, and idempotent
//! when its write is retried.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, PoisonError};

use tollgate_core::{UsageRecord, UsageSource};

/// The aggregation window.
pub const MINUTE_MS: i64 = 60_000;

/// The prefix of an aggregate's id (the rest is its first refusal's id).
pub const ID_PREFIX: &str = "refusals_";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Slot {
    project_id: String,
    key_id: String,
    endpoint: String,
    status: u16,
    minute: i64,
}

/// The open aggregates, by key, endpoint, status and minute, each with when it is
/// due: when its minute ends, or, for a refusal dated in a minute already over (a
/// late one), when the minute it was counted in ends, so that it is not written while
/// more of its minute may still come.
#[derive(Debug, Default)]
pub struct Refusals {
    open: Mutex<HashMap<Slot, (UsageRecord, i64)>>,
}

fn minute_end(ms: i64) -> i64 {
    (ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS
}

impl Refusals {
    /// Counts one refusal at wall-clock time `now_ms`; true when it opened a new
    /// aggregate (the writer then needs to learn when it is due).
    pub fn count(&self, record: UsageRecord, now_ms: i64) -> bool {
        let slot = Slot {
            project_id: record.project_id.clone(),
            key_id: record.key_id.clone(),
            endpoint: record.endpoint.clone(),
            status: record.status,
            minute: record.ts_ms.div_euclid(MINUTE_MS),
        };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.entry(slot) {
            Entry::Occupied(mut entry) => {
                let (aggregate, _) = entry.get_mut();
                aggregate.requests = aggregate.requests.saturating_add(record.requests.max(1));
                aggregate.latency_ms = aggregate.latency_ms.max(record.latency_ms);
                false
            }
            Entry::Vacant(entry) => {
                let due = minute_end(record.ts_ms).max(minute_end(now_ms));
                entry.insert((aggregate(record), due));
                true
            }
        }
    }

    /// Takes the aggregates due at or before `now_ms`.
    pub fn take_due(&self, now_ms: i64) -> Vec<UsageRecord> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        open.retain(|_, (aggregate, due)| {
            let is_due = *due <= now_ms;
            if is_due {
                taken.push(std::mem::take(aggregate));
            }
            !is_due
        });
        taken
    }

    /// Takes every open aggregate.
    pub fn take_all(&self) -> Vec<UsageRecord> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.drain().map(|(_, (aggregate, _))| aggregate).collect()
    }

    /// When the earliest open minute ends (Unix ms), if any is open.
    pub fn next_due_ms(&self) -> Option<i64> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.values().map(|(_, due)| *due).min()
    }

    /// Open aggregates.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The aggregate row a first refusal opens: nothing counted, no tokens, no per-client
/// fields (they differ between the refusals it stands for).
fn aggregate(first: UsageRecord) -> UsageRecord {
    UsageRecord {
        id: format!("{ID_PREFIX}{}", first.id),
        requests: first.requests.max(1),
        counted: false,
        usage_source: UsageSource::Refusals,
        model: None,
        client_ip: None,
        anonymous_id: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        cost_micros: 0,
        uncached_cost_micros: 0,
        price_version: None,
        price_estimated: false,
        ..first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(id: &str, key: &str, ts_ms: i64) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            ts_ms,
            project_id: "p".into(),
            key_id: key.into(),
            endpoint: "chat.completions".into(),
            status: 429,
            requests: 1,
            ..UsageRecord::default()
        }
    }

    #[test]
    fn one_aggregate_per_key_and_minute_taken_when_the_minute_ends() {
        let refusals = Refusals::default();
        assert!(refusals.count(refusal("a1", "a", 60_000), 60_000));
        for i in 0..99 {
            assert!(!refusals.count(refusal(&format!("a{i}x"), "a", 60_001 + i), 60_001 + i));
        }
        assert!(refusals.count(refusal("b1", "b", 60_500), 60_500));
        assert!(refusals.count(refusal("a2", "a", 120_000), 120_000), "a new minute opens a new row");
        // A late refusal, dated in a minute long over, waits for the current minute.
        assert!(refusals.count(refusal("late", "c", 0), 60_000));
        assert_eq!(refusals.len(), 4);
        assert_eq!(refusals.next_due_ms(), Some(120_000));
        assert!(refusals.take_due(119_999).is_empty());
        let mut due = refusals.take_due(120_000);
        due.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(
            due.iter().map(|r| (r.id.as_str(), r.requests)).collect::<Vec<_>>(),
            [("refusals_a1", 100), ("refusals_b1", 1), ("refusals_late", 1)]
        );
        assert!(due.iter().all(|r| r.usage_source == UsageSource::Refusals && !r.counted));
        assert_eq!(refusals.take_all().len(), 1);
        assert!(refusals.is_empty());
    }
}
