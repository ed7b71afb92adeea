#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixferry::fuzzing::nar_frame(data));
