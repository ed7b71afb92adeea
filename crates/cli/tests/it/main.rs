//! Tests of the `nixferry` binary: run it in temporary directories and
//! compare what it does with real Nix.

mod cache;
mod cache_gc;
mod cli;
mod common;
mod copy;
mod differential;
mod ferry;
mod http;
mod nix_config;
mod preflight;
mod push;
mod s3;
mod security;
mod serve;
mod serve_fleet;
mod ssh;
mod sshd;
mod upstream;
mod upstream_push;
