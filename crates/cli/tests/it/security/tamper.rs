//! Tampered sources are refused at every entry point.
//!
//! The tampering: a signed path's NAR file in a binary cache is replaced by
//! another valid NAR file (compressed the same way), and the narinfo's
//! `FileHash` and `FileSize`, which its signature does not cover, are
//! edited to match. The signature still verifies; only the content gives
//! it away. Every way into a store must notice, fail that path with a NAR
//! mismatch, and leave no narinfo of it behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{add_signed, generate_key, have_nix, nix, nixferry, run, stderr};
use crate::s3::{self, S3};
use crate::serve::{hash_part, narinfo_field, request, writable_server, Server};

/// A signed `file://` cache (zstd) with one path whose NAR file was swapped.
struct Tampered {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The cache directory.
    cache: PathBuf,
    /// The public key its narinfos are signed with.
    public_key: String,
    /// The path whose NAR file holds another path's NAR.
    path: String,
    /// The other path's NAR file (named for its own hash) and narinfo.
    other_nar: (String, Vec<u8>),
    other_narinfo: String,
}

impl Tampered {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let (sk, public_key) = generate_key(&dir, "tamper-test-1");
        let cache = dir.join("src");
        let add = |name: &str, content: &[u8], to: &Path| {
            let tree = dir.join(name);
            fs::create_dir_all(&tree).unwrap();
            fs::write(tree.join("file"), content).unwrap();
            add_signed(
                &tree,
                &format!("file://{}?compression=zstd", to.display()),
                &sk,
            )
        };
        // Of the same size: only the hash can tell them apart.
        let path = add("good", b"what was signed\n", &cache);
        let other_cache = dir.join("other");
        let other = add("evil", b"what was forged\n", &other_cache);

        let narinfo_file = |cache: &Path, p: &str| cache.join(format!("{}.narinfo", hash_part(p)));
        let other_narinfo = fs::read_to_string(narinfo_file(&other_cache, &other)).unwrap();
        let other_url = narinfo_field(&other_narinfo, "URL");
        let other_bytes = fs::read(other_cache.join(&other_url)).unwrap();

        // The good path's NAR file now holds the other NAR; its narinfo
        // keeps its URL and signature, with FileHash and FileSize edited.
        let narinfo = fs::read_to_string(narinfo_file(&cache, &path)).unwrap();
        let url = narinfo_field(&narinfo, "URL");
        fs::write(cache.join(&url), &other_bytes).unwrap();
        let edited: String = narinfo
            .lines()
            .map(|l| {
                if l.starts_with("FileHash: ") {
                    format!("FileHash: {}\n", narinfo_field(&other_narinfo, "FileHash"))
                } else if l.starts_with("FileSize: ") {
                    format!("FileSize: {}\n", narinfo_field(&other_narinfo, "FileSize"))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_ne!(edited, narinfo);
        fs::write(narinfo_file(&cache, &path), edited).unwrap();

        // Still validly signed: the signature does not cover the file.
        run(nixferry()
            .args(["narinfo", "verify", "--trusted-key", &public_key])
            .arg(narinfo_file(&cache, &path)));
        Self {
            _tmp: tmp,
            dir,
            cache,
            public_key,
            path,
            other_nar: (other_url, other_bytes),
            other_narinfo,
        }
    }

    fn src_url(&self) -> String {
        format!("file://{}", self.cache.display())
    }

    /// `nixferry copy` of the tampered path from `from` to `to`.
    fn copy(&self, from: &str, to: &str) -> Output {
        nixferry()
            .args(["copy", "--from", from, "--to", to])
            .args(["--trusted-key", &self.public_key, &self.path])
            .output()
            .unwrap()
    }
}

/// The copy failed for the tampered path, saying its NAR does not match.
fn assert_refused(out: &Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not match its path info") && err.contains("hash mismatch"),
        "{err}"
    );
}

/// No narinfo (and no temporary file) in the cache directory `dir`.
fn assert_no_narinfo(dir: &Path) {
    let names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return,
    };
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".narinfo") || n.contains(".tmp.")),
        "{names:?}"
    );
    if let Ok(nar) = fs::read_dir(dir.join("nar")) {
        let tmp: Vec<_> = nar
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(tmp.is_empty(), "{tmp:?}");
    }
}

#[test]
fn file_to_file_passthrough_and_recompression() {
    let t = Tampered::new();
    // Same compression: the file would move as it is.
    for params in ["compression=zstd", "compression=xz", "compression=none"] {
        let dst = t.dir.join(format!("dst-{params}"));
        let out = t.copy(&t.src_url(), &format!("file://{}?{params}", dst.display()));
        assert_refused(&out);
        assert_no_narinfo(&dst);
    }
    // With listings too (the listing comes from the same check).
    let dst = t.dir.join("dst-ls");
    let out = t.copy(
        &t.src_url(),
        &format!(
            "file://{}?compression=zstd&write-nar-listing=true",
            dst.display()
        ),
    );
    assert_refused(&out);
    assert_no_narinfo(&dst);
}

#[test]
fn http_source_and_http_destination() {
    let t = Tampered::new();
    // The tampered cache served over HTTP.
    let server = Server::start(&["--store", &t.src_url()]);
    let dst = t.dir.join("from-http");
    let out = t.copy(
        &server.url(),
        &format!("file://{}?compression=zstd", dst.display()),
    );
    assert_refused(&out);
    assert_no_narinfo(&dst);

    // Uploads with PUT to an HTTP cache: refused before anything is sent.
    let (upload, dest) = writable_server(&t.dir, "t0ken");
    let out = nixferry()
        .args(["copy", "--from", &t.src_url(), "--to"])
        .arg(format!("{}?compression=zstd", upload.url()))
        .args(["--trusted-key", &t.public_key, &t.path])
        .env("NIXFERRY_HTTP_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_refused(&out);
    assert_no_narinfo(&dest);
}

#[test]
fn s3_source_and_s3_destination() {
    if !s3::ready() {
        return;
    }
    let t = Tampered::new();
    let s3 = S3::start();

    // Into a bucket, passthrough and recompressed: nothing is uploaded.
    for (prefix, params) in [("zstd", "compression=zstd"), ("xz", "compression=xz")] {
        let out = s3
            .nixferry()
            .args(["copy", "--from", &t.src_url(), "--to"])
            .arg(s3.url(&format!("cache/{prefix}"), params))
            .args(["--trusted-key", &t.public_key, &t.path])
            .output()
            .unwrap();
        assert_refused(&out);
        let keys = s3.keys("cache");
        assert!(!keys.iter().any(|k| k.ends_with(".narinfo")), "{keys:?}");
    }

    // Out of a bucket that holds the tampered files.
    for entry in fs::read_dir(&t.cache).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "nar" {
            for nar in fs::read_dir(entry.path()).unwrap() {
                let nar = nar.unwrap();
                let key = format!("src/nar/{}", nar.file_name().to_string_lossy());
                s3.put("other", &key, &nar.path());
            }
        } else if entry.file_type().unwrap().is_file() {
            s3.put("other", &format!("src/{name}"), &entry.path());
        }
    }
    let dst = t.dir.join("from-s3");
    let out = s3
        .nixferry()
        .args(["copy", "--from", &s3.url("other/src", ""), "--to"])
        .arg(format!("file://{}?compression=zstd", dst.display()))
        .args(["--trusted-key", &t.public_key, &t.path])
        .output()
        .unwrap();
    assert_refused(&out);
    assert_no_narinfo(&dst);
}

#[test]
fn a_local_store_destination() {
    if !have_nix() {
        return;
    }
    let t = Tampered::new();
    let store = t.dir.join("chroot");
    let out = t.copy(&t.src_url(), store.to_str().unwrap());
    assert_refused(&out);
    let check = nix("nix-store")
        .args(["--store"])
        .arg(&store)
        .args(["--check-validity", &t.path])
        .output()
        .unwrap();
    assert!(!check.status.success(), "the path is valid in {store:?}");
}

#[test]
fn uploads_to_a_writable_server() {
    let t = Tampered::new();
    let (server, dest) = writable_server(&t.dir, "t0ken");
    let auth = [("Authorization", "Bearer t0ken")];
    let put = |path: &str, body: &[u8]| request(server.port, "PUT", path, &auth, Some(body));

    // A NAR file whose content is not what its name says: not kept.
    let tampered_narinfo =
        fs::read_to_string(t.cache.join(format!("{}.narinfo", hash_part(&t.path)))).unwrap();
    let url = narinfo_field(&tampered_narinfo, "URL");
    let reply = put(&format!("/{url}"), &t.other_nar.1);
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(!dest.join(&url).exists());

    // The other NAR under its own name is fine; a narinfo claiming it is
    // the signed path's NAR is refused, and not published.
    let (other_url, other_bytes) = &t.other_nar;
    assert_eq!(put(&format!("/{other_url}"), other_bytes).status, 200);
    let lying: String = tampered_narinfo
        .lines()
        .map(|l| match l.strip_prefix("URL: ") {
            Some(_) => format!("URL: {other_url}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let narinfo_path = format!("/{}.narinfo", hash_part(&t.path));
    let reply = put(&narinfo_path, lying.as_bytes());
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 400, "{body}");
    assert!(body.contains("NAR hash mismatch"), "{body}");
    assert!(!dest
        .join(format!("{}.narinfo", hash_part(&t.path)))
        .exists());

    // A narinfo whose FileHash disagrees with the file is refused too.
    let other_path = narinfo_field(&t.other_narinfo, "StorePath");
    let wrong_size: String = t
        .other_narinfo
        .lines()
        .map(|l| match l.strip_prefix("FileSize: ") {
            Some(n) => format!("FileSize: {}\n", n.parse::<u64>().unwrap() + 1),
            None => format!("{l}\n"),
        })
        .collect();
    let other_narinfo_path = format!("/{}.narinfo", hash_part(&other_path));
    assert_eq!(put(&other_narinfo_path, wrong_size.as_bytes()).status, 400);
    // The honest narinfo is published.
    assert_eq!(
        put(&other_narinfo_path, t.other_narinfo.as_bytes()).status,
        200
    );
    assert_eq!(
        server.get(&other_narinfo_path).body,
        t.other_narinfo.as_bytes()
    );
}
