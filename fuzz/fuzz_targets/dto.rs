//! The `dto` fuzz target: `credex_api::fuzzing::dto`, the body its regression test
//! (`api/tests/fuzz_regressions.rs`) replays `fuzz/regressions/dto/` through.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credex_api::fuzzing::dto(data));
