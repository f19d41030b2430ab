//! The answer of one limiter decision, covering every limit of a request at once.

use serde::Serialize;

use crate::limit::LimitSpec;

/// One limit's standing after a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimitStatus {
    pub spec: LimitSpec,
    /// Counted in the window, including this request when it was admitted.
    pub used: u64,
    pub remaining: u64,
    /// Unix milliseconds at which the limit is fully available again.
    pub reset_at_ms: i64,
}

impl LimitStatus {
    /// True at 90 % or more of the limit.
    pub fn near_limit(&self) -> bool {
        self.spec.limit == 0 || self.used.saturating_mul(10) >= self.spec.limit.saturating_mul(9)
    }
}

/// Which limit refused a request, and when it may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Index into [`Decision::statuses`].
    pub index: usize,
    /// `None` when the request can never fit (it asks for more than the limit).
    pub retry_at_ms: Option<i64>,
}

impl Refusal {
    /// Of two refusals, the one that binds longer (a request that can never fit, then
    /// the later retry time): waiting out the other would not help, so that is the
    /// one to report. Ties keep `self`, the earlier limit.
    pub fn binding(self, other: Refusal) -> Refusal {
        match (self.retry_at_ms, other.retry_at_ms) {
            (None, _) => self,
            (_, None) => other,
            (Some(a), Some(b)) if b > a => other,
            _ => self,
        }
    }
}

/// The outcome of checking (and, when admitted, charging) every limit of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub statuses: Vec<LimitStatus>,
    pub refused: Option<Refusal>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.refused.is_none()
    }

    pub fn refused_status(&self) -> Option<(&LimitStatus, Refusal)> {
        let r = self.refused?;
        Some((self.statuses.get(r.index)?, r))
    }

    /// The most constraining rate limit (minute/hour): the one with least remaining.
    pub fn tightest_rate(&self) -> Option<&LimitStatus> {
        self.tightest(true)
    }

    /// The most constraining quota (day/month).
    pub fn tightest_quota(&self) -> Option<&LimitStatus> {
        self.tightest(false)
    }

    fn tightest(&self, rate: bool) -> Option<&LimitStatus> {
        // Prefer the refusing limit, so headers and body agree.
        if let Some((status, _)) = self.refused_status()
            && status.spec.window.is_rate() == rate
        {
            return Some(status);
        }
        self.statuses
            .iter()
            .filter(|s| s.spec.window.is_rate() == rate)
            .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset_at_ms)))
    }
}
