//! The body of a usage event: one ledger record as JSON, schema `tollgate.usage.v1`
//! (docs/events.md lists every field). Money is integer micro-dollars, times are UTC.

use serde::Serialize;
use tollgate_core::{UsageRecord, UsageSource};
use tollgate_store::FeedRecord;

/// The schema name every event carries; a change that is not backwards compatible
/// gets a new name.
pub const SCHEMA: &str = "tollgate.usage.v1";

/// One ledger record as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageEvent<'a> {
    pub schema: &'static str,
    /// The ledger record's id, also the message's `Nats-Msg-Id`.
    pub id: &'a str,
    /// The record's place in the ledger's commit order (increasing, with gaps).
    pub ledger_seq: i64,
    /// When the request arrived, RFC 3339 UTC with milliseconds, and as Unix ms.
    pub time: String,
    pub ts_ms: i64,
    pub project: &'a str,
    pub key: &'a str,
    pub endpoint: &'a str,
    pub provider: &'a str,
    pub model: Option<&'a str>,
    pub status: u16,
    /// Whether the amounts count against limits (false when refused or refunded).
    pub counted: bool,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
    pub uncached_cost_micros: u64,
    pub price_version: Option<&'a str>,
    pub price_estimated: bool,
    /// `none`, `reported`, `counted`, `estimated`, `transferred`, `ingested`,
    /// `refusals` (one row counting a key's refusals of a minute) or `cache`.
    pub usage_source: &'static str,
    /// Answered from tollgate's response cache.
    pub cache_hit: bool,
    pub latency_ms: u64,
    pub client_ip: Option<&'a str>,
    pub anonymous_id: Option<&'a str>,
    pub upstream_request_id: Option<&'a str>,
}

impl<'a> UsageEvent<'a> {
    pub fn new(seq: i64, r: &'a UsageRecord) -> Self {
        Self {
            schema: SCHEMA,
            id: &r.id,
            ledger_seq: seq,
            time: tollgate_core::calendar::to_rfc3339(r.ts_ms),
            ts_ms: r.ts_ms,
            project: &r.project_id,
            key: &r.key_id,
            endpoint: &r.endpoint,
            provider: &r.provider,
            model: r.model.as_deref(),
            status: r.status,
            counted: r.counted,
            requests: r.requests,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            cost_micros: r.cost_micros,
            uncached_cost_micros: r.uncached_cost_micros,
            price_version: r.price_version.as_deref(),
            price_estimated: r.price_estimated,
            usage_source: r.usage_source.as_str(),
            cache_hit: r.usage_source == UsageSource::Cache,
            latency_ms: r.latency_ms,
            client_ip: r.client_ip.as_deref(),
            anonymous_id: r.anonymous_id.as_deref(),
            upstream_request_id: r.upstream_request_id.as_deref(),
        }
    }

    pub fn of(record: &'a FeedRecord) -> Self {
        Self::new(record.seq, &record.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_the_record_in_the_documented_shape() {
        let record = UsageRecord {
            id: "req-1".into(),
            ts_ms: 1_700_000_000_123,
            project_id: "acme".into(),
            key_id: "key1".into(),
            endpoint: "chat.completions".into(),
            provider: "openai".into(),
            model: Some("gpt-4o-mini".into()),
            status: 200,
            counted: true,
            requests: 1,
            prompt_tokens: 12,
            completion_tokens: 3,
            cost_micros: 42,
            usage_source: UsageSource::Cache,
            ..UsageRecord::default()
        };
        let json = serde_json::to_value(UsageEvent::new(7, &record)).expect("json");
        assert_eq!(json["schema"], "tollgate.usage.v1");
        assert_eq!(json["id"], "req-1");
        assert_eq!(json["ledger_seq"], 7);
        assert_eq!(json["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["project"], "acme");
        assert_eq!(json["cost_micros"], 42);
        assert_eq!(json["usage_source"], "cache");
        assert_eq!(json["cache_hit"], true);
        assert_eq!(json["client_ip"], serde_json::Value::Null);
    }
}
