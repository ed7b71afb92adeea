#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixferry::fuzzing::delta_decode(data));
