//! The NAR (Nix ARchive) format (docs/formats.md §1): encoding, strict decoding,
//! restoring, listing.
//!
//! A NAR serialises one file-system object (a regular file, a symlink or a
//! directory tree) canonically: one tree has exactly one NAR, which is what
//! makes NAR hashes meaningful. This module writes NARs byte for byte as
//! Nix 2.8 does, and reads them more strictly than Nix 2.8: it accepts only
//! the canonical form, as Nix ≥ 2.25 does (docs/formats.md §1.4).
//!
//! # Design
//!
//! - **Writing.** [`NarWriter`] is the one place that emits NAR bytes. It
//!   checks that its caller builds a canonical archive (valid names in
//!   strictly ascending order, one node per entry, contents exactly as long
//!   as declared) and hashes and counts the bytes as they stream out.
//!   [`dump`] walks a file system tree (without recursion and without
//!   following symlinks) and drives a `NarWriter`; [`hash_path`] is `dump`
//!   into a sink, and [`dump_unhashed`] is `dump` without the hash, which
//!   lets the kernel copy file contents. The walk runs a bounded number of
//!   batches ahead of the writing, on a second thread when there is a
//!   second CPU; large files are read in chunks, so memory does not grow
//!   with file size.
//! - **Reading.** [`Decoder`] is a pull parser: [`Decoder::next_event`]
//!   yields one [`Event`] per node (and one per end of directory), and
//!   [`Decoder::contents`] streams a regular file's bytes. It keeps an
//!   explicit stack bounded by [`Limits::max_depth`] instead of recursing,
//!   checks every length against a [`Limits`] bound before allocating or
//!   reading, never reads past the end of the NAR, and hashes what it reads.
//!   Every rule of the "strict" column of docs/formats.md §1.4 is enforced.
//! - **On top of the decoder**: [`validate`], [`restore`], [`list`] (the
//!   `.ls` listing of docs/formats.md §3.6) and [`cat`].
//!
//! Errors caused by the NAR bytes themselves are [`NarError::Invalid`], with
//! the byte offset and the entry path; they are kept apart from I/O errors
//! ([`NarError::Io`], [`NarError::Fs`]) and from misuse of the API
//! ([`NarError::Misuse`]). No function here panics on any input.
//!
//! Not supported: the macOS case hack (docs/formats.md §1.5); names containing
//! `~nix~case~hack~` are ordinary bytes.
//!
//! ```
//! use nixferry_formats::nar::{self, Event, EntryKind, NarWriter};
//!
//! // Build a NAR in memory...
//! let mut w = NarWriter::new(Vec::new());
//! w.begin_directory()?;
//! w.entry(b"hello.txt")?;
//! w.regular_bytes(false, b"hello\n")?;
//! w.end_directory()?;
//! let (bytes, summary) = w.finish()?;
//! assert_eq!(summary.nar_size, bytes.len() as u64);
//!
//! // ...and read it back.
//! let mut d = nar::Decoder::new(&bytes[..]);
//! assert!(matches!(d.next_event()?, Some(Event::Entry(e)) if e.kind == EntryKind::Directory));
//! let Some(Event::Entry(file)) = d.next_event()? else { unreachable!() };
//! assert_eq!(file.path, b"hello.txt");
//! let mut contents = String::new();
//! std::io::Read::read_to_string(&mut d.contents(), &mut contents)?;
//! assert_eq!(contents, "hello\n");
//! assert_eq!(d.next_event()?, Some(Event::EndDirectory));
//! assert_eq!(d.next_event()?, None);
//! d.expect_eof()?;
//! assert_eq!(d.finish()?.1, summary);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::hash::NixHash;

mod cat;
mod decode;
mod encode;
mod file;
mod listing;
mod restore;
mod walk;
mod wire;
mod writer;

pub use cat::cat;
pub use decode::{validate, Contents, Decoder, Entry, EntryKind, Event};
pub use encode::{dump, dump_unhashed, hash_path};
pub use listing::{list, Listing};
pub use restore::{restore, restore_from_decoder, RestoreOptions};
pub use wire::{is_valid_name, padding_len};
pub use writer::NarWriter;

/// The longest keyword token a decoder reads, such as `directory` (9 bytes).
///
/// Nix reads keywords into short buffers; 32 leaves room and matches current
/// Nix. A longer token where a keyword is expected is rejected before any of
/// it is read.
pub const MAX_TAG_LEN: usize = 32;

/// Limits for decoding untrusted NARs.
///
/// The defaults are Nix 2.35's bounds (docs/formats.md §1.6); Nix 2.8 had none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting: a node at depth `d` (the root is at depth 0) is
    /// rejected when `d >= max_depth`. Default 64, as in Nix 2.35.
    pub max_depth: usize,
    /// Longest directory entry name in bytes. Default 255 (`NAME_MAX`).
    pub max_name_len: usize,
    /// Longest symlink target in bytes. Default 4095 (`PATH_MAX` - 1).
    pub max_target_len: usize,
    /// Largest total NAR size in bytes. Default unlimited.
    pub max_size: u64,
}

impl Limits {
    /// The default limits, usable in `const` context.
    pub const DEFAULT: Limits = Limits {
        max_depth: 64,
        max_name_len: 255,
        max_target_len: 4095,
        max_size: u64::MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The hash and size of a whole NAR (docs/formats.md §1.7): what a narinfo calls
/// `NarHash` and `NarSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    /// SHA-256 of all NAR bytes, magic included.
    pub nar_hash: NixHash,
    /// Number of NAR bytes.
    pub nar_size: u64,
}

/// Errors from writing, reading, restoring or listing NARs.
#[derive(Debug)]
#[non_exhaustive]
pub enum NarError {
    /// The NAR breaks a rule of the format: the data is at fault.
    Invalid(Box<InvalidNar>),
    /// Reading the NAR, or writing the NAR (or, for [`cat`], the file
    /// contents) to the caller's writer, failed.
    Io(io::Error),
    /// A file-system operation failed while dumping or restoring.
    Fs {
        /// What was being done, such as `"creating directory"`.
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// [`dump`] met a file that a NAR cannot hold (docs/formats.md §1.1 rule 5).
    UnsupportedFileType {
        /// The file.
        path: PathBuf,
        /// `"socket"`, `"FIFO"`, `"block device"`, `"character device"` or
        /// `"unknown"`.
        kind: &'static str,
    },
    /// A file changed size while [`dump`] was reading it. The output written
    /// so far is not a valid NAR and must be discarded.
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Its size when it was examined, as recorded in the NAR.
        expected: u64,
    },
    /// The reader given to [`NarWriter::regular`] failed.
    ContentsRead(io::Error),
    /// The reader given to [`NarWriter::regular`] did not yield exactly the
    /// declared number of bytes.
    ContentsSize {
        /// The size given to [`NarWriter::regular`].
        declared: u64,
        /// Whether the reader had more bytes (else fewer).
        longer: bool,
    },
    /// [`restore`] was asked to write over an existing path without
    /// [`RestoreOptions::overwrite`].
    TargetExists {
        /// The destination.
        path: PathBuf,
    },
    /// [`cat`] did not find the path in the NAR.
    NotFound {
        /// The path looked for, without a leading `/`.
        path: Vec<u8>,
    },
    /// [`cat`] found the path, but not as a regular file.
    NotRegular {
        /// The path looked for, without a leading `/`.
        path: Vec<u8>,
        /// `"directory"` or `"symlink"`.
        kind: &'static str,
    },
    /// [`Listing::to_json_strict`] met a name or target that is not UTF-8,
    /// which JSON cannot hold (Nix fails the same way).
    NotUtf8 {
        /// The entry whose name or target is not UTF-8.
        path: Vec<u8>,
    },
    /// The API was used out of order, or would produce a non-canonical NAR
    /// (for example, directory entries not in ascending order).
    Misuse(String),
}

impl fmt::Display for NarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => e.fmt(f),
            Self::Io(e) => e.fmt(f),
            Self::Fs { op, path, .. } => write!(f, "{op} '{}'", path.display()),
            Self::UnsupportedFileType { path, kind } => {
                write!(
                    f,
                    "file '{}' has an unsupported type ({kind})",
                    path.display()
                )
            }
            Self::FileChanged { path, expected } => write!(
                f,
                "file '{}' changed size while it was being archived (expected {expected} bytes)",
                path.display()
            ),
            Self::ContentsRead(_) => f.write_str("reading file contents"),
            Self::ContentsSize { declared, longer } => write!(
                f,
                "file contents are {} than the declared {declared} bytes",
                if *longer { "longer" } else { "shorter" }
            ),
            Self::TargetExists { path } => write!(f, "'{}' already exists", path.display()),
            Self::NotFound { path } => write!(f, "'{}' does not exist in the NAR", Escaped(path)),
            Self::NotRegular { path, kind } => {
                write!(f, "'{}' is a {kind}, not a regular file", Escaped(path))
            }
            Self::NotUtf8 { path } => {
                write!(
                    f,
                    "'{}' is not valid UTF-8 and cannot be written as JSON",
                    Escaped(path)
                )
            }
            Self::Misuse(message) => write!(f, "NAR API misuse: {message}"),
        }
    }
}

impl std::error::Error for NarError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(e) => e.source(),
            Self::Io(e) => e.source(),
            Self::Fs { source, .. } | Self::ContentsRead(source) => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for NarError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl NarError {
    /// The details when the NAR data itself is at fault.
    pub fn as_invalid(&self) -> Option<&InvalidNar> {
        match self {
            Self::Invalid(e) => Some(e),
            _ => None,
        }
    }

    /// Recovers a `NarError` that was wrapped into an [`io::Error`] (as
    /// [`Contents`] does), or wraps a plain I/O error as [`NarError::Io`].
    pub fn from_io(e: io::Error) -> Self {
        e.downcast::<NarError>().unwrap_or_else(Self::Io)
    }

    /// Wraps this error into an [`io::Error`] for a `Read` or `Write`
    /// implementation: I/O errors pass through, anything else becomes
    /// [`io::ErrorKind::InvalidData`] and [`NarError::from_io`] gets it back.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Where and how a NAR breaks the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidNar {
    /// Byte offset in the NAR of the offending token (for padding, of the
    /// padding; for truncation, of the end of the data).
    pub offset: u64,
    /// The entry being read: components joined by `/`, empty for the root.
    /// For a bad entry name, this is the directory holding it.
    pub path: Vec<u8>,
    /// What is wrong.
    pub reason: Reason,
}

impl fmt::Display for InvalidNar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid NAR at byte {}", self.offset)?;
        if !self.path.is_empty() {
            write!(f, " in '{}'", Escaped(&self.path))?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for InvalidNar {}

impl From<InvalidNar> for NarError {
    fn from(e: InvalidNar) -> Self {
        Self::Invalid(Box::new(e))
    }
}

/// The rule of docs/formats.md §1.1/§1.4 that a NAR breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The first token is not `nix-archive-1`.
    BadMagic,
    /// The data ends inside the NAR.
    Truncated,
    /// A padding byte is not zero.
    NonZeroPadding,
    /// A token other than the ones the grammar allows here.
    UnexpectedToken {
        /// The tokens allowed here.
        expected: &'static [&'static str],
        /// The token found.
        found: Vec<u8>,
    },
    /// A token longer than [`MAX_TAG_LEN`] where a keyword is expected.
    TagTooLong {
        /// The tokens allowed here.
        expected: &'static [&'static str],
        /// Its length field.
        len: u64,
    },
    /// A `type` other than `regular`, `symlink` or `directory`.
    UnknownType(Vec<u8>),
    /// The `executable` marker has a non-empty value.
    ExecutableNotEmpty,
    /// A name that is empty, `.`, `..`, or contains `/` or NUL.
    InvalidName(Vec<u8>),
    /// A name longer than [`Limits::max_name_len`].
    NameTooLong {
        /// Its length field.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// An entry name not greater than the one before it.
    Unsorted {
        /// The name before.
        previous: Vec<u8>,
        /// The name that should have been greater.
        name: Vec<u8>,
    },
    /// An entry name equal to the one before it.
    Duplicate(Vec<u8>),
    /// A symlink with an empty target.
    EmptyTarget,
    /// A symlink target containing a NUL byte.
    TargetContainsNul(Vec<u8>),
    /// A symlink target longer than [`Limits::max_target_len`].
    TargetTooLong {
        /// Its length field.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Nesting reaches [`Limits::max_depth`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The NAR would be longer than [`Limits::max_size`] (or than `u64`).
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Bytes follow the end of a standalone NAR.
    TrailingData,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("input doesn't look like a Nix archive"),
            Self::Truncated => f.write_str("unexpected end of data"),
            Self::NonZeroPadding => f.write_str("non-zero padding"),
            Self::UnexpectedToken { expected, found } => write!(
                f,
                "expected {}, found '{}'",
                OneOf(expected),
                Escaped(found)
            ),
            Self::TagTooLong { expected, len } => {
                write!(f, "expected {}, found a {len}-byte string", OneOf(expected))
            }
            Self::UnknownType(t) => write!(f, "unknown file type '{}'", Escaped(t)),
            Self::ExecutableNotEmpty => f.write_str("executable marker has a non-empty value"),
            Self::InvalidName(n) => write!(f, "invalid file name '{}'", Escaped(n)),
            Self::NameTooLong { len, max } => {
                write!(f, "file name of {len} bytes is longer than {max}")
            }
            Self::Unsorted { previous, name } => write!(
                f,
                "directory entries are not sorted ('{}' after '{}')",
                Escaped(name),
                Escaped(previous)
            ),
            Self::Duplicate(n) => write!(f, "duplicate directory entry '{}'", Escaped(n)),
            Self::EmptyTarget => f.write_str("symlink target is empty"),
            Self::TargetContainsNul(t) => {
                write!(f, "symlink target '{}' contains a NUL byte", Escaped(t))
            }
            Self::TargetTooLong { len, max } => {
                write!(f, "symlink target of {len} bytes is longer than {max}")
            }
            Self::TooDeep { max } => write!(f, "nesting reaches the limit of {max} levels"),
            Self::TooLarge { max } => write!(f, "NAR is larger than the limit of {max} bytes"),
            Self::TrailingData => f.write_str("data after the end of the NAR"),
        }
    }
}

/// Wraps an I/O error of `op` on `path` as [`NarError::Fs`].
fn fs_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NarError + 'a {
    move |source| NarError::Fs {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Displays `'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`.
struct OneOf<'a>(&'a [&'a str]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, tag) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == self.0.len() { " or " } else { ", " })?;
            }
            write!(f, "'{tag}'")?;
        }
        Ok(())
    }
}

/// Displays bytes from a NAR for a human: valid UTF-8 as is, control
/// characters and invalid bytes escaped (`\n`, `\x00`, `\xff`).
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_nar_message_names_offset_path_and_rule() {
        let e = NarError::from(InvalidNar {
            offset: 264,
            path: b"dir/sub".to_vec(),
            reason: Reason::Unsorted {
                previous: b"c".to_vec(),
                name: b"b".to_vec(),
            },
        });
        assert_eq!(
            e.to_string(),
            "invalid NAR at byte 264 in 'dir/sub': directory entries are not sorted ('b' after 'c')"
        );
        let root = InvalidNar {
            offset: 0,
            path: Vec::new(),
            reason: Reason::BadMagic,
        };
        assert_eq!(
            root.to_string(),
            "invalid NAR at byte 0: input doesn't look like a Nix archive"
        );
    }

    #[test]
    fn expected_tokens_are_listed() {
        let r = Reason::UnexpectedToken {
            expected: &["entry", ")"],
            found: b"foo".to_vec(),
        };
        assert_eq!(r.to_string(), "expected 'entry' or ')', found 'foo'");
        let r = Reason::UnexpectedToken {
            expected: &["regular", "symlink", "directory"],
            found: Vec::new(),
        };
        assert_eq!(
            r.to_string(),
            "expected 'regular', 'symlink' or 'directory', found ''"
        );
    }

    #[test]
    fn escaped_bytes() {
        assert_eq!(
            Escaped(b"a\xc3\xa9\n\0\xff").to_string(),
            "a\u{e9}\\n\\u{0}\\xff"
        );
    }

    #[test]
    fn nar_error_survives_io_wrapping() {
        let e = NarError::from(InvalidNar {
            offset: 1,
            path: Vec::new(),
            reason: Reason::Truncated,
        });
        let back = NarError::from_io(e.into_io());
        assert_eq!(back.as_invalid().map(|e| e.offset), Some(1));
        let io = NarError::from_io(io::Error::other("x"));
        assert!(matches!(io, NarError::Io(_)));
    }
}
