//! Writing new narinfos in Nix 2.8's exact format (docs/formats.md §3.3).

use std::fmt;

use super::{Compression, Field, NarInfo, NarInfoError};
use crate::hash::NixHash;
use crate::store_path::{ContentAddress, StoreDir, StorePath};

/// The contents of a new narinfo, for [`NarInfo::new`].
///
/// `Display` writes the text as Nix 2.8 does: the fields in the order
/// `StorePath`, `URL`, `Compression`, `FileHash`, `FileSize`, `NarHash`,
/// `NarSize`, `References` (always, `References: ` when empty), `Deriver`,
/// `System`, `Sig` (one line each), `CA`, skipping those that are `None`.
/// References and signatures are written sorted and without repeats, as
/// Nix's sets are.
///
/// ```
/// use nixferry_formats::hash::NixHash;
/// use nixferry_formats::narinfo::{Compression, NarInfo, NarInfoFields};
/// use nixferry_formats::store_path::StorePath;
///
/// let path = StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")?;
/// let nar_hash = NixHash::parse("sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2")?;
/// let info = NarInfo::new(NarInfoFields {
///     compression: Compression::None,
///     file_hash: Some(nar_hash),
///     file_size: Some(120),
///     ..NarInfoFields::new(path, "nar/1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2.nar", nar_hash, 120)
/// })?;
/// assert_eq!(info.render(), "\
/// StorePath: /nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt
/// URL: nar/1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2.nar
/// Compression: none
/// FileHash: sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2
/// FileSize: 120
/// NarHash: sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2
/// NarSize: 120
/// References: \n");
/// # Ok::<(), nixferry_formats::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfoFields {
    /// The store directory of `store_path`, `references` and `deriver`.
    pub store_dir: StoreDir,
    /// The path described.
    pub store_path: StorePath,
    /// The NAR file's location relative to the cache root.
    pub url: String,
    /// The NAR file's compression.
    pub compression: Compression,
    /// The NAR file's hash (Nix 2.8 always writes it).
    pub file_hash: Option<NixHash>,
    /// The NAR file's size (Nix 2.8 always writes it).
    pub file_size: Option<u64>,
    /// The uncompressed NAR's hash.
    pub nar_hash: NixHash,
    /// The uncompressed NAR's size; must not be zero.
    pub nar_size: u64,
    /// The references, in any order.
    pub references: Vec<StorePath>,
    /// The deriver, if known.
    pub deriver: Option<StorePath>,
    /// The `System` field; `None` or empty to leave it out.
    pub system: Option<String>,
    /// Signatures, `keyname:base64`, in any order.
    pub sigs: Vec<String>,
    /// The content address, for CA paths.
    pub ca: Option<ContentAddress>,
}

impl NarInfoFields {
    /// The required fields; the rest empty, with [`Compression::None`] and
    /// the store directory `/nix/store`.
    pub fn new(
        store_path: StorePath,
        url: impl Into<String>,
        nar_hash: NixHash,
        nar_size: u64,
    ) -> Self {
        Self {
            store_dir: StoreDir::default(),
            store_path,
            url: url.into(),
            compression: Compression::None,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size,
            references: Vec::new(),
            deriver: None,
            system: None,
            sigs: Vec::new(),
            ca: None,
        }
    }

    /// Rejects text values that would not stay on their line or would not
    /// read back as written.
    fn check_writable(&self) -> Result<(), NarInfoError> {
        let unwritable = |field, reason| Err(NarInfoError::Unwritable { field, reason });
        let breaks_line = |s: &str| s.contains(['\n', '\r']);
        if breaks_line(&self.url) {
            return unwritable(Field::Url, "contains a line break");
        }
        if breaks_line(self.compression.name()) {
            return unwritable(Field::Compression, "contains a line break");
        }
        if self.compression.name().is_empty() {
            // An empty value reads back as bzip2.
            return unwritable(Field::Compression, "is empty");
        }
        if self.system.as_deref().is_some_and(breaks_line) {
            return unwritable(Field::System, "contains a line break");
        }
        if self.sigs.iter().any(|s| breaks_line(s)) {
            return unwritable(Field::Sig, "contains a line break");
        }
        Ok(())
    }
}

impl fmt::Display for NarInfoFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = &self.store_dir;
        writeln!(f, "StorePath: {}", dir.display(&self.store_path))?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(hash) = &self.file_hash {
            writeln!(f, "FileHash: {hash}")?;
        }
        if let Some(size) = self.file_size {
            writeln!(f, "FileSize: {size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        f.write_str("References: ")?;
        for (i, r) in sorted_unique(&self.references).into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(r.as_str())?;
        }
        f.write_str("\n")?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {deriver}")?;
        }
        if let Some(system) = self.system.as_deref().filter(|s| !s.is_empty()) {
            writeln!(f, "System: {system}")?;
        }
        for sig in sorted_unique(&self.sigs) {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

/// The items sorted bytewise without repeats, as Nix's `std::set` holds them.
fn sorted_unique<T: Ord>(items: &[T]) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

impl NarInfo {
    /// Writes a new narinfo in Nix 2.8's format (see [`NarInfoFields`]).
    ///
    /// # Errors
    /// [`NarInfoError::Unwritable`] for a text value with a line break (or
    /// an empty compression name), and any error [`NarInfo::parse_in`]
    /// finds in the result, such as a zero `nar_size`, an empty `url` or a
    /// text longer than [`MAX_NARINFO_LEN`](super::MAX_NARINFO_LEN).
    pub fn new(fields: NarInfoFields) -> Result<Self, NarInfoError> {
        fields.check_writable()?;
        Self::from_text(fields.to_string(), &fields.store_dir)
    }

    /// The values of this narinfo as [`NarInfoFields`]. `NarInfo::new` of
    /// the result writes it the way Nix 2.8 would; unknown fields are
    /// dropped.
    pub fn fields(&self) -> NarInfoFields {
        let values = &self.values;
        NarInfoFields {
            store_dir: self.store_dir.clone(),
            store_path: values.store_path.clone(),
            url: self.url().to_owned(),
            compression: values.compression.clone(),
            file_hash: values.file_hash,
            file_size: values.file_size,
            nar_hash: values.nar_hash,
            nar_size: values.nar_size,
            references: values.references.clone(),
            deriver: values.deriver.clone(),
            system: self.system().map(str::to_owned),
            sigs: self.signatures().map(str::to_owned).collect(),
            ca: values.ca,
        }
    }
}
