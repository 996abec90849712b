//! Credex's integration tests: one binary, every suite on SQLite and PostgreSQL.

mod ledger_rules;
