//! HTTP routes.

pub mod auth;
pub mod health;
pub mod ledger;
pub mod orgs;
