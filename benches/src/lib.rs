//! Benchmarks for nixferry live in `benches/benches`; this crate only holds
//! the helpers that generate their input data.
