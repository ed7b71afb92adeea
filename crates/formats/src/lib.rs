//! Nix's formats, byte for byte, with no I/O runtime: no async runtime, no
//! network, no C libraries. Everything works over `std::io::Read`/`Write`,
//! the file system (to dump and restore NARs) and byte slices.
//!
//! - [`hash`]: Nix base-32, hex, SRI, and [`hash::NixHash`];
//! - [`store_path`]: store paths and content-addressed path computation;
//! - [`nar`]: the NAR archive format: a streaming encoder, a strict
//!   streaming decoder, safe restore, `.ls` listings;
//! - [`narinfo`]: binary cache metadata, parsed and rendered losslessly;
//! - [`signing`]: Nix's ed25519 keys and narinfo signatures;
//! - [`refscan`]: finding store path references in content.
//!
//! The decoders never panic on any input, and bound every length and depth
//! that comes from untrusted data. The `nixferry` crate re-exports these
//! modules under the same names and adds stores, copies and the server on
//! top; depend on this crate alone when formats are all you need.
//!
//! ```
//! use nixferry_formats::nar;
//!
//! // Dump a file tree (here a single regular file) and hash its NAR.
//! let file = std::env::temp_dir().join(format!("nixferry-doc-{}", std::process::id()));
//! std::fs::write(&file, b"hello\n")?;
//! let mut bytes = Vec::new();
//! let summary = nar::dump(&file, &mut bytes)?;
//! std::fs::remove_file(&file)?;
//! assert_eq!(summary.nar_size, bytes.len() as u64);
//! assert!(summary.nar_hash.to_sri().starts_with("sha256-"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod refscan;
pub mod signing;
pub mod store_path;

/// Any error from this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A hash could not be parsed.
    Hash(hash::HashError),
    /// A store path could not be parsed or made.
    StorePath(store_path::StorePathError),
    /// A NAR could not be read, written or restored.
    Nar(nar::NarError),
    /// A narinfo or nix-cache-info could not be parsed.
    NarInfo(narinfo::NarInfoError),
    /// A key or signature problem.
    Signing(signing::SigningError),
    /// An I/O error outside any format.
    Io(std::io::Error),
}

impl Error {
    /// The wrapped error: every variant is transparent.
    fn inner(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Self::Hash(e) => e,
            Self::StorePath(e) => e,
            Self::Nar(e) => e,
            Self::NarInfo(e) => e,
            Self::Signing(e) => e,
            Self::Io(e) => e,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.inner(), f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().source()
    }
}

impl From<hash::HashError> for Error {
    fn from(e: hash::HashError) -> Self {
        Self::Hash(e)
    }
}

impl From<store_path::StorePathError> for Error {
    fn from(e: store_path::StorePathError) -> Self {
        Self::StorePath(e)
    }
}

impl From<nar::NarError> for Error {
    fn from(e: nar::NarError) -> Self {
        Self::Nar(e)
    }
}

impl From<narinfo::NarInfoError> for Error {
    fn from(e: narinfo::NarInfoError) -> Self {
        Self::NarInfo(e)
    }
}

impl From<signing::SigningError> for Error {
    fn from(e: signing::SigningError) -> Self {
        Self::Signing(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}
