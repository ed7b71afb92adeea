//! Tests: the local store backend (`store::local`).
//!
//! Against the database Nix 2.8 wrote (`vectors/db/`), set up as a chroot
//! store, and against this machine's real Nix store: path infos equal to
//! `nix path-info --json`, closures equal to `nix-store -qR`, NARs equal to
//! `nix-store --dump`, and a chroot store written by `nix copy`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nixferry::closure;
use nixferry::hash::{HashAlgo, NixHash};
use nixferry::nar::{self, RestoreOptions};
use nixferry::store::local::LocalStore;
use nixferry::store::{PathInfo, Store, StoreError, StoreUrl};
use nixferry::store_path::{ContentAddress, StoreDir, StorePath};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

use crate::common::{have_nix, nix_command, read_vector, skip, vector};

fn open(url: &str) -> LocalStore {
    LocalStore::open(&StoreUrl::parse(url).unwrap()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn open_err(url: &str) -> StoreError {
    LocalStore::open(&StoreUrl::parse(url).unwrap()).unwrap_err()
}

fn root_url(root: &Path) -> String {
    format!("local?root={}", root.display())
}

fn path(full: &str) -> StorePath {
    StoreDir::default().parse(full).unwrap()
}

/// A chroot store holding `vectors/db/example-db.sqlite` as its database,
/// with no files in its store directory.
fn vector_chroot() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("nix/var/nix/db");
    fs::create_dir_all(&db).unwrap();
    fs::create_dir_all(root.path().join("nix/store")).unwrap();
    fs::write(db.join("db.sqlite"), read_vector("db/example-db.sqlite")).unwrap();
    fs::write(db.join("schema"), "10").unwrap();
    root
}

const HI: &str = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
const DRV_OUT: &str = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
const TREE: &str = "/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree";

/// The rows of `vectors/db/example-rows.txt` as path infos: the
/// `ValidPaths` rows, then the `Refs` rows by id.
fn example_rows() -> BTreeMap<StorePath, PathInfo> {
    let text = String::from_utf8(read_vector("db/example-rows.txt")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id|path|hash|registrationTime|deriver|narSize|ultimate|sigs|ca")
    );
    let mut by_id = BTreeMap::new();
    for line in lines.by_ref() {
        if line == "referrer|reference" {
            break;
        }
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 9, "{line}");
        // The database keeps narHash as `sha256:<base16>` (docs/formats.md §6.3).
        let hex = f[2].strip_prefix("sha256:").unwrap();
        let hash = NixHash::from_bytes(HashAlgo::Sha256, &nixferry::hash::from_hex(hex).unwrap());
        let mut info = PathInfo::new(path(f[1]), hash.unwrap(), f[5].parse().unwrap());
        info.registration_time = f[3].parse().unwrap();
        info.deriver = (!f[4].is_empty()).then(|| path(f[4]));
        info.ultimate = f[6] == "1";
        info.signatures = f[7]
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        info.ca = (!f[8].is_empty()).then(|| ContentAddress::parse(f[8]).unwrap());
        by_id.insert(f[0].to_owned(), info);
    }
    for line in lines {
        let (from, to) = line.split_once('|').unwrap();
        let to = by_id[to].path.clone();
        by_id.get_mut(from).unwrap().references.push(to);
    }
    by_id
        .into_values()
        .map(|mut i| {
            i.references.sort();
            (i.path.clone(), i)
        })
        .collect()
}

#[tokio::test]
async fn reads_the_database_nix_2_8_wrote() {
    let root = vector_chroot();
    let store = open(&root_url(root.path()));
    let absent = path("/nix/store/00000000000000000000000000000000-absent");
    let asked = [path(HI), path(DRV_OUT), path(TREE), absent.clone()];
    let infos = store.query_path_infos(&asked).await.unwrap();
    assert_eq!(infos, example_rows());
    assert!(!infos.contains_key(&absent), "absent paths are left out");

    // The same facts, spelled out against values computed elsewhere.
    let hi = &infos[&path(HI)];
    // sha256(hi.nar), `vectors/nar/nar-hashes.txt`.
    assert_eq!(
        hi.nar_hash.to_sri(),
        "sha256-IlLUt4yU6Mes5OMxe3i9/mS8jjlwpk620vfCpEPAw/w="
    );
    assert_eq!((hi.nar_size, hi.registration_time), (120, 1795300568));
    assert_eq!(
        (hi.deriver.as_ref(), hi.ca, hi.ultimate),
        (None, None, false)
    );
    assert!(hi.references.is_empty() && hi.signatures.is_empty());
    let out = &infos[&path(DRV_OUT)];
    assert_eq!(
        out.references,
        [path(HI), path(DRV_OUT)],
        "self-reference kept"
    );
    assert_eq!(
        out.deriver,
        Some(path(
            "/nix/store/8blcypg4m49dd0i8ac2radb217vsrwgs-nixspec-drv.drv"
        ))
    );
    assert!(out.nar_hash.to_nix32().starts_with("11q31cd"));
    let tree = &infos[&path(TREE)];
    assert_eq!(tree.registration_time, 1700000000);
    assert_eq!(
        tree.ca.unwrap().to_string(),
        "fixed:r:sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d"
    );
    assert_eq!(
        tree.ca.unwrap().hash(),
        &tree.nar_hash,
        "recursive CA is the NAR hash"
    );
    assert!(tree.ca_verifies(store.store_dir()));

    assert!(store.query_path_infos(&[]).await.unwrap().is_empty());
    // References outside the paths asked about are looked up too.
    let alone = store.query_path_infos(&[path(DRV_OUT)]).await.unwrap();
    assert_eq!(alone[&path(DRV_OUT)], example_rows()[&path(DRV_OUT)]);
}

#[tokio::test]
async fn paths_are_found_by_hash_part() {
    let root = vector_chroot();
    let store = open(&root_url(root.path()));
    for (p, info) in example_rows() {
        let found = store
            .query_path_from_hash_part(p.hash_part())
            .await
            .unwrap();
        assert_eq!(found.as_ref(), Some(&info), "{p}");
    }
    // A hash part no path has; one that is a prefix of another's; not a
    // hash part at all (nothing reaches the query).
    let hi = path(HI);
    let prefix = &hi.hash_part()[..31];
    for absent in [
        "00000000000000000000000000000000",
        &format!("{prefix}0"),
        &format!("{prefix}z"),
        "3pl2infwzaw2zw5fxxp3pvm3xasr0w4%",
        "",
    ] {
        assert_eq!(
            store.query_path_from_hash_part(absent).await.unwrap(),
            None,
            "{absent}"
        );
    }
}

/// Following the store: the rows after an id, oldest first, as many as
/// asked; the last id (row ids are those of `vectors/db/example-rows.txt`).
#[tokio::test]
async fn paths_registered_after_a_row() {
    let root = vector_chroot();
    let store = open(&root_url(root.path()));
    assert_eq!(store.last_registered().await.unwrap(), 3);
    let all = [(1, path(HI)), (2, path(DRV_OUT)), (3, path(TREE))];
    assert_eq!(store.registered_after(0, 10).await.unwrap(), all);
    assert_eq!(store.registered_after(1, 1).await.unwrap(), all[1..2]);
    assert_eq!(store.registered_after(2, 10).await.unwrap(), all[2..]);
    assert!(store.registered_after(3, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn vector_closure_and_validity() {
    let root = vector_chroot();
    let store = open(&root_url(root.path()));
    let absent = path("/nix/store/00000000000000000000000000000000-absent");
    let valid = store
        .query_valid_paths(&[path(TREE), absent.clone(), path(HI)])
        .await
        .unwrap();
    assert_eq!(valid, BTreeSet::from([path(HI), path(TREE)]));

    let rows = example_rows();
    let by_cte = store.closure(&[path(DRV_OUT)]).await.unwrap();
    assert_eq!(
        by_cte.keys().collect::<Vec<_>>(),
        [&path(HI), &path(DRV_OUT)]
    );
    assert!(by_cte.values().all(|i| i == &rows[&i.path]));
    let all = store
        .closure(&[path(TREE), path(DRV_OUT), path(HI)])
        .await
        .unwrap();
    assert_eq!(all, rows);

    let walked = closure::compute(&store, &[path(DRV_OUT)]).await.unwrap();
    assert_eq!(
        walked.paths().collect::<Vec<_>>(),
        [&path(HI), &path(DRV_OUT)]
    );
    assert_eq!(walked.nar_size(), 120 + 808);
    assert_eq!(
        walked.download_size(),
        None,
        "a local store has no NAR files"
    );

    let e = store
        .closure(&[path(HI), absent.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::NotFound { path, .. } if path.ends_with("-absent")),
        "{e}"
    );
    let e = closure::compute(&store, &[absent]).await.unwrap_err();
    assert!(e.to_string().contains("-absent' is not valid"), "{e}");
}

#[tokio::test]
async fn vector_nars_are_dumped_from_the_real_store_dir() {
    let root = vector_chroot();
    let real = root.path().join("nix/store");
    for (full, nar_file) in [(HI, "nar/hi.nar"), (TREE, "nar/tree.nar")] {
        let dest = real.join(path(full).as_str());
        nar::restore(
            &read_vector(nar_file)[..],
            &dest,
            &RestoreOptions::default(),
        )
        .unwrap();
    }
    let store = open(&root_url(root.path()));
    assert_eq!(store.real_store_dir(), real);
    let infos = store
        .query_path_infos(&[path(HI), path(TREE), path(DRV_OUT)])
        .await
        .unwrap();
    for (full, nar_file) in [(HI, "nar/hi.nar"), (TREE, "nar/tree.nar")] {
        let info = &infos[&path(full)];
        let bytes = read_nar(&store, info).await.unwrap();
        assert_eq!(bytes, read_vector(nar_file), "{full}");
        assert_eq!(NixHash::digest(HashAlgo::Sha256, &bytes), info.nar_hash);
    }
    // Registered, but its files are not there.
    let e = store.nar(&infos[&path(DRV_OUT)]).await.err().unwrap();
    assert!(
        matches!(&e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(
        e.to_string()
            .contains("jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"),
        "{e}"
    );
}

/// A path info for a made-up path `name` (`nar` does not look at the
/// database).
fn unregistered(name: &str) -> PathInfo {
    let digest: [u8; 20] = nixferry::hash::sha256(name.as_bytes())[..20]
        .try_into()
        .unwrap();
    PathInfo::new(
        StorePath::from_digest(&digest, name).unwrap(),
        NixHash::sha256([0; 32]),
        0,
    )
}

#[tokio::test]
async fn nar_streams_are_bounded_and_report_failures() {
    let root = vector_chroot();
    let real = root.path().join("nix/store");
    let store = open(&root_url(root.path()));

    // 8 MiB of NAR, read in small steps: the stream holds a few chunks
    // at a time, and yields every byte in order.
    let big = unregistered("big");
    let file: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(real.join(big.path.as_str()), &file).unwrap();
    let mut stream = store.nar(&big).await.unwrap();
    let mut nar_bytes = Vec::new();
    let mut buf = [0u8; 4000];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        nar_bytes.extend_from_slice(&buf[..n]);
    }
    let mut expected = Vec::new();
    nar::dump(&real.join(big.path.as_str()), &mut expected).unwrap();
    assert!(
        nar_bytes == expected,
        "NAR read in steps differs from nar::dump"
    );

    // A reader that stops early lets the dumping thread end (or the
    // runtime could not shut down at the end of this test).
    let mut stream = store.nar(&big).await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    drop(stream);

    // A file a NAR cannot hold: the stream fails instead of ending early.
    let odd = unregistered("odd");
    let dir = real.join(odd.path.as_str());
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), vec![7u8; 1 << 20]).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("b-fifo"))
        .status();
    if fifo.is_ok_and(|s| s.success()) {
        let e = read_nar(&store, &odd).await.unwrap_err();
        assert!(e.to_string().contains("b-fifo"), "{e}");
        assert!(e.to_string().contains("unsupported type"), "{e}");
    }
}

async fn read_nar(store: &dyn Store, info: &PathInfo) -> std::io::Result<Vec<u8>> {
    let mut stream = store.nar(info).await.map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[test]
fn url_forms_and_parameters() {
    let root = vector_chroot();
    let r = root.path();
    for url in [
        root_url(r),
        r.display().to_string(),
        format!(
            "local?state={0}/nix/var/nix&real={0}/nix/store",
            r.display()
        ),
    ] {
        let store = open(&url);
        assert_eq!(store.url(), url);
        assert_eq!(store.store_dir().as_str(), "/nix/store");
        assert_eq!(store.real_store_dir(), r.join("nix/store"), "{url}");
        assert_eq!(store.db_path(), r.join("nix/var/nix/db/db.sqlite"), "{url}");
        let caps = store.capabilities();
        assert!(caps.needs_references_first && caps.keeps_signatures && caps.trusted_source);
        assert!(!caps.signs && caps.writes_compression.is_none());
    }
    // A different logical store directory; Nix 2.8 keeps a chroot store's
    // files at `<root>/nix/store` regardless.
    let store = open(&format!("{}&store=/gnu/store", root_url(r)));
    assert_eq!(store.store_dir().as_str(), "/gnu/store");
    assert_eq!(store.real_store_dir(), r.join("nix/store"));
    // The machine's store.
    for url in ["local", "/nix/store", "auto"] {
        let Ok(store) = LocalStore::open(&StoreUrl::parse(url).unwrap()) else {
            continue;
        };
        assert_eq!(store.real_store_dir(), Path::new("/nix/store"));
        assert_eq!(store.db_path(), Path::new("/nix/var/nix/db/db.sqlite"));
    }
    let e = open_err("local?root=relative").to_string();
    assert!(e.contains("absolute path"), "{e}");
    let e = open_err("local?store=/nix/store/").to_string();
    assert!(e.contains("'store'"), "{e}");
}

#[tokio::test]
async fn refuses_what_it_cannot_read() {
    let root = vector_chroot();
    let db = root.path().join("nix/var/nix/db");
    let url = root_url(root.path());

    fs::write(db.join("schema"), "7").unwrap();
    let e = open_err(&url);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("version '7'") && msg.contains("only version 10"),
        "{msg}"
    );

    fs::remove_file(db.join("schema")).unwrap();
    let msg = open_err(&url).to_string();
    assert!(
        msg.contains("schema") && msg.contains("is this a Nix store"),
        "{msg}"
    );

    fs::write(db.join("schema"), "10\n").unwrap();
    fs::remove_file(db.join("db.sqlite")).unwrap();
    let msg = open_err(&url).to_string();
    assert!(
        msg.contains("db.sqlite") && msg.contains("No such file"),
        "{msg}"
    );

    fs::write(db.join("db.sqlite"), b"not a database, just some bytes").unwrap();
    let e = open_err(&url);
    assert!(matches!(e, StoreError::Database { .. }), "{e}");

    // A chroot store whose database directory is missing altogether is
    // created, as Nix creates one (when Nix is here to do it).
    let empty = tempfile::tempdir().unwrap();
    match LocalStore::open(&StoreUrl::parse(&root_url(empty.path())).unwrap()) {
        Ok(store) => assert!(store.closure(&[path(HI)]).await.is_err()),
        Err(e) => assert!(e.to_string().contains("is this a Nix store"), "{e}"),
    }
}

/// Paths added to a local store go through `nix-store --serve --write`:
/// a chroot store that does not exist yet is created, the path is
/// registered with its metadata, and a NAR that does not match is refused
/// with nothing registered.
#[tokio::test]
async fn adding_paths_goes_through_nix() {
    if !have_nix() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("hello"), "hello from a local store test\n").unwrap();
    let mut nar = Vec::new();
    let summary = nar::dump(src.path(), &mut nar).unwrap();
    let ca = ContentAddress::Fixed {
        method: nixferry::store_path::FileIngestion::Recursive,
        hash: summary.nar_hash,
    };
    let p = StoreDir::default()
        .make_ca_path("local-add-test", &ca, &[], false)
        .unwrap();
    let mut info = PathInfo::new(p.clone(), summary.nar_hash, summary.nar_size);
    info.ca = Some(ca);

    let root = tempfile::tempdir().unwrap();
    let url = root_url(&root.path().join("fresh"));
    let store = open(&url);
    assert!(store
        .query_valid_paths(std::slice::from_ref(&p))
        .await
        .unwrap()
        .is_empty());

    let mut bad = nar.clone();
    let at = bad.len() - 20;
    bad[at] ^= 1;
    let e = store
        .add_path(&info, Box::pin(std::io::Cursor::new(bad)))
        .await;
    assert!(e.is_err(), "a corrupt NAR was accepted");
    let store = open(&url);
    assert!(store
        .query_valid_paths(std::slice::from_ref(&p))
        .await
        .unwrap()
        .is_empty());

    store
        .add_path(&info, Box::pin(std::io::Cursor::new(nar.clone())))
        .await
        .unwrap();
    let got = store
        .query_path_infos(std::slice::from_ref(&p))
        .await
        .unwrap();
    let got = &got[&p];
    assert_eq!((got.nar_hash, got.nar_size), (info.nar_hash, info.nar_size));
    assert_eq!(got.ca, info.ca);
    let mut dumped = Vec::new();
    store
        .nar(got)
        .await
        .unwrap()
        .read_to_end(&mut dumped)
        .await
        .unwrap();
    assert_eq!(dumped, nar);
}

#[tokio::test]
async fn read_only_opens_the_database_as_immutable() {
    let root = vector_chroot();
    let store = open(&format!("{}&read-only=true", root_url(root.path())));
    assert_eq!(store.closure(&[path(DRV_OUT)]).await.unwrap().len(), 2);
    let e = open_err(&format!("{}&read-only=maybe", root_url(root.path())));
    assert!(e.to_string().contains("read-only"), "{e}");
}

/// With `use-sqlite-wal = false` Nix keeps a rollback journal and locks
/// with the `unix-dotfile` VFS; such a database reads the same.
#[tokio::test]
async fn reads_a_database_without_wal() {
    let root = vector_chroot();
    let db = root.path().join("nix/var/nix/db/db.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = truncate", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "truncate");
    drop(conn);
    let header = fs::read(&db).unwrap();
    assert_eq!(header[18..20], [1, 1], "no longer WAL");
    let store = open(&root_url(root.path()));
    assert_eq!(store.closure(&[path(DRV_OUT)]).await.unwrap().len(), 2);
}

/// Set in the child process of [`unprivileged_reader_gets_a_clear_error`]
/// to the chroot it should open.
const UNPRIVILEGED_ROOT: &str = "NIXFERRY_TEST_UNPRIVILEGED_ROOT";

/// docs/formats.md §6.5: a user who cannot write the database directory cannot open a
/// WAL database that no Nix process holds open. The error must say so and
/// name the way out; `read-only=true` must then work. Runs this test again
/// as `nobody`, when running as root with `runuser` at hand.
#[tokio::test]
async fn unprivileged_reader_gets_a_clear_error() {
    if let Some(root) = std::env::var_os(UNPRIVILEGED_ROOT) {
        let url = root_url(Path::new(&root));
        match LocalStore::open(&StoreUrl::parse(&url).unwrap()) {
            Ok(_) => println!("CHILD: opened"),
            Err(e) => println!("CHILD: error: {e}"),
        }
        let store = open(&format!("{url}&read-only=true"));
        let n = store.closure(&[path(DRV_OUT)]).await.unwrap().len();
        println!("CHILD: read-only closure has {n} paths");
        return;
    }
    let is_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let exe = std::env::current_exe().unwrap();
    let can_run = |args: &[&str]| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !is_root || !can_run(&["test", "-x", exe.to_str().unwrap()]) {
        skip("needs root, runuser, and a test binary that the user nobody can run");
        return;
    }
    let root = vector_chroot();
    for dir in [
        "",
        "nix",
        "nix/var",
        "nix/var/nix",
        "nix/var/nix/db",
        "nix/store",
    ] {
        let dir = root.path().join(dir);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "local_store::unprivileged_reader_gets_a_clear_error",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(UNPRIVILEGED_ROOT, root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest prints the test's name on the same line.
    let error = stdout
        .split_once("CHILD: error: ")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("opening should fail for nobody: {stdout}"));
    for part in [
        "db.sqlite",
        "attempt to write a readonly database",
        "without write access to",
        "read-only=true",
    ] {
        assert!(error.contains(part), "'{part}' missing from: {error}");
    }
    assert!(
        stdout.contains("CHILD: read-only closure has 2 paths"),
        "{stdout}"
    );
}

// Against the real Nix store.

/// Paths built by [`fixture`], in full.
struct Fixture {
    a: String,
    b: String,
    c: String,
    self_ref: String,
    /// The derivation of `c`.
    c_drv: String,
}

/// Derivations with `builder = "/bin/sh"`: `a` is a tree with a 1 MiB
/// file of every byte value, an executable, a symlink and an empty
/// directory; `b` refers to `a`; `self` refers to itself; `c` refers to
/// `a`, `b`, `self` and a `builtins.toFile` text (a `text:` CA path).
const FIXTURE_NIX: &str = r#"
let
  sh = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  note = builtins.toFile "nixferry-localstore-note" "a text file, referenced by c\n";
in rec {
  a = sh "nixferry-localstore-a" ''
    set -e
    /bin/mkdir -p $out/bin $out/share $out/empty
    i=0
    while [ $i -lt 256 ]; do printf "\\$(printf %o $i)"; i=$((i+1)); done > $out/share/bytes
    j=0
    while [ $j -lt 12 ]; do
      /bin/cat $out/share/bytes $out/share/bytes > $out/share/tmp
      /bin/mv $out/share/tmp $out/share/bytes
      j=$((j+1))
    done
    printf '#!/bin/sh\necho hello\n' > $out/bin/hello
    /bin/chmod +x $out/bin/hello
    /bin/ln -s ../share/bytes $out/bin/link
  '';
  b = sh "nixferry-localstore-b" ''
    printf 'b needs %s\n' ${a}/bin/hello > $out
  '';
  self = sh "nixferry-localstore-self" ''
    printf 'I am %s\n' $out > $out
  '';
  c = sh "nixferry-localstore-c" ''
    set -e
    /bin/mkdir $out
    echo ${b} > $out/b
    echo ${a} > $out/a
    echo ${self} > $out/self
    echo ${note} > $out/note
  '';
}
"#;

/// Builds the fixture once per test run (later runs find it built), and
/// signs `a` with two keys so that it has signatures to read. `None`
/// when Nix is missing and not required.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            if !have_nix() {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("fixture.nix");
            fs::write(&file, FIXTURE_NIX).unwrap();
            let out = nix_command("nix-build")
                .arg(&file)
                .args([
                    "--no-out-link",
                    "-A",
                    "a",
                    "-A",
                    "b",
                    "-A",
                    "c",
                    "-A",
                    "self",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let paths: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
            let [a, b, c, self_ref] = <[String; 4]>::try_from(paths).unwrap();
            // Signatures are deterministic, so signing again adds none.
            for key in ["keys/nixspec-test-1.secret", "keys/pyspec-1.secret"] {
                run_nix(&[
                    "nix",
                    "store",
                    "sign",
                    "-k",
                    vector(key).to_str().unwrap(),
                    &a,
                ]);
            }
            let c_drv = run_nix(&["nix-store", "--query", "--deriver", &c]);
            Some(Fixture {
                a,
                b,
                c,
                self_ref,
                c_drv: c_drv.trim().to_owned(),
            })
        })
        .as_ref()
}

/// Runs a Nix command, fails on failure, returns its stdout.
fn run_nix(args: &[&str]) -> String {
    let out = nix_command(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `nix path-info --json <flags> <paths>`, by path.
fn nix_path_info(flags: &[&str], paths: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["nix", "path-info", "--json"];
    args.extend(flags);
    args.extend(paths);
    let list: Value = serde_json::from_str(&run_nix(&args)).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| (o["path"].as_str().unwrap().to_owned(), o.clone()))
        .collect()
}

/// A path info as `nix path-info --json` shows it (docs/formats.md §3.5).
fn as_nix_json(info: &PathInfo, dir: &StoreDir) -> Value {
    let mut o = json!({
        "path": dir.full(&info.path),
        "narHash": info.nar_hash.to_sri(),
        "narSize": info.nar_size,
        "references": info.references.iter().map(|r| dir.full(r)).collect::<Vec<_>>(),
    });
    let m = o.as_object_mut().unwrap();
    if let Some(ca) = &info.ca {
        m.insert("ca".into(), json!(ca.to_string()));
    }
    if let Some(d) = &info.deriver {
        m.insert("deriver".into(), json!(dir.full(d)));
    }
    if info.registration_time != 0 {
        m.insert("registrationTime".into(), json!(info.registration_time));
    }
    if info.ultimate {
        m.insert("ultimate".into(), json!(true));
    }
    if !info.signatures.is_empty() {
        m.insert("signatures".into(), json!(info.signatures));
    }
    o
}

/// Checks every path info against `nix path-info --json`, field by field.
fn assert_same_as_nix(infos: &BTreeMap<StorePath, PathInfo>, nix: &BTreeMap<String, Value>) {
    let dir = StoreDir::default();
    assert_eq!(
        infos.keys().map(|p| dir.full(p)).collect::<Vec<_>>(),
        nix.keys().cloned().collect::<Vec<_>>()
    );
    for info in infos.values() {
        let ours = as_nix_json(info, &dir);
        let theirs = &nix[&dir.full(&info.path)];
        for key in ours
            .as_object()
            .unwrap()
            .keys()
            .chain(theirs.as_object().unwrap().keys())
        {
            assert_eq!(ours.get(key), theirs.get(key), "{key} of {}", info.path);
        }
    }
}

#[tokio::test]
async fn path_infos_match_nix_path_info() {
    let Some(f) = fixture() else { return };
    let store = open("local");
    let all = [&f.a, &f.b, &f.c, &f.self_ref, &f.c_drv].map(String::as_str);
    let infos = store.query_path_infos(&all.map(path)).await.unwrap();
    // Given a `.drv`, `nix path-info` shows its outputs unless told not to.
    let mut nix = nix_path_info(&[], &all[..4]);
    nix.append(&mut nix_path_info(&["--derivation"], &[&f.c_drv]));
    assert_same_as_nix(&infos, &nix);

    let a = &infos[&path(&f.a)];
    assert_eq!(a.signatures.len(), 2, "{:?}", a.signatures);
    assert!(a.ultimate && a.deriver.is_some() && a.ca.is_none());
    assert_eq!(infos[&path(&f.self_ref)].references, [path(&f.self_ref)]);
    assert!(infos[&path(&f.c_drv)].ca.is_some(), "a .drv is text: CA");
}

#[tokio::test]
async fn closure_matches_nix_store_qr() {
    let Some(f) = fixture() else { return };
    let store = open("local");
    let nix_order: Vec<StorePath> = run_nix(&["nix-store", "-qR", &f.c])
        .lines()
        .map(path)
        .collect();
    let expected: BTreeSet<&StorePath> = nix_order.iter().collect();
    assert_eq!(expected.len(), 5, "a, b, c, self and the note");

    let by_cte = store.closure(&[path(&f.c)]).await.unwrap();
    assert_eq!(by_cte.keys().collect::<BTreeSet<_>>(), expected);
    let walked = closure::compute(&store, &[path(&f.c)]).await.unwrap();
    assert_eq!(walked.paths().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        walked.infos(),
        closure::topo_sort(by_cte.into_values()).unwrap()
    );
    let mut seen = BTreeSet::new();
    for info in walked.infos() {
        for r in info.references.iter().filter(|r| **r != info.path) {
            assert!(
                seen.contains(r),
                "{} comes before its reference {r}",
                info.path
            );
        }
        seen.insert(&info.path);
    }
    assert_eq!(walked.infos().last().unwrap().path, path(&f.c));

    let sized: Value =
        serde_json::from_str(&run_nix(&["nix", "path-info", "-S", "--json", &f.c])).unwrap();
    assert_eq!(Some(walked.nar_size()), sized[0]["closureSize"].as_u64());
    assert_eq!(closure::missing(&store, &nix_order).await.unwrap(), []);
}

#[tokio::test]
async fn nar_streams_match_nix_store_dump() {
    let Some(f) = fixture() else { return };
    let store = open("local");
    let paths = [&f.a, &f.b, &f.c, &f.self_ref, &f.c_drv].map(|p| path(p));
    let infos = store.query_path_infos(&paths).await.unwrap();
    for info in infos.values() {
        let bytes = read_nar(&store, info).await.unwrap();
        let full = StoreDir::default().full(&info.path);
        let out = nix_command("nix-store")
            .args(["--dump", &full])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            bytes == out.stdout,
            "NAR of {full} differs from nix-store --dump"
        );
        assert_eq!(bytes.len() as u64, info.nar_size);
        assert_eq!(NixHash::digest(HashAlgo::Sha256, &bytes), info.nar_hash);
    }
    assert!(infos[&path(&f.a)].nar_size > 1 << 20, "spans many chunks");
}

#[tokio::test]
async fn reads_a_chroot_store_written_by_nix_copy() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let chroot: PathBuf = dir.path().join("chroot");
    run_nix(&[
        "nix",
        "copy",
        "--no-check-sigs",
        "--to",
        chroot.to_str().unwrap(),
        &f.c,
    ]);
    let closure_paths: Vec<String> = run_nix(&["nix-store", "-qR", &f.c])
        .lines()
        .map(String::from)
        .collect();
    let nix = nix_path_info(
        &["--store", chroot.to_str().unwrap()],
        &closure_paths.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for url in [root_url(&chroot), chroot.display().to_string()] {
        let store = open(&url);
        let infos = store.closure(&[path(&f.c)]).await.unwrap();
        assert_same_as_nix(&infos, &nix);
        let a = &infos[&path(&f.a)];
        assert_eq!(a.signatures.len(), 2, "nix copy keeps signatures");
        let bytes = read_nar(&store, a).await.unwrap();
        assert_eq!(NixHash::digest(HashAlgo::Sha256, &bytes), a.nar_hash);
        let walked = closure::compute(&store, &[path(&f.c)]).await.unwrap();
        assert_eq!(walked.len(), closure_paths.len());
    }
}
