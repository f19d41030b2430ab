//! Narrower copies of the hourly rollup, so that a dashboard query reads a few
//! thousand rows however large the ledger grows.
//!
//! The full rollup (`usage_hourly`) keeps eight dimensions; an hour of busy traffic
//! has about as many groups of them as requests, so a month-long summary over it
//! grows with the traffic. Most queries need far fewer: the totals need the project
//! and the status class, the top models the model and provider, the top keys the key.
//! Each [`Kind`] keeps the project and a few dimensions (the counted flag where
//! forecasts need it), and exists
//! at two grains: per UTC hour (`usage_hourly_<kind>`) and per UTC day
//! (`usage_daily_<kind>`). Every table has the full rollup's columns but the latency
//! histogram's where the kind keeps none ([`Kind::histogram`]); the dimensions a kind
//! drops hold a constant (empty text, status class 0, cache `miss`, not counted).
//!
//! All of them are written from the same [`Rollups`](crate::Rollups) in the
//! transaction that stores the ledger rows (the stores call
//! [`Rollups::project`](crate::Rollups::project) once per table), so they can never
//! drift from the full rollup or the ledger. [`RollupQuery::sql`](crate::RollupQuery::sql)
//! picks the first kind that keeps every dimension the query filters or groups by
//! ([`choose`]); a query that is not per hour reads whole UTC days from the daily
//! table and only the edges of its range from the hourly one. A query no kind
//! covers reads the full rollup, as before.

use crate::store::Dimension;

/// A set of kept dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The table suffix: `usage_hourly_<name>` and `usage_daily_<name>`.
    pub name: &'static str,
    /// The dimensions kept (every kind keeps the project).
    pub kept: &'static [Dimension],
    /// Whether the table has the latency histogram's columns (`lat_0`...): a kind
    /// without them has rows a third as wide, and serves only queries that do not
    /// sum the buckets.
    pub histogram: bool,
}

impl Kind {
    pub fn keeps(&self, dimension: Dimension) -> bool {
        self.kept.contains(&dimension)
    }

    pub fn hourly_table(&self) -> &'static str {
        match self.name {
            "total" => "usage_hourly_total",
            "project" => "usage_hourly_project",
            "endpoint" => "usage_hourly_endpoint",
            "model" => "usage_hourly_model",
            "key_volume" => "usage_hourly_key_volume",
            "key" => "usage_hourly_key",
            _ => "usage_hourly_key_detail",
        }
    }

    pub fn daily_table(&self) -> &'static str {
        match self.name {
            "total" => "usage_daily_total",
            "project" => "usage_daily_project",
            "endpoint" => "usage_daily_endpoint",
            "model" => "usage_daily_model",
            "key_volume" => "usage_daily_key_volume",
            "key" => "usage_daily_key",
            _ => "usage_daily_key_detail",
        }
    }
}

/// The kinds, smallest first: [`choose`] takes the first that covers a query. The
/// counted flag is kept only where a query filters by it (forecasts of keys and
/// projects); elsewhere it would double the rows.
pub const KINDS: [Kind; 7] = [
    Kind { name: "total", kept: &[Dimension::Project], histogram: true },
    Kind { name: "project", kept: &[Dimension::Project, Dimension::StatusClass, Dimension::Counted], histogram: true },
    Kind { name: "endpoint", kept: &[Dimension::Project, Dimension::Endpoint], histogram: true },
    Kind { name: "model", kept: &[Dimension::Project, Dimension::Model, Dimension::Provider], histogram: true },
    // The keys' volumes: no counted flag (half the rows of `key`) and no histogram (a
    // third of the width), for the per-hour key series of the anomalies and the
    // summaries' top keys; on PostgreSQL, whose heap is in time order, one project's
    // keys over weeks are then a few hundred pages instead of thousands.
    Kind { name: "key_volume", kept: &[Dimension::Project, Dimension::Key], histogram: false },
    Kind { name: "key", kept: &[Dimension::Project, Dimension::Key, Dimension::Counted], histogram: true },
    // One key's breakdowns (its summary): everything but the cache outcome and the
    // counted flag, stored by project, key and hour so a key's rows are one range.
    Kind {
        name: "key_detail",
        kept: &[
            Dimension::Project,
            Dimension::Key,
            Dimension::Model,
            Dimension::Provider,
            Dimension::Endpoint,
            Dimension::StatusClass,
        ],
        histogram: true,
    },
];

/// The grain of a projection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    Hour,
    Day,
}

/// Every projection table, with its kind and grain (the stores write each).
pub fn tables() -> impl Iterator<Item = (&'static str, Kind, Grain)> {
    KINDS.into_iter().flat_map(|k| [(k.hourly_table(), k, Grain::Hour), (k.daily_table(), k, Grain::Day)])
}

/// The first kind that keeps every dimension in `used` (and the latency histogram,
/// when `histogram`), if any.
pub fn choose(used: &[Dimension], histogram: bool) -> Option<Kind> {
    KINDS.into_iter().find(|k| (k.histogram || !histogram) && used.iter().all(|d| k.keeps(*d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_covering_kind_is_chosen() {
        let name = |used: &[Dimension], histogram: bool| choose(used, histogram).map(|k| k.name);
        for histogram in [false, true] {
            assert_eq!(name(&[], histogram), Some("total"));
            assert_eq!(name(&[Dimension::Project], histogram), Some("total"));
            assert_eq!(name(&[Dimension::Project, Dimension::StatusClass], histogram), Some("project"));
            assert_eq!(name(&[Dimension::Counted], histogram), Some("project"));
            assert_eq!(name(&[Dimension::Provider], histogram), Some("model"));
            assert_eq!(name(&[Dimension::Model, Dimension::Counted], histogram), None, "models keep no counted flag");
            assert_eq!(name(&[Dimension::Key, Dimension::Counted], histogram), Some("key"));
            assert_eq!(name(&[Dimension::Key, Dimension::Model], histogram), Some("key_detail"));
            assert_eq!(name(&[Dimension::Key, Dimension::StatusClass], histogram), Some("key_detail"));
            assert_eq!(name(&[Dimension::Key, Dimension::Model, Dimension::Counted], histogram), None);
            assert_eq!(name(&[Dimension::Cache], histogram), None);
        }
        // A key's volumes come from the narrow table unless the buckets are summed.
        assert_eq!(name(&[Dimension::Key], false), Some("key_volume"));
        assert_eq!(name(&[Dimension::Project, Dimension::Key], false), Some("key_volume"));
        assert_eq!(name(&[Dimension::Key], true), Some("key"));
    }

    #[test]
    fn fourteen_tables_with_distinct_names() {
        let names: std::collections::BTreeSet<&str> = tables().map(|(t, _, _)| t).collect();
        assert_eq!(names.len(), 14);
    }
}
