//! Request inspection (`accounting::inspect` on every endpoint), key parsing and
//! bearer-header parsing on arbitrary bytes. The checks are in
//! `harness/request_parsing.rs`, shared with the test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../harness/request_parsing.rs");

fuzz_target!(|data: &[u8]| request_parsing(data));
