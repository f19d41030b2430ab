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
//! (`usage_daily_<kind>`). Every table has the full rollup's columns; the dimensions
//! a kind drops hold a constant (empty text, status class 0, cache `miss`).
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
    /// The dimensions kept (every kind keeps the project and the counted flag).
    pub kept: &'static [Dimension],
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
            "key" => "usage_daily_key",
            _ => "usage_daily_key_detail",
        }
    }
}

/// The kinds, smallest first: [`choose`] takes the first that covers a query. The
/// counted flag is kept only where a query filters by it (forecasts of keys and
/// projects); elsewhere it would double the rows.
pub const KINDS: [Kind; 6] = [
    Kind { name: "total", kept: &[Dimension::Project] },
    Kind { name: "project", kept: &[Dimension::Project, Dimension::StatusClass, Dimension::Counted] },
    Kind { name: "endpoint", kept: &[Dimension::Project, Dimension::Endpoint] },
    Kind { name: "model", kept: &[Dimension::Project, Dimension::Model, Dimension::Provider] },
    Kind { name: "key", kept: &[Dimension::Project, Dimension::Key, Dimension::Counted] },
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

/// The first kind that keeps every dimension in `used`, if any.
pub fn choose(used: &[Dimension]) -> Option<Kind> {
    KINDS.into_iter().find(|k| used.iter().all(|d| k.keeps(*d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_covering_kind_is_chosen() {
        assert_eq!(choose(&[]).map(|k| k.name), Some("total"));
        assert_eq!(choose(&[Dimension::Project]).map(|k| k.name), Some("total"));
        assert_eq!(choose(&[Dimension::Project, Dimension::StatusClass]).map(|k| k.name), Some("project"));
        assert_eq!(choose(&[Dimension::Counted]).map(|k| k.name), Some("project"));
        assert_eq!(choose(&[Dimension::Provider]).map(|k| k.name), Some("model"));
        assert_eq!(choose(&[Dimension::Model, Dimension::Counted]), None, "models keep no counted flag");
        assert_eq!(choose(&[Dimension::Key, Dimension::Counted]).map(|k| k.name), Some("key"));
        assert_eq!(choose(&[Dimension::Key, Dimension::Model]).map(|k| k.name), Some("key_detail"));
        assert_eq!(choose(&[Dimension::Key, Dimension::StatusClass]).map(|k| k.name), Some("key_detail"));
        assert_eq!(choose(&[Dimension::Key, Dimension::Model, Dimension::Counted]), None);
        assert_eq!(choose(&[Dimension::Cache]), None);
    }

    #[test]
    fn twelve_tables_with_distinct_names() {
        let names: std::collections::BTreeSet<&str> = tables().map(|(t, _, _)| t).collect();
        assert_eq!(names.len(), 12);
    }
}
