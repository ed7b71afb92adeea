//! The CLI against real Nix 2.8 on the same inputs: NAR bytes, hashes,
//! store paths, keys and signatures must agree.

use std::fs;
use std::path::Path;

use crate::common::{
    assert_success, build_input_addressed, generate_key, have_nix, nix, nixferry, run, run_text,
    tricky_tree,
};

fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("nixferry-tricky");
    tricky_tree(&t);
    (tmp, t)
}

#[test]
fn nar_dump_equals_nix_store_dump() {
    if !have_nix() {
        return;
    }
    let (tmp, t) = tree();
    let ours = tmp.path().join("ours.nar");
    run(nixferry()
        .args(["nar", "dump"])
        .arg(&t)
        .arg("-o")
        .arg(&ours));
    let theirs = run(nix("nix-store").arg("--dump").arg(&t)).stdout;
    assert!(
        fs::read(&ours).unwrap() == theirs,
        "NAR differs from nix-store --dump"
    );
    // To stdout as well, for a single file and a top-level symlink.
    for p in [t.join("run.sh"), t.join("dangling"), t.join("empty")] {
        let ours = run(nixferry().args(["nar", "dump"]).arg(&p)).stdout;
        let theirs = run(nix("nix-store").arg("--dump").arg(&p)).stdout;
        assert!(ours == theirs, "{}", p.display());
    }
}

#[test]
fn nar_hash_equals_nix_hash() {
    if !have_nix() {
        return;
    }
    let (_tmp, t) = tree();
    let ours = run_text(nixferry().args(["nar", "hash"]).arg(&t));
    let theirs = run_text(nix("nix").args(["hash", "path"]).arg(&t));
    assert_eq!(ours, theirs);
    let ours = run_text(nixferry().args(["nar", "hash", "--base32"]).arg(&t));
    let theirs = run_text(
        nix("nix-hash")
            .args(["--type", "sha256", "--base32"])
            .arg(&t),
    );
    assert_eq!(ours, theirs);
    let ours = run_text(
        nixferry()
            .args(["nar", "hash", "--format", "base16"])
            .arg(&t),
    );
    let theirs = run_text(nix("nix-hash").args(["--type", "sha256"]).arg(&t));
    assert_eq!(ours, theirs);
    // `nix hash path`'s own flags.
    for flag in ["--base16", "--base32", "--base64", "--sri"] {
        let ours = run_text(nixferry().args(["nar", "hash", flag]).arg(&t));
        let theirs = run_text(nix("nix").args(["hash", "path", flag]).arg(&t));
        assert_eq!(ours, theirs, "{flag}");
    }
}

#[test]
fn store_path_add_equals_nix_store_add() {
    if !have_nix() {
        return;
    }
    let (_tmp, t) = tree();
    for p in [t.clone(), t.join("run.sh"), t.join("empty-dir")] {
        let ours = run_text(nixferry().args(["store-path", "add"]).arg(&p));
        let theirs = run_text(nix("nix-store").arg("--add").arg(&p));
        assert_eq!(ours, theirs, "{}", p.display());
    }
    let ours = run_text(
        nixferry()
            .args(["store-path", "add", "--name", "renamed"])
            .arg(t.join("run.sh")),
    );
    assert!(ours.ends_with("-renamed"), "{ours}");
}

#[test]
fn restore_then_dump_gives_the_same_nar() {
    if !have_nix() {
        return;
    }
    let (tmp, t) = tree();
    let nar = tmp.path().join("t.nar");
    run(nixferry().args(["nar", "dump"]).arg(&t).arg("-o").arg(&nar));
    let out = tmp.path().join("restored");
    run(nixferry().args(["nar", "restore"]).arg(&nar).arg(&out));
    let again = run(nixferry().args(["nar", "dump"]).arg(&out)).stdout;
    assert!(
        again == fs::read(&nar).unwrap(),
        "restored tree dumps differently"
    );
    // Nix dumps our restored tree the same way too.
    let by_nix = run(nix("nix-store").arg("--dump").arg(&out)).stdout;
    assert!(by_nix == again);
    // Restoring over an existing target needs --force.
    let refused = nixferry()
        .args(["nar", "restore"])
        .arg(&nar)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    run(nixferry()
        .args(["nar", "restore", "--force"])
        .arg(&nar)
        .arg(&out));
}

/// Runs `nix store verify --sigs-needed 1` on `path` in the store at `url`,
/// trusting only `key`.
fn nix_store_verify(url: &str, key: &str, path: &str) -> std::process::Output {
    nix("nix")
        .args(["store", "verify", "--sigs-needed", "1", "--store", url])
        .args(["--option", "trusted-public-keys", key])
        .arg(path)
        .output()
        .unwrap()
}

/// Nix's `nix store verify` accepts what `nixferry add` signed, checks its
/// contents, and `nix copy` installs it into another store.
#[test]
fn nix_accepts_what_nixferry_adds_and_signs() {
    if !have_nix() {
        return;
    }
    let (tmp, t) = tree();
    let (sk, pk) = generate_key(tmp.path(), "nixferry-test-1");
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", cache.display());
    let path = run_text(
        nixferry()
            .arg("add")
            .arg(&t)
            .args(["--to", &url, "--secret-key-file"])
            .arg(&sk),
    );
    assert_eq!(path, run_text(nix("nix-store").arg("--add").arg(&t)));

    let verify = |key: &str| nix_store_verify(&url, key, &path);
    let ok = verify(&pk);
    assert_success(&ok);
    // The path is content-addressed, so Nix trusts it even without a
    // trusted signature (docs/formats.md §4.4); the signature is checked by nixferry.
    let (_, other) = generate_key(tmp.path(), "other-1");
    assert!(verify(&other).status.success());
    let hash_part = &Path::new(&path).file_name().unwrap().to_str().unwrap()[..32];
    run(nixferry()
        .args(["narinfo", "verify", "--trusted-key", &pk])
        .arg(cache.join(format!("{hash_part}.narinfo"))));

    let chroot = tmp.path().join("chroot");
    run(nix("nix")
        .args(["copy", "--from", &url, "--to"])
        .arg(&chroot)
        .args(["--option", "trusted-public-keys", &pk])
        .arg(&path));
    let info = run_text(
        nix("nix")
            .args(["path-info", "--json", "--store"])
            .arg(&chroot)
            .arg(&path),
    );
    let hash = run_text(nixferry().args(["nar", "hash"]).arg(&t));
    assert!(info.contains(&hash), "{info}");
}

/// Keys work both ways: a narinfo written by `nix copy` and signed by
/// nixferry verifies in Nix, and Nix signing with a nixferry key verifies
/// in nixferry; a Nix-made key loads in nixferry.
#[test]
fn keys_interoperate_with_nix() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Input-addressed, so Nix requires a valid signature.
    let path = build_input_addressed("keys");
    let (sk, pk) = generate_key(tmp.path(), "nixferry-test-2");

    // Nix writes, nixferry signs, Nix verifies.
    let cache = tmp.path().join("unsigned");
    let url = format!("file://{}?compression=none", cache.display());
    run(nix("nix").args(["copy", "--to", &url]).arg(&path));
    let hash_part = &Path::new(&path).file_name().unwrap().to_str().unwrap()[..32];
    let narinfo = cache.join(format!("{hash_part}.narinfo"));
    run(nixferry()
        .args(["narinfo", "sign", "-i", "--secret-key-file"])
        .arg(&sk)
        .arg(&narinfo));
    let cache_url = format!("file://{}", cache.display());
    let verify = |key: &str| nix_store_verify(&cache_url, key, &path);
    let ok = verify(&pk);
    assert_success(&ok);
    let (_, other) = generate_key(tmp.path(), "other-2");
    let refused = verify(&other);
    assert!(
        !refused.status.success(),
        "Nix accepted a path signed by an untrusted key"
    );

    // Nix signs with our key, nixferry verifies.
    let signed = tmp.path().join("signed");
    let url = format!("file://{}?secret-key={}", signed.display(), sk.display());
    run(nix("nix").args(["copy", "--to", &url]).arg(&path));
    let narinfo = signed.join(format!("{hash_part}.narinfo"));
    run(nixferry()
        .args(["narinfo", "verify", "--trusted-key", &pk])
        .arg(&narinfo));

    // A key Nix generated loads, and its public half matches Nix's.
    let nsk = tmp.path().join("nix.secret");
    let npk = tmp.path().join("nix.public");
    run(nix("nix-store")
        .args(["--generate-binary-cache-key", "nix-made-1"])
        .arg(&nsk)
        .arg(&npk));
    let public = run_text(nixferry().args(["key", "public"]).arg(&nsk));
    assert_eq!(public, fs::read_to_string(&npk).unwrap());
}

/// `nixferry config --json` gives the values `nix show-config --json`
/// gives for the same files and variables: the system file with includes
/// and old names, the user's files (from `NIX_USER_CONF_FILES`, then from
/// the XDG directories), `NIX_CONFIG` with `extra-` settings.
#[test]
fn config_reads_what_nix_reads() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let conf = d.join("etc");
    fs::create_dir_all(&conf).unwrap();
    fs::write(
        conf.join("nix.conf"),
        "# the system's\nbinary-caches = https://a.example/   https://b.example/ # old name\n\
         include more.conf\n!include missing.conf\nconnect-timeout = 7\n\
         netrc-file = /srv//x/../netrc\ntrusted-substituters = https://t.example/\n",
    )
    .unwrap();
    fs::write(
        conf.join("more.conf"),
        "trusted-public-keys = a.example-1:AAAA\nsecret-key-files = /keys/system\n",
    )
    .unwrap();
    fs::write(d.join("user1"), "extra-secret-key-files = /keys/one\n").unwrap();
    fs::write(
        d.join("user2"),
        "secret-key-files = /keys/two\nconnect-timeout = 3\n",
    )
    .unwrap();
    for dir in ["home/nix", "xdg1/nix", "xdg2/nix"] {
        fs::create_dir_all(d.join(dir)).unwrap();
    }
    fs::write(
        d.join("home/nix/nix.conf"),
        "extra-trusted-public-keys = home-1:HHHH\n",
    )
    .unwrap();
    fs::write(
        d.join("xdg1/nix/nix.conf"),
        "trusted-public-keys = xdg1-1:XXXX\n",
    )
    .unwrap();
    fs::write(d.join("xdg2/nix/nix.conf"), "connect-timeout = 11\n").unwrap();
    let nix_config = "experimental-features = nix-command\n\
                      extra-substituters = https://c.example/\n\
                      extra-trusted-public-keys = env-1:EEEE";
    let names = [
        "connect-timeout",
        "netrc-file",
        "secret-key-files",
        "substituters",
        "trusted-public-keys",
        "trusted-substituters",
    ];
    let user_files = format!(
        "{}:{}",
        d.join("user1").display(),
        d.join("user2").display()
    );
    for user in [Some(user_files.as_str()), None] {
        let env = |c: &mut std::process::Command| {
            c.env("NIX_CONF_DIR", &conf)
                .env("NIX_CONFIG", nix_config)
                .env("XDG_CONFIG_HOME", d.join("home"))
                .env(
                    "XDG_CONFIG_DIRS",
                    format!("{}:{}", d.join("xdg1").display(), d.join("xdg2").display()),
                );
            match user {
                Some(files) => c.env("NIX_USER_CONF_FILES", files),
                None => c.env_remove("NIX_USER_CONF_FILES"),
            };
        };
        let mut theirs = nix("nix");
        theirs.args(["show-config", "--json"]);
        env(&mut theirs);
        let theirs: serde_json::Value = serde_json::from_slice(&run(&mut theirs).stdout).unwrap();
        let mut ours = nixferry();
        ours.args(["config", "--json"]);
        env(&mut ours);
        let ours: serde_json::Value = serde_json::from_slice(&run(&mut ours).stdout).unwrap();
        for name in names {
            assert_eq!(
                ours[name]["value"], theirs[name]["value"],
                "{name}, user files {user:?}"
            );
        }
    }
}
