//! Upstream-aware pushes: `nixferry copy` to a binary cache leaves out
//! the paths an upstream cache (Nix's configured substituters, or
//! `--upstream`) serves with a trusted signature, and the cache plus its
//! upstream then hold the whole closure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{assert_success, build_closure, generate_key, have_nix, nixferry, stderr};

/// The store paths whose narinfos the cache in `dir` holds.
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let path = text.lines().find_map(|l| l.strip_prefix("StorePath: "));
            path.unwrap().rsplit('-').next().unwrap().to_owned()
        })
        .collect();
    names.sort();
    names
}

/// The JSON Lines of a `--json` run.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Setup {
    tmp: tempfile::TempDir,
    top: String,
    /// The upstream's key, secret and public.
    sk: PathBuf,
    pk: String,
    /// `file://` URL of the upstream, which holds `mid` and `base`,
    /// signed by `pk`.
    up: String,
}

impl Setup {
    fn new() -> Self {
        let top = build_closure("upstream-push");
        let tmp = tempfile::tempdir().unwrap();
        let (sk, pk) = generate_key(tmp.path(), "upstream-push-1");
        let pk = pk.trim().to_owned();
        let up = format!("file://{}", tmp.path().join("up").display());
        // The upstream gets `mid`'s closure (`mid` and `base`), signed.
        let refs = fs::read_to_string(Path::new(&top).join("refs")).unwrap();
        let mid = refs.split_whitespace().next().unwrap().to_owned();
        assert!(mid.ends_with("-mid"), "{refs}");
        assert_success(
            &nixferry()
                .args(["copy", "--to", &up, "--secret-key-file"])
                .arg(&sk)
                .arg(&mid)
                .output()
                .unwrap(),
        );
        assert_eq!(names_in(&tmp.path().join("up")), ["base", "mid"]);
        Setup {
            tmp,
            top,
            sk,
            pk,
            up,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `nixferry copy` of the closure of `top` to the cache `name`.
    fn push(&self, name: &str) -> Command {
        let mut c = nixferry();
        c.args(["copy", "--to"])
            .arg(format!("file://{}", self.dir(name).display()))
            .arg(&self.top);
        c
    }
}

#[test]
fn pushes_leave_out_what_a_configured_substituter_serves() {
    if !have_nix() {
        return;
    }
    let s = Setup::new();
    let configured = ["--option", "substituters", &s.up];
    let trusted = ["--option", "trusted-public-keys", &s.pk];

    // Substituters set with --option: `mid` and `base` are left out, and
    // the summary says so. (Signed, for `cache verify` below.)
    let out = s
        .push("d1")
        .args(configured)
        .args(trusted)
        .arg("--secret-key-file")
        .arg(&s.sk)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d1")), ["top"]);
    let err = stderr(&out);
    assert!(
        err.contains("copied 1 path (") && err.contains(", skipped 2 paths found upstream"),
        "{err}"
    );

    // The cache and its upstream hold the closure: `top`'s references are
    // found upstream, and trusted there.
    let verify = |upstream: &str| {
        nixferry()
            .args(["cache", "verify"])
            .arg(format!("file://{}", s.dir("d1").display()))
            .args(["--upstream", upstream, "--trusted-key", &s.pk])
            .output()
            .unwrap()
    };
    assert_success(&verify(&s.up));
    let alone = nixferry()
        .args(["cache", "verify"])
        .arg(format!("file://{}", s.dir("d1").display()))
        .args(["--trusted-key", &s.pk])
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(1), "{}", stderr(&alone));

    // The same from NIX_CONFIG, as JSON: an event per path found upstream,
    // and the count in the summary.
    let conf = format!("substituters = {}\ntrusted-public-keys = {}", s.up, s.pk);
    let out = s
        .push("d2")
        .env("NIX_CONFIG", &conf)
        .arg("--json")
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d2")), ["top"]);
    let lines = json_lines(&out);
    let found: Vec<&str> = lines
        .iter()
        .filter(|v| v["event"] == "foundUpstream")
        .map(|v| {
            assert_eq!(v["upstream"], s.up.as_str(), "{v}");
            assert!(v["to"].as_str().unwrap().ends_with("/d2"), "{v}");
            v["path"].as_str().unwrap().rsplit('-').next().unwrap()
        })
        .collect();
    assert_eq!(found.len(), 2, "{lines:?}");
    assert!(
        found.contains(&"mid") && found.contains(&"base"),
        "{found:?}"
    );
    let planned = lines.iter().find(|v| v["event"] == "planned").unwrap();
    assert_eq!(
        (&planned["closure"], &planned["missing"]),
        (&3.into(), &1.into())
    );
    let summary = lines.iter().find(|v| v["event"] == "summary").unwrap();
    assert_eq!(
        (
            &summary["copied"],
            &summary["upstream"],
            &summary["skipped"]
        ),
        (&1.into(), &2.into(), &0.into()),
        "{summary}"
    );

    // --no-skip-upstream pushes everything.
    let out = s
        .push("d3")
        .args(configured)
        .args(trusted)
        .arg("--no-skip-upstream")
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d3")), ["base", "mid", "top"]);
    assert!(!stderr(&out).contains("found upstream"), "{}", stderr(&out));

    // Nix's built-in default (cache.nixos.org) does not switch it on:
    // nothing is asked, everything pushed.
    let out = s.push("d4").args(trusted).output().unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d4")), ["base", "mid", "top"]);

    // An upstream whose signatures are not trusted counts for nothing
    // (the key a copy signs with would be trusted: it is not used here).
    let (_, other) = generate_key(s.tmp.path(), "other-1");
    let out = s
        .push("d5")
        .args(configured)
        .args(["--option", "trusted-public-keys", other.trim()])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d5")), ["base", "mid", "top"]);

    // --upstream names upstreams instead of the substituters, and
    // switches skipping on.
    let out = s
        .push("d6")
        .args(trusted)
        .args(["--upstream", &s.up])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d6")), ["top"]);
}

#[test]
fn an_upstream_that_fails_is_a_warning() {
    if !have_nix() {
        return;
    }
    let s = Setup::new();
    // One that cannot be opened (a scheme nixferry does not know) and one
    // that refuses connections (nothing listens on port 1); a working one
    // beside them still counts.
    let refused = "http://127.0.0.1:1?retries=0";
    let out = s
        .push("d1")
        .args(["--option", "trusted-public-keys", &s.pk])
        .args(["--upstream", "ssh-ng://nowhere", "--upstream", refused])
        .args(["--upstream", &s.up])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d1")), ["top"]);
    let err = stderr(&out);
    for url in ["ssh-ng://nowhere", refused] {
        assert!(
            err.contains(&format!("nixferry: warning: upstream '{url}' left out (")),
            "{err}"
        );
    }

    // Alone, the failing upstream leaves every path to push.
    let out = s
        .push("d2")
        .args(["--option", "trusted-public-keys", &s.pk])
        .args(["--upstream", refused, "--json"])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(names_in(&s.dir("d2")), ["base", "mid", "top"]);
    let lines = json_lines(&out);
    let failed: Vec<_> = lines
        .iter()
        .filter(|v| v["event"] == "upstreamFailed")
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["upstream"], refused);
    let summary = lines.iter().find(|v| v["event"] == "summary").unwrap();
    assert_eq!(
        (&summary["copied"], &summary["upstream"]),
        (&3.into(), &0.into())
    );
}
