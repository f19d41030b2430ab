//! A model-based property test of `EmbeddedLimiter`, driven only through the
//! `Limiter` trait: random interleavings of reservations (held or final, random
//! amounts, retried request ids), settlements (random actual amounts, zero refunds,
//! repeated and unknown ids), clock steps (forwards across minute, hour, day and
//! month edges, and backwards), and pruning, against a model that keeps every charge.
//!
//! After every step it asserts:
//! - a reservation is admitted exactly when every limit fits (`used + amount <=
//!   limit` in the model) — it never admits past a limit, and never refuses what fits;
//! - a decision is all-or-nothing: a refused request charges no limit, an admitted
//!   one charges every limit (the counters, read with `peek`, equal the model's);
//! - a settlement applies `actual - reserved` once, only to the window the
//!   reservation was charged in; a repeated settle (or one of an unknown, final or
//!   expired reservation) changes nothing;
//! - the count of held reservations equals the model's.
//!
//! Case counts are fixed and small so this runs in a second or two in a debug build
//! (it is part of the test command); `PROPTEST_CASES=2000` searches longer.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, MS_PER_MINUTE, next_month_start};
use tollgate_core::counter::{BUCKETS, calendar_bounds};
use tollgate_core::{Amounts, LimitSpec, Metric, Window};
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest};
use tollgate_store_embedded::{EmbeddedLimiter, RESERVATION_TTL_MS};

const PARTITION: &str = "p";

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

#[derive(Clone, Debug)]
enum Op {
    /// A new request: 1 request and these tokens and cost.
    Reserve { hold: bool, input: u64, output: u64, cost: u64 },
    /// The same request id as an earlier reservation, sent again.
    Retry { which: Index, hold: bool, input: u64, output: u64, cost: u64 },
    /// Settle an earlier reservation (any: held, final, refused, settled already).
    Settle { which: Index, requests: u64, input: u64, output: u64, cost: u64 },
    /// Settle an id the limiter never saw.
    SettleUnknown,
    /// Move the clock (negative: backwards).
    Step(i64),
    /// The background job: forget stale reservations and idle counters.
    Prune,
}

fn op() -> impl Strategy<Value = Op> {
    let amount = |max: u64| prop_oneof![1 => Just(0u64), 4 => 0..=max];
    prop_oneof![
        8 => (any::<bool>(), amount(40), amount(40), amount(120))
            .prop_map(|(hold, input, output, cost)| Op::Reserve { hold, input, output, cost }),
        1 => (any::<Index>(), any::<bool>(), amount(40), amount(40), amount(120))
            .prop_map(|(which, hold, input, output, cost)| Op::Retry { which, hold, input, output, cost }),
        5 => (any::<Index>(), 0u64..=1, amount(60), amount(60), amount(150))
            .prop_map(|(which, requests, input, output, cost)| Op::Settle { which, requests, input, output, cost }),
        1 => (any::<Index>(), Just(0u64), Just(0u64), Just(0u64), Just(0u64))
            .prop_map(|(which, requests, input, output, cost)| Op::Settle { which, requests, input, output, cost }),
        1 => Just(Op::SettleUnknown),
        6 => prop_oneof![
            4 => 0i64..3_000,
            3 => 0i64..2 * MS_PER_MINUTE,
            1 => 0i64..20 * MS_PER_MINUTE,
            1 => 0i64..2 * MS_PER_HOUR,
            1 => 0i64..MS_PER_DAY,
            1 => -3_000i64..0,
            1 => -2 * MS_PER_MINUTE..0,
        ].prop_map(Op::Step),
        1 => Just(Op::Prune),
    ]
}

/// The limits of one case: always a per-minute request limit and a per-month token
/// quota on the key; sometimes also an hourly cost limit on the project.
fn limits() -> impl Strategy<Value = Vec<LimitItem>> {
    (1u64..6, 20u64..400, prop::option::of(40u64..600)).prop_map(|(rpm, tokens, cost)| {
        let key: Arc<str> = Arc::from("key:k");
        let mut items = vec![
            LimitItem::new(key.clone(), LimitSpec::new(Metric::Requests, Window::Minute, rpm)),
            LimitItem::new(key, LimitSpec::new(Metric::TotalTokens, Window::Month, tokens)),
        ];
        if let Some(cost) = cost {
            items.push(LimitItem::new("project:p", LimitSpec::new(Metric::CostMicros, Window::Hour, cost)));
        }
        items
    })
}

/// One admitted charge, as the model remembers it.
#[derive(Clone, Debug)]
struct Charge {
    /// Per limit: the counter generation it went to and the instant it was charged
    /// at (the counter's clock: the latest instant that counter has seen).
    at: Vec<(u64, i64)>,
    /// Per limit: the amount it counts for now.
    amount: Vec<u64>,
}

/// One limit's counter in the model: alive since its generation was created.
#[derive(Clone, Debug, Default)]
struct Counter {
    generation: u64,
    /// The latest instant the live counter has seen; `None` when there is no counter.
    head: Option<i64>,
}

#[derive(Default)]
struct Model {
    windows: Vec<Window>,
    limits: Vec<u64>,
    metrics: Vec<Metric>,
    counters: Vec<Counter>,
    charges: Vec<Charge>,
    /// Held reservations by request id: (charge index, reserved at).
    held: HashMap<String, (usize, i64)>,
}

fn counts(window: Window, charged_at: i64, head: i64) -> bool {
    match window.sliding_ms() {
        Some(ms) => {
            let bucket = ms / BUCKETS as i64;
            charged_at.div_euclid(bucket) > head.div_euclid(bucket) - (BUCKETS as i64 + 1)
        }
        None => calendar_bounds(window, charged_at).0 == calendar_bounds(window, head).0,
    }
}

fn amount_of(amounts: &Amounts, metric: Metric) -> u64 {
    amounts.get(metric)
}

impl Model {
    fn new(items: &[LimitItem]) -> Self {
        Model {
            windows: items.iter().map(|i| i.spec.window).collect(),
            limits: items.iter().map(|i| i.spec.limit).collect(),
            metrics: items.iter().map(|i| i.spec.metric).collect(),
            counters: vec![Counter::default(); items.len()],
            ..Model::default()
        }
    }

    /// Every limit's counter sees `now` (each operation advances the counters it
    /// touches; the test peeks all of them after every step).
    fn observe(&mut self, now: i64) {
        for c in &mut self.counters {
            if let Some(head) = &mut c.head {
                *head = (*head).max(now);
            }
        }
    }

    fn used(&self, l: usize) -> u64 {
        let counter = &self.counters[l];
        let Some(head) = counter.head else { return 0 };
        self.charges
            .iter()
            .filter(|c| c.at[l].0 == counter.generation && counts(self.windows[l], c.at[l].1, head))
            .map(|c| c.amount[l])
            .sum()
    }

    fn fits(&self, amounts: &Amounts) -> Vec<bool> {
        (0..self.limits.len()).map(|l| self.used(l) + amount_of(amounts, self.metrics[l]) <= self.limits[l]).collect()
    }

    fn charge(&mut self, amounts: &Amounts, now: i64) -> usize {
        let mut at = vec![];
        for c in &mut self.counters {
            let head = c.head.map_or(now, |h| h.max(now));
            c.head = Some(head);
            at.push((c.generation, head));
        }
        let amount = self.metrics.iter().map(|m| amount_of(amounts, *m)).collect();
        self.charges.push(Charge { at, amount });
        self.charges.len() - 1
    }

    fn settle(&mut self, id: &str, actual: &Amounts, now: i64) {
        self.observe(now);
        let Some((index, _)) = self.held.remove(id) else { return };
        for l in 0..self.limits.len() {
            let counter = &self.counters[l];
            let charge = &self.charges[index];
            let head = counter.head.expect("a held reservation pins its counters");
            if charge.at[l].0 == counter.generation && counts(self.windows[l], charge.at[l].1, head) {
                self.charges[index].amount[l] = amount_of(actual, self.metrics[l]);
            }
        }
    }

    fn prune(&mut self, now: i64) {
        self.observe(now);
        self.held.retain(|_, (_, at)| *at >= now - RESERVATION_TTL_MS);
        // A counter goes when it counts nothing and no held reservation pins it (all
        // of a request's reservations pin every one of its limits).
        let pinned = !self.held.is_empty();
        for l in 0..self.limits.len() {
            if !pinned && self.counters[l].head.is_some() && self.used(l) == 0 {
                let c = &mut self.counters[l];
                c.generation += 1;
                c.head = None;
            }
        }
    }
}

async fn peek_used(limiter: &EmbeddedLimiter, items: &[LimitItem], now: i64) -> Vec<u64> {
    let decision = limiter.peek(PARTITION, items, Amounts::default(), now).await.expect("peek");
    decision.statuses.iter().map(|s| s.used).collect()
}

async fn run(items: Vec<LimitItem>, start: i64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limiter = EmbeddedLimiter::new();
    let mut model = Model::new(&items);
    let mut now = start;
    let mut ids: Vec<String> = vec![];
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Reserve { hold, input, output, cost } | Op::Retry { hold, input, output, cost, .. } => {
                let id = match &op {
                    Op::Retry { which, .. } if !ids.is_empty() => ids[which.index(ids.len())].clone(),
                    _ => format!("r{step}"),
                };
                let amounts = Amounts { requests: 1, input_tokens: input, output_tokens: output, cost_micros: cost };
                let request = ReserveRequest {
                    partition: PARTITION,
                    request_id: &id,
                    items: &items,
                    amounts,
                    now_ms: now,
                    hold,
                    hold_ms: RESERVATION_TTL_MS,
                };
                let before: Vec<u64> = (0..items.len()).map(|l| model.used(l)).collect();
                let decision = limiter.reserve(request).await.expect("reserve");
                model.observe(now);
                if model.held.contains_key(&id) {
                    // A retry of a held reservation: admitted, charged nothing more.
                    prop_assert!(decision.allowed(), "step {step}: a retried held reservation was refused");
                } else {
                    let fits = model.fits(&amounts);
                    let all_fit = fits.iter().all(|f| *f);
                    prop_assert_eq!(
                        decision.allowed(),
                        all_fit,
                        "step {}: used {:?} + {:?} against limits {:?}",
                        step,
                        before,
                        amounts,
                        model.limits
                    );
                    if let Some(refusal) = decision.refused {
                        prop_assert!(!fits[refusal.index], "step {step}: refused by a limit that fits");
                    } else {
                        let index = model.charge(&amounts, now);
                        if hold {
                            model.held.insert(id.clone(), (index, now));
                        }
                    }
                }
                let used: Vec<u64> = decision.statuses.iter().map(|s| s.used).collect();
                let expected: Vec<u64> = (0..items.len()).map(|l| model.used(l)).collect();
                prop_assert_eq!(used, expected, "step {}: statuses of the decision", step);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Op::Settle { which, requests, input, output, cost } => {
                if ids.is_empty() {
                    continue;
                }
                let id = ids[which.index(ids.len())].clone();
                let actual = Amounts { requests, input_tokens: input, output_tokens: output, cost_micros: cost };
                let was_held = model.held.contains_key(&id);
                let settle = SettleRequest { partition: PARTITION, request_id: &id, actual, now_ms: now };
                limiter.settle(settle.clone()).await.expect("settle");
                model.settle(&id, &actual, now);
                let after_first = peek_used(&limiter, &items, now).await;
                // Settling again is a no-op, whatever the amounts.
                let again = SettleRequest { actual: Amounts::requests(7), ..settle };
                limiter.settle(again).await.expect("settle again");
                prop_assert_eq!(
                    peek_used(&limiter, &items, now).await,
                    after_first,
                    "step {}: a repeated settle changed the counters (first was held: {})",
                    step,
                    was_held
                );
            }
            Op::SettleUnknown => {
                let settle = SettleRequest {
                    partition: PARTITION,
                    request_id: "never-reserved",
                    actual: Amounts::requests(5),
                    now_ms: now,
                };
                limiter.settle(settle).await.expect("settle");
                model.observe(now);
            }
            Op::Step(ms) => {
                now += ms;
            }
            Op::Prune => {
                limiter.prune(now).await.expect("prune");
                model.prune(now);
            }
        }
        model.observe(now);
        let expected: Vec<u64> = (0..items.len()).map(|l| model.used(l)).collect();
        prop_assert_eq!(peek_used(&limiter, &items, now).await, expected, "step {}: counters after {:?}", step, now);
        prop_assert_eq!(limiter.held_reservations().await.expect("held"), model.held.len(), "step {}", step);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn the_embedded_limiter_matches_the_model(
        items in limits(),
        // Starts within two days of a month edge, so day and month windows turn over.
        before_edge in 0i64..2 * MS_PER_DAY,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let start = next_month_start(1_700_000_000_000) - before_edge;
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(run(items, start, ops))?;
    }
}
