//! nixferry's own remote protocol over SSH: `nixferry remote` on the far
//! end of a real OpenSSH server on 127.0.0.1, chroot stores behind it, and
//! Nix checking what arrives. Also hand-written frames against
//! `nixferry remote` (a hostile sender) and a fake remote that breaks the
//! protocol (a hostile remote).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{
    assert_same_closure, assert_success, build_closure, build_input_addressed, have_nix, nix,
    nixferry, run, run_text, stderr,
};
use crate::sshd::{have_sshd, percent_encode as encode, Sshd};

/// The warning of a copy that falls back to `nix-store --serve`.
const NO_FERRY: &str = "has no nixferry";

const SERVE_MAGIC_1: u64 = 0x390c_9deb;
const FERRY_MAGIC: u64 = u64::from_le_bytes(*b"nixferry");

fn ready() -> bool {
    let nix = have_nix();
    let sshd = have_sshd();
    nix && sshd
}

fn copy(args: &[&str]) -> Output {
    nixferry().arg("copy").args(args).output().unwrap()
}

/// Runs `cmd`, failing the test if it takes longer than `limit` (a hang).
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still ran after {limit:?}\nstderr: {}",
                stderr(&out)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `url` with more query parameters.
fn with(url: &str, params: &[(&str, &str)]) -> String {
    let mut url = url.to_owned();
    for (k, v) in params {
        url.push_str(&format!("&{k}={}", encode(v)));
    }
    url
}

/// Nix checks every path of the closure of `top` in the chroot store
/// `store` against its hash.
fn nix_verify(store: &Path, top: &str) {
    run(nix("nix")
        .args(["store", "verify", "--no-trust", "-r", "--store"])
        .arg(store)
        .arg(top));
}

/// Whether Nix finds `path` valid in the chroot store `store`.
fn nix_has(store: &Path, path: &str) -> bool {
    nix("nix")
        .args(["path-info", "--store"])
        .arg(store)
        .arg(path)
        .output()
        .unwrap()
        .status
        .success()
}

/// The files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn script(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `remote-program` named `nixferry` in `dir` that runs the nixferry
/// under test and counts the bytes the client sent it into `dir/count`.
fn counting_program(dir: &Path) -> PathBuf {
    let program = dir.join("nixferry");
    script(
        &program,
        &format!(
            "#!/bin/bash\ntee >(wc -c > {count}.part && mv {count}.part {count}) | {bin} \"$@\"\n",
            count = dir.join("count").display(),
            bin = env!("CARGO_BIN_EXE_nixferry"),
        ),
    );
    program
}

/// The count of a [`counting_program`], once the connection is over.
fn counted(dir: &Path) -> u64 {
    let file = dir.join("count");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = fs::read_to_string(&file) {
            let _ = fs::remove_file(&file);
            return text.trim().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no byte count in {}",
            file.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Pushes `path` to `url` through a [`counting_program`] in `dir`,
/// returning the copy's output and the bytes the client sent.
fn push_counting(url: &str, dir: &Path, params: &[(&str, &str)], path: &str) -> (Output, u64) {
    let program = counting_program(dir);
    let mut params = params.to_vec();
    let program = program.display().to_string();
    params.push(("remote-program", &program));
    let out = copy(&["--to", &with(url, &params), path]);
    let n = counted(dir);
    (out, n)
}

/// 1. nixferry on both ends: a push goes through `nixferry remote` (no
///    warning, a spool that is empty afterwards), and a pull comes back;
///    Nix checks both.
#[test]
fn ferry_push_and_pull() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start_with_nixferry();
    let top = build_closure("ferry-push");
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);

    let out = copy(&["--to", &url, &top]);
    assert_success(&out);
    assert!(!stderr(&out).contains(NO_FERRY), "{}", stderr(&out));
    assert!(stderr(&out).contains("copied 3 paths"), "{}", stderr(&out));
    assert_same_closure(&remote, &top);
    nix_verify(&remote, &top);
    assert!(sshd.spool_dir().is_dir(), "nixferry remote did not run");
    assert_eq!(files_in(&sshd.spool_dir()), Vec::<String>::new());

    let out = copy(&["--to", &url, &top]);
    assert_success(&out);
    assert!(stderr(&out).contains("skipped 3"), "{}", stderr(&out));

    let local = tmp.path().join("local");
    let local_url = format!("local?root={}", local.display());
    let out = copy(&["--from", &url, "--to", &local_url, "--no-check-sigs", &top]);
    assert_success(&out);
    assert!(!stderr(&out).contains(NO_FERRY), "{}", stderr(&out));
    assert_same_closure(&local, &top);
    nix_verify(&local, &top);

    let cache = tmp.path().join("cache");
    let cache_url = format!("file://{}", cache.display());
    let out = copy(&["--from", &url, "--to", &cache_url, "--no-check-sigs", &top]);
    assert_success(&out);
    run(nix("nix")
        .args(["store", "verify", "--no-trust", "-r", "--store"])
        .arg(&cache_url)
        .arg(&top));
}

/// 2. Without nixferry on the remote's `PATH`, a copy goes through
///    `nix-store --serve` and says so once; `remote-program` naming
///    nixferry by its path speaks nixferry's protocol anyway.
#[test]
fn ferry_fallback_and_remote_program() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ferry-fallback");
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let out = copy(&["--to", &sshd.store_url(&remote), &top]);
    assert_success(&out);
    assert_eq!(
        stderr(&out).matches(NO_FERRY).count(),
        1,
        "{}",
        stderr(&out)
    );
    assert_same_closure(&remote, &top);
    assert!(!sshd.spool_dir().exists());

    let forced = tmp.path().join("forced");
    let url = with(
        &sshd.store_url(&forced),
        &[("remote-program", env!("CARGO_BIN_EXE_nixferry"))],
    );
    let out = copy(&["--to", &url, &top]);
    assert_success(&out);
    assert!(!stderr(&out).contains(NO_FERRY), "{}", stderr(&out));
    assert_same_closure(&forced, &top);
    nix_verify(&forced, &top);
    assert!(sshd.spool_dir().is_dir(), "nixferry remote did not run");
}

/// Builds generation `generation` of a closure for deltas: a leaf whose
/// content is the generation, and a few MB of binaries with the leaf's
/// store path among them; returns (big, leaf).
fn build_generation(tag: &str, generation: u32) -> (String, String) {
    let expr = format!(
        r#"let
          mk = name: script: derivation {{
            name = "nixferry-{tag}-${{name}}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
          }};
          leaf = mk "leaf" "echo generation {generation} > $out";
          big = mk "big" "mkdir $out; for f in /usr/bin/bash /usr/bin/perl /usr/bin/ssh /usr/bin/ssh-keygen; do if [ -f $f ]; then cat $f >> $out/blob; fi; echo ${{leaf}} >> $out/blob; done; echo ${{leaf}} > $out/leaf";
        in [ big leaf ]"#
    );
    let out = run_text(nix("nix-build").args(["--no-out-link", "--expr", &expr]));
    let mut lines = out.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// A path named `nixferry-TAG-NAME` holding `script`'s output, `marker`
/// telling apart paths of the same content.
fn build_named(tag: &str, name: &str, marker: &str, script: &str) -> String {
    let expr = format!(
        r#"derivation {{
            name = "nixferry-{tag}-{name}";
            marker = "{marker}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" "export PATH=/usr/bin:/bin; {script}" ];
        }}"#
    );
    run_text(nix("nix-build").args(["--no-out-link", "--expr", &expr]))
}

/// Pushes `path` to the first store with deltas and to the second without,
/// checks both with Nix and that the deltas took less than 5% of the bytes;
/// returns the bytes without.
fn push_both_ways(
    (delta_url, delta_store): (&str, &Path),
    (whole_url, whole_store): (&str, &Path),
    counters: &Path,
    path: &str,
) -> u64 {
    let (out, delta) = push_counting(delta_url, &counters.join("delta"), &[], path);
    assert_success(&out);
    nix_verify(delta_store, path);
    let (out, whole) = push_counting(
        whole_url,
        &counters.join("whole"),
        &[("delta", "false")],
        path,
    );
    assert_success(&out);
    nix_verify(whole_store, path);
    assert!(
        delta * 20 < whole,
        "with deltas {delta} bytes, without {whole} bytes"
    );
    whole
}

/// 3. Deltas: generation 2 against generation 1 sends a small fraction of
///    what it sends whole; an identical base, an unrelated one and none
///    all work; a base damaged on the remote is found out there, and the
///    path goes whole instead.
#[test]
fn ferry_deltas() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start_with_nixferry();
    let tmp = tempfile::tempdir().unwrap();
    let (big1, _) = build_generation("ferry-delta", 1);
    let (big2, leaf2) = build_generation("ferry-delta", 2);
    assert_ne!(big1, big2);
    let remote = |name: &str| tmp.path().join(name);
    let url = |name: &str| sshd.store_url(&remote(name));

    // No base: fresh stores.
    for name in ["delta", "whole", "damaged"] {
        let out = copy(&["--to", &url(name), &big1]);
        assert_success(&out);
        nix_verify(&remote(name), &big1);
    }
    let whole = push_both_ways(
        (&url("delta"), &remote("delta")),
        (&url("whole"), &remote("whole")),
        &tmp.path().join("c1"),
        &big2,
    );
    assert!(nix_has(&remote("delta"), &leaf2));
    let local = tmp.path().join("local");
    let out = copy(&[
        "--from",
        &url("delta"),
        "--to",
        &format!("local?root={}", local.display()),
        "--no-check-sigs",
        &big1,
        &big2,
    ]);
    assert_success(&out);
    nix_verify(&local, &big1);
    nix_verify(&local, &big2);

    // A base damaged on the remote (its bytes changed, its size not): the
    // remote finds out, and the path is sent whole.
    let big1_name = big1.rsplit('/').next().unwrap();
    let blob = remote("damaged")
        .join("nix/store")
        .join(big1_name)
        .join("blob");
    let dir = blob.parent().unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    for b in bytes.iter_mut().skip(1000).step_by(4096) {
        *b = !*b;
    }
    fs::write(&blob, &bytes).unwrap();
    let (out, damaged) = push_counting(&url("damaged"), &tmp.path().join("c3"), &[], &big2);
    assert_success(&out);
    nix_verify(&remote("damaged"), &big2);
    assert!(
        damaged > whole / 2,
        "{damaged} bytes sent against a damaged base"
    );
    assert_eq!(files_in(&sshd.spool_dir()), Vec::<String>::new());

    // An identical base: the same bytes under another path.
    let same_a = build_named("ferry-delta", "same", "a", "cat /usr/bin/bash > $out");
    let same_b = build_named("ferry-delta", "same", "b", "cat /usr/bin/bash > $out");
    assert_ne!(same_a, same_b);
    for name in ["same", "same-whole"] {
        assert_success(&copy(&["--to", &url(name), &same_a]));
    }
    push_both_ways(
        (&url("same"), &remote("same")),
        (&url("same-whole"), &remote("same-whole")),
        &tmp.path().join("c4"),
        &same_b,
    );

    // An unrelated base: a path of the same name with random bytes.
    let unrelated = build_named(
        "ferry-delta",
        "big",
        "random",
        "mkdir $out; head -c 3000000 /dev/urandom > $out/blob",
    );
    assert_success(&copy(&["--to", &url("unrelated"), &unrelated]));
    let out = copy(&["--to", &url("unrelated"), &big2]);
    assert_success(&out);
    nix_verify(&remote("unrelated"), &big2);
    assert!(nix_has(&remote("unrelated"), &unrelated));
}

/// 3b. A base only the remote has: the remote sends its block signature,
///     and the path goes as a kind 2 delta, a small fraction of what it
///     sends whole; Nix checks the result.
#[test]
fn ferry_delta_against_a_base_only_the_remote_has() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start_with_nixferry();
    let tmp = tempfile::tempdir().unwrap();
    let (big1, _) = build_generation("ferry-sig", 1);
    let remote = |name: &str| tmp.path().join(name);
    let url = |name: &str| sshd.store_url(&remote(name));
    for name in ["delta", "whole"] {
        assert_success(&copy(&["--to", &url(name), &big1]));
    }
    // This machine no longer has generation 1.
    let deleted = nix("nix-store").args(["--delete", &big1]).output().unwrap();
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let (big2, _) = build_generation("ferry-sig", 2);
    push_both_ways(
        (&url("delta"), &remote("delta")),
        (&url("whole"), &remote("whole")),
        &tmp.path().join("c"),
        &big2,
    );
}

/// Builds a path of `mb` MB of random bytes, which do not compress.
fn build_random(tag: &str, mb: u32) -> String {
    build_named(
        tag,
        "random",
        "r",
        &format!("head -c {} /dev/urandom > $out", mb << 20),
    )
}

/// A `remote-program` named `nixferry` in `dir` that passes on only the
/// first `n` bytes the client sends, then ends the remote's input.
fn cutting_program(dir: &Path, n: u64) -> PathBuf {
    let program = dir.join("nixferry");
    script(
        &program,
        &format!(
            // `head -c` may wait to fill its buffer before it writes.
            "#!/bin/sh\nperl -e 'binmode STDIN; binmode STDOUT; my $n = {n}; \
             while ($n > 0) {{ my $r = sysread(STDIN, my $buf, $n < 65536 ? $n : 65536); \
             last unless $r; syswrite(STDOUT, $buf) == $r or exit 1; $n -= $r; }}' \
             | {} \"$@\"\n",
            env!("CARGO_BIN_EXE_nixferry")
        ),
    );
    program
}

/// 4. An add cut off halfway resumes where the remote's spool ends: the
///    second try sends about the other half.
#[test]
fn ferry_resume_after_cut() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start_with_nixferry();
    let tmp = tempfile::tempdir().unwrap();
    let path = build_random("ferry-resume", 24);

    let (out, full) = push_counting(
        &sshd.store_url(&tmp.path().join("uncut")),
        &tmp.path().join("c0"),
        &[],
        &path,
    );
    assert_success(&out);
    assert!(full > 20 << 20, "{full}");

    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);
    let cut = cutting_program(&tmp.path().join("cut"), full / 2);
    let cut = cut.display().to_string();
    let out = copy(&[
        "--retries",
        "0",
        "--to",
        &with(&url, &[("remote-program", &cut)]),
        &path,
    ]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(!nix_has(&remote, &path));
    let spooled = files_in(&sshd.spool_dir());
    assert_eq!(spooled.len(), 1, "{spooled:?}");

    let (out, second) = push_counting(&url, &tmp.path().join("c1"), &[], &path);
    assert_success(&out);
    nix_verify(&remote, &path);
    assert!(
        second * 10 <= full * 6,
        "the second try sent {second} bytes, a whole copy {full}"
    );
    assert_eq!(files_in(&sshd.spool_dir()), Vec::<String>::new());

    // Pulled back, with another path of the same size at once.
    let twin = build_random("ferry-resume-twin", 24);
    assert_success(&copy(&["--to", &url, &twin]));
    let local = tmp.path().join("local");
    let local_url = format!("local?root={}", local.display());
    let out = output_within(
        nixferry().args([
            "copy",
            "--from",
            &url,
            "--to",
            &local_url,
            "--no-check-sigs",
            &path,
            &twin,
        ]),
        Duration::from_secs(300),
    );
    assert_success(&out);
    nix_verify(&local, &path);
    nix_verify(&local, &twin);
}

/// 4. Cuts at random points, then a copy that completes.
#[test]
fn ferry_resume_after_random_cuts() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start_with_nixferry();
    let tmp = tempfile::tempdir().unwrap();
    let path = build_random("ferry-random-cuts", 20);
    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for i in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = 4096 + seed % (22 << 20);
        let cut = cutting_program(&tmp.path().join(format!("cut{i}")), n);
        let cut = cut.display().to_string();
        let out = copy(&[
            "--retries",
            "0",
            "--to",
            &with(&url, &[("remote-program", &cut)]),
            &path,
        ]);
        assert!(
            !stderr(&out).contains("panicked"),
            "cut at {n}: {}",
            stderr(&out)
        );
    }
    let out = copy(&["--to", &url, &path]);
    assert_success(&out);
    nix_verify(&remote, &path);
    assert_eq!(files_in(&sshd.spool_dir()), Vec::<String>::new());
}

/// A frame: `u32` stream, `u8` kind, `u32` length, payload.
fn frame(stream: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = stream.to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn message(value: &serde_json::Value) -> Vec<u8> {
    frame(0, 0, value.to_string().as_bytes())
}

/// `nixferry remote` run here on a chroot store, driven by hand.
struct Remote {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<(u32, u8, Vec<u8>)>,
}

impl Remote {
    fn start(store: &Path, spool: &Path) -> Self {
        let mut child = nixferry()
            .args(["remote", "--store"])
            .arg(store)
            .arg("--spool-dir")
            .arg(spool)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        stdin.write_all(&SERVE_MAGIC_1.to_le_bytes()).unwrap();
        stdin.write_all(&0x206u64.to_le_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut greeting = [0; 16];
        stdout.read_exact(&mut greeting).unwrap();
        assert_eq!(greeting[..8], FERRY_MAGIC.to_le_bytes());
        assert_eq!(greeting[8..], 1u64.to_le_bytes());
        let (tx, frames) = mpsc::channel();
        thread::spawn(move || loop {
            let mut h = [0; 9];
            if stdout.read_exact(&mut h).is_err() {
                return;
            }
            let len = u32::from_le_bytes(h[5..9].try_into().unwrap()) as usize;
            let mut payload = vec![0; len];
            if stdout.read_exact(&mut payload).is_err() {
                return;
            }
            let stream = u32::from_le_bytes(h[..4].try_into().unwrap());
            if tx.send((stream, h[4], payload)).is_err() {
                return;
            }
        });
        let mut remote = Self {
            child,
            stdin: Some(stdin),
            frames,
        };
        let hello = remote.next_message();
        assert_eq!(hello["op"], "hello", "{hello}");
        remote
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        // The remote may have hung up on what it was sent.
        let _ = stdin.write_all(bytes).and_then(|()| stdin.flush());
    }

    fn next_message(&mut self) -> serde_json::Value {
        let (stream, kind, payload) = self
            .frames
            .recv_timeout(Duration::from_secs(60))
            .expect("no message from nixferry remote within 60 s");
        assert_eq!((stream, kind), (0, 0), "{payload:?}");
        serde_json::from_slice(&payload).unwrap()
    }

    /// The reply that ends request `id`.
    fn outcome(&mut self, id: u64) -> serde_json::Value {
        loop {
            let m = self.next_message();
            if m["id"] == id && m["op"] != "offset" {
                return m;
            }
        }
    }

    /// Closes its input and waits for it to exit (60 s at most).
    fn finish(mut self) -> Output {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("nixferry remote did not exit within 60 s of its input's end");
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.wait_with_output().unwrap()
    }
}

/// A built path's NAR and its info as an add request holds it.
fn nar_and_info(path: &str) -> (Vec<u8>, serde_json::Value) {
    let nar = run(nix("nix-store").args(["--dump", path])).stdout;
    let out = run(nix("nix").args(["path-info", "--json", path])).stdout;
    let listed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let info = &listed[0];
    assert_eq!(info["narSize"].as_u64(), Some(nar.len() as u64));
    let info = serde_json::json!({
        "path": path.rsplit('/').next().unwrap(),
        "narHash": info["narHash"],
        "narSize": info["narSize"],
        "references": [],
        "signatures": [],
    });
    (nar, info)
}

fn add(id: u64, info: &serde_json::Value, nar: &[u8]) -> Vec<u8> {
    let mut bytes = message(&serde_json::json!({
        "op": "add", "id": id, "info": info, "encoding": "zstd", "offset": 0,
    }));
    let compressed = zstd::encode_all(nar, 3).unwrap();
    for chunk in compressed.chunks(1000) {
        bytes.extend(frame(u32::try_from(id).unwrap(), 1, chunk));
    }
    bytes.extend(frame(u32::try_from(id).unwrap(), 2, b""));
    bytes
}

/// 5. A sender whose NAR does not match its info gets `mismatch`, and
///    nothing is imported or kept; one claiming fewer bytes than it sends
///    is refused; a good add then goes in.
#[test]
fn ferry_remote_refuses_bad_adds() {
    if !have_nix() {
        return;
    }
    let path = build_input_addressed("ferry-hostile-add");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let spool = tmp.path().join("spool");
    let (nar, info) = nar_and_info(&path);
    let mut remote = Remote::start(&store, &spool);

    let mut bad = nar.clone();
    let last = bad.len() - 20;
    bad[last] ^= 0x20;
    remote.send(&add(1, &info, &bad));
    let reply = remote.outcome(1);
    assert_eq!(
        (&reply["op"], &reply["failure"]),
        (&"failed".into(), &"mismatch".into()),
        "{reply}"
    );
    assert_eq!(files_in(&spool), Vec::<String>::new());
    assert!(!nix_has(&store, &path));

    let mut small = info.clone();
    small["narSize"] = (nar.len() as u64 - 8).into();
    remote.send(&add(2, &small, &nar));
    let reply = remote.outcome(2);
    assert_eq!(
        (&reply["op"], &reply["failure"]),
        (&"failed".into(), &"mismatch".into()),
        "{reply}"
    );
    assert_eq!(files_in(&spool), Vec::<String>::new());
    assert!(!nix_has(&store, &path));

    remote.send(&add(3, &info, &nar));
    let reply = remote.outcome(3);
    assert_eq!(reply["op"], "added", "{reply}");
    // A retry asking where to resume a path that is in: `added`, no
    // offset, and the stream is not read.
    let mut again = message(&serde_json::json!({
        "op": "add", "id": 4, "info": info, "encoding": "zstd", "offset": null,
    }));
    again.extend(frame(4, 2, b""));
    remote.send(&again);
    let reply = remote.next_message();
    assert_eq!(
        (&reply["op"], &reply["id"]),
        (&"added".into(), &4.into()),
        "{reply}"
    );
    let out = remote.finish();
    assert_success(&out);
    nix_verify(&store, &path);
    assert_eq!(files_in(&spool), Vec::<String>::new());
}

/// 5. Frames that break the protocol end `nixferry remote` with an error
///    that says where, and nothing is imported.
#[test]
fn ferry_remote_refuses_garbage() {
    if !have_nix() {
        return;
    }
    let path = build_input_addressed("ferry-hostile-garbage");
    let (nar, info) = nar_and_info(&path);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let spool = tmp.path().join("spool");
    // An add whose stream is open when the garbage comes.
    let mut started = message(&serde_json::json!({
        "op": "add", "id": 1, "info": info, "encoding": "zstd", "offset": 0,
    }));
    let compressed = zstd::encode_all(&nar[..], 3).unwrap();
    started.extend(frame(1, 1, &compressed[..compressed.len() / 2]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown kind", frame(1, 9, b"")),
        ("message on a data stream", frame(5, 0, b"{}")),
        ("data for a stream not open", frame(7, 1, b"abc")),
        ("not JSON", frame(0, 0, b"hello")),
        (
            "not a request",
            message(&serde_json::json!({"op": "launch", "id": 3})),
        ),
        ("over-long data frame", {
            let mut f = 1u32.to_le_bytes().to_vec();
            f.push(1);
            f.extend_from_slice(&(64u32 << 20).to_le_bytes());
            f
        }),
        ("end of stream 0", frame(0, 2, b"")),
    ];
    for (what, garbage) in cases {
        let mut remote = Remote::start(&store, &spool);
        remote.send(&started);
        remote.send(&garbage);
        let out = remote.finish();
        assert!(!out.status.success(), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("at byte"), "{what}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(!nix_has(&store, &path), "{what}");
    }
}

/// A fake `nixferry remote` in `dir` (as `dir/nixferry`): it greets as
/// nixferry, then per `mode`: `garbage` sends a frame of an unknown kind;
/// `stranger` answers queries with `other`'s info; `bad-nar` answers with
/// `info` and sends `nar_file` (zstd) for any NAR asked.
fn fake_remote(dir: &Path, mode: &str, info: &str, other: &str, nar_file: &Path) -> String {
    let program = dir.join("nixferry");
    let text = r#"#!/usr/bin/perl
use strict; use warnings;
binmode STDIN; binmode STDOUT;
my $mode = 'MODE';
my $info = 'INFO';
my $other = 'OTHER';
sub rd { my $n = shift; my $buf = ''; while (length($buf) < $n) { my $r = sysread(STDIN, $buf, $n - length($buf), length($buf)); exit 0 unless $r; } return $buf; }
sub frame { my ($stream, $kind, $payload) = @_; my $f = pack('VCV', $stream, $kind, length $payload) . $payload; syswrite(STDOUT, $f) == length $f or exit 0; }
rd(16);
syswrite(STDOUT, "nixferry" . pack('VV', 1, 0));
frame(0, 0, '{"op":"hello","version":1,"storeDir":"/nix/store"}');
if ($mode eq 'garbage') { frame(1, 9, ''); while (sysread(STDIN, my $buf, 65536)) {} exit 0; }
while (1) {
  my ($stream, $kind, $len) = unpack('VCV', rd(9));
  my $payload = rd($len);
  next unless $kind == 0;
  my ($op) = $payload =~ /"op":"(\w+)"/;
  my ($id) = $payload =~ /"id":(\d+)/;
  if ($op eq 'query') {
    my $valid = $mode eq 'stranger' ? $other : $info;
    frame(0, 0, qq({"op":"paths","id":$id,"valid":[$valid],"missing":[]}));
  } elsif ($op eq 'closure') {
    frame(0, 0, qq({"op":"closure","id":$id,"infos":[$info]}));
  } elsif ($op eq 'nar') {
    open(my $fh, '<', 'NAR') or die; binmode $fh;
    while (read($fh, my $chunk, 65536)) { frame($id, 1, $chunk); }
    frame($id, 2, '');
  }
}
"#
    .replace("MODE", mode)
    .replace("INFO", info)
    .replace("OTHER", other)
    .replace("NAR", &nar_file.display().to_string());
    script(&program, &text);
    program.display().to_string()
}

/// 6. A remote that breaks the protocol, answers about a path it was not
///    asked about, or sends a NAR that does not match its hash: the copy
///    fails soon, saying why, and nothing enters the destination.
#[test]
fn ferry_hostile_remote() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    let path = build_input_addressed("ferry-hostile-remote");
    let stranger = build_input_addressed("ferry-hostile-stranger");
    let (nar, info) = nar_and_info(&path);
    let (_, other) = nar_and_info(&stranger);
    let mut bad = nar.clone();
    let last = bad.len() - 20;
    bad[last] ^= 0x20;
    let nar_file = tmp.path().join("bad.nar.zst");
    fs::write(&nar_file, zstd::encode_all(&bad[..], 3).unwrap()).unwrap();
    let (info, other) = (info.to_string(), other.to_string());
    let limit = Duration::from_secs(60);
    let remote = tmp.path().join("remote");

    let fake = fake_remote(
        &tmp.path().join("garbage"),
        "garbage",
        &info,
        &other,
        &nar_file,
    );
    let url = with(&sshd.store_url(&remote), &[("remote-program", &fake)]);
    let out = output_within(nixferry().args(["copy", "--to", &url, &path]), limit);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown frame kind"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    let fake = fake_remote(
        &tmp.path().join("stranger"),
        "stranger",
        &info,
        &other,
        &nar_file,
    );
    let url = with(&sshd.store_url(&remote), &[("remote-program", &fake)]);
    let out = output_within(nixferry().args(["copy", "--to", &url, &path]), limit);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not asked"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    let fake = fake_remote(
        &tmp.path().join("bad-nar"),
        "bad-nar",
        &info,
        &other,
        &nar_file,
    );
    let url = with(&sshd.store_url(&remote), &[("remote-program", &fake)]);
    let local = tmp.path().join("local");
    let local_url = format!("local?root={}", local.display());
    let cache = tmp.path().join("cache");
    let cache_url = format!("file://{}", cache.display());
    for dest in [&local_url, &cache_url] {
        let out = output_within(
            nixferry().args([
                "copy",
                "--retries",
                "1",
                "--from",
                &url,
                "--to",
                dest,
                "--no-check-sigs",
                &path,
            ]),
            limit,
        );
        assert!(!out.status.success(), "{dest}: {}", stderr(&out));
        assert!(
            stderr(&out).to_lowercase().contains("hash"),
            "{dest}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    assert!(!nix_has(&local, &path));
    let hash_part = path.rsplit('/').next().unwrap().split('-').next().unwrap();
    assert!(!cache.join(format!("{hash_part}.narinfo")).exists());
}
