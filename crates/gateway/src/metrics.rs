//! What `/metrics` reports, counted as the pipeline runs: plain atomics indexed by
//! small enums and a model index fixed at start, so counting a request is a handful
//! of relaxed atomic adds, with no lock, no allocation and no label formatting. The
//! labels are turned into text only when the endpoint is scraped ([`Metrics::render`],
//! the Prometheus text format).
//!
//! **Low cardinality by design.** No label carries a key id, a user, a project, an IP
//! or a request id: every distinct value of a label is a series Prometheus keeps in
//! memory forever, and a key or user id would make one per customer (an unbounded
//! number, growing with traffic, and a way for a client to inflate the operator's
//! monitoring). Per-key and per-user usage is what the ledger and the usage API
//! answer exactly. Labels here take values from fixed sets: the route, the status
//! class, the configured provider, the models the price table knows (any other model
//! is `other`, so a client cannot make new series by inventing model names), the
//! limit's metric and window, the outcome.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_core::{Decision, Metric, UsageRecord, Window};
use tollgate_pricing::PriceTable;
use tollgate_store::histogram::{BOUNDS_TOKENS, Histogram, HistogramSnapshot};

use crate::error::UpstreamFailure;

/// The routes requests are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Verify,
    UsageEvents,
    Messages,
    Responses,
    CountTokens,
}

impl Route {
    pub const ALL: [Route; 9] = [
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::Models,
        Route::Verify,
        Route::UsageEvents,
        Route::Messages,
        Route::Responses,
        Route::CountTokens,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Models => "/v1/models",
            Route::Verify => "/api/v1/verify",
            Route::UsageEvents => "/api/v1/usage/events",
            Route::Messages => "/v1/messages",
            Route::Responses => "/v1/responses",
            Route::CountTokens => "/v1/messages/count_tokens",
        }
    }

    pub fn from_endpoint(endpoint: tollgate_providers::Endpoint) -> Self {
        match endpoint {
            tollgate_providers::Endpoint::ChatCompletions => Route::ChatCompletions,
            tollgate_providers::Endpoint::Completions => Route::Completions,
            tollgate_providers::Endpoint::Embeddings => Route::Embeddings,
            tollgate_providers::Endpoint::Messages => Route::Messages,
            tollgate_providers::Endpoint::Responses => Route::Responses,
        }
    }

    /// The OpenTelemetry GenAI operation name (`gen_ai.operation.name`).
    fn operation(self) -> usize {
        match self {
            Route::Completions => 1,
            Route::Embeddings => 2,
            _ => 0,
        }
    }
}

const OPERATIONS: [&str; 3] = ["chat", "text_completion", "embeddings"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const METRICS: [Metric; 5] =
    [Metric::Requests, Metric::InputTokens, Metric::OutputTokens, Metric::TotalTokens, Metric::CostMicros];
const WINDOWS: [Window; 4] = [Window::Minute, Window::Hour, Window::Day, Window::Month];
const TOKEN_TYPES: [&str; 2] = ["input", "output"];

/// Why an upstream call failed, as `tollgate_upstream_errors_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Timeout,
    Unreachable,
    InvalidResponse,
    /// The provider answered 429.
    Throttled,
    /// The provider answered 5xx.
    ServerError,
    /// The provider answered 401 and tollgate has no provider key.
    NoProviderKey,
}

const UPSTREAM_ERRORS: [&str; 6] =
    ["timeout", "unreachable", "invalid_response", "status_429", "status_5xx", "no_provider_key"];

impl From<&UpstreamFailure> for UpstreamErrorKind {
    fn from(f: &UpstreamFailure) -> Self {
        match f {
            UpstreamFailure::Timeout(_) => UpstreamErrorKind::Timeout,
            UpstreamFailure::Unavailable | UpstreamFailure::NoTarget => UpstreamErrorKind::Unreachable,
            UpstreamFailure::Invalid => UpstreamErrorKind::InvalidResponse,
            UpstreamFailure::NoProviderKey => UpstreamErrorKind::NoProviderKey,
        }
    }
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn add(slot: &AtomicU64, n: u64) {
    slot.fetch_add(n, Ordering::Relaxed);
}

/// The gateway's counters and histograms; see the module doc.
#[derive(Debug)]
pub struct Metrics {
    provider: String,
    /// Model labels by index; the last is `other`.
    models: Vec<String>,
    model_index: HashMap<String, u16>,
    /// route × status class × model.
    requests: Box<[AtomicU64]>,
    overhead: Histogram,
    time_to_first_byte: Histogram,
    duration: Histogram,
    /// `gen_ai_server_request_duration`, by operation.
    upstream_duration: [Histogram; 3],
    /// `gen_ai_client_token_usage`, by operation × token type.
    token_usage: [Histogram; 6],
    /// model × token type.
    tokens: Box<[AtomicU64]>,
    /// by model.
    cost_micros: Box<[AtomicU64]>,
    /// admitted, refused.
    decisions: [AtomicU64; 2],
    /// metric × window of the limit that refused.
    refusals: [AtomicU64; 20],
    upstream_errors: [AtomicU64; 6],
    /// Response-cache outcomes: hit, miss, bypass; then the potential cost of hits.
    cache: [AtomicU64; 4],
    /// Semantic lookups: hit, miss (nothing close enough), failed (no embedding).
    semantic: [AtomicU64; 3],
    /// Upstream calls that failed in a row (unreachable, timed out, invalid, 5xx),
    /// zeroed by the next answer (`/health`).
    upstream_failing: AtomicU64,
}

/// The upstream as `/health` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamHealth {
    /// `"ok"`, or `"failing"` after [`UPSTREAM_FAILING_AFTER`] failures in a row.
    pub status: &'static str,
    pub consecutive_failures: u64,
}

/// Failed upstream calls in a row after which `/health` says the upstream is failing.
pub const UPSTREAM_FAILING_AFTER: u64 = 3;

impl Metrics {
    /// Counters for a gateway forwarding to `provider`, labelling the models `prices`
    /// knows (every other model is `other`).
    pub fn new(provider: &str, prices: &PriceTable) -> Self {
        let mut models: Vec<String> = prices.model_ids().map(str::to_owned).collect();
        models.sort();
        models.dedup();
        // u16 indexes: a price table of more than 65,534 models lumps the rest into `other`.
        models.truncate(usize::from(u16::MAX) - 1);
        let model_index = models.iter().enumerate().map(|(i, m)| (m.clone(), i as u16)).collect();
        models.push("other".to_owned());
        let n_models = models.len();
        Self {
            provider: provider.to_owned(),
            requests: counters(Route::ALL.len() * STATUS_CLASSES.len() * n_models),
            tokens: counters(n_models * 2),
            cost_micros: counters(n_models),
            models,
            model_index,
            overhead: Histogram::default(),
            time_to_first_byte: Histogram::default(),
            duration: Histogram::default(),
            upstream_duration: Default::default(),
            token_usage: std::array::from_fn(|_| Histogram::with_bounds(&BOUNDS_TOKENS)),
            decisions: Default::default(),
            refusals: Default::default(),
            upstream_errors: Default::default(),
            cache: Default::default(),
            semantic: Default::default(),
            upstream_failing: AtomicU64::new(0),
        }
    }

    /// The label index of `model` (`other` for a model the price table does not know).
    /// A lookup by the borrowed name: nothing is allocated.
    pub fn model(&self, model: &str) -> u16 {
        match self.model_index.get(model) {
            Some(&i) => i,
            None => (self.models.len() - 1) as u16,
        }
    }

    /// The label index of no model at all (a request refused before its body was read).
    pub fn no_model(&self) -> u16 {
        (self.models.len() - 1) as u16
    }

    /// One answered request: its route, status and model, the time to its first byte
    /// and the part of that spent in tollgate itself (`upstream` is the time the
    /// upstream took before tollgate could answer, zero when it was not called).
    pub fn request(&self, route: Route, status: u16, model: u16, first_byte: Duration, upstream: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let route = Route::ALL.iter().position(|r| *r == route).unwrap_or(0);
        let index = (route * STATUS_CLASSES.len() + class) * self.models.len() + usize::from(model);
        if let Some(slot) = self.requests.get(index) {
            add(slot, 1);
        }
        self.time_to_first_byte.observe(first_byte);
        self.overhead.observe(first_byte.saturating_sub(upstream));
    }

    /// A limit decision: admitted, or refused by which limit.
    pub fn decision(&self, decision: &Decision) {
        match decision.refused_status() {
            None => add(&self.decisions[0], 1),
            Some((status, _)) => {
                add(&self.decisions[1], 1);
                let m = METRICS.iter().position(|m| *m == status.spec.metric).unwrap_or(0);
                let w = WINDOWS.iter().position(|w| *w == status.spec.window).unwrap_or(0);
                add(&self.refusals[m * WINDOWS.len() + w], 1);
            }
        }
    }

    /// A request of a project whose cache is on: what the cache phase did.
    pub fn cache(&self, status: crate::cache::CacheStatus) {
        let slot = match status {
            crate::cache::CacheStatus::Hit { .. } => 0,
            crate::cache::CacheStatus::Miss => 1,
            crate::cache::CacheStatus::Bypass => 2,
        };
        add(&self.cache[slot], 1);
    }

    /// A semantic lookup ended: `Some(hit)` when an embedding was had, `None` when not.
    pub fn semantic(&self, outcome: Option<bool>) {
        let slot = match outcome {
            Some(true) => 0,
            Some(false) => 1,
            None => 2,
        };
        add(&self.semantic[slot], 1);
    }

    /// A cache hit saved `micros` (its potential cost).
    pub fn cache_saved(&self, micros: u64) {
        add(&self.cache[3], micros);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        add(&self.upstream_errors[kind as usize], 1);
        if kind != UpstreamErrorKind::Throttled && kind != UpstreamErrorKind::NoProviderKey {
            add(&self.upstream_failing, 1);
        }
    }

    /// The upstream answered (any status but a 5xx): the run of failures is over. A
    /// load first, so the common case writes nothing.
    pub fn upstream_answered(&self) {
        if self.upstream_failing.load(Ordering::Relaxed) != 0 {
            self.upstream_failing.store(0, Ordering::Relaxed);
        }
    }

    pub fn upstream_health(&self) -> UpstreamHealth {
        let consecutive_failures = self.upstream_failing.load(Ordering::Relaxed);
        let status = if consecutive_failures >= UPSTREAM_FAILING_AFTER { "failing" } else { "ok" };
        UpstreamHealth { status, consecutive_failures }
    }

    /// A request that reached the upstream, as recorded: its tokens and cost by model,
    /// its total duration, and how long the upstream took to its last byte.
    pub fn recorded(&self, record: &UsageRecord, route: Route, total: Duration, upstream: Option<Duration>) {
        let model = usize::from(self.model(record.model.as_deref().unwrap_or_default()));
        let op = route.operation();
        if record.counted {
            add(&self.tokens[model * 2], record.prompt_tokens);
            add(&self.tokens[model * 2 + 1], record.completion_tokens);
            add(&self.cost_micros[model], record.cost_micros);
            self.token_usage[op * 2].observe_value(record.prompt_tokens);
            if route != Route::Embeddings {
                self.token_usage[op * 2 + 1].observe_value(record.completion_tokens);
            }
        }
        self.duration.observe(total);
        if let Some(upstream) = upstream {
            self.upstream_duration[op].observe(upstream);
        }
    }

    /// The Prometheus text format of everything above, with `extra` (gauges the
    /// server reads at scrape time) appended.
    pub fn render(&self, out: &mut String) {
        let provider = escape(&self.provider);
        family(
            out,
            "tollgate_http_requests_total",
            "counter",
            "Requests answered, by route, status class, model and provider.",
        );
        for (r, route) in Route::ALL.iter().enumerate() {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                for (m, model) in self.models.iter().enumerate() {
                    let n =
                        self.requests[(r * STATUS_CLASSES.len() + c) * self.models.len() + m].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "tollgate_http_requests_total{{route=\"{}\",status_class=\"{class}\",model=\"{}\",provider=\"{provider}\"}} {n}",
                            route.label(),
                            escape(model)
                        );
                    }
                }
            }
        }
        histogram(
            out,
            "tollgate_gateway_overhead_seconds",
            "Time spent in tollgate itself before an answer's first byte, apart from waiting on the upstream.",
            &[("", self.overhead.snapshot())],
            true,
        );
        histogram(
            out,
            "tollgate_time_to_first_byte_seconds",
            "Time from a request's arrival to the first byte of its answer.",
            &[("", self.time_to_first_byte.snapshot())],
            true,
        );
        histogram(
            out,
            "tollgate_request_duration_seconds",
            "Time from a forwarded request's arrival to its last byte (streams included).",
            &[("", self.duration.snapshot())],
            true,
        );
        let by_op: Vec<(String, HistogramSnapshot)> = OPERATIONS
            .iter()
            .zip(&self.upstream_duration)
            .map(|(op, h)| (format!("gen_ai_operation_name=\"{op}\",gen_ai_system=\"{provider}\""), h.snapshot()))
            .collect();
        let by_op: Vec<(&str, HistogramSnapshot)> = by_op.iter().map(|(l, s)| (l.as_str(), s.clone())).collect();
        histogram(
            out,
            "gen_ai_server_request_duration_seconds",
            "OpenTelemetry gen_ai.server.request.duration: the upstream's time to its last byte, as tollgate saw it.",
            &by_op,
            true,
        );
        let mut usage = Vec::new();
        for (o, op) in OPERATIONS.iter().enumerate() {
            for (t, kind) in TOKEN_TYPES.iter().enumerate() {
                usage.push((
                    format!("gen_ai_operation_name=\"{op}\",gen_ai_system=\"{provider}\",gen_ai_token_type=\"{kind}\""),
                    self.token_usage[o * 2 + t].snapshot(),
                ));
            }
        }
        let usage: Vec<(&str, HistogramSnapshot)> = usage.iter().map(|(l, s)| (l.as_str(), s.clone())).collect();
        histogram(
            out,
            "gen_ai_client_token_usage",
            "OpenTelemetry gen_ai.client.token.usage: tokens per counted request, by token type.",
            &usage,
            false,
        );
        family(out, "tollgate_tokens_total", "counter", "Tokens counted to clients, by model and type.");
        for (m, model) in self.models.iter().enumerate() {
            for (t, kind) in TOKEN_TYPES.iter().enumerate() {
                let n = self.tokens[m * 2 + t].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "tollgate_tokens_total{{model=\"{}\",type=\"{kind}\"}} {n}", escape(model));
                }
            }
        }
        family(
            out,
            "tollgate_cost_microdollars_total",
            "counter",
            "Cost counted to clients in micro-dollars, by model.",
        );
        for (m, model) in self.models.iter().enumerate() {
            let n = self.cost_micros[m].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "tollgate_cost_microdollars_total{{model=\"{}\"}} {n}", escape(model));
            }
        }
        family(out, "tollgate_limit_decisions_total", "counter", "Limit decisions (proxy and verify), by outcome.");
        for (i, outcome) in ["admitted", "refused"].iter().enumerate() {
            let n = self.decisions[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_limit_decisions_total{{outcome=\"{outcome}\"}} {n}");
        }
        family(
            out,
            "tollgate_limit_refusals_total",
            "counter",
            "Refusals by the metric and window of the limit that refused.",
        );
        for (m, metric) in METRICS.iter().enumerate() {
            for (w, window) in WINDOWS.iter().enumerate() {
                let n = self.refusals[m * WINDOWS.len() + w].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_limit_refusals_total{{limit_metric=\"{}\",limit_window=\"{}\"}} {n}",
                        metric.as_str(),
                        window.as_str()
                    );
                }
            }
        }
        family(
            out,
            "tollgate_cache_requests_total",
            "counter",
            "Requests of projects whose response cache is on, by outcome.",
        );
        for (i, outcome) in ["hit", "miss", "bypass"].iter().enumerate() {
            let n = self.cache[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_cache_requests_total{{outcome=\"{outcome}\"}} {n}");
        }
        family(
            out,
            "tollgate_cache_semantic_lookups_total",
            "counter",
            "Semantic cache lookups, by outcome (failed: no embedding could be had).",
        );
        for (i, outcome) in ["hit", "miss", "failed"].iter().enumerate() {
            let n = self.semantic[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_cache_semantic_lookups_total{{outcome=\"{outcome}\"}} {n}");
        }
        family(
            out,
            "tollgate_cache_saved_microdollars_total",
            "counter",
            "What the answers served from the response cache would have cost, in micro-dollars.",
        );
        let _ = writeln!(out, "tollgate_cache_saved_microdollars_total {}", self.cache[3].load(Ordering::Relaxed));
        family(out, "tollgate_upstream_errors_total", "counter", "Upstream calls that failed, by kind.");
        for (i, kind) in UPSTREAM_ERRORS.iter().enumerate() {
            let n = self.upstream_errors[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_upstream_errors_total{{kind=\"{kind}\"}} {n}");
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a histogram family: one series per `(labels, snapshot)`; bounds are
/// microseconds shown as seconds when `seconds`, else plain units.
pub fn histogram(out: &mut String, name: &str, help: &str, series: &[(&str, HistogramSnapshot)], seconds: bool) {
    family(out, name, "histogram", help);
    let value = |v: u64| if seconds { format!("{}", v as f64 / 1e6) } else { v.to_string() };
    for (labels, s) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in &s.cumulative {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{}\"}} {n}", value(*bound));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", value(s.sum_micros));
        let _ = writeln!(out, "{name}_count{braces} {}", s.count);
    }
}

/// A label value as the text format wants it (backslash, quote and newline escaped).
pub fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_are_one_label_and_requests_count_by_route_and_class() {
        let m = Metrics::new("openai", &PriceTable::builtin());
        let known = m.model("gpt-4o-mini");
        assert_ne!(known, m.no_model());
        assert_eq!(m.model("a-model-nobody-prices"), m.no_model(), "invented names make no new series");
        m.request(Route::ChatCompletions, 200, known, Duration::from_millis(3), Duration::from_millis(2));
        m.request(Route::ChatCompletions, 429, m.no_model(), Duration::from_micros(40), Duration::ZERO);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "tollgate_http_requests_total{route=\"/v1/chat/completions\",status_class=\"2xx\",model=\"gpt-4o-mini\",provider=\"openai\"} 1"
        ));
        assert!(out.contains("status_class=\"4xx\",model=\"other\""));
        assert!(out.contains("tollgate_gateway_overhead_seconds_count 2"));
        assert!(out.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.00005\"} 1"), "{out}");
    }
}
