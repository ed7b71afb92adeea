//! `nixferry copy` and `copy-closure` over SSH, against a real OpenSSH
//! server on 127.0.0.1 with real `nix-store --serve --write` behind it on
//! chroot stores; and `--to local`, through `nix-store --serve --write` run
//! locally. Nix checks what arrives.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{
    assert_same_closure, assert_success, build_closure, have_nix, nix, nixferry, run, stderr,
};
use crate::sshd::{have_sshd, percent_encode as encode, Sshd};

fn ready() -> bool {
    // Both checks run, so that a missing tool is reported either way.
    let nix = have_nix();
    let sshd = have_sshd();
    nix && sshd
}

fn copy(args: &[&str]) -> Output {
    nixferry().arg("copy").args(args).output().unwrap()
}

/// Push a closure over SSH, push it again (nothing to do), pull it back
/// into a `file://` cache and into a local chroot store (through
/// `nix-store --serve --write` run here), and check each with Nix.
#[test]
fn push_and_pull_over_ssh() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ssh-push");
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);

    let out = copy(&["--to", &url, &top]);
    assert_success(&out);
    assert!(stderr(&out).contains("copied 3 paths"), "{}", stderr(&out));
    assert_same_closure(&remote, &top);
    let out = copy(&["--to", &url, &top]);
    assert_success(&out);
    assert!(stderr(&out).contains("copied 0 paths"), "{}", stderr(&out));
    assert!(stderr(&out).contains("skipped 3"), "{}", stderr(&out));

    // Pulled paths carry no signatures: trusting them is a decision.
    let cache = tmp.path().join("cache");
    let cache_url = format!("file://{}", cache.display());
    let out = copy(&["--from", &url, "--to", &cache_url, &top]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    let out = copy(&["--from", &url, "--to", &cache_url, "--no-check-sigs", &top]);
    assert_success(&out);
    let out = run(nix("nix")
        .args(["path-info", "-r", "--json", "--store"])
        .arg(&cache_url)
        .arg(&top));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);

    let local = tmp.path().join("local");
    let local_url = format!("local?root={}", local.display());
    let out = copy(&["--from", &url, "--to", &local_url, "--no-check-sigs", &top]);
    assert_success(&out);
    assert_same_closure(&local, &top);
}

/// `--to` repeated: one closure to several hosts at once; a host that
/// cannot be reached fails on its own and the summary says so per host.
#[test]
fn fan_out_to_several_hosts() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ssh-fanout");
    let tmp = tempfile::tempdir().unwrap();
    let remotes: Vec<_> = (0..3).map(|i| tmp.path().join(format!("r{i}"))).collect();
    let mut args = vec!["--json".to_owned(), "--retries".to_owned(), "1".to_owned()];
    for r in &remotes {
        args.extend(["--to".to_owned(), sshd.store_url(r)]);
    }
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("ssh://nobody@127.0.0.1:{closed}?remote-store=/nonexistent");
    args.extend(["--to".to_owned(), dead.clone(), top.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = copy(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for r in &remotes {
        assert_same_closure(r, &top);
    }
    let summaries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "summary")
        .collect();
    assert_eq!(summaries.len(), 4);
    for s in &summaries[..3] {
        assert_eq!(
            (s["copied"].as_u64(), s["error"].is_null()),
            (Some(3), true),
            "{s}"
        );
    }
    assert_eq!(summaries[3]["to"], dead.as_str());
    assert!(
        summaries[3]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{}",
        summaries[3]
    );
}

/// `copy-closure` takes `nix-copy-closure`'s arguments; `NIX_SSHOPTS`
/// applies; `--from` installs into the local store.
#[test]
fn copy_closure_like_nix_copy_closure() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ssh-copy-closure");
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    // The host, with the chroot store to use on it (nix-copy-closure always
    // uses the remote's default store; these tests must not touch it).
    let host = format!("{}?remote-store={}", sshd.destination(), remote.display());
    let out = nixferry()
        .args(["copy-closure", "--gzip", "-s", "-v", "--to", &host, &top])
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .output()
        .unwrap();
    assert_success(&out);
    assert_same_closure(&remote, &top);
    // -v says each path, as nix-copy-closure -v does.
    let said = stderr(&out);
    let top_name = top.rsplit('/').next().unwrap();
    assert!(
        said.lines()
            .any(|l| l.starts_with("copying path '") && l.contains(top_name)),
        "{said}"
    );
}

/// A wrong host key, a refused key and a missing remote program are clear
/// errors, at once: not tried again.
#[test]
fn refusals_are_clear_and_not_retried() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ssh-refusals");
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let good = sshd.store_url(&remote);

    // Another server's key.
    let other = tmp.path().join("other");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let b64 = base64_of(other_pub.join(" ").as_bytes());
    let wrong_host = good.replace(
        &format!(
            "base64-ssh-public-host-key={}",
            encode(&sshd.host_public_key_base64())
        ),
        &format!("base64-ssh-public-host-key={}", encode(&b64)),
    );
    assert_ne!(wrong_host, good);
    // A key the server does not know.
    let wrong_user = good.replace(
        &encode(&sshd.user_key().display().to_string()),
        &encode(&other.display().to_string()),
    );
    assert_ne!(wrong_user, good);
    let no_program = format!("{good}&remote-program=/nonexistent/nix-store");

    for (url, needle) in [
        (&wrong_host, "Host key verification failed"),
        (&wrong_user, "Permission denied"),
        (&no_program, "nonexistent"),
    ] {
        let out = copy(&["--to", url, &top]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{url}: {}", stderr(&out));
        // Refused at once: not tried again.
        assert!(!stderr(&out).contains("retry"), "{url}: {}", stderr(&out));
    }
    assert!(
        !remote.join("nix/store").exists()
            || fs::read_dir(remote.join("nix/store")).unwrap().count() == 0
    );
}

/// The remote `nix-store` killed in the middle of a NAR: the copy retries,
/// resumes from what the remote has, and ends with the whole closure.
#[test]
fn a_cut_connection_is_retried() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    // Large enough that the copy is still running when the server dies.
    let expr = r#"derivation {
        name = "nixferry-ssh-cut";
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" "export PATH=/usr/bin:/bin; head -c 200000000 /dev/urandom > $out" ];
    }"#;
    let big = crate::common::run_text(nix("nix-build").args(["--no-out-link", "--expr", expr]));
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);

    let child = nixferry()
        .args(["copy", "--json", "--to", &url, &big])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server for this test's store: its command line names the store.
    let pattern = format!("nix-store --serve --write --store {}", remote.display());
    let killed = kill_when_busy(&pattern, &remote);
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    assert!(killed, "the server was never seen running");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"event\":\"retrying\""), "{stdout}");
    assert_same_closure(&remote, &big);
}

/// Waits for the server process whose command line starts with `prefix`
/// to have read part of the NAR, then kills it. Returns whether it did.
/// Reads `/proc` itself, so that the test needs no process tools.
///
/// Only a server that reads counts: the copy first runs one to see
/// whether the remote has nixferry, which hangs up soon after the
/// greeting.
fn kill_when_busy(prefix: &str, _remote: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let busy = find_processes(prefix)
            .into_iter()
            .find(|&pid| bytes_read(pid) > 4 << 20);
        if let Some(pid) = busy {
            let status = Command::new("sh")
                .args(["-c", &format!("kill -9 {pid}")])
                .status()
                .unwrap();
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The pids of the processes whose command line (arguments joined by
/// spaces) starts with `prefix`.
fn find_processes(prefix: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.join(" ").starts_with(prefix).then_some(pid)
        })
        .collect()
}

/// How many bytes process `pid` has read so far (0 if it is gone).
fn bytes_read(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn base64_of(data: &[u8]) -> String {
    nixferry::hash::to_base64(data)
}

/// `-s`: the remote fetches what its own substituters have (here a signed
/// `file://` cache it trusts), and nothing is sent to it.
#[test]
fn substitute_on_destination() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("ssh-substitute");
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = crate::common::generate_key(tmp.path(), "subst-test-1");
    let cache = format!("file://{}", tmp.path().join("cache").display());
    let out = copy(&[
        "--to",
        &cache,
        "--secret-key-file",
        sk.to_str().unwrap(),
        &top,
    ]);
    assert_success(&out);
    // The remote's Nix configuration, as the harness gives it to sessions.
    let conf = sshd.dir().join("nix.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "substituters = {cache}\ntrusted-public-keys = {}\n",
        pk.trim()
    ));
    fs::write(&conf, text).unwrap();

    let remote = tmp.path().join("remote");
    let url = sshd.store_url(&remote);
    let out = copy(&["--json", "-s", "--to", &url, &top]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("\"event\":\"copied\""), "{stdout}");
    assert_eq!(
        stdout.matches("\"event\":\"skipped\"").count(),
        3,
        "{stdout}"
    );
    assert_same_closure(&remote, &top);
}

/// `copy-closure --include-outputs` on a derivation also copies the
/// outputs built from the derivations in its closure.
#[test]
fn copy_closure_includes_outputs() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let expr = r#"derivation {
        name = "nixferry-ssh-outputs";
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" "echo an output > $out" ];
    }"#;
    let drv = crate::common::run_text(nix("nix-instantiate").args(["--expr", expr]));
    let out_path = crate::common::run_text(nix("nix-store").args(["--realise", &drv]));
    let tmp = tempfile::tempdir().unwrap();
    let host = |dir: &Path| format!("{}?remote-store={}", sshd.destination(), dir.display());
    let has = |dir: &Path, p: &str| {
        nix("nix-store")
            .arg("--store")
            .arg(dir)
            .args(["--check-validity", p])
            .output()
            .unwrap()
            .status
            .success()
    };

    let without = tmp.path().join("without");
    let out = nixferry()
        .args(["copy-closure", "--to", &host(&without), &drv])
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(has(&without, &drv) && !has(&without, &out_path));

    let with = tmp.path().join("with");
    let out = nixferry()
        .args([
            "copy-closure",
            "--include-outputs",
            "--to",
            &host(&with),
            &drv,
        ])
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(has(&with, &drv) && has(&with, &out_path));
}
