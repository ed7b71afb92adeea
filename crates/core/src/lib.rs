//! nixferry moves Nix store closures around: between a local Nix store,
//! binary caches (a directory, HTTP, S3) and remote machines over SSH, and
//! serves binary caches over HTTP.
//!
//! # Layers
//!
//! | layer | where | what it needs |
//! |---|---|---|
//! | formats: [`hash`], [`store_path`], [`nar`], [`narinfo`], [`signing`], [`refscan`] | the `nixferry-formats` crate, re-exported here under the same names | `std` only: no async runtime, no network, no C libraries |
//! | codecs: [`compression`]; NAR deltas: [`delta`] (feature `zstd`) | here | one cargo feature per codec: `xz`, `zstd`, `bzip2`, `brotli` |
//! | stores: [`store`] (`file://` always; `local`, `ssh`, `http`, `s3` behind features of those names) | here | tokio; SQLite, reqwest, object_store as their features ask |
//! | copies: [`closure`], [`copy`] | here | any two [`store::Store`]s |
//! | pushing from the local store as paths appear: [`push`] (a durable queue, a watcher) | here, feature `local` | the local store |
//! | binary cache upkeep: [`cache`] (verify, repair, sign, stats, pins, gc) | here | the `file://`, `s3://` and `http(s)://` stores built |
//! | the HTTP binary cache server: [`server`] | here, feature `server` | hyper |
//! | Nix's configuration (`nix.conf`, `NIX_CONFIG`): [`nixconf`] | here | `std` only |
//!
//! Every feature is on by default. An embedder who only reads and writes
//! formats depends on `nixferry-formats`; one who copies between binary
//! caches in directories takes `nixferry` with `default-features = false`
//! and adds what it needs, e.g. `features = ["http", "zstd"]`.
//!
//! # Examples
//!
//! Dump a file tree as a NAR and hash it:
//!
//! ```
//! use nixferry::nar;
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("hello.txt"), "hello\n")?;
//! let mut bytes = Vec::new();
//! let summary = nar::dump(dir.path(), &mut bytes)?;
//! assert_eq!(summary.nar_size, bytes.len() as u64);
//! // The same hash without keeping the NAR:
//! assert_eq!(nar::hash_path(dir.path())?.nar_hash, summary.nar_hash);
//! println!("{}", summary.nar_hash.to_sri());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Check a narinfo's signature against a trusted key:
//!
//! ```
//! use nixferry::narinfo::NarInfo;
//! use nixferry::signing::{SecretKey, TrustedKeys};
//!
//! let key = SecretKey::generate("cache.example.org-1")?;
//! let mut info = NarInfo::parse(
//!     "StorePath: /nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-hello.txt\n\
//!      URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar\n\
//!      Compression: none\n\
//!      NarHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
//!      NarSize: 120\n\
//!      References: \n",
//! )?;
//! info.sign(&key);
//!
//! let mut trusted = TrustedKeys::new();
//! trusted.add(key.public());
//! assert_eq!(info.verify(&trusted)?, "cache.example.org-1");
//! // Nix's default keys do not know this one.
//! assert!(info.verify(&TrustedKeys::nix_default()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Add a path to a `file://` binary cache, compute its closure and copy it
//! into a second cache, signed:
//!
//! ```
//! use std::sync::Arc;
//! use nixferry::copy::{copy_closure, CancellationToken, CopyOptions};
//! use nixferry::signing::SecretKey;
//! use nixferry::store::{self, add_to_store};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let src = store::open(&format!("file://{}/a?compression=none", dir.path().display()))?;
//! let dst = store::open(&format!("file://{}/b?compression=zstd", dir.path().display()))?;
//! let key = SecretKey::generate("cache.example.org-1")?;
//!
//! std::fs::write(dir.path().join("hello.txt"), "hello\n")?;
//! let info = add_to_store(&*src, &dir.path().join("hello.txt"), "hello.txt", &[key.clone()]).await?;
//!
//! let closure = nixferry::closure::compute(&*src, &[info.path.clone()]).await?;
//! assert_eq!(closure.len(), 1);
//!
//! // The source is not trusted: its paths need a signature by a trusted
//! // key, and paths signed with our own key are.
//! let opts = CopyOptions::default().with_secret_keys([key]);
//! let summary = copy_closure(src, dst.clone(), &[info.path.clone()], &opts,
//!     Arc::new(|_event| {}), CancellationToken::new()).await?;
//! assert_eq!((summary.copied, summary.failed.len()), (1, 0));
//! assert!(dst.query_path_infos(&[info.path.clone()]).await?.contains_key(&info.path));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Serve a cache over HTTP, as `nixferry serve` does, and copy from it:
//!
//! ```
//! use std::sync::Arc;
//! use nixferry::copy::{copy_closure, CancellationToken, CopyOptions};
//! use nixferry::server::Server;
//! use nixferry::signing::SecretKey;
//! use nixferry::store::{self, add_to_store};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let cache = store::open(&format!("file://{}/cache", dir.path().display()))?;
//! let key = SecretKey::generate("cache.example.org-1")?;
//! std::fs::write(dir.path().join("hello.txt"), "hello\n")?;
//! let info = add_to_store(&*cache, &dir.path().join("hello.txt"), "hello.txt", &[key.clone()]).await?;
//!
//! let server = Server::builder(cache).listen("127.0.0.1:0".parse()?).start().await?;
//! let remote = store::open(&server.url())?;
//! let mirror = store::open(&format!("file://{}/mirror", dir.path().display()))?;
//! let mut trusted = nixferry::signing::TrustedKeys::new();
//! trusted.add(key.public());
//! let opts = CopyOptions::default().with_trusted_keys(trusted);
//! let summary = copy_closure(remote, mirror, &[info.path], &opts,
//!     Arc::new(|_event| {}), CancellationToken::new()).await?;
//! assert_eq!(summary.copied, 1);
//! server.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
mod backoff;
pub mod cache;
pub mod closure;
pub mod compression;
pub mod copy;
#[cfg(feature = "zstd")]
pub mod delta;
pub mod nixconf;
pub mod preflight;
#[cfg(feature = "local")]
pub mod push;
#[cfg(feature = "server")]
pub mod server;
#[cfg(any(feature = "local", feature = "s3"))]
mod state;
pub mod store;

pub use nixferry_formats::{hash, nar, narinfo, refscan, signing, store_path};

#[doc(hidden)]
pub mod fuzzing;

/// A byte count for people, in binary units: `280 B`, `1.5 KiB`,
/// `12.30 MiB`, `1.60 GiB`.
///
/// ```
/// assert_eq!(nixferry::human_bytes(1536), "1.5 KiB");
/// ```
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let digits = if value >= 100.0 || unit == 0 { 1 } else { 2 };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// Any error from this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hash could not be parsed.
    #[error(transparent)]
    Hash(#[from] hash::HashError),
    /// A store path could not be parsed or made.
    #[error(transparent)]
    StorePath(#[from] store_path::StorePathError),
    /// A NAR could not be read, written or restored.
    #[error(transparent)]
    Nar(#[from] nar::NarError),
    /// A narinfo or nix-cache-info could not be parsed.
    #[error(transparent)]
    NarInfo(#[from] narinfo::NarInfoError),
    /// A key or signature problem.
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    /// A closure could not be computed or ordered.
    #[error(transparent)]
    Closure(#[from] closure::ClosureError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The HTTP binary cache server could not start or stop.
    #[cfg(feature = "server")]
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// An I/O error outside any format.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Lets `?` turn a [`signing::VerifyError`] straight into the crate error.
impl From<signing::VerifyError> for Error {
    fn from(e: signing::VerifyError) -> Self {
        Error::Signing(signing::SigningError::Verify(e))
    }
}

/// An error of the format layer, as this crate's error.
impl From<nixferry_formats::Error> for Error {
    fn from(e: nixferry_formats::Error) -> Self {
        match e {
            nixferry_formats::Error::Hash(e) => Error::Hash(e),
            nixferry_formats::Error::StorePath(e) => Error::StorePath(e),
            nixferry_formats::Error::Nar(e) => Error::Nar(e),
            nixferry_formats::Error::NarInfo(e) => Error::NarInfo(e),
            nixferry_formats::Error::Signing(e) => Error::Signing(e),
            nixferry_formats::Error::Io(e) => Error::Io(e),
            // The format error is non-exhaustive.
            e => Error::Io(std::io::Error::other(e)),
        }
    }
}
