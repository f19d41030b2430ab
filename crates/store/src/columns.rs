//! The backend-agnostic half of the SQL stores' column mapping, written once: the
//! usage table's columns and their order, the checked conversions between domain
//! values and SQL values (unsigned amounts in signed integers, key versions, JSON
//! text, usage sources), and what a column that fails them is reported as.
//!
//! What stays in each backend is the driver glue: reading column `i` of a row with
//! its driver, binding parameters, and the SQL itself.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_core::{UsageRecord, UsageSource};

use crate::{StoreError, StoreResult};

/// The usage table's columns, in the order every SELECT and INSERT of a usage record
/// names them; [`UsageRow`] has one field per column, in the same order, and a
/// column's index in a row is its position here.
pub const USAGE_COLUMNS: &str = "id, ts_ms, project_id, key_id, endpoint, model, status, counted, requests, \
                                 prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, \
                                 cached_tokens, uncached_cost_micros, usage_source, price_version, client_ip, \
                                 anonymous_id, price_estimated, upstream_request_id";

/// A stored value that does not fit the field it is read into: corrupt data, so it
/// becomes [`StoreError::Internal`].
#[derive(Debug, thiserror::Error)]
#[error("column {index} holds {what}")]
pub struct BadColumn {
    pub index: usize,
    /// What was found, in words ("negative -3", "bad JSON: ...").
    pub what: String,
}

impl From<BadColumn> for StoreError {
    fn from(bad: BadColumn) -> Self {
        StoreError::internal_with_source(bad.to_string(), bad)
    }
}

/// SQL integers are signed; counts above `i64::MAX` cannot occur in practice, and
/// saturating keeps one absurd value from failing a whole ledger batch.
pub fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A non-negative integer column as `u64`; a negative one is corrupt data.
pub fn u64_from_sql(index: usize, value: i64) -> Result<u64, BadColumn> {
    u64::try_from(value).map_err(|_| BadColumn { index, what: format!("negative {value}") })
}

/// A JSON text column; text that does not parse is corrupt data.
pub fn json_from_sql<T: DeserializeOwned>(index: usize, text: &str) -> Result<T, BadColumn> {
    serde_json::from_str(text).map_err(|e| BadColumn { index, what: format!("bad JSON: {e}") })
}

/// A value as JSON text for a column.
pub fn json_text<T: Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::internal_with_source(format!("cannot encode JSON: {e}"), e))
}

/// A key version as a SQL parameter. Unlike amounts it must not saturate: the version
/// is compared for optimistic concurrency.
pub fn version_param(version: u64) -> StoreResult<i64> {
    i64::try_from(version).map_err(|_| StoreError::internal(format!("key version {version} out of range")))
}

/// A usage row as read from SQL, one field per [`USAGE_COLUMNS`] entry in that order,
/// each in the widest type both drivers read it as; [`UsageRow::into_record`] checks
/// the values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub id: String,
    pub ts_ms: i64,
    pub project_id: String,
    pub key_id: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub status: i64,
    pub counted: bool,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
    pub provider: String,
    pub cached_tokens: i64,
    pub uncached_cost_micros: i64,
    pub usage_source: String,
    pub price_version: Option<String>,
    pub client_ip: Option<String>,
    pub anonymous_id: Option<String>,
    pub price_estimated: bool,
    pub upstream_request_id: Option<String>,
}

impl UsageRow {
    /// The record, or the first column (by index) whose value cannot be one.
    pub fn into_record(self) -> Result<UsageRecord, BadColumn> {
        Ok(UsageRecord {
            status: u16::try_from(self.status)
                .map_err(|_| BadColumn { index: 6, what: format!("usage status {}", self.status) })?,
            requests: u64_from_sql(8, self.requests)?,
            prompt_tokens: u64_from_sql(9, self.prompt_tokens)?,
            completion_tokens: u64_from_sql(10, self.completion_tokens)?,
            cost_micros: u64_from_sql(11, self.cost_micros)?,
            latency_ms: u64_from_sql(12, self.latency_ms)?,
            cached_tokens: u64_from_sql(14, self.cached_tokens)?,
            uncached_cost_micros: u64_from_sql(15, self.uncached_cost_micros)?,
            usage_source: UsageSource::parse(&self.usage_source)
                .ok_or_else(|| BadColumn { index: 16, what: format!("usage_source '{}'", self.usage_source) })?,
            id: self.id,
            ts_ms: self.ts_ms,
            project_id: self.project_id,
            key_id: self.key_id,
            endpoint: self.endpoint,
            model: self.model,
            counted: self.counted,
            provider: self.provider,
            price_version: self.price_version,
            client_ip: self.client_ip,
            anonymous_id: self.anonymous_id,
            price_estimated: self.price_estimated,
            upstream_request_id: self.upstream_request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_columns_are_twenty_two_distinct_names() {
        let names: Vec<&str> = USAGE_COLUMNS.split(", ").collect();
        assert_eq!(names.len(), 22);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 22, "{names:?}");
        assert_eq!((names[6], names[8], names[16]), ("status", "requests", "usage_source"), "indices used above");
    }

    #[test]
    fn rows_are_checked_into_records() {
        let row = UsageRow {
            id: "a".into(),
            status: 200,
            requests: 1,
            usage_source: "reported".into(),
            ..UsageRow::default()
        };
        let record = row.clone().into_record().expect("valid");
        assert_eq!((record.status, record.requests, record.usage_source), (200, 1, UsageSource::Reported));
        let bad = UsageRow { cost_micros: -1, ..row.clone() }.into_record().expect_err("negative");
        assert_eq!(bad.index, 11);
        assert_eq!(UsageRow { status: 70_000, ..row.clone() }.into_record().expect_err("status").index, 6);
        assert_eq!(UsageRow { usage_source: "guessed".into(), ..row }.into_record().expect_err("source").index, 16);
        assert!(matches!(StoreError::from(bad), StoreError::Internal { source: Some(_), .. }));
        assert_eq!(to_sql_int(u64::MAX), i64::MAX);
        assert!(version_param(u64::MAX).is_err());
    }
}
