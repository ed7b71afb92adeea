//! The `Compression` field (docs/formats.md §3.4).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// How a binary cache stores a NAR: the narinfo `Compression` value.
///
/// ```
/// use nixferry_formats::narinfo::Compression;
///
/// assert_eq!(Compression::parse("xz"), Compression::Xz);
/// assert_eq!(Compression::Xz.extension(), ".nar.xz");
/// // Absent or empty means bzip2, as in Nix.
/// assert_eq!(Compression::parse(""), Compression::Bzip2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `none`: the file is the NAR itself.
    None,
    /// `xz`, the default of Nix's binary cache writer.
    Xz,
    /// `bzip2`, also what an absent or empty field means.
    Bzip2,
    /// `zstd`.
    Zstd,
    /// `br` (brotli).
    Br,
    /// `gzip`.
    Gzip,
    /// `lz4`.
    Lz4,
    /// `lzip`.
    Lzip,
    /// Any other name. Nix 2.8 accepts it and lets libarchive sniff the
    /// format (`compress`, `grzip`, `lrzip`, `lzma`, `lzop` work).
    Other(String),
}

impl Compression {
    /// Every named method, in the order of docs/formats.md §3.4.
    pub const KNOWN: [Compression; 8] = [
        Self::None,
        Self::Xz,
        Self::Bzip2,
        Self::Zstd,
        Self::Br,
        Self::Gzip,
        Self::Lz4,
        Self::Lzip,
    ];

    /// Reads a `Compression` value. Never fails: an unknown name is
    /// [`Compression::Other`], and the empty string is [`Compression::Bzip2`]
    /// (Nix's default when the field is absent or empty).
    pub fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "xz" => Self::Xz,
            "" | "bzip2" => Self::Bzip2,
            "zstd" => Self::Zstd,
            "br" => Self::Br,
            "gzip" => Self::Gzip,
            "lz4" => Self::Lz4,
            "lzip" => Self::Lzip,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The name as written in a narinfo and in `?compression=`.
    pub fn name(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Lzip => "lzip",
            Self::Other(name) => name,
        }
    }

    /// The suffix Nix 2.8 gives the NAR file: `nar/<file hash><suffix>`.
    /// Note that gzip gets plain `.nar`, as do the libarchive-only methods.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Xz => ".nar.xz",
            Self::Bzip2 => ".nar.bz2",
            Self::Zstd => ".nar.zst",
            Self::Br => ".nar.br",
            Self::Lz4 => ".nar.lz4",
            Self::Lzip => ".nar.lzip",
            Self::None | Self::Gzip | Self::Other(_) => ".nar",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(Self::parse(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Compression::KNOWN {
            assert_eq!(Compression::parse(c.name()), c);
        }
        assert_eq!(
            Compression::parse("lzop"),
            Compression::Other("lzop".into())
        );
        assert_eq!(Compression::parse("lzop").name(), "lzop");
    }

    #[test]
    fn extensions_follow_nix_2_8() {
        let got: Vec<_> = Compression::KNOWN.iter().map(|c| c.extension()).collect();
        assert_eq!(
            got,
            [
                ".nar",
                ".nar.xz",
                ".nar.bz2",
                ".nar.zst",
                ".nar.br",
                ".nar",
                ".nar.lz4",
                ".nar.lzip"
            ]
        );
    }
}
