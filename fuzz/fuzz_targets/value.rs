//! MQTT payload -> Value: any bytes become a value that encodes and decodes
//! back to itself, and the event frame around it decodes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgepush::fuzzing::value(data));
