//! `tollgate usage export | summary | top`: streaming exports to a file (a progress
//! line on a terminal, nothing on a pipe) and tables of the analytics API.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{Client, ServerArgs, UsageCommand, UsageRange, query};

pub async fn run(server: ServerArgs, command: UsageCommand) -> anyhow::Result<()> {
    if server.admin_token.is_none() {
        bail!("no admin token: pass --admin-token or set TOLLGATE_ADMIN_TOKEN");
    }
    let client = Client::new(&server)?;
    match command {
        UsageCommand::Export { range, format, rollups, output } => {
            if format != "csv" && format != "ndjson" {
                bail!("--format must be csv or ndjson");
            }
            let path = if rollups { "/api/v1/analytics/export" } else { "/api/v1/usage/export" };
            let q = query(&[
                ("format", Some(format.clone())),
                ("project", range.project),
                ("key", range.key),
                ("from", range.from),
                ("to", range.to),
            ]);
            let progress = std::io::stderr().is_terminal();
            let rows = export(&client, &format!("{path}{q}"), &output, format == "csv", progress).await?;
            if progress {
                eprintln!();
            }
            if !std::io::stdout().is_terminal() {
                return Ok(());
            }
            println!("{rows} rows written to {}", output.display());
            Ok(())
        }
        UsageCommand::Summary { range, json } => {
            let body = client
                .call(reqwest::Method::GET, &format!("/api/v1/analytics/summary{}", range_query(range, &[])), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", summary_table(&body));
            }
            Ok(())
        }
        UsageCommand::Top { range, by, top, json } => {
            if !["model", "key", "provider", "endpoint"].contains(&by.as_str()) {
                bail!("--by must be model, key, provider or endpoint");
            }
            let path = format!("/api/v1/analytics/summary{}", range_query(range, &[("top", top.to_string())]));
            let body = client.call(reqwest::Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body["top"][&by])?);
            } else {
                print!("{}", top_table(&by, &body["top"][&by]));
            }
            Ok(())
        }
    }
}

fn range_query(range: UsageRange, extra: &[(&str, String)]) -> String {
    let mut pairs = vec![("project", range.project), ("key", range.key), ("from", range.from), ("to", range.to)];
    for (k, v) in extra {
        pairs.push((k, Some(v.clone())));
    }
    query(&pairs)
}

/// Streams the export into `output` (through `output.partial`, renamed when the
/// server ended the body cleanly); answers the rows written.
async fn export(client: &Client, path: &str, output: &Path, header: bool, progress: bool) -> anyhow::Result<u64> {
    let url = format!("{}{}", client.base, path);
    let request = client.http.get(&url).bearer_auth(&client.token);
    let mut response = request.send().await.with_context(|| format!("calling {url}: is tollgate running?"))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        bail!("{status}: {message}");
    }
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let started = Instant::now();
    let mut last_shown = started;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = response.chunk().await.context("the export stopped before its end")? {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            bytes += chunk.len() as u64;
            out.write_all(&chunk).context("writing the export")?;
            if progress && last_shown.elapsed() >= Duration::from_millis(200) {
                last_shown = Instant::now();
                show(lines.saturating_sub(u64::from(header)), bytes, started.elapsed());
            }
        }
        out.flush().context("writing the export")?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let rows = lines.saturating_sub(u64::from(header));
    if progress {
        show(rows, bytes, started.elapsed());
    }
    std::fs::rename(&partial, output).with_context(|| format!("renaming to {}", output.display()))?;
    Ok(rows)
}

fn show(rows: u64, bytes: u64, elapsed: Duration) {
    let rate = rows as f64 / elapsed.as_secs_f64().max(0.001);
    eprint!("\r{rows} rows, {:.1} MB, {:.0} rows/s   ", bytes as f64 / 1e6, rate);
}

fn dollars(micros: &Value) -> String {
    micros.as_u64().map_or_else(|| "-".to_owned(), |m| format!("${:.4}", m as f64 / 1e6))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            n.as_f64().filter(|f| f.fract() != 0.0).map_or_else(|| n.to_string(), |f| format!("{f:.4}"))
        }
        other => other.to_string(),
    }
}

/// Rows of two or more columns, left-aligned, the first row a header.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn summary_table(body: &Value) -> String {
    let t = &body["totals"];
    let rows = vec![
        vec!["metric".to_owned(), "value".to_owned()],
        vec!["from".into(), cell(&body["from"])],
        vec!["to".into(), cell(&body["to"])],
        vec!["requests".into(), cell(&t["requests"])],
        vec!["input tokens".into(), cell(&t["input_tokens"])],
        vec!["output tokens".into(), cell(&t["output_tokens"])],
        vec!["cached tokens".into(), cell(&t["cached_tokens"])],
        vec!["cost".into(), dollars(&t["cost_micros"])],
        vec!["saved by caching".into(), dollars(&t["saved_micros"])],
        vec!["error rate".into(), cell(&t["error_rate"])],
        vec!["latency p50 ms".into(), cell(&t["latency_ms"]["p50"])],
        vec!["latency p95 ms".into(), cell(&t["latency_ms"]["p95"])],
        vec!["latency p99 ms".into(), cell(&t["latency_ms"]["p99"])],
    ];
    table(&rows)
}

pub fn top_table(by: &str, list: &Value) -> String {
    let mut rows =
        vec![vec![by.to_owned(), "requests".to_owned(), "tokens".to_owned(), "cost".to_owned(), "saved".to_owned()]];
    for item in list.as_array().into_iter().flatten() {
        let name = if item["other"] == true { "(other)".to_owned() } else { cell(&item["value"]) };
        let name = if name.is_empty() { "(none)".to_owned() } else { name };
        rows.push(vec![
            name,
            cell(&item["requests"]),
            cell(&item["total_tokens"]),
            dollars(&item["cost_micros"]),
            dollars(&item["saved_micros"]),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_their_columns() {
        let list = json!([
            { "value": "gpt-4o", "requests": 60, "total_tokens": 6600, "cost_micros": 30000, "saved_micros": 7500 },
            { "other": true, "requests": 3, "total_tokens": 0, "cost_micros": 0, "saved_micros": 0 },
        ]);
        let t = top_table("model", &list);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("model    requests"), "{t}");
        assert!(lines[1].contains("$0.0300"), "{t}");
        assert!(lines[2].starts_with("(other)"), "{t}");
        let s = summary_table(&json!({ "totals": { "requests": 5, "cost_micros": 1_500_000, "error_rate": 0.25 } }));
        assert!(s.contains("cost              $1.5000"), "{s}");
        assert!(s.contains("error rate        0.2500"), "{s}");
    }
}
