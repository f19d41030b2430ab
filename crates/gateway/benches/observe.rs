//! What `/metrics` and the access log add to one proxied request, in CPU time:
//! everything a request that reaches the upstream does for them (the model's label,
//! the limit decision, the answer's route/status/latencies, the recorded tokens and
//! cost), and the access-log line formatted and put in its thread's buffer (the
//! flusher thread writes the buffers to stderr every 200 ms: run with `2>/dev/null`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_core::{Decision, UsageRecord, UsageSource};
use tollgate_gateway::access::AccessLog;
use tollgate_gateway::metrics::{Metrics, Route};
use tollgate_pricing::PriceTable;

fn record() -> UsageRecord {
    UsageRecord {
        id: "req_0123456789abcdef000000000001".into(),
        ts_ms: 1_764_633_600_000,
        project_id: "acme".into(),
        key_id: "key_3n8XqvRkLmT2".into(),
        endpoint: "chat.completions".into(),
        provider: "openai".into(),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        counted: true,
        requests: 1,
        prompt_tokens: 12,
        completion_tokens: 30,
        cost_micros: 20,
        usage_source: UsageSource::Reported,
        ..UsageRecord::default()
    }
}

fn observe(c: &mut Criterion) {
    let metrics = Metrics::new("openai", &PriceTable::builtin());
    let decision = Decision { statuses: Vec::new(), refused: None };
    let record = record();
    c.bench_function("metrics: one proxied request (label, decision, answer, record)", |b| {
        b.iter(|| {
            let model = metrics.model(black_box("gpt-4o-mini"));
            metrics.decision(black_box(&decision));
            metrics.request(
                Route::ChatCompletions,
                200,
                model,
                Duration::from_micros(5_120),
                Duration::from_micros(5_010),
            );
            metrics.recorded(
                black_box(&record),
                Route::ChatCompletions,
                Duration::from_micros(5_120),
                Some(Duration::from_micros(5_010)),
            );
        })
    });
    for (name, format) in [("JSON", AccessLog::Json), ("text", AccessLog::Text)] {
        c.bench_function(&format!("access log: one {name} line, formatted and buffered"), |b| {
            b.iter(|| {
                tollgate_gateway::access::write(
                    format,
                    black_box(&record),
                    Duration::from_micros(5_120),
                    Some(Duration::from_micros(5_010)),
                )
            })
        });
    }
    let mut out = String::new();
    c.bench_function("metrics: render the scrape (not per request)", |b| {
        b.iter(|| {
            out.clear();
            metrics.render(&mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(benches, observe);
criterion_main!(benches);
