//! `tollgate-scaling-bench`: the measured inputs of docs/scaling.md.
//!
//! - `ledger`: rows per second one PostgreSQL takes from N ledger writers (N gateway
//!   instances' worth: each its own pool and batch writer), with the batch size and
//!   commit rate at that load.
//! - `redis`: decisions per second of the limiter's one script on one Redis (8 limits
//!   a decision, C concurrent callers), and what `INFO commandstats` says per call.
//! - `ops`: Redis commands per proxied request and per verify, from `INFO
//!   commandstats` around N requests to a real gateway (distributed store) in front of
//!   the mock upstream.
//!
//! Figures are printed, never asserted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate_core::{Amounts, LimitSpec, Metric, UsageRecord, UsageSource, Window};
use tollgate_store::{Ledger, LimitItem, Limiter, ReserveRequest};
use tollgate_store_postgres::{PostgresSettings, PostgresStore};
use tollgate_store_redis::{KeySpace, RedisConn, RedisLimiter, RedisSettings};

#[derive(Parser, Debug)]
#[command(name = "tollgate-scaling-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Rows per second into one PostgreSQL from N ledger writers.
    Ledger {
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        database_url: String,
        #[arg(long, default_value_t = 1)]
        instances: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Limiter decisions per second on one Redis.
    Redis {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn schema_name(label: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("tgbench_{label}_{}_{nanos:x}", std::process::id())
}

fn record(instance: usize, n: u64) -> UsageRecord {
    UsageRecord {
        id: format!("bench-{instance}-{n}"),
        ts_ms: tollgate_store::clock::now_ms(),
        project_id: format!("project-{}", n % 5),
        key_id: format!("key-{}", n % 100),
        endpoint: "chat.completions".into(),
        provider: "openai".into(),
        model: Some(if n.is_multiple_of(3) { "gpt-4o" } else { "gpt-4o-mini" }.into()),
        status: 200,
        counted: true,
        requests: 1,
        prompt_tokens: 120 + n % 50,
        completion_tokens: 40 + n % 30,
        cost_micros: 90 + n % 17,
        uncached_cost_micros: 90 + n % 17,
        latency_ms: 20 + n % 200,
        usage_source: UsageSource::Reported,
        ..UsageRecord::default()
    }
}

async fn ledger(database_url: &str, instances: usize, seconds: u64) -> anyhow::Result<()> {
    let schema = schema_name("ledger");
    let mut stores = Vec::new();
    for _ in 0..instances {
        let mut settings = PostgresSettings::new(database_url);
        settings.schema = Some(schema.clone());
        settings.pool_size = 4;
        stores.push(PostgresStore::open(&settings).await.context("opening PostgreSQL")?);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut producers = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let (ledger, stop) = (store.ledger(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // As a gateway does: wait for room in the writer's queue, then append.
                ledger.room().await;
                ledger.append(record(i, n));
                n += 1;
                if n.is_multiple_of(256) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await?;
    }
    let (mut rows, mut commits, mut commit_micros) = (0u64, 0u64, 0u64);
    for store in &stores {
        let ledger = store.ledger();
        ledger.flush().await.context("flush")?;
        let snapshot = ledger.commit_latency().context("a batch writer")?;
        rows += ledger.queue().written;
        commits += snapshot.count;
        commit_micros += snapshot.sum_micros;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("| instances | rows | seconds | rows/s | commits/s | rows per commit | mean commit ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {instances} | {rows} | {elapsed:.1} | {:.0} | {:.0} | {:.0} | {:.2} |",
        rows as f64 / elapsed,
        commits as f64 / elapsed,
        rows as f64 / commits.max(1) as f64,
        commit_micros as f64 / commits.max(1) as f64 / 1_000.0
    );
    for store in &stores {
        store.ledger().close().await.ok();
    }
    stores[0].drop_schema(&schema).await.context("dropping the bench schema")?;
    Ok(())
}

/// `INFO commandstats` as (command, calls, usec).
async fn commandstats(conn: &RedisConn) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
    let mut out = Vec::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else { continue };
        let Some((name, fields)) = rest.split_once(':') else { continue };
        let field = |key: &str| {
            fields.split(',').find_map(|f| f.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        out.push((name.to_owned(), field("calls="), field("usec=")));
    }
    Ok(out)
}

async fn redis_bench(redis_url: &str, concurrency: usize, seconds: u64) -> anyhow::Result<()> {
    let settings = RedisSettings { url: redis_url.to_owned(), cluster: false, timeout: Duration::from_secs(5) };
    let conn = RedisConn::connect(&settings).await?;
    let prefix = format!("{}:", schema_name("redis"));
    let limiter = Arc::new(RedisLimiter::new(conn.clone(), KeySpace::new(prefix), Duration::from_secs(5)));
    limiter.preload().await?;
    let mut admin = conn.clone();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    // The benchmark plan of bench/run.sh: eight limits on one key.
    let limits = [
        (Metric::Requests, Window::Minute),
        (Metric::Requests, Window::Hour),
        (Metric::Requests, Window::Day),
        (Metric::Requests, Window::Month),
        (Metric::TotalTokens, Window::Minute),
        (Metric::TotalTokens, Window::Day),
        (Metric::CostMicros, Window::Day),
        (Metric::CostMicros, Window::Month),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (limiter, stop) = (limiter.clone(), stop.clone());
        let items: Vec<LimitItem> = limits
            .iter()
            .map(|(m, w)| LimitItem::new(format!("key:{}", c % 100).as_str(), LimitSpec::new(*m, *w, u64::MAX / 4)))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let partition = format!("project-{}", c % 5);
            while !stop.load(Ordering::Relaxed) {
                let id = format!("r{c}-{n}");
                let request = ReserveRequest {
                    partition: &partition,
                    request_id: &id,
                    items: &items,
                    amounts: Amounts { requests: 1, input_tokens: 100, output_tokens: 50, cost_micros: 90 },
                    now_ms: tollgate_store::clock::now_ms(),
                    hold: false,
                    hold_ms: tollgate_store::DEFAULT_RESERVATION_TTL_MS,
                };
                if limiter.reserve(request).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut decisions = 0;
    for t in tasks {
        decisions += t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = commandstats(&conn).await?;
    println!(
        "decisions (8 limits each, {concurrency} callers): {decisions} in {elapsed:.1} s = {:.0}/s",
        decisions as f64 / elapsed
    );
    println!("| command | calls | calls/s | µs per call (Redis CPU) |");
    println!("|---|---:|---:|---:|");
    for (name, calls, usec) in stats.iter().filter(|(n, _, _)| n != "config") {
        println!(
            "| {name} | {calls} | {:.0} | {:.2} |",
            *calls as f64 / elapsed,
            *usec as f64 / (*calls).max(1) as f64
        );
    }
    limiter.delete_all_keys().await.ok();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Ledger { database_url, instances, seconds } => ledger(&database_url, instances, seconds).await,
        Command::Redis { redis_url, concurrency, seconds } => redis_bench(&redis_url, concurrency, seconds).await,
    }
}
