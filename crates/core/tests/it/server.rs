//! The HTTP binary cache server (`nixferry::server`) as a library: start,
//! requests, settings that do not fit, and stopping (gracefully, with a
//! bounded grace, by drop). The full HTTP behaviour (routes, ranges,
//! uploads, hostile clients, Nix as a client) is tested through
//! `nixferry serve` in the CLI's tests.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nixferry::narinfo::{Compression, NarInfo};
use nixferry::server::{Server, ServerError};
use nixferry::signing::{SecretKey, Signature};
use nixferry::store::{add_to_store, PathInfo, Store};

use crate::common::read_all;

// ---------------------------------------------------------------- helpers

/// A `file://` cache in `dir/name` (uncompressed NAR files) holding a
/// path packed from a file of `size` bytes; the store and the path's
/// info.
async fn cache_with_path(dir: &Path, name: &str, size: usize) -> (Arc<dyn Store>, PathInfo) {
    let url = format!("file://{}?compression=none", dir.join(name).display());
    let store = nixferry::store::open(&url).unwrap();
    let tree = dir.join(format!("{name}-tree"));
    fs::create_dir_all(&tree).unwrap();
    // Incompressible, so that a big one fills socket buffers.
    let mut data = Vec::with_capacity(size + 8);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ size as u64;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    fs::write(tree.join("data"), &data).unwrap();
    let info = add_to_store(&*store, &tree, "served", &[]).await.unwrap();
    (store, info)
}

/// The path of a cache file relative to its root, for `info`'s narinfo.
fn narinfo_name(info: &PathInfo) -> String {
    format!("{}.narinfo", info.path.hash_part())
}

/// An HTTP response: status and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Splits a raw response (read to the end of the connection).
fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

/// The data of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// One request on a fresh connection (blocking).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

/// A `GET`, on a blocking thread.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || request(addr, "GET", &path, &[], b""))
        .await
        .unwrap()
}

/// Whether a connection to `addr` is refused, waiting a little for a
/// listener that is going away.
fn refused(addr: SocketAddr) -> bool {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Err(_) => return true,
            Ok(_) if start.elapsed() > Duration::from_secs(5) => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_file_cache_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "cache", 10_000).await;
    let cache = tmp.path().join("cache");
    let server = Server::builder(format!("file://{}", cache.display()))
        .listen("127.0.0.1:0".parse().unwrap())
        .priority(41)
        .want_mass_query(true)
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    assert_eq!(server.url(), format!("http://127.0.0.1:{}", addr.port()));

    let r = get(addr, "/nix-cache-info").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("StoreDir: /nix/store\n"), "{text}");
    assert!(text.contains("Priority: 41\n"), "{text}");
    assert!(text.contains("WantMassQuery: 1\n"), "{text}");

    // Liveness, for load balancers and service managers.
    let r = get(addr, "/health").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok\n"[..]));

    // The narinfo as it lies in the cache.
    let name = narinfo_name(&info);
    let r = get(addr, &format!("/{name}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fs::read(cache.join(&name)).unwrap());
    assert_eq!(
        get(addr, "/00000000000000000000000000000000.narinfo")
            .await
            .status,
        404
    );
    assert_eq!(get(addr, "/../etc/passwd").await.status, 404);

    // nixferry's own HTTP store reads the path back through it.
    let http = nixferry::store::open(&server.url()).unwrap();
    let found = http
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap();
    let got = &found[&info.path];
    assert_eq!((got.nar_hash, got.nar_size), (info.nar_hash, info.nar_size));
    let nar = read_all(http.nar(got).await.unwrap()).await.unwrap();
    assert_eq!(nar.len() as u64, info.nar_size);

    // Read-only unless told otherwise.
    let r = tokio::task::spawn_blocking(move || request(addr, "PUT", "/nix-cache-info", &[], b"x"))
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert!(
        r.head.to_ascii_lowercase().contains("allow: get, head"),
        "{}",
        r.head
    );

    server.shutdown().await.unwrap();
    assert!(refused(addr), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_download_in_flight_finish() {
    let tmp = tempfile::tempdir().unwrap();
    // Far more than the socket buffers hold: the server is still sending
    // when it is told to stop.
    let (_store, info) = cache_with_path(tmp.path(), "cache", 48 << 20).await;
    let cache = tmp.path().join("cache");
    let narinfo = fs::read_to_string(cache.join(narinfo_name(&info))).unwrap();
    let url = NarInfo::parse(&narinfo).unwrap().url().to_owned();
    let file = fs::read(cache.join(&url)).unwrap();
    let server = Server::builder(format!("file://{}", cache.display()))
        .shutdown_grace(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();

    // A download started, only its first bytes read.
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "GET /{url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    conn.read_exact(&mut first).unwrap();

    let stopping = tokio::spawn(server.shutdown());
    // No new connections, while the shutdown waits for the download.
    let addr_ = addr;
    assert!(tokio::task::spawn_blocking(move || refused(addr_))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the shutdown did not wait");

    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        rest
    })
    .await
    .unwrap();
    let mut raw = first.to_vec();
    raw.extend_from_slice(&rest);
    let reply = parse(&raw);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), file.len());
    assert!(reply.body == file, "the download came out different");
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the shutdown ends once the download is done")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "cache", 48 << 20).await;
    let cache = tmp.path().join("cache");
    let narinfo = fs::read_to_string(cache.join(narinfo_name(&info))).unwrap();
    let url = NarInfo::parse(&narinfo).unwrap().url().to_owned();
    let server = Server::builder(format!("file://{}", cache.display()))
        .shutdown_grace(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    // A client that stops reading.
    let mut conn = TcpStream::connect(server.local_addr()).unwrap();
    write!(conn, "GET /{url} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 16];
    conn.read_exact(&mut first).unwrap();
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("the shutdown waited past its grace")
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::builder(format!("file://{}", tmp.path().join("c").display()))
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/nix-cache-info").await.status, 200);
    drop(server);
    assert!(tokio::task::spawn_blocking(move || refused(addr))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_an_open_store_signed_with_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "cache", 5_000).await;
    let first = Server::builder(format!("file://{}", tmp.path().join("cache").display()))
        .start()
        .await
        .unwrap();
    // A binary cache served again, through a store already open: narinfos
    // made by the server and signed with its key, NARs recompressed.
    let key = SecretKey::generate("served-again-1").unwrap();
    let upstream = nixferry::store::open(&first.url()).unwrap();
    let logged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&logged);
    let again = Server::builder(upstream)
        .secret_keys([key.clone()])
        .compression(Compression::Zstd)
        .log(move |line| sink.lock().unwrap().push(line.to_owned()))
        .start()
        .await
        .unwrap();
    let http = nixferry::store::open(&again.url()).unwrap();
    let found = http
        .query_path_infos(std::slice::from_ref(&info.path))
        .await
        .unwrap();
    let got = &found[&info.path];
    assert_eq!(got.file.as_ref().unwrap().compression, Compression::Zstd);
    assert_eq!(got.signatures.len(), 1, "{:?}", got.signatures);
    let sig = Signature::parse(&got.signatures[0]).unwrap();
    assert_eq!(sig.key_name(), "served-again-1");
    let fingerprint = got.fingerprint(http.store_dir());
    assert!(key.public().verify(fingerprint.as_bytes(), &sig));
    let nar = read_all(http.nar(got).await.unwrap()).await.unwrap();
    assert_eq!(nar.len() as u64, info.nar_size);
    let narinfo_len = get(again.local_addr(), &format!("/{}", narinfo_name(&info)))
        .await
        .body
        .len();
    again.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
    let lines = logged.lock().unwrap().clone();
    // One line a request, once it is answered, with the bytes it sent.
    let narinfo = format!(
        "method=GET path=/{} status=200 bytes={} ms=",
        narinfo_name(&info),
        narinfo_len
    );
    assert!(lines.iter().any(|l| l.starts_with(&narinfo)), "{lines:?}");
    let nar = lines.iter().find(|l| l.contains("kind=nar ")).unwrap();
    assert!(nar.ends_with(" kind=nar end=done"), "{nar}");
    assert!(nar.contains(" client=127.0.0.1:"), "{nar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_checked_uploads_when_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "source", 5_000).await;
    let source = tmp.path().join("source");
    let narinfo = fs::read(source.join(narinfo_name(&info))).unwrap();
    let url = NarInfo::parse(std::str::from_utf8(&narinfo).unwrap())
        .unwrap()
        .url()
        .to_owned();
    let nar_file = fs::read(source.join(&url)).unwrap();

    let dest = tmp.path().join("dest");
    let server = Server::builder(format!("file://{}", dest.display()))
        .writable(true)
        .token("sekrit")
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    let put = move |path: String, auth: &'static str, body: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            let headers: &[&str] = if auth.is_empty() { &[] } else { &[auth] };
            request(addr, "PUT", &path, headers, &body)
        })
    };
    let bearer = "Authorization: Bearer sekrit";
    // No token, a wrong one.
    let r = put(format!("/{url}"), "", nar_file.clone()).await.unwrap();
    assert_eq!(r.status, 401);
    let r = put(
        format!("/{url}"),
        "Authorization: Bearer nope",
        nar_file.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // A narinfo before its NAR file.
    let r = put(format!("/{}", narinfo_name(&info)), bearer, narinfo.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // A NAR file that is not what its name says.
    let mut tampered = nar_file.clone();
    let last = tampered.len() - 100;
    tampered[last] ^= 1;
    let r = put(format!("/{url}"), bearer, tampered).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(!dest.join(&url).exists());
    // The real thing.
    let r = put(format!("/{url}"), bearer, nar_file.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = put(format!("/{}", narinfo_name(&info)), bearer, narinfo.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(fs::read(dest.join(narinfo_name(&info))).unwrap(), narinfo);
    assert_eq!(get(addr, &format!("/{url}")).await.body, nar_file);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refuses_settings_that_do_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let file = format!("file://{}", tmp.path().join("c").display());
    let key = SecretKey::generate("k-1").unwrap();
    let e = Server::builder(file.as_str())
        .writable(true)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::WritableNeedsToken), "{e}");
    let e = Server::builder(file.as_str())
        .writable(true)
        .token("")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::EmptyToken), "{e}");
    let e = Server::builder(file.as_str())
        .secret_key(key)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::KeysForFileStore), "{e}");
    let e = Server::builder(file.as_str())
        .compression(Compression::Xz)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServerError::UnsupportedCompression { .. }),
        "{e}"
    );
    let e = Server::builder("http://127.0.0.1:9/cache")
        .writable(true)
        .token("t")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::WritableNeedsFileStore), "{e}");
    let e = Server::builder("ssh://127.0.0.1")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::UnsupportedStore { .. }), "{e}");
    assert!(e.to_string().contains("'ssh'"), "{e}");
    let e = Server::builder("nonsense://x").start().await.unwrap_err();
    assert!(matches!(e, ServerError::Store(_)), "{e}");

    // An address in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = Server::builder(file.as_str())
        .listen(taken.local_addr().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, ServerError::Bind { .. }), "{e}");
}

/// The value of a metric (a line `name value`) in a `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `name` is `want`, for at most `within`.
async fn metric_becomes(addr: SocketAddr, name: &str, want: u64, within: Duration) {
    let start = Instant::now();
    loop {
        let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
        // The request asking counts as one connection and one request.
        let now = metric(&text, name).saturating_sub(1);
        if now == want {
            return;
        }
        assert!(start.elapsed() < within, "{name} is {now}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_one_to_close() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, _info) = cache_with_path(tmp.path(), "cache", 1_000).await;
    let server = Server::builder(format!("file://{}", tmp.path().join("cache").display()))
        .max_connections(3)
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    // Two idle connections, and a third asking: answered (3 is the limit).
    let idle: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert_eq!(get(addr, "/nix-cache-info").await.status, 200);
    // A third idle one takes the last slot: a request now waits...
    let third = TcpStream::connect(addr).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn(get(addr, "/nix-cache-info"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered beyond the limit");
    // ...until a connection closes.
    drop(third);
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once a connection closed")
        .unwrap();
    assert_eq!(reply.status, 200);
    drop(idle);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stalled_and_unread_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "cache", 32 << 20).await;
    let cache = tmp.path().join("cache");
    let narinfo = fs::read_to_string(cache.join(narinfo_name(&info))).unwrap();
    let url = NarInfo::parse(&narinfo).unwrap().url().to_owned();
    let server = Server::builder(format!("file://{}", cache.display()))
        .writable(true)
        .token("sekrit")
        .header_timeout(Duration::from_secs(1))
        .io_timeout(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let addr = server.local_addr();
    let closed_within = |mut s: TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        let start = Instant::now();
        let mut buf = [0; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) if start.elapsed() < within => return true,
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    let within = Duration::from_secs(8);
    // Idle: nothing sent.
    let idle = TcpStream::connect(addr).unwrap();
    // A request head sent a byte at a time, slower than the header timeout.
    let mut drip = TcpStream::connect(addr).unwrap();
    let dripping = std::thread::spawn(move || {
        for b in b"GET /nix-cache-info HTTP/1.1\r\n" {
            if drip.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    });
    // An upload whose body stops half way.
    let mut stalled = TcpStream::connect(addr).unwrap();
    write!(
        stalled,
        "PUT /log/{}-x.drv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\nContent-Length: 1000\r\n\r\nhalf",
        info.path.hash_part()
    )
    .unwrap();
    // A NAR download never read past its first bytes.
    let mut unread = TcpStream::connect(addr).unwrap();
    write!(unread, "GET /{url} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0; 16];
    unread.read_exact(&mut first).unwrap();
    let checks = tokio::task::spawn_blocking(move || {
        [closed_within(idle, within), closed_within(stalled, within)]
    });
    assert_eq!(
        checks.await.unwrap(),
        [true, true],
        "[idle, stalled upload]"
    );
    assert!(
        tokio::task::spawn_blocking(move || dripping.join().unwrap())
            .await
            .unwrap(),
        "the slow head was let through"
    );
    // The unread download's connection is gone from the server's count.
    metric_becomes(addr, "nixferry_http_connections_open", 0, within).await;
    metric_becomes(addr, "nixferry_http_requests_in_flight", 0, within).await;
    drop(unread);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_compression_share_a_small_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, info) = cache_with_path(tmp.path(), "cache", 3 << 20).await;
    let first = Server::builder(format!("file://{}", tmp.path().join("cache").display()))
        .start()
        .await
        .unwrap();
    // Served again with NARs compressed on the fly and listings made, by
    // one slot of CPU work at a time.
    let again = Server::builder(first.url())
        .compression(Compression::Zstd)
        .cpu_slots(1)
        .start()
        .await
        .unwrap();
    let addr = again.local_addr();
    let narinfo = get(addr, &format!("/{}", narinfo_name(&info))).await;
    let narinfo = NarInfo::parse(std::str::from_utf8(&narinfo.body).unwrap()).unwrap();
    let nar_url = format!("/{}", narinfo.url());
    let ls = format!("/{}.ls", info.path.hash_part());
    let asked: Vec<_> = (0..4)
        .flat_map(|_| {
            let (nar, ls) = (nar_url.clone(), ls.clone());
            [
                tokio::spawn(async move { get(addr, &nar).await }),
                tokio::spawn(async move { get(addr, &ls).await }),
            ]
        })
        .collect();
    let mut listings = Vec::new();
    for (i, reply) in asked.into_iter().enumerate() {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.head);
        if i % 2 == 0 {
            let nar = zstd::decode_all(&reply.body[..]).unwrap();
            assert_eq!(nar.len() as u64, info.nar_size);
        } else {
            listings.push(reply.body);
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&listings[0]).unwrap();
    assert_eq!(json["root"]["entries"]["data"]["size"], 3 << 20);
    assert!(listings.iter().all(|l| *l == listings[0]));
    again.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
}
