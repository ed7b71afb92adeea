//! NAR (docs/formats.md §1): Nix's vectors, the strict decoder's rules case by case,
//! restore safety, listings, property tests, and byte-for-byte comparison
//! with `nix-store --dump`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::Path;
use std::process::Stdio;

use nixferry::hash::{HashingWriter, NixHash};
use nixferry::nar::{
    self, Decoder, EntryKind, Event, Limits, NarError, NarSummary, NarWriter, Reason,
    RestoreOptions,
};
use proptest::prelude::*;

use crate::common::{have_nix, json_vector, nix_command, read_vector, skip, vector};

// ---------------------------------------------------------------------------
// Helpers

/// A file system tree in memory. `BTreeMap` keeps names in bytewise order,
/// which is NAR order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(Entries),
}

type Entries = BTreeMap<Vec<u8>, Tree>;

fn file(contents: &[u8]) -> Tree {
    Tree::File {
        executable: false,
        contents: contents.to_vec(),
    }
}

fn dir<const N: usize>(entries: [(&[u8], Tree); N]) -> Tree {
    Tree::Dir(entries.into_iter().map(|(n, t)| (n.to_vec(), t)).collect())
}

/// The NAR of `tree`, written with [`NarWriter`].
fn encode(tree: &Tree) -> Vec<u8> {
    fn write(w: &mut NarWriter<Vec<u8>>, tree: &Tree) {
        match tree {
            Tree::File {
                executable,
                contents,
            } => w.regular_bytes(*executable, contents).unwrap(),
            Tree::Symlink(target) => w.symlink(target).unwrap(),
            Tree::Dir(entries) => {
                w.begin_directory().unwrap();
                for (name, child) in entries {
                    w.entry(name).unwrap();
                    write(w, child);
                }
                w.end_directory().unwrap();
            }
        }
    }
    let mut w = NarWriter::new(Vec::new());
    write(&mut w, tree);
    w.finish().unwrap().0
}

/// Decodes a standalone NAR into a [`Tree`], without recursion.
fn decode(data: &[u8]) -> Result<Tree, NarError> {
    decode_with(data, Limits::default())
}

fn decode_with(data: &[u8], limits: Limits) -> Result<Tree, NarError> {
    let mut decoder = Decoder::with_limits(data, limits);
    // The directories being filled, innermost last, with their names.
    let mut open: Vec<(Vec<u8>, Entries)> = Vec::new();
    let mut root = None;
    while let Some(event) = decoder.next_event()? {
        let (name, node) = match event {
            Event::Entry(entry) => {
                let name = entry.name().to_vec();
                match entry.kind {
                    EntryKind::Regular { executable, .. } => {
                        let mut contents = Vec::new();
                        decoder
                            .contents()
                            .read_to_end(&mut contents)
                            .map_err(NarError::from_io)?;
                        let file = Tree::File {
                            executable,
                            contents,
                        };
                        (name, file)
                    }
                    EntryKind::Symlink { target } => (name, Tree::Symlink(target)),
                    EntryKind::Directory => {
                        open.push((name, Entries::new()));
                        continue;
                    }
                }
            }
            Event::EndDirectory => {
                let (name, entries) = open.pop().expect("EndDirectory without a directory");
                (name, Tree::Dir(entries))
            }
        };
        match open.last_mut() {
            Some((_, entries)) => assert!(entries.insert(name, node).is_none()),
            None => root = Some(node),
        }
    }
    decoder.expect_eof()?;
    Ok(root.expect("a NAR has a root"))
}

/// Creates `tree` at `path`.
fn create_tree(path: &Path, tree: &Tree) {
    match tree {
        Tree::File {
            executable,
            contents,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Tree::Symlink(target) => symlink(OsStr::from_bytes(target), path).unwrap(),
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                create_tree(&path.join(OsStr::from_bytes(name)), child);
            }
        }
    }
}

/// Encodes a token sequence by hand, for NARs that [`NarWriter`] refuses
/// to write.
fn raw_nar(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for token in tokens {
        out.extend_from_slice(&(token.len() as u64).to_le_bytes());
        out.extend_from_slice(token);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

/// The NAR bytes of `path` as our `dump` writes them.
fn dump_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = nar::dump(path, &mut out).unwrap();
    assert_eq!(summary.nar_size, out.len() as u64);
    assert_eq!(
        summary.nar_hash,
        NixHash::digest(nixferry::hash::HashAlgo::Sha256, &out)
    );
    out
}

fn invalid_reason(e: &NarError) -> &Reason {
    &e.as_invalid()
        .unwrap_or_else(|| panic!("expected an invalid NAR, got: {e:?}"))
        .reason
}

// ---------------------------------------------------------------------------
// Valid vectors (docs/formats.md §1.3, vectors/nar)

/// `nar-hashes.txt`: `<file> <size> sha256:<nix32> <sri> <hex>` per line.
fn vector_hashes() -> Vec<(String, NarSummary)> {
    let text = String::from_utf8(read_vector("nar/nar-hashes.txt")).unwrap();
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hash = NixHash::parse(fields[2]).unwrap();
            assert_eq!(NixHash::parse(fields[3]).unwrap(), hash);
            assert_eq!(hash.to_hex(), fields[4]);
            let summary = NarSummary {
                nar_hash: hash,
                nar_size: fields[1].parse().unwrap(),
            };
            (fields[0].to_owned(), summary)
        })
        .collect()
}

/// Every NAR Nix wrote validates, hashes as Nix hashed it, and re-encodes
/// to the same bytes (the writer is canonical in the same way as Nix).
#[test]
fn nix_vectors_validate_with_nix_hashes_and_reencode_identically() {
    let hashes = vector_hashes();
    assert_eq!(hashes.len(), 5);
    for (name, expected) in hashes {
        let data = read_vector(&format!("nar/{name}"));
        assert_eq!(nar::validate(&data[..]).unwrap(), expected, "{name}");
        assert_eq!(encode(&decode(&data).unwrap()), data, "{name}");
    }
}

/// The exact trees of the small vectors (docs/formats.md §1.3).
#[test]
fn small_vectors_decode_to_their_trees() {
    let exec = Tree::File {
        executable: true,
        contents: b"hi".to_vec(),
    };
    assert_eq!(decode(&read_vector("nar/hi.nar")).unwrap(), file(b"hi"));
    assert_eq!(decode(&read_vector("nar/hi-exec.nar")).unwrap(), exec);
    assert_eq!(
        decode(&read_vector("nar/symlink.nar")).unwrap(),
        Tree::Symlink(b"target".to_vec())
    );
    assert_eq!(decode(&read_vector("nar/emptydir.nar")).unwrap(), dir([]));
}

/// One entry of `source-tree/`.
enum SourceEntry {
    File {
        contents: &'static [u8],
        executable: bool,
    },
    Symlink(&'static str),
}

/// `vectors/nar/source-tree`, the tree Nix dumped as `tree.nar`, as its
/// README lists it. The tests build it from this list rather than copy the
/// checkout's, which may hold the symlinks as files (`core.symlinks=false`)
/// or miss the execute bit.
const SOURCE_TREE: [(&str, SourceEntry); 6] = [
    (
        "dir/empty",
        SourceEntry::File {
            contents: b"",
            executable: false,
        },
    ),
    (
        "dir/sub/deep.txt",
        SourceEntry::File {
            contents: b"nested",
            executable: false,
        },
    ),
    ("dir/sub/up", SourceEntry::Symlink("../../hello.txt")),
    (
        "hello.txt",
        SourceEntry::File {
            contents: b"hello\n",
            executable: false,
        },
    ),
    ("link", SourceEntry::Symlink("hello.txt")),
    (
        "run.sh",
        SourceEntry::File {
            contents: b"#!/bin/sh\necho hi\n",
            executable: true,
        },
    ),
];

/// Builds the source tree of `tree.nar` at `dest`.
fn build_source_tree(dest: &Path) {
    for (rel, entry) in &SOURCE_TREE {
        let path = dest.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match entry {
            SourceEntry::File {
                contents,
                executable,
            } => {
                fs::write(&path, contents).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            SourceEntry::Symlink(target) => symlink(target, &path).unwrap(),
        }
    }
}

/// The relative paths of the files and symlinks under `root`.
fn leaves(root: &Path, rel: &str, out: &mut Vec<String>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            leaves(root, &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// The committed `source-tree/` holds what [`SOURCE_TREE`] says: the same
/// paths, contents and symlink targets (a checkout without symlinks holds
/// each target in a file).
#[test]
fn committed_source_tree_matches_its_description() {
    let source = vector("nar/source-tree");
    let mut found = Vec::new();
    leaves(&source, "", &mut found);
    found.sort();
    let described: Vec<&str> = SOURCE_TREE.iter().map(|(rel, _)| *rel).collect();
    assert_eq!(found, described);
    for (rel, entry) in &SOURCE_TREE {
        let path = source.join(rel);
        match entry {
            SourceEntry::File { contents, .. } => {
                assert_eq!(fs::read(&path).unwrap(), *contents, "{rel}");
            }
            SourceEntry::Symlink(target) => {
                let got = if fs::symlink_metadata(&path).unwrap().is_symlink() {
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                } else {
                    fs::read(&path).unwrap()
                };
                assert_eq!(got, target.as_bytes(), "{rel}");
            }
        }
    }
}

/// `dump` of the source tree gives exactly `tree.nar` (1648 bytes).
#[test]
fn dump_of_source_tree_is_tree_nar() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("source-tree");
    build_source_tree(&tree);
    let expected = read_vector("nar/tree.nar");
    assert_eq!(dump_bytes(&tree), expected);
    assert_eq!(
        nar::hash_path(&tree).unwrap().nar_hash.to_string(),
        "sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d"
    );
    // A checkout that kept the symlinks and the execute bit, as git does on
    // Linux, dumps the same.
    let source = vector("nar/source-tree");
    let kept_links = fs::symlink_metadata(source.join("link"))
        .unwrap()
        .is_symlink();
    let kept_exec = fs::metadata(source.join("run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o100
        != 0;
    if kept_links && kept_exec {
        assert_eq!(dump_bytes(&source), expected);
    }
}

/// `list(tree.nar)` is exactly the `.ls` Nix wrote (docs/formats.md §3.6), which has
/// no trailing newline.
#[test]
fn listing_of_tree_nar_is_nix_ls_json() {
    let listing = nar::list(&read_vector("nar/tree.nar")[..]).unwrap();
    let expected = String::from_utf8(read_vector("nar/tree.ls.json")).unwrap();
    assert!(!expected.ends_with('\n'));
    assert_eq!(listing.to_json(), expected);
    assert_eq!(listing.to_json_strict().unwrap(), expected);
    let parsed: serde_json::Value = serde_json::from_str(&listing.to_json()).unwrap();
    assert_eq!(parsed, json_vector("nar/tree.ls.json"));

    // narOffset points at the contents (docs/formats.md §1.8).
    let data = read_vector("nar/tree.nar");
    let run = listing.get(b"run.sh").unwrap();
    let EntryKind::Regular { size, offset, .. } = run.kind else {
        panic!("run.sh is a file")
    };
    assert_eq!(
        &data[offset as usize..][..size as usize],
        b"#!/bin/sh\necho hi\n"
    );
}

/// `hi.nar`'s content offset is 96 (docs/formats.md §1.8).
#[test]
fn nar_offset_of_hi() {
    let listing = nar::list(&read_vector("nar/hi.nar")[..]).unwrap();
    assert_eq!(
        listing.to_json(),
        r#"{"version":1,"root":{"type":"regular","size":2,"narOffset":96}}"#
    );
}

// ---------------------------------------------------------------------------
// Invalid vectors (docs/formats.md §1.4, vectors/nar/invalid)

enum Expect {
    /// A canonical NAR, kept as a positive control.
    Accept,
    /// Rejected with exactly this message.
    Reject(&'static str),
}
use Expect::{Accept, Reject};

/// Every case of `vectors/nar/invalid/`, with what the strict column of
/// docs/formats.md §1.4 asks for. Messages give the offset of the offending token and
/// the entry path (none means the root).
#[rustfmt::skip]
const INVALID_VECTORS: &[(&str, Expect)] = &[
    // Magic "nix-archive-2" instead of "nix-archive-1".
    ("bad_magic", Reject("invalid NAR at byte 0: input doesn't look like a Nix archive")),
    // Names "A" and "a" differ bytewise; only the case hack would care.
    ("case_pair_A_a", Accept),
    // Fixed field order: `executable` after `contents` (Nix 2.8 accepted).
    ("contents_then_exec", Reject("invalid NAR at byte 104: expected ')', found 'executable'")),
    // `contents` twice (Nix 2.8 concatenated them).
    ("contents_twice", Reject("invalid NAR at byte 104: expected ')', found 'contents'")),
    // Two entries named "a" (Nix 2.8 failed only at the second open()).
    ("duplicate", Reject("invalid NAR at byte 320: duplicate directory entry 'a'")),
    // An entry with a name but no node (Nix 2.8 created nothing).
    ("entry_missing_node", Reject("invalid NAR at byte 144 in 'a': expected 'node', found ')'")),
    // `node` before `name`.
    ("entry_node_without_name", Reject("invalid NAR at byte 112: expected 'name', found 'node'")),
    // The executable marker's value must be empty.
    ("exec_nonempty", Reject("invalid NAR at byte 96: executable marker has a non-empty value")),
    // `executable` twice (Nix 2.8 accepted).
    ("exec_twice", Reject("invalid NAR at byte 104: expected 'contents', found 'executable'")),
    // A 2^63-byte "(" token: refused by its length, before any allocation.
    ("len_too_big", Reject("invalid NAR at byte 24: expected '(', found a 9223372036854775808-byte string")),
    // A 256-byte name: over the 255-byte limit (Nix 2.8 left it to the OS).
    ("name_256", Reject("invalid NAR at byte 128: file name of 256 bytes is longer than 255")),
    // `.` would alias the directory itself.
    ("name_dot", Reject("invalid NAR at byte 128: invalid file name '.'")),
    // `..` would climb out of the directory.
    ("name_dotdot", Reject("invalid NAR at byte 128: invalid file name '..'")),
    // An empty name would alias the directory itself.
    ("name_empty", Reject("invalid NAR at byte 128: invalid file name ''")),
    // UTF-8 "é": any bytes but "/" and NUL are fine.
    ("name_high_bytes", Accept),
    // NUL ends a C path string; the OS would see "a".
    ("name_nul", Reject("invalid NAR at byte 128: invalid file name 'a\\u{0}b'")),
    // A `/` would make one name two path components.
    ("name_slash", Reject("invalid NAR at byte 128: invalid file name 'a/b'")),
    // A regular file without `contents` (Nix 2.8 made an empty file).
    ("no_contents", Reject("invalid NAR at byte 72: expected 'executable' or 'contents', found ')'")),
    // A node without `type` (Nix 2.8 created nothing).
    ("no_type", Reject("invalid NAR at byte 40: expected 'type', found ')'")),
    // Padding after the contents "x" has a 01 byte.
    ("nonzero_padding", Reject("invalid NAR at byte 97: non-zero padding")),
    // Two files "a" and "b": the baseline valid directory.
    ("ok_basic", Accept),
    // "Z" (0x5a) sorts before "a" (0x61).
    ("sort_bytewise_Z_a", Accept),
    // "a" sorts before "é" (0xc3 0xa9): bytes compare unsigned.
    ("sort_bytewise_high", Accept),
    // symlink(2) refuses an empty target (Nix ≥ 2.35 rejects it too).
    ("symlink_empty_target", Reject("invalid NAR at byte 88: symlink target is empty")),
    // A symlink without `target` (Nix 2.8 created nothing).
    ("symlink_no_target", Reject("invalid NAR at byte 72: expected 'target', found ')'")),
    // 5000 bytes: over the 4095-byte limit.
    ("symlink_target_5000", Reject("invalid NAR at byte 88: symlink target of 5000 bytes is longer than 4095")),
    // Nix 2.8 silently cut the target at the NUL.
    ("symlink_target_nul", Reject("invalid NAR at byte 88: symlink target 'abc\\u{0}def' contains a NUL byte")),
    // A symlink to /etc/passwd is a valid NAR; restore must not follow it.
    ("top_symlink", Accept),
    // Bytes after the NAR: an error for a standalone NAR.
    ("trailing_garbage", Reject("invalid NAR at byte 120: data after the end of the NAR")),
    // The stream ends inside the root node.
    ("truncated", Reject("invalid NAR at byte 112: unexpected end of data")),
    // `type` again where `contents` belongs.
    ("type_twice", Reject("invalid NAR at byte 72: expected 'executable' or 'contents', found 'type'")),
    // An unknown key `foo` in a regular file.
    ("unknown_field", Reject("invalid NAR at byte 72: expected 'executable' or 'contents', found 'foo'")),
    // A `fifo` node: only regular, symlink and directory exist.
    ("unknown_type", Reject("invalid NAR at byte 56: unknown file type 'fifo'")),
    // "b" then "a" (Nix 2.8 accepted; docs/formats.md §1.4 on why that is dangerous).
    ("unsorted", Reject("invalid NAR at byte 320: directory entries are not sorted ('a' after 'b')")),
];

/// Each case is accepted or rejected as the table says, by `validate` and
/// by the other entry points; every case Nix 2.8 rejected is rejected.
#[test]
fn invalid_vectors_follow_the_strict_rules() {
    let dir = vector("nar/invalid");
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".nar").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let in_table: Vec<&str> = INVALID_VECTORS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        on_disk, in_table,
        "the table must list every case, in order"
    );
    assert_eq!(in_table.len(), 34);

    let nix_results = json_vector("nar/invalid/nix-2.8-restore-results.json");
    for (name, expect) in INVALID_VECTORS {
        let data = read_vector(&format!("nar/invalid/{name}.nar"));
        let result = nar::validate(&data[..]);
        match (expect, &result) {
            (Accept, Ok(summary)) => {
                assert_eq!(summary.nar_size, data.len() as u64, "{name}");
                assert_eq!(encode(&decode(&data).unwrap()), data, "{name}");
                assert!(nar::list(&data[..]).is_ok(), "{name}");
            }
            (Reject(message), Err(e)) => {
                assert_eq!(e.to_string(), *message, "{name}");
                assert!(decode(&data).is_err(), "{name}");
                assert!(nar::list(&data[..]).is_err(), "{name}");
            }
            _ => panic!("{name}: got {result:?}"),
        }
        let nix_rejected = nix_results[name]["nix_2_8_restore_exit"] != 0;
        assert!(
            !nix_rejected || result.is_err(),
            "{name}: Nix 2.8 rejects it"
        );
    }
}

/// On a stream, the decoder stops right after the NAR: the bytes after it
/// stay in the reader for the caller (docs/formats.md §1.4, last rule).
#[test]
fn stream_decoder_stops_exactly_at_the_end() {
    let data = read_vector("nar/invalid/trailing_garbage.nar");
    let mut decoder = Decoder::new(&data[..]);
    while decoder.next_event().unwrap().is_some() {}
    assert_eq!(decoder.position(), 120);
    let (rest, summary) = decoder.finish().unwrap();
    assert_eq!(rest, b"GARBAGE!");
    assert_eq!(summary.nar_size, 120);
    assert_eq!(
        summary.nar_hash,
        nar::validate(&data[..120]).unwrap().nar_hash
    );
}

/// Errors from the data are apart from I/O errors.
#[test]
fn io_errors_are_not_invalid_nars() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"))
        }
    }
    let data = read_vector("nar/hi.nar");
    let e = nar::validate(Cursor::new(&data[..50]).chain(Failing)).unwrap_err();
    assert!(
        matches!(&e, NarError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset),
        "{e:?}"
    );
    let e = nar::validate(&data[..50]).unwrap_err();
    assert_eq!(invalid_reason(&e), &Reason::Truncated);
}

// ---------------------------------------------------------------------------
// Nesting: no recursion, explicit bounds

/// A reader that yields `bytes` `times` times.
struct Repeat {
    bytes: Vec<u8>,
    times: u64,
    at: usize,
}

impl Read for Repeat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.times == 0 {
            return Ok(0);
        }
        let n = (self.bytes.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[self.at..][..n]);
        self.at += n;
        if self.at == self.bytes.len() {
            self.at = 0;
            self.times -= 1;
        }
        Ok(n)
    }
}

/// The directory part of one level of [`deep_nar`].
fn deep_level() -> Vec<u8> {
    raw_nar(&[
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
    ])
}

/// A NAR of `levels` directories nested as `a/a/a/…`, with an empty file at
/// the bottom, generated as it is read.
fn deep_nar(levels: u64) -> impl Read {
    let leaf = raw_nar(&[b"(", b"type", b"regular", b"contents", b"", b")"]);
    Cursor::new(raw_nar(&[b"nix-archive-1"]))
        .chain(Repeat {
            bytes: deep_level(),
            times: levels,
            at: 0,
        })
        .chain(Cursor::new(leaf))
        .chain(Repeat {
            bytes: raw_nar(&[b")", b")"]),
            times: levels,
            at: 0,
        })
}

/// A NAR nested a million levels deep (168 MB, never held in memory) is a
/// clean error at depth 64, after reading a few kilobytes.
#[test]
fn million_levels_deep_is_a_clean_error() {
    let mut decoder = Decoder::new(deep_nar(1_000_000));
    let e = loop {
        match decoder.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("accepted"),
            Err(e) => break e,
        }
    };
    let e = e.as_invalid().unwrap();
    assert_eq!(e.reason, Reason::TooDeep { max: 64 });
    // The node at depth 64 starts after the magic and 64 levels.
    assert_eq!(e.offset, 24 + 64 * deep_level().len() as u64);
    assert_eq!(e.path, vec![&b"a"[..]; 64].join(&b'/'));
    assert!(decoder.position() < 10_000);

    let e = nar::validate(deep_nar(1_000_000)).unwrap_err();
    assert_eq!(invalid_reason(&e), &Reason::TooDeep { max: 64 });
}

/// Depth 63 is the deepest node the default limits allow (Nix 2.35).
#[test]
fn depth_limit_boundary() {
    assert!(nar::validate(deep_nar(63)).is_ok());
    let e = nar::validate(deep_nar(64)).unwrap_err();
    assert_eq!(invalid_reason(&e), &Reason::TooDeep { max: 64 });
}

/// With the depth limit lifted, tens of thousands of levels decode and
/// encode without touching the call stack.
#[test]
fn deep_nesting_needs_no_recursion() {
    const LEVELS: u64 = 30_000;
    let mut expected = Vec::new();
    deep_nar(LEVELS).read_to_end(&mut expected).unwrap();

    let mut w = NarWriter::new(Vec::new());
    for _ in 0..LEVELS {
        w.begin_directory().unwrap();
        w.entry(b"a").unwrap();
    }
    w.regular_bytes(false, b"").unwrap();
    for _ in 0..LEVELS {
        w.end_directory().unwrap();
    }
    assert_eq!(w.finish().unwrap().0, expected);

    let limits = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    let mut decoder = Decoder::with_limits(&expected[..], limits);
    let (mut entries, mut ends) = (0, 0);
    while let Some(event) = decoder.next_event().unwrap() {
        match event {
            Event::Entry(_) => entries += 1,
            Event::EndDirectory => ends += 1,
        }
    }
    decoder.expect_eof().unwrap();
    assert_eq!((entries, ends), (LEVELS + 1, LEVELS));
}

// ---------------------------------------------------------------------------
// Restore

fn restore_default(data: &[u8], dest: &Path) -> Result<NarSummary, NarError> {
    nar::restore(data, dest, &RestoreOptions::default())
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).unwrap().permissions().mode() & 0o100 != 0
}

/// The vectors restore to what they hold, and re-dump to the same bytes.
#[test]
fn restore_vectors_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, expected) in vector_hashes() {
        let data = read_vector(&format!("nar/{name}"));
        let dest = tmp.path().join(&name);
        assert_eq!(restore_default(&data, &dest).unwrap(), expected);
        assert_eq!(dump_bytes(&dest), data, "{name}");
    }
    assert_eq!(fs::read(tmp.path().join("hi.nar")).unwrap(), b"hi");
    assert!(!is_executable(&tmp.path().join("hi.nar")));
    assert!(is_executable(&tmp.path().join("hi-exec.nar")));
    assert_eq!(
        fs::read_link(tmp.path().join("symlink.nar")).unwrap(),
        Path::new("target")
    );
    let tree = tmp.path().join("tree.nar");
    assert_eq!(
        fs::read_link(tree.join("dir/sub/up")).unwrap(),
        Path::new("../../hello.txt")
    );
    assert!(is_executable(&tree.join("run.sh")));
}

/// An existing destination is refused, or replaced with `overwrite`.
#[test]
fn restore_refuses_existing_target_unless_overwriting() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("old"), "old").unwrap();
    let data = read_vector("nar/tree.nar");

    let e = restore_default(&data, &dest).unwrap_err();
    assert!(
        matches!(&e, NarError::TargetExists { path } if path == &dest),
        "{e:?}"
    );
    assert!(dest.join("old").exists());

    let opts = RestoreOptions {
        overwrite: true,
        ..RestoreOptions::default()
    };
    nar::restore(&data[..], &dest, &opts).unwrap();
    assert!(!dest.join("old").exists());
    assert_eq!(dump_bytes(&dest), data);

    // A file and a dangling symlink are replaced the same way.
    let dest = tmp.path().join("file");
    fs::write(&dest, "x").unwrap();
    nar::restore(&data[..], &dest, &opts).unwrap();
    let dest = tmp.path().join("dangling");
    symlink("nowhere", &dest).unwrap();
    nar::restore(&data[..], &dest, &opts).unwrap();
    assert_eq!(dump_bytes(&dest), data);
}

/// Overwriting a symlink to a directory removes the symlink, never what it
/// points to.
#[test]
fn restore_overwrite_does_not_follow_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), "keep").unwrap();
    let dest = tmp.path().join("dest");
    symlink(&outside, &dest).unwrap();
    let opts = RestoreOptions {
        overwrite: true,
        ..RestoreOptions::default()
    };
    nar::restore(&read_vector("nar/hi.nar")[..], &dest, &opts).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"hi");
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
}

/// A NAR that makes `a` a symlink out of the target and then tries to
/// write `a/pwned` through it fails on the duplicate name before anything
/// is written there, and the partial tree is removed.
#[test]
fn restore_never_writes_through_its_own_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.as_os_str().as_bytes();
    #[rustfmt::skip]
    let data = raw_nar(&[
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"symlink", b"target", target, b")", b")",
        b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory",
            b"entry", b"(", b"name", b"pwned", b"node", b"(", b"type", b"regular", b"contents", b"x", b")", b")",
        b")", b")",
        b")",
    ]);
    let dest = tmp.path().join("dest");
    let e = restore_default(&data, &dest).unwrap_err();
    assert_eq!(invalid_reason(&e), &Reason::Duplicate(b"a".to_vec()));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(
        fs::symlink_metadata(&dest).is_err(),
        "partial tree left behind"
    );
}

/// Bad names from the vectors never reach the file system.
#[test]
fn restore_rejects_bad_names_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for case in [
        "name_dotdot",
        "name_slash",
        "name_dot",
        "duplicate",
        "unsorted",
    ] {
        let dest = tmp.path().join("sub").join(case);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let data = read_vector(&format!("nar/invalid/{case}.nar"));
        assert!(restore_default(&data, &dest).is_err(), "{case}");
        assert!(fs::symlink_metadata(&dest).is_err(), "{case}");
        assert_eq!(
            fs::read_dir(tmp.path().join("sub")).unwrap().count(),
            0,
            "{case}"
        );
    }
    // A symlink to /etc/passwd is created as a symlink, and only that.
    let dest = tmp.path().join("top");
    restore_default(&read_vector("nar/invalid/top_symlink.nar"), &dest).unwrap();
    assert_eq!(fs::read_link(&dest).unwrap(), Path::new("/etc/passwd"));
}

/// When the NAR turns out invalid only at its very end, everything already
/// written is removed.
#[test]
fn restore_removes_everything_on_a_late_error() {
    let tree = dir([
        (b"a", dir([(b"deep", dir([(b"f", file(&[7; 100_000]))]))])),
        (b"b", Tree::Symlink(b"a/deep".to_vec())),
        (b"c", file(b"last")),
    ]);
    let good = encode(&tree);
    let tmp = tempfile::tempdir().unwrap();

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 8]);
    let mut bad_padding = good.clone();
    *bad_padding.last_mut().unwrap() = 1;
    let mut truncated = good.clone();
    truncated.pop();

    for (what, data, reason) in [
        ("trailing", &trailing, Reason::TrailingData),
        ("truncated", &truncated, Reason::Truncated),
        ("padding", &bad_padding, Reason::NonZeroPadding),
    ] {
        let dest = tmp.path().join(what);
        let e = restore_default(data, &dest).unwrap_err();
        assert_eq!(invalid_reason(&e), &reason, "{what}");
        assert!(fs::symlink_metadata(&dest).is_err(), "{what}: left behind");
    }
    let dest = tmp.path().join("good");
    restore_default(&good, &dest).unwrap();
    assert_eq!(dump_bytes(&dest), good);
}

/// A NAR in the middle of a stream restores, and the stream goes on.
#[test]
fn restore_from_a_stream() {
    let mut stream = read_vector("nar/tree.nar");
    stream.extend_from_slice(b"next message");
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("t");
    let mut decoder = Decoder::new(&stream[..]);
    nar::restore_from_decoder(&mut decoder, &dest, false).unwrap();
    let (rest, summary) = decoder.finish().unwrap();
    assert_eq!(rest, b"next message");
    assert_eq!(summary.nar_size, 1648);
    assert_eq!(dump_bytes(&dest), read_vector("nar/tree.nar"));
}

/// File system errors name the path.
#[test]
fn restore_into_a_missing_parent_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("missing/dest");
    let e = restore_default(&read_vector("nar/emptydir.nar"), &dest).unwrap_err();
    assert!(
        matches!(&e, NarError::Fs { path, .. } if path == &dest),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("creating directory '{}'", dest.display())
    );
}

// ---------------------------------------------------------------------------
// List and cat

#[test]
fn cat_finds_files_by_path() {
    let data = read_vector("nar/tree.nar");
    let cat = |path: &str| {
        let mut out = Vec::new();
        nar::cat(&data[..], path, &mut out).map(|n| {
            assert_eq!(n, out.len() as u64);
            out
        })
    };
    assert_eq!(cat("dir/sub/deep.txt").unwrap(), b"nested");
    assert_eq!(cat("/hello.txt").unwrap(), b"hello\n");
    assert_eq!(cat("dir//empty/").unwrap(), b"");
    let e = cat("dir/missing").unwrap_err();
    assert_eq!(e.to_string(), "'dir/missing' does not exist in the NAR");
    let e = cat("dir").unwrap_err();
    assert_eq!(e.to_string(), "'dir' is a directory, not a regular file");
    let e = cat("/link").unwrap_err();
    assert_eq!(e.to_string(), "'link' is a symlink, not a regular file");

    // The root of a single-file NAR; a non-UTF-8 name given as bytes.
    let mut out = Vec::new();
    nar::cat(&read_vector("nar/hi.nar")[..], "", &mut out).unwrap();
    assert_eq!(out, b"hi");
    let data = encode(&dir([(b"\xff", file(b"bytes"))]));
    let mut out = Vec::new();
    nar::cat(&data[..], b"\xff", &mut out).unwrap();
    assert_eq!(out, b"bytes");

    // A missing path in an invalid NAR reports the NAR as invalid.
    let e = nar::cat(
        &read_vector("nar/invalid/unsorted.nar")[..],
        "zzz",
        io::sink(),
    )
    .unwrap_err();
    assert!(matches!(invalid_reason(&e), Reason::Unsorted { .. }));
}

#[test]
fn listing_for_humans() {
    let listing = nar::list(&read_vector("nar/tree.nar")[..]).unwrap();
    let lines: Vec<String> = listing.lines().collect();
    assert_eq!(
        lines,
        [
            "dr-xr-xr-x                    0 ./dir",
            "-r--r--r--                    0 ./dir/empty",
            "dr-xr-xr-x                    0 ./dir/sub",
            "-r--r--r--                    6 ./dir/sub/deep.txt",
            "lrwxrwxrwx                    0 ./dir/sub/up -> ../../hello.txt",
            "-r--r--r--                    6 ./hello.txt",
            "lrwxrwxrwx                    0 ./link -> hello.txt",
            "-r-xr-xr-x                   18 ./run.sh",
        ]
    );
    let names: Vec<&[u8]> = listing.iter().map(|e| e.name()).collect();
    assert_eq!(names[..3], [&b""[..], b"dir", b"empty"]);
    assert_eq!(listing.entries().len(), 9);
}

// ---------------------------------------------------------------------------
// Dump errors

/// Sockets (and FIFOs, devices) cannot be archived; the error names them.
#[test]
fn dump_refuses_a_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("d/sock");
    fs::create_dir(tmp.path().join("d")).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let e = nar::hash_path(&tmp.path().join("d")).unwrap_err();
    assert!(
        matches!(&e, NarError::UnsupportedFileType { path, kind: "socket" } if path == &socket),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "file '{}' has an unsupported type (socket)",
            socket.display()
        )
    );
}

/// A file whose contents do not match its `lstat` size is an error, not a
/// corrupt NAR: `/proc` files say 0 bytes and then have some.
#[test]
fn dump_refuses_a_file_that_changes_size() {
    let path = Path::new("/proc/self/status");
    if fs::metadata(path).map(|m| m.len()).ok() != Some(0) {
        skip("no /proc whose files say 0 bytes and have more");
        return;
    }
    let e = nar::dump(path, io::sink()).unwrap_err();
    assert!(
        matches!(&e, NarError::FileChanged { path: p, expected: 0 } if p == path),
        "{e:?}"
    );
}

#[test]
fn dump_of_a_missing_path_names_it() {
    let e = nar::hash_path(Path::new("/nonexistent/x")).unwrap_err();
    assert_eq!(e.to_string(), "getting status of '/nonexistent/x'");
}

// ---------------------------------------------------------------------------
// Property tests

/// Entry names: printable ones, and arbitrary bytes (non-UTF-8 included)
/// with `/` and NUL replaced.
fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{1,6}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..6),
    ]
    .prop_map(|mut name| {
        for b in &mut name {
            if *b == 0 || *b == b'/' {
                *b = b'_';
            }
        }
        name
    })
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(executable, contents)| Tree::File {
                executable,
                contents
            }
        ),
        prop::collection::vec(1..=255u8, 1..16).prop_map(Tree::Symlink),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop::collection::btree_map(name_strategy(), inner, 0..6).prop_map(Tree::Dir)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// decode(encode(tree)) == tree, and the writer's summary is the hash of
    /// its bytes.
    #[test]
    fn prop_decode_inverts_encode(tree in tree_strategy()) {
        let data = encode(&tree);
        prop_assert_eq!(decode(&data).unwrap(), tree);
        let summary = nar::validate(&data[..]).unwrap();
        prop_assert_eq!(summary.nar_size, data.len() as u64);
    }

    /// Decoding arbitrary bytes never panics (with and without a valid
    /// magic in front, to get past the first check).
    #[test]
    fn prop_arbitrary_bytes_never_panic(
        magic in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut data = if magic { raw_nar(&[b"nix-archive-1"]) } else { Vec::new() };
        data.extend_from_slice(&bytes);
        nixferry::fuzzing::nar_decode(&data);
    }

    /// Mutated valid NARs never panic, and a NAR the strict decoder accepts
    /// is canonical: it re-encodes to exactly the same bytes.
    #[test]
    fn prop_mutated_nars_never_panic_and_accepted_ones_are_canonical(
        tree in tree_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut data = encode(&tree);
        for (at, byte) in edits {
            let at = at.index(data.len());
            data[at] = byte;
        }
        if let Some(cut) = cut {
            data.truncate(cut.index(data.len()));
        }
        nixferry::fuzzing::nar_decode(&data);
        if let Ok(decoded) = decode(&data) {
            prop_assert_eq!(encode(&decoded), data);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Through the file system: `dump` of the tree made with `std::fs` is
    /// what `NarWriter` encodes, and `restore` of that NAR dumps back to it
    /// (non-UTF-8 names included).
    #[test]
    fn prop_dump_and_restore_agree_with_the_writer(tree in tree_strategy()) {
        let data = encode(&tree);
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("made");
        create_tree(&made, &tree);
        prop_assert_eq!(dump_bytes(&made), data.clone());
        let restored = tmp.path().join("restored");
        restore_default(&data, &restored).unwrap();
        prop_assert_eq!(dump_bytes(&restored), data);
    }
}

// ---------------------------------------------------------------------------
// Differential: `dump` against `nix-store --dump`

/// `nix-store --dump` of `path`, in memory.
fn nix_dump(path: &Path) -> Vec<u8> {
    let out = nix_command("nix-store")
        .arg("--dump")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A tree with every kind of node and the names that sort trickily.
fn make_mixed_tree(root: &Path) {
    let mode =
        |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    fs::create_dir(root).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::write(root.join("empty-file"), "").unwrap();
    // Only the owner-execute bit makes a file executable (docs/formats.md §1.1 rule 2).
    for (name, m) in [
        ("x-all", 0o755),
        ("x-owner", 0o744),
        ("x-group", 0o654),
        ("x-other", 0o645),
        ("x-none", 0o644),
    ] {
        fs::write(root.join(name), name).unwrap();
        mode(&root.join(name), m);
    }
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("/nix/store/abc-absolute", root.join("absolute")).unwrap();
    symlink("../outside/relative", root.join("relative")).unwrap();
    symlink("empty-dir", root.join("to-dir")).unwrap();
    symlink("a".repeat(1000), root.join("long-target")).unwrap();
    let sorting = root.join("sorting");
    fs::create_dir(&sorting).unwrap();
    for name in [
        &b"a"[..],
        b"a-b",
        b"a.b",
        b"a b",
        b"B",
        b"Z",
        b"_",
        b"~",
        b"\xc3\xa9",
        b"\xff\xfe",
        b"\x80",
        b"caf\xc3\xa9",
        b"new\nline",
        b"x~nix~case~hack~1",
        &[b'n'; 255],
    ] {
        fs::write(sorting.join(OsStr::from_bytes(name)), name).unwrap();
    }
    // Directory and file names that compare around `/`.
    fs::create_dir(sorting.join("a0")).unwrap();
    fs::write(sorting.join("a0/inner"), "").unwrap();
}

/// Files around the contents buffer's size, with non-zero contents.
fn make_chunk_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    let chunk = 256 * 1024;
    for size in [1, 7, 8, 9, chunk - 1, chunk, chunk + 1, 4 * chunk + 3] {
        let contents: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
        fs::write(root.join(format!("f{size}")), contents).unwrap();
    }
}

/// Directories nested 50 deep, with a file at every level.
fn make_deep_tree(root: &Path) {
    let mut path = root.to_path_buf();
    for level in 0..50 {
        fs::create_dir(&path).unwrap();
        fs::write(path.join("level"), level.to_string()).unwrap();
        path.push("d");
    }
}

/// `dump` writes exactly what `nix-store --dump` writes, for single nodes
/// and for trees with every tricky case; and restoring that NAR and
/// dumping again gives it back.
#[test]
fn dump_matches_nix_store_dump() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    type Make = fn(&Path);
    let cases: [(&str, Make); 7] = [
        ("empty-file", |p| fs::write(p, "").unwrap()),
        ("executable", |p| {
            fs::write(p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
        }),
        ("top-symlink", |p| symlink("dangling/target", p).unwrap()),
        ("empty-dir", |p| fs::create_dir(p).unwrap()),
        ("mixed", make_mixed_tree),
        ("chunks", make_chunk_tree),
        ("deep", make_deep_tree),
    ];
    for (name, make) in cases {
        let path = tmp.path().join(name);
        make(&path);
        let ours = dump_bytes(&path);
        assert!(
            ours == nix_dump(&path),
            "{name}: dump differs from nix-store --dump"
        );

        let restored = tmp.path().join(format!("{name}.restored"));
        restore_default(&ours, &restored).unwrap();
        assert!(
            dump_bytes(&restored) == ours,
            "{name}: restore + dump differs"
        );
    }
}

/// The hash and size of `nix-store --dump <path>`, streamed.
fn nix_dump_summary(path: &Path) -> NarSummary {
    let mut child = nix_command("nix-store")
        .arg("--dump")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut hasher = HashingWriter::new(io::sink());
    let mut buf = vec![0; 1 << 20];
    loop {
        match stdout.read(&mut buf).unwrap() {
            0 => break,
            n => hasher.write_all(&buf[..n]).unwrap(),
        }
    }
    assert!(child.wait().unwrap().success());
    let (_, nar_hash, nar_size) = hasher.finish();
    NarSummary { nar_hash, nar_size }
}

/// A sparse 4.5 GiB file, past every 32-bit size: same hash and size as
/// Nix, in bounded memory. Nix and we read it at the same time.
#[test]
fn dump_of_sparse_file_over_4_gib_matches_nix() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sparse");
    let f = fs::File::create(&path).unwrap();
    f.set_len(9 << 29).unwrap();
    // A few real bytes past 4.5 GiB, so that the end is not only zeros.
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 9 << 29).unwrap();
    drop(f);

    let theirs = std::thread::scope(|s| {
        let nix = s.spawn(|| nix_dump_summary(&path));
        let ours = nar::hash_path(&path).unwrap();
        assert_eq!(ours, nix.join().unwrap());
        ours
    });
    assert_eq!(theirs.nar_size, 24 + 48 + 16 + 8 + (9 << 29) + 3 + 5 + 16);
}
