//! [`NarFramer`]: finds where a NAR ends in a stream that goes on after it.
//!
//! `DumpStorePath` replies and export records carry a bare NAR without a
//! length (docs/formats.md §5.3, §5.4): the only way to know where it ends is to follow
//! its grammar (docs/formats.md §1.1). The framer is a push parser with no I/O of its
//! own: [`NarFramer::feed`] takes whatever bytes have arrived and says how
//! many of them belong to the NAR. File contents are skipped by their
//! length without being looked at, so a NAR of any size passes through in
//! constant memory: only keywords, entry names and symlink targets, each
//! bounded by [`Limits`], are buffered.
//!
//! The framer accepts exactly the NARs the strict decoder
//! ([`crate::nar::Decoder`]) accepts, and ends them at the same byte: the
//! grammar, zero padding, the bounds of [`Limits`], valid entry names and
//! their strict order (so no duplicates). A test runs both on every NAR
//! vector, and a fuzz target (`nar_frame`) on any input. The hash is
//! checked by the receiver against the path info.

use crate::nar::{is_valid_name, padding_len, Limits, MAX_TAG_LEN};

/// Why a NAR could not be framed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameError {
    /// Offset in the NAR of the token at fault.
    pub(crate) offset: u64,
    /// What is wrong.
    pub(crate) reason: String,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at NAR byte {})", self.reason, self.offset)
    }
}

/// Which token of the grammar comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `nix-archive-1`.
    Magic,
    /// `(` opening a node.
    Open,
    /// `type`.
    Type,
    /// `regular`, `symlink` or `directory`.
    TypeName,
    /// `executable` or `contents`.
    RegularField,
    /// The empty value of `executable`.
    ExecutableValue,
    /// `contents` after `executable`.
    Contents,
    /// A regular file's contents: skipped, not buffered.
    ContentsData,
    /// `target`.
    Target,
    /// A symlink's target.
    TargetValue,
    /// `)` closing a regular file or symlink node.
    CloseNode,
    /// `entry` or `)` inside a directory.
    DirItem,
    /// `(` opening an entry.
    EntryOpen,
    /// `name`.
    EntryName,
    /// An entry's name.
    NameValue,
    /// `node`.
    EntryNode,
    /// `)` closing an entry.
    CloseEntry,
}

/// Progress through the current token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Reading the 8-byte length; `got` bytes so far.
    Len { got: u8 },
    /// Reading (or skipping) the data; `left` bytes to go.
    Data { left: u64 },
    /// Reading the zero padding; `left` bytes to go.
    Pad { left: u8 },
}

/// A push parser that follows a NAR's framing to find its end.
///
/// Never panics, whatever bytes it is fed; after an error it stays failed.
#[derive(Debug)]
pub(crate) struct NarFramer {
    limits: Limits,
    expect: Expect,
    field: Field,
    /// The length being read, little-endian.
    len_bytes: [u8; 8],
    /// The current token's length.
    len: u64,
    /// Where the current token starts.
    token_start: u64,
    /// The current token's bytes (never file contents).
    token: Vec<u8>,
    /// Directories open around the current node.
    depth: usize,
    /// For each open directory, innermost last, the name of its previous
    /// entry (empty before the first): names must ascend strictly. At most
    /// [`Limits::max_depth`] names of at most [`Limits::max_name_len`]
    /// bytes.
    previous: Vec<Vec<u8>>,
    /// Bytes consumed so far.
    offset: u64,
    done: bool,
    failed: Option<FrameError>,
}

impl NarFramer {
    /// A framer with the default [`Limits`].
    pub(crate) fn new() -> Self {
        Self::with_limits(Limits::DEFAULT)
    }

    /// A framer with the given limits.
    pub(crate) fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            expect: Expect::Magic,
            field: Field::Len { got: 0 },
            len_bytes: [0; 8],
            len: 0,
            token_start: 0,
            token: Vec::new(),
            depth: 0,
            previous: Vec::new(),
            offset: 0,
            done: false,
            failed: None,
        }
    }

    /// Whether the NAR has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// NAR bytes consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.offset
    }

    /// Consumes the NAR's bytes at the start of `data`; returns how many
    /// there were: all of `data`, or fewer when the NAR ends inside it (the
    /// rest follows the NAR). Returns 0 once the NAR has ended.
    ///
    /// # Errors
    /// [`FrameError`] when the bytes break the grammar or a limit; every
    /// later call returns the same error.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < data.len() && !self.done {
            let rest = &data[used..];
            let step = match self.step(rest) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            used += step;
        }
        Ok(used)
    }

    /// Consumes some of `data` (not empty) within the current field.
    fn step(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        match self.field {
            Field::Len { got } => {
                let got = usize::from(got);
                let n = data.len().min(8 - got);
                self.len_bytes[got..got + n].copy_from_slice(&data[..n]);
                self.advance(n)?;
                if got + n < 8 {
                    // Fewer than 8, so it fits.
                    self.field = Field::Len {
                        got: u8::try_from(got + n).unwrap_or(0),
                    };
                } else {
                    self.len = u64::from_le_bytes(self.len_bytes);
                    self.start_data()?;
                }
                Ok(n)
            }
            Field::Data { left } => {
                let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                if self.expect != Expect::ContentsData {
                    self.token.extend_from_slice(&data[..n]);
                }
                self.advance(n)?;
                let left = left - n as u64;
                if left > 0 {
                    self.field = Field::Data { left };
                } else {
                    self.end_data()?;
                }
                Ok(n)
            }
            Field::Pad { left } => {
                let n = data.len().min(usize::from(left));
                if data[..n].iter().any(|&b| b != 0) {
                    return Err(self.error("non-zero padding".to_owned()));
                }
                self.advance(n)?;
                // `n <= left`, a u8.
                let left = left - u8::try_from(n).unwrap_or(left);
                if left > 0 {
                    self.field = Field::Pad { left };
                } else {
                    self.end_token()?;
                }
                Ok(n)
            }
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), FrameError> {
        self.offset = self
            .offset
            .checked_add(n as u64)
            .filter(|&o| o <= self.limits.max_size)
            .ok_or_else(|| self.error(format!("NAR larger than {} bytes", self.limits.max_size)))?;
        Ok(())
    }

    /// The length is read: checks it against what the token may be.
    fn start_data(&mut self) -> Result<(), FrameError> {
        let len = self.len;
        let max = match self.expect {
            Expect::ContentsData => u64::MAX,
            Expect::NameValue => self.limits.max_name_len as u64,
            Expect::TargetValue => self.limits.max_target_len as u64,
            Expect::ExecutableValue => 0,
            _ => MAX_TAG_LEN as u64,
        };
        if len > max {
            return Err(self.error(format!(
                "a {len}-byte {} where at most {max} bytes are allowed",
                self.what()
            )));
        }
        if matches!(self.expect, Expect::NameValue | Expect::TargetValue) && len == 0 {
            return Err(self.error(format!("an empty {}", self.what())));
        }
        self.token.clear();
        if len == 0 {
            self.end_token()
        } else {
            self.field = Field::Data { left: len };
            Ok(())
        }
    }

    fn end_data(&mut self) -> Result<(), FrameError> {
        let pad = padding_len(self.len);
        if pad == 0 {
            self.end_token()
        } else {
            self.field = Field::Pad {
                left: u8::try_from(pad).unwrap_or(0),
            };
            Ok(())
        }
    }

    /// A whole token is read: moves through the grammar.
    fn end_token(&mut self) -> Result<(), FrameError> {
        let token = std::mem::take(&mut self.token);
        let t = token.as_slice();
        self.expect = match (self.expect, t) {
            (Expect::Magic, b"nix-archive-1") => Expect::Open,
            (Expect::Open, b"(") => Expect::Type,
            (Expect::Type, b"type") => Expect::TypeName,
            (Expect::TypeName, b"regular") => Expect::RegularField,
            (Expect::TypeName, b"symlink") => Expect::Target,
            (Expect::TypeName, b"directory") => {
                self.previous.push(Vec::new());
                Expect::DirItem
            }
            (Expect::RegularField, b"executable") => Expect::ExecutableValue,
            (Expect::RegularField | Expect::Contents, b"contents") => Expect::ContentsData,
            (Expect::ExecutableValue, b"") => Expect::Contents,
            (Expect::ContentsData, _) => Expect::CloseNode,
            (Expect::Target, b"target") => Expect::TargetValue,
            (Expect::TargetValue, target) if !target.contains(&0) => Expect::CloseNode,
            (Expect::CloseNode | Expect::DirItem, b")") => {
                if self.expect == Expect::DirItem {
                    self.previous.pop();
                }
                if self.depth == 0 {
                    self.done = true;
                    Expect::CloseNode
                } else {
                    self.depth -= 1;
                    Expect::CloseEntry
                }
            }
            (Expect::DirItem, b"entry") => Expect::EntryOpen,
            (Expect::EntryOpen, b"(") => Expect::EntryName,
            (Expect::EntryName, b"name") => Expect::NameValue,
            (Expect::NameValue, name) if is_valid_name(name) => {
                self.check_order(name)?;
                Expect::EntryNode
            }
            (Expect::EntryNode, b"node") => {
                if self.depth + 1 >= self.limits.max_depth {
                    return Err(self.error(format!(
                        "nesting deeper than {} levels",
                        self.limits.max_depth
                    )));
                }
                self.depth += 1;
                Expect::Open
            }
            (Expect::CloseEntry, b")") => Expect::DirItem,
            (_, t) => {
                return Err(self.error(format!(
                    "expected {}, found '{}'",
                    self.what(),
                    t.escape_ascii()
                )))
            }
        };
        self.token = token;
        self.token.clear();
        self.field = Field::Len { got: 0 };
        self.token_start = self.offset;
        Ok(())
    }

    /// Checks that `name` comes after the previous entry of its directory,
    /// and makes it the previous one.
    fn check_order(&mut self, name: &[u8]) -> Result<(), FrameError> {
        let Some(previous) = self.previous.last_mut() else {
            return Err(self.error("an entry outside a directory".to_owned()));
        };
        // Names are never empty: an empty one means "none yet".
        if !previous.is_empty() && name <= previous.as_slice() {
            let what = if name == previous.as_slice() {
                format!("duplicate directory entry '{}'", name.escape_ascii())
            } else {
                format!(
                    "directory entries are not sorted ('{}' after '{}')",
                    name.escape_ascii(),
                    previous.escape_ascii()
                )
            };
            return Err(self.error(what));
        }
        previous.clear();
        previous.extend_from_slice(name);
        Ok(())
    }

    /// What the next token should be, for messages.
    fn what(&self) -> &'static str {
        match self.expect {
            Expect::Magic => "NAR magic 'nix-archive-1'",
            Expect::Open | Expect::EntryOpen => "'('",
            Expect::Type => "'type'",
            Expect::TypeName => "node type",
            Expect::RegularField => "'executable' or 'contents'",
            Expect::ExecutableValue => "empty 'executable' value",
            Expect::Contents => "'contents'",
            Expect::ContentsData => "file contents",
            Expect::Target => "'target'",
            Expect::TargetValue => "valid symlink target",
            Expect::CloseNode | Expect::CloseEntry => "')'",
            Expect::DirItem => "'entry' or ')'",
            Expect::EntryName => "'name'",
            Expect::NameValue => "valid entry name",
            Expect::EntryNode => "'node'",
        }
    }

    fn error(&self, reason: String) -> FrameError {
        FrameError {
            offset: self.token_start,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarWriter;

    fn sample() -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.entry(b"a").unwrap();
        w.regular_bytes(true, b"hello, world").unwrap();
        w.entry(b"b").unwrap();
        w.begin_directory().unwrap();
        w.entry(b"c").unwrap();
        w.symlink(b"../a").unwrap();
        w.entry(b"d").unwrap();
        w.regular_bytes(false, b"").unwrap();
        w.end_directory().unwrap();
        w.end_directory().unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn finds_the_end_in_any_split() {
        let nar = sample();
        let mut stream = nar.clone();
        stream.extend_from_slice(b"trailing bytes");
        // All at once.
        let mut f = NarFramer::new();
        assert_eq!(f.feed(&stream).unwrap(), nar.len());
        assert!(f.is_done());
        assert_eq!(f.feed(&stream[nar.len()..]).unwrap(), 0);
        // Byte by byte, and in chunks of every size.
        for chunk in 1..=17 {
            let mut f = NarFramer::new();
            let mut used = 0;
            for piece in stream.chunks(chunk) {
                used += f.feed(piece).unwrap();
            }
            assert_eq!((used, f.position()), (nar.len(), nar.len() as u64));
            assert!(f.is_done());
        }
    }

    #[test]
    fn rejects_what_breaks_the_framing() {
        let nar = sample();
        // Every truncation leaves the framer waiting, never done.
        for cut in 0..nar.len() {
            let mut f = NarFramer::new();
            assert_eq!(f.feed(&nar[..cut]).unwrap(), cut);
            assert!(!f.is_done());
        }
        // Every single-byte change to a length, keyword or padding is an
        // error or keeps the framer going; none may panic.
        for at in 0..nar.len() {
            for value in [0x01, 0x80, 0xff] {
                let mut bad = nar.clone();
                bad[at] ^= value;
                let _ = NarFramer::new().feed(&bad);
            }
        }
        let mut bad = nar.clone();
        bad[21] = 1; // padding of the magic
        let e = NarFramer::new().feed(&bad).unwrap_err();
        assert_eq!(e.reason, "non-zero padding");
        let mut huge = nar[..24].to_vec(); // the magic token
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = NarFramer::new().feed(&huge).unwrap_err();
        assert!(e.reason.contains("at most 32"), "{e}");
        let mut f = NarFramer::new();
        assert!(f.feed(b"\x05\0\0\0\0\0\0\0hello\0\0\0").is_err());
        assert!(f.feed(&nar).is_err(), "failed framers stay failed");
    }

    /// A directory of entries with these names, in this order, as the
    /// writer would not make it.
    fn directory(names: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut token = |t: &[u8]| {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t);
            out.resize(out.len().next_multiple_of(8), 0);
        };
        for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
            token(t);
        }
        for name in names {
            for t in [&b"entry"[..], b"(", b"name", name, b"node"] {
                token(t);
            }
            for t in [&b"("[..], b"type", b"symlink", b"target", b"x", b")", b")"] {
                token(t);
            }
        }
        token(b")");
        out
    }

    #[test]
    fn entries_ascend_strictly() {
        let good = directory(&[b"A", b"a", b"b"]);
        assert_eq!(NarFramer::new().feed(&good).unwrap(), good.len());
        let e = NarFramer::new()
            .feed(&directory(&[b"b", b"a"]))
            .unwrap_err();
        assert!(e.reason.contains("not sorted ('a' after 'b')"), "{e}");
        let e = NarFramer::new()
            .feed(&directory(&[b"a", b"a"]))
            .unwrap_err();
        assert!(e.reason.contains("duplicate directory entry 'a'"), "{e}");
        for bad in [&b"."[..], b"..", b"a/b", b"a\0b"] {
            assert!(NarFramer::new().feed(&directory(&[bad])).is_err());
        }
    }

    #[test]
    fn bounds_depth() {
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        for _ in 0..70 {
            w.entry(b"d").unwrap();
            w.begin_directory().unwrap();
        }
        for _ in 0..70 {
            w.end_directory().unwrap();
        }
        w.end_directory().unwrap();
        let nar = w.finish().unwrap().0;
        let e = NarFramer::new().feed(&nar).unwrap_err();
        assert!(e.reason.contains("nesting"), "{e}");
        let deep = Limits {
            max_depth: 100,
            ..Limits::DEFAULT
        };
        assert_eq!(NarFramer::with_limits(deep).feed(&nar).unwrap(), nar.len());
    }
}
