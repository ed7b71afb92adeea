//! The CLI on the test vectors: outputs, error messages and exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use crate::common::{assert_success, nixferry, run, run_text, vectors};

fn vector(rel: &str) -> std::path::PathBuf {
    vectors().join(rel)
}

#[test]
fn nar_ls_json_is_the_listing_nix_wrote() {
    let out = run_text(
        nixferry()
            .args(["nar", "ls", "--json"])
            .arg(vector("nar/tree.nar")),
    );
    let want = fs::read_to_string(vector("nar/tree.ls.json")).unwrap();
    assert_eq!(out, want.trim_end());
}

#[test]
fn nar_ls_lists_every_entry() {
    let out = run_text(nixferry().args(["nar", "ls"]).arg(vector("nar/tree.nar")));
    for name in [
        "dir/sub/deep.txt",
        "run.sh",
        "link -> hello.txt",
        "dir/empty",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
}

#[test]
fn nar_cat_prints_one_file() {
    let out = run(nixferry()
        .args(["nar", "cat"])
        .arg(vector("nar/tree.nar"))
        .arg("dir/sub/deep.txt"));
    assert_eq!(out.stdout, b"nested");
    let missing = nixferry()
        .args(["nar", "cat"])
        .arg(vector("nar/tree.nar"))
        .arg("nope")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("nixferry: "));
}

#[test]
fn invalid_nar_error_names_offset_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = nixferry()
        .args(["nar", "restore"])
        .arg(vector("nar/invalid/unsorted.nar"))
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("nixferry: "), "{err}");
    assert!(err.contains("byte"), "no offset in: {err}");
    assert!(!tmp.path().join("x").exists(), "restore left files behind");
}

#[test]
fn narinfo_verify_exit_codes() {
    let narinfo = vector("narinfo/signed-xz-jgs69zx98r4fpm73d82y357pps9llcic.narinfo");
    let key = fs::read_to_string(vector("keys/nixspec-test-1.public")).unwrap();
    let ok = nixferry()
        .args(["narinfo", "verify", "--trusted-key", &key])
        .arg(&narinfo)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let other = fs::read_to_string(vector("keys/pyspec-1.public")).unwrap();
    let bad = nixferry()
        .args(["narinfo", "verify", "--trusted-key", &other])
        .arg(&narinfo)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("NOT verified"));

    let tmp = tempfile::tempdir().unwrap();
    let corrupt = tmp.path().join("x.narinfo");
    fs::write(&corrupt, "StorePath: nonsense\n").unwrap();
    let err = nixferry()
        .args(["narinfo", "verify", "--trusted-key", &key])
        .arg(&corrupt)
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(2));
}

#[test]
fn narinfo_sign_reproduces_the_vector_signature() {
    // pyspec-1 has a fixed seed; ed25519 is deterministic.
    let unsigned = fs::read_to_string(vector(
        "narinfo/signed-xz-jgs69zx98r4fpm73d82y357pps9llcic.narinfo",
    ))
    .unwrap();
    let unsigned: String = unsigned
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("u.narinfo");
    fs::write(&f, unsigned).unwrap();
    let signed = run_text(
        nixferry()
            .args(["narinfo", "sign", "--secret-key-file"])
            .arg(vector("keys/pyspec-1.secret"))
            .arg(&f),
    );
    let want = fs::read_to_string(vector(
        "narinfo/pyspec-signed-jgs69zx98r4fpm73d82y357pps9llcic.narinfo",
    ))
    .unwrap();
    let want_sig = want.lines().find(|l| l.starts_with("Sig: ")).unwrap();
    assert!(signed.lines().any(|l| l == want_sig), "{signed}");
}

#[test]
fn narinfo_sign_in_place_in_the_current_directory_and_not_on_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(vector(
        "narinfo/signed-xz-jgs69zx98r4fpm73d82y357pps9llcic.narinfo",
    ))
    .unwrap();
    fs::write(tmp.path().join("x.narinfo"), &text).unwrap();
    let key = vector("keys/pyspec-1.secret");
    // A file named without a directory: signed, exit 0.
    let out = run(nixferry()
        .current_dir(tmp.path())
        .args(["narinfo", "sign", "-i", "x.narinfo", "--secret-key-file"])
        .arg(&key));
    assert_success(&out);
    let signed = fs::read_to_string(tmp.path().join("x.narinfo")).unwrap();
    assert!(signed.contains("Sig: pyspec-1:"), "{signed}");
    // `-i -` is refused before anything is read or written.
    let out = nixferry()
        .current_dir(tmp.path())
        .args(["narinfo", "sign", "-i", "-", "--secret-key-file"])
        .arg(&key)
        .stdin(fs::File::open(tmp.path().join("x.narinfo")).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input"));
    assert!(
        !tmp.path().join("-").exists(),
        "a file named '-' was written"
    );
}

#[test]
fn a_secret_key_given_as_trusted_key_is_named_not_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = fs::read_to_string(vector("keys/pyspec-1.secret")).unwrap();
    let secret = secret.trim();
    let out = nixferry()
        .args(["copy", "--from"])
        .arg(format!("file://{}", tmp.path().join("none").display()))
        .arg("--to")
        .arg(format!("file://{}", tmp.path().join("dst").display()))
        .args(["--trusted-key", secret])
        .arg("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let data = secret.split_once(':').unwrap().1;
    assert!(!err.contains(data), "the secret key was printed: {err}");
    assert!(
        !err.contains(&data[..16]),
        "part of the secret key was printed: {err}"
    );
    assert!(err.contains("'pyspec-1' is a secret key"), "{err}");
}

#[test]
fn key_generate_writes_nix_key_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sk = tmp.path().join("k.secret");
    let pk = tmp.path().join("k.public");
    run(nixferry()
        .args(["key", "generate", "host-1", "--secret-file"])
        .arg(&sk)
        .arg("--public-file")
        .arg(&pk));
    let secret = fs::read_to_string(&sk).unwrap();
    let public = fs::read_to_string(&pk).unwrap();
    assert!(secret.starts_with("host-1:") && !secret.ends_with('\n'));
    assert!(public.starts_with("host-1:") && !public.ends_with('\n'));
    // 64 bytes of base64 is 88 characters; 32 bytes is 44.
    assert_eq!(secret.len(), "host-1:".len() + 88);
    assert_eq!(public.len(), "host-1:".len() + 44);
    assert_eq!(
        fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        run_text(nixferry().args(["key", "public"]).arg(&sk)),
        public
    );
    // Never overwrites an existing key.
    let again = nixferry()
        .args(["key", "generate", "host-1", "--secret-file"])
        .arg(&sk)
        .arg("--public-file")
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn broken_pipe_is_not_an_error() {
    use std::process::Stdio;
    let mut child = nixferry()
        .args(["nar", "dump"])
        .arg(vectors())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    assert!(out.stderr.is_empty());
}

#[test]
fn copy_takes_trusted_keys_from_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = format!("file://{}", vector("binary-cache/signed-xz").display());
    let path = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
    let copy = |dst: &str, key: &str| {
        nixferry()
            .args(["copy", "--from", &src, "--to"])
            .arg(format!("file://{}", tmp.path().join(dst).display()))
            .arg("--trusted-key-file")
            .arg(vector(key))
            .arg(path)
            .output()
            .unwrap()
    };
    // The key that signed the cache: copied.
    assert_success(&copy("good", "keys/nixspec-test-1.public"));
    // Another key: refused, nothing copied, and what to do next said.
    let out = copy("bad", "keys/pyspec-1.public");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hint: trust the key") && err.contains("--no-check-sigs"),
        "{err}"
    );
    assert!(!tmp
        .path()
        .join("bad/jgs69zx98r4fpm73d82y357pps9llcic.narinfo")
        .exists());
}

#[test]
fn copy_without_paths_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    for stdin in [false, true] {
        let mut cmd = nixferry();
        cmd.args(["copy", "--to"])
            .arg(format!("file://{}", dst.display()))
            .stdin(std::process::Stdio::null());
        if stdin {
            cmd.arg("--stdin");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--stdin: {stdin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no paths to copy"), "{err}");
    }
    assert!(!dst.exists(), "the destination was created");
}

#[test]
fn sizes_are_for_people_and_summaries_stay_off_stdout() {
    let cache = format!("file://{}", vector("binary-cache/signed-xz").display());
    let drv = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
    let hi = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
    let out = run(nixferry().args(["closure", &cache, drv, "--size"]));
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, [hi, drv], "stdout holds the paths alone");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("2 paths, "), "{stderr}");
    assert!(stderr.contains(" B ("), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let out = run(nixferry()
        .args(["copy", "--no-check-sigs", "--from", &cache, "--to"])
        .arg(format!("file://{}", tmp.path().join("dst").display()))
        .arg(hi));
    assert_success(&out);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("copied 1 path ("), "{stderr}");
    assert!(!stderr.contains("MiB"), "{stderr}");
}

/// Reading from a directory that is not a cache (or not there) writes
/// nothing into it; the first path written lays the cache out.
#[test]
fn reading_a_directory_never_writes_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not-a-cache");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "mine\n").unwrap();
    let absent = format!("/nix/store/{}-x", "a".repeat(32));
    for url in [
        format!("file://{}", dir.display()),
        format!("file://{}", tmp.path().join("missing").display()),
    ] {
        let out = nixferry()
            .args(["path-info", &url, &absent])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let out = nixferry()
            .args(["copy", "--from", &url, "--to"])
            .arg(format!("file://{}", tmp.path().join("dest").display()))
            .arg(&absent)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}");
    }
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["notes.txt"]);
    assert!(!tmp.path().join("missing").exists());
    assert!(!tmp.path().join("dest").exists());

    // Writing a path makes the layout Nix gives a cache; without a key,
    // `add` says the narinfo is unsigned.
    let src = tmp.path().join("file");
    fs::write(&src, "hello\n").unwrap();
    let out = run(nixferry()
        .arg("add")
        .arg(&src)
        .arg("--to")
        .arg(format!("file://{}", dir.display())));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("unsigned") && said.contains("--secret-key-file"),
        "{said}"
    );
    for made in ["nix-cache-info", "nar", "log", "realisations"] {
        assert!(dir.join(made).exists(), "{made}");
    }
    // --json prints what `nix path-info --json` would.
    let out = run(nixferry()
        .arg("add")
        .arg(&src)
        .arg("--json")
        .arg("--to")
        .arg(format!("file://{}", dir.display())));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["narSize"], 120, "{v}");
    assert!(v[0]["path"].as_str().unwrap().ends_with("-file"), "{v}");
    assert!(v[0]["ca"].as_str().unwrap().starts_with("fixed:"), "{v}");
}

/// Usage errors read as every other error, `nixferry: <what>: <why>`,
/// followed by the usage, with exit code 2; help still prints as help.
#[test]
fn usage_errors_follow_the_error_form() {
    let out = nixferry().args(["copy", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("nixferry: invalid arguments: unexpected argument '--bogus' found"),
        "{err}"
    );
    assert!(err.contains("Usage: nixferry copy"), "{err}");
    let out = nixferry().args(["copy", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: nixferry copy"));
}

/// Refusing to overwrite says what to do: `--force` for a restore; a key
/// file is never overwritten.
#[test]
fn refusals_to_overwrite_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::write(&src, "hi\n").unwrap();
    let nar = tmp.path().join("x.nar");
    run(nixferry()
        .args(["nar", "dump"])
        .arg(&src)
        .arg("-o")
        .arg(&nar));
    let out = nixferry()
        .args(["nar", "restore"])
        .arg(&nar)
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists; give --force"), "{err}");
    run(nixferry()
        .args(["nar", "restore", "--force"])
        .arg(&nar)
        .arg(&src));

    let out = nixferry()
        .args(["key", "generate", "k-1", "--secret-file"])
        .arg(&nar)
        .arg("--public-file")
        .arg(tmp.path().join("pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never overwritten"), "{err}");
    assert!(!tmp.path().join("pub").exists());
}
