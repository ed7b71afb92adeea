//! `nixferry serve` in front of a fleet: thousands of connections that do
//! nothing (or next to nothing) do not starve a real client, and the
//! server runs under a service manager (socket activation, readiness).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::serve::{cache_with_paths, hash_part, narinfo_field, parse_reply, Server};

/// Raises this process's limit of open files to at least `n` (within its
/// hard limit), failing if it cannot.
fn open_files_at_least(n: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c >= n) || limit.current.is_none() {
        return;
    }
    let max = limit.maximum;
    assert!(
        max.is_none_or(|m| m >= n),
        "the hard limit of open files, {max:?}, is below {n}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: max,
        },
    )
    .unwrap();
}

/// A metric's value in a `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn thousands_of_idle_and_slow_connections_do_not_starve_a_client() {
    const EACH: usize = 1_000;
    open_files_at_least(3 * EACH as u64 + 256);
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _pk, paths) = cache_with_paths(tmp.path());
    let header_timeout = 12;
    let server = Server::start(&[
        "--store",
        &format!("file://{}", cache.display()),
        "--header-timeout",
        &header_timeout.to_string(),
    ]);
    let opened = Instant::now();
    let connect = || TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // Connections that send nothing, and connections that send a request
    // head a byte at a time, never finishing it.
    let idle: Vec<_> = (0..EACH).map(|_| connect()).collect();
    let mut drips: Vec<_> = (0..EACH)
        .map(|_| {
            let mut s = connect();
            s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let dripping = std::thread::spawn(move || {
        let mut cut = vec![false; drips.len()];
        for _ in 0..(header_timeout * 4 + 20) {
            for (s, cut) in drips.iter_mut().zip(&mut cut) {
                if !*cut && s.write_all(b"a").is_err() {
                    *cut = true;
                }
            }
            if cut.iter().all(|c| *c) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        cut.iter().filter(|c| **c).count()
    });
    // All of them accepted (the server counts them).
    let open = || {
        let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
        metric(&metrics, "nixferry_http_connections_open")
    };
    while open() <= 2 * EACH as u64 {
        assert!(
            opened.elapsed() < Duration::from_secs(header_timeout / 2),
            "only {} connections open",
            open()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A client still gets every narinfo and NAR, promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        for path in &paths {
            let asked = Instant::now();
            let narinfo = server.get(&format!("/{}.narinfo", hash_part(path)));
            assert_eq!(narinfo.status, 200);
            let text = String::from_utf8(narinfo.body).unwrap();
            let nar = server.get(&format!("/{}", narinfo_field(&text, "URL")));
            assert_eq!(nar.status, 200);
            let size: usize = narinfo_field(&text, "FileSize").parse().unwrap();
            assert_eq!(nar.body.len(), size);
            slowest = slowest.max(asked.elapsed());
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a narinfo and its NAR took {slowest:?}"
    );
    assert!(open() > 2 * EACH as u64, "connections were closed early");
    assert!(
        opened.elapsed() < Duration::from_secs(header_timeout),
        "too slow to tell: the header timeout has passed"
    );

    // The header timeout closes all of them, slow drips included.
    let deadline = opened + Duration::from_secs(header_timeout + 10);
    for mut s in idle {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        // Whatever the server says, then the end of the connection.
        let mut said = Vec::new();
        if let Err(e) = s.read_to_end(&mut said) {
            assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "an idle connection is still open: {e}"
            );
        }
    }
    let cut = dripping.join().unwrap();
    assert_eq!(cut, EACH, "slow heads were let through");
    assert_eq!(open(), 1);
}

/// Starts `nixferry serve` the way systemd's socket activation does: the
/// listening socket (bound here, on a free port) as file descriptor 3,
/// `LISTEN_FDS=1` and `LISTEN_PID` naming the server's process; and
/// `NOTIFY_SOCKET` for readiness. Returns the child and the port.
fn start_activated(args: &[&str], notify: &std::path::Path) -> (std::process::Child, u16) {
    // Python binds and listens, then becomes the server (same process:
    // exec keeps the pid that LISTEN_PID names).
    let script = "import os, socket, sys\n\
        s = socket.socket()\n\
        s.bind(('127.0.0.1', 0))\n\
        s.listen(128)\n\
        print(s.getsockname()[1], flush=True)\n\
        if s.fileno() != 3: os.dup2(s.fileno(), 3)\n\
        os.set_inheritable(3, True)\n\
        os.environ['LISTEN_FDS'] = '1'\n\
        os.environ['LISTEN_PID'] = str(os.getpid())\n\
        os.execv(sys.argv[1], sys.argv[1:])\n";
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_nixferry"))
        .arg("serve")
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

#[test]
fn serves_a_socket_from_the_service_manager_and_says_when_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _pk, paths) = cache_with_paths(tmp.path());
    let notify_path = tmp.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let store = format!("file://{}", cache.display());
    let (mut child, port) = start_activated(&["--store", &store], &notify_path);
    // The socket takes connections before the server is up: a request
    // sent now is answered once it is.
    let mut early = TcpStream::connect(("127.0.0.1", port)).unwrap();
    early
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0; 64];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("listening on http://127.0.0.1:{port} (a socket from the service manager)")
    );
    let mut raw = Vec::new();
    early.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_reply(&raw, false).status, 200);
    let server = Server::adopt(child, port);
    let narinfo = server.get(&format!("/{}.narinfo", hash_part(&paths[0])));
    assert_eq!(narinfo.status, 200);
    // No socket of its own: the default address (127.0.0.1:5000) is not
    // bound by it.
    let status = server.terminate();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(status.success(), "{status}");
}

#[test]
fn sockets_meant_for_another_process_are_left_alone() {
    // LISTEN_PID names another process: the server binds its own address.
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _pk, _paths) = cache_with_paths(tmp.path());
    let mut child = crate::common::nixferry()
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(format!("file://{}", cache.display()))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let server = Server::adopt(child, port);
    assert_eq!(server.get("/health").status, 200);
    drop((server, stderr));
}

#[test]
fn listens_on_a_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = crate::common::nixferry()
        .args(["serve", "--listen", "localhost:0", "--store"])
        .arg(format!("file://{}", tmp.path().join("cache").display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    let server = Server::adopt(child, addr.port());
    if addr.is_ipv4() {
        assert_eq!(server.get("/health").status, 200);
    }
    drop((server, stderr));
    // Not an address, not a host: refused with what to give instead.
    let out = crate::common::nixferry()
        .args(["serve", "--listen", "nowhere", "--store"])
        .arg(format!("file://{}", tmp.path().join("cache").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
}
