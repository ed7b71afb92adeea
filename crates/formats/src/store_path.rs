//! Store paths: parsing, validation, and computing content-addressed paths.
//!
//! A [`StorePath`] is the base name `<hash>-<name>` of a path in a store; it
//! does not carry the store directory. A [`StoreDir`] turns it into a full
//! path and back, and computes new paths (docs/formats.md §2.5, §2.6).
//!
//! ```
//! use nixferry_formats::store_path::StoreDir;
//!
//! let dir = StoreDir::default();
//! let p = dir.parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt").unwrap();
//! assert_eq!(p.name(), "nixspec-hi.txt");
//! assert_eq!(p.hash_part(), "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b");
//! assert_eq!(dir.display(&p).to_string(), "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt");
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::hash::{self, nix32, HashAlgo, NixHash};

/// Number of nix32 characters in a store path's hash part.
pub const HASH_PART_LEN: usize = 32;

/// Maximum length of a store path name, in bytes (Nix's `checkName`,
/// docs/formats.md §2.5: a 211-byte name was accepted by Nix 2.8, 212 rejected).
pub const MAX_NAME_LEN: usize = 211;

/// Errors from parsing or making store paths.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorePathError {
    /// The path is not directly inside the store directory.
    NotInStore {
        /// The path as given.
        path: String,
        /// The store directory it was checked against.
        store_dir: String,
    },
    /// The base name is shorter than a hash part, a dash and one character.
    TooShort(String),
    /// The hash part has a character outside the nix32 alphabet.
    BadHashPart(String),
    /// The character after the hash part is not `-`.
    MissingDash(String),
    /// The name is empty or longer than 211 bytes.
    BadNameLength(String),
    /// The name has a character outside `[A-Za-z0-9+-._?=]`.
    BadNameChar {
        /// The offending name.
        name: String,
        /// The first forbidden character.
        ch: char,
    },
    /// The name is `.` or `..`, or starts with `.-` or `..-`.
    DotName(String),
    /// The store directory is not an absolute, normalised path.
    BadStoreDir(String),
    /// A content address that this kind of path cannot have.
    BadContentAddress(String),
}

impl fmt::Display for StorePathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInStore { path, store_dir } => {
                write!(f, "path '{path}' is not in the Nix store '{store_dir}'")
            }
            Self::TooShort(path) => write!(f, "store path '{path}' is too short"),
            Self::BadHashPart(path) => write!(f, "store path '{path}' has an invalid hash part"),
            Self::MissingDash(path) => {
                write!(f, "store path '{path}' has no '-' after its hash part")
            }
            Self::BadNameLength(name) => {
                write!(f, "store path name '{name}' must be 1 to 211 bytes long")
            }
            Self::BadNameChar { name, ch } => {
                write!(
                    f,
                    "store path name '{name}' contains the forbidden character {ch:?}"
                )
            }
            Self::DotName(name) => write!(f, "store path name '{name}' is not allowed"),
            Self::BadStoreDir(dir) => {
                write!(
                    f,
                    "store directory '{dir}' must be an absolute path without a trailing '/'"
                )
            }
            Self::BadContentAddress(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StorePathError {}

/// Whether `s` is a store path hash part: exactly [`HASH_PART_LEN`]
/// characters of Nix's base-32 alphabet ([`nix32::is_digit`]), as the
/// hash part of a [`StorePath`] and the name of a binary cache's
/// `<hashPart>.narinfo` are.
///
/// ```
/// use nixferry_formats::store_path::is_hash_part;
///
/// assert!(is_hash_part("7rjj86a15146cq1d3qy068lml7n8ykzm"));
/// assert!(!is_hash_part("7rjj86a15146cq1d3qy068lml7n8ykz")); // 31
/// assert!(!is_hash_part("7rjj86a15146cq1d3qy068lml7n8ykze")); // no 'e'
/// ```
pub fn is_hash_part(s: &str) -> bool {
    s.len() == HASH_PART_LEN && s.bytes().all(nix32::is_digit)
}

/// The name `nix-store --add` gives the store path it makes of the file
/// or tree at `path`: the last component of `path` made absolute, as given
/// (a final symlink is named, not followed); for a path ending in `..`,
/// the last component of the canonical path. `None` when there is none
/// (`/`) or it is not UTF-8; the name still has to pass [`validate_name`].
///
/// ```
/// use std::path::Path;
/// use nixferry_formats::store_path::added_name;
///
/// assert_eq!(added_name(Path::new("/srv/site/")).unwrap().as_deref(), Some("site"));
/// assert_eq!(added_name(Path::new("/")).unwrap(), None);
/// ```
///
/// # Errors
/// The current directory cannot be read (for a relative `path`).
pub fn added_name(path: &Path) -> std::io::Result<Option<String>> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let name = match abs.file_name() {
        Some(n) => Some(n.to_owned()),
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|c| c.file_name().map(ToOwned::to_owned)),
    };
    Ok(name.and_then(|n| n.into_string().ok()))
}

/// Checks a store path name against Nix's rules (docs/formats.md §2.5, with the newer
/// rule that rejects `.`/`..` names).
///
/// # Errors
/// [`StorePathError`] saying which rule the name breaks.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(StorePathError::BadNameLength(name.to_owned()));
    }
    // A table lookup per byte: this runs for every reference of every
    // narinfo parsed, so it is on the hot path.
    if let Some(pos) = bytes.iter().position(|&c| !NAME_CHARS[c as usize]) {
        let ch = name[pos..].chars().next().unwrap_or('\0');
        return Err(StorePathError::BadNameChar {
            name: name.to_owned(),
            ch,
        });
    }
    // Newer Nix: the first dash-separated component may not be "." or "..".
    if bytes[0] == b'.' {
        let first = name.split('-').next().unwrap_or(name);
        if first == "." || first == ".." {
            return Err(StorePathError::DotName(name.to_owned()));
        }
    }
    Ok(())
}

/// The bytes allowed in a store path name: `[A-Za-z0-9+-._?=]`.
const NAME_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=');
        c += 1;
    }
    t
};

/// The base name of a store path, `<32 nix32 chars>-<name>`, validated.
///
/// Equality, order and hashing are those of the base name's bytes, so
/// sorting store paths sorts them as Nix does (docs/formats.md §0, set order).
#[derive(Clone)]
pub struct StorePath {
    base: Base,
}

/// Most base names fit in this many bytes (a hash part, a dash and a name
/// of up to 29 bytes); those are kept inline, without an allocation. A
/// narinfo parse makes one store path per reference, so this saves an
/// allocation and a free per reference on the hottest path.
const INLINE_LEN: usize = 62;

/// Storage for a validated (hence ASCII) base name.
#[derive(Clone)]
enum Base {
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    Heap(Box<str>),
}

impl Base {
    fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE_LEN => {
                let mut bytes = [0u8; INLINE_LEN];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(s.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(s) => s.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Only validated ASCII is ever stored, so this cannot fail.
            Self::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Self::Heap(s) => s,
        }
    }
}

impl PartialEq for StorePath {
    fn eq(&self, other: &Self) -> bool {
        self.base.as_bytes() == other.base.as_bytes()
    }
}

impl Eq for StorePath {}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.base.as_bytes().cmp(other.base.as_bytes())
    }
}

impl std::hash::Hash for StorePath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.base.as_bytes().hash(state);
    }
}

impl StorePath {
    /// Parses and validates a base name such as `3pl2…-hi.txt`.
    ///
    /// # Errors
    /// [`StorePathError`] saying what is wrong.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let b = base.as_bytes();
        if b.len() < HASH_PART_LEN + 2 {
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        if !base.get(..HASH_PART_LEN).is_some_and(is_hash_part) {
            return Err(StorePathError::BadHashPart(base.to_owned()));
        }
        if b[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base.to_owned()));
        }
        validate_name(&base[HASH_PART_LEN + 1..])?;
        Ok(Self {
            base: Base::new(base),
        })
    }

    /// Makes a path from a 20-byte digest and a name.
    ///
    /// # Errors
    /// [`StorePathError`] if the name is invalid.
    pub fn from_digest(digest: &[u8; 20], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        let mut base = String::with_capacity(HASH_PART_LEN + 1 + name.len());
        base.push_str(&nix32::encode(digest));
        base.push('-');
        base.push_str(name);
        Ok(Self {
            base: Base::new(&base),
        })
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.as_str()[..HASH_PART_LEN]
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.as_str()[HASH_PART_LEN + 1..]
    }

    /// The whole base name.
    pub fn as_str(&self) -> &str {
        self.base.as_str()
    }

    /// The 20-byte digest the hash part encodes.
    pub fn digest(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        // Validated on construction, so decoding cannot fail.
        let _ = nix32::decode_into(self.hash_part().as_bytes(), &mut out);
        out
    }

    /// Whether this is a derivation (`.drv`).
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.as_str())
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::from_base_name(s)
    }
}

/// The store directory, `/nix/store` unless configured otherwise.
///
/// It is part of every store path hash, so a different directory gives
/// different paths for the same content.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreDir {
    dir: Box<str>,
}

impl Default for StoreDir {
    fn default() -> Self {
        Self {
            dir: "/nix/store".into(),
        }
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({})", self.dir)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir)
    }
}

/// How a fixed-output or content-addressed path hashed its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestion {
    /// The hash is over the file contents; the path is one regular file.
    Flat,
    /// The hash is over the NAR serialisation (`r:`).
    Recursive,
}

/// A content address (docs/formats.md §2.7): what a CA path's hash commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// `text:sha256:<nix32>`: a text file (`builtins.toFile`, `.drv` files).
    Text(NixHash),
    /// `fixed:[r:]<algo>:<nix32>`: a fixed-output path.
    Fixed {
        /// Flat or recursive (NAR) hashing.
        method: FileIngestion,
        /// The content hash.
        hash: NixHash,
    },
}

impl ContentAddress {
    /// Parses a CA string; the hash may be base16, nix32 or base64.
    ///
    /// # Errors
    /// [`StorePathError::BadContentAddress`] with the reason.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let bad = |why: &str| StorePathError::BadContentAddress(format!("{why}: '{s}'"));
        if let Some(rest) = s.strip_prefix("text:") {
            let (algo, digest) = rest
                .split_once(':')
                .ok_or_else(|| bad("content address has no hash"))?;
            if algo != "sha256" {
                return Err(bad("text content address must use sha256"));
            }
            let h = NixHash::parse_unprefixed(digest, HashAlgo::Sha256)
                .map_err(|e| bad(&e.to_string()))?;
            Ok(Self::Text(h))
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            let (method, rest) = match rest.strip_prefix("r:") {
                Some(r) => (FileIngestion::Recursive, r),
                None => (FileIngestion::Flat, rest),
            };
            let (algo, digest) = rest
                .split_once(':')
                .ok_or_else(|| bad("content address has no hash"))?;
            let algo = HashAlgo::parse(algo).map_err(|e| bad(&e.to_string()))?;
            let hash = NixHash::parse_unprefixed(digest, algo).map_err(|e| bad(&e.to_string()))?;
            Ok(Self::Fixed { method, hash })
        } else {
            Err(bad("unknown content address method"))
        }
    }

    /// The content hash.
    pub fn hash(&self) -> &NixHash {
        match self {
            Self::Text(h) | Self::Fixed { hash: h, .. } => h,
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(h) => write!(f, "text:sha256:{}", h.to_nix32()),
            Self::Fixed { method, hash } => {
                let r = if *method == FileIngestion::Recursive {
                    "r:"
                } else {
                    ""
                };
                write!(f, "fixed:{r}{}:{}", hash.algo(), hash.to_nix32())
            }
        }
    }
}

impl FromStr for ContentAddress {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::parse(s)
    }
}

/// A store path shown with its store directory.
pub struct DisplayPath<'a> {
    dir: &'a StoreDir,
    path: &'a StorePath,
}

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dir.dir, self.path.as_str())
    }
}

impl StoreDir {
    /// A store directory: an absolute path without a trailing `/`, `.` or `..`
    /// components, and without characters that would break fingerprints.
    ///
    /// # Errors
    /// [`StorePathError::BadStoreDir`].
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let ok = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && !dir.contains("//")
            && !dir
                .split('/')
                .any(|c| c == "." || c == ".." || c.contains([':', ';', ',', '\n', '\0']));
        if ok {
            Ok(Self { dir: dir.into() })
        } else {
            Err(StorePathError::BadStoreDir(dir.to_owned()))
        }
    }

    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.dir
    }

    /// Parses a full store path. A path below a store path
    /// (`/nix/store/<hash>-x/bin`) is rejected; see [`StoreDir::parse_prefix`].
    ///
    /// # Errors
    /// [`StorePathError`] if the path is not directly in this store or its
    /// base name is invalid.
    pub fn parse(&self, path: &str) -> Result<StorePath, StorePathError> {
        let base = path
            .strip_prefix(&*self.dir)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|b| !b.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: path.to_owned(),
                store_dir: self.dir.to_string(),
            })?;
        StorePath::from_base_name(base)
    }

    /// Parses a path inside the store, returning the store path and the rest
    /// (`/nix/store/<hash>-x/bin/sh` gives the path and `bin/sh`).
    ///
    /// # Errors
    /// As [`StoreDir::parse`].
    pub fn parse_prefix<'p>(&self, path: &'p str) -> Result<(StorePath, &'p str), StorePathError> {
        let rest = path
            .strip_prefix(&*self.dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: path.to_owned(),
                store_dir: self.dir.to_string(),
            })?;
        let (base, sub) = rest.split_once('/').unwrap_or((rest, ""));
        Ok((StorePath::from_base_name(base)?, sub))
    }

    /// Shows `path` as a full path in this store.
    pub fn display<'a>(&'a self, path: &'a StorePath) -> DisplayPath<'a> {
        DisplayPath { dir: self, path }
    }

    /// The full path as a string.
    pub fn full(&self, path: &StorePath) -> String {
        self.display(path).to_string()
    }

    /// Nix's `makeStorePath`: the path whose fingerprint is
    /// `<kind>:sha256:<hex of inner>:<store dir>:<name>` (docs/formats.md §2.6).
    ///
    /// # Errors
    /// [`StorePathError`] if `name` is invalid.
    pub fn make_path(
        &self,
        kind: &str,
        inner: &NixHash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        validate_name(name)?;
        let fingerprint = format!(
            "{kind}:{}:{}:{}:{name}",
            inner.algo(),
            inner.to_hex(),
            self.dir
        );
        let digest: [u8; 20] = hash::compress(&hash::sha256(fingerprint.as_bytes()));
        StorePath::from_digest(&digest, name)
    }

    fn kind_with_refs<'r>(
        &self,
        kind: &str,
        refs: impl IntoIterator<Item = &'r StorePath>,
        self_ref: bool,
    ) -> String {
        let mut full: Vec<String> = refs.into_iter().map(|r| self.full(r)).collect();
        full.sort();
        full.dedup();
        let mut s = kind.to_owned();
        for r in full {
            s.push(':');
            s.push_str(&r);
        }
        if self_ref {
            s.push_str(":self");
        }
        s
    }

    /// The path of a text file (`builtins.toFile`, a `.drv`): `hash` is the
    /// SHA-256 of the contents, `refs` the paths it refers to.
    ///
    /// # Errors
    /// [`StorePathError`] if the name is invalid or `hash` is not SHA-256.
    pub fn make_text_path<'r>(
        &self,
        name: &str,
        hash: &NixHash,
        refs: impl IntoIterator<Item = &'r StorePath>,
    ) -> Result<StorePath, StorePathError> {
        if hash.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::BadContentAddress(
                "text paths must be hashed with sha256".into(),
            ));
        }
        self.make_path(&self.kind_with_refs("text", refs, false), hash, name)
    }

    /// The path of a fixed-output or imported path. Recursive SHA-256 gives
    /// a `source` path (what `nix-store --add` makes) and may have references;
    /// every other method gives an `output:out` path, which may not.
    ///
    /// # Errors
    /// [`StorePathError`] if the name is invalid or references were given
    /// where the method allows none.
    pub fn make_fixed_output_path<'r>(
        &self,
        name: &str,
        method: FileIngestion,
        hash: &NixHash,
        refs: impl IntoIterator<Item = &'r StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestion::Recursive && hash.algo() == HashAlgo::Sha256 {
            return self.make_path(&self.kind_with_refs("source", refs, self_ref), hash, name);
        }
        if self_ref || refs.into_iter().next().is_some() {
            return Err(StorePathError::BadContentAddress(
                "fixed-output paths other than recursive sha256 cannot have references".into(),
            ));
        }
        let r = if method == FileIngestion::Recursive {
            "r:"
        } else {
            ""
        };
        let inner = format!("fixed:out:{r}{}:{}:", hash.algo(), hash.to_hex());
        let inner = NixHash::digest(HashAlgo::Sha256, inner.as_bytes());
        self.make_path("output:out", &inner, name)
    }

    /// The path a content address gives, with `refs` excluding the path
    /// itself and `self_ref` saying whether it refers to itself.
    ///
    /// # Errors
    /// As [`StoreDir::make_text_path`] and [`StoreDir::make_fixed_output_path`];
    /// a text path cannot refer to itself.
    pub fn make_ca_path<'r>(
        &self,
        name: &str,
        ca: &ContentAddress,
        refs: impl IntoIterator<Item = &'r StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        match ca {
            ContentAddress::Text(h) => {
                if self_ref {
                    return Err(StorePathError::BadContentAddress(
                        "text paths cannot refer to themselves".into(),
                    ));
                }
                self.make_text_path(name, h, refs)
            }
            ContentAddress::Fixed { method, hash } => {
                self.make_fixed_output_path(name, *method, hash, refs, self_ref)
            }
        }
    }

    /// Whether `path`'s CA claim holds: recomputing the path from `ca`, its
    /// name and `references` (which may include `path` itself) gives `path`.
    /// Such a path needs no signature (docs/formats.md §2.7, §4.4).
    pub fn verify_ca<'r>(
        &self,
        path: &StorePath,
        ca: &ContentAddress,
        references: impl IntoIterator<Item = &'r StorePath>,
    ) -> bool {
        let mut self_ref = false;
        let others: Vec<&StorePath> = references
            .into_iter()
            .filter(|r| {
                let is_self = *r == path;
                self_ref |= is_self;
                !is_self
            })
            .collect();
        self.make_ca_path(path.name(), ca, others, self_ref)
            .is_ok_and(|p| &p == path)
    }

    /// The output path of an input-addressed derivation, from its
    /// `hashDerivationModulo` (docs/formats.md §2.8).
    ///
    /// # Errors
    /// [`StorePathError`] if the resulting name is invalid.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &NixHash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if output == "out" {
            drv_name.to_owned()
        } else {
            format!("{drv_name}-{output}")
        };
        self.make_path(&format!("output:{output}"), drv_hash, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(validate_name(&"a".repeat(211)).is_ok());
        assert!(validate_name(&"a".repeat(212)).is_err());
        assert!(validate_name("+?=_.-").is_ok());
        assert!(validate_name(".nixspec-dot").is_ok());
        for bad in ["", ".", "..", ".-x", "..-x", "a~b", "a b", "é", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_name_rules() {
        let good = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
        assert!(StorePath::from_base_name(good).is_ok());
        let underscore = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b_x";
        assert!(matches!(
            StorePath::from_base_name(underscore),
            Err(StorePathError::MissingDash(_))
        ));
        let bad_hash = "epl2infwzaw2zw5fxxp3pvm3xasr0w4b-x";
        assert!(matches!(
            StorePath::from_base_name(bad_hash),
            Err(StorePathError::BadHashPart(_))
        ));
        assert!(StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-").is_err());
    }

    #[test]
    fn inline_and_heap_names_compare_as_bytes() {
        let h = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b";
        let short = StorePath::from_base_name(&format!("{h}-a")).unwrap();
        let long_name = "a".repeat(100);
        let long = StorePath::from_base_name(&format!("{h}-{long_name}")).unwrap();
        let edge = StorePath::from_base_name(&format!("{h}-{}", "b".repeat(29))).unwrap();
        assert!(matches!(edge.base, Base::Inline { .. }));
        assert!(matches!(long.base, Base::Heap(_)));
        assert_eq!(long.name(), long_name);
        assert!(short < long && long < edge);
        assert_eq!(long.clone(), long);
        let mut set = std::collections::HashSet::new();
        set.insert(long.clone());
        assert!(set.contains(&StorePath::from_base_name(long.as_str()).unwrap()));
    }

    #[test]
    fn full_paths() {
        let dir = StoreDir::default();
        assert!(dir
            .parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-x/y")
            .is_err());
        let (p, rest) = dir
            .parse_prefix("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-x/bin/sh")
            .unwrap();
        assert_eq!((p.name(), rest), ("x", "bin/sh"));
        assert!(dir
            .parse("/nix/storex/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-x")
            .is_err());
        assert!(StoreDir::new("/nix/store/").is_err());
        assert!(StoreDir::new("relative").is_err());
        assert!(StoreDir::new("/gnu/store").is_ok());
    }

    #[test]
    fn ca_strings_round_trip() {
        for s in [
            "fixed:r:sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d",
            "fixed:sha256:193s6bfb4ncbr0d3rpb177cac43b2z2h3afxi7grcswgci346hwg",
            "fixed:r:sha1:2j93pc03sl6nlzsbg4glz43lpydk7n8f",
            "text:sha256:0ix4jahrkll5zg01wandq78jw3ab30q4nscph67rniqg5x7r0j59",
        ] {
            assert_eq!(ContentAddress::parse(s).unwrap().to_string(), s);
        }
        assert!(ContentAddress::parse("text:sha1:2j93pc03sl6nlzsbg4glz43lpydk7n8f").is_err());
        assert!(ContentAddress::parse("nar:sha256:x").is_err());
    }
}
