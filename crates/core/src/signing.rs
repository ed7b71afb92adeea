//! Nix's ed25519 binary cache keys and narinfo signatures (SPEC §4).

/// Errors from keys and signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// Placeholder.
    #[error("bad key")]
    BadKey,
}
