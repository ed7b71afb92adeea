//! `nixferry serve`: the server against Nix, against nixferry's own HTTP
//! client, and against hostile and concurrent clients.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    add_signed, assert_success, build_closure, generate_key, have_nix, nix, nix_closure_infos,
    nixferry, run, run_text, stderr, write_netrc,
};

/// A `nixferry serve` process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_on(args, 0)
    }

    /// A server on `port` of 127.0.0.1 (0: a free one).
    pub(crate) fn start_on(args: &[&str], port: u16) -> Self {
        let mut child = nixferry()
            .arg("serve")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        // Keep draining stderr so a verbose server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, port }
    }

    /// A server started otherwise, on `port`.
    pub(crate) fn adopt(child: Child, port: u16) -> Self {
        Self { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, &[], None)
    }

    /// Sends SIGTERM and waits for the exit status (failing if there is
    /// none in a minute, rather than hanging).
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        // The shell's own kill: no process tools needed.
        let pid = self.child.id();
        run(Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]));
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response, headers lowercased.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One HTTP/1.1 request on a fresh connection, sent as given (no
/// normalisation of the path).
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw, method == "HEAD")
}

/// Parses an HTTP/1.1 response (`head`: to a HEAD request, so without a
/// body).
pub(crate) fn parse_reply(raw: &[u8], head: bool) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let text = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if head {
        assert!(body.is_empty(), "HEAD response with a body");
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        body = dechunk(&body);
    } else if let Some(len) = headers.get("content-length") {
        assert_eq!(body.len(), len.parse::<usize>().unwrap(), "Content-Length");
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Fills a `file://` cache with a few signed paths with `nixferry add`
/// (no Nix needed); returns the cache directory, the public key and the
/// store paths.
pub(crate) fn cache_with_paths(tmp: &Path) -> (PathBuf, String, Vec<String>) {
    let (sk, pk) = generate_key(tmp, "serve-test-1");
    let cache = tmp.join("cache");
    let mut paths = Vec::new();
    for i in 0..4 {
        let src = tmp.join(format!("src{i}"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a"), format!("file {i}\n")).unwrap();
        fs::write(src.join("sub/big"), vec![i as u8; 100_000 * (i + 1)]).unwrap();
        paths.push(add_signed(
            &src,
            &format!("file://{}", cache.display()),
            &sk,
        ));
    }
    (cache, pk.trim().to_owned(), paths)
}

pub(crate) fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

pub(crate) fn narinfo_field(narinfo: &str, key: &str) -> String {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap()
        .to_owned()
}

/// Hostile requests the load test mixes in (all of them, each with its
/// answer, are in `security::requests`).
const HOSTILE: &[&str] = &[
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/nar%2f..%2f..%2fetc%2fpasswd",
    "/nar/..%2fnix-cache-info",
    "//etc/passwd",
    "/etc/passwd",
    "/log/../../etc/passwd",
    "/nar/../nix-cache-info",
    "/nix-cache-info/..",
    "/0000000000000000000000000000000000000000000000000000000000000000000000.narinfo",
    "/nar/0000000000000000000000000000000000000000000000000000.nar.gz",
];

#[test]
fn serves_a_file_cache_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, pk, paths) = cache_with_paths(tmp.path());
    let server = Server::start(&[
        "--store",
        &format!("file://{}", cache.display()),
        "--priority",
        "30",
        "--want-mass-query",
        "true",
    ]);

    let info = server.get("/nix-cache-info");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("content-type"), Some("text/x-nix-cache-info"));
    let text = String::from_utf8(info.body).unwrap();
    assert!(text.contains("StoreDir: /nix/store\n"), "{text}");
    assert!(text.contains("WantMassQuery: 1\n"), "{text}");
    assert!(text.contains("Priority: 30\n"), "{text}");

    let hash = hash_part(&paths[3]);
    let narinfo = server.get(&format!("/{hash}.narinfo"));
    assert_eq!(narinfo.status, 200);
    assert_eq!(narinfo.header("content-type"), Some("text/x-nix-narinfo"));
    assert!(narinfo.header("cache-control").unwrap().contains("max-age"));
    assert_eq!(
        narinfo.body,
        fs::read(cache.join(format!("{hash}.narinfo"))).unwrap()
    );
    let url = narinfo_field(std::str::from_utf8(&narinfo.body).unwrap(), "URL");
    let nar_bytes = fs::read(cache.join(&url)).unwrap();

    let nar = server.get(&format!("/{url}"));
    assert_eq!(nar.status, 200);
    assert_eq!(nar.header("content-type"), Some("application/x-nix-nar"));
    assert_eq!(nar.body, nar_bytes);

    // HEAD: the same headers, no body.
    let head = request(server.port, "HEAD", &format!("/{url}"), &[], None);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(nar_bytes.len().to_string().as_str())
    );
    let head = request(server.port, "HEAD", &format!("/{hash}.narinfo"), &[], None);
    assert_eq!(head.status, 200);

    // Ranges.
    let r = request(
        server.port,
        "GET",
        &format!("/{url}"),
        &[("Range", "bytes=10-109")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &nar_bytes[10..110]);
    let len = nar_bytes.len();
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-109/{len}").as_str())
    );
    let r = request(
        server.port,
        "GET",
        &format!("/{url}"),
        &[("Range", "bytes=-7")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &nar_bytes[len - 7..]);
    let r = request(
        server.port,
        "GET",
        &format!("/{url}"),
        &[("Range", &format!("bytes={len}-"))],
        None,
    );
    assert_eq!(r.status, 416);

    // Absent things: 404, not cached.
    let missing = server.get("/00000000000000000000000000000000.narinfo");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("cache-control"), Some("no-cache"));

    // Hostile requests and ranges, on every backend: security::requests.

    // nixferry's own HTTP client copies everything back, verified.
    let back = tmp.path().join("back");
    run(nixferry()
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(format!("file://{}", back.display()))
        .args(["--trusted-key", &pk])
        .args(&paths));
    for p in &paths {
        let h = hash_part(p);
        assert_eq!(
            fs::read(back.join(format!("{h}.narinfo"))).unwrap(),
            fs::read(cache.join(format!("{h}.narinfo"))).unwrap()
        );
    }

    // Metrics moved.
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(
        metrics.contains("nixferry_http_requests_total{kind=\"narinfo\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nixferry_http_requests_total{kind=\"nar\",status=\"206\"} 2"),
        "{metrics}"
    );
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(counter("nixferry_http_sent_bytes_total") > nar_bytes.len() as u64);
    assert!(counter("nixferry_narinfo_hits_total") >= 5);
    assert!(counter("nixferry_narinfo_misses_total") >= 1);
    assert!(counter("nixferry_http_request_duration_seconds_count") > 15);

    assert!(server.terminate().success());
}

#[test]
fn survives_many_concurrent_and_hostile_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _pk, paths) = cache_with_paths(tmp.path());
    let server = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let mut expected = Vec::new();
    for p in &paths {
        let name = format!("{}.narinfo", hash_part(p));
        let narinfo = fs::read(cache.join(&name)).unwrap();
        let url = narinfo_field(std::str::from_utf8(&narinfo).unwrap(), "URL");
        expected.push((format!("/{name}"), narinfo));
        expected.push((format!("/{url}"), fs::read(cache.join(&url)).unwrap()));
    }
    let expected = Arc::new(expected);
    let port = server.port;
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let expected = Arc::clone(&expected);
            std::thread::spawn(move || {
                for j in 0..5 {
                    let n = i * 5 + j;
                    if n % 4 == 3 {
                        let bad = HOSTILE[n % HOSTILE.len()];
                        let r = request(port, "GET", bad, &[], None);
                        assert!(r.status == 404 || r.status == 400, "{bad}");
                    } else {
                        let (path, body) = &expected[n % expected.len()];
                        let r = request(port, "GET", path, &[], None);
                        assert_eq!(r.status, 200, "{path}");
                        assert!(r.body == *body, "{path}: wrong bytes");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(server.get("/nix-cache-info").status, 200);
    assert!(server.terminate().success());
}

#[test]
fn accepts_uploads_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_cache, pk, paths) = cache_with_paths(tmp.path());
    let (server, dest) = writable_server(tmp.path(), "s3cret-token");
    let hash = hash_part(&paths[0]);
    let narinfo = fs::read(src_cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = narinfo_field(std::str::from_utf8(&narinfo).unwrap(), "URL");
    let nar = fs::read(src_cache.join(&url)).unwrap();
    let put = |path: &str, auth: Option<&str>, body: &[u8]| {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        request(server.port, "PUT", path, &headers, Some(body)).status
    };
    let narinfo_path = format!("/{hash}.narinfo");
    assert_eq!(put(&narinfo_path, None, &narinfo), 401);
    assert_eq!(put(&narinfo_path, Some("Bearer wrong"), &narinfo), 401);
    // The NAR is not there yet: refused.
    assert_eq!(
        put(&narinfo_path, Some("Bearer s3cret-token"), &narinfo),
        400
    );
    assert!(!dest.join(format!("{hash}.narinfo")).exists());
    assert_eq!(
        put(&format!("/{url}"), Some("Bearer s3cret-token"), &nar),
        200
    );
    assert_eq!(
        put(&narinfo_path, Some("Bearer s3cret-token"), &narinfo),
        200
    );
    assert_eq!(put("/../escape", Some("Bearer s3cret-token"), b"x"), 404);
    assert_eq!(fs::read(dest.join(&url)).unwrap(), nar);
    assert_eq!(
        fs::read(dest.join(format!("{hash}.narinfo"))).unwrap(),
        narinfo
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .chain(fs::read_dir(dest.join("nar")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // nixferry's HTTP client writes with the token, and reads back.
    run(nixferry()
        .args(["copy", "--from"])
        .arg(format!("file://{}", src_cache.display()))
        .args(["--to", &server.url(), "--trusted-key", &pk])
        .args(&paths)
        .env("NIXFERRY_HTTP_TOKEN", "s3cret-token"));
    for p in &paths {
        let h = hash_part(p);
        assert_eq!(
            fs::read(dest.join(format!("{h}.narinfo"))).unwrap(),
            fs::read(src_cache.join(format!("{h}.narinfo"))).unwrap()
        );
    }
    let back = tmp.path().join("back");
    run(nixferry()
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(format!("file://{}", back.display()))
        .args(["--trusted-key", &pk])
        .args(&paths));
    assert!(server.terminate().success());
}

/// The store paths of the closure of `top` as `nix path-info -r` lists
/// them in `store`.
fn nix_paths(store: &Path, top: &str) -> String {
    run_text(
        nix("nix")
            .args(["path-info", "-r", "--store"])
            .arg(store)
            .arg(top),
    )
}

#[test]
fn nix_copies_from_a_served_local_store_and_file_cache() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "serve-nix-1");
    let pk = pk.trim().to_owned();
    let top = build_closure("serve");
    let ours = nix_closure_infos(None, &top);

    for compression in ["none", "zstd"] {
        let server = Server::start(&[
            "--store",
            "local",
            "--secret-key-file",
            sk.to_str().unwrap(),
            "--compression",
            compression,
        ]);
        let chroot = tmp.path().join(format!("chroot-local-{compression}"));
        run(nix("nix")
            .args(["copy", "--from", &server.url(), "--to"])
            .arg(&chroot)
            .args(["--option", "trusted-public-keys", &pk, &top]));
        assert_eq!(nix_closure_infos(Some(&chroot), &top), ours);
        assert!(!nix_paths(&chroot, &top).is_empty());

        // nixferry's HTTP client too, checking the signatures.
        let cache = tmp.path().join(format!("via-nixferry-{compression}"));
        run(nixferry()
            .args(["copy", "--from", &server.url(), "--to"])
            .arg(format!("file://{}", cache.display()))
            .args(["--trusted-key", &pk, &top]));
        assert!(server.terminate().success());
    }

    // A cache written by nixferry, served as files.
    let cache = tmp.path().join("cache");
    run(nixferry()
        .args(["copy", "--to"])
        .arg(format!("file://{}", cache.display()))
        .arg("--secret-key-file")
        .arg(&sk)
        .arg(&top));
    let server = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let chroot = tmp.path().join("chroot-file");
    run(nix("nix")
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &pk, &top]));
    assert_eq!(nix_closure_infos(Some(&chroot), &top), ours);
    assert!(server.terminate().success());

    // A chroot store, served: Nix copies out of it again.
    let server = Server::start(&[
        "--store",
        &format!("local?root={}", chroot.display()),
        "--secret-key-file",
        sk.to_str().unwrap(),
    ]);
    let r = request(server.port, "PUT", "/nix-cache-info", &[], Some(b"x"));
    assert_eq!(r.status, 405);
    assert!(String::from_utf8_lossy(&r.body).contains("read-only"));
    let again = tmp.path().join("chroot-again");
    run(nix("nix")
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(&again)
        .args(["--option", "trusted-public-keys", &pk, &top]));
    assert_eq!(nix_closure_infos(Some(&again), &top), ours);
    assert_eq!(nix_paths(&again, &top), nix_paths(&chroot, &top));
    assert!(server.terminate().success());
}

#[test]
fn nix_copies_to_a_writable_server() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "serve-up-1");
    let pk = pk.trim().to_owned();
    let top = build_closure("serve-up");
    let (server, dest) = writable_server(tmp.path(), "upload-token");
    let to = server.url();

    // Without credentials Nix is refused.
    let upload = format!("{to}?secret-key={}", sk.display());
    let out = nix("nix")
        .args(["copy", "--to", &upload])
        .arg(&top)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unauthenticated upload worked");
    assert!(fs::read_dir(&dest).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".narinfo")
    }));
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    assert!(metrics.contains("status=\"401\"}"), "{metrics}");

    // With the token as a netrc password it works.
    let netrc = write_netrc(&tmp.path().join("netrc"), "upload-token");
    run(nix("nix")
        .args(["copy", "--to", &upload])
        .args(["--option", "netrc-file"])
        .arg(&netrc)
        .arg(&top));

    // nixferry reads the result back and verifies the signatures.
    let listed = run_text(
        nixferry()
            .args(["path-info", "-r"])
            .arg(format!("file://{}", dest.display()))
            .arg(&top),
    );
    assert_eq!(listed.lines().count(), nix_closure_infos(None, &top).len());
    let again = tmp.path().join("again");
    run(nixferry()
        .args(["copy", "--from", &to, "--to"])
        .arg(format!("file://{}", again.display()))
        .args(["--trusted-key", &pk, &top]));
    let chroot = tmp.path().join("chroot");
    run(nix("nix")
        .args(["copy", "--from", &to, "--to"])
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &pk, &top]));
    assert_eq!(
        nix_closure_infos(Some(&chroot), &top),
        nix_closure_infos(None, &top)
    );
    assert!(server.terminate().success());
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _pk, paths) = cache_with_paths(tmp.path());
    let server = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let hash = hash_part(&paths[3]);
    let narinfo = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = narinfo_field(&narinfo, "URL");
    let nar = fs::read(cache.join(&url)).unwrap();
    // A request sent, its answer not read yet.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /{url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    let pid = server.child.id().to_string();
    run(Command::new("kill").args(["-TERM", &pid]));
    std::thread::sleep(Duration::from_millis(200));
    // No new connections, but the one in flight completes.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let mut raw = first.to_vec();
    raw.extend_from_slice(&rest);
    assert_eq!(parse_reply(&raw, false).body, nar);
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

/// A `--write` server for a new `file://` cache `dir/dest`, taking
/// `token`; returns it and the cache directory.
pub(crate) fn writable_server(dir: &Path, token: &str) -> (Server, PathBuf) {
    writable_server_on(dir, token, 0)
}

/// [`writable_server`] on `port` (0: a free one); started again on the
/// same port, it serves the same cache.
pub(crate) fn writable_server_on(dir: &Path, token: &str, port: u16) -> (Server, PathBuf) {
    let dest = dir.join("dest");
    let token_file = dir.join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = Server::start_on(
        &[
            "--store",
            &format!("file://{}", dest.display()),
            "--write",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        port,
    );
    (server, dest)
}

/// A proxy on 127.0.0.1 in front of `target` that cuts every other
/// connection after `cut_after` bytes of the server's answers, as a flaky
/// network would; returns its port and the count of connections it cut.
fn flaky_proxy(target: u16, cut_after: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&cut);
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let limit = if n % 2 == 0 { cut_after } else { usize::MAX };
            let counter = Arc::clone(&counter);
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut sent = 0;
                let mut buf = [0u8; 8192];
                loop {
                    let n = match server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n.min(limit - sent),
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= limit {
                        counter.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, cut)
}

/// Connections cut in the middle of answers (narinfos and NARs): the copy
/// still completes, through retries, and every path verifies.
#[test]
fn copies_through_a_connection_cutting_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, pk, paths) = cache_with_paths(tmp.path());
    let server = Server::start(&["--store", &format!("file://{}", cache.display())]);
    let (port, cut) = flaky_proxy(server.port, 300);
    let dest = tmp.path().join("dest");
    let out = nixferry()
        .args(["copy", "--from", &format!("http://127.0.0.1:{port}")])
        .args(["--to", &format!("file://{}", dest.display())])
        .args(["--trusted-key", &pk])
        .args(&paths)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(cut.load(Ordering::SeqCst) > 0, "no connection was cut");
    for p in &paths {
        assert!(dest.join(format!("{}.narinfo", hash_part(p))).is_file());
    }
    // What arrived is exactly what the cache holds.
    let out = nixferry()
        .args(["copy", "--from", &format!("file://{}", dest.display())])
        .args([
            "--to",
            &format!("file://{}", tmp.path().join("again").display()),
        ])
        .args(["--trusted-key", &pk])
        .args(&paths)
        .output()
        .unwrap();
    assert_success(&out);
}

#[test]
fn nar_urls_outlive_the_server_that_made_them() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "serve-replica-1");
    let pk = pk.trim().to_owned();
    let top = build_closure("replicas");
    let paths: Vec<String> = run_text(nix("nix-store").args(["-qR", &top]))
        .lines()
        .map(str::to_owned)
        .collect();
    let serve = || {
        Server::start(&[
            "--store",
            "local",
            "--secret-key-file",
            sk.to_str().unwrap(),
        ])
    };
    let hash_part = |p: &str| p["/nix/store/".len()..][..32].to_owned();

    // Narinfos from a server that is then stopped.
    let first = serve();
    let urls: Vec<String> = paths
        .iter()
        .map(|p| {
            let r = first.get(&format!("/{}.narinfo", hash_part(p)));
            assert_eq!(r.status, 200, "{p}");
            narinfo_field(&String::from_utf8_lossy(&r.body), "URL")
        })
        .collect();
    assert!(first.terminate().success());

    // Two new servers of the same store, asked in turn: each answers the
    // NAR URLs the first one handed out, and each other's.
    let replicas = [serve(), serve()];
    for (i, (path, url)) in paths.iter().zip(&urls).enumerate() {
        let dump = run(nix("nix-store").args(["--dump", path])).stdout;
        let r = replicas[i % 2].get(&format!("/{url}"));
        assert_eq!(r.status, 200, "{url}");
        assert!(r.body == dump, "{url}: not the NAR of {path}");
        let narinfo = replicas[(i + 1) % 2].get(&format!("/{}.narinfo", hash_part(path)));
        let url = narinfo_field(&String::from_utf8_lossy(&narinfo.body), "URL");
        assert_eq!(replicas[i % 2].get(&format!("/{url}")).body, dump);
    }
    // A URL naming a NAR hash the path does not have is not served.
    let wrong = format!("/nar/{}-{}.nar", hash_part(&top), "1".repeat(52));
    assert_eq!(replicas[0].get(&wrong).status, 404);

    // Nix substitutes through either.
    let ours = nix_closure_infos(None, &top);
    for (i, server) in replicas.iter().enumerate() {
        let chroot = tmp.path().join(format!("chroot-{i}"));
        run(nix("nix")
            .args(["copy", "--from", &server.url(), "--to"])
            .arg(&chroot)
            .args(["--option", "trusted-public-keys", &pk, &top]));
        assert_eq!(nix_closure_infos(Some(&chroot), &top), ours);
    }
}

#[test]
fn private_caches_need_a_token_and_nix_brings_it() {
    if !have_nix() {
        return;
    }
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let (cache, pk, paths) = cache_with_paths(tmp.path());
    let tokens = tmp.path().join("tokens");
    fs::write(&tokens, "# the fleet\nread fleet-token\n").unwrap();
    let server = Server::start(&[
        "--store",
        &format!("file://{}", cache.display()),
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let basic = |password: &str| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("nix:{password}"));
        format!("Basic {creds}")
    };
    let get = |path: &str, auth: Option<String>| {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(server.port, "GET", path, &headers, None)
    };
    let narinfo = format!("/{}.narinfo", hash_part(&paths[0]));

    // No token, or a wrong one: 401, asking for credentials.
    for auth in [None, Some("Bearer nope".to_owned()), Some(basic("nope"))] {
        let r = get(&narinfo, auth.clone());
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic "));
    }
    assert_eq!(get("/metrics", None).status, 401);
    assert_eq!(get("/nix-cache-info", None).status, 401);
    // The token, as a bearer or as a netrc password; what stays open.
    assert_eq!(get(&narinfo, Some("Bearer fleet-token".into())).status, 200);
    assert_eq!(get(&narinfo, Some(basic("fleet-token"))).status, 200);
    assert_eq!(get("/metrics", Some(basic("fleet-token"))).status, 200);
    assert_eq!(
        get("/nix-cache-info", Some(basic("fleet-token"))).status,
        200
    );
    assert_eq!(get("/health", None).status, 200);

    // Nix substitutes with the token from its netrc file, and fails loudly
    // with a wrong one (instead of falling back to building).
    let netrc = |name: &str, password: &str| write_netrc(&tmp.path().join(name), password);
    let nix_copy = |netrc: &Path, to: &Path| {
        nix("nix")
            .args(["copy", "--from", &server.url(), "--to"])
            .arg(to)
            .args(["--option", "trusted-public-keys", &pk])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc)
            .arg(&paths[0])
            .output()
            .unwrap()
    };
    let out = nix_copy(
        &netrc("netrc-wrong", "nope"),
        &tmp.path().join("chroot-wrong"),
    );
    assert!(!out.status.success(), "a wrong token copied");
    assert!(
        stderr(&out).contains("does not appear to be a binary cache"),
        "{}",
        stderr(&out)
    );
    let good = netrc("netrc", "fleet-token");
    let out = nix_copy(&good, &tmp.path().join("chroot"));
    assert_success(&out);
    run(nix("nix")
        .args(["path-info", "--store"])
        .arg(tmp.path().join("chroot"))
        .arg(&paths[0]));
    // nixferry's HTTP client reads the netrc file too.
    run(nixferry()
        .args(["copy", "--from"])
        .arg(format!("{}?netrc-file={}", server.url(), good.display()))
        .arg("--to")
        .arg(format!("file://{}", tmp.path().join("mirror").display()))
        .args(["--trusted-key", &pk, &paths[0]]));

    // SIGHUP reads the tokens file again.
    fs::write(&tokens, "read new-token\n").unwrap();
    let pid = server.child.id().to_string();
    run(Command::new("kill").args(["-HUP", &pid]));
    let start = Instant::now();
    while get(&narinfo, Some("Bearer new-token".into())).status != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "no reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&narinfo, Some("Bearer fleet-token".into())).status, 401);
    assert!(server.terminate().success());

    // nix-cache-info may be public; the rest stays private.
    let public = Server::start(&[
        "--store",
        &format!("file://{}", cache.display()),
        "--tokens-file",
        tokens.to_str().unwrap(),
        "--public-cache-info",
    ]);
    assert_eq!(public.get("/nix-cache-info").status, 200);
    assert_eq!(public.get(&narinfo).status, 401);
}
