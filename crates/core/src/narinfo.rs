//! `.narinfo` and `nix-cache-info` files (SPEC §3).

/// Errors from parsing narinfo files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarInfoError {
    /// Placeholder.
    #[error("corrupt narinfo")]
    Corrupt,
}
