//! Commands follow Nix's configuration (`nix.conf`, `NIX_CONFIG`,
//! `--option`) for the settings nixferry uses, and flags win over it.

use std::fs;
use std::path::Path;

use crate::common::{add_signed, assert_success, generate_key, nixferry, stderr, write_netrc};
use crate::serve::writable_server;

fn narinfo_of(cache: &Path, path: &str) -> String {
    let hash = &Path::new(path).file_name().unwrap().to_str().unwrap()[..32];
    fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap()
}

#[test]
fn copies_trust_sign_and_log_in_as_nix_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "conf-1");
    let (other_sk, other_pk) = generate_key(tmp.path(), "other-1");
    let (pk, other_pk) = (pk.trim().to_owned(), other_pk.trim().to_owned());
    let tree = tmp.path().join("hello.txt");
    fs::write(&tree, "hello from a configured cache\n").unwrap();
    let src = format!("file://{}/src", tmp.path().display());
    let path = add_signed(&tree, &src, &sk);
    // Without its content address (which the signature does not cover),
    // the path is accepted on its signature alone.
    let src_dir = tmp.path().join("src");
    let text: String = narinfo_of(&src_dir, &path)
        .lines()
        .filter(|l| !l.starts_with("CA: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let hash = &Path::new(&path).file_name().unwrap().to_str().unwrap()[..32];
    fs::write(src_dir.join(format!("{hash}.narinfo")), text).unwrap();
    let dest = |name: &str| tmp.path().join(name);
    let copy_to = |name: &str| {
        let mut c = nixferry();
        c.args(["copy", "--from", &src, "--to"])
            .arg(format!("file://{}", dest(name).display()));
        c
    };

    // Nix's default trusts only cache.nixos.org-1.
    let out = copy_to("d1").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--trusted-key"), "{}", stderr(&out));

    // trusted-public-keys from NIX_CONFIG, or --option (before or after
    // the subcommand), is trusted.
    let conf = format!("trusted-public-keys = {pk}");
    assert_success(
        &copy_to("d2")
            .env("NIX_CONFIG", &conf)
            .arg(&path)
            .output()
            .unwrap(),
    );
    assert_success(
        &copy_to("d3")
            .args(["--option", "trusted-public-keys", &pk])
            .arg(&path)
            .output()
            .unwrap(),
    );
    let mut c = nixferry();
    c.args([
        "--option",
        "extra-trusted-public-keys",
        &pk,
        "copy",
        "--from",
        &src,
        "--to",
    ])
    .arg(format!("file://{}", dest("d4").display()));
    assert_success(&c.arg(&path).output().unwrap());

    // A flag wins over the configuration.
    let out = copy_to("d5")
        .env("NIX_CONFIG", &conf)
        .args(["--trusted-key", &other_pk])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // secret-key-files of nix.conf signs what is pushed; --secret-key-file
    // replaces it.
    let conf_dir = tmp.path().join("etc-nix");
    fs::create_dir(&conf_dir).unwrap();
    fs::write(
        conf_dir.join("nix.conf"),
        format!(
            "trusted-public-keys = {pk}\nsecret-key-files = {}\n",
            other_sk.display()
        ),
    )
    .unwrap();
    assert_success(
        &copy_to("d6")
            .env("NIX_CONF_DIR", &conf_dir)
            .arg(&path)
            .output()
            .unwrap(),
    );
    let signed = narinfo_of(&dest("d6"), &path);
    assert!(signed.contains("Sig: other-1:"), "{signed}");
    assert_success(
        &copy_to("d7")
            .env("NIX_CONF_DIR", &conf_dir)
            .arg("--secret-key-file")
            .arg(&sk)
            .arg(&path)
            .output()
            .unwrap(),
    );
    assert!(!narinfo_of(&dest("d7"), &path).contains("Sig: other-1:"));

    // A secret key file that cannot be read is named with where it was set.
    let out = copy_to("d8")
        .env("NIX_CONFIG", "secret-key-files = /nonexistent/key")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("secret-key-files (set in NIX_CONFIG:1)"),
        "{}",
        stderr(&out)
    );

    // A configuration that does not parse is an error, said as such.
    let out = nixferry()
        .args(["--option", "connect-timeout", "soon", "config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--option connect-timeout"),
        "{}",
        stderr(&out)
    );

    // An HTTP cache that needs credentials gets them from Nix's netrc
    // file ($NIX_CONF_DIR/netrc unless netrc-file says otherwise).
    let (server, uploaded) = writable_server(tmp.path(), "push-token");
    let push = |conf_dir: &Path| {
        nixferry()
            .env("NIX_CONF_DIR", conf_dir)
            .env("HOME", tmp.path())
            .env_remove("NETRC")
            .args(["copy", "--from", &src, "--to", &server.url()])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = push(&conf_dir);
    assert!(
        !out.status.success(),
        "an upload without credentials worked"
    );
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    write_netrc(&conf_dir.join("netrc"), "push-token");
    assert_success(&push(&conf_dir));
    assert!(narinfo_of(&uploaded, &path).contains("Sig: other-1:"));
}
