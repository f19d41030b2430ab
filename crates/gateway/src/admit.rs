//! Phase 2, admit: which limits count the request, what to reserve for it, and one
//! limiter decision over all of them (check every limit; only if all fit, charge all).

use tollgate_core::{Amounts, Authed, Decision, LimitItem, Metric, Traffic, limit_items};
use tollgate_pricing::{ModelPrice, PriceTable};
use tollgate_providers::RequestView;
use tollgate_store::ReserveRequest;
use tollgate_tokenize::count_prompt;

use crate::Gateway;
use crate::error::GatewayError;

/// A request that passed the limiter (or was refused by it).
pub struct Admission {
    pub request_id: String,
    pub items: Vec<LimitItem>,
    pub estimate: Amounts,
    pub decision: Decision,
}

impl Gateway {
    /// Every limit that counts `traffic` for this key, bound to its subject.
    pub fn limits_for(&self, authed: &Authed, traffic: &Traffic) -> Vec<LimitItem> {
        let anonymous_plan = self.plans.get(&self.settings.anonymous_plan);
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
            })
            .await?;
        Ok(Admission { request_id, items, estimate: amounts, decision })
    }

    /// What to reserve before forwarding. Tokens are counted only when a token or
    /// cost limit applies to the request: a requests-only plan pays nothing for it.
    pub fn estimate(&self, view: &RequestView<'_>, body: &[u8], items: &[LimitItem]) -> Amounts {
        let needs_tokens = items.iter().any(|i| i.spec.metric != Metric::Requests);
        if !needs_tokens {
            return Amounts::ONE_REQUEST;
        }
        let input = prompt_tokens(view, body);
        let output = if view.endpoint.generates() {
            view.max_output_tokens.unwrap_or(self.settings.default_max_output_tokens)
        } else {
            0
        };
        let needs_cost = items.iter().any(|i| i.spec.metric == Metric::CostMicros);
        let cost_micros =
            if needs_cost { price(&self.settings.prices, &view.model).cost(input, 0, output).micros } else { 0 };
        Amounts { requests: 1, input_tokens: input, output_tokens: output, cost_micros }
    }
}

/// Prompt tokens where the view found the prompt; a prompt of a shape the counter
/// does not know still costs something: about four bytes a token.
pub fn prompt_tokens(view: &RequestView<'_>, body: &[u8]) -> u64 {
    view.prompt.and_then(|p| count_prompt(&view.model, p)).unwrap_or(body.len() as u64 / 4)
}

/// The price of a model, warning once per unknown model that the default applies.
pub fn price(table: &PriceTable, model: &str) -> ModelPrice {
    let lookup = table.price(model);
    if !lookup.known {
        warn_unknown_model(model);
    }
    lookup.price
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
