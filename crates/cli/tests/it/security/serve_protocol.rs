//! Hostile `nix-store --serve` servers: `nixferry copy --from ssh://…`
//! against a server whose replies are scripted (an `ssh` in `PATH` that
//! prints them, whatever it is asked). Every case fails with its message,
//! leaves nothing behind, and never panics or allocates what a length
//! field claims.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use super::assert_refused;
use crate::common::{nixferry, stderr, vectors};

const TREE: &str = "/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree";
const TREE_HASH: &str = "sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d";
const HI: &str = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
const MAGIC: u64 = 0x5452_eecb;

fn u64le(v: &mut Vec<u8>, n: u64) {
    v.extend_from_slice(&n.to_le_bytes());
}

/// A string of the protocol: its length, its bytes, zero padding to 8.
fn string(v: &mut Vec<u8>, s: &[u8]) {
    u64le(v, s.len() as u64);
    v.extend_from_slice(s);
    v.resize(v.len() + (8 - s.len() % 8) % 8, 0);
}

/// The server's side of the handshake: its magic number and version.
fn handshake(magic: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::new();
    u64le(&mut v, magic);
    u64le(&mut v, version);
    v
}

/// A QueryClosure reply.
fn closure(paths: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    u64le(&mut v, paths.len() as u64);
    for p in paths {
        string(&mut v, p.as_bytes());
    }
    v
}

/// A QueryPathInfos reply with one path info (of `tree.nar`'s size and,
/// unless given, hash).
fn info(path: &[u8], references: u64, nar_hash: &str) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, path);
    string(&mut v, b""); // deriver
    u64le(&mut v, references);
    u64le(&mut v, 1648); // download size
    u64le(&mut v, 1648); // NAR size
    string(&mut v, nar_hash.as_bytes());
    string(&mut v, b""); // content address
    u64le(&mut v, 0); // signatures
    string(&mut v, b""); // end of the list
    v
}

fn nar(name: &str) -> Vec<u8> {
    fs::read(vectors().join(name)).unwrap()
}

/// A server that sends the handshake, the closure of `TREE`, its path
/// info and then `rest` (the NAR).
fn up_to_the_nar(rest: &[u8]) -> Vec<u8> {
    [
        handshake(MAGIC, 0x207),
        closure(&[TREE]),
        info(TREE.as_bytes(), 0, TREE_HASH),
        rest.to_vec(),
    ]
    .concat()
}

/// A NAR of one regular file claiming 2^60 bytes, of which 1000 come.
fn endless_nar() -> Vec<u8> {
    let mut v = Vec::new();
    for token in ["nix-archive-1", "(", "type", "regular", "contents"] {
        string(&mut v, token.as_bytes());
    }
    u64le(&mut v, 1 << 60);
    v.extend_from_slice(&[7; 1000]);
    v
}

/// The scripted servers, each with the exit code and message of a copy
/// from it.
fn cases() -> Vec<(&'static str, Vec<u8>, i32, &'static str)> {
    let good = handshake(MAGIC, 0x207);
    let after_handshake = |reply: Vec<u8>| [good.clone(), reply].concat();
    let bad_handshake = "the handshake from the server is invalid";
    let bad_closure = "the closure from the server is invalid";
    vec![
        // Handshakes.
        // The server may be gone before the client's greeting is written.
        ("no reply", Vec::new(), 2, " the handshake"),
        (
            "a greeting shell",
            b"Welcome to my shell!\n\0\0\0".to_vec(),
            2,
            bad_handshake,
        ),
        ("a wrong magic number", handshake(MAGIC + 1, 0x207), 2, bad_handshake),
        ("protocol 3.7", handshake(MAGIC, 0x307), 2, "3.7"),
        ("a version over 32 bits", handshake(MAGIC, 1 << 40), 2, "32 bits"),
        // The closure.
        // Whether the client's question or its wait for the answer meets
        // the hang-up first is a race: "writing QueryClosure: Broken
        // pipe" or "reading the closure: …".
        ("a hang-up", good.clone(), 2, "connection failed: "),
        (
            "2^62 paths",
            after_handshake({
                let mut v = Vec::new();
                u64le(&mut v, 1 << 62);
                v
            }),
            2,
            "4611686018427387904 items, more than the 16777216 accepted",
        ),
        (
            "a path of 2^62 bytes",
            after_handshake({
                let mut v = Vec::new();
                u64le(&mut v, 1);
                u64le(&mut v, 1 << 62);
                v
            }),
            2,
            bad_closure,
        ),
        (
            "a path outside the store",
            after_handshake(closure(&["/etc/passwd"])),
            2,
            "path '/etc/passwd' is not in the Nix store '/nix/store'",
        ),
        (
            "a path with ..",
            after_handshake(closure(&["/nix/store/../../etc/passwd"])),
            2,
            bad_closure,
        ),
        // The path infos.
        (
            "an info's path of 2^62 bytes",
            after_handshake(
                [closure(&[TREE]), {
                    let mut v = Vec::new();
                    u64le(&mut v, 1 << 62);
                    v
                }]
                .concat(),
            ),
            2,
            "a path info's path from the server is invalid",
        ),
        (
            "2^40 references",
            after_handshake([closure(&[TREE]), info(TREE.as_bytes(), 1 << 40, TREE_HASH)].concat()),
            2,
            "references",
        ),
        (
            "not a NAR hash",
            after_handshake([closure(&[TREE]), info(TREE.as_bytes(), 0, "sha256:xyz")].concat()),
            2,
            "a path info's NAR hash from the server is invalid",
        ),
        (
            "an info not asked about",
            after_handshake([closure(&[TREE]), info(HI.as_bytes(), 0, TREE_HASH)].concat()),
            2,
            "not asked about",
        ),
        // The NAR.
        (
            "an invalid NAR",
            up_to_the_nar(&nar("nar/invalid/name_dotdot.nar")),
            1,
            "the NAR from the server is invalid: expected valid entry name, found '..' (at NAR byte 128)",
        ),
        (
            "a NAR cut short",
            up_to_the_nar(&endless_nar()),
            1,
            "connection failed: reading the NAR: the connection was closed after 1096 bytes of the NAR",
        ),
        (
            "another NAR",
            up_to_the_nar(&nar("nar/hi.nar")),
            1,
            "does not match its path info: NAR size mismatch: expected 1648 bytes, got 120",
        ),
    ]
}

#[test]
fn copies_from_hostile_serve_servers_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let ssh = bin.join("ssh");
    // It sends its replies, then stays until the client is done, reading
    // its requests; or, with `HANG_UP`, exits at once (while a child of it
    // still reads the requests, so that writing them never fails).
    let script = "#!/bin/sh\n\
        [ -n \"$HANG_UP\" ] && cat >/dev/null 2>&1 &\n\
        cat \"$SCRIPTED_REPLY\"\n\
        [ -n \"$HANG_UP\" ] || exec cat >/dev/null 2>&1\n";
    fs::write(&ssh, script).unwrap();
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let copy = |name: &str, reply: &[u8], hang_up: bool| {
        let file = tmp.path().join("reply");
        fs::write(&file, reply).unwrap();
        let dest = tmp.path().join(format!("dest-{}", name.replace(' ', "-")));
        let out = nixferry()
            .args(["copy", "--retries", "0", "--no-check-sigs"])
            .args(["--from", "ssh://scripted", "--to"])
            .arg(format!("file://{}", dest.display()))
            .arg(TREE)
            .env("PATH", &path)
            .env("SCRIPTED_REPLY", &file)
            .env("HANG_UP", if hang_up { "1" } else { "" })
            .output()
            .unwrap();
        let copied = dest
            .join("rsjiq56rggpz3zk7marf4by5qgdya80h.narinfo")
            .exists();
        (out, copied)
    };

    // The script is followed: a server that sends what Nix would is
    // copied from.
    let (out, copied) = copy("control", &up_to_the_nar(&nar("nar/tree.nar")), false);
    assert!(out.status.success() && copied, "{}", stderr(&out));

    for (name, reply, code, says) in cases() {
        // A server that hangs up exits; the others stay until the client
        // is done (else it would take a server that exited for a dropped
        // connection and open another).
        let hang_up = matches!(name, "no reply" | "a hang-up");
        let (out, copied) = copy(name, &reply, hang_up);
        assert_refused(&out, code, says, name);
        assert!(!copied, "{name}: copied");
    }
}
