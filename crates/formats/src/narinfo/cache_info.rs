//! `nix-cache-info`: a binary cache's metadata (docs/formats.md §3.2).

use std::fmt;

use super::{NarInfoError, MAX_NARINFO_LEN};
use crate::store_path::{StoreDir, StorePathError};

/// Errors from `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheInfoError {
    /// The file is longer than [`MAX_NARINFO_LEN`].
    TooLarge {
        /// The file length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `StoreDir` is not a valid store directory.
    InvalidStoreDir {
        /// The line number.
        line: usize,
        /// Why.
        error: StorePathError,
    },
    /// Two `StoreDir` lines disagree (Nix checks each against its own store
    /// directory, so it would reject the cache too).
    ConflictingStoreDir {
        /// The line of the second value.
        line: usize,
        /// The first value.
        first: String,
        /// The second value.
        second: String,
    },
    /// `Priority` is not an integer (Nix's `std::stoi` throws).
    InvalidPriority {
        /// The line number.
        line: usize,
        /// The value.
        value: String,
    },
    /// The cache is for another store directory (Nix's error message).
    StoreDirMismatch {
        /// The cache's `StoreDir`.
        cache: String,
        /// The store directory of the client.
        ours: String,
    },
}

impl fmt::Display for CacheInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "nix-cache-info is {len} bytes, more than the limit of {max}"
                )
            }
            Self::InvalidStoreDir { line, error } => {
                write!(f, "nix-cache-info line {line}: invalid StoreDir: {error}")
            }
            Self::ConflictingStoreDir {
                line,
                first,
                second,
            } => write!(
                f,
                "nix-cache-info line {line}: StoreDir '{second}' contradicts '{first}'"
            ),
            Self::InvalidPriority { line, value } => {
                write!(
                    f,
                    "nix-cache-info line {line}: Priority '{value}' is not an integer"
                )
            }
            Self::StoreDirMismatch { cache, ours } => write!(
                f,
                "binary cache is for Nix stores with prefix '{cache}', not '{ours}'"
            ),
        }
    }
}

impl std::error::Error for CacheInfoError {}

/// The contents of `nix-cache-info`.
///
/// ```
/// use nixferry_formats::narinfo::CacheInfo;
///
/// let info = CacheInfo::parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")?;
/// assert!(info.want_mass_query);
/// assert_eq!(info.priority, Some(40));
/// assert_eq!(info.render(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n");
/// # Ok::<(), nixferry_formats::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// `StoreDir`: the store directory the cache's paths are in. Nix does
    /// not require the field.
    pub store_dir: Option<StoreDir>,
    /// `WantMassQuery: 1`: the cache may be queried for many paths at once.
    pub want_mass_query: bool,
    /// `Priority`: lower is preferred. Absent means Nix's default, 0
    /// (docs/formats.md §3.2; cache.nixos.org publishes 40).
    pub priority: Option<i64>,
    /// The other `key: value` lines, in order (values trimmed).
    pub other: Vec<(String, String)>,
}

impl CacheInfo {
    /// What Nix writes for a new cache: only `StoreDir`.
    pub fn new(store_dir: StoreDir) -> Self {
        Self {
            store_dir: Some(store_dir),
            want_mass_query: false,
            priority: None,
            other: Vec::new(),
        }
    }

    /// Reads `nix-cache-info` as Nix does: lines split on `\n`, the key
    /// before the first `:`, the value trimmed; lines without `:` are
    /// ignored. `WantMassQuery` is true only for `1`, and the last
    /// `WantMassQuery` or `Priority` wins.
    ///
    /// # Errors
    /// [`NarInfoError::CacheInfo`] for an oversized file, an invalid or
    /// contradictory `StoreDir`, or a `Priority` that is not an integer.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(CacheInfoError::TooLarge {
                len: text.len(),
                max: MAX_NARINFO_LEN,
            }
            .into());
        }
        let mut info = Self {
            store_dir: None,
            want_mass_query: false,
            priority: None,
            other: Vec::new(),
        };
        for (index, line) in text.split('\n').enumerate() {
            if let Some((key, value)) = line.split_once(':') {
                info.read(key, value.trim(), index + 1)?;
            }
        }
        Ok(info)
    }

    fn read(&mut self, key: &str, value: &str, line: usize) -> Result<(), CacheInfoError> {
        match key {
            "StoreDir" => self.read_store_dir(value, line)?,
            "WantMassQuery" => self.want_mass_query = value == "1",
            "Priority" => {
                let priority = value.parse().map_err(|_| CacheInfoError::InvalidPriority {
                    line,
                    value: value.to_owned(),
                })?;
                self.priority = Some(priority);
            }
            _ => self.other.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    fn read_store_dir(&mut self, value: &str, line: usize) -> Result<(), CacheInfoError> {
        let dir = StoreDir::new(value)
            .map_err(|error| CacheInfoError::InvalidStoreDir { line, error })?;
        match &self.store_dir {
            Some(first) if *first != dir => Err(CacheInfoError::ConflictingStoreDir {
                line,
                first: first.to_string(),
                second: dir.to_string(),
            }),
            _ => {
                self.store_dir = Some(dir);
                Ok(())
            }
        }
    }

    /// Checks that the cache is for `ours`, as Nix does when it opens a
    /// cache. A cache without `StoreDir` passes.
    ///
    /// # Errors
    /// [`CacheInfoError::StoreDirMismatch`].
    pub fn check_store_dir(&self, ours: &StoreDir) -> Result<(), NarInfoError> {
        match &self.store_dir {
            Some(cache) if cache != ours => Err(CacheInfoError::StoreDirMismatch {
                cache: cache.to_string(),
                ours: ours.to_string(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// The file text: `StoreDir`, then `WantMassQuery: 1` and `Priority`
    /// when set, then the other lines. For [`CacheInfo::new`] this is
    /// exactly what Nix writes, `StoreDir: /nix/store\n`.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.store_dir {
            writeln!(f, "StoreDir: {dir}")?;
        }
        if self.want_mass_query {
            writeln!(f, "WantMassQuery: 1")?;
        }
        if let Some(priority) = self.priority {
            writeln!(f, "Priority: {priority}")?;
        }
        for (key, value) in &self.other {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_like_nix() {
        let info = CacheInfo::parse(
            "StoreDir:/nix/store   \nno colon\nWantMassQuery: yes\nX-Foo:  bar \n",
        )
        .unwrap();
        assert_eq!(info.store_dir, Some(StoreDir::default()));
        assert!(!info.want_mass_query);
        assert_eq!(info.other, [("X-Foo".to_owned(), "bar".to_owned())]);
        assert_eq!(CacheInfo::parse("").unwrap().store_dir, None);
    }

    #[test]
    fn errors() {
        let err = |text| CacheInfo::parse(text).unwrap_err();
        assert!(matches!(
            err("Priority: high\n"),
            NarInfoError::CacheInfo(CacheInfoError::InvalidPriority { line: 1, .. })
        ));
        assert!(matches!(
            err("StoreDir: /nix/store\nStoreDir: /gnu/store\n"),
            NarInfoError::CacheInfo(CacheInfoError::ConflictingStoreDir { line: 2, .. })
        ));
        assert!(matches!(
            err("StoreDir: nix\n"),
            NarInfoError::CacheInfo(CacheInfoError::InvalidStoreDir { line: 1, .. })
        ));
        let gnu = CacheInfo::new(StoreDir::new("/gnu/store").unwrap());
        assert_eq!(
            gnu.check_store_dir(&StoreDir::default())
                .unwrap_err()
                .to_string(),
            "binary cache is for Nix stores with prefix '/gnu/store', not '/nix/store'"
        );
    }
}
