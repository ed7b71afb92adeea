//! Consistency checks across fields ([`NarInfo::check`]).

use std::fmt;

use super::{Compression, NarInfo, NarInfoError};
use crate::hash::HashAlgo;
use crate::store_path::{ContentAddress, FileIngestion};

/// Fields that are valid on their own but do not agree with each other or
/// with what Nix writes.
///
/// Hashes and content addresses are kept as text, which keeps the error
/// small (a `NixHash` has room for 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inconsistency {
    /// `NarHash` is not SHA-256; Nix only makes SHA-256 NAR hashes.
    NarHashNotSha256(HashAlgo),
    /// `Compression: none` but the file hash is not the NAR hash.
    FileHashNotNarHash {
        /// The `FileHash`.
        file_hash: String,
        /// The `NarHash`.
        nar_hash: String,
    },
    /// `Compression: none` but the file size is not the NAR size.
    FileSizeNotNarSize {
        /// The `FileSize`.
        file_size: u64,
        /// The `NarSize`.
        nar_size: u64,
    },
    /// The CA claim, with the name and references, gives another path.
    CaDoesNotGivePath {
        /// The `CA`.
        ca: String,
        /// The `StorePath`, in full.
        path: String,
    },
    /// A recursive CA hash with the NAR hash's algorithm differs from it
    /// (both hash the same NAR).
    CaNotNarHash {
        /// The `CA`.
        ca: String,
        /// The `NarHash`.
        nar_hash: String,
    },
    /// `URL` is not a plain relative path inside the cache.
    UnsafeUrl {
        /// The `URL`.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `Deriver` does not name a `.drv`.
    DeriverNotDerivation(String),
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NarHashNotSha256(algo) => {
                write!(f, "NarHash uses {algo}, but NAR hashes are sha256")
            }
            Self::FileHashNotNarHash {
                file_hash,
                nar_hash,
            } => write!(
                f,
                "Compression is none, but FileHash {file_hash} differs from NarHash {nar_hash}"
            ),
            Self::FileSizeNotNarSize {
                file_size,
                nar_size,
            } => write!(
                f,
                "Compression is none, but FileSize {file_size} differs from NarSize {nar_size}"
            ),
            Self::CaDoesNotGivePath { ca, path } => {
                write!(f, "CA {ca} does not give the store path {path}")
            }
            Self::CaNotNarHash { ca, nar_hash } => {
                write!(
                    f,
                    "CA {ca} hashes the NAR but differs from NarHash {nar_hash}"
                )
            }
            Self::UnsafeUrl { url, reason } => {
                write!(f, "URL '{url}' is not a plain relative path: {reason}")
            }
            Self::DeriverNotDerivation(deriver) => {
                write!(f, "Deriver '{deriver}' is not a derivation (.drv)")
            }
        }
    }
}

impl std::error::Error for Inconsistency {}

impl NarInfo {
    /// Checks that the fields agree with each other and with what Nix
    /// writes, beyond what parsing checks:
    ///
    /// - `NarHash` is SHA-256;
    /// - with `Compression: none`, `FileHash` and `FileSize` (when present)
    ///   equal `NarHash` and `NarSize`;
    /// - a `CA` claim gives the store path (docs/formats.md §2.7), and a recursive CA
    ///   hash equals `NarHash` when both use the same algorithm;
    /// - `URL` is a relative path that stays inside the cache (no scheme,
    ///   no leading `/`, no `.`/`..`/empty components, no whitespace,
    ///   control characters, `\`, `?` or `#`);
    /// - `Deriver` names a `.drv`.
    ///
    /// Nix 2.8 checks none of these when reading a narinfo; the NAR hash and
    /// CA are checked only once the NAR has been fetched.
    ///
    /// # Errors
    /// [`NarInfoError::Inconsistent`] with the first problem found.
    pub fn check(&self) -> Result<(), NarInfoError> {
        self.check_nar_hash_algo()?;
        self.check_uncompressed()?;
        self.check_ca()?;
        check_url(self.url())?;
        self.check_deriver()?;
        Ok(())
    }

    fn check_nar_hash_algo(&self) -> Result<(), Inconsistency> {
        match self.nar_hash().algo() {
            HashAlgo::Sha256 => Ok(()),
            other => Err(Inconsistency::NarHashNotSha256(other)),
        }
    }

    fn check_uncompressed(&self) -> Result<(), Inconsistency> {
        if *self.compression() != Compression::None {
            return Ok(());
        }
        let nar_hash = self.nar_hash();
        if let Some(file_hash) = self.file_hash().filter(|&h| h != nar_hash) {
            return Err(Inconsistency::FileHashNotNarHash {
                file_hash: file_hash.to_string(),
                nar_hash: nar_hash.to_string(),
            });
        }
        let nar_size = self.nar_size();
        if let Some(file_size) = self.file_size().filter(|&s| s != nar_size) {
            return Err(Inconsistency::FileSizeNotNarSize {
                file_size,
                nar_size,
            });
        }
        Ok(())
    }

    fn check_ca(&self) -> Result<(), Inconsistency> {
        let Some(ca) = self.ca() else {
            return Ok(());
        };
        if !self.verify_ca() {
            return Err(Inconsistency::CaDoesNotGivePath {
                ca: ca.to_string(),
                path: self.store_dir().full(self.store_path()),
            });
        }
        let nar_hash = self.nar_hash();
        if let ContentAddress::Fixed {
            method: FileIngestion::Recursive,
            hash,
        } = ca
        {
            if hash.algo() == nar_hash.algo() && hash != nar_hash {
                return Err(Inconsistency::CaNotNarHash {
                    ca: ca.to_string(),
                    nar_hash: nar_hash.to_string(),
                });
            }
        }
        Ok(())
    }

    fn check_deriver(&self) -> Result<(), Inconsistency> {
        match self.deriver() {
            Some(drv) if !drv.is_derivation() => {
                Err(Inconsistency::DeriverNotDerivation(drv.to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// Checks that `url` is a relative path that cannot leave the cache or be
/// read as something else by an HTTP client.
fn check_url(url: &str) -> Result<(), Inconsistency> {
    let reason = if url.contains("://") {
        Some("it is an absolute URL")
    } else if url.starts_with('/') {
        Some("it is an absolute path")
    } else if url.contains(|c: char| c.is_whitespace() || c.is_control() || "\\?#".contains(c)) {
        Some("it contains whitespace, a control character, '\\', '?' or '#'")
    } else if url
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("it has an empty, '.' or '..' component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Inconsistency::UnsafeUrl {
            url: url.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in ["nar/x.nar.xz", "x.nar", "nar/sub/x", "nar/a..b"] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "https://example.org/nar/x",
            "/nar/x",
            "nar//x",
            "nar/x/",
            "../x",
            "nar/./x",
            "nar/x y",
            "nar/x?y",
            "nar\\x",
            "nar/x\u{7f}",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
