//! Routes: a model alias names an ordered list of `provider/model` targets, tried in
//! that order (the first is the primary, the rest its fallbacks). With `weights`, the
//! route is a split: each caller is assigned one target (its *arm*) by a stable keyed
//! hash of its sticky id (the `user` field or header, else the key id), and the other
//! targets follow as fallbacks in list order.
//!
//! Why a keyed hash: the assignment must be stable across restarts and instances (the
//! same user stays in the same arm, so analytics compares arms and not mixtures), and
//! callers must not be able to pick their arm by choosing a user id; SHA-256 over a
//! secret key, the route's name and the id gives both.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One upstream target: a configured provider and the model it is asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetRef {
    pub provider: String,
    pub model: String,
}

impl TargetRef {
    /// Parses `provider/model`; the model may itself contain `/`
    /// (`together/meta-llama/Llama-3.3-70B`).
    pub fn parse(text: &str) -> Result<TargetRef, RouteError> {
        match text.split_once('/') {
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                Ok(TargetRef { provider: provider.to_owned(), model: model.to_owned() })
            }
            _ => Err(RouteError::BadTarget(text.to_owned())),
        }
    }

    /// `provider/model`, the name the ledger and `/health/detailed` use.
    pub fn id(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

/// What sticky assignment hashes when the caller gives no user id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// The caller's user id if given, else the key id (the default).
    #[default]
    User,
    /// Always the key id, ignoring user ids.
    Key,
}

/// A route as configured: a list, or a table with weights.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RouteSpec {
    Ordered(Vec<String>),
    Split {
        targets: Vec<String>,
        #[serde(default)]
        weights: Option<Vec<u32>>,
        #[serde(default)]
        sticky: Sticky,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route target `{0}` is not `provider/model`")]
    BadTarget(String),
    #[error("route `{0}` has no target")]
    Empty(String),
    #[error("route `{route}` has {weights} weights for {targets} targets")]
    WeightCount { route: String, weights: usize, targets: usize },
    #[error("route `{0}` has weights that are all zero")]
    ZeroWeights(String),
    #[error("route `{route}` names provider `{provider}`, which is not configured")]
    UnknownProvider { route: String, provider: String },
}

#[derive(Clone, Debug)]
struct Route {
    targets: Vec<TargetRef>,
    weights: Option<Vec<u32>>,
    sticky: Sticky,
}

/// The routes of a gateway, checked once at startup.
#[derive(Clone, Debug, Default)]
pub struct Router {
    routes: HashMap<String, Route>,
    hash_key: Vec<u8>,
}

/// Where one request goes: the targets to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The alias the request named.
    pub route: String,
    /// For a split, the index in the route's list of the caller's arm (tried first).
    pub arm: Option<usize>,
    pub attempts: Vec<TargetRef>,
}

impl Router {
    /// Checks every route; `providers` are the configured provider names (a route
    /// naming another is a startup error), `hash_key` the secret of the sticky hash.
    pub fn new<'a>(
        specs: impl IntoIterator<Item = (String, RouteSpec)>,
        providers: impl IntoIterator<Item = &'a str> + Clone,
        hash_key: &[u8],
    ) -> Result<Router, RouteError> {
        let mut routes = HashMap::new();
        for (name, spec) in specs {
            let (texts, weights, sticky) = match spec {
                RouteSpec::Ordered(t) => (t, None, Sticky::default()),
                RouteSpec::Split { targets, weights, sticky } => (targets, weights, sticky),
            };
            if texts.is_empty() {
                return Err(RouteError::Empty(name));
            }
            let targets = texts.iter().map(|t| TargetRef::parse(t)).collect::<Result<Vec<_>, _>>()?;
            for t in &targets {
                if !providers.clone().into_iter().any(|p| p == t.provider) {
                    return Err(RouteError::UnknownProvider { route: name, provider: t.provider.clone() });
                }
            }
            if let Some(w) = &weights {
                if w.len() != targets.len() {
                    return Err(RouteError::WeightCount { route: name, weights: w.len(), targets: targets.len() });
                }
                if w.iter().all(|w| *w == 0) {
                    return Err(RouteError::ZeroWeights(name));
                }
            }
            routes.insert(name, Route { targets, weights, sticky });
        }
        Ok(Router { routes, hash_key: hash_key.to_vec() })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether `model` names a route.
    pub fn has_route(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The plan for a request naming `model`, or `None` when `model` is no alias (the
    /// caller then sends it to its default provider as it is). `user` is the caller's
    /// user id, `key_id` its key's id (or anonymous id).
    pub fn plan(&self, model: &str, user: Option<&str>, key_id: &str) -> Option<Plan> {
        let route = self.routes.get(model)?;
        let Some(weights) = &route.weights else {
            return Some(Plan { route: model.to_owned(), arm: None, attempts: route.targets.clone() });
        };
        let subject = match (route.sticky, user) {
            (Sticky::User, Some(user)) if !user.is_empty() => user,
            _ => key_id,
        };
        let arm = pick(weights, self.sticky_hash(model, subject));
        let mut attempts = Vec::with_capacity(route.targets.len());
        attempts.push(route.targets[arm].clone());
        attempts.extend(route.targets.iter().enumerate().filter(|(i, _)| *i != arm).map(|(_, t)| t.clone()));
        Some(Plan { route: model.to_owned(), arm: Some(arm), attempts })
    }

    /// Every target some route names, once each, in a stable order.
    pub fn targets(&self) -> Vec<TargetRef> {
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        let mut seen = Vec::new();
        for name in names {
            for t in &self.routes[name].targets {
                if !seen.contains(t) {
                    seen.push(t.clone());
                }
            }
        }
        seen
    }

    fn sticky_hash(&self, route: &str, subject: &str) -> u64 {
        let mut h = Sha256::new();
        h.update((self.hash_key.len() as u64).to_be_bytes());
        h.update(&self.hash_key);
        h.update((route.len() as u64).to_be_bytes());
        h.update(route.as_bytes());
        h.update(subject.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// The arm whose share of the total weight contains `hash` (scaled, not reduced
/// modulo the total, so no arm is favoured by the remainder).
fn pick(weights: &[u32], hash: u64) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let point = ((u128::from(hash) * u128::from(total)) >> 64) as u64;
    let mut below = 0u64;
    for (i, w) in weights.iter().enumerate() {
        below += u64::from(*w);
        if point < below {
            return i;
        }
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml_like: serde_json::Value) -> Router {
        let specs: HashMap<String, RouteSpec> = serde_json::from_value(toml_like).expect("routes");
        Router::new(specs, ["openai", "backup", "anthropic"], b"test-key").expect("router")
    }

    #[test]
    fn an_alias_is_its_targets_in_order_and_other_models_are_no_route() {
        let r = router(serde_json::json!({"fast": ["openai/gpt-4o-mini", "backup/gpt-4o-mini"]}));
        let plan = r.plan("fast", None, "key1").expect("a route");
        assert_eq!(plan.arm, None);
        assert_eq!(
            plan.attempts,
            vec![TargetRef::parse("openai/gpt-4o-mini").unwrap(), TargetRef::parse("backup/gpt-4o-mini").unwrap()]
        );
        assert_eq!(r.plan("gpt-4o", None, "key1"), None);
    }

    #[test]
    fn a_split_of_ten_thousand_users_is_within_two_percent_of_its_weights_and_sticky() {
        let r = router(serde_json::json!({"ab": {
            "targets": ["openai/gpt-4o", "anthropic/claude-sonnet-4", "backup/gpt-4o"],
            "weights": [50, 30, 20]}}));
        let mut counts = [0usize; 3];
        for user in 0..10_000 {
            let user = format!("user-{user}");
            let plan = r.plan("ab", Some(&user), "key1").expect("a route");
            let arm = plan.arm.expect("an arm");
            counts[arm] += 1;
            // Sticky: the same user, any key, any number of times, the same arm.
            assert_eq!(r.plan("ab", Some(&user), "key2").and_then(|p| p.arm), Some(arm));
            // The arm first, every other target after it as a fallback.
            assert_eq!(plan.attempts.len(), 3);
        }
        for (count, weight) in counts.iter().zip([50.0, 30.0, 20.0]) {
            let share = *count as f64 / 100.0;
            assert!((share - weight).abs() < 2.0, "{counts:?}");
        }
    }

    #[test]
    fn without_a_user_the_key_is_sticky_and_sticky_key_ignores_users() {
        let r = router(serde_json::json!({
            "ab": {"targets": ["openai/a", "backup/b"], "weights": [1, 1]},
            "bykey": {"targets": ["openai/a", "backup/b"], "weights": [1, 1], "sticky": "key"}}));
        let by_key = r.plan("ab", None, "key7").and_then(|p| p.arm);
        assert_eq!(r.plan("ab", Some(""), "key7").and_then(|p| p.arm), by_key);
        let arms: std::collections::HashSet<_> =
            (0..50).filter_map(|u| r.plan("bykey", Some(&format!("u{u}")), "key7").and_then(|p| p.arm)).collect();
        assert_eq!(arms.len(), 1);
    }

    #[test]
    fn a_zero_weight_arm_is_never_assigned_but_still_a_fallback() {
        let r = router(serde_json::json!({"ab": {"targets": ["openai/a", "backup/b"], "weights": [1, 0]}}));
        for u in 0..500 {
            let plan = r.plan("ab", Some(&format!("u{u}")), "k").expect("a route");
            assert_eq!(plan.arm, Some(0));
            assert_eq!(plan.attempts[1].provider, "backup");
        }
    }

    #[test]
    fn another_hash_key_reassigns_users() {
        let specs = || -> HashMap<String, RouteSpec> {
            serde_json::from_value(serde_json::json!({"ab": {"targets": ["openai/a", "backup/b"], "weights": [1, 1]}}))
                .expect("routes")
        };
        let a = Router::new(specs(), ["openai", "backup"], b"one").expect("router");
        let b = Router::new(specs(), ["openai", "backup"], b"two").expect("router");
        let differ = (0..200)
            .filter(|u| {
                let u = format!("u{u}");
                a.plan("ab", Some(&u), "k").and_then(|p| p.arm) != b.plan("ab", Some(&u), "k").and_then(|p| p.arm)
            })
            .count();
        assert!(differ > 50, "{differ}");
    }

    #[test]
    fn bad_routes_are_startup_errors_naming_what_is_wrong() {
        let check = |v: serde_json::Value| {
            let specs: HashMap<String, RouteSpec> = serde_json::from_value(v).expect("routes");
            Router::new(specs, ["openai"], b"k").map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(check(serde_json::json!({"x": []})), Err("route `x` has no target".into()));
        assert_eq!(
            check(serde_json::json!({"x": ["gpt-4o"]})),
            Err("route target `gpt-4o` is not `provider/model`".into())
        );
        assert_eq!(
            check(serde_json::json!({"x": ["nope/gpt-4o"]})),
            Err("route `x` names provider `nope`, which is not configured".into())
        );
        assert_eq!(
            check(serde_json::json!({"x": {"targets": ["openai/a"], "weights": [1, 2]}})),
            Err("route `x` has 2 weights for 1 targets".into())
        );
        assert_eq!(
            check(serde_json::json!({"x": {"targets": ["openai/a"], "weights": [0]}})),
            Err("route `x` has weights that are all zero".into())
        );
        assert_eq!(TargetRef::parse("together/meta-llama/Llama-3").map(|t| t.model), Ok("meta-llama/Llama-3".into()));
    }
}
