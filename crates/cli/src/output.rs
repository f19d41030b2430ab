//! How admin answers are printed: a table for people on a terminal, JSON for
//! scripts (when stdout is not a terminal, or with `--json`), unchanged from the API.

use std::fmt::Write as _;
use std::io::IsTerminal;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Table,
}

impl Format {
    /// JSON when asked for or when stdout is not a terminal; else a table.
    pub fn choose(json: bool) -> Self {
        if json || !std::io::stdout().is_terminal() { Format::Json } else { Format::Table }
    }
}

pub fn print(value: &Value, format: Format) -> anyhow::Result<()> {
    if value.is_null() {
        return Ok(());
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => print!("{}", table(value)),
    }
    Ok(())
}

/// Columns shown first when present; the rest follow in name order.
const FIRST: [&str; 6] = ["id", "name", "key_id", "project", "plan", "state"];
const MAX_CELL: usize = 60;

/// A list (`{"data": [...]}`) as rows and columns, with where the next page starts;
/// one object as field/value lines; anything else as JSON.
pub fn table(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if map.get("data").is_some_and(Value::is_array) => {
            let rows = map.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
            if rows.is_empty() {
                out.push_str("(none)\n");
            } else {
                grid(&mut out, &rows);
            }
            for (field, flag) in [("next_after", "--after"), ("next_cursor", "--after")] {
                if let Some(next) = map.get(field).and_then(Value::as_str) {
                    let _ = writeln!(out, "more: {flag} {next}   (or --all)");
                }
            }
        }
        Value::Object(map) => {
            let width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            for key in ordered(map.keys()) {
                let _ = writeln!(out, "{key:<width$}  {}", cell(&map[key.as_str()], usize::MAX));
            }
        }
        other => {
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(other).unwrap_or_default());
        }
    }
    out
}

fn ordered<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut keys: Vec<String> = keys.cloned().collect();
    keys.sort_by_key(|k| (FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()), k.clone()));
    keys
}

fn grid(out: &mut String, rows: &[Value]) {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        if let Some(map) = row.as_object() {
            for key in map.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    let columns = ordered(columns.iter());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(row.get(c).unwrap_or(&Value::Null), MAX_CELL)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |out: &mut String, values: &[String]| {
        let text: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(out, &columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
    for row in &cells {
        line(out, row);
    }
}

/// One value as a table cell: limits as `name=limit`, lists joined, objects as JSON.
fn cell(value: &Value, max: usize) -> String {
    let text = match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| match (item.get("limit"), item.get("name").and_then(Value::as_str)) {
                (Some(limit), Some(name)) => format!("{name}={limit}"),
                (Some(limit), None) => format!(
                    "{}/{}={limit}",
                    item.get("metric").and_then(Value::as_str).unwrap_or("?"),
                    item.get("window").and_then(Value::as_str).unwrap_or("?")
                ),
                _ => cell(item, usize::MAX),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_is_a_grid_with_the_next_page() {
        let text = table(&json!({
            "data": [
                { "id": "k1", "plan": "free", "limits": [{ "name": "requests_per_minute", "limit": 5 }] },
                { "id": "k22", "plan": "pro", "limits": [] },
            ],
            "next_after": "k22",
        }));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   PLAN  LIMITS");
        assert_eq!(lines[1], "k1   free  requests_per_minute=5");
        assert_eq!(lines[2], "k22  pro");
        assert_eq!(lines[3], "more: --after k22   (or --all)");
    }
}
