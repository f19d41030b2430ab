//! The tollgate server: the HTTP surface (axum) over the request pipeline
//! (`tollgate-gateway`): the proxy routes, the verify endpoint, the usage and admin
//! APIs, configuration, startup and shutdown. The only crate that knows HTTP; no
//! SQL, no Redis, no counter arithmetic here.

pub mod alerts;
pub mod alerts_evaluate;
pub mod app;
pub mod auth;
pub mod config;
pub mod events;
pub mod http;
pub mod openapi;
pub mod otlp;
pub mod retention;
pub mod routes;
pub mod secrets;
pub mod telemetry;
