//! Tests: fuzz_corpus.
