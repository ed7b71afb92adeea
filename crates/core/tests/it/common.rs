//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The `shared/` directory with the vectors and test data, beside the checkout.
pub fn shared() -> PathBuf {
    if let Ok(dir) = std::env::var("NIXFERRY_SHARED") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [root.join("../shared"), root.join("shared")] {
        if candidate.join("vectors").is_dir() {
            return candidate;
        }
    }
    panic!("cannot find shared/ with the test vectors; set NIXFERRY_SHARED")
}

/// A file under `shared/vectors`.
pub fn vector(rel: &str) -> PathBuf {
    shared().join("vectors").join(rel)
}

/// Reads a file under `shared/vectors`.
pub fn read_vector(rel: &str) -> Vec<u8> {
    let p = vector(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Parses a JSON file under `shared/vectors`.
pub fn json_vector(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&read_vector(rel)).unwrap()
}
