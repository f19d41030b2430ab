//! Integration tests of the whole gateway over real sockets: a real tollgate on port
//! 0 with its own temporary store, in front of a real mock upstream on port 0.

mod accounting;
mod admin;
mod admission;
mod alerts;
mod alerts_evaluate;
mod analytics;
mod byok;
mod cache;
mod cli;
mod crash;
mod dashboard;
mod dashboard_browser;
mod deadline;
mod deployment;
mod events;
mod examples;
mod faults;
mod hangup;
mod helpers;
mod ledger;
mod limits;
mod observability;
mod openapi;
mod otlp;
mod parsing;
mod providers;
mod proxy;
mod routing;
mod security;
mod semantic;
mod startup;
mod tenancy;
mod verify;
