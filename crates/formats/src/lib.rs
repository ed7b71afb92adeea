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
    /// An I/O error outside any format.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
