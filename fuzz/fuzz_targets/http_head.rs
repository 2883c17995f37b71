//! The HTTP request head: the incremental reader (with admission on the
//! request line), httparse, the upgrade checks, the token lookup and the
//! Origin check, in the order the server runs them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::http_head(data));
