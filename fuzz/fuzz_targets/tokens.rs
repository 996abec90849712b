//! The `tokens` fuzz target: `credex_pricing::fuzzing::tokens`, the body its regression test
//! (`api/tests/fuzz_regressions.rs`) replays `fuzz/regressions/tokens/` through.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credex_pricing::fuzzing::tokens(data));
