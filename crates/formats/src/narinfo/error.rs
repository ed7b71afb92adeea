//! Errors from reading, writing and checking narinfos.

use std::fmt;

use super::{CacheInfoError, Field, Inconsistency};
use crate::hash::HashError;
use crate::store_path::StorePathError;

/// Errors from narinfo and `nix-cache-info` files.
///
/// Syntax and field errors carry the 1-based line number and, where known,
/// the field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NarInfoError {
    /// The document is longer than [`MAX_NARINFO_LEN`](super::MAX_NARINFO_LEN).
    TooLarge {
        /// The document length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line is longer than [`MAX_LINE_LEN`](super::MAX_LINE_LEN).
    LineTooLong {
        /// The line number.
        line: usize,
        /// The line length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The last line does not end with `\n` (Nix 2.8: corrupt).
    MissingNewline {
        /// The line number.
        line: usize,
    },
    /// An empty line (Nix 2.8: corrupt).
    BlankLine {
        /// The line number.
        line: usize,
    },
    /// A `\r`, usually from CRLF line endings (Nix 2.8 keeps it in the value,
    /// which breaks `StorePath`).
    CarriageReturn {
        /// The line number.
        line: usize,
    },
    /// A line without `:` (Nix 2.8: corrupt).
    MissingColon {
        /// The line number.
        line: usize,
    },
    /// The `:` is not followed by a space. Nix 2.8 would silently drop the
    /// first character of the value.
    MissingSpace {
        /// The line number.
        line: usize,
    },
    /// A field that may appear once appears again.
    DuplicateField {
        /// The line of the repetition.
        line: usize,
        /// The field.
        field: Field,
        /// The line of the first occurrence.
        first: usize,
    },
    /// A field's value is invalid.
    ///
    /// The message includes the reason, so `error` is not also exposed as
    /// the `source()` (a cause-chain printer would show it twice).
    InvalidValue {
        /// The line number.
        line: usize,
        /// The field.
        field: Field,
        /// What is wrong with the value.
        error: ValueError,
    },
    /// A required field (`StorePath`, `URL`, `NarHash`, `NarSize`) is absent.
    MissingField(Field),
    /// A value given to [`NarInfo::new`](super::NarInfo::new) cannot be
    /// written on one line.
    Unwritable {
        /// The field.
        field: Field,
        /// Why.
        reason: &'static str,
    },
    /// The fields are individually valid but do not agree
    /// ([`NarInfo::check`](super::NarInfo::check)).
    Inconsistent(Inconsistency),
    /// A `nix-cache-info` problem.
    CacheInfo(CacheInfoError),
}

impl fmt::Display for NarInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "narinfo is {len} bytes, more than the limit of {max}")
            }
            Self::LineTooLong { line, len, max } => {
                write!(f, "line {line}: {len} bytes, more than the limit of {max}")
            }
            Self::MissingNewline { line } => {
                write!(f, "line {line}: no newline at the end of the narinfo")
            }
            Self::BlankLine { line } => write!(f, "line {line}: blank line"),
            Self::CarriageReturn { line } => write!(
                f,
                "line {line}: carriage return (CRLF line endings are not allowed)"
            ),
            Self::MissingColon { line } => write!(f, "line {line}: no ':' after the field name"),
            Self::MissingSpace { line } => write!(f, "line {line}: no space after ':'"),
            Self::DuplicateField { line, field, first } => {
                write!(
                    f,
                    "line {line}: {field} given again (first on line {first})"
                )
            }
            Self::InvalidValue { line, field, error } => {
                write!(f, "line {line}: invalid {field}: {error}")
            }
            Self::MissingField(field) => write!(f, "missing {field} field"),
            Self::Unwritable { field, reason } => {
                write!(f, "{field} value cannot be written: {reason}")
            }
            Self::Inconsistent(e) => e.fmt(f),
            Self::CacheInfo(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for NarInfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inconsistent(e) => e.source(),
            Self::CacheInfo(e) => e.source(),
            _ => None,
        }
    }
}

impl From<Inconsistency> for NarInfoError {
    fn from(e: Inconsistency) -> Self {
        Self::Inconsistent(e)
    }
}

impl From<CacheInfoError> for NarInfoError {
    fn from(e: CacheInfoError) -> Self {
        Self::CacheInfo(e)
    }
}

/// What is wrong with one field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// A hash that does not parse (`NarHash` must be prefixed).
    Hash(HashError),
    /// A store path that does not parse.
    StorePath(StorePathError),
    /// Not ASCII decimal digits, or too large for 64 bits.
    NotANumber(String),
    /// `NarSize: 0` (Nix 2.8: corrupt).
    Zero,
    /// `URL: ` with nothing after it (Nix 2.8: corrupt).
    Empty,
    /// The same reference twice in `References`.
    DuplicateReference(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hash(e) => e.fmt(f),
            Self::StorePath(e) => e.fmt(f),
            Self::NotANumber(value) => write!(f, "'{value}' is not a decimal number"),
            Self::Zero => f.write_str("must not be zero"),
            Self::Empty => f.write_str("must not be empty"),
            Self::DuplicateReference(path) => write!(f, "reference '{path}' is listed twice"),
        }
    }
}

impl std::error::Error for ValueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Hash(e) => e.source(),
            Self::StorePath(e) => e.source(),
            _ => None,
        }
    }
}

impl From<HashError> for ValueError {
    fn from(e: HashError) -> Self {
        Self::Hash(e)
    }
}

impl From<StorePathError> for ValueError {
    fn from(e: StorePathError) -> Self {
        Self::StorePath(e)
    }
}
