//! Hash algorithms and the textual encodings Nix uses for them.
//!
//! Nix prints hashes in four ways (docs/formats.md §2.3): base16, its own base-32
//! ("nix32"), base64, and SRI (`sha256-<base64>`). [`NixHash`] parses every
//! form Nix accepts and prints each of them.
//!
//! ```
//! use nixferry_formats::hash::{HashAlgo, NixHash};
//!
//! let h = NixHash::digest(HashAlgo::Sha256, b"abc");
//! assert_eq!(
//!     h.to_string(),
//!     "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
//! );
//! assert_eq!(NixHash::parse(&h.to_sri()).unwrap(), h);
//! ```

use std::fmt;
use std::io::{self, Write};

use base64::Engine as _;
use sha2::Digest as _;

/// Errors from parsing hashes and hash encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashError {
    /// The algorithm name is not one of md5, sha1, sha256, sha512.
    UnknownAlgo(String),
    /// The string has no algorithm prefix where one is required.
    MissingAlgo(String),
    /// The encoded digest has a length that fits no encoding of this algorithm.
    BadLength {
        /// The hash text as given.
        hash: String,
        /// The algorithm it was parsed for.
        algo: HashAlgo,
    },
    /// A character outside the encoding's alphabet, or non-zero excess bits.
    BadEncoding {
        /// `base16`, `base-32` or `base64`.
        encoding: &'static str,
        /// The hash text as given.
        hash: String,
    },
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAlgo(algo) => write!(f, "unknown hash algorithm '{algo}'"),
            Self::MissingAlgo(hash) => write!(f, "hash '{hash}' does not include a type"),
            Self::BadLength { hash, algo } => {
                write!(f, "hash '{hash}' has wrong length for hash type '{algo}'")
            }
            Self::BadEncoding { encoding, hash } => write!(f, "invalid {encoding} hash '{hash}'"),
        }
    }
}

impl std::error::Error for HashError {}

/// A hash algorithm Nix supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    /// MD5 (16 bytes); only for fixed-output content addresses.
    Md5,
    /// SHA-1 (20 bytes); only for fixed-output content addresses.
    Sha1,
    /// SHA-256 (32 bytes): NAR hashes, store paths, almost everything.
    Sha256,
    /// SHA-512 (64 bytes); only for fixed-output content addresses.
    Sha512,
}

impl HashAlgo {
    /// All algorithms, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512];

    /// The name as Nix writes it (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Parses an algorithm name (`md5`, `sha1`, `sha256`, `sha512`).
    ///
    /// # Errors
    /// [`HashError::UnknownAlgo`] for any other name.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| HashError::UnknownAlgo(s.to_owned()))
    }

    fn base16_len(self) -> usize {
        self.size() * 2
    }

    fn base64_len(self) -> usize {
        self.size().div_ceil(3) * 4
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

/// Nix's base-32 encoding (docs/formats.md §2.2).
///
/// The digest is read as one little-endian integer and written most
/// significant digit first, with the alphabet `0-9a-z` minus `e o u t`.
pub mod nix32 {
    /// The 32 digits, index = value.
    pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

    const INVALID: u8 = 0xff;
    const DECODE: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 32 {
            t[ALPHABET[i] as usize] = i as u8;
            i += 1;
        }
        t
    };

    /// Length of the encoding of `n` bytes: `ceil(8n / 5)`.
    pub const fn encoded_len(n: usize) -> usize {
        (n * 8).div_ceil(5)
    }

    /// Whether `c` is a nix32 digit.
    #[inline]
    pub fn is_digit(c: u8) -> bool {
        DECODE[c as usize] != INVALID
    }

    /// Encodes `bytes` into `out`, which must be `encoded_len(bytes.len())` long.
    ///
    /// # Panics
    /// If `out` has the wrong length (a caller bug, never input-dependent).
    pub fn encode_into(bytes: &[u8], out: &mut [u8]) {
        let len = encoded_len(bytes.len());
        assert_eq!(out.len(), len, "nix32 output buffer has the wrong length");
        for (k, slot) in out.iter_mut().enumerate() {
            let n = len - 1 - k;
            let b = n * 5;
            let i = b / 8;
            let j = b % 8;
            let lo = bytes[i] >> j;
            let hi = if i + 1 < bytes.len() {
                // The shift may discard bits; that is intended.
                ((bytes[i + 1] as u16) << (8 - j)) as u8
            } else {
                0
            };
            *slot = ALPHABET[((lo | hi) & 0x1f) as usize];
        }
    }

    /// Encodes `bytes` as a nix32 string.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = vec![0u8; encoded_len(bytes.len())];
        encode_into(bytes, &mut out);
        // The alphabet is ASCII.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Decodes a nix32 string of exactly `encoded_len(out.len())` characters.
    ///
    /// Returns `None` on a bad length, a character outside the alphabet, or
    /// set bits beyond `8 * out.len()` (Nix rejects those too).
    pub fn decode_into(s: &[u8], out: &mut [u8]) -> Option<()> {
        if s.len() != encoded_len(out.len()) {
            return None;
        }
        out.fill(0);
        let size = out.len();
        for (k, &c) in s.iter().enumerate() {
            let digit = DECODE[c as usize];
            if digit == INVALID {
                return None;
            }
            let n = s.len() - 1 - k;
            let b = n * 5;
            let i = b / 8;
            let j = b % 8;
            out[i] |= digit << j;
            let carry = ((digit as u16) >> (8 - j)) as u8;
            if i + 1 < size {
                out[i + 1] |= carry;
            } else if carry != 0 {
                return None;
            }
        }
        Some(())
    }

    /// Decodes a nix32 string into a byte vector of `size` bytes.
    pub fn decode(s: &str, size: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; size];
        decode_into(s.as_bytes(), &mut out)?;
        Some(out)
    }
}

/// Lowercase base16.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decodes base16 (either case) into `out`, which must be half the length of `s`.
fn decode_hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

/// Decodes hex of any even length.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0u8; s.len() / 2];
    decode_hex_into(s.as_bytes(), &mut out)?;
    Some(out)
}

/// Standard base64 with padding, as Nix writes it.
pub fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (with or without trailing padding).
pub fn from_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()
}

/// A digest together with its algorithm.
///
/// `Display` prints Nix's default form, `<algo>:<nix32>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NixHash {
    algo: HashAlgo,
    digest: [u8; 64],
}

impl NixHash {
    /// Wraps a digest. Returns `None` when its length does not match `algo`.
    pub fn from_bytes(algo: HashAlgo, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != algo.size() {
            return None;
        }
        let mut digest = [0u8; 64];
        digest[..bytes.len()].copy_from_slice(bytes);
        Some(Self { algo, digest })
    }

    /// A SHA-256 hash from its 32 bytes.
    pub fn sha256(bytes: [u8; 32]) -> Self {
        let mut digest = [0u8; 64];
        digest[..32].copy_from_slice(&bytes);
        Self {
            algo: HashAlgo::Sha256,
            digest,
        }
    }

    /// Hashes `data` with `algo`.
    pub fn digest(algo: HashAlgo, data: &[u8]) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digest[..self.algo.size()]
    }

    /// The digest in nix32, without a prefix.
    pub fn to_nix32(&self) -> String {
        nix32::encode(self.as_bytes())
    }

    /// The digest in lowercase base16, without a prefix.
    pub fn to_hex(&self) -> String {
        to_hex(self.as_bytes())
    }

    /// The digest in base64, without a prefix.
    pub fn to_base64(&self) -> String {
        to_base64(self.as_bytes())
    }

    /// The SRI form, `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// `sha256:<hex>`, the form of the local store database.
    pub fn to_prefixed_hex(&self) -> String {
        format!("{}:{}", self.algo, self.to_hex())
    }

    /// Parses any prefixed form Nix accepts: `algo:<hex|nix32|base64>` or
    /// SRI `algo-<base64>` (docs/formats.md §2.3).
    ///
    /// # Errors
    /// [`HashError`] naming what is wrong; an unprefixed hash is
    /// [`HashError::MissingAlgo`].
    pub fn parse(s: &str) -> Result<Self, HashError> {
        if let Some((algo, rest)) = s.split_once(':') {
            Self::parse_unprefixed(rest, HashAlgo::parse(algo)?)
        } else if let Some((algo, rest)) = s.split_once('-') {
            let algo = HashAlgo::parse(algo)?;
            let bytes = from_base64(rest).ok_or_else(|| HashError::BadEncoding {
                encoding: "base64",
                hash: s.to_owned(),
            })?;
            Self::from_bytes(algo, &bytes).ok_or_else(|| HashError::BadLength {
                hash: s.to_owned(),
                algo,
            })
        } else {
            Err(HashError::MissingAlgo(s.to_owned()))
        }
    }

    /// Parses a hash that may or may not carry a prefix, where the context
    /// says the algorithm is `algo` (the serve protocol's `AddToStoreNar`,
    /// the local store database). A prefix, when present, is taken as given.
    ///
    /// # Errors
    /// As [`NixHash::parse`] and [`NixHash::parse_unprefixed`].
    pub fn parse_maybe_prefixed(s: &str, algo: HashAlgo) -> Result<Self, HashError> {
        if s.contains(':') || s.contains('-') {
            Self::parse(s)
        } else {
            Self::parse_unprefixed(s, algo)
        }
    }

    /// Parses an unprefixed digest of a known algorithm, choosing the encoding
    /// by length: base16, nix32 or base64.
    ///
    /// # Errors
    /// [`HashError::BadLength`] or [`HashError::BadEncoding`].
    pub fn parse_unprefixed(s: &str, algo: HashAlgo) -> Result<Self, HashError> {
        let mut digest = [0u8; 64];
        let out = &mut digest[..algo.size()];
        let b = s.as_bytes();
        let (ok, encoding) = if b.len() == algo.base16_len() {
            (decode_hex_into(b, out).is_some(), "base16")
        } else if b.len() == nix32::encoded_len(algo.size()) {
            (nix32::decode_into(b, out).is_some(), "base-32")
        } else if b.len() == algo.base64_len() {
            match from_base64(s) {
                Some(v) if v.len() == algo.size() => {
                    out.copy_from_slice(&v);
                    (true, "base64")
                }
                _ => (false, "base64"),
            }
        } else {
            return Err(HashError::BadLength {
                hash: s.to_owned(),
                algo,
            });
        };
        if ok {
            Ok(Self { algo, digest })
        } else {
            Err(HashError::BadEncoding {
                encoding,
                hash: s.to_owned(),
            })
        }
    }
}

impl fmt::Display for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 103];
        let n = nix32::encoded_len(self.algo.size());
        nix32::encode_into(self.as_bytes(), &mut buf[..n]);
        write!(f, "{}:", self.algo)?;
        // nix32 digits are ASCII.
        f.write_str(std::str::from_utf8(&buf[..n]).unwrap_or_default())
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({self})")
    }
}

impl std::str::FromStr for NixHash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        Self::parse(s)
    }
}

/// An incremental hasher for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algo`.
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Self::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Self::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Self::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The final hash.
    pub fn finish(self) -> NixHash {
        let mut digest = [0u8; 64];
        let algo = match self {
            Self::Md5(h) => {
                digest[..16].copy_from_slice(&h.finalize());
                HashAlgo::Md5
            }
            Self::Sha1(h) => {
                digest[..20].copy_from_slice(&h.finalize());
                HashAlgo::Sha1
            }
            Self::Sha256(h) => {
                digest[..32].copy_from_slice(&h.finalize());
                HashAlgo::Sha256
            }
            Self::Sha512(h) => {
                digest.copy_from_slice(&h.finalize());
                HashAlgo::Sha512
            }
        };
        NixHash { algo, digest }
    }
}

/// SHA-256 and byte count of a stream, shared by [`HashingWriter`] and
/// [`HashingReader`]: exactly what `narHash` and `narSize` need.
#[derive(Clone, Default)]
struct Sha256Count {
    hasher: sha2::Sha256,
    count: u64,
}

impl Sha256Count {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.count += data.len() as u64;
    }

    fn finish(self) -> (NixHash, u64) {
        let digest: [u8; 32] = self.hasher.finalize().into();
        (NixHash::sha256(digest), self.count)
    }
}

/// A writer that hashes (SHA-256) and counts everything written through it,
/// then passes it on to an inner writer.
///
/// This is how a NAR is hashed while it streams: `narHash` and `narSize` come
/// out of [`HashingWriter::finish`].
pub struct HashingWriter<W> {
    inner: W,
    state: Sha256Count,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            state: Sha256Count::default(),
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.state.count
    }

    /// Returns the inner writer, the SHA-256 of all bytes and their count.
    pub fn finish(self) -> (W, NixHash, u64) {
        let (hash, count) = self.state.finish();
        (self.inner, hash, count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.state.update(&buf[..n]);
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.state.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes (SHA-256) and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    state: Sha256Count,
}

impl<R: io::Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: Sha256Count::default(),
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.state.count
    }

    /// Returns the inner reader, the SHA-256 of all bytes read and their count.
    pub fn finish(self) -> (R, NixHash, u64) {
        let (hash, count) = self.state.finish();
        (self.inner, hash, count)
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.update(&buf[..n]);
        Ok(n)
    }
}

/// SHA-256 of `data` as raw bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// XOR-folds `hash` into `N` bytes (Nix's `compressHash`, docs/formats.md §2.4).
pub fn compress<const N: usize>(hash: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in hash.iter().enumerate() {
        out[i % N] ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix32_known_values() {
        let h = NixHash::digest(HashAlgo::Sha256, b"");
        assert_eq!(
            h.to_nix32(),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        let h = NixHash::digest(HashAlgo::Md5, b"");
        assert_eq!(h.to_nix32(), "3y8bwfr609h3lh9ch0izcqq7fl");
    }

    #[test]
    fn nix32_rejects_excess_bits() {
        let all_z = "z".repeat(52);
        assert!(nix32::decode(&all_z, 32).is_none());
        let one_z = format!("1{}", "z".repeat(51));
        assert_eq!(nix32::decode(&one_z, 32).unwrap(), vec![0xff; 32]);
    }

    #[test]
    fn nix32_round_trips_all_sizes() {
        for size in 0..70 {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 37 + 11) as u8).collect();
            let s = nix32::encode(&bytes);
            assert_eq!(s.len(), nix32::encoded_len(size));
            assert_eq!(nix32::decode(&s, size).unwrap(), bytes);
        }
    }

    #[test]
    fn parse_all_forms() {
        let h = NixHash::digest(HashAlgo::Sha256, b"abc");
        for s in [
            h.to_string(),
            h.to_sri(),
            h.to_prefixed_hex(),
            h.to_prefixed_hex()
                .to_uppercase()
                .replace("SHA256", "sha256"),
            format!("sha256:{}", h.to_base64()),
        ] {
            assert_eq!(NixHash::parse(&s).unwrap(), h, "{s}");
        }
        assert!(matches!(
            NixHash::parse(&h.to_nix32()),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            NixHash::parse("sha256:abc"),
            Err(HashError::BadLength { .. })
        ));
        assert!(matches!(
            NixHash::parse("blake3:abc"),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(NixHash::parse("sha256-AAAA").is_err());
    }

    #[test]
    fn compress_folds() {
        let h: Vec<u8> = (0..32).collect();
        let c: [u8; 20] = compress(&h);
        assert_eq!(c[0], 20);
        assert_eq!(c[11], 11 ^ 31);
        assert_eq!(c[12], 12);
    }
}
