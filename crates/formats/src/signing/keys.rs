//! [`SecretKey`], [`PublicKey`] and [`Signature`]: parsing, printing, signing
//! and checking one signature (docs/formats.md §4.1, §4.3); reading key
//! files ([`SecretKey::from_file`], [`PublicKey::from_file`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use super::{decode_exact, split_named, wipe, Kind, SigningError};
use crate::hash::to_base64;

/// Bytes in a secret key file's payload: the seed, then the public key
/// (libsodium's secret key layout).
const SECRET_KEY_LEN: usize = 64;
/// Bytes in an Ed25519 seed.
const SEED_LEN: usize = 32;
/// Bytes in an Ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;
/// Bytes in an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key with its name, as in a Nix secret key file
/// (`nix-store --generate-binary-cache-key`).
///
/// `Debug` shows the name and public key, never the secret.
#[derive(Clone)]
pub struct SecretKey {
    name: Box<str>,
    key: SigningKey,
}

impl SecretKey {
    /// Makes a new key from operating-system randomness.
    ///
    /// # Errors
    /// [`SigningError::InvalidName`] if `name` is empty or contains `:`,
    /// whitespace or a control character; [`SigningError::Randomness`] if
    /// no random bytes are available.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        validate_new_name(name)?;
        let mut seed = [0u8; SEED_LEN];
        getrandom::getrandom(&mut seed).map_err(|e| SigningError::Randomness(e.to_string()))?;
        let key = Self::from_seed(name, &seed);
        wipe(&mut seed);
        key
    }

    /// Makes the key with a given 32-byte seed. Ed25519 is deterministic, so
    /// the same seed always gives the same key and signatures.
    ///
    /// # Errors
    /// [`SigningError::InvalidName`] as for [`SecretKey::generate`].
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, SigningError> {
        validate_new_name(name)?;
        Ok(Self {
            name: name.into(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// Parses `NAME:base64(seed ‖ public key)`, the contents of a secret key
    /// file. Surrounding whitespace (a trailing newline) is ignored.
    ///
    /// # Errors
    /// [`SigningError`] if the text is malformed, does not decode to 64
    /// bytes, or its public half is not the public key of its seed.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, data) = split_named(s.trim_ascii(), Kind::SecretKey)?;
        let mut bytes = decode_exact::<SECRET_KEY_LEN>(data, Kind::SecretKey, name)?;
        // `from_keypair_bytes` derives the public key from the seed and
        // fails if the stored half differs; that is its only failure.
        let key = SigningKey::from_keypair_bytes(&bytes);
        wipe(&mut bytes);
        let key = key.map_err(|_| SigningError::PublicHalfMismatch {
            name: name.to_owned(),
        })?;
        Ok(Self {
            name: name.into(),
            key,
        })
    }

    /// Reads and parses a secret key file, as
    /// `nix-store --generate-binary-cache-key` writes them (see
    /// [`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`KeyFileError::Read`] if the file cannot be read,
    /// [`KeyFileError::Parse`] if its text is not a secret key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        read_key_file(path.as_ref(), Kind::SecretKey, Self::parse)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, with the same name.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `msg` (for narinfos, the fingerprint's bytes).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(msg).to_bytes(),
        }
    }

    /// The secret key file contents, `NAME:base64(seed ‖ public key)`,
    /// without a trailing newline (as Nix writes it).
    ///
    /// The result holds the secret: write it to a file with mode 0600 and
    /// drop it.
    pub fn to_file_string(&self) -> String {
        let mut bytes = self.key.to_keypair_bytes();
        let s = format!("{}:{}", self.name, to_base64(&bytes));
        wipe(&mut bytes);
        s
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field("public", &self.public().to_string())
            .finish_non_exhaustive()
    }
}

impl FromStr for SecretKey {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, SigningError> {
        Self::parse(s)
    }
}

/// A key file that could not be loaded ([`SecretKey::from_file`],
/// [`PublicKey::from_file`]).
///
/// Messages name the kind of key and the file, then the cause:
/// `reading secret key '/etc/nix/key': No such file or directory …`,
/// `public key 'key.pub': public key is not valid: …`.
#[derive(Debug)]
pub enum KeyFileError {
    /// The file could not be read.
    Read {
        /// What the file should hold.
        kind: Kind,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file's text is not a key of its kind.
    Parse {
        /// What the file should hold.
        kind: Kind,
        /// The file.
        path: PathBuf,
        /// Why the text is not a key.
        source: SigningError,
    },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { kind, path, source } => {
                write!(f, "reading {kind} '{}': {source}", path.display())
            }
            Self::Parse { kind, path, source } => {
                write!(f, "{kind} '{}': {source}", path.display())
            }
        }
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
        }
    }
}

/// Reads the key file `path`, which should hold a `kind`, and parses its
/// text with `parse`. The text is wiped once parsed (a secret key file
/// holds the secret).
fn read_key_file<T>(
    path: &Path,
    kind: Kind,
    parse: fn(&str) -> Result<T, SigningError>,
) -> Result<T, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        kind,
        path: path.to_owned(),
        source,
    })?;
    let parsed = parse(&text);
    let mut bytes = text.into_bytes();
    wipe(&mut bytes);
    parsed.map_err(|source| KeyFileError::Parse {
        kind,
        path: path.to_owned(),
        source,
    })
}

/// Names for new keys must survive a round trip through a key file and a
/// space-separated `trusted-public-keys` list.
fn validate_new_name(name: &str) -> Result<(), SigningError> {
    let bad = |c: char| c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.contains(bad) {
        return Err(SigningError::InvalidName(name.to_owned()));
    }
    Ok(())
}

/// An Ed25519 public key with its name, as in `trusted-public-keys`.
///
/// `Display` gives `NAME:base64(32 bytes)`, the public key file format.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    name: Box<str>,
    /// Holds the decompressed point, so verification does not redo that.
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `NAME:base64(32 bytes)`. Surrounding whitespace is ignored.
    ///
    /// # Errors
    /// [`SigningError`] if the text is malformed, does not decode to 32
    /// bytes, or is not a canonical encoding of a curve point of large order
    /// (libsodium would reject every signature under such a key).
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, data) = split_named(s.trim_ascii(), Kind::PublicKey)?;
        let bytes = decode_exact::<PUBLIC_KEY_LEN>(data, Kind::PublicKey, name).map_err(|e| {
            match e {
                // The length of a secret key: a mistake worth naming.
                SigningError::WrongLength {
                    found: SECRET_KEY_LEN,
                    ..
                } => SigningError::SecretKeyGiven {
                    name: name.to_owned(),
                },
                e => e,
            }
        })?;
        let invalid = || SigningError::InvalidPublicKey {
            name: name.to_owned(),
        };
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| invalid())?;
        // dalek decodes a y coordinate >= p by reducing it; libsodium's
        // `ge25519_is_canonical` rejects it. Re-encoding catches those.
        let canonical = key.to_edwards().compress().to_bytes() == bytes;
        if !canonical || key.is_weak() {
            return Err(invalid());
        }
        Ok(Self {
            name: name.into(),
            key,
        })
    }

    /// Reads and parses a public key file (see [`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`KeyFileError::Read`] if the file cannot be read,
    /// [`KeyFileError::Parse`] if its text is not a public key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        read_key_file(path.as_ref(), Kind::PublicKey, Self::parse)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32 key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Whether `sig` is a valid signature of `msg` by this key: the names
    /// match and the Ed25519 check passes.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        *sig.key_name == *self.name && self.verify_bytes(msg, &sig.bytes)
    }

    /// The Ed25519 check alone, with exactly libsodium's accept set (see
    /// the module docs).
    pub(super) fn verify_bytes(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        if has_small_order(sig.r_bytes()) {
            return false;
        }
        // dalek's plain `verify` rejects a non-canonical S and compares the
        // recomputed R bytewise, as libsodium does.
        self.key.verify(msg, &sig).is_ok()
    }
}

/// The encodings libsodium's `ge25519_has_small_order` rejects as a
/// signature's R (and as a public key), compared with the sign bit cleared:
/// the points of order 1, 2, 4 and 8, and the non-canonical encodings
/// p - 1, p and p + 1 of order 2, 4 and 1 (p = 2^255 - 19).
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 7] = {
    const fn pad(head: &[u8], fill: u8, last: u8) -> [u8; 32] {
        let mut out = [fill; 32];
        let mut i = 0;
        while i < head.len() {
            out[i] = head[i];
            i += 1;
        }
        out[31] = last;
        out
    }
    [
        // 0, order 4.
        pad(&[], 0, 0),
        // 1, order 1 (the identity).
        pad(&[1], 0, 0),
        // The two points of order 8.
        [
            0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef,
            0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88,
            0x6d, 0x53, 0xfc, 0x05,
        ],
        [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ],
        // p - 1, order 2.
        pad(&[0xec], 0xff, 0x7f),
        // p, non-canonical 0, order 4.
        pad(&[0xed], 0xff, 0x7f),
        // p + 1, non-canonical 1, order 1.
        pad(&[0xee], 0xff, 0x7f),
    ]
};

/// Whether `point` (an encoded R or public key) is a small-order point,
/// decided on the bytes as libsodium does, without decompressing.
fn has_small_order(point: &[u8; 32]) -> bool {
    let mut unsigned = *point;
    unsigned[31] &= 0x7f;
    SMALL_ORDER_ENCODINGS.contains(&unsigned)
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, to_base64(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, SigningError> {
        Self::parse(s)
    }
}

/// A detached Ed25519 signature with the name of the key that made it.
///
/// `Display` gives `NAME:base64(64 bytes)`, the value of a narinfo `Sig:` line.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: Box<str>,
    bytes: [u8; SIGNATURE_LEN],
}

impl Signature {
    /// Parses `NAME:base64(64 bytes)`, taken exactly (no trimming).
    ///
    /// # Errors
    /// [`SigningError`] if the text is malformed or does not decode to 64
    /// bytes.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, data) = split_named(s, Kind::Signature)?;
        let bytes = decode_exact::<SIGNATURE_LEN>(data, Kind::Signature, name)?;
        Ok(Self {
            key_name: name.into(),
            bytes,
        })
    }

    /// The name of the key that made this signature.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The 64 signature bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, to_base64(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, SigningError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deterministic `pyspec-1` key of the vectors (seed 00…1f).
    fn pyspec() -> SecretKey {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        SecretKey::from_seed("pyspec-1", &seed).unwrap()
    }

    #[test]
    fn key_files_are_read_and_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key.sec");
        let public = dir.path().join("key.pub");
        std::fs::write(&secret, format!("{}\n", pyspec().to_file_string())).unwrap();
        std::fs::write(&public, pyspec().public().to_string()).unwrap();
        assert_eq!(
            SecretKey::from_file(&secret).unwrap().public(),
            pyspec().public()
        );
        assert_eq!(PublicKey::from_file(&public).unwrap(), pyspec().public());

        let missing = SecretKey::from_file(dir.path().join("missing")).unwrap_err();
        let KeyFileError::Read { kind, source, .. } = &missing else {
            panic!("{missing:?}");
        };
        assert_eq!(
            (*kind, source.kind()),
            (Kind::SecretKey, io::ErrorKind::NotFound)
        );
        assert!(
            missing.to_string().starts_with("reading secret key '"),
            "{missing}"
        );

        let not_public = PublicKey::from_file(&secret).unwrap_err();
        let KeyFileError::Parse { kind, .. } = &not_public else {
            panic!("{not_public:?}");
        };
        assert_eq!(*kind, Kind::PublicKey);
        let message = not_public.to_string();
        assert!(message.starts_with("public key '"), "{message}");
        assert!(message.contains("key.sec"), "{message}");
    }

    #[test]
    fn seed_gives_the_vector_public_key() {
        assert_eq!(
            pyspec().public().to_string(),
            "pyspec-1:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = pyspec();
        let file = key.to_file_string();
        let secret_b64 = file.split_once(':').unwrap().1;
        let debug = format!("{key:?}");
        assert!(!debug.contains(secret_b64), "{debug}");
        assert!(!debug.contains(&secret_b64[..20]), "{debug}");
    }

    #[test]
    fn tampered_public_half_is_rejected() {
        let mut bytes = pyspec().key.to_keypair_bytes();
        bytes[63] ^= 1;
        let text = format!("pyspec-1:{}", to_base64(&bytes));
        assert_eq!(
            SecretKey::parse(&text).unwrap_err(),
            SigningError::PublicHalfMismatch {
                name: "pyspec-1".into()
            }
        );
    }

    #[test]
    fn small_order_public_keys_are_rejected() {
        // The identity point (y = 1), of order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let text = format!("k:{}", to_base64(&identity));
        assert!(matches!(
            PublicKey::parse(&text),
            Err(SigningError::InvalidPublicKey { .. })
        ));
    }

    #[test]
    fn non_canonical_public_keys_are_rejected() {
        // y = p + k for k < 19 encodes y = k non-canonically; p = 2^255 - 19.
        let mut large_order_seen = false;
        for k in 0..19u8 {
            for sign in [0, 0x80] {
                let mut bytes = [0xffu8; 32];
                bytes[0] = 0xed + k;
                bytes[31] = 0x7f | sign;
                large_order_seen |=
                    VerifyingKey::from_bytes(&bytes).is_ok_and(|key| !key.is_weak());
                let text = format!("k:{}", to_base64(&bytes));
                assert!(PublicKey::parse(&text).is_err(), "{text}");
            }
        }
        // At least one of them is a point dalek accepts, so the canonical
        // check itself (not only the small-order one) is exercised.
        assert!(large_order_seen);
    }

    #[test]
    fn small_order_encodings_are_the_small_order_points() {
        for encoding in SMALL_ORDER_ENCODINGS {
            for sign in [0, 0x80] {
                let mut bytes = encoding;
                bytes[31] |= sign;
                assert!(has_small_order(&bytes));
                // Every one that decodes at all is of small order.
                if let Ok(point) = VerifyingKey::from_bytes(&bytes) {
                    assert!(point.is_weak(), "{bytes:02x?}");
                }
            }
        }
        // All 8 torsion points are covered: the multiples of a point of
        // order 8 (obtained by decoding the vector above).
        let order8 = VerifyingKey::from_bytes(&SMALL_ORDER_ENCODINGS[2])
            .unwrap()
            .to_edwards();
        let mut multiple = order8;
        for _ in 0..8 {
            assert!(has_small_order(&multiple.compress().to_bytes()));
            multiple += order8;
        }
        // An ordinary public key is not of small order.
        assert!(!has_small_order(&pyspec().public().to_bytes()));
    }

    #[test]
    fn small_order_r_is_rejected() {
        // With R = identity and S = 0, verification needs [h]A = identity;
        // it cannot hold for a real key, but the byte check rejects it first.
        let key = pyspec().public();
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert!(!key.verify_bytes(b"msg", &sig));
    }

    #[test]
    fn non_canonical_s_is_rejected() {
        // S + L is another encoding of S (L = the group order); libsodium
        // rejects it, and so must we, or signatures would be malleable.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let key = pyspec();
        let mut sig = key.sign(b"msg").bytes;
        assert!(key.public().verify_bytes(b"msg", &sig));
        let mut carry = 0u16;
        for (s, l) in sig[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        assert!(!key.public().verify_bytes(b"msg", &sig));
    }

    #[test]
    fn name_mismatch_does_not_verify() {
        let key = pyspec();
        let sig = key.sign(b"msg");
        assert!(key.public().verify(b"msg", &sig));
        let other = SecretKey::from_seed("other-1", &std::array::from_fn(|i| i as u8)).unwrap();
        assert!(!other.public().verify(b"msg", &sig));
    }
}
