//! HTTP routes.

pub mod auth;
pub mod health;
pub mod orgs;
