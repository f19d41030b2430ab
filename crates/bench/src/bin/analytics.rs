//! `tollgate-analytics-bench`: the usage data generator and the analytics benchmark.
//!
//! `generate` writes N synthetic, realistic ledger rows (several projects, keys,
//! models and providers, a diurnal pattern, a few spikes) through the store's bulk
//! path (`Ledger::append_new`: one transaction per batch, rollups included), into
//! an embedded data directory or a PostgreSQL database, and creates the projects,
//! plan and keys they belong to. `bench` does that, then starts the real server on
//! the data, times every analytics endpoint over HTTP (p50/p99 over a 30-day range)
//! and a streaming export, printing resident memory before and after. Figures go
//! to BENCHMARKS.md; nothing here asserts a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_analytics::conformance::Rng;
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR};
use tollgate_core::{KeyHash, KeyRecord, LimitSpec, Metric, Plan, Project, UsageRecord, UsageSource, Window};
use tollgate_store::{Catalog, Ledger};

const PROJECTS: usize = 5;
const KEYS_PER_PROJECT: usize = 20;
const MODELS: [(&str, &str, u64, u64); 6] = [
    ("gpt-4o", "openai", 2_500, 10_000),
    ("gpt-4o-mini", "openai", 150, 600),
    ("o3", "openai", 2_000, 8_000),
    ("claude-sonnet-4", "anthropic", 3_000, 15_000),
    ("claude-haiku-4", "anthropic", 800, 4_000),
    ("text-embedding-3-small", "openai", 20, 0),
];
const BATCH: usize = 5_000;
const ADMIN_TOKEN: &str = "bench-analytics-operator-token";

#[derive(Parser, Debug)]
#[command(name = "tollgate-analytics-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// Embedded data directory (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (the distributed store); needs --redis-url for `bench`.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes N synthetic ledger rows over the last `days` days.
    Generate {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Generates (unless --skip-generate), then times the analytics API and an export.
    Bench {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Timed requests per query, after one untimed warm-up (its statement is
        /// prepared then); p99 needs about 100 to be more than the slowest one.
        #[arg(long, default_value_t = 100)]
        iterations: usize,
        #[arg(long)]
        skip_generate: bool,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Resident and peak resident memory of this process, in MB (Linux).
fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Stores {
    catalog: Arc<dyn Catalog>,
    ledger: Arc<dyn Ledger>,
}

async fn open(target: &Target) -> anyhow::Result<Stores> {
    if let Some(url) = &target.database_url {
        let settings = tollgate_store_postgres::PostgresSettings::new(url.clone());
        let store = tollgate_store_postgres::PostgresStore::open(&settings).await.context("opening PostgreSQL")?;
        return Ok(Stores { catalog: store.catalog(), ledger: store.ledger() });
    }
    let dir = target.data_dir.clone().context("give --data-dir or --database-url")?;
    let store = tollgate_store_embedded::EmbeddedStore::open(&dir).context("opening the embedded store")?;
    Ok(Stores { catalog: Arc::new(store.clone()), ledger: store.ledger() })
}

fn key_id(project: usize, key: usize) -> String {
    format!("benchp{project}k{key}")
}

async fn seed_catalog(catalog: &dyn Catalog, now: i64) -> anyhow::Result<()> {
    let plan = Plan {
        name: "bench-analytics".into(),
        description: Some("analytics benchmark".into()),
        limits: vec![
            LimitSpec::new(Metric::Requests, Window::Day, 10_000_000),
            LimitSpec::new(Metric::CostMicros, Window::Month, 5_000_000_000),
            LimitSpec::new(Metric::TotalTokens, Window::Month, 50_000_000_000),
        ],
        time_zone: None,
    };
    catalog.put_plan(plan).await?;
    for p in 0..PROJECTS {
        let id = format!("bench-project-{p}");
        if catalog.get_project(&id).await?.is_none() {
            catalog.create_project(Project::new(id.clone(), id.clone(), now)).await?;
        }
        for k in 0..KEYS_PER_PROJECT {
            let kid = key_id(p, k);
            if catalog.get_key(&kid).await?.is_some() {
                continue;
            }
            let record = KeyRecord {
                id: kid.clone(),
                project_id: id.clone(),
                name: None,
                plan: "bench-analytics".into(),
                metadata: serde_json::Map::new(),
                limit_overrides: Vec::new(),
                created_at_ms: now,
                expires_at_ms: None,
                revoked_at_ms: None,
                version: 1,
            };
            catalog.create_key(record, KeyHash::of(&format!("bench-secret-{kid}"))).await?;
        }
    }
    Ok(())
}

/// The share of a day's traffic in UTC hour `h`: a diurnal curve peaking at 15:00.
fn diurnal(h: i64) -> f64 {
    let x = (h as f64 - 15.0) / 24.0 * std::f64::consts::TAU;
    1.0 + 0.8 * x.cos()
}

/// How many rows each hour of the last `days` days gets, oldest hour first: the
/// diurnal curve, plus 2% of all rows shared by the spike hours. A ledger is written
/// in time order, so the generator writes in time order too: each batch then
/// touches the rollup rows of an hour or two, as live traffic does (random hours in
/// every batch would rewrite rollup rows all over the range, which no gateway does
/// and which bloats PostgreSQL's tables with dead row versions).
fn hour_counts(rows: u64, now: i64, days: i64, spikes: &[i64]) -> Vec<(i64, u64)> {
    let newest = now - now.rem_euclid(MS_PER_HOUR) - MS_PER_HOUR;
    let hours: Vec<i64> = (0..days * 24).rev().map(|h| newest - h * MS_PER_HOUR).collect();
    let spike_rows = rows / 50;
    let spread = rows - spike_rows;
    let weights: Vec<f64> = hours.iter().map(|at| diurnal((at / MS_PER_HOUR) % 24)).collect();
    let total: f64 = weights.iter().sum();
    let mut counts: Vec<(i64, u64)> =
        hours.iter().zip(&weights).map(|(at, w)| (*at, (spread as f64 * w / total) as u64)).collect();
    // Rounding down loses a few rows: the newest hours take them, then the spikes.
    let mut missing = spread - counts.iter().map(|(_, n)| n).sum::<u64>();
    for (_, n) in counts.iter_mut().rev() {
        if missing == 0 {
            break;
        }
        *n += 1;
        missing -= 1;
    }
    for (i, spike) in spikes.iter().enumerate() {
        let share = spike_rows / spikes.len() as u64 + u64::from((i as u64) < spike_rows % spikes.len() as u64);
        if let Some((_, n)) = counts.iter_mut().find(|(at, _)| at == spike) {
            *n += share;
        }
    }
    counts
}

/// A synthetic row in `hour`: project and key skewed (a few big tenants), the model
/// by popularity, errors and cache hits.
fn synthetic(rng: &mut Rng, i: u64, hour: i64) -> UsageRecord {
    let ts_ms = hour + rng.below(MS_PER_HOUR as u64) as i64;
    let project = (rng.below(100) as usize).min(99) * PROJECTS / 100 * (rng.below(2) as usize) % PROJECTS;
    let key =
        (rng.below(KEYS_PER_PROJECT as u64) * rng.below(KEYS_PER_PROJECT as u64) / KEYS_PER_PROJECT as u64) as usize;
    let (model, provider, input_price, output_price) =
        MODELS[[0, 0, 1, 1, 1, 1, 2, 3, 3, 4, 5][rng.below(11) as usize]];
    let status = match rng.below(100) {
        0 => 500,
        1 | 2 => 429,
        3 => 400,
        _ => 200,
    };
    let ok = status == 200;
    let prompt = if ok { 50 + rng.below(3_000) } else { 0 };
    let completion = if ok && output_price > 0 { rng.below(800) } else { 0 };
    let cached = if ok && rng.below(4) == 0 { rng.below(prompt + 1) } else { 0 };
    let cost = (prompt - cached) * input_price / 1_000_000
        + cached * input_price / 4_000_000
        + completion * output_price / 1_000_000;
    let uncached = prompt * input_price / 1_000_000 + completion * output_price / 1_000_000;
    UsageRecord {
        id: format!("gen-{i:010}"),
        ts_ms,
        project_id: format!("bench-project-{project}"),
        key_id: key_id(project, key),
        endpoint: if output_price == 0 { "embeddings" } else { "chat.completions" }.to_owned(),
        provider: provider.to_owned(),
        model: Some(model.to_owned()),
        status,
        counted: ok,
        requests: 1,
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        cost_micros: cost,
        uncached_cost_micros: uncached.max(cost),
        usage_source: UsageSource::Reported,
        latency_ms: if ok { 80 + rng.below(400) + rng.below(3) * rng.below(4_000) } else { rng.below(50) },
        ..UsageRecord::default()
    }
}

async fn generate(target: &Target, rows: u64, days: i64, seed: u64) -> anyhow::Result<()> {
    let stores = open(target).await?;
    let now = now_ms();
    seed_catalog(stores.catalog.as_ref(), now).await?;
    let mut rng = Rng::new(seed);
    let spikes: Vec<i64> =
        (0..4).map(|i| now - (days * 24 / 5 * (i + 1)) * MS_PER_HOUR).map(|h| h - h.rem_euclid(MS_PER_HOUR)).collect();
    let started = Instant::now();
    let mut last = started;
    let mut written = 0;
    let mut hours = hour_counts(rows, now, days, &spikes).into_iter().flat_map(|(at, n)| (0..n).map(move |_| at));
    while written < rows {
        let n = BATCH.min((rows - written) as usize);
        let mut batch: Vec<UsageRecord> = Vec::with_capacity(n);
        for j in 0..n as u64 {
            let hour = hours.next().context("the hour counts add up to the rows")?;
            batch.push(synthetic(&mut rng, written + j, hour));
        }
        // A batch is idempotent by id (replays are ignored), so a failed one is simply
        // sent again: SQLite answers "database is locked" while a WAL truncation
        // outlasts its busy timeout on a loaded disk.
        let mut attempt = 0;
        loop {
            match stores.ledger.append_new(batch.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    eprintln!("batch failed ({e}); retrying ({attempt}/5)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).context("writing a batch"),
            }
        }
        written += n as u64;
        if last.elapsed() >= Duration::from_secs(10) || written == rows {
            last = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!("generated {written} rows in {secs:.0} s ({:.0} rows/s)", written as f64 / secs);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("generate: {rows} rows over {days} days in {secs:.1} s = {:.0} rows/s", rows as f64 / secs);
    stores.ledger.close().await?;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1_000.0
}

async fn bench(target: &Target, rows: u64, days: i64, iterations: usize, skip: bool) -> anyhow::Result<()> {
    if !skip {
        generate(target, rows, days, 1).await?;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = target.data_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("tollgate-bench-analytics"));
    let mut raw = tollgate_server::config::RawConfig {
        listen: "127.0.0.1:0".into(),
        data_dir,
        admin_token: Some(tollgate_server::config::Secret::new(ADMIN_TOKEN)),
        ..tollgate_server::config::RawConfig::default()
    };
    if let Some(url) = &target.database_url {
        raw.store = tollgate_server::config::StoreKind::Distributed;
        raw.database_url = Some(tollgate_server::config::Secret::new(url.as_str()));
        raw.redis_url = Some(tollgate_server::config::Secret::new(target.redis_url.as_str()));
    }
    let config = tollgate_server::config::Config::from_raw(raw).context("bench configuration")?;
    let started = Instant::now();
    let app = tollgate_server::app::Application::build(config).await.context("starting tollgate")?;
    println!("start-up (counter rebuild included): {:.2} s", started.elapsed().as_secs_f64());
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let from = tollgate_core::calendar::to_rfc3339(now_ms() - days * MS_PER_DAY);
    let queries = [
        ("summary, all projects".to_owned(), format!("/api/v1/analytics/summary?from={from}")),
        ("summary, one project".to_owned(), format!("/api/v1/analytics/summary?project=bench-project-0&from={from}")),
        ("summary, one key".to_owned(), format!("/api/v1/analytics/summary?key={}&from={from}", key_id(0, 0))),
        (
            "timeseries cost by day (Europe/Paris)".to_owned(),
            format!("/api/v1/analytics/timeseries?metric=cost_micros&granularity=day&tz=Europe/Paris&from={from}"),
        ),
        (
            "timeseries requests by hour, group_by model".to_owned(),
            format!("/api/v1/analytics/timeseries?metric=requests&group_by=model&from={from}"),
        ),
        (
            "timeseries p99 latency by hour, one project".to_owned(),
            format!("/api/v1/analytics/timeseries?metric=latency_p99&project=bench-project-0&from={from}"),
        ),
        ("forecast, one key".to_owned(), format!("/api/v1/analytics/forecast?key={}", key_id(0, 0))),
        ("forecast, one project".to_owned(), "/api/v1/analytics/forecast?project=bench-project-0".to_owned()),
        ("anomalies by project (30 days)".to_owned(), format!("/api/v1/analytics/anomalies?by=project&from={from}")),
        (
            "anomalies by key, one project (30 days)".to_owned(),
            format!("/api/v1/analytics/anomalies?by=key&project=bench-project-0&from={from}"),
        ),
    ];
    println!("| query | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, path) in &queries {
        let mut times = Vec::with_capacity(iterations);
        // One untimed warm-up: the server prepares the query's statements on first use.
        for i in 0..=iterations {
            let t = Instant::now();
            let r = http.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            anyhow::ensure!(status.is_success(), "{path}: {status} {}", String::from_utf8_lossy(&body));
            if i > 0 {
                times.push(t.elapsed());
            }
        }
        times.sort();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0)
        );
    }
    // An export of one project's raw rows (about a fifth or more of the ledger).
    let (rss_before, _) = memory_mb();
    let t = Instant::now();
    let mut r = http
        .get(format!("{base}/api/v1/usage/export?format=csv&project=bench-project-0"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "export: {}", r.status());
    let (mut lines, mut bytes, mut rss_max) = (0u64, 0u64, rss_before);
    while let Some(chunk) = r.chunk().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        bytes += chunk.len() as u64;
        if lines % 100_000 < 1_000 {
            rss_max = rss_max.max(memory_mb().0);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let (rss_after, _) = memory_mb();
    let rows_exported = lines.saturating_sub(1);
    println!(
        "export: {rows_exported} rows ({:.0} MB of CSV) in {secs:.1} s = {:.0} rows/s; resident memory {rss_before:.0} MB before, {rss_max:.0} MB at most during, {rss_after:.0} MB after (growth {:.1} MB)",
        bytes as f64 / 1e6,
        rows_exported as f64 / secs,
        rss_max.max(rss_after) - rss_before
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate { target, rows, days, seed } => generate(&target, rows, days, seed).await,
        Command::Bench { target, rows, days, iterations, skip_generate } => {
            bench(&target, rows, days, iterations, skip_generate).await
        }
    }
}
