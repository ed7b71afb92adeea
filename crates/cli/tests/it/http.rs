//! `nixferry copy` with `http://` caches: from a cache Nix wrote, served
//! by a static server, and to the test server that accepts PUT, with a
//! bearer token from `NIXFERRY_HTTP_TOKEN`.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_success, nixferry, vectors};

/// A server process, killed (by its pid) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(mut cmd: Command, port_file: Option<&Path>, port: u16) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for the HTTP tests");
        let start = Instant::now();
        let port = match port_file {
            None => port,
            Some(f) => loop {
                if let Ok(p) = fs::read_to_string(f) {
                    break p.trim().parse().unwrap();
                }
                assert!(start.elapsed() < Duration::from_secs(20), "no server");
                std::thread::sleep(Duration::from_millis(20));
            },
        };
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "no server");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn copies_from_and_to_http_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let vectors = vectors();
    let pk = fs::read_to_string(vectors.join("keys/nixspec-test-1.public")).unwrap();
    let top = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(vectors.join("binary-cache/signed-xz"));
    let source = Server::start(cmd, None, port);

    // http → file://, signatures checked.
    let local = tmp.path().join("local");
    let to = format!("file://{}", local.display());
    let out = nixferry()
        .args([
            "copy",
            "--from",
            &source.url(),
            "--to",
            &to,
            "--trusted-key",
            pk.trim(),
            top,
        ])
        .output()
        .unwrap();
    assert_success(&out);
    for hash in [
        "jgs69zx98r4fpm73d82y357pps9llcic",
        "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b",
    ] {
        assert!(local.join(format!("{hash}.narinfo")).is_file(), "{hash}");
    }
    // Untrusted: refused.
    let out = nixferry()
        .args(["copy", "--from", &source.url(), "--to"])
        .arg(format!("file://{}", tmp.path().join("refused").display()))
        .arg(top)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks a valid signature"), "{err}");

    // file:// → http with a bearer token.
    let remote = tmp.path().join("remote");
    let port_file = tmp.path().join("port");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/it/http_server.py"))
        .arg("--dir")
        .arg(&remote)
        .arg("--port-file")
        .arg(&port_file)
        .args(["--token", "t0ken"]);
    let sink = Server::start(cmd, Some(&port_file), 0);
    let dest = format!("{}?compression=zstd&retries=0", sink.url());
    let out = nixferry()
        .args([
            "copy",
            "--from",
            &to,
            "--to",
            &dest,
            "--trusted-key",
            pk.trim(),
            top,
        ])
        .env_remove("NIXFERRY_HTTP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");

    let out = nixferry()
        .args([
            "copy",
            "--from",
            &to,
            "--to",
            &dest,
            "--trusted-key",
            pk.trim(),
            top,
        ])
        .env("NIXFERRY_HTTP_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_success(&out);
    let narinfo =
        fs::read_to_string(remote.join("jgs69zx98r4fpm73d82y357pps9llcic.narinfo")).unwrap();
    assert!(narinfo.contains("Compression: zstd"), "{narinfo}");
    assert!(narinfo.contains("Sig: nixspec-test-1:"), "{narinfo}");
}

/// An HTTPS cache whose certificate is issued by a CA of the test's own:
/// refused at once, without retries, until `SSL_CERT_FILE` names the CA;
/// then the copy works.
#[test]
fn https_with_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let vectors = vectors();
    let pk = fs::read_to_string(vectors.join("keys/nixspec-test-1.public")).unwrap();
    let top = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        tmp.path().join("ca.pem"),
        tmp.path().join("cert.pem"),
        tmp.path().join("key.pem"),
    );
    fs::write(&ca_file, ca.pem()).unwrap();
    fs::write(&cert_file, cert.pem()).unwrap();
    fs::write(&key_file, key.serialize_pem()).unwrap();

    let port_file = tmp.path().join("port");
    let connections = tmp.path().join("connections");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/it/http_server.py"))
        .arg("--dir")
        .arg(vectors.join("binary-cache/signed-xz"))
        .arg("--port-file")
        .arg(&port_file)
        .arg("--tls-cert")
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .arg("--connections")
        .arg(&connections);
    let server = Server::start(cmd, Some(&port_file), 0);
    let url = format!("https://127.0.0.1:{}", server.port);
    let copy = |out: &str| {
        let mut c = nixferry();
        c.env_remove("NIX_SSL_CERT_FILE")
            .env_remove("SSL_CERT_FILE")
            .args(["copy", "--from", &url, "--to"])
            .arg(format!("file://{}", tmp.path().join(out).display()))
            .args(["--trusted-key", pk.trim(), top]);
        c
    };

    let out = copy("refused").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");

    let out = copy("copied")
        .env("SSL_CERT_FILE", &ca_file)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(tmp
        .path()
        .join("copied/jgs69zx98r4fpm73d82y357pps9llcic.narinfo")
        .is_file());

    // The first copy refused the certificate once and did not try again.
    // The server handles connections one after the other, so all of the
    // first copy's are written down by now, before those of the second;
    // the others are the checks that the server listens.
    let outcomes = fs::read_to_string(&connections).unwrap();
    let refusals = outcomes
        .lines()
        .filter(|o| *o == "TLSV1_ALERT_UNKNOWN_CA")
        .count();
    assert_eq!(refusals, 1, "{outcomes}");
}
