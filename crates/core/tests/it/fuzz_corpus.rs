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

#[test]
fn delta_decode_corpus() {
    assert!(replay("delta_decode", nixferry::fuzzing::delta_decode) > 0);
}

#[test]
fn nar_frame_corpus() {
    assert!(replay("nar_frame", nixferry::fuzzing::nar_frame) > 0);
}

/// The framer of the serve protocol, which finds where a NAR ends on a
/// connection, agrees with the strict decoder on every NAR vector, the
/// invalid ones included: the same ones accepted, ending at the same
/// byte, alone and with more bytes after them (as on a connection).
#[test]
fn nar_frame_agrees_on_every_nar_vector() {
    let nar = crate::common::vector("nar");
    let mut checked = 0;
    let mut disagree = Vec::new();
    for dir in [nar.clone(), nar.join("invalid")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "nar"))
            .collect();
        files.sort();
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let mut followed = data.clone();
            followed.extend_from_slice(b"\x04\0\0\0\0\0\0\0next\0\0\0\0");
            for input in [data, followed] {
                let agreed = std::panic::catch_unwind(|| nixferry::fuzzing::nar_frame(&input));
                if agreed.is_err() {
                    disagree.push(path.display().to_string());
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 34, "only {checked} vectors");
    assert!(
        disagree.is_empty(),
        "framer and decoder disagree on {disagree:#?}"
    );
}

/// The same on every single-byte change of every NAR vector: lengths,
/// keywords, names, padding and contents each broken in turn.
#[test]
fn nar_frame_agrees_on_changed_vectors() {
    let nar = crate::common::vector("nar");
    let mut changed = 0;
    for dir in [nar.clone(), nar.join("invalid")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "nar") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            for at in 0..data.len() {
                for flip in [0x01, 0x80] {
                    let mut bad = data.clone();
                    bad[at] ^= flip;
                    nixferry::fuzzing::nar_frame(&bad);
                    changed += 1;
                }
            }
        }
    }
    assert!(changed > 10_000, "{changed}");
}

#[test]
fn ferry_frames_corpus() {
    assert!(replay("ferry_frames", nixferry::fuzzing::ferry_frames) > 0);
}
