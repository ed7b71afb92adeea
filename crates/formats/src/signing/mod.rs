//! Nix's ed25519 binary cache keys and narinfo signatures (docs/formats.md §4).
//!
//! Nix signs a store path by signing its *fingerprint* (see
//! [`crate::narinfo::fingerprint`], docs/formats.md §4.2) with plain Ed25519
//! (RFC 8032, libsodium's `crypto_sign_detached`). Keys and signatures are
//! text of the form `NAME:BASE64`:
//!
//! | item | text | decoded bytes |
//! |---|---|---|
//! | [`SecretKey`] | `NAME:base64(seed ‖ public key)` | 64 |
//! | [`PublicKey`] | `NAME:base64(public key)` | 32 |
//! | [`Signature`] | `NAME:base64(signature)` | 64 |
//!
//! A signature names the key that made it, so verification looks the name up
//! in a set of [`TrustedKeys`] (Nix's `trusted-public-keys`) and checks the
//! signature with that key only. Signatures by keys that are not trusted do
//! not count, as in Nix (docs/formats.md §4.4).
//!
//! ```
//! use nixferry_formats::signing::{SecretKey, TrustedKeys};
//!
//! let key = SecretKey::from_seed("example-1", &[7; 32]).unwrap();
//! let sig = key.sign(b"1;/nix/store/...").to_string();
//! let trusted = TrustedKeys::from_keys([key.public()]);
//! assert_eq!(trusted.verify(b"1;/nix/store/...", [sig.as_str()]), Ok("example-1"));
//! ```
//!
//! # Design
//!
//! A [`PublicKey`] keeps the decompressed curve point, so parsing a key once
//! and reusing it makes each verification a single Ed25519 check. Secret key
//! material lives in [`ed25519_dalek::SigningKey`], which wipes itself on drop;
//! the intermediate buffers this module decodes are wiped on a best-effort
//! basis, and `Debug` never prints a secret.
//!
//! # Nix 2.8 vs nixferry
//!
//! | input | Nix 2.8 | nixferry | why |
//! |---|---|---|---|
//! | base64 of a key or signature | stops at the first `=`, skips `\n` anywhere, ignores leftover bits | standard alphabet, padding optional, no embedded whitespace, no leftover bits | every writer emits canonical base64; one spelling per value |
//! | whitespace around a key string | a trailing `\n` is skipped by the base64 decoder | leading and trailing ASCII whitespace trimmed ([`SecretKey::parse`], [`PublicKey::parse`]); a [`Signature`] is taken exactly | key files end in a newline when written by hand (`pyspec-1.secret`) |
//! | secret key whose last 32 bytes are not its public key | accepted; signatures made with it do not verify | [`SigningError::PublicHalfMismatch`] | catches corrupt key files before they sign anything |
//! | public key that is not a canonical point of large order | accepted; libsodium then rejects every signature | [`SigningError::InvalidPublicKey`] at parse time | same outcome, reported early |
//! | malformed signature by a trusted key | throws `signature is not valid`, aborting the operation | [`VerifyError::BadSignature`] for that path; [`TrustedKeys::count_valid`] skips it | one bad narinfo should not stop a whole copy |
//! | new key names ([`SecretKey::generate`]) | anything | non-empty, no `:`, no whitespace or control characters | such names could not be parsed back or listed in `trusted-public-keys` |
//!
//! # Verification semantics
//!
//! Nix verifies with libsodium's `crypto_sign_verify_detached`, which
//! rejects a non-canonical `S`, a small-order `R` (by comparing its bytes,
//! sign bit ignored, with a list of seven encodings), a non-canonical or
//! small-order public key, and then compares the recomputed `R` with the
//! signature's bytewise (cofactorless). nixferry accepts exactly the same
//! signatures:
//!
//! - the public key checks happen once, when a [`PublicKey`] is parsed;
//! - the `R` check uses libsodium's list of encodings;
//! - the rest is dalek's plain `Verifier::verify` on a cached
//!   [`ed25519_dalek::VerifyingKey`]: canonical `S`, cofactorless equation,
//!   bytewise `R` comparison.
//!
//! `verify_strict` would accept and reject the same signatures (it checks
//! the key and `R` for small order on the decompressed points), but it
//! decompresses `R` on every call, which costs about 12% more than the byte
//! comparison. dalek's `verify` alone would accept small-order keys and `R`
//! values, which libsodium rejects.

mod keys;
mod trust;

pub use keys::{KeyFileError, PublicKey, SecretKey, Signature};
pub use trust::{TrustedKeys, VerifyError, DEFAULT_TRUSTED_PUBLIC_KEYS};

/// Which kind of `NAME:BASE64` item a [`SigningError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A secret key (`NAME:base64(64 bytes)`).
    SecretKey,
    /// A public key (`NAME:base64(32 bytes)`).
    PublicKey,
    /// A signature (`NAME:base64(64 bytes)`).
    Signature,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SecretKey => "secret key",
            Self::PublicKey => "public key",
            Self::Signature => "signature",
        })
    }
}

/// Errors from parsing or making keys and signatures.
///
/// Messages start like Nix's (`secret key is not valid`) and then say why.
/// They never contain secret key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningError {
    /// There is no `:` between the name and the base64 data.
    MissingColon(Kind),
    /// The name before the `:` is empty.
    EmptyName(Kind),
    /// Nothing follows the `:`.
    EmptyData {
        /// What was being parsed.
        kind: Kind,
        /// The key name.
        name: String,
    },
    /// The data after the `:` is not canonical standard base64.
    BadBase64 {
        /// What was being parsed.
        kind: Kind,
        /// The key name.
        name: String,
    },
    /// The data decodes to the wrong number of bytes.
    WrongLength {
        /// What was being parsed.
        kind: Kind,
        /// The key name.
        name: String,
        /// The size this kind must have.
        expected: usize,
        /// The decoded size.
        found: usize,
    },
    /// A secret key was given where a public key was expected (it decodes
    /// to a secret key's 64 bytes). The message names the key, never its
    /// data.
    SecretKeyGiven {
        /// The key name.
        name: String,
    },
    /// A secret key's last 32 bytes are not the public key of its seed.
    PublicHalfMismatch {
        /// The key name.
        name: String,
    },
    /// A public key is not the canonical encoding of a curve point of large
    /// order, so no signature could ever verify with it.
    InvalidPublicKey {
        /// The key name.
        name: String,
    },
    /// A name for a new key is empty or has `:`, whitespace or control
    /// characters.
    InvalidName(String),
    /// The operating system could not provide random bytes for a new key.
    Randomness(String),
    /// A verification failed.
    Verify(VerifyError),
}

impl std::fmt::Display for SigningError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingColon(kind) => write!(f, "{kind} is not valid: no ':' after the key name"),
            Self::EmptyName(kind) => write!(f, "{kind} is not valid: the key name is empty"),
            Self::EmptyData { kind, name } => {
                write!(
                    f,
                    "{kind} '{name}' is not valid: no data after the key name"
                )
            }
            Self::BadBase64 { kind, name } => write!(f, "{kind} '{name}' is not valid: bad base64"),
            Self::WrongLength {
                kind,
                name,
                expected,
                found,
            } => write!(
                f,
                "{kind} '{name}' is not valid: {found} bytes instead of {expected}"
            ),
            Self::SecretKeyGiven { name } => write!(
                f,
                "'{name}' is a secret key, where a public key belongs: give its public half \
                 (`nixferry key public SECRET_FILE` prints it), and keep the secret key secret"
            ),
            Self::PublicHalfMismatch { name } => write!(
                f,
                "secret key '{name}' is not valid: its public half does not match its seed"
            ),
            Self::InvalidPublicKey { name } => {
                write!(
                    f,
                    "public key '{name}' is not valid: not a usable ed25519 point"
                )
            }
            Self::InvalidName(name) => write!(
                f,
                "key name '{name}' is not valid: it must be non-empty, without ':' or whitespace"
            ),
            Self::Randomness(reason) => {
                write!(f, "cannot get random bytes for a new key: {reason}")
            }
            Self::Verify(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SigningError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Verify(e) => e.source(),
            _ => None,
        }
    }
}

impl From<VerifyError> for SigningError {
    fn from(e: VerifyError) -> Self {
        Self::Verify(e)
    }
}

/// Lets `?` turn a [`VerifyError`] straight into the crate error.
impl From<VerifyError> for crate::Error {
    fn from(e: VerifyError) -> Self {
        crate::Error::Signing(SigningError::Verify(e))
    }
}

/// Splits `NAME:DATA` at the first `:`, as Nix's `split` in `crypto.cc`;
/// both parts must be non-empty.
fn split_named(s: &str, kind: Kind) -> Result<(&str, &str), SigningError> {
    let (name, data) = s.split_once(':').ok_or(SigningError::MissingColon(kind))?;
    if name.is_empty() {
        return Err(SigningError::EmptyName(kind));
    }
    if data.is_empty() {
        return Err(SigningError::EmptyData {
            kind,
            name: name.to_owned(),
        });
    }
    Ok((name, data))
}

/// Decodes base64 that must give exactly `N` bytes.
fn decode_exact<const N: usize>(
    data: &str,
    kind: Kind,
    name: &str,
) -> Result<[u8; N], SigningError> {
    let mut bytes = crate::hash::from_base64(data).ok_or_else(|| SigningError::BadBase64 {
        kind,
        name: name.to_owned(),
    })?;
    let exact = <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| SigningError::WrongLength {
        kind,
        name: name.to_owned(),
        expected: N,
        found: bytes.len(),
    });
    wipe(&mut bytes);
    exact
}

/// Overwrites a buffer that held key material before it is dropped.
///
/// Best effort: `black_box` keeps the compiler from removing the writes as
/// dead stores. (The `zeroize` crate would be the principled tool; it is not
/// a direct dependency.)
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}
