//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpora. Each takes arbitrary bytes and must never panic.
