//! nixferry moves Nix store closures around: between a local Nix store,
//! binary caches (a directory, HTTP, S3) and remote machines over SSH.
//!
//! This crate is the core. Its format layer, the `nixferry-formats` crate
//! (re-exported here under the same module names), reads and writes what
//! Nix does, byte for byte:
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
pub mod store;

pub use nixferry_formats::{hash, nar, narinfo, refscan, signing, store_path};

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
