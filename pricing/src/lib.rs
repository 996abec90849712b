//! Credex's price catalog, token counting, decay curves and buyback pricing.
//!
//! Pure and deterministic: no I/O, time comes in as an argument. The pricing issue fills this
//! crate; until then it deliberately holds nothing, so nothing depends on a half-built catalog.
