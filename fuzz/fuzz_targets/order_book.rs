//! The `order_book` fuzz target: `credex_matching::fuzzing::order_book`, the body its regression test
//! (`api/tests/fuzz_regressions.rs`) replays `fuzz/regressions/order_book/` through.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credex_matching::fuzzing::order_book(data));
