//! nixferry moves Nix store closures around: between a local Nix store,
//! binary caches (a directory, HTTP, S3) and remote machines over SSH.
//!
//! This crate is the core. Its format layer reads and writes what Nix does,
//! byte for byte:
//!
//! - [`hash`]: Nix base-32, hex, SRI, and [`hash::NixHash`];
//! - [`store_path`]: store paths and content-addressed path computation;
//! - [`nar`]: the NAR archive format: a streaming encoder, a strict
//!   streaming decoder, safe restore, `.ls` listings;
//! - [`narinfo`]: binary cache metadata, parsed and rendered losslessly;
//! - [`signing`]: Nix's ed25519 keys and narinfo signatures;
//! - [`refscan`]: finding store path references in content.
//!
//! The codecs do no network I/O: they work over `Read`/`Write` and byte
//! slices, never panic on any input, and bound every length and depth that
//! comes from untrusted data.

pub mod atomic;
mod backoff;
pub mod closure;
pub mod compression;
pub mod copy;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod refscan;
pub mod signing;
pub mod store;
pub mod store_path;

#[doc(hidden)]
pub mod fuzzing;

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
    /// An I/O error outside any format.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
