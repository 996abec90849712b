//! Credex's order book and matching engine.
//!
//! Pure and deterministic: no I/O, time comes in as an argument. The market issue fills this
//! crate; until then it deliberately holds nothing, so nothing depends on a half-built engine.
