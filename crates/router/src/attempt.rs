//! What ended one attempt at a target, and whether the request may move on to the
//! next target: connection errors, timeouts, 5xx, 429 and a stream that broke before
//! its first byte reached the client fall back; any other answer is the answer (a 4xx
//! is the request's fault, and another provider would refuse it too). Once a byte of a
//! stream reached the client there is no silent switch: the caller ends that stream
//! with an error event.

/// Why an attempt did not give the client an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made or broke before the head.
    Connect,
    /// No head (or no whole JSON body) within the attempt's time.
    Timeout,
    /// The target answered with this status.
    Status(u16),
    /// A stream answered 200, then broke before any byte went to the client.
    StreamBeforeFirstByte,
}

impl Failure {
    /// Whether the next target may be tried.
    pub fn falls_back(self) -> bool {
        match self {
            Failure::Connect | Failure::Timeout | Failure::StreamBeforeFirstByte => true,
            Failure::Status(s) => s == 429 || s >= 500,
        }
    }

    /// Whether it counts against the target's circuit breaker. A 429 does not: it is
    /// the target telling when to come back (`Retry-After`), which the skip honours;
    /// other 4xx are the request's fault, not the target's.
    pub fn counts_against_target(self) -> bool {
        match self {
            Failure::Connect | Failure::Timeout | Failure::StreamBeforeFirstByte => true,
            Failure::Status(s) => s >= 500,
        }
    }

    /// A short label for logs, metrics and the ledger's error column.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status(429) => "throttled",
            Failure::Status(s) if s >= 500 => "server_error",
            Failure::Status(_) => "client_error",
            Failure::StreamBeforeFirstByte => "stream_broken",
        }
    }
}

/// The longest `Retry-After` honoured: a target asking for more is skipped this long,
/// then tried again (a wrong header must not take a target out for a day).
pub const MAX_RETRY_AFTER_MS: i64 = 10 * 60 * 1000;

/// `Retry-After` as delta-seconds (the form providers send on 429) to the Unix ms
/// until which the target should be skipped; `None` for a missing or unreadable
/// value. Capped at [`MAX_RETRY_AFTER_MS`].
pub fn parse_retry_after_ms(value: Option<&str>, now_ms: i64) -> Option<i64> {
    let value = value?.trim();
    let secs: f64 = value.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let ms = ((secs * 1000.0).ceil() as i64).min(MAX_RETRY_AFTER_MS);
    Some(now_ms.saturating_add(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_timeouts_5xx_429_and_early_stream_breaks_fall_back_and_4xx_do_not() {
        for f in [Failure::Connect, Failure::Timeout, Failure::StreamBeforeFirstByte, Failure::Status(500)] {
            assert!(f.falls_back() && f.counts_against_target(), "{f:?}");
        }
        assert!(Failure::Status(503).falls_back());
        assert!(Failure::Status(429).falls_back());
        assert!(!Failure::Status(429).counts_against_target());
        for s in [400, 401, 404, 413, 422] {
            assert!(!Failure::Status(s).falls_back() && !Failure::Status(s).counts_against_target());
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_and_capped() {
        assert_eq!(parse_retry_after_ms(Some("2"), 1_000), Some(3_000));
        assert_eq!(parse_retry_after_ms(Some(" 0.5 "), 0), Some(500));
        assert_eq!(parse_retry_after_ms(Some("86400"), 0), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(parse_retry_after_ms(Some("-1"), 0), None);
        assert_eq!(parse_retry_after_ms(Some("Wed, 21 Oct 2015 07:28:00 GMT"), 0), None);
        assert_eq!(parse_retry_after_ms(None, 0), None);
    }
}
