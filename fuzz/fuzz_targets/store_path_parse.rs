#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixferry::fuzzing::store_path_parse(data));
