//! `nixferry copy`, `closure` and `path-info` against real Nix 2.8 on real
//! closures built with `nix-build`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{
    assert_success, build_closure, build_input_addressed, generate_key, have_nix, nix,
    nix_closure_infos, nixferry, run, run_text,
};

/// The narinfos of the cache in `cache` (none if nothing was ever
/// written there).
fn narinfos(cache: &Path) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = dir
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    v.sort();
    v
}

/// Every narinfo in the cache has its NAR file.
fn assert_consistent(cache: &Path) {
    for n in narinfos(cache) {
        let text = fs::read_to_string(&n).unwrap();
        let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        assert!(
            cache.join(url).is_file(),
            "{} has no NAR {url}",
            n.display()
        );
    }
}

fn copy(args: &[&str]) -> Output {
    nixferry().arg("copy").args(args).output().unwrap()
}

/// local → file:// with every compression, signed; Nix then copies the
/// closure out of the cache into a chroot store with the key trusted, and
/// the result has the same paths, hashes and references as the source.
#[test]
fn local_to_file_cache_that_nix_accepts() {
    if !have_nix() {
        return;
    }
    let top = build_closure("copy-out");
    let want = nix_closure_infos(None, &top);
    assert_eq!(want.len(), 3);
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "copy-test-1");
    for compression in ["none", "xz", "zstd", "bzip2", "br"] {
        let cache = tmp.path().join(format!("cache-{compression}"));
        let url = format!("file://{}?compression={compression}", cache.display());
        let out = copy(&[
            "--to",
            &url,
            "--secret-key-file",
            sk.to_str().unwrap(),
            &top,
        ]);
        assert!(
            out.status.success(),
            "{compression}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(narinfos(&cache).len(), 3);
        assert_consistent(&cache);

        let chroot = tmp.path().join(format!("chroot-{compression}"));
        run(nix("nix")
            .args([
                "copy",
                "--from",
                &format!("file://{}", cache.display()),
                "--to",
            ])
            .arg(&chroot)
            .args(["--option", "trusted-public-keys", &pk])
            .arg(&top));
        assert_eq!(
            nix_closure_infos(Some(&chroot), &top),
            want,
            "{compression}"
        );

        // A second run finds everything there.
        let again = copy(&["--to", &url, "--json", &top]);
        let text = String::from_utf8_lossy(&again.stdout);
        assert!(text.contains(r#""skipped":3"#), "{text}");
    }
}

/// Caches written by `nix copy --to file://` are read, verified and copied.
#[test]
fn caches_nix_wrote_are_read_and_verified() {
    if !have_nix() {
        return;
    }
    let top = build_closure("copy-in");
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "nix-signer-1");
    for compression in ["none", "xz", "zstd"] {
        let theirs = tmp.path().join(format!("nix-{compression}"));
        let url = format!(
            "file://{}?compression={compression}&secret-key={}",
            theirs.display(),
            sk.display()
        );
        run(nix("nix").args(["copy", "--to", &url, &top]));
        let from = format!("file://{}", theirs.display());

        // Without the key trusted, every path is refused and nothing written.
        let ours = tmp.path().join(format!("ours-{compression}"));
        let to = format!("file://{}", ours.display());
        let refused = copy(&["--from", &from, "--to", &to, &top]);
        assert_eq!(refused.status.code(), Some(1));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("lacks a valid signature"), "{err}");
        assert!(narinfos(&ours).is_empty());

        let ok = copy(&["--from", &from, "--to", &to, "--trusted-key", &pk, &top]);
        assert_success(&ok);
        assert_eq!(narinfos(&ours).len(), 3);
        assert_consistent(&ours);
        let chroot = tmp.path().join(format!("chroot-{compression}"));
        run(nix("nix")
            .args(["copy", "--from", &to, "--to"])
            .arg(&chroot)
            .args(["--option", "trusted-public-keys", &pk])
            .arg(&top));
        assert_eq!(
            nix_closure_infos(Some(&chroot), &top),
            nix_closure_infos(None, &top)
        );
    }
}

/// A tampered NAR, a tampered narinfo and an unsigned path are refused
/// with a clear message, and nothing is written for them.
#[test]
fn tampered_and_unsigned_paths_are_refused() {
    if !have_nix() {
        return;
    }
    let top = build_closure("tamper");
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "tamper-1");
    let src = tmp.path().join("src");
    let src_url = format!("file://{}?compression=none", src.display());
    run(nixferry().args([
        "copy",
        "--to",
        &src_url,
        "--secret-key-file",
        sk.to_str().unwrap(),
        &top,
    ]));
    let top_hash = &Path::new(&top).file_name().unwrap().to_str().unwrap()[..32];
    let top_narinfo = src.join(format!("{top_hash}.narinfo"));
    let text = fs::read_to_string(&top_narinfo).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();

    let attempt = |name: &str| {
        let dst = tmp.path().join(name);
        let out = copy(&[
            "--from",
            &format!("file://{}", src.display()),
            "--to",
            &format!("file://{}", dst.display()),
            "--trusted-key",
            &pk,
            &top,
        ]);
        (dst, out)
    };

    // A changed byte in a file's contents: still a valid NAR, but not the
    // one the narinfo vouches for.
    let nar = src.join(&url);
    let original = fs::read(&nar).unwrap();
    let mut bad = original.clone();
    let at = bad.windows(7).position(|w| w == b"echo hi").unwrap();
    bad[at + 5] = b'H';
    fs::write(&nar, &bad).unwrap();
    let (dst, out) = attempt("dst-nar");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hash mismatch"), "{err}");
    assert!(!dst.join(format!("{top_hash}.narinfo")).exists());
    assert_consistent(&dst);
    fs::write(&nar, &original).unwrap();

    // A narinfo whose NarSize was changed: the signature no longer holds.
    let tampered = text.replace(
        &format!(
            "NarSize: {}",
            text.lines()
                .find_map(|l| l.strip_prefix("NarSize: "))
                .unwrap()
        ),
        "NarSize: 1",
    );
    fs::write(&top_narinfo, &tampered).unwrap();
    let (dst, out) = attempt("dst-narinfo");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"));
    assert!(!dst.join(format!("{top_hash}.narinfo")).exists());

    // No signature at all.
    let unsigned: String = text
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&top_narinfo, unsigned).unwrap();
    let (dst, out) = attempt("dst-unsigned");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signature"));
    assert!(!dst.join(format!("{top_hash}.narinfo")).exists());
    // --no-check-sigs takes it.
    let dst = tmp.path().join("dst-nocheck");
    let out = copy(&[
        "--from",
        &format!("file://{}", src.display()),
        "--to",
        &format!("file://{}", dst.display()),
        "--no-check-sigs",
        &top,
    ]);
    assert_success(&out);
}

/// `closure` and `path-info` agree with Nix.
#[test]
fn closure_and_path_info_match_nix() {
    if !have_nix() {
        return;
    }
    let top = build_closure("info");
    let closure = run_text(nixferry().args(["closure", "local", &top]));
    let ours: Vec<&str> = closure.lines().collect();
    let theirs = run_text(nix("nix-store").args(["-qR", &top]));
    let mut a = ours.clone();
    a.sort();
    let mut b: Vec<&str> = theirs.lines().collect();
    b.sort();
    assert_eq!(a, b);
    // References come first.
    assert_eq!(ours.last(), Some(&top.as_str()));

    let ours: serde_json::Value = serde_json::from_str(&run_text(nixferry().args([
        "path-info",
        "--json",
        "-r",
        "local",
        &top,
    ])))
    .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&run_text(nix("nix").args([
        "path-info",
        "--json",
        "-r",
        &top,
    ])))
    .unwrap();
    let by_path = |v: &serde_json::Value| {
        let mut m: Vec<serde_json::Value> = v.as_array().unwrap().clone();
        m.sort_by_key(|i| i["path"].as_str().unwrap().to_owned());
        m
    };
    for (o, t) in by_path(&ours).iter().zip(by_path(&theirs).iter()) {
        for (k, v) in t.as_object().unwrap() {
            assert_eq!(o.get(k), Some(v), "field {k} of {}", t["path"]);
        }
    }

    // The text Nix prints, flag for flag and byte for byte (the order of
    // paths, the padding, the sizes), with the store given as Nix takes
    // it or not at all.
    let other = build_input_addressed("info-other");
    for flags in [
        &[][..],
        &["-s"],
        &["-S"],
        &["-sSh"],
        &["--sigs"],
        &["-r"],
        &["-r", "-s", "-h"],
        &["--store", "local", "-rsS", "--sigs"],
    ] {
        let ours = run_text(nixferry().arg("path-info").args(flags).args([&other, &top]));
        let theirs = run_text(nix("nix").arg("path-info").args(flags).args([&other, &top]));
        assert_eq!(ours, theirs, "{flags:?}");
    }
}

/// Killing a copy at random moments and running it again ends with a
/// complete cache, and no narinfo is ever without its NAR.
#[test]
fn killed_copies_resume_and_never_leave_dangling_narinfos() {
    if !have_nix() {
        return;
    }
    use std::time::Duration;
    let top = build_closure("kill");
    let tmp = tempfile::tempdir().unwrap();
    // Enough incompressible data that xz takes a while, so kills land
    // mid-copy.
    let bulk = tmp.path().join("nixferry-kill-bulk");
    fs::create_dir(&bulk).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..24 {
        let data: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(bulk.join(format!("blob-{i}")), data).unwrap();
    }
    let bulk_path = run_text(nix("nix-store").arg("--add").arg(&bulk));
    let cache = tmp.path().join("cache");
    let url = format!("file://{}?compression=xz", cache.display());
    for delay_ms in [30u64, 150, 400, 800, 1500] {
        let mut child = nixferry()
            .args(["copy", "--to", &url, "--jobs", "2", &top, &bulk_path])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        if cache.exists() {
            assert_consistent(&cache);
        }
    }
    let out = copy(&["--to", &url, &top, &bulk_path]);
    assert_success(&out);
    assert_eq!(narinfos(&cache).len(), 4);
    assert_consistent(&cache);
}

/// With several destinations, one that cannot be opened or written fails
/// alone: the others get every path, each failure has its summary line,
/// and the exit code is 1.
#[test]
fn one_bad_destination_does_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    let src = format!("file://{}", src_dir.display());
    let file = tmp.path().join("f");
    fs::write(&file, "hello\n").unwrap();
    let path = run_text(nixferry().arg("add").arg(&file).args(["--to", &src]));
    let good = tmp.path().join("good");
    let unwritable = "file:///proc/nixferry-cannot-write-here";
    let unopenable = format!(
        "file://{}?no-such-parameter=1",
        tmp.path().join("x").display()
    );
    let out = nixferry()
        .args(["copy", "--from", &src, "--to"])
        .arg(format!("file://{}", good.display()))
        .args(["--to", unwritable, "--to", &unopenable, &path])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(narinfos(&good).len(), 1, "{err}");
    assert!(err.contains(&format!("{unwritable}: ")), "{err}");
    assert!(err.contains(&format!("{unopenable}: failed: ")), "{err}");
    assert!(
        err.contains("unknown parameter 'no-such-parameter'"),
        "{err}"
    );
    assert!(!err.contains("opening store"), "{err}");
}
