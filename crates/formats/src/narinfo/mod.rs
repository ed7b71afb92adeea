//! `.narinfo` and `nix-cache-info` files: binary cache metadata (docs/formats.md §3).
//!
//! A narinfo describes one store path in a binary cache: where its NAR is
//! (`URL`), how it is compressed, its hashes and sizes, its references, and
//! its signatures. [`NarInfo`] reads one, checks it, verifies and adds
//! signatures, and writes it back.
//!
//! ```
//! use nixferry_formats::narinfo::{Compression, NarInfo};
//! use nixferry_formats::signing::TrustedKeys;
//!
//! let text = "\
//! StorePath: /nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt
//! URL: nar/0g0ssavkvgjfrghal7p8p0gy0bssv0szb2q8v8119mjbmmcqcrg5.nar.xz
//! Compression: xz
//! FileHash: sha256:0g0ssavkvgjfrghal7p8p0gy0bssv0szb2q8v8119mjbmmcqcrg5
//! FileSize: 124
//! NarHash: sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2
//! NarSize: 120
//! References: \n\
//! Sig: nixspec-test-1:dC/2jfoj5MiwFYu3xkWNp5IfZylowBbhYpbGBLk8kOaekXEVC7g0L5SFIge+MaF2po2EqAuI7fjL6F4vgmHLCw==
//! CA: fixed:sha256:193s6bfb4ncbr0d3rpb177cac43b2z2h3afxi7grcswgci346hwg
//! ";
//! let info = NarInfo::parse(text)?;
//! assert_eq!(info.compression(), &Compression::Xz);
//! assert_eq!(info.nar_size(), 120);
//! assert_eq!(info.render(), text); // lossless
//!
//! let trusted = TrustedKeys::parse_list("nixspec-test-1:bc946palCUVXUEMoh7m7Xalyuy4ehrYSOGKw+xESEGo=")?;
//! assert_eq!(info.verify(&trusted)?, "nixspec-test-1");
//! # Ok::<(), nixferry_formats::Error>(())
//! ```
//!
//! # Design
//!
//! A parsed [`NarInfo`] keeps its text and, for every line, the byte offsets
//! of its key and value. [`NarInfo::render`] therefore gives back the input
//! byte for byte: field order, unknown fields, extra spaces and all. That
//! matters because a cache may be read by other tools, and because a
//! narinfo's signature must keep matching the bytes a mirror serves. The
//! typed values (store path, hashes, sizes, references, CA) are parsed once;
//! text values (`URL`, `System`, `Sig`) are borrowed from the text.
//!
//! New narinfos are written from [`NarInfoFields`] in exactly Nix 2.8's field
//! order ([`NarInfo::new`]); [`NarInfo::sign`] inserts a `Sig` line where
//! Nix would write it.
//!
//! Parsing checks each field on its own. [`NarInfo::check`] adds the checks
//! that relate fields to each other and that Nix does not make (such as a
//! CA claim that does not give the store path, or a URL that climbs out of
//! the cache).
//!
//! # Nix 2.8 vs nixferry
//!
//! nixferry reads what Nix 2.8 reads (docs/formats.md §3.3, "How the 2.8 reader
//! tokenises a narinfo"), except where 2.8's leniency would silently misread
//! a document or let two readers see different values. Every case of
//! `testdata/vectors/narinfo/nix-2.8-narinfo-parser-results.txt` is a test in
//! `tests/it/narinfo.rs`.
//!
//! | input | Nix 2.8 | nixferry |
//! |---|---|---|
//! | `Key:value` (no space after `:`) | drops the value's first byte (`URL:nar/x` reads `ar/x`) | [`MissingSpace`](NarInfoError::MissingSpace): never alter a value silently |
//! | last line without `\n` | corrupt | [`MissingNewline`](NarInfoError::MissingNewline) |
//! | blank line | corrupt | [`BlankLine`](NarInfoError::BlankLine) |
//! | line without `:` | corrupt (the key search runs on into the next line) | [`MissingColon`](NarInfoError::MissingColon) |
//! | CRLF line endings | `\r` stays in values; `StorePath` then fails | [`CarriageReturn`](NarInfoError::CarriageReturn) for a `\r` anywhere |
//! | scalar field twice (`StorePath`, `URL`, `Compression`, `FileHash`, `FileSize`, `NarHash`, `NarSize`, `Deriver`, `System`) | the last one wins | [`DuplicateField`](NarInfoError::DuplicateField): no writer repeats them, and a reader that takes the first copy would see another narinfo (a parser differential) |
//! | `References` or `CA` twice | corrupt, unless the first is empty | [`DuplicateField`](NarInfoError::DuplicateField) always |
//! | the same reference twice in `References` | collapsed into a set | [`DuplicateReference`](ValueError::DuplicateReference) |
//! | store path without `-` after the hash part | accepted | rejected, as newer Nix does (docs/formats.md §2.5) |
//! | `FileSize`, `NarSize` | `boost::lexical_cast` | ASCII digits only (leading zeros allowed: they do not change the value) |
//! | `Sig` twice | kept once (a set) | both lines kept; verification counts distinct values, as Nix |
//! | malformed `Sig` | kept (newer Nix: corrupt) | kept; it simply does not verify |
//! | size | unbounded | at most [`MAX_NARINFO_LEN`] bytes, lines at most [`MAX_LINE_LEN`] |
//!
//! Both read alike in every other respect: unknown keys are ignored (and here
//! kept for rendering); fields may come in any order; `StorePath`, `NarHash`,
//! a non-empty `URL` and a non-zero `NarSize` are required; `NarHash` and
//! `FileHash` take any prefixed or SRI hash but not a bare one; `References`
//! are base names separated by one or more spaces; `Deriver: unknown-deriver`
//! and an empty `CA` mean none; an absent or empty `Compression` means bzip2
//! and an unknown one is kept ([`Compression::Other`]).
//!
//! `nix-cache-info` ([`CacheInfo`], docs/formats.md §3.2) is read as leniently as Nix
//! reads it.

mod build;
mod cache_info;
mod check;
mod compression;
mod error;
mod parse;

pub use build::NarInfoFields;
pub use cache_info::{CacheInfo, CacheInfoError};
pub use check::Inconsistency;
pub use compression::Compression;
pub use error::{NarInfoError, ValueError};
pub use parse::{MAX_LINE_LEN, MAX_NARINFO_LEN};

use std::fmt;

use crate::hash::NixHash;
use crate::signing::{SecretKey, TrustedKeys, VerifyError};
use crate::store_path::{ContentAddress, StoreDir, StorePath};

/// A narinfo field that Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `StorePath`: the full store path.
    StorePath,
    /// `URL`: where the NAR file is, relative to the cache root.
    Url,
    /// `Compression`: see [`Compression`].
    Compression,
    /// `FileHash`: the hash of the NAR file as stored.
    FileHash,
    /// `FileSize`: the size of the NAR file as stored.
    FileSize,
    /// `NarHash`: the hash of the uncompressed NAR.
    NarHash,
    /// `NarSize`: the size of the uncompressed NAR.
    NarSize,
    /// `References`: the base names of the paths this one refers to.
    References,
    /// `Deriver`: the base name of the `.drv` that built the path.
    Deriver,
    /// `System`: free text such as `x86_64-linux` (Hydra writes it).
    System,
    /// `Sig`: one signature, `keyname:base64`; repeatable.
    Sig,
    /// `CA`: the content address (docs/formats.md §2.7).
    Ca,
}

impl Field {
    /// Every field, in the order Nix 2.8 writes them (docs/formats.md §3.3).
    pub const ALL: [Field; 12] = [
        Self::StorePath,
        Self::Url,
        Self::Compression,
        Self::FileHash,
        Self::FileSize,
        Self::NarHash,
        Self::NarSize,
        Self::References,
        Self::Deriver,
        Self::System,
        Self::Sig,
        Self::Ca,
    ];

    /// The key as written before the `:`.
    pub fn key(self) -> &'static str {
        match self {
            Self::StorePath => "StorePath",
            Self::Url => "URL",
            Self::Compression => "Compression",
            Self::FileHash => "FileHash",
            Self::FileSize => "FileSize",
            Self::NarHash => "NarHash",
            Self::NarSize => "NarSize",
            Self::References => "References",
            Self::Deriver => "Deriver",
            Self::System => "System",
            Self::Sig => "Sig",
            Self::Ca => "CA",
        }
    }

    /// The field with this key (case-sensitive, as in Nix).
    pub fn from_key(key: &str) -> Option<Self> {
        // A `match` rather than a search of `ALL`: this runs for every line.
        Some(match key {
            "StorePath" => Self::StorePath,
            "URL" => Self::Url,
            "Compression" => Self::Compression,
            "FileHash" => Self::FileHash,
            "FileSize" => Self::FileSize,
            "NarHash" => Self::NarHash,
            "NarSize" => Self::NarSize,
            "References" => Self::References,
            "Deriver" => Self::Deriver,
            "System" => Self::System,
            "Sig" => Self::Sig,
            "CA" => Self::Ca,
            _ => return None,
        })
    }

    /// Whether the field may appear more than once.
    pub fn is_repeatable(self) -> bool {
        self == Self::Sig
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One line of a narinfo, as byte offsets into its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line {
    /// The first byte of the key.
    start: usize,
    /// The `:` after the key; the value starts two bytes later, after `": "`.
    colon: usize,
    /// The `\n` that ends the line.
    end: usize,
    /// `None` for a key Nix does not know.
    field: Option<Field>,
}

impl Line {
    fn key<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start..self.colon]
    }

    fn value<'t>(&self, text: &'t str) -> &'t str {
        &text[self.colon + 2..self.end]
    }

    /// The whole line with its `\n`.
    fn raw<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start..=self.end]
    }
}

/// The typed values of a narinfo's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Values {
    store_path: StorePath,
    compression: Compression,
    file_hash: Option<NixHash>,
    file_size: Option<u64>,
    nar_hash: NixHash,
    nar_size: u64,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    ca: Option<ContentAddress>,
}

/// A parsed narinfo that renders back to exactly its input.
///
/// See the [module docs](self) for what is accepted. Accessors return the
/// typed values; [`NarInfo::render`] (and `Display`) return the text.
#[derive(Clone, PartialEq, Eq)]
pub struct NarInfo {
    text: String,
    lines: Vec<Line>,
    store_dir: StoreDir,
    values: Values,
}

impl NarInfo {
    /// Parses a narinfo for the store `/nix/store`.
    ///
    /// # Errors
    /// [`NarInfoError`] with the line and field of the first problem.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        Self::parse_in(text, &StoreDir::default())
    }

    /// Parses a narinfo whose `StorePath` must be in `store_dir`.
    ///
    /// # Errors
    /// [`NarInfoError`] with the line and field of the first problem.
    pub fn parse_in(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        Self::from_text(text.to_owned(), store_dir)
    }

    /// Parses `text`, keeping it.
    fn from_text(text: String, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        let (lines, values) = parse::parse(&text, store_dir)?;
        Ok(Self {
            text,
            lines,
            store_dir: store_dir.clone(),
            values,
        })
    }

    /// The narinfo text: the parsed input, or what [`NarInfo::new`] wrote,
    /// with any signature added by [`NarInfo::sign`].
    pub fn render(&self) -> String {
        self.text.clone()
    }

    /// The narinfo text, borrowed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The store directory the paths belong to.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The store path this narinfo describes.
    pub fn store_path(&self) -> &StorePath {
        &self.values.store_path
    }

    /// Where the NAR file is, relative to the cache root (never empty).
    pub fn url(&self) -> &str {
        // Parsing guarantees exactly one non-empty URL line.
        self.value_of(Field::Url).unwrap_or_default()
    }

    /// The compression of the NAR file (bzip2 if the field is absent or
    /// empty, as in Nix).
    pub fn compression(&self) -> &Compression {
        &self.values.compression
    }

    /// The hash of the NAR file as stored, if given.
    pub fn file_hash(&self) -> Option<&NixHash> {
        self.values.file_hash.as_ref()
    }

    /// The size of the NAR file as stored, if given.
    pub fn file_size(&self) -> Option<u64> {
        self.values.file_size
    }

    /// The hash of the uncompressed NAR.
    pub fn nar_hash(&self) -> &NixHash {
        &self.values.nar_hash
    }

    /// The size of the uncompressed NAR (never zero).
    pub fn nar_size(&self) -> u64 {
        self.values.nar_size
    }

    /// The references, in the order written (Nix writes them sorted).
    pub fn references(&self) -> &[StorePath] {
        &self.values.references
    }

    /// The deriver, unless absent or `unknown-deriver`.
    pub fn deriver(&self) -> Option<&StorePath> {
        self.values.deriver.as_ref()
    }

    /// The `System` field, if present.
    pub fn system(&self) -> Option<&str> {
        self.value_of(Field::System)
    }

    /// The raw `Sig` values, in the order written.
    pub fn signatures(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(|line| line.field == Some(Field::Sig))
            .map(|line| line.value(&self.text))
    }

    /// The content address, unless absent or empty.
    pub fn ca(&self) -> Option<&ContentAddress> {
        self.values.ca.as_ref()
    }

    /// The lines with keys Nix does not know, as `(key, value)` pairs.
    pub fn unknown_fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines
            .iter()
            .filter(|line| line.field.is_none())
            .map(|line| (line.key(&self.text), line.value(&self.text)))
    }

    /// The string that signatures sign (docs/formats.md §4.2).
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_dir,
            &self.values.store_path,
            &self.values.nar_hash,
            self.values.nar_size,
            &self.values.references,
        )
    }

    /// Checks the signatures against `trusted` and returns the name of the
    /// key of the first one that verifies.
    ///
    /// A path whose CA claim holds needs no signature in Nix; see
    /// [`NarInfo::verify_ca`].
    ///
    /// # Errors
    /// [`VerifyError`] saying why no signature verified.
    pub fn verify<'t>(&self, trusted: &'t TrustedKeys) -> Result<&'t str, VerifyError> {
        trusted.verify(self.fingerprint().as_bytes(), self.signatures())
    }

    /// The number of distinct valid signatures by `trusted` keys (what
    /// `nix store verify --sigs-needed` counts).
    pub fn count_valid_signatures(&self, trusted: &TrustedKeys) -> usize {
        trusted.count_valid(self.fingerprint().as_bytes(), self.signatures())
    }

    /// Whether the path has a CA claim that holds: recomputing the store path
    /// from the CA, the name and the references gives this path. Nix accepts
    /// such a path without a signature (docs/formats.md §2.7, §4.4).
    pub fn verify_ca(&self) -> bool {
        self.values.ca.as_ref().is_some_and(|ca| {
            self.store_dir
                .verify_ca(&self.values.store_path, ca, &self.values.references)
        })
    }

    /// Signs the narinfo with `key`, replacing any signature by a key of the
    /// same name.
    ///
    /// The `Sig` line goes where Nix 2.8 writes it: among the other `Sig`
    /// lines in sorted order, or, if there are none, after the last of the
    /// fields Nix writes before `Sig` (so before `CA`).
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint().as_bytes()).to_string();
        let by_same_key = |value: &str| sig_key_name(value) == Some(key.name());
        self.rewrite_sigs(by_same_key, Some(&sig));
    }

    /// Removes the signatures by the key named `name`; returns how many
    /// there were.
    pub fn remove_signatures_by(&mut self, name: &str) -> usize {
        let before = self.signatures().count();
        self.rewrite_sigs(|value| sig_key_name(value) == Some(name), None);
        before - self.signatures().count()
    }

    /// Removes every `Sig` line.
    pub fn clear_signatures(&mut self) {
        self.rewrite_sigs(|_| true, None);
    }

    /// The value of the single line of a non-repeatable field.
    fn value_of(&self, field: Field) -> Option<&str> {
        self.lines
            .iter()
            .find(|line| line.field == Some(field))
            .map(|line| line.value(&self.text))
    }

    /// Rebuilds the text without the `Sig` lines that `remove` selects and
    /// with a new `Sig` line for `add`. Only `Sig` lines change, so the
    /// typed values stay valid.
    fn rewrite_sigs(&mut self, remove: impl Fn(&str) -> bool, add: Option<&str>) {
        let old_text = std::mem::take(&mut self.text);
        let kept: Vec<Line> = std::mem::take(&mut self.lines)
            .into_iter()
            .filter(|line| line.field != Some(Field::Sig) || !remove(line.value(&old_text)))
            .collect();
        let insert_at = add.map(|sig| sig_position(&kept, &old_text, sig));

        let mut text = String::with_capacity(old_text.len() + add.map_or(0, |s| s.len() + 6));
        let mut lines = Vec::with_capacity(kept.len() + 1);
        for (index, line) in kept.iter().enumerate() {
            if let (Some(sig), Some(at)) = (add, insert_at) {
                if at == index {
                    push_line(&mut text, &mut lines, Field::Sig, sig);
                }
            }
            copy_line(&mut text, &mut lines, line, &old_text);
        }
        if let (Some(sig), Some(at)) = (add, insert_at) {
            if at == kept.len() {
                push_line(&mut text, &mut lines, Field::Sig, sig);
            }
        }
        self.text = text;
        self.lines = lines;
    }
}

/// The key name of a raw signature, `keyname:…`.
fn sig_key_name(sig: &str) -> Option<&str> {
    sig.split_once(':').map(|(name, _)| name)
}

/// Where Nix 2.8 would write a new `Sig` line: Nix keeps signatures in a
/// sorted set and writes them after `System` and before `CA`.
fn sig_position(lines: &[Line], text: &str, sig: &str) -> usize {
    let is_sig = |line: &Line| line.field == Some(Field::Sig);
    if let Some(last_sig) = lines.iter().rposition(is_sig) {
        return lines
            .iter()
            .position(|line| is_sig(line) && line.value(text) > sig)
            .unwrap_or(last_sig + 1);
    }
    // `Field` is declared in Nix's writing order.
    let written_before_sig = |line: &Line| line.field.is_some_and(|f| f < Field::Sig);
    lines
        .iter()
        .rposition(written_before_sig)
        .map_or(lines.len(), |last| last + 1)
}

/// Appends `key: value\n` and records its line.
fn push_line(text: &mut String, lines: &mut Vec<Line>, field: Field, value: &str) {
    let start = text.len();
    text.push_str(field.key());
    let colon = text.len();
    text.push_str(": ");
    text.push_str(value);
    lines.push(Line {
        start,
        colon,
        end: text.len(),
        field: Some(field),
    });
    text.push('\n');
}

/// Appends a line of another text and records it at its new offset.
fn copy_line(text: &mut String, lines: &mut Vec<Line>, line: &Line, from: &str) {
    let start = text.len();
    text.push_str(line.raw(from));
    lines.push(Line {
        start,
        colon: start + (line.colon - line.start),
        end: start + (line.end - line.start),
        field: line.field,
    });
}

impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NarInfo")
            .field("store_dir", &self.store_dir)
            .field("text", &self.text)
            .finish()
    }
}

impl std::str::FromStr for NarInfo {
    type Err = NarInfoError;
    fn from_str(s: &str) -> Result<Self, NarInfoError> {
        Self::parse(s)
    }
}

/// The string a signature signs (docs/formats.md §4.2):
/// `1;<path>;<narHash>;<narSize>;<refs>`, with the references as full paths,
/// sorted and deduplicated, a self-reference included, joined by `,`.
///
/// Nix refuses to make a fingerprint with `nar_size` 0; a parsed
/// [`NarInfo`] never has one.
///
/// ```
/// use nixferry_formats::hash::NixHash;
/// use nixferry_formats::narinfo::fingerprint;
/// use nixferry_formats::store_path::{StoreDir, StorePath};
///
/// let path = StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")?;
/// let hash = NixHash::parse("sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2")?;
/// assert_eq!(
///     fingerprint(&StoreDir::default(), &path, &hash, 120, &[]),
///     "1;/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt;\
///      sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2;120;"
/// );
/// # Ok::<(), nixferry_formats::Error>(())
/// ```
pub fn fingerprint(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &NixHash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<&StorePath> = references.iter().collect();
    // With one store directory, sorting base names sorts the full paths.
    refs.sort_unstable();
    refs.dedup();
    let dir = store_dir.as_str();
    let refs_len: usize = refs.iter().map(|r| dir.len() + r.as_str().len() + 2).sum();
    let mut s = String::with_capacity(dir.len() + path.as_str().len() + 140 + refs_len);
    s.push_str("1;");
    push_full_path(&mut s, dir, path);
    s.push(';');
    s.push_str(&nar_hash.to_string());
    s.push(';');
    s.push_str(&nar_size.to_string());
    s.push(';');
    for (i, r) in refs.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_full_path(&mut s, dir, r);
    }
    s
}

fn push_full_path(s: &mut String, dir: &str, path: &StorePath) {
    s.push_str(dir);
    s.push('/');
    s.push_str(path.as_str());
}
