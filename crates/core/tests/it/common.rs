//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The repository's `testdata/` directory: the vectors and test data.
pub(crate) fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// A file under `testdata/vectors`.
pub(crate) fn vector(rel: &str) -> PathBuf {
    testdata().join("vectors").join(rel)
}

/// Reads a file under `testdata/vectors`.
pub(crate) fn read_vector(rel: &str) -> Vec<u8> {
    let p = vector(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Parses a JSON file under `testdata/vectors`.
pub(crate) fn json_vector(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read_vector(rel)).unwrap()
}

/// Whether the test suite must run every test: in CI, or when
/// `NIXFERRY_REQUIRE_NIX` is set (the test command sets it). A test that
/// lacks what it needs then fails instead of skipping.
pub(crate) fn required() -> bool {
    ["CI", "NIXFERRY_REQUIRE_NIX"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Says that a test skips (the caller returns next) for want of `what`;
/// fails it instead when [`required`].
#[track_caller]
pub(crate) fn skip(what: &str) {
    assert!(
        !required(),
        "{what}: the test cannot run, and CI or NIXFERRY_REQUIRE_NIX is set"
    );
    eprintln!("note: {what}; skipping a test");
}

/// Whether Nix is usable; when it is not, the test [skips](skip).
pub(crate) fn have_nix() -> bool {
    let found = nix_command("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip("nix-store not found");
    }
    found
}

/// A Nix command with the settings the tests use (root, local store, no
/// sandbox, no substituters).
pub(crate) fn nix_command(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    // No narinfos from Nix's disk cache, which is keyed by the cache URL:
    // a test server may get a port an earlier one had.
    c.env(
        "NIX_CONFIG",
        "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n\
         narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0",
    );
    c
}

/// A NAR stream of `bytes`.
pub(crate) fn stream(bytes: Vec<u8>) -> nixferry::store::NarStream {
    Box::pin(std::io::Cursor::new(bytes))
}

/// Everything a NAR stream gives.
pub(crate) async fn read_all(mut s: nixferry::store::NarStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// The SHA-256 of `data` as a Nix hash.
pub(crate) fn sha256(data: &[u8]) -> nixferry::hash::NixHash {
    nixferry::hash::NixHash::sha256(nixferry::hash::sha256(data))
}
