//! The Credex server: configuration, start-up, HTTP routes and background jobs, plus the
//! commands of the `credex` binary.
//!
//! Architecture invariant: this crate holds no ledger rule. It parses what comes in, calls
//! `credex-store`'s [`Ledger`](credex_store::Ledger), and renders what comes out.

pub mod alerts;
pub mod auth;
pub mod bench;
pub mod budgets;
pub mod catalog;
pub mod config;
pub mod cycles;
pub mod delivery;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod idempotency;
pub mod input;
pub mod jobs;
pub mod market;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod portal;
pub mod problem;
pub mod ratelimit;
pub mod review;
pub mod routes;
pub mod startup;
pub mod statements;
pub mod telemetry;
pub mod usage;
pub mod views;

pub use config::Config;
pub use startup::Application;
