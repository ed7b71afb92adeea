//! [`Decoder`]: the strict pull parser (docs/formats.md §1.1 grammar, §1.4 "strict"
//! column, §1.6 limits).

use std::io::{self, BufReader, Read};

use super::wire::{self, padding_len};
use super::writer::read_retrying;
use super::{InvalidNar, Limits, NarError, NarSummary, Reason, MAX_TAG_LEN};
use crate::hash::HashingReader;

/// Input is read through a buffer of this size by the functions that own
/// the whole input ([`validate`], [`super::restore`], [`super::list`]).
pub(super) const INPUT_BUFFER: usize = 64 * 1024;

/// Skipped file contents are read in chunks of this size.
const SKIP_CHUNK: usize = 64 * 1024;

/// What [`Decoder::next_event`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node: the root, or the node of a directory entry. A directory's
    /// entries follow its `Entry`, then [`Event::EndDirectory`].
    Entry(Entry),
    /// The end of the most recent directory still open.
    EndDirectory,
}

/// A node of the NAR and where it is in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the root: names joined by `/`, empty for the root.
    pub path: Vec<u8>,
    /// What the node is.
    pub kind: EntryKind,
}

impl Entry {
    /// The last component of the path (empty for the root).
    pub fn name(&self) -> &[u8] {
        self.path.rsplit(|&b| b == b'/').next().unwrap_or_default()
    }

    /// How deep the node is: 0 for the root, 1 for its entries, ...
    pub fn depth(&self) -> usize {
        if self.path.is_empty() {
            0
        } else {
            1 + self.path.iter().filter(|&&b| b == b'/').count()
        }
    }
}

/// The type of a node and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file. Its contents are read with [`Decoder::contents`].
    Regular {
        /// Whether the owner-execute bit is set.
        executable: bool,
        /// Length of the contents in bytes.
        size: u64,
        /// NAR offset of the first content byte (docs/formats.md §1.8 `narOffset`).
        offset: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The raw target: non-empty, without NUL.
        target: Vec<u8>,
    },
    /// A directory.
    Directory,
}

impl EntryKind {
    /// `"regular"`, `"symlink"` or `"directory"`, as the NAR spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Regular { .. } => "regular",
            Self::Symlink { .. } => "symlink",
            Self::Directory => "directory",
        }
    }
}

/// A strict, streaming NAR parser.
///
/// [`next_event`](Self::next_event) reads the NAR node by node. Contents of
/// regular files are not buffered: read them with
/// [`contents`](Self::contents) right after their [`Event::Entry`], or let
/// the next call skip them (still checking their padding).
///
/// Only the canonical form is accepted (docs/formats.md §1.4, "strict"): fixed field
/// order, names valid and strictly ascending, every field exactly once, no
/// unknown tokens, zero padding, and the bounds of [`Limits`]. Nesting is
/// tracked on an explicit stack bounded by [`Limits::max_depth`], never by
/// recursion, and no length from the input is trusted before it is checked.
/// The decoder never panics, whatever the input.
///
/// It reads exactly the NAR's bytes and no further, so it can parse a NAR
/// embedded in a longer stream; for a standalone NAR, call
/// [`expect_eof`](Self::expect_eof) at the end. It makes many small reads:
/// give it a buffered reader (a `BufReader` over a `File`, or a `&[u8]`).
/// Everything read is hashed on the way; [`finish`](Self::finish) returns
/// the hash and size.
///
/// After an error, every further call fails with [`NarError::Misuse`].
pub struct Decoder<R: Read> {
    reader: HashingReader<R>,
    limits: Limits,
    state: State,
    /// The path of the current node. In a directory, it may still end with
    /// the previous entry's name, which the order check needs.
    path: Vec<u8>,
    /// For each open directory, innermost last, the length of its path.
    dirs: Vec<usize>,
    /// The previous entry name of the current directory.
    previous: Vec<u8>,
    /// The entry name being read.
    name: Vec<u8>,
    /// Buffer for skipping contents, allocated on first use.
    skip: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet.
    Magic,
    /// A node starts next.
    Node,
    /// Inside a regular file's contents.
    Contents {
        /// Content bytes not read yet.
        remaining: u64,
        /// Padding after the contents, to check once they are read.
        padding: u8,
    },
    /// A file or symlink has all its fields: `)` closes its node next.
    CloseNode,
    /// A node inside a directory entry is complete: `)` closes the entry.
    CloseEntry,
    /// Inside a directory: `entry` or `)` comes next.
    Directory,
    /// The root node is closed.
    Done,
    /// An error occurred.
    Failed,
}

/// A keyword token (at most [`MAX_TAG_LEN`] bytes) and where it starts.
struct Tag {
    offset: u64,
    len: usize,
    bytes: [u8; MAX_TAG_LEN],
}

impl Tag {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const OPEN: &[&str] = &["("];
const CLOSE: &[&str] = &[")"];
const TYPE: &[&str] = &["type"];
const TYPES: &[&str] = &["regular", "symlink", "directory"];
const REGULAR_FIELDS: &[&str] = &["executable", "contents"];
const CONTENTS: &[&str] = &["contents"];
const TARGET: &[&str] = &["target"];
const DIRECTORY_ITEMS: &[&str] = &["entry", ")"];
const NAME: &[&str] = &["name"];
const NODE: &[&str] = &["node"];

impl<R: Read> Decoder<R> {
    /// A decoder with the default [`Limits`].
    pub fn new(reader: R) -> Self {
        Self::with_limits(reader, Limits::default())
    }

    /// A decoder with the given limits.
    pub fn with_limits(reader: R, limits: Limits) -> Self {
        Self {
            reader: HashingReader::new(reader),
            limits,
            state: State::Magic,
            path: Vec::new(),
            dirs: Vec::new(),
            previous: Vec::new(),
            name: Vec::new(),
            skip: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// NAR bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.reader.count()
    }

    /// Whether the root node has been closed ([`next_event`](Self::next_event)
    /// returned `None`).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads the next node or end of directory; `None` once the root node is
    /// closed. Unread contents of the previous file are skipped first.
    ///
    /// # Errors
    /// [`NarError::Invalid`] if the NAR breaks a rule (with offset and
    /// path), [`NarError::Io`] if reading fails, [`NarError::Misuse`] after
    /// an earlier error.
    pub fn next_event(&mut self) -> Result<Option<Event>, NarError> {
        self.guarded(Self::step)
    }

    /// A reader over the rest of the current regular file's contents. It
    /// checks the padding when it reaches the end, and is empty when the
    /// last event was not a regular file.
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { decoder: self }
    }

    /// Reads contents of the current regular file, like [`Read::read`]:
    /// `Ok(0)` at the end of the contents (or when not in a regular file).
    ///
    /// # Errors
    /// As [`Decoder::next_event`].
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        self.guarded(|d| d.read_contents_inner(buf))
    }

    /// Checks that the input ends right after the NAR, as it must for a
    /// standalone NAR file (docs/formats.md §1.4, "bytes after the final `)`").
    ///
    /// # Errors
    /// [`NarError::Invalid`] with [`Reason::TrailingData`] if it does not,
    /// [`NarError::Misuse`] if the NAR is not complete yet.
    pub fn expect_eof(&mut self) -> Result<(), NarError> {
        self.guarded(|d| {
            if d.state != State::Done {
                return Err(NarError::Misuse(
                    "expect_eof() before the end of the NAR".into(),
                ));
            }
            let offset = d.position();
            match read_retrying(&mut d.reader, &mut [0u8; 1])? {
                0 => Ok(()),
                _ => Err(d.invalid(offset, Reason::TrailingData)),
            }
        })
    }

    /// Returns the reader, positioned right after the NAR, with the NAR's
    /// hash and size.
    ///
    /// # Errors
    /// [`NarError::Misuse`] unless [`next_event`](Self::next_event) has
    /// returned `None` (and no error occurred).
    pub fn finish(self) -> Result<(R, NarSummary), NarError> {
        if self.state != State::Done {
            return Err(NarError::Misuse(
                "finish() before the end of the NAR".into(),
            ));
        }
        let (reader, nar_hash, nar_size) = self.reader.finish();
        Ok((reader, NarSummary { nar_hash, nar_size }))
    }

    /// Runs `f`, and marks the decoder failed if it fails.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, NarError>,
    ) -> Result<T, NarError> {
        if self.state == State::Failed {
            return Err(failed_earlier());
        }
        let result = f(self);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step(&mut self) -> Result<Option<Event>, NarError> {
        loop {
            match self.state {
                State::Magic => self.read_magic()?,
                State::Node => return self.read_node().map(Some),
                State::Contents { .. } => self.skip_contents()?,
                State::CloseNode => {
                    self.expect_tag(CLOSE)?;
                    self.end_node();
                }
                State::CloseEntry => {
                    self.expect_tag(CLOSE)?;
                    self.state = State::Directory;
                }
                State::Directory => {
                    if let Some(event) = self.read_directory_item()? {
                        return Ok(Some(event));
                    }
                }
                State::Done => return Ok(None),
                State::Failed => return Err(failed_earlier()),
            }
        }
    }

    /// `str("nix-archive-1")` (docs/formats.md §1.1 rule 1). Like Nix, a magic of
    /// another length is rejected before it is read.
    fn read_magic(&mut self) -> Result<(), NarError> {
        let len = self.read_u64()?;
        if len != wire::MAGIC_STR.len() as u64 {
            return Err(self.invalid(0, Reason::BadMagic));
        }
        let mut magic = [0u8; 13];
        self.read_exact(&mut magic)?;
        self.read_padding(padding_len(len))?;
        if magic != wire::MAGIC_STR {
            return Err(self.invalid(0, Reason::BadMagic));
        }
        self.state = State::Node;
        Ok(())
    }

    /// `"(" "type" <type> ...`, up to the point where the node's event can
    /// be returned: before a file's contents, after a symlink's target,
    /// before a directory's entries.
    fn read_node(&mut self) -> Result<Event, NarError> {
        let depth = self.dirs.len();
        if depth >= self.limits.max_depth {
            let max = self.limits.max_depth;
            return Err(self.invalid(self.position(), Reason::TooDeep { max }));
        }
        self.expect_tag(OPEN)?;
        self.expect_tag(TYPE)?;
        let tag = self.read_tag(TYPES)?;
        let kind = match tag.as_bytes() {
            b"regular" => self.read_regular()?,
            b"symlink" => self.read_symlink()?,
            b"directory" => {
                self.dirs.push(self.path.len());
                self.state = State::Directory;
                EntryKind::Directory
            }
            other => {
                let reason = Reason::UnknownType(other.to_vec());
                return Err(self.invalid(tag.offset, reason));
            }
        };
        Ok(Event::Entry(Entry {
            path: self.path.clone(),
            kind,
        }))
    }

    /// `[ "executable" "" ] "contents" u64(size)`; the contents follow.
    fn read_regular(&mut self) -> Result<EntryKind, NarError> {
        let tag = self.read_tag(REGULAR_FIELDS)?;
        let executable = match tag.as_bytes() {
            b"executable" => {
                let offset = self.position();
                if self.read_u64()? != 0 {
                    return Err(self.invalid(offset, Reason::ExecutableNotEmpty));
                }
                self.expect_tag(CONTENTS)?;
                true
            }
            b"contents" => false,
            _ => return Err(self.unexpected(&tag, REGULAR_FIELDS)),
        };
        let size_offset = self.position();
        let size = self.read_u64()?;
        let padding = padding_len(size);
        // Refuse now a size that the limit (or u64) cannot hold, rather
        // than after streaming most of it.
        let end = self
            .position()
            .checked_add(size)
            .and_then(|e| e.checked_add(padding as u64));
        if end.is_none_or(|end| end > self.limits.max_size) {
            return Err(self.too_large(size_offset));
        }
        let offset = self.position();
        self.state = State::Contents {
            remaining: size,
            padding: padding as u8,
        };
        Ok(EntryKind::Regular {
            executable,
            size,
            offset,
        })
    }

    /// `"target" str(target)`: non-empty, bounded, without NUL.
    fn read_symlink(&mut self) -> Result<EntryKind, NarError> {
        self.expect_tag(TARGET)?;
        let offset = self.position();
        let len = self.read_u64()?;
        if len == 0 {
            return Err(self.invalid(offset, Reason::EmptyTarget));
        }
        let max = self.limits.max_target_len;
        if len > max as u64 {
            return Err(self.invalid(offset, Reason::TargetTooLong { len, max }));
        }
        let mut target = Vec::new();
        self.read_string_body(len, &mut target)?;
        if target.contains(&0) {
            return Err(self.invalid(offset, Reason::TargetContainsNul(target)));
        }
        self.state = State::CloseNode;
        Ok(EntryKind::Symlink { target })
    }

    /// In a directory: `")"` (its end, returned as an event) or
    /// `"entry" "(" "name" str(name) "node"` (after which its node starts).
    fn read_directory_item(&mut self) -> Result<Option<Event>, NarError> {
        let dir_len = self.dirs.last().copied().unwrap_or_default();
        // Leave the previous entry, keeping its name for the order check.
        let name_start = dir_len + usize::from(dir_len > 0);
        self.previous.clear();
        if let Some(previous) = self.path.get(name_start..) {
            self.previous.extend_from_slice(previous);
        }
        self.path.truncate(dir_len);

        let tag = self.read_tag(DIRECTORY_ITEMS)?;
        match tag.as_bytes() {
            b")" => {
                self.dirs.pop();
                self.end_node();
                Ok(Some(Event::EndDirectory))
            }
            b"entry" => {
                self.read_entry_name()?;
                self.expect_tag(NODE)?;
                self.state = State::Node;
                Ok(None)
            }
            _ => Err(self.unexpected(&tag, DIRECTORY_ITEMS)),
        }
    }

    /// `"(" "name" str(name)`: checks the name and its order, then appends
    /// it to the path.
    fn read_entry_name(&mut self) -> Result<(), NarError> {
        self.expect_tag(OPEN)?;
        self.expect_tag(NAME)?;
        let offset = self.position();
        let len = self.read_u64()?;
        let max = self.limits.max_name_len;
        if len > max as u64 {
            return Err(self.invalid(offset, Reason::NameTooLong { len, max }));
        }
        let mut name = std::mem::take(&mut self.name);
        let checked = self
            .read_string_body(len, &mut name)
            .and_then(|()| self.check_name(offset, &name));
        if checked.is_ok() {
            if !self.path.is_empty() {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(&name);
        }
        self.name = name;
        checked
    }

    /// A valid name, greater than the previous one (docs/formats.md §1.1 rule 4: Nix
    /// ≥ 2.25 checks this; 2.8 accepted unsorted and duplicate entries).
    fn check_name(&self, offset: u64, name: &[u8]) -> Result<(), NarError> {
        if !wire::is_valid_name(name) {
            return Err(self.invalid(offset, Reason::InvalidName(name.to_vec())));
        }
        // Names are never empty, so an empty `previous` means "first".
        let previous = &self.previous;
        if previous.is_empty() || name > previous.as_slice() {
            return Ok(());
        }
        let reason = if name == previous.as_slice() {
            Reason::Duplicate(name.to_vec())
        } else {
            Reason::Unsorted {
                previous: previous.clone(),
                name: name.to_vec(),
            }
        };
        Err(self.invalid(offset, reason))
    }

    /// After a node's closing `)`: its entry is closed next, or the NAR is
    /// complete.
    fn end_node(&mut self) {
        self.state = if self.dirs.is_empty() {
            State::Done
        } else {
            State::CloseEntry
        };
    }

    fn read_contents_inner(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let State::Contents { remaining, padding } = self.state else {
            return Ok(0);
        };
        if remaining == 0 {
            self.read_padding(usize::from(padding))?;
            self.state = State::CloseNode;
            return Ok(0);
        }
        let want = remaining.min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.read_some(&mut buf[..want])?;
        self.state = State::Contents {
            remaining: remaining - n as u64,
            padding,
        };
        Ok(n)
    }

    /// Reads and discards the rest of the current file's contents.
    fn skip_contents(&mut self) -> Result<(), NarError> {
        let mut buf = std::mem::take(&mut self.skip);
        buf.resize(SKIP_CHUNK, 0);
        let result = loop {
            match self.read_contents_inner(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.skip = buf;
        result
    }

    /// Reads a keyword token, refusing a long one before reading it.
    fn read_tag(&mut self, expected: &'static [&'static str]) -> Result<Tag, NarError> {
        let offset = self.position();
        let len = self.read_u64()?;
        if len > MAX_TAG_LEN as u64 {
            return Err(self.invalid(offset, Reason::TagTooLong { expected, len }));
        }
        let mut tag = Tag {
            offset,
            len: len as usize,
            bytes: [0; MAX_TAG_LEN],
        };
        self.read_exact(&mut tag.bytes[..tag.len])?;
        self.read_padding(padding_len(len))?;
        Ok(tag)
    }

    /// Reads the one keyword allowed here.
    fn expect_tag(&mut self, expected: &'static [&'static str]) -> Result<(), NarError> {
        let tag = self.read_tag(expected)?;
        if expected.iter().any(|e| e.as_bytes() == tag.as_bytes()) {
            Ok(())
        } else {
            Err(self.unexpected(&tag, expected))
        }
    }

    /// Reads `len` bytes (already checked against a limit) and their
    /// padding into `out`. The buffer grows as data arrives, so even a
    /// generous limit cannot make it allocate more than the input holds.
    fn read_string_body(&mut self, len: u64, out: &mut Vec<u8>) -> Result<(), NarError> {
        let offset = self.position();
        let end = offset
            .checked_add(len)
            .and_then(|e| e.checked_add(padding_len(len) as u64));
        if end.is_none_or(|end| end > self.limits.max_size) {
            return Err(self.too_large(offset));
        }
        out.clear();
        out.reserve(len.min(4096) as usize);
        let got = (&mut self.reader).take(len).read_to_end(out)?;
        if (got as u64) < len {
            return Err(self.invalid(self.position(), Reason::Truncated));
        }
        self.read_padding(padding_len(len))
    }

    /// Reads padding and checks that it is zero (docs/formats.md §0).
    fn read_padding(&mut self, len: usize) -> Result<(), NarError> {
        let offset = self.position();
        let mut padding = [0u8; 8];
        self.read_exact(&mut padding[..len])?;
        if padding.iter().any(|&b| b != 0) {
            return Err(self.invalid(offset, Reason::NonZeroPadding));
        }
        Ok(())
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Fills `buf`; the end of the input here is a truncated NAR.
    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), NarError> {
        while !buf.is_empty() {
            let n = self.read_some(buf)?;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Reads at least one byte into `buf` (non-empty), within
    /// [`Limits::max_size`].
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let offset = self.position();
        let room = self.limits.max_size.saturating_sub(offset);
        if room == 0 {
            return Err(self.too_large(offset));
        }
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        match read_retrying(&mut self.reader, &mut buf[..len])? {
            0 => Err(self.invalid(offset, Reason::Truncated)),
            n => Ok(n),
        }
    }

    fn unexpected(&self, tag: &Tag, expected: &'static [&'static str]) -> NarError {
        let reason = Reason::UnexpectedToken {
            expected,
            found: tag.as_bytes().to_vec(),
        };
        self.invalid(tag.offset, reason)
    }

    fn too_large(&self, offset: u64) -> NarError {
        let max = self.limits.max_size;
        self.invalid(offset, Reason::TooLarge { max })
    }

    fn invalid(&self, offset: u64, reason: Reason) -> NarError {
        InvalidNar {
            offset,
            path: self.path.clone(),
            reason,
        }
        .into()
    }
}

fn failed_earlier() -> NarError {
    NarError::Misuse("the NAR decoder failed earlier".into())
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("state", &self.state)
            .field("position", &self.position())
            .field("path", &super::Escaped(&self.path).to_string())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The contents of the current regular file, as a [`Read`]er.
///
/// Errors from the NAR come out as [`io::Error`]s of kind
/// [`io::ErrorKind::InvalidData`]; [`NarError::from_io`] recovers them.
pub struct Contents<'a, R: Read> {
    decoder: &'a mut Decoder<R>,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read_contents(buf).map_err(NarError::into_io)
    }
}

impl<R: Read> std::fmt::Debug for Contents<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("decoder", &self.decoder)
            .finish()
    }
}

/// Checks that `r` holds exactly one canonical NAR and nothing after it,
/// and returns its hash and size.
///
/// # Errors
/// [`NarError::Invalid`] for any breach of the strict rules (docs/formats.md §1.4)
/// under the default [`Limits`], including trailing data;
/// [`NarError::Io`] if reading fails.
pub fn validate(r: impl Read) -> Result<NarSummary, NarError> {
    let mut decoder = Decoder::new(BufReader::with_capacity(INPUT_BUFFER, r));
    while decoder.next_event()?.is_some() {}
    decoder.expect_eof()?;
    Ok(decoder.finish()?.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarWriter;

    fn nar(build: impl FnOnce(&mut NarWriter<Vec<u8>>) -> Result<(), NarError>) -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new());
        build(&mut w).unwrap();
        w.finish().unwrap().0
    }

    fn events(data: &[u8]) -> Result<Vec<Event>, NarError> {
        let mut d = Decoder::new(data);
        let mut out = Vec::new();
        while let Some(e) = d.next_event()? {
            out.push(e);
        }
        d.expect_eof()?;
        Ok(out)
    }

    fn entry(path: &[u8], kind: EntryKind) -> Event {
        Event::Entry(Entry {
            path: path.to_vec(),
            kind,
        })
    }

    #[test]
    fn events_of_a_tree() {
        let data = nar(|w| {
            w.begin_directory()?;
            w.entry(b"a")?;
            w.begin_directory()?;
            w.entry(b"x")?;
            w.regular_bytes(true, b"12345678")?;
            w.end_directory()?;
            w.entry(b"b")?;
            w.symlink(b"a/x")?;
            w.end_directory()
        });
        // magic, "( type directory", "entry ( name" "a" "node", the same
        // for "x", then "( type regular" "executable ''" "contents" u64.
        let offset = 24 + 56 + (48 + 16 + 16) + 56 + (48 + 16 + 16) + 48 + 32 + 16 + 8;
        assert_eq!(
            events(&data).unwrap(),
            [
                entry(b"", EntryKind::Directory),
                entry(b"a", EntryKind::Directory),
                entry(
                    b"a/x",
                    EntryKind::Regular {
                        executable: true,
                        size: 8,
                        offset
                    }
                ),
                Event::EndDirectory,
                entry(
                    b"b",
                    EntryKind::Symlink {
                        target: b"a/x".to_vec()
                    }
                ),
                Event::EndDirectory,
            ]
        );
        assert_eq!(&data[offset as usize..][..8], b"12345678");
    }

    #[test]
    fn stops_exactly_at_the_end() {
        let mut data = nar(|w| w.regular_bytes(false, b"hi"));
        let len = data.len();
        data.extend_from_slice(b"more");
        let mut d = Decoder::new(&data[..]);
        while d.next_event().unwrap().is_some() {}
        assert_eq!(d.position(), len as u64);
        let (rest, summary) = d.finish().unwrap();
        assert_eq!(rest, b"more");
        assert_eq!(summary.nar_size, len as u64);
    }

    #[test]
    fn contents_reader_checks_padding_at_its_end() {
        let mut data = nar(|w| w.regular_bytes(false, b"hi"));
        // The padding after "hi" is at offset 96 + 2.
        data[99] = 1;
        let mut d = Decoder::new(&data[..]);
        d.next_event().unwrap();
        let mut out = Vec::new();
        let err = d.contents().read_to_end(&mut out).unwrap_err();
        let err = NarError::from_io(err);
        let invalid = err.as_invalid().unwrap();
        assert_eq!(
            (invalid.offset, &invalid.reason),
            (98, &Reason::NonZeroPadding)
        );
        assert!(matches!(d.next_event(), Err(NarError::Misuse(_))));
    }

    #[test]
    fn limits_are_enforced() {
        let data = nar(|w| {
            w.begin_directory()?;
            w.entry(b"abc")?;
            w.symlink(b"12345")?;
            w.end_directory()
        });
        let reason = |limits: Limits| {
            let mut d = Decoder::with_limits(&data[..], limits);
            loop {
                match d.next_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(e) => return Some(e.as_invalid().unwrap().reason.clone()),
                }
            }
        };
        let l = Limits::default();
        assert_eq!(reason(l), None);
        assert_eq!(
            reason(Limits {
                max_name_len: 2,
                ..l
            }),
            Some(Reason::NameTooLong { len: 3, max: 2 })
        );
        assert_eq!(
            reason(Limits {
                max_target_len: 4,
                ..l
            }),
            Some(Reason::TargetTooLong { len: 5, max: 4 })
        );
        assert_eq!(
            reason(Limits { max_depth: 1, ..l }),
            Some(Reason::TooDeep { max: 1 })
        );
        assert_eq!(
            reason(Limits { max_depth: 0, ..l }),
            Some(Reason::TooDeep { max: 0 })
        );
        let max_size = data.len() as u64 - 1;
        assert_eq!(
            reason(Limits { max_size, ..l }),
            Some(Reason::TooLarge { max: max_size })
        );
        assert_eq!(
            reason(Limits {
                max_size: data.len() as u64,
                ..l
            }),
            None
        );
    }

    #[test]
    fn huge_contents_size_is_refused_before_reading() {
        let mut data = nar(|w| w.regular_bytes(false, b""));
        // The size field follows "contents", at 24 + 48 + 16.
        data[88..96].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = events(&data).unwrap_err();
        let e = e.as_invalid().unwrap();
        assert_eq!(
            (e.offset, &e.reason),
            (88, &Reason::TooLarge { max: u64::MAX })
        );
    }

    #[test]
    fn names_are_in_entry_and_error_paths() {
        let data = nar(|w| {
            w.begin_directory()?;
            w.entry(b"d")?;
            w.begin_directory()?;
            w.entry(b"f")?;
            w.regular_bytes(false, b"")?;
            w.end_directory()?;
            w.end_directory()
        });
        // Break the ")" closing d/f's node.
        let close = data.len() - 16 * 4;
        let mut bad = data.clone();
        bad[close + 8] = b'x';
        let e = events(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid NAR at byte {close} in 'd/f': expected ')', found 'x'")
        );
    }
}
