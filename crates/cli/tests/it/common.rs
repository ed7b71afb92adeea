//! Running `nixferry` and Nix, and generating test trees.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test, reading no Nix configuration but what a test
/// gives it (`NIX_CONFIG`, `--option`): none of this machine's.
pub(crate) fn nixferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixferry"));
    c.env(
        "NIX_CONF_DIR",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/no-nix-conf"),
    )
    .env("NIX_USER_CONF_FILES", "")
    .env_remove("NIX_CONFIG");
    c
}

/// Runs a command and returns its output, showing it on failure.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns its stdout as a trimmed string.
pub(crate) fn run_text(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout)
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Whether the test suite must run every test: in CI, or when
/// `NIXFERRY_REQUIRE_NIX` is set (the test command sets it). A test that
/// lacks what it needs then fails instead of skipping.
pub(crate) fn required() -> bool {
    ["CI", "NIXFERRY_REQUIRE_NIX"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Says that a test skips (the caller returns next) for want of `what`;
/// fails it instead when [`required`].
#[track_caller]
pub(crate) fn skip(what: &str) {
    assert!(
        !required(),
        "{what}: the test cannot run, and CI or NIXFERRY_REQUIRE_NIX is set"
    );
    eprintln!("note: {what}; skipping a test");
}

/// Whether Nix is usable; when it is not, the test [skips](skip).
pub(crate) fn have_nix() -> bool {
    let found = Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip("nix-store not found");
    }
    found
}

/// A Nix command with the settings the tests use (root, local store, no
/// sandbox, no substituters).
pub(crate) fn nix(program: &str) -> Command {
    let mut c = Command::new(program);
    // Nix keeps the narinfos it fetched in a disk cache keyed by the
    // cache's URL; a test server that gets a port an earlier one had must
    // not be answered from there (with another key's signatures, say).
    c.env(
        "NIX_CONFIG",
        "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n\
         narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0",
    );
    c
}

/// The repository's test vectors, `testdata/vectors`.
pub(crate) fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

/// Builds a tree with the cases that trip up NAR writers: empty files and
/// directories, executables, dangling, absolute and relative symlinks,
/// non-UTF-8 names, names whose byte order differs from other orders, and
/// deep nesting.
pub(crate) fn tricky_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    let exe = root.join("run.sh");
    fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    // Group/other execute bits alone do not make a file executable for Nix.
    let odd = root.join("group-exec");
    fs::write(&odd, b"x").unwrap();
    fs::set_permissions(&odd, fs::Permissions::from_mode(0o654)).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    symlink("/etc/hostname", root.join("absolute")).unwrap();
    symlink("../run.sh", root.join("empty-dir-link")).unwrap();
    let sorted = root.join("sorting");
    fs::create_dir(&sorted).unwrap();
    for name in ["a", "a-b", "a.b", "B", "é", "Z", "_", "a0", "~"] {
        fs::write(sorted.join(name), name.as_bytes()).unwrap();
    }
    let raw = sorted.join(OsStr::from_bytes(b"latin1-\xe9\xff"));
    fs::write(raw, b"not utf-8").unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), vec![7u8; 100_000]).unwrap();
    symlink("../".repeat(40) + "run.sh", deep.join("up")).unwrap();
}

/// Builds (with Nix) a small input-addressed path, which unlike a
/// content-addressed one needs a signature to be trusted, and returns it.
pub(crate) fn build_input_addressed(tag: &str) -> String {
    let expr = format!(
        r#"derivation {{
            name = "nixferry-test-{tag}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" "echo built for {tag} > $out" ];
        }}"#
    );
    run_text(nix("nix-build").args(["--no-out-link", "--expr", &expr]))
}

/// Builds (with Nix) a small closure of input-addressed paths and returns
/// its top: `top` refers to `mid` and `base`, `mid` to `base` and to itself;
/// each holds some binary content. `tag` keeps closures of different tests
/// apart.
pub(crate) fn build_closure(tag: &str) -> String {
    build_closure_with(tag, &[])
}

/// [`build_closure`] with more arguments for `nix-build`.
pub(crate) fn build_closure_with(tag: &str, args: &[&str]) -> String {
    let expr = format!(
        r#"let
          mk = name: script: derivation {{
            name = "nixferry-{tag}-${{name}}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
          }};
          base = mk "base" "echo base {tag} > $out";
          mid = mk "mid" "mkdir $out; echo ${{base}} > $out/ref; echo $out > $out/self; i=0; while [ $i -lt 64 ]; do printf '\\000\\001\\377 %s\\n' $i >> $out/bin; i=$((i+1)); done";
        in mk "top" "mkdir -p $out/bin; echo ${{mid}} ${{base}} > $out/refs; printf '#!/bin/sh\\necho hi\\n' > $out/bin/hi; chmod +x $out/bin/hi""#
    );
    run_text(
        nix("nix-build")
            .args(["--no-out-link", "--expr", &expr])
            .args(args),
    )
}

/// `nix path-info --json -r` of `path` in `store` (None: the local store),
/// as (path, narHash, narSize, references) tuples, sorted.
pub(crate) fn nix_closure_infos(
    store: Option<&Path>,
    path: &str,
) -> Vec<(String, String, u64, Vec<String>)> {
    let mut cmd = nix("nix");
    cmd.args(["path-info", "--json", "-r"]);
    if let Some(s) = store {
        cmd.arg("--store").arg(s);
    }
    let out = run(cmd.arg(path)).stdout;
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut infos: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let refs = i["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            (
                i["path"].as_str().unwrap().to_owned(),
                i["narHash"].as_str().unwrap().to_owned(),
                i["narSize"].as_u64().unwrap(),
                refs,
            )
        })
        .collect();
    infos.sort();
    infos
}

/// Generates a key pair with `nixferry key generate` in `dir`; returns the
/// secret key file and the public key.
pub(crate) fn generate_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let sk = dir.join(format!("{name}.secret"));
    let pk = dir.join(format!("{name}.public"));
    run(nixferry()
        .args(["key", "generate", name, "--secret-file"])
        .arg(&sk)
        .arg("--public-file")
        .arg(&pk));
    (sk, fs::read_to_string(pk).unwrap())
}

/// Packs `src` with `nixferry add` into the binary cache `cache_url`,
/// signed with the secret key file `sk`; returns the store path.
pub(crate) fn add_signed(src: &Path, cache_url: &str, sk: &Path) -> String {
    run_text(
        nixferry()
            .arg("add")
            .arg(src)
            .args(["--to", cache_url])
            .arg("--secret-key-file")
            .arg(sk),
    )
}

/// Writes the netrc file `path`, giving 127.0.0.1 the login `nix` and
/// `password` (a cache's token); returns `path`.
pub(crate) fn write_netrc(path: &Path, password: &str) -> PathBuf {
    fs::write(
        path,
        format!("machine 127.0.0.1 login nix password {password}\n"),
    )
    .unwrap();
    path.to_owned()
}

/// A command's stderr as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// The closure of `top` in the chroot store `store` is exactly the one in
/// this machine's store, hashes, sizes and references alike.
pub(crate) fn assert_same_closure(store: &Path, top: &str) {
    assert_eq!(
        nix_closure_infos(Some(store), top),
        nix_closure_infos(None, top),
        "{}",
        store.display()
    );
}
