//! The analytics store: what the backends answer about the hourly rollups.
//!
//! The SQL text of the grouped query is written once here ([`RollupQuery::sql`],
//! parameters in [`RollupQuery::params`]) and runs unchanged on SQLite and
//! PostgreSQL; each backend binds the parameters with its driver and reads the
//! integer columns back into [`RollupGroup`] with [`RollupGroup::from_columns`].
//! The upsert of a batch's rollups is [`upsert_sql`] (same text on both, they share
//! `INSERT ... ON CONFLICT DO UPDATE`).

use async_trait::async_trait;
use tollgate_store::StoreResult;

use tollgate_core::calendar::MS_PER_DAY;

use crate::latency::LATENCY_BUCKETS;
use crate::projection::{self, Kind};
use crate::rollup::{RollupKey, RollupValues, day_of};

/// A dimension rollups can be grouped or filtered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Project,
    Key,
    Model,
    Provider,
    Endpoint,
    StatusClass,
    Cache,
    Counted,
}

impl Dimension {
    pub const ALL: [Dimension; 8] = [
        Dimension::Project,
        Dimension::Key,
        Dimension::Model,
        Dimension::Provider,
        Dimension::Endpoint,
        Dimension::StatusClass,
        Dimension::Cache,
        Dimension::Counted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Project => "project",
            Dimension::Key => "key",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::Endpoint => "endpoint",
            Dimension::StatusClass => "status_class",
            Dimension::Cache => "cache",
            Dimension::Counted => "counted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The SQL expression giving the dimension's value as text (portable).
    fn text_sql(self) -> &'static str {
        match self {
            Dimension::Project => "project_id",
            Dimension::Key => "key_id",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::Endpoint => "endpoint",
            Dimension::StatusClass => "CAST(status_class AS TEXT)",
            Dimension::Cache => "cache",
            Dimension::Counted => "CASE WHEN counted THEN 'true' ELSE 'false' END",
        }
    }
}

/// Which rollup rows a query adds up. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupFilter {
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub counted: Option<bool>,
}

/// Sums of the rollups of hours `[from_ms, to_ms)` matching `filter`, per hour (when
/// `by_hour`) and per value of each of `group_by`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub filter: RollupFilter,
    pub by_hour: bool,
    pub group_by: Vec<Dimension>,
    /// Sum the latency histogram too (its 24 columns cost most of a query's time;
    /// without them the buckets read as zero).
    pub latency_buckets: bool,
    /// Which of the nine value columns to sum (the others read as zero): a series
    /// of one metric sums one or a few, which PostgreSQL's aggregate pays per column.
    pub sums: Sums,
}

/// A set of the nine value columns of a rollup row, in [`rollup_columns`] order
/// (`requests` ... `latency_max_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sums(u16);

impl Sums {
    pub const ALL: Sums = Sums(0x1ff);
    pub const REQUESTS: Sums = Sums(1);
    /// Input, output and cached tokens.
    pub const TOKENS: Sums = Sums(0b1110);
    /// Cost and the cost without caches.
    pub const COST: Sums = Sums(0b11_0000);
    /// Latency count, sum and maximum.
    pub const LATENCY: Sums = Sums(0b1_1100_0000);

    pub fn union(self, other: Sums) -> Sums {
        Sums(self.0 | other.0)
    }

    /// Whether the `i`-th value column (0-based) is summed.
    pub fn has(self, i: usize) -> bool {
        i < 9 && self.0 & (1 << i) != 0
    }

    /// `values` with the columns outside the set zeroed (what a query with these
    /// sums reads).
    pub fn keep(self, values: &RollupValues) -> RollupValues {
        let pick = |i: usize, v: u64| if self.has(i) { v } else { 0 };
        RollupValues {
            requests: pick(0, values.requests),
            input_tokens: pick(1, values.input_tokens),
            output_tokens: pick(2, values.output_tokens),
            cached_tokens: pick(3, values.cached_tokens),
            cost_micros: pick(4, values.cost_micros),
            potential_cost_micros: pick(5, values.potential_cost_micros),
            latency_count: pick(6, values.latency_count),
            latency_sum_ms: pick(7, values.latency_sum_ms),
            latency_max_ms: pick(8, values.latency_max_ms),
            latency_buckets: values.latency_buckets,
        }
    }
}

impl Default for Sums {
    fn default() -> Self {
        Sums::ALL
    }
}

/// The nine value columns, in order, and whether each is a maximum (else a sum).
const VALUES: [(&str, bool); 9] = [
    ("requests", false),
    ("input_tokens", false),
    ("output_tokens", false),
    ("cached_tokens", false),
    ("cost_micros", false),
    ("potential_cost_micros", false),
    ("latency_count", false),
    ("latency_sum_ms", false),
    ("latency_max_ms", true),
];

/// A parameter of a rollup statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlParam {
    Int(i64),
    Text(String),
    Bool(bool),
}

/// The summed value columns, in the order [`RollupGroup::from_columns`] reads them
/// (a zero for a column not in `sums`).
fn value_columns(latency_buckets: bool, sums: Sums) -> String {
    let head: Vec<String> = VALUES
        .iter()
        .enumerate()
        .map(|(i, (column, max))| match (sums.has(i), max) {
            (false, _) => "CAST(0 AS BIGINT)".to_owned(),
            (true, true) => format!("CAST(MAX({column}) AS BIGINT)"),
            (true, false) => format!("CAST(SUM({column}) AS BIGINT)"),
        })
        .collect();
    let mut columns = head.join(", ");
    if latency_buckets {
        for i in 0..LATENCY_BUCKETS {
            columns.push_str(&format!(", CAST(SUM(lat_{i}) AS BIGINT)"));
        }
    }
    columns
}

/// The value columns read one row at a time, in the same order (no aggregate).
fn plain_value_columns(latency_buckets: bool, sums: Sums) -> String {
    let head: Vec<String> = VALUES
        .iter()
        .enumerate()
        .map(|(i, (column, _))| if sums.has(i) { (*column).to_owned() } else { "CAST(0 AS BIGINT)".to_owned() })
        .collect();
    let mut columns = head.join(", ");
    if latency_buckets {
        for i in 0..LATENCY_BUCKETS {
            columns.push_str(&format!(", lat_{i}"));
        }
    }
    columns
}

/// The most value columns a group row has after its hour and dimensions.
pub const VALUE_COLUMNS: usize = 9 + LATENCY_BUCKETS;

impl RollupQuery {
    /// The dimensions the query filters or groups by.
    pub fn dimensions_used(&self) -> Vec<Dimension> {
        let f = &self.filter;
        let mut used = self.group_by.clone();
        for (dimension, set) in [
            (Dimension::Project, f.project_id.is_some()),
            (Dimension::Key, f.key_id.is_some()),
            (Dimension::Model, f.model.is_some()),
            (Dimension::Provider, f.provider.is_some()),
            (Dimension::Endpoint, f.endpoint.is_some()),
            (Dimension::Counted, f.counted.is_some()),
        ] {
            if set && !used.contains(&dimension) {
                used.push(dimension);
            }
        }
        used
    }

    /// Where the rows come from: the projection kind that covers the query (or the
    /// full rollup), and for a query over whole UTC days that is not per hour, the
    /// days `[first, last)` read from the daily table.
    pub fn source(&self) -> (Option<Kind>, Option<(i64, i64)>) {
        let kind = projection::choose(&self.dimensions_used(), self.latency_buckets);
        let days = match kind {
            Some(_) if !self.by_hour => {
                let first = day_of(self.from_ms + MS_PER_DAY - 1);
                let last = day_of(self.to_ms);
                (first < last).then_some((first, last))
            }
            _ => None,
        };
        (kind, days)
    }

    /// The SELECT and its parameters, with placeholders written by `placeholder(i)`
    /// for the `i`-th (0-based) parameter. Columns: the hour (when `by_hour`), one
    /// text column per `group_by` dimension, then
    /// [`value_column_count`](Self::value_column_count) integers. Ordered by hour,
    /// then dimensions.
    fn build(&self, placeholder: impl Fn(usize) -> String) -> (String, Vec<SqlParam>) {
        self.build_as(placeholder, true)
    }

    /// [`build`](Self::build), or with `grouped` false the same rows before grouping:
    /// the same columns, unsummed, in no order (see [`sql_ungrouped`](Self::sql_ungrouped)).
    fn build_as(&self, placeholder: impl Fn(usize) -> String, grouped: bool) -> (String, Vec<SqlParam>) {
        let mut params = Vec::new();
        let mut bind = |p: SqlParam| {
            params.push(p);
            placeholder(params.len() - 1)
        };
        let mut keys: Vec<String> = Vec::new();
        if self.by_hour {
            keys.push("hour_ms".to_owned());
        }
        keys.extend(self.group_by.iter().map(|d| d.text_sql().to_owned()));
        let mut sql = String::from("SELECT ");
        for k in &keys {
            sql.push_str(k);
            sql.push_str(", ");
        }
        if grouped {
            sql.push_str(&value_columns(self.latency_buckets, self.sums));
        } else {
            sql.push_str(&plain_value_columns(self.latency_buckets, self.sums));
        }
        let f = &self.filter;
        let slice = |table: &str, from: i64, to: i64, bind: &mut dyn FnMut(SqlParam) -> String| {
            let mut part = format!(" FROM {table} WHERE hour_ms >= {}", bind(SqlParam::Int(from)));
            part.push_str(&format!(" AND hour_ms < {}", bind(SqlParam::Int(to))));
            for (column, value) in [
                ("project_id", &f.project_id),
                ("key_id", &f.key_id),
                ("model", &f.model),
                ("provider", &f.provider),
                ("endpoint", &f.endpoint),
            ] {
                if let Some(value) = value {
                    part.push_str(&format!(" AND {column} = {}", bind(SqlParam::Text(value.clone()))));
                }
            }
            if let Some(counted) = f.counted {
                part.push_str(&format!(" AND counted = {}", bind(SqlParam::Bool(counted))));
            }
            part
        };
        match self.source() {
            (None, _) => sql.push_str(&slice("usage_hourly", self.from_ms, self.to_ms, &mut bind)),
            (Some(kind), None) => sql.push_str(&slice(kind.hourly_table(), self.from_ms, self.to_ms, &mut bind)),
            (Some(kind), Some((first, last))) => {
                let columns = rollup_columns_for(kind.histogram);
                let mut parts = vec![format!("SELECT {columns}{}", slice(kind.daily_table(), first, last, &mut bind))];
                for (from, to) in [(self.from_ms, first), (last, self.to_ms)] {
                    if from < to {
                        parts.push(format!("SELECT {columns}{}", slice(kind.hourly_table(), from, to, &mut bind)));
                    }
                }
                sql.push_str(&format!(" FROM ({}) AS slices", parts.join(" UNION ALL ")));
            }
        }
        if grouped && !keys.is_empty() {
            let list = keys.join(", ");
            sql.push_str(&format!(" GROUP BY {list} ORDER BY {list}"));
        }
        (sql, params)
    }

    /// The SELECT (see [`build`](Self::build)), placeholders by `placeholder(i)` for
    /// the `i`-th (0-based) parameter of [`params`](Self::params).
    pub fn sql(&self, placeholder: impl Fn(usize) -> String) -> String {
        self.build(placeholder).0
    }

    /// The rows [`sql`](Self::sql) would group, ungrouped (same columns and
    /// parameters, values not summed, no order), for a caller that sorts them itself
    /// with [`sort_groups`]; `None` where grouping in SQL is needed. A per-hour query
    /// grouped by something is sent ungrouped when the projection it reads keeps no
    /// dimension the query neither groups nor filters by: each row is then its own
    /// group, and PostgreSQL's sort or hash aggregate over them only costs (one
    /// project's keys by hour over 58 days at 10 M rows: its hash aggregate took more
    /// than sending the rows; the projects by hour: 8 ms against 16, BENCHMARKS.md).
    /// Where several rows make a group (the per-model series over every project, a
    /// summary's top keys over many hours), sending them all measured slower.
    pub fn sql_ungrouped(&self, placeholder: impl Fn(usize) -> String) -> Option<String> {
        (!self.group_by.is_empty() && self.rows_are_groups()).then(|| self.build_as(placeholder, false).0)
    }

    /// Whether each row of the table the query reads is a group of its own: the
    /// projection keeps no dimension the query neither groups nor filters by, and it
    /// is read per hour (no daily slices). Ungrouped rows then need only sorting.
    pub fn rows_are_groups(&self) -> bool {
        let used = self.dimensions_used();
        match self.source() {
            (Some(kind), None) => self.by_hour && kind.kept.iter().all(|d| used.contains(d)),
            _ => false,
        }
    }

    /// How many value columns each row has.
    pub fn value_column_count(&self) -> usize {
        if self.latency_buckets { VALUE_COLUMNS } else { 9 }
    }

    /// The parameters of [`sql`](Self::sql), in order.
    pub fn params(&self) -> Vec<SqlParam> {
        self.build(|_| String::new()).1
    }
}

/// One row of a grouped rollup query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollupGroup {
    /// The hour, when the query was `by_hour`.
    pub hour_ms: Option<i64>,
    /// The value of each `group_by` dimension, in order.
    pub dims: Vec<String>,
    pub values: RollupValues,
}

fn unsigned(n: Option<i64>) -> u64 {
    n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

impl RollupGroup {
    /// Builds a group from the [`VALUE_COLUMNS`] integers of a row (SQL NULL, the sum
    /// of no rows, reads as zero).
    pub fn from_columns(hour_ms: Option<i64>, dims: Vec<String>, ints: &[Option<i64>]) -> Self {
        let at = |i: usize| unsigned(ints.get(i).copied().flatten());
        let mut values = RollupValues {
            requests: at(0),
            input_tokens: at(1),
            output_tokens: at(2),
            cached_tokens: at(3),
            cost_micros: at(4),
            potential_cost_micros: at(5),
            latency_count: at(6),
            latency_sum_ms: at(7),
            latency_max_ms: at(8),
            ..RollupValues::default()
        };
        for (i, bucket) in values.latency_buckets.iter_mut().enumerate() {
            *bucket = at(9 + i);
        }
        Self { hour_ms, dims, values }
    }
}

/// Ungrouped rows that are already groups ([`RollupQuery::sql_ungrouped`]) in the
/// grouped statement's order: by hour, then the dimensions' bytes.
pub fn sort_groups(mut rows: Vec<RollupGroup>) -> Vec<RollupGroup> {
    rows.sort_unstable_by(|a, b| a.hour_ms.cmp(&b.hour_ms).then_with(|| a.dims.cmp(&b.dims)));
    rows
}

/// The rollup table's columns, in the order of [`upsert_sql`]'s parameters and of
/// every raw rollup row (`SELECT {ROLLUP_COLUMNS}`).
pub fn rollup_columns() -> String {
    rollup_columns_for(true)
}

/// [`rollup_columns`], without the latency histogram's unless `histogram` (the
/// columns of a projection kind without it, [`Kind::histogram`]).
pub fn rollup_columns_for(histogram: bool) -> String {
    let mut columns =
        String::from("hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted");
    for (column, _) in VALUES {
        columns.push_str(", ");
        columns.push_str(column);
    }
    if histogram {
        for i in 0..LATENCY_BUCKETS {
            columns.push_str(&format!(", lat_{i}"));
        }
    }
    columns
}

/// How many parameters an upsert into a table with (or without) the histogram takes.
pub fn rollup_params(histogram: bool) -> usize {
    if histogram { ROLLUP_PARAMS } else { ROLLUP_PARAMS - LATENCY_BUCKETS }
}

/// Parameters of one rollup upsert: 9 dimensions, then 9 values and the buckets.
pub const ROLLUP_PARAMS: usize = 18 + LATENCY_BUCKETS;

/// The columns of the rollup table's primary key.
pub const ROLLUP_KEY_COLUMNS: &str =
    "project_id, hour_ms, key_id, model, provider, endpoint, status_class, cache, counted";

/// `INSERT` of one group's values that adds to the row already there: sums add and
/// the maximum keeps the larger. `placeholder(i)` writes the `i`-th (0-based)
/// parameter, in [`rollup_columns`] order.
pub fn upsert_sql(placeholder: impl Fn(usize) -> String) -> String {
    upsert_sql_into("usage_hourly", placeholder)
}

/// [`upsert_sql`] into `table` (the full rollup or a projection table: they have the
/// same columns and key).
pub fn upsert_sql_into(table: &str, placeholder: impl Fn(usize) -> String) -> String {
    upsert_sql_for(table, true, placeholder)
}

/// [`upsert_sql_into`] a table with or without the latency histogram's columns
/// (its parameters: the first [`rollup_params`] of [`rollup_columns`] order).
pub fn upsert_sql_for(table: &str, histogram: bool, placeholder: impl Fn(usize) -> String) -> String {
    let placeholders: Vec<String> = (0..rollup_params(histogram)).map(placeholder).collect();
    let mut updates: Vec<String> = VALUES
        .iter()
        .map(|(column, max)| {
            if *max {
                format!(
                    "{column} = CASE WHEN excluded.{column} > {table}.{column} \
                     THEN excluded.{column} ELSE {table}.{column} END"
                )
            } else {
                format!("{column} = {table}.{column} + excluded.{column}")
            }
        })
        .collect();
    if histogram {
        for i in 0..LATENCY_BUCKETS {
            updates.push(format!("lat_{i} = {table}.lat_{i} + excluded.lat_{i}"));
        }
    }
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({ROLLUP_KEY_COLUMNS}) DO UPDATE SET {}",
        rollup_columns_for(histogram),
        placeholders.join(", "),
        updates.join(", ")
    )
}

/// The value parameters of a group (after its 9 dimensions), in [`rollup_columns`]
/// order, as SQL integers (saturating).
pub fn value_params(values: &RollupValues) -> [i64; 9 + LATENCY_BUCKETS] {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut out = [0; 9 + LATENCY_BUCKETS];
    let head = [
        values.requests,
        values.input_tokens,
        values.output_tokens,
        values.cached_tokens,
        values.cost_micros,
        values.potential_cost_micros,
        values.latency_count,
        values.latency_sum_ms,
        values.latency_max_ms,
    ];
    for (slot, v) in out.iter_mut().zip(head.iter().chain(values.latency_buckets.iter())) {
        *slot = int(*v);
    }
    out
}

/// The analytics a backend answers, all from the rollup table (never raw rows but
/// for retention, which deletes them).
#[async_trait]
pub trait AnalyticsStore: Send + Sync + 'static {
    /// Grouped sums of rollups (see [`RollupQuery`]).
    async fn rollup_groups(&self, query: RollupQuery) -> StoreResult<Vec<RollupGroup>>;
    /// The raw rollup rows of hours `[from_ms, to_ms)` (of one project, when given),
    /// ordered by hour then key. For exports (an hour at a time) and the
    /// conformance suite.
    async fn rollup_rows(
        &self,
        from_ms: i64,
        to_ms: i64,
        project_id: Option<String>,
    ) -> StoreResult<Vec<(RollupKey, RollupValues)>>;
    /// Deletes at most `batch` ledger rows with `ts_ms < before_ms` (rollups stay);
    /// answers how many. Retention calls it until it answers less than `batch`, so
    /// no single statement holds the write lock for long.
    async fn delete_usage_before(&self, before_ms: i64, batch: usize) -> StoreResult<u64>;
    /// Deletes the rollups of hours before `before_ms`; answers how many rows.
    async fn delete_rollups_before(&self, before_ms: i64) -> StoreResult<u64>;
}

/// Reads a raw rollup row's dimensions (its first 9 columns, [`rollup_columns`]
/// order) into a key; `None` for a cache outcome this build does not know.
pub fn key_from_columns(
    hour_ms: i64,
    strings: [String; 5],
    status_class: i64,
    cache: &str,
    counted: bool,
) -> Option<RollupKey> {
    let [project_id, key_id, model, provider, endpoint] = strings;
    Some(RollupKey {
        hour_ms,
        project_id,
        key_id,
        model,
        provider,
        endpoint,
        status_class: u16::try_from(status_class).ok()?,
        cache: crate::rollup::CacheOutcome::parse(cache)?,
        counted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grouped_query_names_its_parameters_in_order() {
        let query = RollupQuery {
            from_ms: 0,
            to_ms: 10,
            filter: RollupFilter { project_id: Some("p".into()), counted: Some(true), ..RollupFilter::default() },
            by_hour: true,
            group_by: vec![Dimension::Model],
            latency_buckets: false,
            sums: Sums::ALL,
        };
        let sql = query.sql(|i| format!("${}", i + 1));
        assert!(sql.starts_with("SELECT hour_ms, model, CAST(SUM(requests)"), "{sql}");
        assert!(sql.contains("project_id = $3 AND counted = $4 GROUP BY hour_ms, model"), "{sql}");
        assert_eq!(query.params().len(), 4);
        // One metric: one sum, zeros for the rest.
        let cost = RollupQuery { sums: Sums::COST, ..query.clone() }.sql(|i| format!("${}", i + 1));
        assert_eq!(cost.matches("SUM(").count(), 2, "{cost}");
        assert!(cost.contains("CAST(0 AS BIGINT), CAST(SUM(cost_micros)"), "{cost}");
        assert!(!cost.contains("MAX("), "{cost}");
    }

    #[test]
    fn sums_keep_their_columns_and_zero_the_rest() {
        let v = RollupValues {
            requests: 1,
            input_tokens: 2,
            output_tokens: 3,
            cached_tokens: 4,
            cost_micros: 5,
            potential_cost_micros: 6,
            latency_count: 7,
            latency_sum_ms: 8,
            latency_max_ms: 9,
            ..RollupValues::default()
        };
        assert_eq!(Sums::ALL.keep(&v), v);
        assert_eq!(Sums::REQUESTS.keep(&v), RollupValues { requests: 1, ..RollupValues::default() });
        let tokens = Sums::TOKENS.keep(&v);
        assert_eq!((tokens.input_tokens, tokens.output_tokens, tokens.cached_tokens, tokens.requests), (2, 3, 4, 0));
        let cost = Sums::COST.keep(&v);
        assert_eq!((cost.cost_micros, cost.potential_cost_micros, cost.latency_count), (5, 6, 0));
        let latency = Sums::LATENCY.keep(&v);
        assert_eq!(
            (latency.latency_count, latency.latency_sum_ms, latency.latency_max_ms, latency.cost_micros),
            (7, 8, 9, 0)
        );
    }

    #[test]
    fn ungrouped_rows_are_read_only_where_they_are_groups() {
        let query = RollupQuery {
            from_ms: 0,
            to_ms: 10,
            filter: RollupFilter { project_id: Some("p".into()), ..RollupFilter::default() },
            by_hour: true,
            group_by: vec![Dimension::Key],
            latency_buckets: false,
            sums: Sums::ALL,
        };
        let sql = query.sql_ungrouped(|i| format!("${}", i + 1)).expect("has group keys");
        assert!(sql.starts_with("SELECT hour_ms, key_id, requests, input_tokens"), "{sql}");
        assert!(!sql.contains("GROUP BY") && !sql.contains("SUM("), "{sql}");
        assert!(RollupQuery { by_hour: false, ..query.clone() }.sql_ungrouped(|_| "?".into()).is_none());
        assert!(sql.contains("FROM usage_hourly_key_volume"), "{sql}");
        // The per-model series of one project: its projection also keeps the provider.
        let by_model = RollupQuery { group_by: vec![Dimension::Model], ..query.clone() };
        assert!(by_model.sql_ungrouped(|_| "?".into()).is_none());
        let by_model_and_provider =
            RollupQuery { group_by: vec![Dimension::Model, Dimension::Provider], ..query.clone() };
        assert!(by_model_and_provider.sql_ungrouped(|_| "?".into()).is_some());
        // The projects by hour, over every project: one row per hour and project.
        let by_project =
            RollupQuery { filter: RollupFilter::default(), group_by: vec![Dimension::Project], ..query.clone() };
        assert!(by_project.sql_ungrouped(|_| "?".into()).is_some());
        // The keys of every project: the project is neither grouped nor filtered.
        let every_key = RollupQuery { filter: RollupFilter::default(), ..query.clone() };
        assert!(every_key.sql_ungrouped(|_| "?".into()).is_none());
        // Those rows are sorted as the grouped statement orders its groups.
        let row = |hour: i64, key: &str, requests: u64| RollupGroup {
            hour_ms: Some(hour),
            dims: vec![key.to_owned()],
            values: RollupValues { requests, ..RollupValues::default() },
        };
        let sorted = sort_groups(vec![row(2, "b", 1), row(1, "b", 2), row(2, "a", 3), row(1, "B", 4)]);
        let got: Vec<_> = sorted.iter().map(|g| (g.hour_ms, g.dims[0].as_str(), g.values.requests)).collect();
        assert_eq!(got, vec![(Some(1), "B", 4), (Some(1), "b", 2), (Some(2), "a", 3), (Some(2), "b", 1)]);
    }

    #[test]
    fn the_upsert_has_a_placeholder_per_column() {
        let sql = upsert_sql(|i| format!("?{}", i + 1));
        assert_eq!(rollup_columns().split(',').count(), ROLLUP_PARAMS);
        assert!(sql.contains(&format!("?{ROLLUP_PARAMS})")));
        assert!(!sql.contains(&format!("?{}", ROLLUP_PARAMS + 1)));
        let narrow = upsert_sql_for("usage_hourly_key_volume", false, |i| format!("?{}", i + 1));
        let params = rollup_params(false);
        assert_eq!(rollup_columns_for(false).split(',').count(), params);
        assert!(narrow.contains(&format!("?{params})")) && !narrow.contains(&format!("?{}", params + 1)));
        assert!(!narrow.contains("lat_0"), "{narrow}");
    }
}
