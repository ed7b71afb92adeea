//! The NAR (Nix ARchive) format (SPEC §1).

/// Errors from reading, writing or restoring NARs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
