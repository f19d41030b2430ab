//! SSE usage extraction and usage-chunk stripping (`SseRewriter`), JSON usage
//! scanning (`UsageScanner`) and the include_usage request rewrite on arbitrary
//! bytes cut at fuzzer-chosen points. The checks are in `harness/sse_usage.rs`,
//! shared with the test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../harness/sse_usage.rs");

fuzz_target!(|data: &[u8]| sse_usage(data));
