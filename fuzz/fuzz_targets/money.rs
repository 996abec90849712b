//! The `money` fuzz target: `credex_api::fuzzing::money`, the body its regression test
//! (`api/tests/fuzz_regressions.rs`) replays `fuzz/regressions/money/` through.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credex_api::fuzzing::money(data));
