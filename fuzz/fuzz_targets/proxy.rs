//! Behind a reverse proxy: the PROXY v1/v2 header parser, the
//! X-Forwarded-For and Forwarded walk, address blocks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::proxy(data));
