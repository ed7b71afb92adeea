//! `nixferry cache`: caches Nix wrote, checked whole and broken on
//! purpose, in directories and in the S3 server.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{
    assert_success, build_closure, build_input_addressed, generate_key, have_nix, nix, nixferry,
    run, stderr,
};
use crate::s3;

/// The hash part of a store path.
pub(crate) fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// The `URL` a narinfo of the cache in `dir` gives for `path`.
pub(crate) fn nar_url(dir: &Path, path: &str) -> String {
    let text = fs::read_to_string(dir.join(format!("{}.narinfo", hash_part(path)))).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned()
}

/// `nix copy`s `paths` into a new `file://` cache at `dir`, signed with
/// `sk`, with listings.
pub(crate) fn nix_cache(dir: &Path, sk: &Path, paths: &[&str]) {
    run(nix("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression=xz&write-nar-listing=true&secret-key={}",
            dir.display(),
            sk.display()
        ))
        .args(paths));
}

/// Runs `cache verify --json` with `args`: the exit code and the
/// problems as (kind, path or key) pairs.
pub(crate) fn verify(
    cmd: &mut Command,
    args: &[&str],
) -> (i32, BTreeSet<(String, String)>, Output) {
    let out = cmd
        .args(["cache", "verify", "--json"])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let problems = if code == 2 {
        BTreeSet::new()
    } else {
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let what = p["path"].as_str().or(p["key"].as_str()).unwrap();
                (p["kind"].as_str().unwrap().to_owned(), what.to_owned())
            })
            .collect()
    };
    (code, problems, out)
}

pub(crate) fn pair(kind: &str, what: &str) -> (String, String) {
    (kind.to_owned(), what.to_owned())
}

/// A cache Nix wrote verifies clean, with its key trusted: NAR files,
/// hashes, references and listings alike; with only Nix's default key,
/// every path is untrusted.
#[test]
fn a_cache_nix_wrote_verifies_clean() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "verify-clean");
    let top = build_closure("cache-verify-clean");
    let cache = tmp.path().join("cache");
    nix_cache(&cache, &sk, &[&top]);
    let url = format!("file://{}", cache.display());

    let (code, problems, out) = verify(&mut nixferry(), &[&url, "--trusted-key", pk.trim()]);
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["narinfos"], 3);
    assert_eq!(v["narFiles"], 3);

    // The closure of the top alone: the same three paths.
    let (code, _, out) = verify(&mut nixferry(), &[&url, &top, "--trusted-key", pk.trim()]);
    assert_eq!(code, 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["narinfos"], 3);

    let (code, problems, _) = verify(&mut nixferry(), &[&url]);
    assert_eq!(code, 1);
    assert!(
        problems.len() == 3 && problems.iter().all(|(k, _)| k == "untrusted"),
        "{problems:?}"
    );

    // A cache that is not there cannot be checked.
    let missing = format!("file://{}", tmp.path().join("none").display());
    let (code, _, out) = verify(&mut nixferry(), &[&missing]);
    assert_eq!(code, 2, "{}", stderr(&out));
    assert!(!tmp.path().join("none").exists());
}

/// The paths of a broken cache, and what is wrong with each.
struct Broken {
    cache: tempfile::TempDir,
    pk: String,
    /// The top of a closure whose `base` lost its narinfo.
    top: String,
    deleted: String,
    truncated: String,
    /// A path whose narinfo was removed; its NAR file is left.
    base: String,
    base_nar: String,
    expected: BTreeSet<(String, String)>,
}

/// A cache Nix wrote, then broken: one path's NAR file deleted, one's
/// truncated, one's signature spoilt, one unsigned, one whose reference
/// lost its narinfo (which leaves that NAR file an orphan), a NAR file
/// put there by hand, a temporary file.
fn broken_cache(tag: &str) -> Broken {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path();
    let (sk, pk) = generate_key(dir, &format!("{tag}-1"));
    let top = build_closure(&format!("{tag}-closure"));
    let deleted = build_input_addressed(&format!("{tag}-deleted"));
    let truncated = build_input_addressed(&format!("{tag}-truncated"));
    let bad_sig = build_input_addressed(&format!("{tag}-bad-sig"));
    let unsigned = build_input_addressed(&format!("{tag}-unsigned"));
    nix_cache(
        &dir.join("c"),
        &sk,
        &[&top, &deleted, &truncated, &bad_sig, &unsigned],
    );
    let c = dir.join("c");
    fs::remove_file(c.join(nar_url(&c, &deleted))).unwrap();
    let nar = c.join(nar_url(&c, &truncated));
    let len = fs::metadata(&nar).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&nar)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let edit = |path: &str, f: &dyn Fn(&str) -> Option<String>| {
        let file = c.join(format!("{}.narinfo", hash_part(path)));
        let text = fs::read_to_string(&file).unwrap();
        let new: String = text.lines().filter_map(f).map(|l| l + "\n").collect();
        assert_ne!(text, new);
        fs::write(&file, new).unwrap();
    };
    edit(&bad_sig, &|l| {
        Some(match l.strip_prefix("Sig: ") {
            // Another signature by the same key: valid base64, wrong bytes.
            Some(sig) => {
                let (name, b64) = sig.split_once(':').unwrap();
                let flipped = if b64.starts_with('A') { "B" } else { "A" };
                format!("Sig: {name}:{flipped}{}", &b64[1..])
            }
            None => l.to_owned(),
        })
    });
    edit(&unsigned, &|l| {
        (!l.starts_with("Sig: ")).then(|| l.to_owned())
    });
    // `base` of the closure: `mid` and `top` refer to it.
    let infos = crate::common::nix_closure_infos(None, &top);
    let base = infos
        .iter()
        .find(|i| i.0.ends_with("-base"))
        .unwrap()
        .0
        .clone();
    let base_nar = nar_url(&c, &base);
    fs::remove_file(c.join(format!("{}.narinfo", hash_part(&base)))).unwrap();
    fs::remove_file(c.join(format!("{}.ls", hash_part(&base)))).unwrap();
    let stray = "nar/0000000000000000000000000000000000000000000000000000.nar.xz";
    fs::write(c.join(stray), b"not a NAR").unwrap();
    let tmp_file = format!("nar/{}.tmp.4242.XyZ", hash_part(&top));
    fs::write(c.join(&tmp_file), b"half").unwrap();

    let referrers: Vec<_> = infos
        .iter()
        .filter(|i| i.3.contains(&base) && i.0 != base)
        .map(|i| i.0.clone())
        .collect();
    assert_eq!(referrers.len(), 2);
    let mut expected: BTreeSet<_> = [
        pair("nar-missing", &deleted),
        pair("nar-file-mismatch", &truncated),
        pair("bad-signature", &bad_sig),
        pair("unsigned", &unsigned),
        pair("orphan-nar", &base_nar),
        pair("orphan-nar", stray),
        pair("temporary-file", &tmp_file),
    ]
    .into();
    for r in referrers {
        expected.insert(pair("missing-reference", &r));
    }
    Broken {
        cache,
        pk: pk.trim().to_owned(),
        top,
        deleted,
        truncated,
        base,
        base_nar,
        expected,
    }
}

/// Each problem of a broken cache is reported, named by its path (or
/// file), and nothing else.
#[test]
fn a_broken_cache_is_reported_exactly() {
    if !have_nix() {
        return;
    }
    let b = broken_cache("cache-broken");
    let url = format!("file://{}", b.cache.path().join("c").display());
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[&url, "--trusted-key", &b.pk, "--grace", "0s"],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    assert_eq!(problems, b.expected);

    // A reference another store has (here, the local store, where it was
    // built) is no problem when that store is an upstream.
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[
            &url,
            "--trusted-key",
            &b.pk,
            "--grace",
            "0s",
            "--upstream",
            "local",
        ],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    let without_references: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, _)| k != "missing-reference")
        .cloned()
        .collect();
    assert_eq!(problems, without_references);

    // Files a writer may still be at work on are left out.
    let (_, problems, _) = verify(&mut nixferry(), &[&url, "--trusted-key", &b.pk]);
    let young: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, _)| k != "orphan-nar" && k != "temporary-file")
        .cloned()
        .collect();
    assert_eq!(problems, young);

    // The text report names each problem too.
    let out = nixferry()
        .args([
            "cache",
            "verify",
            &url,
            "--trusted-key",
            &b.pk,
            "--grace=0s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for (kind, what) in &b.expected {
        assert!(
            text.contains(&format!("{kind}: {what}: ")),
            "{kind} {what}:\n{text}"
        );
    }
}

/// The same broken cache in an S3 bucket is reported the same.
#[test]
fn a_broken_bucket_is_reported_exactly() {
    if !s3::ready() {
        return;
    }
    let server = s3::S3::start();
    let b = broken_cache("cache-broken-s3");
    let c = b.cache.path().join("c");
    let mut stack = vec![c.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path.strip_prefix(&c).unwrap().to_str().unwrap();
                server.put("cache", &format!("p/{key}"), &path);
            }
        }
    }
    let url = server.url("cache/p", "");
    let (code, problems, out) = verify(
        &mut server.nixferry(),
        &[&url, "--trusted-key", &b.pk, "--grace", "0s"],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    assert_eq!(problems, b.expected);

    // The closure of one path: only its problem.
    let (code, problems, out) = verify(
        &mut server.nixferry(),
        &[&url, &b.truncated, "--trusted-key", &b.pk, "--grace", "0s"],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    assert_eq!(problems, [pair("nar-file-mismatch", &b.truncated)].into());

    // --delete-broken deletes objects: the narinfos, listings and the
    // truncated NAR file go; the rest is as before.
    let truncated_nar = nar_url(&c, &b.truncated);
    let (code, problems, out) = verify(
        &mut server.nixferry(),
        &[
            &url,
            "--trusted-key",
            &b.pk,
            "--grace",
            "0s",
            "--delete-broken",
        ],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    let left: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, _)| k != "nar-missing" && k != "nar-file-mismatch")
        .cloned()
        .collect();
    assert_eq!(problems, left);
    let keys = server.keys("cache");
    for path in [&b.deleted, &b.truncated] {
        assert!(!keys.contains(&format!("p/{}.narinfo", hash_part(path))));
        assert!(!keys.contains(&format!("p/{}.ls", hash_part(path))));
    }
    assert!(!keys.contains(&format!("p/{truncated_nar}")));
    assert!(keys.contains(&format!("p/{}.narinfo", hash_part(&b.top))));
}

/// Multipart uploads begun in a bucket and never completed are reported,
/// keyed relative to the cache, once older than `--grace` (moto dates
/// every upload 2010-11-10), and no longer once aborted.
#[test]
fn unfinished_uploads_in_a_bucket_are_reported() {
    if !s3::have_s3() {
        return;
    }
    let server = s3::S3::start();
    let ours = server.begin_upload("cache", "sub/nar/1abc.nar.xz");
    // Not under the cache's prefix.
    let theirs = server.begin_upload("cache", "elsewhere/nar/2def.nar.xz");
    let url = server.url("cache/sub", "");

    let (code, problems, out) = verify(&mut server.nixferry(), &[&url, "--grace", "0s"]);
    assert_eq!(code, 1, "{}", stderr(&out));
    assert_eq!(
        problems,
        [pair("unfinished-upload", "nar/1abc.nar.xz")].into()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = &v["problems"][0];
    assert_eq!(problem["path"], serde_json::Value::Null);
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.starts_with("a multipart upload begun ")
            && message.contains(" ago and never completed")
            && message.contains(&ours),
        "{message}"
    );
    // The text report too.
    let out = server
        .nixferry()
        .args(["cache", "verify", &url, "--grace=0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("unfinished-upload: nar/1abc.nar.xz: a multipart upload begun "),
        "{text}"
    );

    // Younger than the grace: left alone.
    let (code, problems, out) = verify(&mut server.nixferry(), &[&url, "--grace", "36500d"]);
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));

    // The whole bucket has both.
    let (code, problems, _) = verify(
        &mut server.nixferry(),
        &[&server.url("cache", ""), "--grace", "0s"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        problems,
        [
            pair("unfinished-upload", "elsewhere/nar/2def.nar.xz"),
            pair("unfinished-upload", "sub/nar/1abc.nar.xz"),
        ]
        .into()
    );

    server.abort_upload("cache", "sub/nar/1abc.nar.xz", &ours);
    let (code, problems, out) = verify(&mut server.nixferry(), &[&url, "--grace", "0s"]);
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
    server.abort_upload("cache", "elsewhere/nar/2def.nar.xz", &theirs);
}

/// `--repair --from` copies broken and missing paths again (a truncated
/// NAR file replaced, not kept for its name), signed by the cache's key;
/// what no copy fixes stays reported; Nix then reads the repaired paths.
#[test]
fn repair_copies_broken_and_missing_paths_again() {
    if !have_nix() {
        return;
    }
    let b = broken_cache("cache-repair");
    let c = b.cache.path().join("c");
    let sk = b.cache.path().join("cache-repair-1.secret");
    let url = format!(
        "file://{}?compression=xz&secret-key={}",
        c.display(),
        sk.display()
    );
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[
            &url,
            "--trusted-key",
            &b.pk,
            "--grace",
            "0s",
            "--repair",
            "--from",
            "local",
        ],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    let left: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, what)| {
            let fixed = ["nar-missing", "nar-file-mismatch", "missing-reference"];
            // The NAR file of the path copied again is its own again.
            let reused = k == "orphan-nar" && *what == b.base_nar;
            !fixed.contains(&k.as_str()) && !reused
        })
        .cloned()
        .collect();
    assert_eq!(problems, left, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repaired: BTreeSet<_> = v["repair"]["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        repaired,
        [b.deleted.clone(), b.truncated.clone(), b.base.clone()].into()
    );

    // Nix copies the repaired paths, trusting the cache's key only.
    let store = b.cache.path().join("chroot");
    run(nix("nix")
        .args(["copy", "--from"])
        .arg(format!("file://{}", c.display()))
        .arg("--to")
        .arg(&store)
        .args(["--option", "trusted-public-keys", &b.pk])
        .args([&b.deleted, &b.truncated, &b.base]));
}

/// `--delete-broken` removes the narinfos of paths it cannot repair, and
/// their broken NAR files; then only the other problems are left.
#[test]
fn delete_broken_removes_what_cannot_be_served() {
    if !have_nix() {
        return;
    }
    let b = broken_cache("cache-delete");
    let c = b.cache.path().join("c");
    let url = format!("file://{}", c.display());
    let truncated_nar = nar_url(&c, &b.truncated);
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[
            &url,
            "--trusted-key",
            &b.pk,
            "--grace=0s",
            "--delete-broken",
        ],
    );
    assert_eq!(code, 1, "{}", stderr(&out));
    let left: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, _)| k != "nar-missing" && k != "nar-file-mismatch")
        .cloned()
        .collect();
    assert_eq!(problems, left);
    for path in [&b.deleted, &b.truncated] {
        assert!(!c.join(format!("{}.narinfo", hash_part(path))).exists());
        assert!(!c.join(format!("{}.ls", hash_part(path))).exists());
    }
    assert!(!c.join(truncated_nar).exists());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repair"]["deleted"].as_array().unwrap().len(), 2);

    // Without --delete-broken or --repair, nothing changes.
    let before = fs::read_dir(&c).unwrap().count();
    let (code, _, _) = verify(&mut nixferry(), &[&url, "--trusted-key", &b.pk]);
    assert_eq!(code, 1);
    assert_eq!(fs::read_dir(&c).unwrap().count(), before);
}

/// `cache sign` rotates the key of a cache Nix wrote: with the old key's
/// signatures removed, the cache verifies with the new key alone and Nix
/// copies from it trusting only that key; `cache stats` counts it.
#[test]
fn sign_rotates_the_key_and_stats_count() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (old_sk, old_pk) = generate_key(tmp.path(), "rotate-old-1");
    let (new_sk, new_pk) = generate_key(tmp.path(), "rotate-new-1");
    let top = build_closure("cache-rotate");
    let c = tmp.path().join("c");
    nix_cache(&c, &old_sk, &[&top]);
    let url = format!("file://{}", c.display());

    let out = run(nixferry().args(["cache", "stats", "--json", &url]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let infos = crate::common::nix_closure_infos(None, &top);
    let nar_bytes: u64 = infos.iter().map(|i| i.2).sum();
    assert_eq!(v["paths"], 3);
    assert_eq!(v["unsigned"], 0);
    assert_eq!(v["narBytes"], nar_bytes);
    let stored = v["storedBytes"].as_u64().unwrap();
    assert!(stored > 0 && stored == v["narDirBytes"].as_u64().unwrap());

    let sign = |extra: &[&str]| {
        nixferry()
            .args(["cache", "sign", &url, "--secret-key-file"])
            .arg(&new_sk)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = sign(&[
        "--remove-signatures-by",
        "rotate-old-1",
        "--trusted-key",
        old_pk.trim(),
    ]);
    assert_success(&out);
    assert!(stderr(&out).contains("3 rewritten"), "{}", stderr(&out));
    // Once more: nothing to do.
    let out = sign(&[]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("0 rewritten, 3 unchanged"),
        "{}",
        stderr(&out)
    );
    let out = sign(&["--json"]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["narinfos"], &v["unchanged"]), (&3.into(), &3.into()));
    // The old key no longer signs anything: a sign that requires it
    // leaves every narinfo alone.
    let out = sign(&["--trusted-key", old_pk.trim()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 left alone"), "{}", stderr(&out));

    let (code, problems, _) = verify(&mut nixferry(), &[&url, "--trusted-key", new_pk.trim()]);
    assert_eq!((code, problems), (0, BTreeSet::new()));
    let (code, problems, _) = verify(&mut nixferry(), &[&url, "--trusted-key", old_pk.trim()]);
    assert_eq!(code, 1);
    assert!(problems.iter().all(|(k, _)| k == "untrusted") && problems.len() == 3);

    let store = tmp.path().join("chroot");
    run(nix("nix")
        .args(["copy", "--from", &url, "--to"])
        .arg(&store)
        .args(["--option", "trusted-public-keys", new_pk.trim(), &top]));
    let out = nix("nix")
        .args(["copy", "--from", &url, "--to"])
        .arg(tmp.path().join("chroot-old"))
        .args(["--option", "trusted-public-keys", old_pk.trim(), &top])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the old key is trusted still");
}

/// `cache sign` and `cache stats` on a bucket: the narinfos are replaced
/// whole, and the bucket verifies with the new key.
#[test]
fn sign_and_stats_in_a_bucket() {
    if !s3::ready() {
        return;
    }
    let server = s3::S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let (old_sk, old_pk) = generate_key(tmp.path(), "bucket-old-1");
    let (new_sk, new_pk) = generate_key(tmp.path(), "bucket-new-1");
    let top = build_closure("cache-sign-s3");
    let url = server.url("cache", &format!("secret-key={}", old_sk.display()));
    let out = server
        .nixferry()
        .args(["copy", "--to", &url, &top])
        .output()
        .unwrap();
    assert_success(&out);
    let url = server.url("cache", "");
    let out = run(server.nixferry().args(["cache", "stats", "--json", &url]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["paths"].as_u64(), v["unsigned"].as_u64()),
        (Some(3), Some(0))
    );

    let out = server
        .nixferry()
        .args([
            "cache",
            "sign",
            &url,
            "--remove-signatures-by",
            "bucket-old-1",
        ])
        .arg("--secret-key-file")
        .arg(&new_sk)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(stderr(&out).contains("3 rewritten"), "{}", stderr(&out));
    let (code, problems, out) = verify(
        &mut server.nixferry(),
        &[&url, "--trusted-key", new_pk.trim()],
    );
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
    let (code, _, _) = verify(
        &mut server.nixferry(),
        &[&url, "--trusted-key", old_pk.trim()],
    );
    assert_eq!(code, 1);
}

/// An HTTP cache can be verified path by path (it cannot list its files):
/// the problems of the closures asked for, and an error without paths.
#[test]
fn an_http_cache_is_verified_by_path() {
    if !have_nix() {
        return;
    }
    let b = broken_cache("cache-http");
    let c = b.cache.path().join("c");
    let server = crate::serve::Server::start(&["--store", &format!("file://{}", c.display())]);
    let url = server.url();
    let roots = [&b.top, &b.deleted, &b.truncated];
    let mut args = vec![url.as_str(), "--trusted-key", &b.pk];
    args.extend(roots.iter().map(|r| r.as_str()));
    let (code, problems, out) = verify(&mut nixferry(), &args);
    assert_eq!(code, 1, "{}", stderr(&out));
    let expected: BTreeSet<_> = b
        .expected
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "nar-missing" | "nar-file-mismatch" | "missing-reference"
            )
        })
        .cloned()
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(problems, expected);

    let (code, _, out) = verify(&mut nixferry(), &[&url, "--trusted-key", &b.pk]);
    assert_eq!(code, 2);
    assert!(stderr(&out).contains("name the paths"), "{}", stderr(&out));
    // Nor counted.
    let out = nixferry().args(["cache", "stats", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
