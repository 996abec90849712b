//! HTTP routes.

pub mod alerts;
pub mod auth;
pub mod budgets;
pub mod cycles;
pub mod estimate;
pub mod health;
pub mod ledger;
pub mod market;
pub mod models;
pub mod orgs;
pub mod reports;
pub mod reservations;
pub mod review;
pub mod statements;
pub mod usage;
pub mod webhooks;
