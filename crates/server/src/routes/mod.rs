//! The HTTP routes: the OpenAI-compatible proxy, the verify endpoint, the usage API
//! and the admin API. Handlers validate and shape JSON; the pipeline decides.

pub mod admin;
pub mod alert_kinds;
pub mod alerts;
pub mod analytics;
pub mod dashboard;
pub mod export;
pub mod health;
pub mod ledger;
pub mod metrics;
pub mod projects;
pub mod provider_keys;
pub mod proxy;
pub mod tokens;
pub mod usage;
pub mod verify;
