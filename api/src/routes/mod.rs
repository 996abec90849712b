//! HTTP routes.

pub mod auth;
pub mod estimate;
pub mod health;
pub mod ledger;
pub mod models;
pub mod orgs;
