//! Topic and filter syntax, matching, permission coverage and the filter
//! index, against each other: input is `filter \n topic \n permission`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::topic(data));
