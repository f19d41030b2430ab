//! `tollgate-loadgen`: a small closed-loop HTTP/1.1 load generator for `bench/run.sh`.
//!
//! `wrk` measures the whole exchange, which is all a non-streaming call needs. A streamed
//! answer has two latencies that matter, the time to its first byte (what a chat user
//! waits for) and the time to its end, and this tool measures both on every request.
//!
//! Each of `--concurrency` connections is a keep-alive HTTP/1.1 connection (TCP_NODELAY
//! set) that sends the next request as soon as the previous answer has been read to its
//! end. Requests still in flight when `--duration` is over are abandoned and not counted,
//! like wrk does. The result is one JSON line on stdout:
//!
//! ```text
//! {"requests":N,"ok":N,"non2xx":N,"errors":N,"seconds":S,"rps":R,
//!  "ttfb_p50":..,"ttfb_p90":..,"ttfb_p99":..,"ttfb_p999":..,"ttfb_max":..,"total_p50":..,...}
//! ```
//!
//! (flat, so a shell script can pick fields with `sed`). Latencies are microseconds,
//! exact percentiles of every completed request (samples are kept, not
//! bucketed: a few MB for a few seconds of load).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-loadgen",
    about = "Closed-loop HTTP/1.1 load: requests/s, time to first byte, total latency."
)]
struct Args {
    /// Target URL (plain http), e.g. http://127.0.0.1:8080/v1/chat/completions.
    url: String,
    /// Connections, each with one request in flight at a time.
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of load (fractions allowed).
    #[arg(short = 'd', long, default_value_t = 5.0)]
    duration: f64,
    /// Runtime worker threads (default: 1 for one connection, else the number of CPUs).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// HTTP method (default: POST with a body, GET without).
    #[arg(short = 'm', long)]
    method: Option<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body read from a file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Seconds one request may take before it counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// What one connection measured.
#[derive(Default)]
struct Stats {
    ttfb_us: Vec<u32>,
    total_us: Vec<u32>,
    ok: u64,
    non2xx: u64,
    errors: u64,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.ttfb_us.extend(other.ttfb_us);
        self.total_us.extend(other.total_us);
        self.ok += other.ok;
        self.non2xx += other.non2xx;
        self.errors += other.errors;
    }
}

/// Everything a connection needs to build its requests.
struct Target {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
}

impl Target {
    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder().method(self.method.clone()).uri(self.path.as_str());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        Ok(request.body(Full::new(self.body.clone()))?)
    }
}

/// Splits `http://host:port/path?query` into a socket address, a Host header value and
/// the path.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .with_context(|| format!("resolving {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} resolves to nothing"))?;
    Ok((addr, authority.to_owned(), path.to_owned()))
}

fn parse_header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text.split_once(':').with_context(|| format!("header '{text}' is not 'Name: value'"))?;
    Ok((HeaderName::from_bytes(name.trim().as_bytes())?, HeaderValue::from_str(value.trim())?))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the server closes it.
        let _ = connection.await;
    });
    Ok(sender)
}

enum Outcome {
    /// Status, time to the first body byte (or to the head for an empty body), total.
    Done(u16, Duration, Duration),
    Failed,
}

/// Sends one request and reads its answer to the end.
async fn exchange(sender: &mut SendRequest<Full<Bytes>>, target: &Target) -> Outcome {
    let Ok(request) = target.request() else {
        return Outcome::Failed;
    };
    let started = Instant::now();
    if sender.ready().await.is_err() {
        return Outcome::Failed;
    }
    let Ok(response) = sender.send_request(request).await else {
        return Outcome::Failed;
    };
    let status = response.status().as_u16();
    let head = started.elapsed();
    let mut first_byte = None;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    first_byte = Some(started.elapsed());
                }
            }
            Err(_) => return Outcome::Failed,
        }
    }
    Outcome::Done(status, first_byte.unwrap_or(head), started.elapsed())
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One connection's closed loop until `deadline`.
async fn worker(target: Arc<Target>, deadline: tokio::time::Instant) -> Stats {
    let mut stats = Stats::default();
    let mut sender = None;
    while tokio::time::Instant::now() < deadline {
        let current = match sender.as_mut() {
            Some(s) => s,
            None => match tokio::time::timeout_at(deadline, connect(target.addr)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(_)) => {
                    stats.errors += 1;
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => break,
            },
        };
        let bounded = tokio::time::timeout(target.timeout, exchange(current, &target));
        match tokio::time::timeout_at(deadline, bounded).await {
            // The run ended with this request in flight: not counted.
            Err(_) => break,
            Ok(Err(_)) | Ok(Ok(Outcome::Failed)) => {
                stats.errors += 1;
                sender = None;
            }
            Ok(Ok(Outcome::Done(status, ttfb, total))) => {
                if (200..300).contains(&status) {
                    stats.ok += 1;
                } else {
                    stats.non2xx += 1;
                }
                stats.ttfb_us.push(micros(ttfb));
                stats.total_us.push(micros(total));
            }
        }
    }
    stats
}

/// The `p`th percentile (0-100) of sorted samples, nearest rank.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9 % of 1,000 at rank 999 despite 0.999 * 1000 > 999 in floats.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, samples: &mut [u32]) -> String {
    samples.sort_unstable();
    format!(
        r#""{name}_p50":{},"{name}_p90":{},"{name}_p99":{},"{name}_p999":{},"{name}_max":{}"#,
        percentile(samples, 50.0),
        percentile(samples, 90.0),
        percentile(samples, 99.0),
        percentile(samples, 99.9),
        samples.last().copied().unwrap_or(0)
    )
}

async fn run(args: Args) -> anyhow::Result<String> {
    let (addr, authority, path) = parse_url(&args.url)?;
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => Bytes::from(b.clone()),
        (None, Some(path)) => Bytes::from(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        (None, None) => Bytes::new(),
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())?,
        None if body.is_empty() => Method::GET,
        None => Method::POST,
    };
    let mut headers = vec![(HOST, HeaderValue::from_str(&authority)?)];
    for h in &args.headers {
        headers.push(parse_header(h)?);
    }
    if !body.is_empty() && !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if args.concurrency == 0 || !positive(args.duration) || !positive(args.timeout) {
        bail!("concurrency, duration and timeout must be positive");
    }
    let target = Arc::new(Target { addr, method, path, headers, body, timeout: Duration::from_secs_f64(args.timeout) });
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let workers: Vec<_> = (0..args.concurrency).map(|_| tokio::spawn(worker(target.clone(), deadline))).collect();
    let mut stats = Stats::default();
    for w in workers {
        stats.merge(w.await?);
    }
    let seconds = args.duration.min(started.elapsed().as_secs_f64());
    let requests = stats.ok + stats.non2xx;
    Ok(format!(
        r#"{{"requests":{requests},"ok":{},"non2xx":{},"errors":{},"seconds":{seconds:.3},"rps":{:.1},{},{}}}"#,
        stats.ok,
        stats.non2xx,
        stats.errors,
        requests as f64 / seconds,
        summary("ttfb", &mut stats.ttfb_us),
        summary("total", &mut stats.total_us),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        if args.concurrency <= 1 { 1 } else { std::thread::available_parallelism().map_or(2, |n| n.get()) }
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    let line = runtime.block_on(run(args))?;
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 50.0), 500);
        assert_eq!(percentile(&samples, 99.0), 990);
        assert_eq!(percentile(&samples, 99.9), 999);
        assert_eq!(percentile(&samples, 100.0), 1000);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.9), 7);
    }

    #[test]
    fn urls_split_into_address_host_and_path() {
        let (addr, host, path) = parse_url("http://127.0.0.1:8080/v1/chat/completions?x=1").unwrap();
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(host, "127.0.0.1:8080");
        assert_eq!(path, "/v1/chat/completions?x=1");
        assert_eq!(parse_url("http://127.0.0.1:9").unwrap().2, "/");
        assert!(parse_url("https://127.0.0.1:8080/").is_err());
    }

    #[test]
    fn headers_parse() {
        let (n, v) = parse_header("Authorization:  Bearer tg_x ").unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer tg_x");
        assert!(parse_header("no colon").is_err());
    }
}
