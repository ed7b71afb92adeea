//! `s3://` caches against a real S3 server (moto, started by the tests on
//! 127.0.0.1 with request signatures checked): closures copied `local → s3
//! → file` and `file → s3 → local` and checked by Nix, a bucket served by
//! `nixferry serve`, and the faults: wrong credentials, a missing bucket,
//! throttling, the server gone in the middle of an upload, a cancelled
//! copy.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_same_closure, assert_success, build_closure, generate_key, have_nix, nix,
    nix_closure_infos, nixferry, run, run_text, skip, stderr,
};

/// The Python that has `moto[server]`: `NIXFERRY_TEST_PYTHON`, else the
/// virtualenv the test command makes under `target/`.
pub(crate) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NIXFERRY_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv/bin/python")
}

pub(crate) fn harness() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3_server.py")
}

/// Whether the S3 server can run; when it cannot, the test
/// [skips](skip).
pub(crate) fn have_s3() -> bool {
    let found = Command::new(python())
        .args(["-c", "import moto.server, boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(&format!(
            "{} cannot import moto[server]",
            python().display()
        ));
    }
    found
}

pub(crate) fn ready() -> bool {
    let nix = have_nix();
    let s3 = have_s3();
    nix && s3
}

/// A process of the harness, killed (by its pid) when dropped.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let port_file = dir.join(format!("{name}.port"));
        let _ = fs::remove_file(&port_file);
        let mut child = Command::new(python())
            .arg(harness())
            .args(args)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the S3 test server");
        let start = Instant::now();
        let port = loop {
            if let Ok(p) = fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the S3 harness ({name}) exited: {status}");
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no {name}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self { child, port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A moto server with the buckets `cache` and `other`.
pub(crate) struct S3 {
    server: Process,
    dir: tempfile::TempDir,
    key_id: String,
    secret: String,
}

impl S3 {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds.json");
        let server = Process::start(
            dir.path(),
            "server",
            &[
                "serve",
                "--creds-file",
                creds.to_str().unwrap(),
                "--bucket",
                "cache",
                "--bucket",
                "other",
                "--tmp-dir",
                dir.path().to_str().unwrap(),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&creds).unwrap()).unwrap();
        Self {
            server,
            key_id: v["access_key_id"].as_str().unwrap().to_owned(),
            secret: v["secret_access_key"].as_str().unwrap().to_owned(),
            dir,
        }
    }

    /// A proxy in front of the server, with the harness's proxy options.
    fn proxy(&self, args: &[&str]) -> Process {
        let upstream = self.server.port.to_string();
        let mut all = vec!["proxy", "--upstream", &upstream];
        all.extend_from_slice(args);
        Process::start(self.dir.path(), "proxy", &all)
    }

    /// An `s3://` URL for `bucket_and_prefix` on port `port`, with more
    /// parameters.
    fn url_at(port: u16, bucket_and_prefix: &str, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "&" };
        format!("s3://{bucket_and_prefix}?endpoint=127.0.0.1:{port}&scheme=http{sep}{params}")
    }

    pub(crate) fn url(&self, bucket_and_prefix: &str, params: &str) -> String {
        Self::url_at(self.server.port, bucket_and_prefix, params)
    }

    /// `nixferry` with this server's credentials in the environment and
    /// no shared AWS files.
    pub(crate) fn nixferry(&self) -> Command {
        let mut c = nixferry();
        self.credentials(&mut c, &self.secret);
        c
    }

    fn credentials(&self, c: &mut Command, secret: &str) {
        c.env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("none"))
            .env("AWS_CONFIG_FILE", self.dir.path().join("none"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"));
    }

    /// A boto3 helper of the harness, its JSON output parsed.
    fn query(&self, what: &str, bucket: &str) -> Vec<serde_json::Value> {
        let out = run(&mut self.boto(what, bucket));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The harness's boto3 command `what` on `bucket` of this server.
    fn boto(&self, what: &str, bucket: &str) -> Command {
        let mut c = Command::new(python());
        c.arg(harness())
            .args([what, "--endpoint"])
            .arg(format!("http://127.0.0.1:{}", self.server.port))
            .arg("--creds-file")
            .arg(self.dir.path().join("creds.json"))
            .args(["--bucket", bucket]);
        c
    }

    /// The keys in `bucket`.
    pub(crate) fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .query("keys", bucket)
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Uploads `file` as the object `key` of `bucket`, behind nixferry's
    /// back.
    pub(crate) fn put(&self, bucket: &str, key: &str, file: &Path) {
        run(self
            .boto("put", bucket)
            .args(["--key", key, "--file"])
            .arg(file));
    }

    /// The unfinished multipart uploads in `bucket`.
    pub(crate) fn uploads(&self, bucket: &str) -> Vec<serde_json::Value> {
        self.query("uploads", bucket)
    }

    /// Begins a multipart upload of `key` in `bucket` (one part sent) and
    /// leaves it unfinished: its upload id.
    pub(crate) fn begin_upload(&self, bucket: &str, key: &str) -> String {
        let out = run(self.boto("begin", bucket).args(["--key", key]));
        let id: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        id.as_str().unwrap().to_owned()
    }

    /// Aborts the multipart upload `id` of `key` in `bucket`.
    pub(crate) fn abort_upload(&self, bucket: &str, key: &str, id: &str) {
        run(self
            .boto("abort", bucket)
            .args(["--key", key, "--upload-id", id]));
    }

    /// Every narinfo in `bucket` (under `prefix`) has its NAR file there.
    fn assert_consistent(&self, bucket: &str, prefix: &str) {
        let keys = self.keys(bucket);
        let dir = tempfile::tempdir().unwrap();
        let narinfos = keys
            .iter()
            .filter(|k| k.starts_with(prefix) && k.ends_with(".narinfo"));
        for key in narinfos {
            let file = dir.path().join("n");
            run(self
                .boto("get", bucket)
                .args(["--key", key, "--out"])
                .arg(&file));
            let text = fs::read_to_string(&file).unwrap();
            let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
            assert!(
                keys.contains(&format!("{prefix}{url}")),
                "{key} names {url}, which is missing"
            );
        }
    }
}

/// Nix copies `top` from the `file://` cache `cache` into a new chroot
/// store, trusting `public_key`, and finds the same closure as here.
fn assert_nix_reads(cache: &Path, public_key: &str, top: &str) {
    let store = tempfile::tempdir().unwrap();
    let root = store.path().join("root");
    run(nix("nix")
        .args(["copy", "--from"])
        .arg(format!("file://{}", cache.display()))
        .arg("--to")
        .arg(&root)
        .args(["--option", "trusted-public-keys", public_key.trim(), top]));
    assert_same_closure(&root, top);
}

/// A path of `megabytes` random MB built with Nix (several parts of a
/// multipart upload).
fn build_big(tag: &str, megabytes: u32) -> String {
    let expr = format!(
        r#"derivation {{
            name = "nixferry-s3-{tag}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" "export PATH=/usr/bin:/bin; head -c {megabytes}000000 /dev/urandom > $out" ];
        }}"#
    );
    run_text(nix("nix-build").args(["--no-out-link", "--expr", &expr]))
}

/// local → s3 (signed, under a prefix) → file, checked by Nix; the
/// signatures are checked on the way out of the bucket, and a key that is
/// not trusted is refused.
#[test]
fn local_to_s3_to_file() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-local");
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "s3-test-1");
    let (_, other_pk) = generate_key(tmp.path(), "s3-test-2");

    for compression in ["zstd", "xz", "none"] {
        let prefix = format!("p-{compression}");
        let params = format!("compression={compression}&secret-key={}", sk.display());
        let to = s3.url(&format!("cache/{prefix}"), &params);
        let out = s3
            .nixferry()
            .args(["copy", "--to", &to, &top])
            .output()
            .unwrap();
        assert_success(&out);
        assert!(stderr(&out).contains("copied 3 paths"), "{}", stderr(&out));
        // Again: nothing to do.
        let out = s3
            .nixferry()
            .args(["copy", "--to", &to, &top])
            .output()
            .unwrap();
        assert_success(&out);
        assert!(stderr(&out).contains("skipped 3"), "{}", stderr(&out));

        let keys = s3.keys("cache");
        let ours: Vec<_> = keys.iter().filter(|k| k.starts_with(&prefix)).collect();
        assert!(
            ours.contains(&&format!("{prefix}/nix-cache-info")),
            "{keys:?}"
        );
        assert_eq!(ours.iter().filter(|k| k.ends_with(".narinfo")).count(), 3);

        // path-info on the bucket agrees with Nix on the local store.
        let from = s3.url(&format!("cache/{prefix}"), "");
        let json = run(s3
            .nixferry()
            .args(["path-info", "--json", "-r", &from, &top]))
        .stdout;
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let mut got: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["path"].as_str().unwrap().to_owned(),
                    i["narHash"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<_> = nix_closure_infos(None, &top)
            .into_iter()
            .map(|(p, h, _, _)| (p, h))
            .collect();
        assert_eq!(got, want);

        let cache = tmp.path().join(format!("file-{compression}"));
        let file_url = format!("file://{}", cache.display());
        let out = s3
            .nixferry()
            .args(["copy", "--from", &from, "--to", &file_url])
            .args(["--trusted-key", pk.trim(), &top])
            .output()
            .unwrap();
        assert_success(&out);
        assert_nix_reads(&cache, &pk, &top);
    }

    // Signed by a key that is not trusted: refused, nothing written.
    let refused = tmp.path().join("refused");
    let out = s3
        .nixferry()
        .args(["copy", "--from", &s3.url("cache/p-zstd", ""), "--to"])
        .arg(format!("file://{}", refused.display()))
        .args(["--trusted-key", other_pk.trim(), &top])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    // Nothing written: not even the cache's directory.
    assert!(!refused.exists());
    s3.assert_consistent("cache", "p-zstd/");
}

/// A cache Nix wrote → s3 (its xz files moved as they are) → a local
/// chroot store, checked by Nix.
#[test]
fn nix_cache_to_s3_to_local() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-nix");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("nix-cache");
    run(nix("nix")
        .args(["copy", "--to"])
        .arg(format!("file://{}?compression=xz", cache.display()))
        .arg(&top));
    let (sk, pk) = generate_key(tmp.path(), "s3-nix");
    let to = s3.url(
        "other",
        &format!("compression=xz&secret-key={}", sk.display()),
    );
    let out = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--from"])
        .arg(format!("file://{}", cache.display()))
        .args(["--to", &to, &top])
        .output()
        .unwrap();
    assert_success(&out);
    // The NAR files are Nix's own, byte for byte.
    let mut theirs: Vec<String> = fs::read_dir(cache.join("nar"))
        .unwrap()
        .map(|e| format!("nar/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    theirs.sort();
    let ours: Vec<String> = s3
        .keys("other")
        .into_iter()
        .filter(|k| k.starts_with("nar/"))
        .collect();
    assert_eq!(ours, theirs);

    let store = tmp.path().join("chroot");
    let out = s3
        .nixferry()
        .args(["copy", "--from", &s3.url("other", ""), "--to"])
        .arg(&store)
        .args(["--trusted-key", pk.trim(), &top])
        .output()
        .unwrap();
    assert_success(&out);
    assert_same_closure(&store, &top);
}

/// `nixferry serve --store s3://…` serves the bucket with its own
/// signatures; Nix copies from it.
#[test]
fn serve_a_bucket() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-serve");
    let tmp = tempfile::tempdir().unwrap();
    let to = s3.url("cache/served", "compression=zstd");
    assert_success(
        &s3.nixferry()
            .args(["copy", "--no-check-sigs", "--to", &to, &top])
            .output()
            .unwrap(),
    );
    let (sk, pk) = generate_key(tmp.path(), "s3-serve");
    let mut child = s3
        .nixferry()
        .args([
            "serve",
            "--store",
            &s3.url("cache/served", ""),
            "--secret-key-file",
        ])
        .arg(&sk)
        .args(["--compression", "zstd", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap()
        .to_owned();
    let store = tmp.path().join("root");
    let out = nix("nix")
        .args([
            "copy",
            "--from",
            &format!("http://127.0.0.1:{port}"),
            "--to",
        ])
        .arg(&store)
        .args(["--option", "trusted-public-keys", pk.trim(), &top])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_success(&out);
    assert_same_closure(&store, &top);
}

/// Wrong credentials and a missing bucket: clear errors, at once: no
/// request that the server refused is sent again.
#[test]
fn refusals_are_clear() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-refusals");
    let tmp = tempfile::tempdir().unwrap();
    let requests = tmp.path().join("requests");
    let proxy = s3.proxy(&["--requests", requests.to_str().unwrap()]);
    let url = |bucket: &str, params: &str| S3::url_at(proxy.port, bucket, params);
    // Runs a command that must fail, and checks that it asked each thing
    // once; returns its stderr.
    let refused = |cmd: &mut Command| {
        let _ = fs::remove_file(&requests);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let sent = fs::read_to_string(&requests).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for request in sent.lines() {
            assert!(seen.insert(request), "{request} sent again:\n{sent}");
        }
        stderr(&out)
    };

    let mut wrong = nixferry();
    s3.credentials(&mut wrong, "not-the-secret");
    let e = refused(wrong.args(["copy", "--to", &url("cache", ""), &top]));
    assert!(
        e.contains("SignatureDoesNotMatch") && e.contains("log in"),
        "{e}"
    );
    let e = refused(
        s3.nixferry()
            .args(["copy", "--to", &url("no-such-bucket", ""), &top]),
    );
    assert!(e.contains("bucket 'no-such-bucket' does not exist"), "{e}");
    let e = refused(
        s3.nixferry()
            .args(["path-info", &url("no-such-bucket", ""), &top]),
    );
    assert!(e.contains("does not exist"), "{e}");
    let e = refused(
        s3.nixferry()
            .args(["path-info", &url("cache", "profile=nobody"), &top]),
    );
    assert!(e.contains("profile 'nobody'"), "{e}");
}

/// Credentials from a profile of the shared credentials file.
#[test]
fn credentials_from_a_profile() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-profile");
    let files = tempfile::tempdir().unwrap();
    let creds = files.path().join("credentials");
    fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n\
             [tests]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.key_id, s3.secret
        ),
    )
    .unwrap();
    let mut c = nixferry();
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", files.path().join("none"))
        .env("XDG_STATE_HOME", files.path().join("state"));
    let out = c
        .args(["copy", "--no-check-sigs", "--to"])
        .arg(s3.url("cache/profiled", "profile=tests&compression=none"))
        .arg(&top)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(s3
        .keys("cache")
        .iter()
        .any(|k| k.starts_with("profiled/nar/")));
}

/// A server answering every second request with 503 SlowDown: the copy
/// still completes, through retries.
#[test]
fn throttling_is_retried() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let top = build_closure("s3-throttle");
    let big = build_big("throttle", 40);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("throttled");
    let proxy = s3.proxy(&["--throttle-every", "2", "--log", log.to_str().unwrap()]);
    let to = S3::url_at(
        proxy.port,
        "cache/throttled",
        "compression=none&buffer-size=5242880",
    );
    let out = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--to", &to, &top, &big])
        .output()
        .unwrap();
    assert_success(&out);
    let throttled = fs::read_to_string(&log).unwrap();
    assert!(throttled.lines().count() >= 3, "{throttled}");
    assert!(
        throttled.contains("uploadId"),
        "no part was throttled: {throttled}"
    );
    // Everything arrived intact: read back through nixferry, which checks
    // every NAR hash.
    let back = tmp.path().join("back");
    let out = s3
        .nixferry()
        .args([
            "copy",
            "--no-check-sigs",
            "--from",
            &s3.url("cache/throttled", ""),
            "--to",
        ])
        .arg(format!("file://{}", back.display()))
        .args([&top, &big])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(stderr(&out).contains("copied 4 paths"), "{}", stderr(&out));
    assert!(s3.uploads("cache").is_empty());
}

/// Bytes per second through the proxies of the tests that stop an
/// upload in the middle: 40 MB take 8 s.
const SLOW: &str = "5000000";

/// Waits until `bucket` has an unfinished multipart upload.
fn wait_for_upload(s3: &S3, bucket: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.uploads(bucket).is_empty() {
        assert!(Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server gone in the middle of an upload: no narinfo for the path;
/// back on the same port, the copy's retries finish the job and the
/// interrupted upload is aborted. Gone for good: the copy fails cleanly
/// and a re-run completes.
#[test]
fn server_stopped_mid_upload() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let big = build_big("stopped", 40);
    let hash_part = Path::new(&big).file_name().unwrap().to_str().unwrap()[..32].to_owned();
    let narinfo = |prefix: &str| format!("{prefix}/{hash_part}.narinfo");
    let params = "compression=none&buffer-size=5242880";

    // Back after a while: the same run completes.
    let mut proxy = s3.proxy(&["--rate", SLOW]);
    let port = proxy.port;
    let to = S3::url_at(port, "cache/back", params);
    let child = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--to", &to, &big])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_upload(&s3, "cache");
    proxy.kill();
    assert!(!s3.keys("cache").contains(&narinfo("back")));
    std::thread::sleep(Duration::from_millis(500));
    let port_arg = port.to_string();
    let _proxy = s3.proxy(&["--port", &port_arg, "--rate", SLOW]);
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    assert!(s3.keys("cache").contains(&narinfo("back")));
    assert!(s3.uploads("cache").is_empty(), "{:?}", s3.uploads("cache"));
    s3.assert_consistent("cache", "back/");

    // Gone for good: the copy fails, nothing points to a missing file,
    // and a re-run completes.
    let mut proxy = s3.proxy(&["--rate", SLOW]);
    let to = S3::url_at(proxy.port, "other/gone", &format!("{params}&retries=1"));
    let child = s3
        .nixferry()
        .args([
            "copy",
            "--no-check-sigs",
            "--retries",
            "1",
            "--to",
            &to,
            &big,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_upload(&s3, "other");
    proxy.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!s3.keys("other").contains(&narinfo("gone")));
    s3.assert_consistent("other", "gone/");
    let out = s3
        .nixferry()
        .args([
            "copy",
            "--no-check-sigs",
            "--to",
            &s3.url("other/gone", params),
            &big,
        ])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(s3.keys("other").contains(&narinfo("gone")));
    s3.assert_consistent("other", "gone/");
}

/// A copy interrupted with Ctrl-C (SIGINT) in the middle of an upload
/// aborts it: no unfinished upload and no narinfo are left.
#[test]
fn a_cancelled_copy_aborts_its_upload() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let big = build_big("cancelled", 40);
    let proxy = s3.proxy(&["--rate", SLOW]);
    let to = S3::url_at(
        proxy.port,
        "cache/cancelled",
        "compression=none&buffer-size=5242880",
    );
    let child = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--to", &to, &big])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_upload(&s3, "cache");
    let pid = child.id();
    run(Command::new("sh").args(["-c", &format!("kill -INT {pid}")]));
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(s3.uploads("cache").is_empty(), "{:?}", s3.uploads("cache"));
    assert!(
        !s3.keys("cache").iter().any(|k| k.ends_with(".narinfo")),
        "{:?}",
        s3.keys("cache")
    );
}

/// A copy killed (SIGKILL) in the middle of an upload leaves it
/// unfinished, without a narinfo; the next run aborts it (from its
/// journal) and completes the copy.
#[test]
fn a_killed_copy_is_cleaned_up_by_the_next_run() {
    if !ready() {
        return;
    }
    let s3 = S3::start();
    let big = build_big("killed", 40);
    let params = "compression=none&buffer-size=5242880";
    let proxy = s3.proxy(&["--rate", SLOW]);
    let slow = S3::url_at(proxy.port, "cache/killed", params);
    let mut child = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--to", &slow, &big])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_upload(&s3, "cache");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = s3.uploads("cache");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!s3.keys("cache").iter().any(|k| k.ends_with(".narinfo")));
    let journal = s3.dir.path().join("state/nixferry/s3-uploads");
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 1);

    // The next run, to the same endpoint (now at full speed).
    let port = proxy.port.to_string();
    drop(proxy);
    let _proxy = s3.proxy(&["--port", &port]);
    let out = s3
        .nixferry()
        .args(["copy", "--no-check-sigs", "--to", &slow, &big])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(s3.uploads("cache").is_empty(), "{:?}", s3.uploads("cache"));
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 0);
    s3.assert_consistent("cache", "killed/");
}
