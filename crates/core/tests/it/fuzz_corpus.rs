//! Replays every committed fuzz input (seed corpora and saved crashes under
//! `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`) through the same
//! entry points the fuzz targets call, so a normal `cargo test` catches a
//! regression of any crash ever found.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `entry` on every file in the target's corpus and artifacts; returns
/// how many inputs were replayed.
fn replay(target: &str, entry: fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["corpus", "artifacts"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                entry(&data);
                n += 1;
            }
        }
    }
    n
}

#[test]
fn nar_decode_corpus() {
    assert!(replay("nar_decode", nixferry::fuzzing::nar_decode) > 0);
}

#[test]
fn narinfo_parse_corpus() {
    assert!(replay("narinfo_parse", nixferry::fuzzing::narinfo_parse) > 0);
}

#[test]
fn signing_parse_corpus() {
    assert!(replay("signing_parse", nixferry::fuzzing::signing_parse) > 0);
}

#[test]
fn store_path_parse_corpus() {
    assert!(replay("store_path_parse", nixferry::fuzzing::store_path_parse) > 0);
}

#[test]
fn serve_client_corpus() {
    assert!(replay("serve_client", nixferry::fuzzing::serve_client) > 0);
}
