//! JWT verification (alg, signature, time, iss/aud, scope claims) and its
//! JSON and base64url decoders: input is a token, or `header \n claims` to be
//! signed with the test key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::jwt(data));
