//! `nixferry push`: the watcher against real Nix builds, a queue filled
//! by `--enqueue` as Nix's post-build-hook would, a watcher killed in the
//! middle of an upload, and a cache that goes away for a while.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{
    build_closure, build_closure_with, build_input_addressed, generate_key, have_nix, nix,
    nixferry, run, run_text, stderr,
};
use crate::serve::{hash_part, writable_server, writable_server_on};

/// A `nixferry push --watch` process, killed when dropped, whose stderr
/// and stdout are collected as they come.
struct Watcher {
    child: Child,
    log: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Watcher {
    /// Starts `push --watch --state-dir STATE ARGS` and waits until it
    /// says it runs.
    fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = nixferry()
            .args(["push", "--watch", "--state-dir"])
            .arg(state)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |from: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let to = Arc::clone(&text);
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines() {
                    let Ok(line) = line else { break };
                    let mut to = to.lock().unwrap();
                    to.push_str(&line);
                    to.push('\n');
                }
            });
            text
        };
        let log = collect(Box::new(child.stderr.take().unwrap()));
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let mut w = Self { child, log, stdout };
        w.wait_for("the watcher started", |log| log.contains("pushing to "));
        w
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the log, failing after two minutes
    /// or when the watcher exits.
    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        wait_until(what, || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the watcher exited ({status}) before {what}:\n{}",
                    self.log()
                );
            }
            done(&self.log())
        });
    }

    /// Sends SIGTERM and waits for the exit status and the whole log;
    /// what it printed on stdout stays in `self.stdout`.
    fn terminate(&mut self) -> (ExitStatus, String) {
        let pid = self.child.id();
        run(Command::new("sh").args(["-c", &format!("kill -TERM {pid}")]));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The collecting threads end with the pipes.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log())
    }

    /// SIGKILL: no chance to clean anything up.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 50 ms until it holds, failing after two minutes.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tag no earlier run used, so that what Nix builds with it is new to
/// the store.
fn fresh(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{nanos}")
}

/// The closure of `path` in the machine's store.
fn closure(path: &str) -> Vec<String> {
    run_text(nix("nix-store").args(["-qR", path]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A store path's base name, which names its queue entry.
fn base(path: &str) -> &str {
    path.strip_prefix("/nix/store/").unwrap()
}

/// The entries waiting in the queue of the state directory `state`.
fn queued(state: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(state.join("push/queue")) else {
        return Vec::new();
    };
    dir.map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn has_narinfo(cache: &Path, path: &str) -> bool {
    cache.join(format!("{}.narinfo", hash_part(path))).is_file()
}

/// `nixferry cache verify` of a directory cache: every narinfo signed by
/// `pk`, its NAR there and matching, its references there.
fn assert_cache_verifies(cache: &Path, pk: &str) {
    let out = nixferry()
        .args(["cache", "verify", &format!("file://{}", cache.display())])
        .args(["--trusted-key", pk.trim()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cache verify: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// Builds (with Nix) a path of `bytes` random bytes.
fn build_big(tag: &str, bytes: usize) -> String {
    let expr = format!(
        r#"derivation {{
            name = "nixferry-push-big-{tag}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" "export PATH=/usr/bin:/bin; head -c {bytes} /dev/urandom > $out" ];
        }}"#
    );
    run_text(nix("nix-build").args(["--no-out-link", "--expr", &expr]))
}

#[test]
fn what_nix_builds_while_the_watcher_runs_reaches_the_cache_signed() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-watch-1");
    let cache = tmp.path().join("cache");
    let state = tmp.path().join("state");
    let mut watcher = Watcher::start(
        &state,
        &[
            "--to",
            &format!("file://{}", cache.display()),
            "--secret-key-file",
            sk.to_str().unwrap(),
        ],
        &[],
    );
    let top = build_closure(&fresh("push-watch"));
    let paths = closure(&top);
    assert_eq!(paths.len(), 3, "{paths:?}");
    wait_until("the closure in the cache", || {
        paths.iter().all(|p| has_narinfo(&cache, p))
    });
    // Other tests build at the same time, and what they build is
    // pushed too: this test's paths are looked at alone.
    wait_until("the paths to leave the queue", || {
        let waiting = queued(&state);
        paths.iter().all(|p| !waiting.iter().any(|w| w == base(p)))
    });
    // Signed with the key, NARs and references all there.
    assert_cache_verifies(&cache, &pk);
    let again = tmp.path().join("again");
    run(nixferry()
        .args(["copy", "--from", &format!("file://{}", cache.display())])
        .args(["--to", &format!("file://{}", again.display())])
        .args(["--trusted-key", pk.trim(), &top]));
    // The derivation that made it is a recipe, not pushed.
    let drv = run_text(nix("nix-store").args(["-q", "--deriver", &top]));
    assert!(drv.ends_with(".drv"), "{drv}");
    assert!(!has_narinfo(&cache, &drv), "{drv} was pushed");

    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    for p in &paths {
        assert!(log.contains(&format!("queued {p}")), "{p}:\n{log}");
    }
    assert!(log.contains("pushed "), "{log}");
    assert!(log.contains("stopped; "), "{log}");

    // Restarted, it resumes where it stopped: nothing old is queued again.
    let mut watcher = Watcher::start(
        &state,
        &["--to", &format!("file://{}", cache.display())],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    for p in &paths {
        assert!(!log.contains(&format!("queued {p}")), "{p}:\n{log}");
    }
}

/// Nix's post-build-hook queues each build's outputs (Nix 2.8.0 gives
/// the hook DRV_PATH only, later versions OUT_PATHS too); a watcher
/// drains the queue.
#[test]
fn enqueue_returns_at_once_and_a_watcher_drains_the_queue() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-enqueue-1");
    let state = tmp.path().join("state");
    let cache = tmp.path().join("cache");
    let hook = tmp.path().join("post-build-hook");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\nexec {} push --enqueue --state-dir {}\n",
            env!("CARGO_BIN_EXE_nixferry"),
            state.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let top = build_closure_with(
        &fresh("push-enqueue"),
        &["--option", "post-build-hook", hook.to_str().unwrap()],
    );
    let built = closure(&top);
    let mut want: Vec<&str> = built.iter().map(|p| base(p)).collect();
    want.sort();
    let mut waiting = queued(&state);
    waiting.sort();
    assert_eq!(waiting, want);

    // As Nix after 2.8.0 runs its post-build-hook: the outputs in
    // OUT_PATHS. No cache is named, so none can be contacted.
    let other = build_input_addressed(&fresh("push-enqueue"));
    let start = Instant::now();
    run(nixferry()
        .args(["push", "--enqueue", "--state-dir"])
        .arg(&state)
        .env("OUT_PATHS", format!("{other} "))
        .env(
            "DRV_PATH",
            "/nix/store/00000000000000000000000000000000-not-used.drv",
        ));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(queued(&state).iter().any(|w| w == base(&other)));
    // Without paths, OUT_PATHS or DRV_PATH there is nothing to queue.
    let out = nixferry()
        .args(["push", "--enqueue", "--state-dir"])
        .arg(&state)
        .env_remove("OUT_PATHS")
        .env_remove("DRV_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("OUT_PATHS"), "{}", stderr(&out));

    // A watcher that pushes only the queue drains it.
    let to = format!("file://{}", cache.display());
    let mut watcher = Watcher::start(
        &state,
        &[
            "--no-follow",
            "--json",
            "--to",
            &to,
            "--secret-key-file",
            sk.to_str().unwrap(),
        ],
        &[],
    );
    wait_until("the queue to empty", || queued(&state).is_empty());
    for p in built.iter().chain([&other]) {
        assert!(has_narinfo(&cache, p), "{p}");
    }
    assert_cache_verifies(&cache, &pk);

    // A second watcher of the same queue is refused, and says why.
    let out = nixferry()
        .args(["push", "--watch", "--no-follow", "--state-dir"])
        .arg(&state)
        .args(["--to", &to])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let why = format!(
        "another watcher (process {}) is pushing from the queue in '{}'",
        watcher.child.id(),
        state.join("push").display()
    );
    assert!(stderr(&out).contains(&why), "{}", stderr(&out));

    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    // With --json, the same events as JSON Lines on stdout.
    let json = watcher.stdout.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let pushed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "pushed")
        .flat_map(|e| e["paths"].as_array().unwrap())
        .collect();
    assert_eq!(pushed.len(), 4, "{json}");
    assert_eq!(events.first().unwrap()["event"], "watching", "{json}");
    assert_eq!(events.last().unwrap()["event"], "stopped", "{json}");
}

/// A TCP proxy on 127.0.0.1 in front of `target` that passes what
/// clients send at most `rate` bytes a second, as a slow uplink would;
/// returns its port and the count of bytes passed so far.
fn throttling_proxy(target: u16, rate: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let passed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&passed);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; rate / 20];
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, passed)
}

#[test]
fn a_watcher_killed_mid_upload_finishes_the_job_when_restarted() {
    if !have_nix() {
        return;
    }
    const SIZE: usize = 8 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-kill-1");
    let big = build_big(&fresh("push-kill"), SIZE);
    let (server, dest) = writable_server(tmp.path(), "push-token");
    let (port, passed) = throttling_proxy(server.port, 2 << 20);
    let state = tmp.path().join("state");
    run(nixferry()
        .args(["push", "--enqueue", "--state-dir"])
        .arg(&state)
        .arg(&big));
    let to = format!("http://127.0.0.1:{port}?compression=none");
    let args = [
        "--no-follow",
        "--to",
        &to,
        "--secret-key-file",
        sk.to_str().unwrap(),
    ];
    let env = [("NIXFERRY_HTTP_TOKEN", "push-token")];

    let watcher = Watcher::start(&state, &args, &env);
    wait_until("a part of the upload", || {
        passed.load(Ordering::SeqCst) > 1 << 20
    });
    watcher.kill();
    let sent = passed.load(Ordering::SeqCst);
    assert!(sent < SIZE, "the upload finished");
    // Nothing half done is visible, and the path still waits.
    assert!(!has_narinfo(&dest, &big));
    assert_eq!(queued(&state), [base(&big)]);

    // Stopped with SIGTERM in the middle of the upload, it abandons it
    // cleanly and says what waits.
    let mut watcher = Watcher::start(&state, &args, &env);
    wait_until("a part of the upload again", || {
        passed.load(Ordering::SeqCst) > sent + (1 << 20)
    });
    let start = Instant::now();
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(log.contains("stopped; 1 path waits in the queue"), "{log}");
    assert!(!has_narinfo(&dest, &big));
    assert_eq!(queued(&state), [base(&big)]);

    let mut watcher = Watcher::start(&state, &args, &env);
    wait_until("the queue to empty", || queued(&state).is_empty());
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains(&format!("pushed {big}")), "{log}");
    assert!(has_narinfo(&dest, &big));
    assert_cache_verifies(&dest, &pk);
}

#[test]
fn a_cache_outage_holds_the_queue_until_the_cache_is_back() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-outage-1");
    let before = build_input_addressed(&fresh("push-outage-before"));
    let during = build_input_addressed(&fresh("push-outage-during"));
    let (server, dest) = writable_server(tmp.path(), "push-token");
    let port = server.port;
    let state = tmp.path().join("state");
    let enqueue = |path: &str| {
        run(nixferry()
            .args(["push", "--enqueue", "--state-dir"])
            .arg(&state)
            .arg(path));
    };
    // Failures are not retried inside a push (the watcher retries), and
    // the waits between pushes stay short.
    let to = format!("http://127.0.0.1:{port}?retries=0");
    let mut watcher = Watcher::start(
        &state,
        &[
            "--no-follow",
            "--retries",
            "0",
            "--max-retry-delay",
            "2s",
            "--to",
            &to,
            "--secret-key-file",
            sk.to_str().unwrap(),
        ],
        &[("NIXFERRY_HTTP_TOKEN", "push-token")],
    );
    enqueue(&before);
    wait_until("the first path in the cache", || {
        has_narinfo(&dest, &before)
    });

    // The cache goes away; what is queued meanwhile waits, and the
    // watcher says it tries again.
    assert!(server.terminate().success());
    enqueue(&during);
    watcher.wait_for("two failed pushes", |log| {
        log.contains("push failed: ") && log.contains("retry 2 in ")
    });
    assert_eq!(queued(&state), [base(&during)]);
    assert!(!has_narinfo(&dest, &during));

    // Back on the same port, it gets the path.
    let (server, _) = writable_server_on(tmp.path(), "push-token", port);
    wait_until("the queue to empty", || queued(&state).is_empty());
    assert!(has_narinfo(&dest, &during));
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains(&format!("pushed {during}")), "{log}");
    assert_cache_verifies(&dest, &pk);
    assert!(server.terminate().success());
}

/// The watcher leaves out of a cache what an upstream serves with a
/// trusted signature, as `copy` does, and takes the path off the queue:
/// the cache and its upstream hold the closure.
#[test]
fn the_watcher_leaves_to_an_upstream_what_it_serves() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-up-1");
    let (up_sk, up_pk) = generate_key(tmp.path(), "push-upstream-1");
    let top = build_closure(&fresh("push-upstream"));
    let paths = closure(&top);
    let (below, top_only): (Vec<&String>, Vec<&String>) = paths.iter().partition(|p| **p != top);
    assert_eq!(top_only, [&top]);
    // The upstream holds all but `top`, signed by its own key.
    let up = tmp.path().join("up");
    run(nixferry()
        .args(["copy", "--to", &format!("file://{}", up.display())])
        .arg("--secret-key-file")
        .arg(&up_sk)
        .args(&below));
    let state = tmp.path().join("state");
    run(nixferry()
        .args(["push", "--enqueue", "--state-dir"])
        .arg(&state)
        .arg(&top));
    let cache = tmp.path().join("cache");
    let mut watcher = Watcher::start(
        &state,
        &[
            "--no-follow",
            "--to",
            &format!("file://{}", cache.display()),
            "--secret-key-file",
            sk.to_str().unwrap(),
            "--upstream",
            &format!("file://{}", up.display()),
            "--trusted-key",
            up_pk.trim(),
        ],
        &[],
    );
    wait_until("the queue to empty", || queued(&state).is_empty());
    let (status, log) = watcher.terminate();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains(&format!("pushed {top}: 1 path copied (")),
        "{log}"
    );
    assert!(log.contains(", 2 paths found upstream"), "{log}");
    assert!(has_narinfo(&cache, &top));
    for p in &below {
        assert!(!has_narinfo(&cache, p), "{p} pushed");
    }
    // The cache is signed, its references found upstream.
    let out = nixferry()
        .args(["cache", "verify", &format!("file://{}", cache.display())])
        .args(["--trusted-key", pk.trim()])
        .args(["--upstream", &format!("file://{}", up.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `push --to URL PATHS` pushes at once, like `copy` from the local
/// store, without any queue.
#[test]
fn push_without_watch_copies_now() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "push-now-1");
    let top = build_closure(&fresh("push-now"));
    let cache = tmp.path().join("cache");
    run(nixferry()
        .args(["push", "--to", &format!("file://{}", cache.display())])
        .arg("--secret-key-file")
        .arg(&sk)
        .arg(&top));
    for p in closure(&top) {
        assert!(has_narinfo(&cache, &p), "{p}");
    }
    assert_cache_verifies(&cache, &pk);
    let out = nixferry()
        .args(["push", "--to", &format!("file://{}", cache.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nothing to push"), "{}", stderr(&out));
}
