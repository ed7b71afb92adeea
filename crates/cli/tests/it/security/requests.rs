//! Hostile requests to `nixferry serve`, and `Range` headers, on every
//! backend.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use super::Cache;
use crate::serve::{parse_reply, request, Reply, Server};

/// A file outside the cache that no request may reach, and its content.
const SECRET: &str = "do not serve\n";

/// What the server must do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Answer with this status.
    Status(u16),
    /// Refuse a request head over the server's limit: 431, or the
    /// connection closed without an answer (the server stops reading such
    /// a request, and the client may see the reset first).
    TooLarge,
    /// Close the connection without an answer.
    Closed,
}

/// Sends `raw` on a fresh connection; the answer, or `None` if the
/// connection closed without one.
fn send_raw(port: u16, raw: &[u8]) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may stop reading and close the connection part way.
    let _ = s.write_all(raw);
    let mut answer = Vec::new();
    // A reset after a complete answer is the server closing early.
    let _ = s.read_to_end(&mut answer);
    (!answer.is_empty()).then(|| parse_reply(&answer, raw.starts_with(b"HEAD ")))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn with_method(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn with_headers(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
        .into_bytes()
}

/// The hostile requests, each with its answer. `evil` is the hash part of
/// a narinfo (and a log's name) that is a symlink out of the cache.
fn hostile_requests(evil: &str) -> Vec<(String, Vec<u8>, Answer)> {
    use Answer::{Closed, Status, TooLarge};
    let h52 = "0xby1grmcpivv8g88nx1zf0vgs2yz7lik9cwdp1ygdyz71x9spwv";
    let mut cases: Vec<(String, Vec<u8>, Answer)> = [
        // Path traversal, plain and percent-escaped.
        "/../../../../etc/passwd",
        "/nar/../nix-cache-info",
        "/log/../../etc/passwd",
        "/nix-cache-info/..",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/nar%2f..%2f..%2fetc%2fpasswd",
        "/nar/..%2fnix-cache-info",
        "/%6eix-cache-info",
        "/nar\\..\\nix-cache-info",
        // Not a name of the layout.
        "//etc/passwd",
        "/etc/passwd",
        "/0000000000000000000000000000000000000000000000000000000000000000000000.narinfo",
        &format!("/nar/{h52}.nar.gz"),
        &format!("/nar/{h52}.nar/"),
        "/nar/\u{e9}",
        // Names of the layout that are symlinks out of the cache.
        &format!("/{evil}.narinfo"),
        &format!("/log/{evil}-x.drv"),
        // Absolute-form and the forms of other methods.
        "http://evil.example/../etc/passwd",
        "http://evil.example/%2e%2e/etc/passwd",
        "*",
        // Just under the URI length limit: still only a path.
        &format!("/{}.narinfo", "a".repeat(60_000)),
    ]
    .iter()
    .map(|p| (format!("GET {p}"), get(p), Status(404)))
    .collect();
    let more = [
        // The authority of an absolute-form target is ignored: this is
        // the cache's own nix-cache-info.
        (
            "absolute URL",
            get("http://evil.example/nix-cache-info"),
            Status(200),
        ),
        ("a query", get("/nix-cache-info?x=../../etc"), Status(200)),
        (
            "CONNECT",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n".to_vec(),
            Status(404),
        ),
        ("OPTIONS *", with_method("OPTIONS", "*"), Status(404)),
        (
            "DELETE",
            with_method("DELETE", "/nix-cache-info"),
            Status(405),
        ),
        ("POST", with_method("POST", &format!("/{evil}.narinfo")), Status(405)),
        (
            "unknown method",
            with_method("FOO", "/nix-cache-info"),
            Status(405),
        ),
        (
            "method not a token",
            with_method("G@T", "/nix-cache-info"),
            Status(400),
        ),
        (
            "read-only PUT",
            b"PUT /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".to_vec(),
            Status(405),
        ),
        // Overlong request lines and headers.
        (
            "URI over 64 KiB",
            get(&format!("/{}.narinfo", "a".repeat(70_000))),
            Status(414),
        ),
        (
            "request line of 1 MB",
            get(&format!("/{}", "a".repeat(1 << 20))),
            TooLarge,
        ),
        (
            "header of 1 MB",
            with_headers(
                "/nix-cache-info",
                &format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
            ),
            TooLarge,
        ),
        (
            "200 headers",
            with_headers(
                "/nix-cache-info",
                &(0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>(),
            ),
            TooLarge,
        ),
        // Malformed requests.
        (
            "NUL in the path",
            b"GET /nix-cache-info\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "space in the path",
            b"GET /nix cache-info HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "HTTP/0.9",
            b"GET /nix-cache-info\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "HTTP/3.0",
            b"GET /nix-cache-info HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Closed,
        ),
        (
            "header without a colon",
            with_headers("/nix-cache-info", "Broken header\r\n"),
            Status(400),
        ),
        (
            "bare CR in a header",
            with_headers("/nix-cache-info", "X: a\rb\r\n"),
            Status(400),
        ),
        (
            "two Content-Lengths",
            b"PUT /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef".to_vec(),
            Status(400),
        ),
        (
            "negative Content-Length",
            b"PUT /nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "unknown Transfer-Encoding",
            b"PUT /nix-cache-info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            Status(400),
        ),
        (
            "binary garbage",
            b"\x00\x01\x02\xff\xfe garbage\r\n\r\n".to_vec(),
            Status(400),
        ),
    ];
    cases.extend(
        more.into_iter()
            .map(|(name, raw, answer)| (name.to_owned(), raw, answer)),
    );
    cases
}

/// Runs the hostile requests against a server.
fn assert_hostile_requests(server: &Server, evil: &str, backend: &str) {
    for (name, raw, expected) in hostile_requests(evil) {
        let case = format!("{backend}: {name}");
        let reply = send_raw(server.port, &raw);
        let got = reply
            .as_ref()
            .map_or(Answer::Closed, |r| Answer::Status(r.status));
        let as_expected = match expected {
            Answer::TooLarge => matches!(got, Answer::Closed | Answer::Status(431)),
            _ => got == expected,
        };
        assert!(as_expected, "{case}: {got:?}, expected {expected:?}");
        if let Some(r) = reply {
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains("root:") && !body.contains(SECRET),
                "{case}: {body}"
            );
            if r.status == 405 {
                // Read-only: PUT is not allowed either.
                assert_eq!(r.header("allow"), Some("GET, HEAD"), "{case}");
            }
        }
    }
    // Still up and answering.
    assert_eq!(server.get("/nix-cache-info").status, 200, "{backend}");
}

#[test]
fn hostile_requests_get_the_expected_answers() {
    let cache = Cache::new("compression=none");
    // A narinfo and a log with names of the layout, symlinks out of the
    // cache.
    let secret = cache.dir().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let evil = "0000000000000000000000000000000a";
    std::fs::create_dir_all(cache.root.join("log")).unwrap();
    std::os::unix::fs::symlink(&secret, cache.root.join(format!("{evil}.narinfo"))).unwrap();
    std::os::unix::fs::symlink(&secret, cache.root.join(format!("log/{evil}-x.drv"))).unwrap();

    let files = Server::start(&["--store", &cache.store_url()]);
    assert_hostile_requests(&files, evil, "file:// cache");
    // A store served with narinfos and NARs made on the fly: here the
    // file:// cache through its server.
    let store = Server::start(&["--store", &files.url()]);
    assert_hostile_requests(&store, evil, "served store");
}

/// What a `Range` request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranged {
    /// 206 with bytes `start..=end` and their `Content-Range`.
    Part(usize, usize),
    /// 200 with the whole body, the `Range` ignored.
    Whole,
    /// 416 with `Content-Range: bytes */<length>` and no body.
    Unsatisfiable,
}

/// `Range` headers (and other headers sent with them) for a body of `len`
/// bytes, each with its answer.
fn range_cases(len: usize) -> Vec<(String, Ranged)> {
    use Ranged::{Part, Unsatisfiable, Whole};
    let range = |r: &str| format!("Range: {r}\r\n");
    vec![
        (range("bytes=0-0"), Part(0, 0)),
        (range("bytes=10-109"), Part(10, 109)),
        (range("bytes=-7"), Part(len - 7, len - 1)),
        (range("bytes=100-"), Part(100, len - 1)),
        (range(&format!("bytes=0-{}", len * 2)), Part(0, len - 1)),
        (
            range(&format!("bytes={0}-{0}", len - 1)),
            Part(len - 1, len - 1),
        ),
        (range(&format!("bytes=-{}", len * 2)), Part(0, len - 1)),
        (range("BYTES=1-2"), Part(1, 2)),
        // Wholly outside the body.
        (range(&format!("bytes={len}-")), Unsatisfiable),
        (range(&format!("bytes={len}-{}", len + 10)), Unsatisfiable),
        (range("bytes=-0"), Unsatisfiable),
        // Malformed, several ranges, or not to be honoured: ignored.
        (range("bytes=5-1"), Whole),
        (range("bytes=0-1,5-6"), Whole),
        (range(&format!("bytes=0-1,{len}-")), Whole),
        (range(&format!("bytes={len}-,-0")), Whole),
        (range("bytes=x-1"), Whole),
        (range("items=0-1"), Whole),
        (range("bytes 0-1"), Whole),
        (range("bytes="), Whole),
        (range("bytes=-"), Whole),
        (range("bytes=1-2-3"), Whole),
        (range("bytes=+1-2"), Whole),
        (range(&format!("bytes=0-{}", "9".repeat(40))), Whole),
        (range(&"bytes=0-0,".repeat(500)), Whole),
        (range("bytes=0-1") + &range("bytes=2-3"), Whole),
        (range("bytes=0-1") + "If-Range: \"x\"\r\n", Whole),
    ]
}

/// Checks every range case against the NAR at `path` of `server`, whose
/// bytes are `nar`.
fn assert_ranges(server: &Server, path: &str, nar: &[u8], backend: &str) {
    let len = nar.len();
    for (headers, expected) in range_cases(len) {
        let case = format!("{backend}: {headers:?}");
        let r = send_raw(server.port, &with_headers(path, &headers)).unwrap();
        match expected {
            Ranged::Part(start, end) => {
                assert_eq!(r.status, 206, "{case}");
                let range = format!("bytes {start}-{end}/{len}");
                assert_eq!(r.header("content-range"), Some(range.as_str()), "{case}");
                assert!(r.body == nar[start..=end], "{case}: wrong bytes");
            }
            Ranged::Whole => {
                assert_eq!(r.status, 200, "{case}");
                assert_eq!(r.header("content-range"), None, "{case}");
                assert!(r.body == nar, "{case}: wrong bytes");
            }
            Ranged::Unsatisfiable => {
                assert_eq!(r.status, 416, "{case}");
                let range = format!("bytes */{len}");
                assert_eq!(r.header("content-range"), Some(range.as_str()), "{case}");
                assert!(r.body.is_empty(), "{case}");
            }
        }
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{case}");
    }
    // HEAD ignores a range: the whole length, no body.
    let head = request(server.port, "HEAD", path, &[("Range", "bytes=0-1")], None);
    assert_eq!(head.status, 200, "{backend}: HEAD");
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str()),
        "{backend}: HEAD"
    );
}

#[test]
fn ranges_are_answered_alike_on_every_backend() {
    let cache = Cache::new("compression=none");
    let nar = cache.nar_file();
    assert!(nar.len() > 100_000);
    let files = Server::start(&["--store", &cache.store_url()]);
    assert_ranges(&files, &format!("/{}", cache.url), &nar, "file:// cache");

    // A narinfo is in memory: a range is ignored.
    let narinfo_path = format!("/{}.narinfo", cache.hash);
    let r = request(
        files.port,
        "GET",
        &narinfo_path,
        &[("Range", "bytes=0-1")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, cache.narinfo.as_bytes());

    // NARs made on the fly: uncompressed, their length is known and a
    // range is served (the NAR is dumped and its first bytes skipped).
    let store = Server::start(&["--store", &files.url()]);
    let narinfo = String::from_utf8(store.get(&narinfo_path).body).unwrap();
    let url = crate::serve::narinfo_field(&narinfo, "URL");
    assert!(url.ends_with(".nar"), "{url}");
    assert_ranges(&store, &format!("/{url}"), &nar, "served store");

    // Compressed on the fly: the length is unknown, the whole file is
    // sent, and ranges are not offered.
    let zstd = Server::start(&["--store", &files.url(), "--compression", "zstd"]);
    let narinfo = String::from_utf8(zstd.get(&narinfo_path).body).unwrap();
    let url = crate::serve::narinfo_field(&narinfo, "URL");
    assert!(url.ends_with(".nar.zst"), "{url}");
    let whole = zstd.get(&format!("/{url}"));
    assert_eq!(whole.status, 200);
    for (headers, _) in range_cases(nar.len()) {
        let r = send_raw(zstd.port, &with_headers(&format!("/{url}"), &headers)).unwrap();
        assert_eq!(r.status, 200, "zstd: {headers:?}");
        assert_eq!(r.header("content-range"), None, "zstd: {headers:?}");
        assert_eq!(r.header("accept-ranges"), None, "zstd: {headers:?}");
        assert!(r.body == whole.body, "zstd: {headers:?}: wrong bytes");
    }
}

#[test]
fn ranges_of_nars_dumped_from_the_local_store() {
    use crate::common::{generate_key, have_nix, nix, run, run_text};
    if !have_nix() {
        return;
    }
    // Several of the dump's chunks (256 KiB each), so that ranges start
    // and end inside and across them.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ranges-data");
    let mut x: u32 = 0x9e37_79b9;
    let data: Vec<u8> = (0..700_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    let path = run_text(nix("nix-store").arg("--add").arg(&file));
    let nar = run(nix("nix-store").args(["--dump", &path])).stdout;
    let (sk, _) = generate_key(tmp.path(), "ranges-1");
    let local = Server::start(&[
        "--store",
        "local",
        "--secret-key-file",
        sk.to_str().unwrap(),
    ]);
    let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
    let narinfo = String::from_utf8(local.get(&format!("/{hash}.narinfo")).body).unwrap();
    let url = crate::serve::narinfo_field(&narinfo, "URL");
    assert_ranges(&local, &format!("/{url}"), &nar, "local store");
    for (start, end) in [(262_143, 262_144), (262_144, 524_288), (100, 600_000)] {
        let r = request(
            local.port,
            "GET",
            &format!("/{url}"),
            &[("Range", &format!("bytes={start}-{end}"))],
            None,
        );
        assert_eq!(r.status, 206);
        assert!(r.body == nar[start..=end], "{start}-{end}: wrong bytes");
    }
}
