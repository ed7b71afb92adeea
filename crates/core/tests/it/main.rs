//! Integration tests of the nixferry core, one module per topic.

mod common;
mod fuzz_corpus;
mod hashes;
mod nar;
mod narinfo;
mod refscan;
mod signing;
