//! The `http://` binary cache store against real servers on 127.0.0.1:
//! a static file server (Python's `http.server`) serving caches that
//! nixferry and Nix wrote, and a small PUT-capable server
//! (`http_server.py`) that records requests, checks credentials and
//! injects failures.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nixferry::copy::{self, CancellationToken, CopyError, CopyOptions};
use nixferry::hash::NixHash;
use nixferry::nar;
use nixferry::narinfo::NarInfo;
use nixferry::signing::{SecretKey, TrustedKeys};
use nixferry::store::file::FileStore;
use nixferry::store::http::HttpStore;
use nixferry::store::{PathInfo, Store, StoreError, StoreUrl};
use nixferry::store_path::{StoreDir, StorePath};

use crate::common::{have_nix, nix_command, read_all, sha256, stream, vector};

// ---------------------------------------------------------------- servers

/// A server process, killed (by its pid) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// `python3 -m http.server` serving `dir` read-only.
    fn serve_static(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for the HTTP tests");
        let server = Self { child, port };
        server.wait_listening();
        server
    }

    /// The PUT-capable test server writing to `dir`, with `args`.
    fn serve_writable(dir: &Path, args: &[&str]) -> Self {
        fs::create_dir_all(dir).unwrap();
        let port_file = dir.with_extension("port");
        let _ = fs::remove_file(&port_file);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/http_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir)
            .arg("--port-file")
            .arg(&port_file)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 is needed for the HTTP tests");
        let start = Instant::now();
        let port = loop {
            if let Ok(p) = fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let server = Self { child, port };
        server.wait_listening();
        server
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "?" };
        format!("http://127.0.0.1:{}{sep}{params}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- helpers

fn open_http(url: &str) -> HttpStore {
    HttpStore::open(&StoreUrl::parse(url).unwrap()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn open_file(dir: &Path, params: &str) -> FileStore {
    let sep = if params.is_empty() { "" } else { "?" };
    let url = format!("file://{}{sep}{params}", dir.display());
    FileStore::open(&StoreUrl::parse(&url).unwrap()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A NAR of a small tree (some text, an executable, a symlink) and an
/// input-addressed path info for it (so that only a signature makes it
/// trusted), referring to `refs`.
fn sample(dir: &Path, name: &str, bulk: usize, refs: &[&StorePath]) -> (Vec<u8>, PathInfo) {
    let root = dir.join(format!("tree-{name}"));
    fs::create_dir_all(root.join("sub")).unwrap();
    let mut text = Vec::new();
    while text.len() < bulk {
        text.extend_from_slice(format!("line {} of {name}\n", text.len()).as_bytes());
    }
    fs::write(root.join("text"), &text).unwrap();
    fs::write(root.join("sub/run"), b"#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(root.join("sub/run"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../text", root.join("sub/link")).unwrap();
    let mut bytes = Vec::new();
    let summary = nar::dump(&root, &mut bytes).unwrap();
    // A hash part from the NAR hash: distinct per tree, valid nix32.
    let hash_part = &summary.nar_hash.to_nix32()[..32];
    let path = StoreDir::default()
        .parse(&format!("/nix/store/{hash_part}-{name}"))
        .unwrap();
    let mut info = PathInfo::new(path, summary.nar_hash, summary.nar_size);
    info.references = refs.iter().map(|r| (*r).clone()).collect();
    info.references.sort();
    (bytes, info)
}

/// A generated key pair: the secret key file and the trusted public key.
fn key(dir: &Path, name: &str) -> (PathBuf, TrustedKeys, String) {
    let sk = SecretKey::generate(name).unwrap();
    let file = dir.join(format!("{name}.secret"));
    fs::write(&file, sk.to_file_string()).unwrap();
    let pk = sk.public();
    (file, TrustedKeys::from_keys([pk.clone()]), pk.to_string())
}

/// The requests a writable server logged: (method, path, content type).
fn log_lines(log: &Path) -> Vec<(String, String, String)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ').map(str::to_owned);
            (
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap_or_default(),
            )
        })
        .collect()
}

fn copy_opts(keys: TrustedKeys) -> CopyOptions {
    CopyOptions {
        jobs: 4,
        trusted_keys: keys,
        retries: 0,
        ..CopyOptions::default()
    }
}

async fn copy_all(
    src: Arc<dyn Store>,
    dst: Arc<dyn Store>,
    roots: &[StorePath],
    opts: &CopyOptions,
) -> copy::Summary {
    copy::copy_closure(
        src,
        dst,
        roots,
        opts,
        Arc::new(|_| {}),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------- reading

/// A cache nixferry wrote (every compression it writes), served
/// statically: nix-cache-info, narinfos present and absent, NARs, and the
/// compressed files as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_static_cache_of_every_compression() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, _, _) = key(tmp.path(), "http-test-1");
    for c in ["none", "xz", "zstd", "bzip2", "br"] {
        let dir = tmp.path().join(c);
        let file = open_file(
            &dir,
            &format!(
                "compression={c}&write-nar-listing=true&secret-key={}&priority=30",
                sk.display()
            ),
        );
        let mut samples = Vec::new();
        for (i, bulk) in [100, 300_000].into_iter().enumerate() {
            let (bytes, info) = sample(tmp.path(), &format!("{c}-{i}"), bulk, &[]);
            file.add_path(&info, stream(bytes.clone())).await.unwrap();
            samples.push((bytes, info));
        }
        let server = Server::serve_static(&dir);
        let http = open_http(&server.url(""));
        let ci = http.cache_info().await.unwrap();
        assert_eq!(ci.priority, Some(30), "{c}");
        assert_eq!(ci.store_dir, Some(StoreDir::default()));

        let (_, absent) = sample(tmp.path(), &format!("absent-{c}"), 10, &[]);
        let mut asked: Vec<_> = samples.iter().map(|(_, i)| i.path.clone()).collect();
        asked.push(absent.path.clone());
        let found = http.query_path_infos(&asked).await.unwrap();
        assert_eq!(found.len(), samples.len(), "{c}");
        assert!(http.narinfo(&absent.path).await.unwrap().is_none());
        for (bytes, info) in &samples {
            let got = &found[&info.path];
            assert_eq!((got.nar_hash, got.nar_size), (info.nar_hash, info.nar_size));
            assert_eq!(got.signatures.len(), 1, "{c}");
            let nar = read_all(http.nar(got).await.unwrap()).await.unwrap();
            assert!(&nar == bytes, "{c}: NAR differs");
            // Without the file facts, the store reads the narinfo again.
            let bare = PathInfo::new(info.path.clone(), info.nar_hash, info.nar_size);
            let nar = read_all(http.nar(&bare).await.unwrap()).await.unwrap();
            assert!(&nar == bytes, "{c}: NAR differs");

            let narinfo = file.narinfo(&info.path).unwrap().unwrap();
            let on_disk = fs::read(dir.join(narinfo.url())).unwrap();
            let compressed = http.compressed_nar(got).await.unwrap().unwrap();
            assert_eq!(compressed.compression.name(), c);
            assert_eq!(compressed.file_hash, Some(sha256(&on_disk)));
            assert_eq!(compressed.file_size, Some(on_disk.len() as u64));
            assert!(read_all(compressed.stream).await.unwrap() == on_disk, "{c}");
        }
        // A narinfo under the right hash part but for another name is
        // absent, as in Nix.
        let (_, info) = &samples[0];
        let renamed = StoreDir::default()
            .parse(&format!("/nix/store/{}-other-name", info.path.hash_part()))
            .unwrap();
        assert!(http.query_path_infos(&[renamed]).await.unwrap().is_empty());
        // A path missing entirely from a NAR request is NotFound.
        let e = http.nar(&absent).await.map(|_| ()).unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    }
}

/// The caches Nix 2.8 wrote (xz with signatures; uncompressed with
/// listings), served statically, read and checked against their hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_caches_nix_wrote() {
    for name in [
        "signed-xz",
        "none-with-listings",
        "ca-derivation-realisation",
    ] {
        let dir = vector(&format!("binary-cache/{name}"));
        let server = Server::serve_static(&dir);
        let http = open_http(&server.url(""));
        let mut wanted = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "narinfo") {
                let n = NarInfo::parse(&fs::read_to_string(&p).unwrap()).unwrap();
                wanted.push(n.store_path().clone());
            }
        }
        assert!(!wanted.is_empty());
        let found = http.query_path_infos(&wanted).await.unwrap();
        assert_eq!(found.len(), wanted.len(), "{name}");
        for info in found.values() {
            let nar = read_all(http.nar(info).await.unwrap()).await.unwrap();
            assert_eq!(sha256(&nar), info.nar_hash, "{name} {}", info.path);
            assert_eq!(nar.len() as u64, info.nar_size);
        }
        if name == "signed-xz" {
            let pk = fs::read_to_string(vector("keys/nixspec-test-1.public")).unwrap();
            let keys = TrustedKeys::from_keys([nixferry::signing::PublicKey::parse(&pk).unwrap()]);
            for info in found.values() {
                info.check_trust(http.store_dir(), &keys).unwrap();
            }
        }
    }
}

/// `copy_closure` from an HTTP cache to a `file://` cache, checking
/// signatures: a trusted key copies the closure, another key refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_http_to_file_checking_signatures() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, keys, _) = key(tmp.path(), "http-test-1");
    let (_, other_keys, _) = key(tmp.path(), "http-test-2");
    let src_dir = tmp.path().join("src");
    let file = open_file(
        &src_dir,
        &format!("compression=zstd&secret-key={}", sk.display()),
    );
    let (dep_nar, dep) = sample(tmp.path(), "dep", 5000, &[]);
    let (top_nar, top) = sample(tmp.path(), "top", 200_000, &[&dep.path]);
    file.add_path(&dep, stream(dep_nar.clone())).await.unwrap();
    file.add_path(&top, stream(top_nar.clone())).await.unwrap();
    let server = Server::serve_static(&src_dir);
    let src: Arc<dyn Store> = nixferry::store::open(&server.url("")).unwrap();

    // Passthrough (same compression) and re-encoding (xz).
    for params in ["compression=zstd", "compression=xz"] {
        let dst_dir = tmp.path().join(params.replace('=', "-"));
        let dst = Arc::new(open_file(&dst_dir, params));
        let summary = copy_all(
            src.clone(),
            dst.clone(),
            std::slice::from_ref(&top.path),
            &copy_opts(keys.clone()),
        )
        .await;
        assert!(summary.is_complete(), "{params}: {:?}", summary.failed);
        assert_eq!(summary.copied, 2);
        for (bytes, info) in [(&dep_nar, &dep), (&top_nar, &top)] {
            let got = dst
                .query_path_infos(std::slice::from_ref(&info.path))
                .await
                .unwrap();
            let got = &got[&info.path];
            got.check_trust(dst.store_dir(), &keys).unwrap();
            let nar = read_all(dst.nar(got).await.unwrap()).await.unwrap();
            assert!(&nar == bytes);
        }
    }

    let dst = Arc::new(open_file(&tmp.path().join("refused"), ""));
    let summary = copy_all(
        src,
        dst,
        std::slice::from_ref(&top.path),
        &copy_opts(other_keys),
    )
    .await;
    assert!(!summary.failed.is_empty());
    assert!(summary
        .failed
        .iter()
        .any(|(_, e)| matches!(e, CopyError::Untrusted { .. })));
}

// ---------------------------------------------------------------- writing

/// Uploads land in the `file://` layout (read back with `FileStore`), the
/// NAR before the listing before the narinfo, with Nix's content types;
/// a path already there is skipped, and so is a NAR file already there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_the_file_layout_narinfo_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, keys, _) = key(tmp.path(), "http-test-1");
    let dir = tmp.path().join("cache");
    let log = tmp.path().join("log");
    let server = Server::serve_writable(&dir, &["--log", log.to_str().unwrap()]);
    let http = open_http(&server.url(&format!(
        "compression=zstd&write-nar-listing=true&secret-key={}",
        sk.display()
    )));
    assert!(http.capabilities().signs && http.capabilities().verifies_nar);
    let (dep_nar, dep) = sample(tmp.path(), "dep", 1000, &[]);
    let (top_nar, top) = sample(tmp.path(), "top", 3 << 20, &[&dep.path]);
    http.add_path(&dep, stream(dep_nar.clone())).await.unwrap();
    http.add_path(&top, stream(top_nar.clone())).await.unwrap();

    // Read back through the file store and the HTTP store.
    let file = open_file(&dir, "");
    for (bytes, info) in [(&dep_nar, &dep), (&top_nar, &top)] {
        let got = &file
            .query_path_infos(std::slice::from_ref(&info.path))
            .await
            .unwrap()[&info.path];
        assert_eq!(got.references, info.references);
        got.check_trust(file.store_dir(), &keys).unwrap();
        assert!(&read_all(file.nar(got).await.unwrap()).await.unwrap() == bytes);
        let narinfo = file.narinfo(&info.path).unwrap().unwrap();
        assert_eq!(narinfo.compression().name(), "zstd");
        let on_disk = fs::read(dir.join(narinfo.url())).unwrap();
        assert_eq!(narinfo.file_hash(), Some(&sha256(&on_disk)));
        assert_eq!(
            fs::read_to_string(dir.join(format!("{}.ls", info.path.hash_part()))).unwrap(),
            nar::list(&bytes[..]).unwrap().to_json()
        );
        let via_http = &http
            .query_path_infos(std::slice::from_ref(&info.path))
            .await
            .unwrap()[&info.path];
        assert!(&read_all(http.nar(via_http).await.unwrap()).await.unwrap() == bytes);
    }
    assert_eq!(
        fs::read_to_string(dir.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    // No temporary files left on the server.
    for entry in fs::read_dir(dir.join("nar")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.ends_with(".nar.zst"), "{name}");
    }

    // Order and content types of the PUTs.
    let puts: Vec<_> = log_lines(&log)
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .collect();
    let index = |suffix: &str| {
        puts.iter()
            .position(|(_, p, _)| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("no PUT of {suffix}: {puts:?}"))
    };
    assert_eq!(puts[0].1, "/nix-cache-info");
    assert_eq!(puts[0].2, "text/x-nix-cache-info");
    for info in [&dep, &top] {
        let h = info.path.hash_part();
        let narinfo = index(&format!("/{h}.narinfo"));
        let ls = index(&format!("/{h}.ls"));
        let url = file.narinfo(&info.path).unwrap().unwrap().url().to_owned();
        let nar = index(&format!("/{url}"));
        assert!(nar < ls && ls < narinfo, "{puts:?}");
        assert_eq!(puts[nar].2, "application/x-nix-nar");
        assert_eq!(puts[ls].2, "application/json");
        assert_eq!(puts[narinfo].2, "text/x-nix-narinfo");
    }
    assert_eq!(puts.len(), 7, "{puts:?}");

    // Adding again: skipped after a HEAD of the narinfo.
    fs::write(&log, "").unwrap();
    http.add_path(&top, stream(top_nar.clone())).await.unwrap();
    let lines = log_lines(&log);
    assert!(lines.iter().all(|(m, _, _)| m != "PUT"), "{lines:?}");
    // Another path with the same NAR: the NAR file is not sent again.
    let mut twin = top.clone();
    twin.path = StoreDir::default()
        .parse(&format!("/nix/store/{}-twin", "0".repeat(32)))
        .unwrap();
    http.add_path(&twin, stream(top_nar.clone())).await.unwrap();
    let puts: Vec<_> = log_lines(&log)
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    // A NAR not matching its path info: nothing uploaded.
    fs::write(&log, "").unwrap();
    let (_, mut bad) = sample(tmp.path(), "bad", 10, &[]);
    bad.nar_hash = dep.nar_hash;
    let e = http
        .add_path(&bad, stream(top_nar.clone()))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NarMismatch { .. }), "{e}");
    let lines = log_lines(&log);
    assert!(lines.iter().all(|(m, _, _)| m != "PUT"), "{lines:?}");
}

/// `copy_closure` from `file://` to HTTP, with compressed passthrough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_file_to_http() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, keys, _) = key(tmp.path(), "http-test-1");
    let src_dir = tmp.path().join("src");
    let file = open_file(
        &src_dir,
        &format!("compression=xz&secret-key={}", sk.display()),
    );
    let (dep_nar, dep) = sample(tmp.path(), "dep", 5000, &[]);
    let (top_nar, top) = sample(tmp.path(), "top", 100_000, &[&dep.path]);
    file.add_path(&dep, stream(dep_nar)).await.unwrap();
    file.add_path(&top, stream(top_nar.clone())).await.unwrap();
    let dir = tmp.path().join("cache");
    let server = Server::serve_writable(&dir, &[]);
    let dst: Arc<dyn Store> = nixferry::store::open(&server.url("compression=xz")).unwrap();
    let summary = copy_all(
        Arc::new(file.clone()),
        dst.clone(),
        std::slice::from_ref(&top.path),
        &copy_opts(keys.clone()),
    )
    .await;
    assert!(summary.is_complete(), "{:?}", summary.failed);
    assert_eq!(summary.copied, 2);
    let back = open_file(&dir, "");
    let got = &back
        .query_path_infos(std::slice::from_ref(&top.path))
        .await
        .unwrap()[&top.path];
    got.check_trust(back.store_dir(), &keys).unwrap();
    // xz passthrough: the very same file.
    let a = file.narinfo(&top.path).unwrap().unwrap();
    let b = back.narinfo(&top.path).unwrap().unwrap();
    assert_eq!(a.url(), b.url());
    assert!(read_all(back.nar(got).await.unwrap()).await.unwrap() == top_nar);
}

/// 503 and 429 (with Retry-After) answers and dropped connections are
/// retried until the upload succeeds; after a Retry-After, not before the
/// time it names (the server notes requests that come sooner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_transient_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let (nar_bytes, info) = sample(tmp.path(), "retried", 20_000, &[]);
    for (name, args) in [
        ("503", vec!["--fail", "3", "--fail-status", "503"]),
        (
            "429",
            vec!["--fail", "2", "--fail-status", "429", "--retry-after", "1"],
        ),
        ("drop", vec!["--drop", "3"]),
    ] {
        let dir = tmp.path().join(name);
        let log = tmp.path().join(format!("{name}.log"));
        let early = tmp.path().join(format!("{name}.early"));
        let mut args = args.clone();
        args.extend(["--log", log.to_str().unwrap()]);
        args.extend(["--early", early.to_str().unwrap()]);
        let server = Server::serve_writable(&dir, &args);
        let http = open_http(&server.url("retries=4"));
        http.add_path(&info, stream(nar_bytes.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let too_soon = fs::read_to_string(&early).unwrap_or_default();
        assert!(
            too_soon.is_empty(),
            "{name}: asked again too soon: {too_soon}"
        );
        let back = open_file(&dir, "");
        let got = &back
            .query_path_infos(std::slice::from_ref(&info.path))
            .await
            .unwrap()[&info.path];
        assert!(read_all(back.nar(got).await.unwrap()).await.unwrap() == nar_bytes);
        assert!(log_lines(&log).len() >= 3, "{name}");
    }
    // Failing for longer than the retries: a retryable connection error
    // naming the URL and the status.
    let dir = tmp.path().join("exhausted");
    let server = Server::serve_writable(&dir, &["--fail", "100", "--fail-status", "502"]);
    let http = open_http(&server.url("retries=1"));
    let e = http
        .add_path(&info, stream(nar_bytes.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Connection { .. }) && e.is_retryable(),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("502") && msg.contains(&format!("127.0.0.1:{}", server.port)),
        "{msg}"
    );
    // Nothing listening: a connection error too.
    drop(server);
    let http = open_http(&format!("http://127.0.0.1:{}?retries=0", free_port()));
    let e = http
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// 404, 401 and 403 answers to uploads are not retried and say what
/// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let (nar_bytes, info) = sample(tmp.path(), "refused", 2000, &[]);
    for status in ["404", "401", "403"] {
        let dir = tmp.path().join(status);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
        let log = tmp.path().join(format!("{status}.log"));
        let server = Server::serve_writable(
            &dir,
            &["--put-status", status, "--log", log.to_str().unwrap()],
        );
        let http = open_http(&server.url("retries=5"));
        let e = http
            .add_path(&info, stream(nar_bytes.clone()))
            .await
            .unwrap_err();
        assert!(!e.is_retryable(), "{status}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("HTTP {status}")) && msg.contains("PUT http://127.0.0.1:"),
            "{msg}"
        );
        if status != "404" {
            assert!(matches!(e, StoreError::Login { .. }), "{e}");
        }
        let puts = log_lines(&log)
            .into_iter()
            .filter(|(m, _, _)| m == "PUT")
            .count();
        assert_eq!(puts, 1, "{status}: retried");
    }
}

/// Credentials from a netrc file are sent (basic auth); without them the
/// server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_netrc_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let (nar_bytes, info) = sample(tmp.path(), "authed", 2000, &[]);
    let dir = tmp.path().join("cache");
    let server = Server::serve_writable(&dir, &["--basic", "alice:s3cret"]);
    let netrc = tmp.path().join("netrc");
    fs::write(
        &netrc,
        "machine example.org login bob password nope\n\
         machine 127.0.0.1\n  login alice\n  password s3cret\n",
    )
    .unwrap();

    let without = open_http(&server.url("netrc-file=/dev/null&retries=0"));
    let e = without
        .add_path(&info, stream(nar_bytes.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Login { .. }) && e.to_string().contains("401"),
        "{e}"
    );
    let e = without
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");

    let with = open_http(&server.url(&format!("netrc-file={}", netrc.display())));
    with.add_path(&info, stream(nar_bytes.clone()))
        .await
        .unwrap();
    let got = &with
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap()[&info.path];
    assert!(read_all(with.nar(got).await.unwrap()).await.unwrap() == nar_bytes);
}

/// Many narinfo lookups in one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_lookups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let file = open_file(&dir, "compression=none");
    let mut paths = Vec::new();
    let mut absent = Vec::new();
    for i in 0..100 {
        let (bytes, info) = sample(tmp.path(), &format!("p{i}"), 10 + i, &[]);
        if i % 2 == 0 {
            file.add_path(&info, stream(bytes)).await.unwrap();
            paths.push(info.path);
        } else {
            absent.push(info.path);
        }
    }
    let server = Server::serve_static(&dir);
    let http = open_http(&server.url(""));
    let mut asked = paths.clone();
    asked.extend(absent);
    let found: BTreeMap<_, _> = http.query_path_infos(&asked).await.unwrap();
    assert_eq!(found.keys().cloned().collect::<Vec<_>>(), {
        let mut p = paths.clone();
        p.sort();
        p
    });
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

/// Nix 2.8 reads a cache nixferry uploaded through the PUT server:
/// `nix path-info` over HTTP and `nix copy --from http://…` into a
/// chroot store, checking signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_reads_what_nixferry_uploads() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, _, pk) = key(tmp.path(), "http-test-1");
    let dir = tmp.path().join("cache");
    let server = Server::serve_writable(&dir, &[]);
    let http = open_http(&server.url(&format!("compression=xz&secret-key={}", sk.display())));
    let (dep_nar, dep) = sample(tmp.path(), "nixferry-http-dep", 3000, &[]);
    let (top_nar, top) = sample(tmp.path(), "nixferry-http-top", 50_000, &[&dep.path]);
    http.add_path(&dep, stream(dep_nar)).await.unwrap();
    http.add_path(&top, stream(top_nar)).await.unwrap();
    let dir_ = StoreDir::default();
    let top_path = dir_.display(&top.path).to_string();
    let dep_path = dir_.display(&dep.path).to_string();

    let out = run(nix_command("nix")
        .args(["path-info", "--json", "-r", "--store", &server.url("")])
        .arg(&top_path));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2, "{v}");
    for e in arr {
        let want = if e["path"] == top_path.as_str() {
            &top
        } else {
            &dep
        };
        assert_eq!(e["narSize"].as_u64(), Some(want.nar_size));
        assert_eq!(
            e["narHash"].as_str().map(|h| NixHash::parse(h).unwrap()),
            Some(want.nar_hash)
        );
        assert_eq!(e["signatures"].as_array().map(Vec::len), Some(1));
    }

    let chroot = tmp.path().join("chroot");
    run(nix_command("nix")
        .args(["copy", "--from", &server.url("")])
        .arg("--to")
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &pk])
        .arg(&top_path));
    let out = run(nix_command("nix")
        .args(["path-info", "--json", "--store"])
        .arg(&chroot)
        .args([&top_path, &dep_path]));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for e in v.as_array().unwrap() {
        let want = if e["path"] == top_path.as_str() {
            &top
        } else {
            &dep
        };
        assert_eq!(
            e["narHash"].as_str().map(|h| NixHash::parse(h).unwrap()),
            Some(want.nar_hash)
        );
    }
}

/// A narinfo longer than the limit is refused as soon as that many bytes
/// have arrived, and so is a `nix-cache-info` that long.
#[tokio::test]
async fn narinfos_are_read_up_to_their_limit() {
    use nixferry::narinfo::MAX_NARINFO_LEN;

    let tmp = tempfile::tempdir().unwrap();
    let hi: StorePath = StoreDir::default()
        .parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")
        .unwrap();
    let long = |head: &str| {
        let mut text = head.as_bytes().to_vec();
        text.resize(MAX_NARINFO_LEN + 1, b'#');
        text
    };
    let cache = tmp.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    fs::write(
        cache.join(format!("{}.narinfo", hi.hash_part())),
        long("StorePath: /nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt\n"),
    )
    .unwrap();
    let server = Server::serve_static(&cache);
    let e = open_http(&server.url(""))
        .query_path_infos(std::slice::from_ref(&hi))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("longer than"), "{e}");

    fs::write(cache.join("nix-cache-info"), long("StoreDir: /nix/store\n")).unwrap();
    let e = open_http(&server.url(""))
        .query_path_infos(std::slice::from_ref(&hi))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("nix-cache-info' is longer than"),
        "{e}"
    );
}
