//! The verify endpoint's pipeline, for APIs that are not LLMs: authenticate, then
//! admit `cost` requests (a final charge, or a dry run that only looks), and record
//! what was charged. Same phases as the proxy, minus the upstream.

use std::net::IpAddr;

use tollgate_core::{Amounts, Authed, Decision, Traffic};

use crate::error::GatewayError;
use crate::settle::new_record;
use crate::{Gateway, now_ms};

/// One verify call, checked by the transport.
pub struct VerifyCheck {
    pub key: String,
    pub cost: u64,
    pub dry_run: bool,
    pub endpoint: String,
    pub anonymous_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    /// Set when a project-scoped admin token vouches for the caller-given fields: a
    /// key of another project is then answered `NOT_FOUND` and charged nothing.
    pub project_scope: Option<String>,
}

/// The answer to "is this key valid and under its limits?".
pub enum Verdict {
    /// The key cannot be used: `NOT_FOUND`, `REVOKED` or `EXPIRED`.
    Refused(&'static str),
    /// The key is usable; `decision` says whether `cost` fit.
    Checked { authed: Authed, decision: Decision, now_ms: i64 },
}

impl Verdict {
    /// `VALID`, `RATE_LIMITED`, `QUOTA_EXCEEDED`, or the key's refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Refused(code) => code,
            Verdict::Checked { decision, .. } => match decision.refused_status() {
                None => "VALID",
                Some((s, r)) if s.spec.window.is_rate() && r.retry_at_ms.is_some() => "RATE_LIMITED",
                Some(_) => "QUOTA_EXCEEDED",
            },
        }
    }
}

impl Gateway {
    pub async fn verify(&self, check: VerifyCheck) -> Result<Verdict, GatewayError> {
        use crate::auth::KeyRefusal;
        let now = now_ms();
        let authed = match self.authenticate(&check.key, now).await {
            Ok(a) => a,
            Err(e) if e.is_not_found() => return Ok(Verdict::Refused("NOT_FOUND")),
            Err(KeyRefusal::Revoked) => return Ok(Verdict::Refused("REVOKED")),
            Err(KeyRefusal::Expired) => return Ok(Verdict::Refused("EXPIRED")),
            Err(other) => return Err(other.into()),
        };
        if check.project_scope.as_ref().is_some_and(|p| *p != authed.key.project_id) {
            return Ok(Verdict::Refused("NOT_FOUND"));
        }
        let traffic = Traffic {
            provider: String::new(),
            model: String::new(),
            endpoint: check.endpoint,
            client_ip: check.client_ip,
            anonymous_id: check.anonymous_id,
        };
        let items = self.limits_for(&authed, &traffic);
        let amounts = Amounts::requests(check.cost);
        if check.dry_run {
            let decision = self.limiter.peek(&authed.key.project_id, &items, amounts, now).await?;
            self.metrics.decision(&decision);
            return Ok(Verdict::Checked { authed, decision, now_ms: now });
        }
        if !self.ledger_room().await {
            return Err(GatewayError::LedgerBacklog);
        }
        let admission = self.reserve(&authed, items, amounts, now, false).await?;
        self.metrics.decision(&admission.decision);
        let mut record = new_record(&authed, &admission.request_id, now, &traffic.endpoint, &traffic);
        if let Some((_, refusal)) = admission.decision.refused_status() {
            // Counted into the key's refusal row of the minute, never a row each; as
            // on the proxy, one that can never fit is the client's error (400).
            record.status = if refusal.retry_at_ms.is_some() { 429 } else { 400 };
            record.counted = false;
            record.requests = 1;
            self.ledger.record_refusal(record);
        } else if check.cost > 0 {
            record.status = 200;
            record.counted = true;
            record.requests = check.cost;
            self.ledger.append(record);
            // `durability = "sync"`: a VALID answer is given only once the usage it
            // charged is committed (within `commit_timeout`), so a crash cannot forget it.
            if self.settings.durable_responses {
                crate::settle::commit_wait(self, admission.request_id.clone())
                    .await
                    .map_err(|why| GatewayError::Store(tollgate_store::StoreError::unavailable(why)))?;
            }
        }
        Ok(Verdict::Checked { authed, decision: admission.decision, now_ms: now })
    }
}
