//! Turning a limiter [`Decision`] into what the client sees: the 429 error of the
//! refusing limit, and the `X-RateLimit-*` / `X-Quota-*` headers on every answer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tollgate_core::{Decision, LimitStatus};

use crate::error::{ApiError, LimitRefusal};

static RL_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static RL_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RL_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static Q_LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
static Q_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
static Q_RESET: HeaderName = HeaderName::from_static("x-quota-reset");

/// The error for a refused decision, or `None` if it was admitted.
pub fn refusal(decision: &Decision, plan: &str, now_ms: i64) -> Option<ApiError> {
    let (status, refusal) = decision.refused_status()?;
    let r = Box::new(LimitRefusal {
        status: status.clone(),
        plan: plan.to_owned(),
        now_ms,
        retry_at_ms: refusal.retry_at_ms,
    });
    Some(if status.spec.window.is_rate() && refusal.retry_at_ms.is_some() {
        ApiError::RateLimited(r)
    } else {
        ApiError::QuotaExceeded(r)
    })
}

fn put(headers: &mut HeaderMap, name: &HeaderName, value: u64) {
    headers.insert(name.clone(), HeaderValue::from(value));
}

fn put_status(headers: &mut HeaderMap, names: [&HeaderName; 3], s: &LimitStatus) {
    put(headers, names[0], s.spec.limit);
    put(headers, names[1], s.remaining);
    put(headers, names[2], s.reset_at_ms.div_euclid(1000).max(0) as u64);
}

/// Adds the rate-limit and quota headers of the tightest limit of each kind.
pub fn apply_headers(headers: &mut HeaderMap, decision: &Decision) {
    if let Some(s) = decision.tightest_rate() {
        put_status(headers, [&RL_LIMIT, &RL_REMAINING, &RL_RESET], s);
    }
    if let Some(s) = decision.tightest_quota() {
        put_status(headers, [&Q_LIMIT, &Q_REMAINING, &Q_RESET], s);
    }
}
