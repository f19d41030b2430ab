//! Phase 2, admit: which limits count the request, what to reserve for it, and one
//! limiter decision over all of them (check every limit; only if all fit, charge all).
//!
//! The estimate costs no tokenizer: the prompt is reserved at its byte-length bound
//! (a token is at least a byte), the output at `max_tokens` (or the configured
//! default) times `n` × `best_of` × prompts. Only when that bound is refused by a
//! token or cost limit, and a smaller figure could change the answer, is the prompt
//! counted exactly (off the async workers, [`crate::count`]) and an output estimate
//! that tollgate invented clamped to what remains; then the limiter decides once more.

use bytes::Bytes;
use tollgate_core::{Amounts, Authed, Decision, LimitItem, LimitStatus, Metric, Traffic, limit_items};
use tollgate_pricing::{ModelPrice, PriceTable};
use tollgate_providers::{RequestError, RequestView};
use tollgate_store::ReserveRequest;

use crate::error::GatewayError;
use crate::{Gateway, UnknownModelPolicy, count};

/// A request that passed the limiter (or was refused by it).
pub struct Admission {
    pub request_id: String,
    pub items: Vec<LimitItem>,
    pub estimate: Amounts,
    pub decision: Decision,
}

/// What admission reserves first, and what may be refined if that is refused.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub amounts: Amounts,
    /// `input_tokens` is the prompt's byte-length bound, not a count.
    input_is_bound: bool,
    /// `output_tokens` is tollgate's default (the request set no `max_tokens`): it may
    /// be clamped to what remains, and the difference is settled afterwards.
    output_is_default: bool,
    /// The price the cost was estimated with, when a cost limit applies.
    price: Option<ModelPrice>,
}

impl Estimate {
    fn cost(&self, input: u64, output: u64) -> u64 {
        self.price.map_or(0, |p| p.cost(input, 0, output).micros)
    }
}

impl Gateway {
    /// Every limit that counts `traffic` for this key, bound to its subject.
    pub fn limits_for(&self, authed: &Authed, traffic: &Traffic) -> Vec<LimitItem> {
        // The anonymous plan counts only requests that name a visitor: the others skip
        // the plan cache's lock.
        let anonymous_plan = traffic.anonymous_id.as_ref().and_then(|_| self.plans.get(&self.settings.anonymous_plan));
        limit_items(authed, traffic, anonymous_plan.as_deref())
    }

    /// Reserves `amounts` against every limit in `items` (held for settlement when
    /// `hold`, else final).
    pub async fn reserve(
        &self,
        authed: &Authed,
        items: Vec<LimitItem>,
        amounts: Amounts,
        now_ms: i64,
        hold: bool,
    ) -> Result<Admission, GatewayError> {
        let request_id = self.ids.next();
        let decision = self
            .limiter
            .reserve(ReserveRequest {
                partition: &authed.key.project_id,
                request_id: &request_id,
                items: &items,
                amounts,
                now_ms,
                hold,
                hold_ms: self.settings.reservation_hold_ms(),
            })
            .await?;
        Ok(Admission { request_id, items, estimate: amounts, decision })
    }

    /// The most output tokens the request may generate: the per-choice limit (or the
    /// configured default) × `n` × `best_of` × prompts, and whether that is the
    /// default. An explicit limit whose product exceeds `max_reserved_output_tokens`
    /// is a 400; the default product is capped at it.
    pub fn output_tokens(&self, view: &RequestView<'_>) -> Result<(u64, bool), GatewayError> {
        if !view.endpoint.generates() {
            return Ok((0, false));
        }
        let max = self.settings.max_reserved_output_tokens;
        let multiplier = view.output_multiplier();
        match view.max_output_tokens {
            Some(per_choice) => {
                let total = per_choice.saturating_mul(multiplier);
                if total > max {
                    return Err(RequestError {
                        message: format!(
                            "max_tokens ({per_choice}) × n ({}) × best_of ({}) × prompts ({}) asks for up to {total} \
                             output tokens; a request may reserve at most {max}",
                            view.n, view.best_of, view.prompts
                        ),
                        param: Some("max_tokens".to_owned()),
                    }
                    .into());
                }
                Ok((total, false))
            }
            None => Ok((self.settings.default_max_output_tokens.saturating_mul(multiplier).min(max), true)),
        }
    }

    /// What to reserve first: no tokenizer, see the module doc. Tokens are estimated
    /// only when a token or cost limit applies: a requests-only plan pays nothing.
    pub fn estimate(&self, view: &RequestView<'_>, items: &[LimitItem]) -> Result<Estimate, GatewayError> {
        let (output, output_is_default) = self.output_tokens(view)?;
        let needs_tokens = items.iter().any(|i| i.spec.metric != Metric::Requests);
        if !needs_tokens {
            let amounts = Amounts::ONE_REQUEST;
            return Ok(Estimate { amounts, input_is_bound: false, output_is_default: false, price: None });
        }
        let input = count::prompt_bound(view);
        let needs_cost = items.iter().any(|i| i.spec.metric == Metric::CostMicros);
        let price = if needs_cost { Some(self.admission_price(&view.model)?) } else { None };
        let mut estimate = Estimate {
            amounts: Amounts { requests: 1, input_tokens: input, output_tokens: output, cost_micros: 0 },
            input_is_bound: true,
            output_is_default,
            price,
        };
        estimate.amounts.cost_micros = estimate.cost(input, output);
        Ok(estimate)
    }

    /// The price a cost limit is checked with: the model's, or for a model the table
    /// does not know, per `unknown_model`: a 400 naming it, or the default price.
    fn admission_price(&self, model: &str) -> Result<ModelPrice, GatewayError> {
        let lookup = self.settings.prices.price(model);
        if lookup.known {
            return Ok(lookup.price);
        }
        match self.settings.unknown_model {
            UnknownModelPolicy::Refuse => Err(RequestError {
                message: format!(
                    "model '{model}' has no known price, and a cost limit applies to this key; \
                     ask the operator to add a price for it"
                ),
                param: Some("model".to_owned()),
            }
            .into()),
            UnknownModelPolicy::DefaultPrice => {
                warn_unknown_model(model);
                Ok(lookup.price)
            }
        }
    }

    /// Admits a request: reserves its estimate; if that is refused by a token or cost
    /// limit where an exact count or a clamped default could fit, decides once more
    /// with those (see the module doc).
    pub async fn admit(
        &self,
        authed: &Authed,
        view: &RequestView<'_>,
        body: &Bytes,
        items: Vec<LimitItem>,
        now_ms: i64,
    ) -> Result<Admission, GatewayError> {
        let estimate = self.estimate(view, &items)?;
        let admission = self.reserve(authed, items, estimate.amounts, now_ms, true).await?;
        if admission.decision.allowed() {
            return Ok(admission);
        }
        match refine(&estimate, &admission.decision, view, body).await {
            Some(better) => self.reserve(authed, admission.items, better, now_ms, true).await,
            None => Ok(admission),
        }
    }
}

fn input_matters(metric: Metric) -> bool {
    matches!(metric, Metric::InputTokens | Metric::TotalTokens | Metric::CostMicros)
}

fn output_matters(metric: Metric) -> bool {
    matches!(metric, Metric::OutputTokens | Metric::TotalTokens | Metric::CostMicros)
}

/// What the refused limit leaves for this request: what remains now, or for a
/// request that can never fit, the whole limit.
fn room(status: &LimitStatus, retry_at_ms: Option<i64>) -> u64 {
    if retry_at_ms.is_some() { status.remaining } else { status.spec.limit }
}

/// A smaller estimate that could change a refusal, if there is one: the prompt counted
/// exactly (only when the refusing limit counts input and would fit the rest), and
/// a default output clamped to what every token and cost limit leaves.
async fn refine(estimate: &Estimate, decision: &Decision, view: &RequestView<'_>, body: &Bytes) -> Option<Amounts> {
    let (status, refusal) = decision.refused_status()?;
    let metric = status.spec.metric;
    let mut better = estimate.amounts;
    if estimate.input_is_bound && input_matters(metric) {
        let least_output = if estimate.output_is_default { 1 } else { better.output_tokens };
        let without_input = Amounts {
            input_tokens: 0,
            output_tokens: least_output,
            cost_micros: estimate.cost(0, least_output),
            ..better
        };
        // A key already over quota is refused without counting anything.
        if without_input.get(metric) < room(status, refusal.retry_at_ms) {
            let counted = count::prompt_tokens(view.endpoint, body.clone()).await;
            better.input_tokens = counted.min(better.input_tokens);
        }
    }
    if estimate.output_is_default && output_matters(metric) {
        let input = better.input_tokens;
        let mut output = better.output_tokens;
        for s in decision.statuses.iter().filter(|s| output_matters(s.spec.metric)) {
            let fits = |t: u64| {
                Amounts { input_tokens: input, output_tokens: t, cost_micros: estimate.cost(input, t), ..better }
                    .get(s.spec.metric)
                    <= s.remaining
            };
            output = largest_fitting(output, fits);
        }
        better.output_tokens = output.max(1);
    }
    better.cost_micros = estimate.cost(better.input_tokens, better.output_tokens);
    (better != estimate.amounts).then_some(better)
}

/// The largest `t` in `0..=max` with `fits(t)` (monotone: fits up to some point), or
/// 0 when none does.
fn largest_fitting(max: u64, fits: impl Fn(u64) -> bool) -> u64 {
    if fits(max) {
        return max;
    }
    let (mut lo, mut hi) = (0u64, max);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    lo
}

/// The price of a model for accounting, and whether it is an estimate (the model
/// is unknown and the table's default applies, which is logged once per model).
pub fn price(table: &PriceTable, model: &str) -> (ModelPrice, bool) {
    let lookup = table.price(model);
    if !lookup.known {
        warn_unknown_model(model);
    }
    (lookup.price, !lookup.known)
}

fn warn_unknown_model(model: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let warned = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned.len() < 10_000 && warned.insert(model.to_owned()) {
        tracing::warn!(%model, "no price known for this model: using the configured default price");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_fitting_finds_the_edge() {
        for edge in [0u64, 1, 7, 99, 100] {
            assert_eq!(largest_fitting(100, |t| t <= edge), edge);
        }
        assert_eq!(largest_fitting(100, |_| false), 0);
    }
}
