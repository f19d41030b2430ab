//! Usage sums computed in the store, for rebuilding counters without loading the
//! ledger: [`Ledger::usage_totals`](crate::Ledger::usage_totals) answers, per what
//! limits look at (project, key, provider, model, endpoint, client address,
//! anonymous id) and per time bucket, the counted usage, in bounded pages.
//!
//! Buckets are fine where the windows are short and coarse where only calendar
//! windows still count: charging a sum at its bucket's start moves every counter
//! exactly as charging each record at its own time did, as long as no bucket spans an
//! edge a counter cares about (see [`TotalsQuery::for_replay`]).

use tollgate_core::UsageRecord;
use tollgate_core::calendar::{MS_PER_HOUR, MS_PER_MINUTE, month_start};

/// Totals per page at most; at most one more page is buffered while one is used.
pub const TOTALS_PAGE: usize = 1_000;

/// Pages of totals, oldest bucket first, as the store computes them. A page is a
/// `Vec` of at most [`TOTALS_PAGE`] sums; each is a [`UsageRecord`] whose `ts_ms` is
/// its bucket's start, whose amounts are the sums (`requests`, tokens, cost), with
/// `counted` set and no id. A failure ends the pages with an `Err`.
pub type TotalsPages = tokio::sync::mpsc::Receiver<crate::StoreResult<Vec<UsageRecord>>>;

/// Which counted records to sum, and in which buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotalsQuery {
    /// Records with `ts_ms >= since_ms`.
    pub since_ms: i64,
    /// `(from_ms, bucket_ms)`, newest first: a record at or after `from_ms` is summed
    /// per `bucket_ms` (of the first tier it reaches). Each bucket must divide the
    /// next coarser one, so buckets keep the records' order.
    pub finer: Vec<(i64, i64)>,
    /// The bucket of every older record.
    pub bucket_ms: i64,
}

/// The finest bucket of a sliding window (`core::counter`: 60 buckets per window).
const MINUTE_BUCKET_MS: i64 = MS_PER_MINUTE / 60;
const HOUR_BUCKET_MS: i64 = MS_PER_HOUR / 60;
/// Older records count only in day and month windows, whose edges are whole
/// quarter hours in every time zone in use.
const CALENDAR_BUCKET_MS: i64 = 15 * MS_PER_MINUTE;

impl TotalsQuery {
    /// What the counter rebuild at start replays: the current month in every time
    /// zone (and the last hour), per second where a minute window still sees it, per
    /// minute where an hour window does, per quarter hour before.
    pub fn for_replay(now_ms: i64) -> Self {
        Self {
            since_ms: earliest_month_start(now_ms).min(now_ms - MS_PER_HOUR),
            finer: vec![(now_ms - 2 * MS_PER_MINUTE, MINUTE_BUCKET_MS), (now_ms - 2 * MS_PER_HOUR, HOUR_BUCKET_MS)],
            bucket_ms: CALENDAR_BUCKET_MS,
        }
    }

    /// The start of the bucket a record at `ts_ms` is summed in.
    pub fn bucket_of(&self, ts_ms: i64) -> i64 {
        let size = self.finer.iter().find(|(from, _)| ts_ms >= *from).map_or(self.bucket_ms, |(_, size)| *size);
        ts_ms - ts_ms.rem_euclid(size)
    }

    /// Where the counted rollup ([`CountedSums`], table `usage_counted`) serves the
    /// query: its quarter hours `[from, until)`. Before `from` (the part of a quarter
    /// hour `since_ms` cuts) and from `until` on (the finer tiers, which need more
    /// than quarter hours) the raw rows are summed; none elsewhere. A bucket that is
    /// not a whole number of quarter hours is served from raw rows alone.
    pub fn counted_span(&self) -> (i64, i64) {
        if self.bucket_ms % COUNTED_BUCKET_MS != 0 {
            return (i64::MAX, i64::MAX);
        }
        let from = self.since_ms.div_euclid(COUNTED_BUCKET_MS) * COUNTED_BUCKET_MS
            + if self.since_ms.rem_euclid(COUNTED_BUCKET_MS) == 0 { 0 } else { COUNTED_BUCKET_MS };
        let until = match self.finer.last() {
            Some((oldest, _)) => oldest.div_euclid(COUNTED_BUCKET_MS) * COUNTED_BUCKET_MS,
            None => i64::MAX,
        };
        if from >= until { (i64::MAX, i64::MAX) } else { (from, until) }
    }

    /// The one statement both SQL stores run (SQLite and PostgreSQL read it alike),
    /// with `param(i)` naming the `i`-th (0-based) of [`params`](Self::params). It
    /// selects the bucket start, then `project_id, key_id, provider, model, endpoint,
    /// client_ip, anonymous_id`, then the sums of requests, prompt tokens, completion
    /// tokens and cost; oldest bucket first. It reads the counted rollup for the
    /// quarter hours of [`counted_span`](Self::counted_span) and raw rows only
    /// around it (at most a quarter hour before, the finer tiers after), so a
    /// rebuild reads the same few rows however long the ledger is.
    pub fn sql(&self, param: impl Fn(usize) -> String) -> String {
        let n = self.finer.len();
        let size = param(1 + 2 * n);
        let (from, until, raw_after) = (param(2 + 2 * n), param(3 + 2 * n), param(4 + 2 * n));
        let mut bucket = format!("ts_ms - ts_ms % {size}");
        if !self.finer.is_empty() {
            let mut case = String::from("CASE");
            for i in 0..n {
                let (from, size) = (param(1 + 2 * i), param(2 + 2 * i));
                case.push_str(&format!(" WHEN ts_ms >= {from} THEN ts_ms - ts_ms % {size}"));
            }
            bucket = format!("{case} ELSE {bucket} END");
        }
        let since = param(0);
        let raw = format!(
            "SELECT {bucket} AS bucket, {GROUP}, requests, prompt_tokens, completion_tokens, cost_micros FROM usage WHERE counted"
        );
        format!(
            "SELECT bucket, {GROUP}, CAST(SUM(requests) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT), \
             CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(cost_micros) AS BIGINT) FROM (\
             {raw} AND ts_ms >= {since} AND ts_ms < {from} \
             UNION ALL SELECT bucket_ms - bucket_ms % {size} AS bucket, project_id, key_id, provider, \
             NULLIF(model, '') AS model, endpoint, NULLIF(client_ip, '') AS client_ip, \
             NULLIF(anonymous_id, '') AS anonymous_id, requests, prompt_tokens, completion_tokens, cost_micros \
             FROM usage_counted WHERE bucket_ms >= {from} AND bucket_ms < {until} \
             UNION ALL {raw} AND ts_ms >= {raw_after}) AS sums \
             GROUP BY bucket, {GROUP} ORDER BY bucket"
        )
    }

    /// The values of the placeholders of [`sql`](Self::sql).
    pub fn params(&self) -> Vec<i64> {
        let mut params = vec![self.since_ms];
        params.extend(self.finer.iter().flat_map(|(from, size)| [*from, *size]));
        params.push(self.bucket_ms);
        let (from, until) = self.counted_span();
        params.push(from);
        params.push(until);
        // Raw rows after the counted span (all of them when there is none).
        params.push(if from == i64::MAX { self.since_ms } else { until.max(self.since_ms) });
        params
    }
}

/// The bucket of the counted rollup: a quarter hour (the edges of day and month
/// windows are whole quarter hours in every time zone in use).
pub const COUNTED_BUCKET_MS: i64 = CALENDAR_BUCKET_MS;

/// The group of a counted sum, borrowing a record's strings (absent values are
/// empty: the table's key has no NULLs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CountedKey<'a> {
    pub bucket_ms: i64,
    pub project_id: &'a str,
    pub key_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    pub client_ip: &'a str,
    pub anonymous_id: &'a str,
}

/// The counted rollup of a batch: the counted usage per quarter hour and per what
/// limits look at, which the SQL stores add to `usage_counted` in the transaction
/// that inserts the rows (only rows stored for the first time), so the counter
/// rebuild reads sums, not the ledger.
#[derive(Debug, Default)]
pub struct CountedSums<'a> {
    groups: std::collections::HashMap<CountedKey<'a>, [u64; 4]>,
}

impl<'a> CountedSums<'a> {
    /// Adds a record the ledger stored for the first time (uncounted ones are skipped).
    pub fn add(&mut self, r: &'a UsageRecord) {
        if !r.counted {
            return;
        }
        let key = CountedKey {
            bucket_ms: r.ts_ms - r.ts_ms.rem_euclid(COUNTED_BUCKET_MS),
            project_id: &r.project_id,
            key_id: &r.key_id,
            provider: &r.provider,
            model: r.model.as_deref().unwrap_or(""),
            endpoint: &r.endpoint,
            client_ip: r.client_ip.as_deref().unwrap_or(""),
            anonymous_id: r.anonymous_id.as_deref().unwrap_or(""),
        };
        let sums = self.groups.entry(key).or_default();
        for (sum, add) in sums.iter_mut().zip([r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micros]) {
            *sum = sum.saturating_add(add);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Each group with its sums (requests, prompt tokens, completion tokens, cost) as
    /// SQL integers (saturating), in one fixed order: writers that upsert the same rows
    /// concurrently (many instances on one PostgreSQL) lock them alike, so they never
    /// deadlock.
    pub fn iter(&self) -> impl Iterator<Item = (&CountedKey<'a>, [i64; 4])> {
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_unstable_by_key(|(k, _)| {
            (k.bucket_ms, k.project_id, k.key_id, k.provider, k.model, k.endpoint, k.client_ip, k.anonymous_id)
        });
        groups.into_iter().map(|(k, v)| (k, v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))))
    }
}

/// The columns of `usage_counted`, in [`counted_upsert_sql`]'s parameter order.
pub const COUNTED_COLUMNS: &str = "bucket_ms, project_id, key_id, provider, model, endpoint, client_ip, anonymous_id, \
     requests, prompt_tokens, completion_tokens, cost_micros";

/// The conflict clause of an upsert into `usage_counted`: the sums add.
pub const COUNTED_ON_CONFLICT: &str = " ON CONFLICT (bucket_ms, project_id, key_id, provider, model, endpoint, \
     client_ip, anonymous_id) DO UPDATE SET requests = usage_counted.requests + excluded.requests, \
     prompt_tokens = usage_counted.prompt_tokens + excluded.prompt_tokens, \
     completion_tokens = usage_counted.completion_tokens + excluded.completion_tokens, \
     cost_micros = usage_counted.cost_micros + excluded.cost_micros";

/// One group's upsert into `usage_counted`, `placeholder(i)` naming the `i`-th
/// (0-based) of its 12 parameters ([`COUNTED_COLUMNS`] order).
pub fn counted_upsert_sql(placeholder: impl Fn(usize) -> String) -> String {
    let values: Vec<String> = (0..12).map(placeholder).collect();
    format!("INSERT INTO usage_counted ({COUNTED_COLUMNS}) VALUES ({}){COUNTED_ON_CONFLICT}", values.join(", "))
}

/// The earliest instant that is in the current month in some time zone: local time is
/// UTC-12:00 to UTC+14:00, so a month starts in UTC no earlier than 14 hours before
/// the UTC month start of the instant 12 hours ago.
pub fn earliest_month_start(now_ms: i64) -> i64 {
    month_start(now_ms - 12 * MS_PER_HOUR) - 14 * MS_PER_HOUR
}

/// The columns a total is grouped by (after the bucket in [`TotalsQuery::sql`]).
const GROUP: &str = "project_id, key_id, provider, model, endpoint, client_ip, anonymous_id";

/// A total from the columns [`TotalsQuery::sql`] selects, read by a backend.
#[derive(Clone, Debug, Default)]
pub struct TotalRow {
    pub bucket_ms: i64,
    pub project_id: String,
    pub key_id: String,
    pub provider: String,
    pub model: Option<String>,
    pub endpoint: String,
    pub client_ip: Option<String>,
    pub anonymous_id: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
}

impl TotalRow {
    /// The total as a record (see [`TotalsPages`]).
    pub fn into_record(self) -> Result<UsageRecord, crate::columns::BadColumn> {
        use crate::columns::u64_from_sql;
        Ok(UsageRecord {
            ts_ms: self.bucket_ms,
            project_id: self.project_id,
            key_id: self.key_id,
            provider: self.provider,
            model: self.model,
            endpoint: self.endpoint,
            client_ip: self.client_ip,
            anonymous_id: self.anonymous_id,
            counted: true,
            requests: u64_from_sql(8, self.requests)?,
            prompt_tokens: u64_from_sql(9, self.prompt_tokens)?,
            completion_tokens: u64_from_sql(10, self.completion_tokens)?,
            cost_micros: u64_from_sql(11, self.cost_micros)?,
            ..UsageRecord::default()
        })
    }
}
