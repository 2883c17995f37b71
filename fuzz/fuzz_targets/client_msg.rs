//! ClientMsg decoding and the hub's handling of what decodes: the input is a
//! sequence of `[len: u8][bytes]` chunks, each one client message from one
//! connection, handled in order by a hub that holds a few topics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::client_msg(data));
