//! sluice::fuzz::differential on every input: sluice's own HTTP/1.1 server framing against
//! hyper's HTTP/1.1 server (see docs/security.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::differential(data));
