//! sluice::fuzz::request_head on every input (see docs/security.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::request_head(data));
