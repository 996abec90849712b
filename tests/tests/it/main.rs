//! Credex's integration tests: one binary, every suite on SQLite and PostgreSQL.

mod bank;
mod beancount;
mod idempotency;
mod identity;
mod ledger_rules;
mod migrations;
mod model;
mod pricing;
