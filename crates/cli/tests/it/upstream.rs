//! `nixferry serve --upstream`: a server that fetches what its store lacks
//! from another (a second `nixferry serve`), checks it, streams it, and
//! keeps it.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    add_signed, build_closure, generate_key, have_nix, nix, nix_closure_infos, nixferry, run,
    run_text,
};
use crate::serve::{hash_part, narinfo_field, Server};

/// A `file://` cache with `n` small signed paths (made with `nixferry
/// add`, no Nix needed): the cache directory, and per path the store path
/// and the directory it was made from.
fn upstream_cache(tmp: &Path, sk: &Path, n: usize) -> (PathBuf, Vec<(String, PathBuf)>) {
    let cache = tmp.join("upstream-cache");
    let paths = (0..n)
        .map(|i| {
            let src = tmp.join(format!("src{i}"));
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("a"), format!("upstream file {i}\n")).unwrap();
            fs::write(src.join("big"), vec![i as u8 + 1; 50_000 * (i + 1)]).unwrap();
            let path = add_signed(&src, &format!("file://{}", cache.display()), sk);
            (path, src)
        })
        .collect();
    (cache, paths)
}

/// The NAR of a directory, as `nixferry nar dump` writes it.
fn nar_of(dir: &Path) -> Vec<u8> {
    run(nixferry().args(["nar", "dump"]).arg(dir)).stdout
}

/// A `GET` on a fresh connection, read to its end however it ends: the
/// status, `Content-Length` if any, and the body bytes that came (not
/// dechunked); status 0 if the connection closed before a whole head.
fn raw_get(port: u16, path: &str) -> (u16, Option<usize>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // A connection the server aborts may end in a reset.
    let _ = s.read_to_end(&mut raw);
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, None, raw);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap());
    (status, length, raw[end + 4..].to_vec())
}

/// The value of a counter line of `/metrics` (0 if absent).
fn metric(server: &Server, line_start: &str) -> u64 {
    let r = server.get("/metrics");
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits (at most 30 s) for `file` to exist.
fn wait_for(file: &Path) {
    let start = Instant::now();
    while !file.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never came",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn proxies_an_upstream_and_keeps_what_it_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "upstream-1");
    let pk = pk.trim().to_owned();
    let (cache, paths) = upstream_cache(tmp.path(), &sk, 2);
    let upstream = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let own = tmp.path().join("own");
    let kept = tmp.path().join("kept");
    let proxy = Server::start(&[
        "--store",
        &format!("file://{}", own.display()),
        "--upstream",
        &upstream.url(),
        "--trusted-key",
        &pk,
        "--cache-upstream",
        &format!("file://{}", kept.display()),
    ]);

    let (path, src) = &paths[0];
    let hash = hash_part(path);
    let theirs = String::from_utf8(upstream.get(&format!("/{hash}.narinfo")).body).unwrap();
    let r = proxy.get(&format!("/{hash}.narinfo"));
    assert_eq!(r.status, 200);
    let ours = String::from_utf8(r.body).unwrap();
    // The upstream's facts and signature, a URL of the proxy's own.
    for field in [
        "StorePath",
        "NarHash",
        "NarSize",
        "Sig",
        "Compression",
        "FileHash",
    ] {
        assert_eq!(
            narinfo_field(&ours, field),
            narinfo_field(&theirs, field),
            "{field}"
        );
    }
    let nar_hash = narinfo_field(&ours, "NarHash");
    let nix32 = nar_hash.strip_prefix("sha256:").unwrap();
    let url = narinfo_field(&ours, "URL");
    assert!(url.starts_with(&format!("nar/{hash}-{nix32}.nar")), "{url}");
    // The NAR file is the upstream's, byte for byte, with its length.
    let file = upstream.get(&format!("/{}", narinfo_field(&theirs, "URL")));
    let r = proxy.get(&format!("/{url}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(&*file.body.len().to_string())
    );
    assert!(r.body == file.body, "not the upstream's file");
    // And the plain NAR, decompressed.
    let plain = proxy.get(&format!("/nar/{hash}-{nix32}.nar"));
    assert_eq!(plain.status, 200);
    assert!(plain.body == nar_of(src), "not the NAR of {path}");
    // A NAR hash the path does not have is not served.
    let wrong = format!("/nar/{hash}-{}.nar", "1".repeat(52));
    assert_eq!(proxy.get(&wrong).status, 404);
    // Nothing for paths no one has.
    let absent = "/0123456789abcdfghijklmnpqrsvwxyz.narinfo";
    assert_eq!(proxy.get(absent).status, 404);

    // nixferry's client copies through the proxy, checking signatures.
    run(nixferry()
        .args(["copy", "--from", &proxy.url(), "--to"])
        .arg(format!("file://{}", tmp.path().join("via-proxy").display()))
        .args(["--trusted-key", &pk, &paths[1].0]));

    // Kept, checked by the copy engine, then served from there once the
    // upstream is gone.
    for (p, _) in &paths {
        wait_for(&kept.join(format!("{}.narinfo", hash_part(p))));
    }
    run(nixferry()
        .args(["copy", "--from"])
        .arg(format!("file://{}", kept.display()))
        .arg("--to")
        .arg(format!("file://{}", tmp.path().join("check").display()))
        .args(["--trusted-key", &pk, path, &paths[1].0]));
    assert!(metric(&proxy, "nixferry_upstream_kept_paths_total ") >= 2);
    let hits = "nixferry_upstream_fetches_total{kind=\"narinfo\",result=\"hit\"} ";
    assert!(metric(&proxy, hits) >= 2);
    drop(upstream);
    // Past the memory of misses in the kept cache.
    std::thread::sleep(Duration::from_millis(1200));
    for (p, src) in &paths {
        let h = hash_part(p);
        let r = proxy.get(&format!("/{h}.narinfo"));
        assert_eq!(r.status, 200, "{p}");
        let text = String::from_utf8(r.body).unwrap();
        let nix32 = &narinfo_field(&text, "NarHash")["sha256:".len()..];
        let r = proxy.get(&format!("/nar/{h}-{nix32}.nar"));
        assert_eq!(r.status, 200, "{p}");
        assert!(r.body == nar_of(src), "{p}");
        let r = proxy.get(&format!("/{}", narinfo_field(&text, "URL")));
        assert_eq!(r.status, 200, "{p}");
    }
}

#[test]
fn down_upstreams_are_a_quick_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "upstream-down-1");
    let pk = pk.trim().to_owned();
    let (cache, paths) = upstream_cache(tmp.path(), &sk, 1);
    let good = Server::start(&["--store", &format!("file://{}", cache.display())]);
    // A port nothing listens on, and one that takes connections but never
    // answers (the kernel accepts them into the backlog).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let proxy = Server::start(&[
        "--store",
        &format!("file://{}", tmp.path().join("own").display()),
        "--upstream",
        &format!("http://127.0.0.1:{closed_port}"),
        "--upstream",
        &format!("http://127.0.0.1:{silent_port}"),
        "--upstream",
        &good.url(),
        "--trusted-key",
        &pk,
        "--upstream-timeout",
        "1",
    ]);
    let timed = |path: &str| {
        let start = Instant::now();
        let status = proxy.get(path).status;
        (status, start.elapsed())
    };
    // The first request waits for the silent upstream's timeout, no more.
    let (status, took) = timed("/0123456789abcdfghijklmnpqrsvwxyz.narinfo");
    assert_eq!(status, 404);
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Then both are left out for a while: misses are quick, and what the
    // good upstream has is served.
    let (status, took) = timed("/1123456789abcdfghijklmnpqrsvwxyz.narinfo");
    assert_eq!(status, 404);
    assert!(took < Duration::from_millis(500), "{took:?}");
    let (status, took) = timed(&format!("/{}.narinfo", hash_part(&paths[0].0)));
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(500), "{took:?}");
    let errors = "nixferry_upstream_fetches_total{kind=\"narinfo\",result=\"error\"} ";
    assert!(metric(&proxy, errors) >= 2);
    let skipped = "nixferry_upstream_fetches_total{kind=\"narinfo\",result=\"skipped\"} ";
    assert!(metric(&proxy, skipped) >= 2);

    // Only down upstreams: a quick 404 for the path too, never a hang.
    let lonely = Server::start(&[
        "--store",
        &format!("file://{}", tmp.path().join("lonely").display()),
        "--upstream",
        &format!("http://127.0.0.1:{silent_port}"),
        "--trusted-key",
        &pk,
        "--upstream-timeout",
        "1",
    ]);
    let start = Instant::now();
    assert_eq!(
        lonely
            .get(&format!("/{}.narinfo", hash_part(&paths[0].0)))
            .status,
        404
    );
    assert!(start.elapsed() < Duration::from_millis(2500));
    drop(silent);
}

#[test]
fn untrusted_and_tampered_upstream_paths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "upstream-trust-1");
    let pk = pk.trim().to_owned();
    let (_, other) = generate_key(tmp.path(), "someone-else-1");
    let (cache, paths) = upstream_cache(tmp.path(), &sk, 4);
    // `nixferry add` makes content-addressed paths, trusted for their
    // address; without it, only the signature vouches for a path.
    for (p, _) in &paths {
        let file = cache.join(format!("{}.narinfo", hash_part(p)));
        let text = fs::read_to_string(&file).unwrap();
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("CA: "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(without, text);
        fs::write(&file, without).unwrap();
    }
    let upstream = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let proxy_trusting = |key: &str, name: &str| {
        Server::start(&[
            "--store",
            &format!("file://{}", tmp.path().join(name).display()),
            "--upstream",
            &upstream.url(),
            "--trusted-key",
            key,
        ])
    };
    let refused = "nixferry_upstream_fetches_total{kind=\"narinfo\",result=\"refused\"} ";

    // Signed by a key the proxy does not trust (nor does Nix's default
    // trust it).
    let stranger = proxy_trusting(other.trim(), "stranger");
    assert_eq!(
        stranger
            .get(&format!("/{}.narinfo", hash_part(&paths[0].0)))
            .status,
        404
    );
    assert_eq!(metric(&stranger, refused), 1);
    let proxy = proxy_trusting(&pk, "own");
    assert_eq!(
        proxy
            .get(&format!("/{}.narinfo", hash_part(&paths[0].0)))
            .status,
        200
    );

    // Narinfos whose signed facts were changed, the signature kept.
    let edit = |path: &str, field: &str, value: &str| {
        let file = cache.join(format!("{}.narinfo", hash_part(path)));
        let text = fs::read_to_string(&file).unwrap();
        let old = narinfo_field(&text, field);
        let edited = text.replace(&format!("{field}: {old}\n"), &format!("{field}: {value}\n"));
        assert_ne!(edited, text);
        fs::write(&file, edited).unwrap();
    };
    edit(&paths[1].0, "NarSize", "1");
    edit(
        &paths[2].0,
        "References",
        &paths[0].0["/nix/store/".len()..],
    );
    for (p, _) in &paths[1..3] {
        assert_eq!(proxy.get(&format!("/{}.narinfo", hash_part(p))).status, 404);
    }
    assert_eq!(metric(&proxy, refused), 2);

    // A NAR file whose bytes were changed: the narinfo is fine, but the
    // transfer breaks before it is complete (here, as the file fits in
    // the one chunk held back, before even the head is sent).
    let (path, _) = &paths[3];
    let hash = hash_part(path);
    let text = String::from_utf8(proxy.get(&format!("/{hash}.narinfo")).body).unwrap();
    let theirs = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let file = cache.join(narinfo_field(&theirs, "URL"));
    let mut bytes = fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let (status, length, body) = raw_get(proxy.port, &format!("/{}", narinfo_field(&text, "URL")));
    if status != 0 {
        assert_eq!(status, 200);
        assert_eq!(length, Some(bytes.len()));
    }
    assert!(body.len() < bytes.len(), "a complete bad file was sent");
    let nix32 = &narinfo_field(&text, "NarHash")["sha256:".len()..];
    let (status, _, body) = raw_get(proxy.port, &format!("/nar/{hash}-{nix32}.nar"));
    let size: usize = narinfo_field(&text, "NarSize").parse().unwrap();
    assert!(
        status != 200 || body.len() < size,
        "a complete bad NAR was sent"
    );
    let errors = "nixferry_upstream_fetches_total{kind=\"nar\",result=\"error\"} ";
    assert!(metric(&proxy, errors) >= 1);
}

#[test]
fn nix_substitutes_through_a_proxy_that_keeps_into_its_own_cache() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "upstream-nix-1");
    let pk = pk.trim().to_owned();
    let top = build_closure("upstream");
    let ours = nix_closure_infos(None, &top);
    // The upstream: this machine's store, signed and zstd-compressed on
    // the fly (no FileHash: the proxy passes the stream on unchecked, and
    // Nix checks the NAR hash).
    let upstream = Server::start(&[
        "--store",
        "local",
        "--secret-key-file",
        sk.to_str().unwrap(),
        "--compression",
        "zstd",
    ]);
    let own = tmp.path().join("own");
    let own_url = format!("file://{}", own.display());
    let proxy = Server::start(&[
        "--store",
        &own_url,
        "--upstream",
        &upstream.url(),
        "--trusted-key",
        &pk,
        "--cache-upstream",
        &own_url,
    ]);
    let chroot = tmp.path().join("chroot");
    run(nix("nix")
        .args(["copy", "--from", &proxy.url(), "--to"])
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &pk, &top]));
    assert_eq!(nix_closure_infos(Some(&chroot), &top), ours);

    // Kept in the proxy's own cache, then served from it as from any
    // file:// cache once the upstream is gone.
    let closure = run_text(nix("nix-store").args(["-qR", &top]));
    for p in closure.lines() {
        wait_for(&own.join(format!("{}.narinfo", hash_part(p))));
    }
    drop(upstream);
    let again = tmp.path().join("again");
    run(nix("nix")
        .args(["copy", "--from", &proxy.url(), "--to"])
        .arg(&again)
        .args(["--option", "trusted-public-keys", &pk, &top]));
    assert_eq!(nix_closure_infos(Some(&again), &top), ours);
}
