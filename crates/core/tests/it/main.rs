//! Integration tests of the nixferry core, one module per topic.

mod cache;
mod closure;
mod common;
mod copy;
mod file_store;
mod fuzz_corpus;
mod hashes;
mod http_store;
mod local_store;
mod nar;
mod narinfo;
mod refscan;
mod serve;
mod server;
mod signing;
