//! The security regression suite: hostile input at every entry point, each
//! case with its expected outcome.
//!
//! Every module is a table of cases, each with what must come of it (a
//! status code, an exit code and the error message, which names the byte
//! offset and entry path for a NAR), and never a panic:
//!
//! - [`requests`]: hostile HTTP requests to `nixferry serve` (path
//!   traversal, percent escapes, absolute URLs, overlong request lines and
//!   headers, bad methods, malformed requests), and `Range` headers, on
//!   every backend (a `file://` cache, NARs made on the fly).
//! - [`uploads`]: hostile `PUT`s to `nixferry serve --write` (no or a wrong
//!   token, paths out of the cache, narinfos pointing outside it or at a
//!   NAR that is not theirs, oversized bodies).
//! - [`nars`]: the invalid NARs of `testdata/vectors/nar/invalid/` at every
//!   entry point: the decoder, `nar restore`/`ls`/`cat`, a copy out of a
//!   binary cache, an upload, a `nix-store --serve` reply.
//! - [`narinfos`]: hostile narinfos (URLs out of the cache, overlong,
//!   duplicate fields, bad hashes) read from a file and from a cache,
//!   directly and over HTTP.
//! - [`serve_protocol`]: hostile `nix-store --serve` replies, to the
//!   protocol client and to `nixferry copy --from ssh://`.
//! - [`tamper`]: tampered sources are refused at every entry point.
//!
//! Finer-grained checks of the same rules live beside the code they test
//! and stay there: the request path shapes (`route.rs`), `Range` parsing
//! (`range.rs`) and token checks (`upload.rs`) in `nixferry serve`'s unit
//! tests; in the library's tests (`crates/core/tests/it/`), the strict
//! rules per invalid NAR vector compared with Nix 2.8
//! (`nar.rs`: `invalid_vectors_follow_the_strict_rules`), narinfo parsing
//! limits (`narinfo.rs`), byte-level hostile serve replies, handshakes,
//! truncations and NAR streams (`serve.rs`: `hostile_replies`,
//! `hostile_handshakes`, `hostile_nars`, `truncated_replies_fail_cleanly`),
//! and the replay of every committed fuzz input (`fuzz_corpus.rs`).

mod narinfos;
mod nars;
mod requests;
mod serve_protocol;
mod tamper;
mod uploads;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{add_signed, generate_key, stderr};
use crate::serve::{hash_part, narinfo_field};

/// A `file://` cache with one signed path (a directory with a 100 kB
/// file), packed by `nixferry add`.
pub(crate) struct Cache {
    tmp: tempfile::TempDir,
    /// The cache directory.
    pub(crate) root: PathBuf,
    /// The public key of the key its narinfo is signed with.
    pub(crate) public_key: String,
    /// The store path, its hash part, its narinfo and that narinfo's URL.
    pub(crate) path: String,
    pub(crate) hash: String,
    pub(crate) narinfo: String,
    pub(crate) url: String,
}

impl Cache {
    /// A cache with the binary cache parameters `params` (such as
    /// `compression=none`).
    pub(crate) fn new(params: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (sk, public_key) = generate_key(tmp.path(), "security-test-1");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a"), "hello\n").unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(src.join("sub/big"), big).unwrap();
        let root = tmp.path().join("cache");
        let path = add_signed(&src, &format!("file://{}?{params}", root.display()), &sk);
        let hash = hash_part(&path).to_owned();
        let narinfo = fs::read_to_string(root.join(format!("{hash}.narinfo"))).unwrap();
        let url = narinfo_field(&narinfo, "URL");
        Self {
            tmp,
            root,
            public_key: public_key.trim().to_owned(),
            path,
            hash,
            narinfo,
            url,
        }
    }

    /// A scratch directory beside the cache.
    pub(crate) fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The cache's URL.
    pub(crate) fn store_url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    /// The bytes of the path's NAR file.
    pub(crate) fn nar_file(&self) -> Vec<u8> {
        fs::read(self.root.join(&self.url)).unwrap()
    }
}

/// Asserts that a command failed with exit code `code` and said `needle`
/// on stderr, without panicking.
#[track_caller]
pub(crate) fn assert_refused(out: &Output, code: i32, needle: &str, case: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{case}: {err}");
    assert!(err.contains(needle), "{case}: expected {needle:?} in {err}");
    assert_no_panic(out, case);
}

/// Asserts that a command did not panic (Rust's exit code 101, or its
/// message).
#[track_caller]
pub(crate) fn assert_no_panic(out: &Output, case: &str) {
    let err = stderr(out);
    assert_ne!(out.status.code(), Some(101), "{case}: {err}");
    assert!(!err.contains("panicked"), "{case}: {err}");
}

/// The SHA-256 of `data` in Nix's base-32, as NAR file names and
/// narinfo hashes give it.
pub(crate) fn sha256_nix32(data: &[u8]) -> String {
    let mut h = nixferry::hash::Hasher::new(nixferry::hash::HashAlgo::Sha256);
    h.update(data);
    h.finish().to_nix32()
}

/// An unsigned narinfo for a NAR file `nar` stored uncompressed, for the
/// store path `/nix/store/<hash>-<name>`.
pub(crate) fn plain_narinfo(hash: &str, name: &str, nar: &[u8]) -> String {
    let h = sha256_nix32(nar);
    let len = nar.len();
    format!(
        "StorePath: /nix/store/{hash}-{name}\nURL: nar/{h}.nar\nCompression: none\n\
         FileHash: sha256:{h}\nFileSize: {len}\nNarHash: sha256:{h}\nNarSize: {len}\n\
         References: \n"
    )
}

/// The hash part of the `i`th made-up store path of a test.
pub(crate) fn made_up_hash(i: usize) -> String {
    format!("{i:0>32}")
}
