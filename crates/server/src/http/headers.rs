//! Turning a limiter [`Decision`] into what the client sees: the 429 error of the
//! refusing limit, and on every answer the headers clients already read:
//! `X-RateLimit-*` / `X-Quota-*` (the seeds' gateways), OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, and the IETF
//! `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;

use tollgate_core::{Decision, LimitStatus, Metric};

use crate::http::error::{ApiError, LimitRefusal};

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
    Some(match refusal.retry_at_ms {
        None => ApiError::RequestTooLarge(r),
        Some(_) if status.spec.window.is_rate() => ApiError::RateLimited(r),
        Some(_) => ApiError::QuotaExceeded(r),
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

static OA_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
static OA_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
static OA_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
static OA_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static OA_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
static OA_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
static IETF_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static IETF_RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Adds every rate-limit header family for `decision`, measured from `now_ms`.
pub fn apply_headers(headers: &mut HeaderMap, decision: &Decision, now_ms: i64) {
    if decision.statuses.is_empty() {
        return;
    }
    if let Some(s) = decision.tightest_rate() {
        put_status(headers, [&RL_LIMIT, &RL_REMAINING, &RL_RESET], s);
    }
    if let Some(s) = decision.tightest_quota() {
        put_status(headers, [&Q_LIMIT, &Q_REMAINING, &Q_RESET], s);
    }
    let tightest = |metrics: &[Metric]| {
        decision.statuses.iter().filter(|s| metrics.contains(&s.spec.metric)).min_by_key(|s| s.remaining)
    };
    if let Some(s) = tightest(&[Metric::Requests]) {
        put(headers, &OA_LIMIT_REQUESTS, s.spec.limit);
        put(headers, &OA_REMAINING_REQUESTS, s.remaining);
        put_text(headers, &OA_RESET_REQUESTS, &openai_duration(s.reset_at_ms - now_ms));
    }
    if let Some(s) = tightest(&[Metric::TotalTokens, Metric::InputTokens, Metric::OutputTokens]) {
        put(headers, &OA_LIMIT_TOKENS, s.spec.limit);
        put(headers, &OA_REMAINING_TOKENS, s.remaining);
        put_text(headers, &OA_RESET_TOKENS, &openai_duration(s.reset_at_ms - now_ms));
    }
    let (mut policy, mut current) = (String::with_capacity(512), String::with_capacity(512));
    for s in &decision.statuses {
        if !policy.is_empty() {
            policy.push_str(", ");
            current.push_str(", ");
        }
        let window_secs =
            s.spec.window.sliding_ms().map_or_else(|| (s.reset_at_ms - now_ms).max(0).div_euclid(1000), |ms| ms / 1000);
        let reset = (s.reset_at_ms - now_ms).max(0).div_euclid(1000);
        for (out, a, b, x, y) in
            [(&mut policy, "q", "w", s.spec.limit, window_secs), (&mut current, "r", "t", s.remaining, reset)]
        {
            out.push('"');
            s.spec.write_name(out);
            let _ = write!(out, "\";{a}={x};{b}={y}");
        }
    }
    put_text(headers, &IETF_POLICY, &policy);
    put_text(headers, &IETF_RATELIMIT, &current);
}

fn put_text(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    }
}

/// OpenAI's reset format: `20ms`, `6s`, `1m30s`, `2h0m0s`.
pub fn openai_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations() {
        assert_eq!(openai_duration(-5), "0ms");
        assert_eq!(openai_duration(20), "20ms");
        assert_eq!(openai_duration(6_000), "6s");
        assert_eq!(openai_duration(5_001), "6s");
        assert_eq!(openai_duration(90_000), "1m30s");
        assert_eq!(openai_duration(7_200_000), "2h0m0s");
    }
}
