//! The tollgate server: the HTTP surface (proxy, admin API, verify), startup and
//! shutdown, the CLI client and the mock upstream. The only crate that knows HTTP and
//! JSON; it asks `tollgate-core` to decide and the stores to persist.

pub mod accounting;
pub mod admin;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod enforce;
pub mod error;
pub mod extract;
pub mod mock;
pub mod proxy;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod traffic;
pub mod usage_api;
pub mod verify;
