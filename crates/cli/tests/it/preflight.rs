//! `nixferry check` and `copy --preflight`: every destination checked
//! before a copy, against a real sshd with real `nix-store --serve` on
//! chroot stores (one on a tmpfs too small for the closure), a host whose
//! Nix does not trust the key of its substituter, a wrong login, and a
//! writable `nixferry serve` given a wrong token.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{
    assert_success, build_closure, generate_key, have_nix, nix, nixferry, run, run_text, stderr,
    write_netrc,
};
use crate::serve::writable_server;
use crate::sshd::{have_sshd, percent_encode, Sshd};

fn ready() -> bool {
    let nix = have_nix();
    let sshd = have_sshd();
    nix && sshd
}

fn check(args: &[&str]) -> Output {
    nixferry().arg("check").args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both streams, for assertion messages.
fn said(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// The path of the closure of `top` whose name ends with `suffix`.
fn member(top: &str, suffix: &str) -> String {
    run_text(nix("nix-store").args(["-qR", top]))
        .lines()
        .find(|p| p.ends_with(suffix))
        .unwrap_or_else(|| panic!("no path ending with {suffix} in the closure of {top}"))
        .to_owned()
}

/// A good host: logged in, the Nix version, the paths a partial copy
/// left there counted, room enough; exit 0. The JSON has the same facts.
#[test]
fn a_good_host_passes() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("preflight-good");
    let tmp = tempfile::tempdir().unwrap();
    let url = sshd.store_url(&tmp.path().join("remote"));
    let base = member(&top, "-base");
    assert_success(
        &nixferry()
            .args(["copy", "--to", &url, &base])
            .output()
            .unwrap(),
    );

    let out = check(&["--to", &url, &top]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains(&format!("{url}: ok")), "{}", said(&out));
    assert!(text.contains("nix-store (Nix) 2."), "{}", said(&out));
    assert!(
        text.contains("has 1 of 3 paths; 2 missing"),
        "{}",
        said(&out)
    );
    assert!(text.contains(" free on "), "{}", said(&out));

    let out = check(&["--json", "--to", &url, &top]);
    assert_success(&out);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", said(&out));
    let r = &lines[0];
    assert_eq!(r["to"], url.as_str());
    assert_eq!(
        (r["ok"].as_bool(), r["status"].as_str()),
        (Some(true), Some("ok")),
        "{r}"
    );
    assert_eq!(r["closure"]["paths"], 3, "{r}");
    assert_eq!(r["missing"]["paths"], 2, "{r}");
    let base_size: u64 = run_text(nix("nix").args(["path-info", "--json", &base]))
        .parse::<serde_json::Value>()
        .unwrap()[0]["narSize"]
        .as_u64()
        .unwrap();
    assert_eq!(
        r["missing"]["narBytes"].as_u64().unwrap() + base_size,
        r["closure"]["narBytes"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        r["nixVersion"]
            .as_str()
            .unwrap()
            .starts_with("nix-store (Nix) 2."),
        "{r}"
    );
    assert!(r["space"]["freeBytes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["space"]["neededBytes"], r["missing"]["narBytes"], "{r}");
    let checks: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["login", "nix", "paths", "space"], "{r}");
    // Nothing was copied by the checks.
    assert!(stderr(
        &nixferry()
            .args(["copy", "--to", &url, &top])
            .output()
            .unwrap()
    )
    .contains("copied 2 paths"));
}

/// A tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A host whose store is on a filesystem too small for the closure: a
/// refusal that says how much is needed and how much is free; exit 1.
/// `copy --preflight` refuses the same way and copies nothing.
#[test]
fn a_host_without_room_is_refused() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().unwrap();
    // 4 MiB of bytes that do not compress.
    let payload = tmp.path().join("payload");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(&payload, bytes).unwrap();
    let path = run_text(nix("nix-store").arg("--add").arg(&payload));
    let small = tmp.path().join("small");
    let _tmpfs = Tmpfs::mount(&small, "2m");
    let url = sshd.store_url(&small);

    let out = check(&["--to", &url, &path]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("{url}: FAIL")), "{}", said(&out));
    assert!(
        text.contains("not enough space: needs 4.00 MiB"),
        "{}",
        said(&out)
    );
    assert!(
        text.contains(&format!("free on {}", small.display())),
        "{}",
        said(&out)
    );

    let out = nixferry()
        .args(["copy", "--preflight", "--to", &url, &path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(stderr(&out).contains("not copying"), "{}", said(&out));
    assert!(!small.join(path.trim_start_matches('/')).exists());
}

/// With -s: a host whose substituter has the paths, signed by a key the
/// host does not trust, would not substitute them and would receive them
/// from us: exit 1. Trusting the key mends it.
#[test]
fn substitution_needs_a_key_the_host_trusts() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("preflight-trust");
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "preflight-cache-1");
    let (_, other) = generate_key(tmp.path(), "someone-else-1");
    let cache = format!("file://{}", tmp.path().join("cache").display());
    assert_success(
        &nixferry()
            .args(["copy", "--to", &cache, "--secret-key-file"])
            .arg(&sk)
            .arg(&top)
            .output()
            .unwrap(),
    );
    let url = sshd.store_url(&tmp.path().join("remote"));
    let nix_conf = sshd.dir().join("nix.conf");
    let base_conf = fs::read_to_string(&nix_conf).unwrap();
    let set_trusted = |key: &str| {
        fs::write(
            &nix_conf,
            format!("{base_conf}substituters = {cache}\ntrusted-public-keys = {key}\n"),
        )
        .unwrap();
    };

    set_trusted(other.trim());
    let out = check(&["-s", "--from", &cache, "--to", &url, &top]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains("would substitute 0 (0 B), receive 3"),
        "{}",
        said(&out)
    );
    assert!(
        text.contains("without a signature it trusts"),
        "{}",
        said(&out)
    );
    assert!(text.contains("someone-else-1"), "{}", said(&out));
    assert!(
        text.contains(&format!("substituters: {cache}")),
        "{}",
        said(&out)
    );

    set_trusted(pk.trim());
    let out = check(&["-s", "--json", "--from", &cache, "--to", &url, &top]);
    assert_success(&out);
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(r["substitute"]["paths"], 3, "{r}");
    assert_eq!(r["receive"]["paths"], 0, "{r}");
    assert_eq!(r["substituters"][0], cache.as_str(), "{r}");
}

/// A wrong login is a clear failure of its own destination; the others
/// are still checked and reported.
#[test]
fn a_wrong_login_fails_alone() {
    if !ready() {
        return;
    }
    let sshd = Sshd::start();
    let top = build_closure("preflight-login");
    let tmp = tempfile::tempdir().unwrap();
    let good = sshd.store_url(&tmp.path().join("remote"));
    let stranger = tmp.path().join("stranger");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let bad = good.replace(
        &percent_encode(&sshd.user_key().display().to_string()),
        &percent_encode(&stranger.display().to_string()),
    );
    assert_ne!(bad, good);

    let out = check(&["--to", &bad, "--to", &good, &top]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("{bad}: FAIL")), "{}", said(&out));
    assert!(
        text.contains("  login        FAIL  cannot log in: "),
        "{}",
        said(&out)
    );
    assert!(text.contains("Permission denied"), "{}", said(&out));
    assert!(text.contains(&format!("{good}: ok")), "{}", said(&out));
    assert!(text.contains("has 0 of 3 paths"), "{}", said(&out));
}

/// A writable `nixferry serve` and a netrc with a wrong token: read
/// access is fine, write access is refused, naming the credentials;
/// `copy --preflight` copies nothing. With the right token both pass.
#[test]
fn a_cache_with_a_bad_token_is_refused() {
    if !have_nix() {
        return;
    }
    let top = build_closure("preflight-token");
    let tmp = tempfile::tempdir().unwrap();
    let (server, dest) = writable_server(tmp.path(), "right-token");
    let netrc = |name: &str, password: &str| {
        write_netrc(&tmp.path().join(name), password)
            .display()
            .to_string()
    };
    let wrong = netrc("netrc-wrong", "wrong-token");
    let file_cache = format!("file://{}", tmp.path().join("files").display());

    let out = nixferry()
        .args([
            "--option",
            "netrc-file",
            &wrong,
            "check",
            "--to",
            &server.url(),
        ])
        .args(["--to", &file_cache, &top])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{}: FAIL", server.url())),
        "{}",
        said(&out)
    );
    assert!(text.contains("write access refused"), "{}", said(&out));
    assert!(text.contains("401"), "{}", said(&out));
    assert!(text.contains("netrc"), "{}", said(&out));
    // The directory cache beside it is fine.
    assert!(
        text.contains(&format!("{file_cache}: ok")),
        "{}",
        said(&out)
    );
    assert!(
        !tmp.path().join("files").exists(),
        "a check created the cache"
    );

    let out = nixferry()
        .args(["--option", "netrc-file", &wrong, "copy", "--preflight"])
        .args(["--to", &server.url(), &top])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(stderr(&out).contains("not copying"), "{}", said(&out));
    let narinfos = fs::read_dir(&dest)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".narinfo")
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(narinfos, 0);

    let right = netrc("netrc", "right-token");
    let out = nixferry()
        .args(["--option", "netrc-file", &right, "copy", "--preflight"])
        .args(["--to", &server.url(), &top])
        .output()
        .unwrap();
    assert_success(&out);
    assert!(stderr(&out).contains("copied 3 paths"), "{}", said(&out));
}

/// An `s3://` cache: read and write access with the right credentials,
/// a refusal that names the AWS credentials with a wrong secret.
#[test]
fn an_s3_cache_with_wrong_credentials_is_refused() {
    if !crate::s3::ready() {
        return;
    }
    let s3 = crate::s3::S3::start();
    let top = build_closure("preflight-s3");
    let url = s3.url("cache", "");

    let out = s3
        .nixferry()
        .args(["check", "--to", &url, &top])
        .output()
        .unwrap();
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains("  write        ok "), "{}", said(&out));
    assert!(text.contains("has 0 of 3 paths"), "{}", said(&out));

    let out = s3
        .nixferry()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["check", "--to", &url, &top])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("{url}: FAIL")), "{}", said(&out));
    assert!(text.contains("refused"), "{}", said(&out));
    assert!(text.contains("AWS credentials"), "{}", said(&out));
}
