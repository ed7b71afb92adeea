//! The invalid NARs of `testdata/vectors/nar/invalid/` at every entry point:
//! each is refused with the byte offset of what is wrong (and the entry
//! path, when not the root), and leaves nothing behind.

use std::fs;
use std::path::PathBuf;

use tokio::io::AsyncReadExt as _;

use super::{assert_no_panic, assert_refused, made_up_hash, plain_narinfo, sha256_nix32};
use crate::common::{nixferry, stderr, vectors};
use crate::serve::{request, writable_server};

/// What every entry point must make of a vector.
enum Expect {
    /// A valid NAR (a control): `has_a` whether it has a regular file `a`.
    Valid { has_a: bool },
    /// Refused with this message.
    Invalid(&'static str),
}
use Expect::{Invalid, Valid};

/// Every vector, with its outcome (why each is invalid: the table of
/// `crates/core/tests/it/nar.rs`).
#[rustfmt::skip]
const VECTORS: &[(&str, Expect)] = &[
    ("bad_magic", Invalid("invalid NAR at byte 0: input doesn't look like a Nix archive")),
    ("case_pair_A_a", Valid { has_a: true }),
    ("contents_then_exec", Invalid("invalid NAR at byte 104: expected ')', found 'executable'")),
    ("contents_twice", Invalid("invalid NAR at byte 104: expected ')', found 'contents'")),
    ("duplicate", Invalid("invalid NAR at byte 320: duplicate directory entry 'a'")),
    ("entry_missing_node", Invalid("invalid NAR at byte 144 in 'a': expected 'node', found ')'")),
    ("entry_node_without_name", Invalid("invalid NAR at byte 112: expected 'name', found 'node'")),
    ("exec_nonempty", Invalid("invalid NAR at byte 96: executable marker has a non-empty value")),
    ("exec_twice", Invalid("invalid NAR at byte 104: expected 'contents', found 'executable'")),
    ("len_too_big", Invalid("invalid NAR at byte 24: expected '(', found a 9223372036854775808-byte string")),
    ("name_256", Invalid("invalid NAR at byte 128: file name of 256 bytes is longer than 255")),
    ("name_dot", Invalid("invalid NAR at byte 128: invalid file name '.'")),
    ("name_dotdot", Invalid("invalid NAR at byte 128: invalid file name '..'")),
    ("name_empty", Invalid("invalid NAR at byte 128: invalid file name ''")),
    ("name_high_bytes", Valid { has_a: false }),
    ("name_nul", Invalid("invalid NAR at byte 128: invalid file name 'a\\u{0}b'")),
    ("name_slash", Invalid("invalid NAR at byte 128: invalid file name 'a/b'")),
    ("no_contents", Invalid("invalid NAR at byte 72: expected 'executable' or 'contents', found ')'")),
    ("no_type", Invalid("invalid NAR at byte 40: expected 'type', found ')'")),
    ("nonzero_padding", Invalid("invalid NAR at byte 97: non-zero padding")),
    ("ok_basic", Valid { has_a: true }),
    ("sort_bytewise_Z_a", Valid { has_a: true }),
    ("sort_bytewise_high", Valid { has_a: true }),
    ("symlink_empty_target", Invalid("invalid NAR at byte 88: symlink target is empty")),
    ("symlink_no_target", Invalid("invalid NAR at byte 72: expected 'target', found ')'")),
    ("symlink_target_5000", Invalid("invalid NAR at byte 88: symlink target of 5000 bytes is longer than 4095")),
    ("symlink_target_nul", Invalid("invalid NAR at byte 88: symlink target 'abc\\u{0}def' contains a NUL byte")),
    ("top_symlink", Valid { has_a: false }),
    ("trailing_garbage", Invalid("invalid NAR at byte 120: data after the end of the NAR")),
    ("truncated", Invalid("invalid NAR at byte 112: unexpected end of data")),
    ("type_twice", Invalid("invalid NAR at byte 72: expected 'executable' or 'contents', found 'type'")),
    ("unknown_field", Invalid("invalid NAR at byte 72: expected 'executable' or 'contents', found 'foo'")),
    ("unknown_type", Invalid("invalid NAR at byte 56: unknown file type 'fifo'")),
    ("unsorted", Invalid("invalid NAR at byte 320: directory entries are not sorted ('a' after 'b')")),
];

fn vector(name: &str) -> PathBuf {
    vectors().join(format!("nar/invalid/{name}.nar"))
}

#[test]
fn the_table_covers_every_vector() {
    let mut on_disk: Vec<String> = fs::read_dir(vectors().join("nar/invalid"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".nar").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = VECTORS.iter().map(|(name, _)| *name).collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn the_decoder_refuses_them() {
    for (name, expect) in VECTORS {
        let data = fs::read(vector(name)).unwrap();
        match (nixferry::nar::validate(&data[..]), expect) {
            (Ok(_), Valid { .. }) => {}
            (Err(e), Invalid(message)) => assert_eq!(e.to_string(), *message, "{name}"),
            (got, _) => panic!("{name}: {got:?}"),
        }
    }
}

#[test]
fn nar_restore_ls_and_cat_refuse_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, expect) in VECTORS {
        let file = vector(name);
        let dest = tmp.path().join(name);
        let restore = nixferry()
            .args(["nar", "restore"])
            .arg(&file)
            .arg(&dest)
            .output()
            .unwrap();
        let ls = nixferry().args(["nar", "ls"]).arg(&file).output().unwrap();
        let cat = nixferry()
            .args(["nar", "cat"])
            .arg(&file)
            .arg("a")
            .output()
            .unwrap();
        match expect {
            Valid { has_a } => {
                assert!(restore.status.success(), "{name}: {}", stderr(&restore));
                assert!(dest.symlink_metadata().is_ok(), "{name}");
                assert!(ls.status.success(), "{name}: {}", stderr(&ls));
                if *has_a {
                    assert!(cat.status.success(), "{name}: {}", stderr(&cat));
                } else {
                    assert_refused(&cat, 2, "'a' does not exist in the NAR", name);
                }
            }
            Invalid(message) => {
                let said = format!("restoring into '{}': {message}", dest.display());
                assert_refused(&restore, 2, &said, name);
                // Nothing is left of a refused archive.
                assert!(dest.symlink_metadata().is_err(), "{name}: left behind");
                let said = format!("listing '{}': {message}", file.display());
                assert_refused(&ls, 2, &said, name);
                if *name == "duplicate" {
                    // `cat` reads a NAR only up to the end of the file it
                    // shows: here the first of the two entries `a`.
                    assert!(cat.status.success(), "{name}: {}", stderr(&cat));
                } else {
                    let said = format!("reading 'a' from '{}': {message}", file.display());
                    assert_refused(&cat, 2, &said, name);
                }
            }
        }
    }
}

#[test]
fn copies_out_of_a_binary_cache_refuse_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let mut paths = Vec::new();
    for (i, (name, _)) in VECTORS.iter().enumerate() {
        let nar = fs::read(vector(name)).unwrap();
        let hash = made_up_hash(i);
        fs::write(cache.join(format!("nar/{}.nar", sha256_nix32(&nar))), &nar).unwrap();
        let narinfo = plain_narinfo(&hash, name, &nar);
        fs::write(cache.join(format!("{hash}.narinfo")), narinfo).unwrap();
        paths.push(format!("/nix/store/{hash}-{name}"));
    }
    let dest = tmp.path().join("dest");
    let out = nixferry()
        .args(["copy", "--no-check-sigs", "--from"])
        .arg(format!("file://{}", cache.display()))
        .arg("--to")
        .arg(format!("file://{}", dest.display()))
        .args(&paths)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_panic(&out, "copy");
    let err = stderr(&out);
    for (i, (name, expect)) in VECTORS.iter().enumerate() {
        let hash = made_up_hash(i);
        let copied = dest.join(format!("{hash}.narinfo")).exists();
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{hash}-{name}: ")));
        match expect {
            Valid { .. } => assert!(copied && line.is_none(), "{name}: {err}"),
            Invalid(message) => {
                assert!(!copied, "{name} was copied");
                let line = line.unwrap_or_else(|| panic!("{name}: not named in {err}"));
                assert!(line.contains(message), "{name}: {line}");
            }
        }
    }
}

#[test]
fn uploads_refuse_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, dest) = writable_server(tmp.path(), "nar-token");
    let auth = [("Authorization", "Bearer nar-token")];
    for (i, (name, expect)) in VECTORS.iter().enumerate() {
        let nar = fs::read(vector(name)).unwrap();
        let hash = made_up_hash(i);
        let nar_path = format!("/nar/{}.nar", sha256_nix32(&nar));
        // The NAR file is named after its content: taken as it is.
        let r = request(server.port, "PUT", &nar_path, &auth, Some(&nar));
        assert_eq!(r.status, 200, "{name}");
        let narinfo = plain_narinfo(&hash, name, &nar);
        let narinfo_path = format!("/{hash}.narinfo");
        let r = request(
            server.port,
            "PUT",
            &narinfo_path,
            &auth,
            Some(narinfo.as_bytes()),
        );
        let body = String::from_utf8_lossy(&r.body);
        let stored = dest.join(format!("{hash}.narinfo")).exists();
        match expect {
            Valid { .. } => assert!(r.status == 200 && stored, "{name}: {body}"),
            Invalid(message) => {
                assert_eq!(r.status, 400, "{name}: {body}");
                let said = format!("the narinfo does not match its NAR file: {message}");
                assert!(body.contains(&said), "{name}: {body}");
                assert!(!stored, "{name}: stored");
            }
        }
    }
}

/// What the serve protocol client makes of each vector as a DumpStorePath
/// reply: its own framing check (which must find the NAR's end without a
/// decoder) refuses what the decoder refuses, at the same offset of the
/// offending token (of its string, for bad padding), in its own words.
/// `None`: read as a NAR. Bytes after a NAR's end are the next reply, so
/// `trailing_garbage` is read as the NAR it starts with; a short reply is
/// a hang-up.
#[rustfmt::skip]
const SERVE_REPLIES: &[(&str, Option<&str>)] = &[
    ("bad_magic", Some("expected NAR magic 'nix-archive-1', found 'nix-archive-2' (at NAR byte 0)")),
    ("case_pair_A_a", None),
    ("contents_then_exec", Some("expected ')', found 'executable' (at NAR byte 104)")),
    ("contents_twice", Some("expected ')', found 'contents' (at NAR byte 104)")),
    ("duplicate", Some("duplicate directory entry 'a' (at NAR byte 320)")),
    ("entry_missing_node", Some("expected 'node', found ')' (at NAR byte 144)")),
    ("entry_node_without_name", Some("expected 'name', found 'node' (at NAR byte 112)")),
    ("exec_nonempty", Some("a 1-byte empty 'executable' value where at most 0 bytes are allowed (at NAR byte 96)")),
    ("exec_twice", Some("expected 'contents', found 'executable' (at NAR byte 104)")),
    ("len_too_big", Some("a 9223372036854775808-byte '(' where at most 32 bytes are allowed (at NAR byte 24)")),
    ("name_256", Some("a 256-byte valid entry name where at most 255 bytes are allowed (at NAR byte 128)")),
    ("name_dot", Some("expected valid entry name, found '.' (at NAR byte 128)")),
    ("name_dotdot", Some("expected valid entry name, found '..' (at NAR byte 128)")),
    ("name_empty", Some("an empty valid entry name (at NAR byte 128)")),
    ("name_high_bytes", None),
    ("name_nul", Some("expected valid entry name, found 'a\\x00b' (at NAR byte 128)")),
    ("name_slash", Some("expected valid entry name, found 'a/b' (at NAR byte 128)")),
    ("no_contents", Some("expected 'executable' or 'contents', found ')' (at NAR byte 72)")),
    ("no_type", Some("expected 'type', found ')' (at NAR byte 40)")),
    ("nonzero_padding", Some("non-zero padding (at NAR byte 88)")),
    ("ok_basic", None),
    ("sort_bytewise_Z_a", None),
    ("sort_bytewise_high", None),
    ("symlink_empty_target", Some("an empty valid symlink target (at NAR byte 88)")),
    ("symlink_no_target", Some("expected 'target', found ')' (at NAR byte 72)")),
    ("symlink_target_5000", Some("a 5000-byte valid symlink target where at most 4095 bytes are allowed (at NAR byte 88)")),
    ("symlink_target_nul", Some("expected valid symlink target, found 'abc\\x00def' (at NAR byte 88)")),
    ("top_symlink", None),
    ("trailing_garbage", None),
    ("truncated", Some("reading the NAR: the connection was closed after 112 bytes of the NAR")),
    ("type_twice", Some("expected 'executable' or 'contents', found 'type' (at NAR byte 72)")),
    ("unknown_field", Some("expected 'executable' or 'contents', found 'foo' (at NAR byte 72)")),
    ("unknown_type", Some("expected node type, found 'fifo' (at NAR byte 56)")),
    ("unsorted", Some("directory entries are not sorted ('a' after 'b') (at NAR byte 320)")),
];

#[tokio::test]
async fn serve_protocol_nar_replies_refuse_them() {
    use nixferry::store::serve::ServeConnection;
    use nixferry::store_path::StoreDir;

    let serve_names: Vec<&str> = SERVE_REPLIES.iter().map(|(n, _)| *n).collect();
    let names: Vec<&str> = VECTORS.iter().map(|(n, _)| *n).collect();
    assert_eq!(serve_names, names);
    let handshake = fs::read(vectors().join("serve/00-handshake.response.bin")).unwrap();
    let path = StoreDir::default()
        .parse("/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree")
        .unwrap();
    for (name, expect) in SERVE_REPLIES {
        let nar = fs::read(vector(name)).unwrap();
        let reply = [&handshake[..], &nar].concat();
        let mut conn = ServeConnection::handshake(
            std::io::Cursor::new(reply),
            Vec::new(),
            StoreDir::default(),
        )
        .await
        .unwrap();
        let mut reader = conn.dump_store_path(&path).await.unwrap();
        let mut got = Vec::new();
        let read = reader.read_to_end(&mut got).await;
        match expect {
            None => {
                read.unwrap_or_else(|e| panic!("{name}: {e}"));
                let end = if *name == "trailing_garbage" {
                    120
                } else {
                    nar.len()
                };
                assert_eq!(got, nar[..end], "{name}");
            }
            Some(message) if *name == "truncated" => {
                let e = read.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{name}: {e}");
                assert_eq!(e.to_string(), *message, "{name}");
            }
            Some(message) => {
                let e = read.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{name}: {e}");
                let said = format!("the NAR from the server is invalid: {message}");
                assert_eq!(e.to_string(), said, "{name}");
            }
        }
    }
}
