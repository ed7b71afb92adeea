//! Errors from reading, writing and checking narinfos.

use super::{CacheInfoError, Field, Inconsistency};
use crate::hash::HashError;
use crate::store_path::StorePathError;

/// Errors from narinfo and `nix-cache-info` files.
///
/// Syntax and field errors carry the 1-based line number and, where known,
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarInfoError {
    /// The document is longer than [`MAX_NARINFO_LEN`](super::MAX_NARINFO_LEN).
    #[error("narinfo is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// The document length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A line is longer than [`MAX_LINE_LEN`](super::MAX_LINE_LEN).
    #[error("line {line}: {len} bytes, more than the limit of {max}")]
    LineTooLong {
        /// The line number.
        line: usize,
        /// The line length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The last line does not end with `\n` (Nix 2.8: corrupt).
    #[error("line {line}: no newline at the end of the narinfo")]
    MissingNewline {
        /// The line number.
        line: usize,
    },
    /// An empty line (Nix 2.8: corrupt).
    #[error("line {line}: blank line")]
    BlankLine {
        /// The line number.
        line: usize,
    },
    /// A `\r`, usually from CRLF line endings (Nix 2.8 keeps it in the value,
    /// which breaks `StorePath`).
    #[error("line {line}: carriage return (CRLF line endings are not allowed)")]
    CarriageReturn {
        /// The line number.
        line: usize,
    },
    /// A line without `:` (Nix 2.8: corrupt).
    #[error("line {line}: no ':' after the field name")]
    MissingColon {
        /// The line number.
        line: usize,
    },
    /// The `:` is not followed by a space. Nix 2.8 would silently drop the
    /// first character of the value.
    #[error("line {line}: no space after ':'")]
    MissingSpace {
        /// The line number.
        line: usize,
    },
    /// A field that may appear once appears again.
    #[error("line {line}: {field} given again (first on line {first})")]
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
    #[error("line {line}: invalid {field}: {error}")]
    InvalidValue {
        /// The line number.
        line: usize,
        /// The field.
        field: Field,
        /// What is wrong with the value.
        error: ValueError,
    },
    /// A required field (`StorePath`, `URL`, `NarHash`, `NarSize`) is absent.
    #[error("missing {0} field")]
    MissingField(Field),
    /// A value given to [`NarInfo::new`](super::NarInfo::new) cannot be
    /// written on one line.
    #[error("{field} value cannot be written: {reason}")]
    Unwritable {
        /// The field.
        field: Field,
        /// Why.
        reason: &'static str,
    },
    /// The fields are individually valid but do not agree
    /// ([`NarInfo::check`](super::NarInfo::check)).
    #[error(transparent)]
    Inconsistent(#[from] Inconsistency),
    /// A `nix-cache-info` problem.
    #[error(transparent)]
    CacheInfo(#[from] CacheInfoError),
}

/// What is wrong with one field's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A hash that does not parse (`NarHash` must be prefixed).
    #[error(transparent)]
    Hash(#[from] HashError),
    /// A store path that does not parse.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// Not ASCII decimal digits, or too large for 64 bits.
    #[error("'{0}' is not a decimal number")]
    NotANumber(String),
    /// `NarSize: 0` (Nix 2.8: corrupt).
    #[error("must not be zero")]
    Zero,
    /// `URL: ` with nothing after it (Nix 2.8: corrupt).
    #[error("must not be empty")]
    Empty,
    /// The same reference twice in `References`.
    #[error("reference '{0}' is listed twice")]
    DuplicateReference(String),
}
