//! HTTP routes.

pub mod auth;
pub mod health;
