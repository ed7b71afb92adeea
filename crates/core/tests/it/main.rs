//! Integration tests of the nixferry core, one module per topic.

mod common;
mod hashes;
