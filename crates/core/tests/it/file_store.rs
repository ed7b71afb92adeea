//! The `file://` binary cache: reading caches Nix wrote, writing caches Nix
//! reads, every compression, and nothing left behind by failed writes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _};
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll};

use nixferry::compression::{self, Compression};
use nixferry::hash::NixHash;
use nixferry::nar;
use nixferry::narinfo::NarInfo;
use nixferry::signing::{PublicKey, SecretKey, TrustedKeys};
use nixferry::store::file::FileStore;
use nixferry::store::{
    add_to_store, CompressedNar, NarStream, PathInfo, Store, StoreError, StoreUrl,
};
use nixferry::store_path::{ContentAddress, FileIngestion, StoreDir, StorePath};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

use crate::common::{have_nix, nix_command, read_all, sha256, stream, vector};

// ---------------------------------------------------------------- helpers

fn open(url: &str) -> FileStore {
    FileStore::open(&StoreUrl::parse(url).unwrap()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn url_of(dir: &Path, params: &str) -> String {
    let sep = if params.is_empty() { "" } else { "?" };
    format!("file://{}{sep}{params}", dir.display())
}

/// Copies a directory tree (opening a cache creates `log/` and
/// `realisations/` in it, as Nix does, and the tests leave the vectors as
/// they are).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
            let mut perms = fs::metadata(&dest).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(&dest, perms).unwrap();
        }
    }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn trusted(rel: &str) -> TrustedKeys {
    let text = fs::read_to_string(vector(rel)).unwrap();
    TrustedKeys::from_keys([PublicKey::parse(&text).unwrap()])
}

/// The narinfos in a cache directory, by store path.
fn narinfos(dir: &Path) -> BTreeMap<StorePath, NarInfo> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            let info = NarInfo::parse(&fs::read_to_string(p).unwrap()).unwrap();
            (info.store_path().clone(), info)
        })
        .collect()
}

/// A tree with some bulk (compressible and not), a symlink, an executable
/// and a nested directory; its NAR and the CA path info `nix-store --add`
/// would give it.
fn sample_nar(dir: &Path, name: &str, bulk: usize) -> (Vec<u8>, PathInfo) {
    let root = dir.join(name);
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let mut text = Vec::new();
    let mut noise = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while text.len() < bulk {
        text.extend_from_slice(format!("line {} of {name}\n", text.len()).as_bytes());
    }
    while noise.len() < bulk / 4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(root.join("text"), &text).unwrap();
    fs::write(root.join("sub/noise"), &noise[..bulk / 4]).unwrap();
    fs::write(root.join("sub/deeper/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../text", root.join("sub/link")).unwrap();
    let exe = root.join("run");
    fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();

    let mut bytes = Vec::new();
    let summary = nar::dump(&root, &mut bytes).unwrap();
    let ca = ContentAddress::Fixed {
        method: FileIngestion::Recursive,
        hash: summary.nar_hash,
    };
    let path = StoreDir::default()
        .make_ca_path(name, &ca, [], false)
        .unwrap();
    let mut info = PathInfo::new(path, summary.nar_hash, summary.nar_size);
    info.ca = Some(ca);
    (bytes, info)
}

/// Checks a cache holds `info` with the NAR `bytes`: path info, NAR
/// stream, file layout and FileHash; returns its narinfo.
async fn check_has(store: &FileStore, info: &PathInfo, bytes: &[u8]) -> NarInfo {
    let found = store
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap();
    let got = &found[&info.path];
    assert_eq!((got.nar_hash, got.nar_size), (info.nar_hash, info.nar_size));
    assert_eq!(got.references, info.references);
    assert_eq!(got.ca, info.ca);
    let nar = read_all(store.nar(got).await.unwrap()).await.unwrap();
    assert!(nar == bytes, "NAR of {} differs", info.path);

    let narinfo = store.narinfo(&info.path).unwrap().unwrap();
    let c = narinfo.compression().clone();
    let url = narinfo.url();
    let file = fs::read(store.root().join(url)).unwrap();
    assert_eq!(narinfo.file_hash(), Some(&sha256(&file)), "{c}");
    assert_eq!(narinfo.file_size(), Some(file.len() as u64));
    assert_eq!(
        url,
        format!("nar/{}{}", sha256(&file).to_nix32(), c.extension())
    );
    if c == Compression::None {
        assert_eq!(narinfo.file_hash(), Some(narinfo.nar_hash()));
    } else if c != Compression::Br {
        assert_eq!(compression::sniff(&file), Some(c.clone()));
    }
    let compressed = store.compressed_nar(got).await.unwrap().unwrap();
    assert_eq!(compressed.compression, c);
    assert_eq!(compressed.file_hash, narinfo.file_hash().copied());
    assert!(read_all(compressed.stream).await.unwrap() == file);
    narinfo
}

/// No narinfo, listing, NAR or temporary file anywhere in the cache.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = files(dir)
        .into_iter()
        .filter(|f| f != "nix-cache-info")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A NAR stream that fails: after `good` bytes of `data`, with `error`.
struct Failing {
    data: Vec<u8>,
    pos: usize,
    good: usize,
    error: Option<io::Error>,
}

impl AsyncRead for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos >= self.good {
            let e = self
                .error
                .take()
                .unwrap_or_else(|| io::Error::other("again"));
            return Poll::Ready(Err(e));
        }
        let n = buf.remaining().min(self.good - self.pos).min(1000);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn failing(data: &[u8], good: usize, error: io::Error) -> NarStream {
    Box::pin(Failing {
        data: data.to_vec(),
        pos: 0,
        good,
        error: Some(error),
    })
}

// ---------------------------------------------------- caches Nix wrote

/// The three caches Nix 2.8 wrote: every path's info, its NAR stream
/// (hashing to NarHash), its signature, and its listing where there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_caches_nix_wrote() {
    let keys = trusted("keys/nixspec-test-1.public");
    let store_dir = StoreDir::default();
    for name in [
        "signed-xz",
        "none-with-listings",
        "ca-derivation-realisation",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        copy_dir(&vector(&format!("binary-cache/{name}")), &dir);
        let before = files(&dir);
        let store = open(&url_of(&dir, ""));
        // Reading writes nothing, and leaves nix-cache-info alone.
        assert_eq!(files(&dir), before, "{name}");
        assert_eq!(
            fs::read_to_string(dir.join("nix-cache-info")).unwrap(),
            "StoreDir: /nix/store\n"
        );

        let expected = narinfos(&dir);
        let paths: Vec<_> = expected.keys().cloned().collect();
        let infos = store.query_path_infos(&paths).await.unwrap();
        assert_eq!(infos.len(), expected.len(), "{name}");
        for (path, narinfo) in &expected {
            let info = &infos[path];
            assert_eq!(info, &PathInfo::from_narinfo(narinfo));
            let nar = read_all(store.nar(info).await.unwrap()).await.unwrap();
            assert_eq!(sha256(&nar), info.nar_hash, "{name}: {path}");
            assert_eq!(nar.len() as u64, info.nar_size);
            assert_eq!(
                info.check_trust(&store_dir, &keys).unwrap(),
                if info.ca_verifies(&store_dir) {
                    None
                } else {
                    Some("nixspec-test-1")
                },
                "{name}: {path}"
            );
            // The signature verifies even where the CA would do.
            narinfo.verify(&keys).unwrap();
            let ls = dir.join(format!("{}.ls", path.hash_part()));
            if name == "none-with-listings" {
                let listing = nar::list(&nar[..]).unwrap().to_json();
                assert_eq!(listing, fs::read_to_string(ls).unwrap(), "{path}");
            }
            let compressed = store.compressed_nar(info).await.unwrap().unwrap();
            let file = read_all(compressed.stream).await.unwrap();
            assert_eq!(Some(sha256(&file)), compressed.file_hash);
        }
    }
}

/// A narinfo is only found under its full name, as in Nix; a path the
/// cache lacks is simply absent, also in large batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_match_hash_and_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    copy_dir(&vector("binary-cache/signed-xz"), &dir);
    let store = open(&url_of(&dir, ""));
    let real =
        StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt").unwrap();
    let renamed = StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-other").unwrap();
    // Thousands of absent paths around the present one: many batches.
    let mut paths: Vec<_> = (0..3000u32)
        .map(|i| {
            let hash = nixferry::hash::nix32::encode(&nixferry::hash::compress::<20>(
                &nixferry::hash::sha256(&i.to_le_bytes()),
            ));
            StorePath::from_base_name(&format!("{hash}-absent")).unwrap()
        })
        .collect();
    paths.insert(1234, real.clone());
    paths.push(renamed.clone());
    let found = store.query_path_infos(&paths).await.unwrap();
    assert_eq!(found.keys().collect::<Vec<_>>(), [&real]);
    assert!(store.narinfo(&renamed).unwrap().is_none());
    let e = store
        .nar(&PathInfo::new(renamed, found[&real].nar_hash, 1))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

/// Nix reads a narinfo's declared `bzip2` (or no `Compression` at all) for
/// an xz file by sniffing; so does nixferry. A URL leaving the cache is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_compression_and_safe_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    copy_dir(&vector("binary-cache/signed-xz"), &dir);
    let file = dir.join("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b.narinfo");
    let text = fs::read_to_string(&file).unwrap();
    let store = open(&url_of(&dir, ""));
    let path =
        StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt").unwrap();
    for changed in [
        text.replace("Compression: xz\n", "Compression: bzip2\n"),
        text.replace("Compression: xz\n", ""),
    ] {
        fs::write(&file, &changed).unwrap();
        let info = &store
            .query_path_infos(std::slice::from_ref(&path))
            .await
            .unwrap()[&path];
        let nar = read_all(store.nar(info).await.unwrap()).await.unwrap();
        assert_eq!(sha256(&nar), info.nar_hash);
        // The passthrough source says what the file really is.
        let c = store.compressed_nar(info).await.unwrap().unwrap();
        assert_eq!(c.compression, Compression::Xz);
    }
    // Declared none for an xz file: the NAR stream is not a NAR.
    fs::write(
        &file,
        text.replace("Compression: xz\n", "Compression: none\n"),
    )
    .unwrap();
    let info = &store
        .query_path_infos(std::slice::from_ref(&path))
        .await
        .unwrap()[&path];
    let nar = read_all(store.nar(info).await.unwrap()).await.unwrap();
    assert_ne!(sha256(&nar), info.nar_hash);

    fs::write(&file, text.replace("URL: nar/", "URL: nar/../../")).unwrap();
    let info = &store
        .query_path_infos(std::slice::from_ref(&path))
        .await
        .unwrap()[&path];
    let e = store.nar(info).await.err().unwrap().to_string();
    assert!(e.contains("inside the cache"), "{e}");
}

// ------------------------------------------------------------- opening

#[tokio::test]
async fn open_writes_nothing_and_the_first_write_lays_out_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/cache");
    let store = open(&url_of(&dir, ""));
    assert_eq!(store.compression(), &Compression::Zstd);
    // Reading an absent cache finds nothing, and writes nothing.
    let absent = StorePath::from_base_name(&format!("{}-x", "a".repeat(32))).unwrap();
    let asked = std::slice::from_ref(&absent);
    assert!(store.query_path_infos(asked).await.unwrap().is_empty());
    assert!(!dir.exists());
    let tree = tmp.path().join("tree");
    fs::write(&tree, "hello\n").unwrap();
    let info = add_to_store(&store, &tree, "tree", &[]).await.unwrap();
    for sub in ["nar", "log", "realisations"] {
        assert!(dir.join(sub).is_dir(), "{sub}");
    }
    assert_eq!(
        fs::read_to_string(dir.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let asked = std::slice::from_ref(&info.path);
    assert_eq!(store.query_path_infos(asked).await.unwrap().len(), 1);
    let caps = store.capabilities();
    assert!(!caps.needs_references_first && caps.keeps_signatures && !caps.signs);
    assert!(caps.verifies_nar);
    // zstd at its default level is light: no limit on NARs at once.
    assert_eq!(caps.max_parallel_adds, None);
    assert_eq!(caps.writes_compression, Some(Compression::Zstd));
    // xz takes the CPUs and ~94 MB per encoder: no more NARs at once than
    // CPUs.
    let xz = open(&url_of(&tmp.path().join("xz"), "compression=xz"));
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(xz.capabilities().max_parallel_adds, Some(cpus));

    let dir2 = tmp.path().join("c2");
    let sk = vector("keys/nixspec-test-1.secret");
    let store = open(&url_of(
        &dir2,
        &format!(
            "compression=zstd&want-mass-query=true&priority=30&secret-key={}",
            sk.display()
        ),
    ));
    add_to_store(&store, &tree, "tree", &[]).await.unwrap();
    assert_eq!(
        fs::read_to_string(dir2.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );
    assert!(store.capabilities().signs);
    assert_eq!(
        store.capabilities().writes_compression,
        Some(Compression::Zstd)
    );
    assert_eq!(store.capabilities().max_parallel_adds, None);
    // The URL overrides the file, which is left alone.
    let store = open(&url_of(&dir2, "priority=10"));
    assert_eq!(store.cache_info().priority, Some(10));
    assert!(store.cache_info().want_mass_query);

    let err = |params: &str| {
        FileStore::open(&StoreUrl::parse(&url_of(&dir, params)).unwrap())
            .unwrap_err()
            .to_string()
    };
    for (params, needle) in [
        ("compression=gzip", "supported: none, xz, zstd, bzip2, br"),
        ("compression=", "supported: none"),
        ("compression=xz&compression-level=10", "compression-level"),
        ("compression=bzip2&compression-level=0", "compression-level"),
        ("compression-level=99999999999", "compression-level"),
        ("parallel-compression=maybe", "parallel-compression"),
        ("fsync=sometimes", "fsync"),
        ("index-debug-info=true", "not supported"),
        ("secret-key=/nonexistent/key", "/nonexistent/key"),
    ] {
        let e = err(params);
        assert!(e.contains(needle), "{params}: {e}");
    }
    let bad_key = tmp.path().join("bad.key");
    fs::write(&bad_key, "not a key").unwrap();
    let e = err(&format!("secret-key={}", bad_key.display()));
    assert!(e.contains("bad.key"), "{e}");

    // A cache for another store directory is refused, as by Nix.
    let gnu = tmp.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    fs::write(gnu.join("nix-cache-info"), "StoreDir: /gnu/store\n").unwrap();
    let e = FileStore::open(&StoreUrl::parse(&url_of(&gnu, "")).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/gnu/store"), "{e}");
}

// ------------------------------------------------------------- writing

/// Every compression, with levels and threads: what is written reads back
/// (in a fresh handle), with the layout Nix writes, the listing `nar::list`
/// gives, and a signature that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_every_compression() {
    let tmp = tempfile::tempdir().unwrap();
    let sk = vector("keys/nixspec-test-1.secret");
    let keys = trusted("keys/nixspec-test-1.public");
    let small = sample_nar(tmp.path(), "small", 1000);
    // Large enough to be compressed on a second thread, and on several
    // with parallel-compression.
    let big = sample_nar(tmp.path(), "big", 9 << 20);
    for params in [
        "compression=none",
        "compression=none&fsync=false",
        "compression=xz",
        "compression=xz&compression-level=1&parallel-compression=true",
        "compression=zstd",
        "compression=zstd&compression-level=19",
        "compression=zstd&parallel-compression=true",
        "compression=bzip2",
        "compression=bzip2&compression-level=1",
        "compression=br&compression-level=5",
    ] {
        let dir = tmp.path().join(params.replace(['=', '&'], "_"));
        let url = url_of(
            &dir,
            &format!("{params}&write-nar-listing=1&secret-key={}", sk.display()),
        );
        let store = open(&url);
        for (bytes, info) in [&small, &big] {
            store.add_path(info, stream(bytes.clone())).await.unwrap();
        }
        let store = open(&url_of(&dir, ""));
        for (bytes, info) in [&small, &big] {
            let narinfo = check_has(&store, info, bytes).await;
            assert_eq!(narinfo.compression().name(), store_compression(params));
            narinfo.verify(&keys).unwrap();
            let ls = fs::read_to_string(dir.join(format!("{}.ls", info.path.hash_part())));
            assert_eq!(ls.unwrap(), nar::list(&bytes[..]).unwrap().to_json());
        }
        // Exactly the files Nix would write.
        let mut expected = vec!["nix-cache-info".to_owned()];
        for (_, info) in [&small, &big] {
            let narinfo = store.narinfo(&info.path).unwrap().unwrap();
            expected.push(narinfo.url().to_owned());
            expected.push(format!("{}.ls", info.path.hash_part()));
            expected.push(format!("{}.narinfo", info.path.hash_part()));
        }
        expected.sort();
        assert_eq!(files(&dir), expected, "{params}");
    }
}

fn store_compression(params: &str) -> &str {
    params
        .split('&')
        .find_map(|p| p.strip_prefix("compression="))
        .unwrap()
}

/// Rewriting the paths of the caches Nix wrote gives byte-identical
/// narinfos, NAR files and listings (signing with the same key; Nix's
/// ed25519 signatures are deterministic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_nix_caches_byte_for_byte() {
    let sk = vector("keys/nixspec-test-1.secret");
    for (name, params) in [
        (
            "none-with-listings",
            "compression=none&write-nar-listing=true",
        ),
        ("ca-derivation-realisation", "compression=none"),
        ("signed-xz", "compression=xz"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        copy_dir(&vector(&format!("binary-cache/{name}")), &theirs);
        let source = open(&url_of(&theirs, ""));
        let ours = tmp.path().join("ours");
        let dest = open(&url_of(
            &ours,
            &format!("{params}&secret-key={}", sk.display()),
        ));
        let infos = source
            .query_path_infos(&narinfos(&theirs).into_keys().collect::<Vec<_>>())
            .await
            .unwrap();
        for info in infos.values() {
            let mut unsigned = info.clone();
            unsigned.signatures.clear();
            dest.add_path(&unsigned, source.nar(info).await.unwrap())
                .await
                .unwrap();
        }
        for file in files(&ours) {
            let expected = theirs.join(&file);
            assert!(
                fs::read(&expected).unwrap() == fs::read(ours.join(&file)).unwrap(),
                "{name}: {file} differs"
            );
        }
        let nix_files: Vec<_> = files(&theirs)
            .into_iter()
            .filter(|f| !f.starts_with("realisations/") && !f.starts_with("log/"))
            .collect();
        assert_eq!(files(&ours), nix_files, "{name}");
    }
}

/// A path whose narinfo exists is not written again, and its stream is
/// not even read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_present_path_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, info) = sample_nar(tmp.path(), "again", 5000);
    let dir = tmp.path().join("c");
    let store = open(&url_of(&dir, "compression=zstd"));
    store.add_path(&info, stream(bytes.clone())).await.unwrap();
    let before = files(&dir);
    let narinfo = fs::read(dir.join(format!("{}.narinfo", info.path.hash_part()))).unwrap();
    store
        .add_path(&info, failing(&bytes, 0, io::Error::other("not read")))
        .await
        .unwrap();
    assert_eq!(files(&dir), before);
    assert_eq!(
        fs::read(dir.join(format!("{}.narinfo", info.path.hash_part()))).unwrap(),
        narinfo
    );

    // Two paths with the same NAR share one NAR file.
    let twin = PathInfo {
        path: StorePath::from_base_name(&format!(
            "{}-twin",
            info.path.hash_part().replace('a', "b")
        ))
        .unwrap(),
        ..info.clone()
    };
    store.add_path(&twin, stream(bytes.clone())).await.unwrap();
    assert_eq!(files(&dir.join("nar")).len(), 1);
    check_has(&open(&url_of(&dir, "")), &twin, &bytes).await;
}

/// A stream that fails, is cut short, is not a NAR, or does not match the
/// path info leaves nothing behind: no narinfo, no listing, no NAR file and
/// no temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // Small, and large enough to be compressed on a second thread.
    let small = sample_nar(tmp.path(), "doomed", 400_000);
    let large = sample_nar(tmp.path(), "doomed-large", 5 << 20);
    for ((bytes, info), c) in [&small, &large]
        .into_iter()
        .flat_map(|nar| ["none", "xz", "zstd"].map(|c| (nar, c)))
    {
        let dir = tmp.path().join(format!("{c}-{}", bytes.len()));
        let store = open(&url_of(
            &dir,
            &format!(
                "compression={c}&compression-level=1&write-nar-listing=true&secret-key={}",
                vector("keys/nixspec-test-1.secret").display()
            ),
        ));
        let add = |nar: NarStream, info: PathInfo| {
            let store = store.clone();
            async move { store.add_path(&info, nar).await }
        };

        // The stream fails midway.
        let e = add(
            failing(bytes, 100_000, io::Error::other("connection lost")),
            info.clone(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("connection lost"), "{c}: {e}");
        assert_empty(&dir);

        // The stream fails at its very end, as the copy engine's check of
        // narHash makes it; a StoreError inside the io::Error comes back.
        let mismatch = StoreError::NarMismatch {
            path: info.path.to_string(),
            message: "checked upstream".into(),
        };
        let e = add(
            failing(bytes, bytes.len(), io::Error::other(mismatch)),
            info.clone(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, StoreError::NarMismatch { message, .. } if message == "checked upstream"),
            "{c}: {e}"
        );
        assert_empty(&dir);

        // Cut short: not a complete NAR.
        let e = add(stream(bytes[..bytes.len() - 8].to_vec()), info.clone())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Nar(_)), "{c}: {e}");
        assert_empty(&dir);

        // Trailing data after the NAR.
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        let e = add(stream(long), info.clone()).await.unwrap_err();
        assert!(matches!(e, StoreError::Nar(_)), "{c}: {e}");
        assert_empty(&dir);

        // Not a NAR at all.
        let e = add(stream(b"hello world, not a NAR".repeat(100)), info.clone())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Nar(_)), "{c}: {e}");
        assert_empty(&dir);

        // A valid NAR, but not the one the path info declares.
        let (other, _) = sample_nar(tmp.path(), &format!("other-{c}-{}", bytes.len()), 1000);
        let e = add(stream(other), info.clone()).await.unwrap_err();
        assert!(matches!(e, StoreError::NarMismatch { .. }), "{c}: {e}");
        assert!(e.to_string().contains("hash"), "{e}");
        assert_empty(&dir);

        // The right hash but a wrong size.
        let mut wrong_size = info.clone();
        wrong_size.nar_size += 1;
        let e = add(stream(bytes.clone()), wrong_size).await.unwrap_err();
        assert!(e.to_string().contains("size"), "{c}: {e}");
        assert_empty(&dir);

        // And then the right one goes through.
        add(stream(bytes.clone()), info.clone()).await.unwrap();
        check_has(&store, info, bytes).await;
    }
}

/// Dropping a NAR stream half-read stops the reading thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_nar_stream_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, info) = sample_nar(tmp.path(), "dropped", 4 << 20);
    let store = open(&url_of(&tmp.path().join("c"), "compression=zstd"));
    store.add_path(&info, stream(bytes)).await.unwrap();
    for _ in 0..20 {
        let mut s = store.nar(&info).await.unwrap();
        let mut buf = vec![0; 1000];
        s.read_exact(&mut buf).await.unwrap();
        drop(s);
    }
}

/// The passthrough of compressed NAR files between caches of the same
/// compression: the file is moved as is, its FileHash is checked, and
/// other compressions are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_compressed_nar_files_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, info) = sample_nar(tmp.path(), "passthrough", 200_000);
    let src = open(&url_of(&tmp.path().join("src"), "compression=zstd"));
    src.add_path(&info, stream(bytes.clone())).await.unwrap();
    let src_info = src
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap()[&info.path]
        .clone();
    let file = fs::read(src.root().join(&src_info.file.as_ref().unwrap().url)).unwrap();

    let dest_dir = tmp.path().join("dest");
    let dest = open(&url_of(
        &dest_dir,
        "compression=zstd&write-nar-listing=true",
    ));
    // A wrong FileHash: refused, nothing left.
    let mut c = src.compressed_nar(&src_info).await.unwrap().unwrap();
    c.file_hash = Some(sha256(b"something else"));
    let e = dest.add_compressed(&info, c).await.unwrap_err();
    assert!(matches!(e, StoreError::NarMismatch { .. }), "{e}");
    assert_empty(&dest_dir);
    // A compressed file that is not the path's NAR (caught here only
    // because a listing is written, which decompresses it).
    let (other, other_info) = sample_nar(tmp.path(), "other", 1000);
    src.add_path(&other_info, stream(other)).await.unwrap();
    let other_src_info = src
        .query_path_infos(std::slice::from_ref(&other_info.path))
        .await
        .unwrap()[&other_info.path]
        .clone();
    let c = src.compressed_nar(&other_src_info).await.unwrap().unwrap();
    let e = dest.add_compressed(&info, c).await.unwrap_err();
    assert!(matches!(e, StoreError::NarMismatch { .. }), "{e}");
    assert_empty(&dest_dir);
    // Another compression: unsupported.
    let xz = open(&url_of(&tmp.path().join("xz"), "compression=xz"));
    let c = src.compressed_nar(&src_info).await.unwrap().unwrap();
    let e = xz.add_compressed(&info, c).await.unwrap_err();
    assert!(matches!(e, StoreError::Unsupported { .. }), "{e}");

    let c = src.compressed_nar(&src_info).await.unwrap().unwrap();
    dest.add_compressed(&src_info, c).await.unwrap();
    let narinfo = check_has(&dest, &info, &bytes).await;
    assert!(fs::read(dest_dir.join(narinfo.url())).unwrap() == file);
    assert_eq!(
        fs::read_to_string(dest_dir.join(format!("{}.ls", info.path.hash_part()))).unwrap(),
        nar::list(&bytes[..]).unwrap().to_json()
    );
    // A stream failing midway leaves nothing either.
    let dir2 = tmp.path().join("dest2");
    let dest2 = open(&url_of(&dir2, "compression=zstd"));
    let e = dest2
        .add_compressed(
            &info,
            CompressedNar {
                compression: Compression::Zstd,
                file_hash: None,
                file_size: None,
                stream: failing(&file, file.len() / 2, io::Error::other("cut")),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cut"), "{e}");
    assert_empty(&dir2);
}

/// `add_to_store` makes the path `nix-store --add` makes (the vector
/// `nixspec-tree` cannot be rebuilt here, so its NAR is restored first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_to_store_packs_like_nix_store_add() {
    let tmp = tempfile::tempdir().unwrap();
    let tree_nar = fs::read(vector(
        "binary-cache/none-with-listings/nar/02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d.nar",
    ))
    .unwrap();
    let tree = tmp.path().join("nixspec-tree");
    nar::restore(&tree_nar[..], &tree, &Default::default()).unwrap();
    let dir = tmp.path().join("c");
    let store = open(&url_of(&dir, "compression=none"));
    let key = SecretKey::parse(&fs::read_to_string(vector("keys/nixspec-test-1.secret")).unwrap())
        .unwrap();
    let info = add_to_store(&store, &tree, "nixspec-tree", &[key])
        .await
        .unwrap();
    assert_eq!(
        info.path.to_string(),
        "rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree"
    );
    // The same narinfo Nix wrote, signature included.
    let ours = fs::read_to_string(dir.join("rsjiq56rggpz3zk7marf4by5qgdya80h.narinfo")).unwrap();
    let theirs = fs::read_to_string(vector(
        "binary-cache/none-with-listings/rsjiq56rggpz3zk7marf4by5qgdya80h.narinfo",
    ))
    .unwrap();
    assert_eq!(ours, theirs);
    // Again: the path is there, its info comes back.
    let again = add_to_store(&store, &tree, "nixspec-tree", &[])
        .await
        .unwrap();
    assert_eq!(again.nar_hash, info.nar_hash);
    let e = add_to_store(&store, &tree, "bad/name", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::StorePath(_)), "{e}");
    let e = add_to_store(&store, &tmp.path().join("missing"), "x", &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

// ---------------------------------------------------------- against Nix

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_text(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd)).unwrap().trim().to_owned()
}

/// Two real store paths: `nix-store --add` of a small tree and a path
/// built by a derivation (input-addressed, so Nix needs a signature).
fn nix_paths(tmp: &Path) -> Vec<String> {
    let (_, _) = sample_nar(tmp, "nixferry-file-store-tree", 20_000);
    let added = run_text(
        nix_command("nix-store")
            .arg("--add")
            .arg(tmp.join("nixferry-file-store-tree")),
    );
    let built = run_text(nix_command("nix-build").args([
        "--no-out-link",
        "--expr",
        r#"derivation { name = "nixferry-file-store-built"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo x > $out" ]; }"#,
    ]));
    vec![added, built]
}

/// `nix path-info --json` of `paths` in `store` (None: the local store).
fn nix_path_infos(store: Option<&Path>, paths: &[String]) -> Vec<serde_json::Value> {
    let mut cmd = nix_command("nix");
    cmd.args(["path-info", "--json"]);
    if let Some(s) = store {
        cmd.arg("--store").arg(s);
    }
    let v: serde_json::Value = serde_json::from_slice(&run(cmd.args(paths))).unwrap();
    v.as_array().unwrap().clone()
}

fn path_info_from_json(v: &serde_json::Value) -> PathInfo {
    let dir = StoreDir::default();
    let path = dir.parse(v["path"].as_str().unwrap()).unwrap();
    let mut info = PathInfo::new(
        path,
        NixHash::parse(v["narHash"].as_str().unwrap()).unwrap(),
        v["narSize"].as_u64().unwrap(),
    );
    info.references = v["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.parse(r.as_str().unwrap()).unwrap())
        .collect();
    info.deriver = v["deriver"].as_str().map(|d| dir.parse(d).unwrap());
    info.ca = v["ca"].as_str().map(|c| ContentAddress::parse(c).unwrap());
    info
}

/// Caches written by `nix copy --to file://` (xz, zstd, none; signed) are
/// read and verified by nixferry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_what_nix_copy_writes() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let paths = nix_paths(tmp.path());
    let expected = nix_path_infos(None, &paths);
    let sk = vector("keys/nixspec-test-1.secret");
    let keys = trusted("keys/nixspec-test-1.public");
    for c in ["xz", "zstd", "none"] {
        let dir = tmp.path().join(format!("nix-{c}"));
        let url = url_of(
            &dir,
            &format!("compression={c}&secret-key={}", sk.display()),
        );
        run(nix_command("nix").args(["copy", "--to", &url]).args(&paths));
        let store = open(&url_of(&dir, ""));
        let wanted: Vec<_> = expected
            .iter()
            .map(|v| path_info_from_json(v).path)
            .collect();
        let infos = store.query_path_infos(&wanted).await.unwrap();
        assert_eq!(infos.len(), paths.len(), "{c}");
        for v in &expected {
            let want = path_info_from_json(v);
            let info = &infos[&want.path];
            assert_eq!(info.nar_hash, want.nar_hash, "{c}");
            assert_eq!(info.references, want.references, "{c}");
            assert_eq!(info.file.as_ref().unwrap().compression.name(), c);
            info.check_trust(store.store_dir(), &keys).unwrap();
            let fingerprint = info.fingerprint(store.store_dir());
            keys.verify(
                fingerprint.as_bytes(),
                info.signatures.iter().map(String::as_str),
            )
            .unwrap();
            let nar = read_all(store.nar(info).await.unwrap()).await.unwrap();
            assert_eq!(sha256(&nar), info.nar_hash, "{c}");
            let dumped = run(nix_command("nix-store")
                .arg("--dump")
                .arg(v["path"].as_str().unwrap()));
            assert!(nar == dumped, "{c}");
        }
    }
}

/// Caches written by nixferry (every compression, signed) are accepted by
/// `nix copy --from`, which installs paths with the same NAR hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copy_reads_what_nixferry_writes() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let paths = nix_paths(tmp.path());
    let expected = nix_path_infos(None, &paths);
    let sk = vector("keys/nixspec-test-1.secret");
    let pk = fs::read_to_string(vector("keys/nixspec-test-1.public")).unwrap();
    for params in [
        "compression=none",
        "compression=none&fsync=false",
        "compression=xz",
        "compression=xz&parallel-compression=true",
        "compression=zstd",
        "compression=zstd&compression-level=15&parallel-compression=true",
        "compression=bzip2",
        "compression=br",
    ] {
        let dir = tmp.path().join(params.replace(['=', '&'], "_"));
        let store = open(&url_of(
            &dir,
            &format!(
                "{params}&write-nar-listing=true&secret-key={}",
                sk.display()
            ),
        ));
        for v in &expected {
            let info = path_info_from_json(v);
            let nar = run(nix_command("nix-store")
                .arg("--dump")
                .arg(v["path"].as_str().unwrap()));
            store.add_path(&info, stream(nar)).await.unwrap();
        }
        let chroot = dir.join("chroot");
        run(nix_command("nix")
            .args(["copy", "--from", &url_of(&dir, "")])
            .arg("--to")
            .arg(&chroot)
            .args(["--option", "trusted-public-keys", &pk])
            .args(&paths));
        let got = nix_path_infos(Some(&chroot), &paths);
        for (want, got) in expected.iter().zip(&got) {
            assert_eq!(got["path"], want["path"], "{params}");
            assert_eq!(got["narHash"], want["narHash"], "{params}");
            assert_eq!(got["narSize"], want["narSize"], "{params}");
        }
        // `nix store cat` reads a file through the listing-less path too.
        let added = &paths[0];
        let text = run(nix_command("nix")
            .args(["store", "cat", "--store", &url_of(&dir, "")])
            .arg(format!("{added}/sub/deeper/empty")));
        assert!(text.is_empty());
    }
}

/// Reading the `.ls` listing the way `nix` reads a cache: `nix store ls`
/// over a cache nixferry wrote with listings.
#[test]
fn listing_is_readable_by_nix() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, info) = sample_nar(tmp.path(), "listed", 3000);
    let dir = tmp.path().join("c");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open(&url_of(&dir, "compression=xz&write-nar-listing=true"));
        store.add_path(&info, stream(bytes)).await.unwrap();
    });
    let out = run_text(
        nix_command("nix")
            .args(["store", "ls", "-R", "--store", &url_of(&dir, "")])
            .arg(format!("/nix/store/{}", info.path)),
    );
    assert!(out.contains("./sub/deeper/empty"), "{out}");
    let mut s = String::new();
    fs::File::open(dir.join(format!("{}.ls", info.path.hash_part())))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert!(
        s.starts_with(r#"{"version":1,"root":{"type":"directory""#),
        "{s}"
    );
}

/// The blocking threads and bridges work on a current-thread runtime too
/// (the default of `#[tokio::test]`).
#[tokio::test]
async fn works_on_a_current_thread_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, info) = sample_nar(tmp.path(), "single", 600_000);
    let src = open(&url_of(&tmp.path().join("a"), "compression=xz"));
    src.add_path(&info, stream(bytes.clone())).await.unwrap();
    // From one store's NAR stream straight into another store.
    let dest = open(&url_of(&tmp.path().join("b"), "compression=bzip2"));
    dest.add_path(&info, src.nar(&info).await.unwrap())
        .await
        .unwrap();
    check_has(&dest, &info, &bytes).await;
}
