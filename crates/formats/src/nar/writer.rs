//! [`NarWriter`]: the canonical NAR writer every encoder goes through.
//!
//! The writing itself is done by [`Encoder`], which does not hash: `NarWriter`
//! is an `Encoder` into a [`HashingWriter`], and [`super::dump_unhashed`]
//! uses an `Encoder` straight into its output, so that file contents can
//! bypass user space there.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::file::SizedFile;
use super::wire::{self, padding_len, ZEROS};
use super::{Escaped, Limits, NarError, NarSummary};
use crate::hash::HashingWriter;

/// File contents are copied through a buffer of this size. Large enough that
/// per-call overhead vanishes next to hashing, small enough to stay in L2.
pub(super) const CONTENTS_CHUNK: usize = 256 * 1024;

/// Small tokens are gathered into this buffer before they are hashed and
/// passed on, so that an unbuffered output sees few large writes. It is
/// also what `io::copy` reads file contents into when the kernel cannot
/// copy them itself (see [`Encoder::regular_file`]).
const OUTPUT_BUFFER: usize = 64 * 1024;

/// Files from this size up are copied with `io::copy` under
/// [`ContentsCopy::Kernel`]. Below it, reading into the buffer is cheaper:
/// `io::copy` costs a flush of the buffer, two `fstat`s and the copy call,
/// and the end of the file takes a read of its own, where one buffered read
/// does it all for a small file; the copies it saves are then too small to
/// matter.
const KERNEL_COPY_MIN: u64 = 64 * 1024;

/// Writes a canonical NAR, hashing and counting it as it streams out.
///
/// The caller describes the tree in NAR order: one root node, and inside
/// each directory, [`entry`](Self::entry) followed by exactly one node per
/// entry, names in strictly ascending bytewise order. An entry is closed
/// automatically when its node is complete. Anything that would produce a
/// non-canonical NAR is refused with [`NarError::Misuse`] before a byte of
/// it is written: misordered calls, unsorted or invalid names, empty
/// symlink targets, contents that do not match the declared size. Names and
/// targets are held to [`Limits::DEFAULT`], so that the default decoder
/// accepts whatever this writes; nesting depth is not limited here, because
/// Nix 2.8 does not limit it when dumping.
///
/// After any error the writer refuses further calls: the output is not a
/// NAR and should be discarded.
///
/// ```
/// use nixferry_formats::nar::NarWriter;
///
/// let mut w = NarWriter::new(Vec::new());
/// w.regular_bytes(false, b"hi")?;
/// let (nar, summary) = w.finish()?;
/// assert_eq!(nar.len(), 120); // docs/formats.md §1.3, `hi.nar`
/// assert_eq!(
///     summary.nar_hash.to_string(),
///     "sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2"
/// );
/// # Ok::<(), nixferry_formats::nar::NarError>(())
/// ```
pub struct NarWriter<W: Write> {
    encoder: Encoder<HashingWriter<W>>,
}

impl<W: Write> NarWriter<W> {
    /// A writer into `out`. Nothing is written until the root node.
    pub fn new(out: W) -> Self {
        Self {
            encoder: Encoder::new(HashingWriter::new(out), ContentsCopy::Buffered),
        }
    }

    /// NAR bytes written so far.
    pub fn position(&self) -> u64 {
        self.encoder.position()
    }

    /// Writes a regular file whose `size` bytes of contents come from
    /// `contents`, which must then be at its end.
    ///
    /// # Errors
    /// [`NarError::ContentsRead`] if `contents` fails,
    /// [`NarError::ContentsSize`] if it has fewer or more than `size` bytes,
    /// [`NarError::Io`] if the output fails, [`NarError::Misuse`] if no node
    /// may be written here.
    pub fn regular(
        &mut self,
        executable: bool,
        size: u64,
        contents: impl Read,
    ) -> Result<(), NarError> {
        self.encoder.regular(executable, size, contents)
    }

    /// Writes a regular file with the given contents.
    ///
    /// # Errors
    /// As [`NarWriter::regular`].
    pub fn regular_bytes(&mut self, executable: bool, contents: &[u8]) -> Result<(), NarError> {
        self.encoder.regular_bytes(executable, contents)
    }

    /// Writes a symlink (docs/formats.md §1.1 rule 3: the raw target bytes).
    ///
    /// # Errors
    /// [`NarError::Misuse`] for an empty target, one containing NUL or one
    /// longer than 4095 bytes, or if no node may be written here;
    /// [`NarError::Io`] if the output fails.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        self.encoder.symlink(target)
    }

    /// Starts a directory; its entries follow, then
    /// [`end_directory`](Self::end_directory).
    ///
    /// # Errors
    /// [`NarError::Misuse`] if no node may be written here,
    /// [`NarError::Io`] if the output fails.
    pub fn begin_directory(&mut self) -> Result<(), NarError> {
        self.encoder.begin_directory()
    }

    /// Starts an entry of the current directory; its node comes next.
    ///
    /// # Errors
    /// [`NarError::Misuse`] outside a directory, or for a name that is
    /// invalid (empty, `.`, `..`, containing `/` or NUL, longer than 255
    /// bytes) or not greater than the previous entry's name;
    /// [`NarError::Io`] if the output fails.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        self.encoder.entry(name)
    }

    /// Ends the current directory.
    ///
    /// # Errors
    /// [`NarError::Misuse`] outside a directory or when the last entry has
    /// no node yet; [`NarError::Io`] if the output fails.
    pub fn end_directory(&mut self) -> Result<(), NarError> {
        self.encoder.end_directory()
    }

    /// Flushes the NAR and returns the output with the NAR's hash and size.
    ///
    /// # Errors
    /// [`NarError::Misuse`] if the root node is not complete,
    /// [`NarError::Io`] if flushing fails.
    pub fn finish(self) -> Result<(W, NarSummary), NarError> {
        let (hashing, nar_size) = self.encoder.finish()?;
        let (out, nar_hash, hashed) = hashing.finish();
        debug_assert_eq!(hashed, nar_size);
        Ok((out, NarSummary { nar_hash, nar_size }))
    }

    /// The encoder underneath, for [`super::dump`], which also uses the
    /// calls that only the file system side needs.
    pub(super) fn encoder(&mut self) -> &mut Encoder<HashingWriter<W>> {
        &mut self.encoder
    }
}

impl<W: Write> std::fmt::Debug for NarWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.encoder.fmt_fields(f.debug_struct("NarWriter"))
    }
}

/// How [`Encoder::regular_file`] moves a file's contents to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContentsCopy {
    /// Through the encoder's own buffer: needed when the bytes must be seen
    /// on their way, to hash them.
    Buffered,
    /// For files of [`KERNEL_COPY_MIN`] bytes or more, with [`io::copy`],
    /// which on Linux lets the kernel move the bytes (`copy_file_range`
    /// into a file, `sendfile` into, say, `/dev/null`) when the output is a
    /// std file-descriptor type (`File`, `StdoutLock`, or a `BufWriter` or
    /// `&mut` of one), and otherwise reads into the encoder's `BufWriter`
    /// directly.
    Kernel,
}

/// The NAR writer proper: the state machine that keeps the archive
/// canonical, and the tokens, written to `S` without hashing. See
/// [`NarWriter`] for the rules.
pub(super) struct Encoder<S: Write> {
    out: BufWriter<S>,
    /// Bytes handed to `out` (or copied past it, see [`ContentsCopy`]).
    written: u64,
    contents_copy: ContentsCopy,
    state: State,
    /// Whether the magic has been written.
    started: bool,
    /// The directories being written, innermost last.
    dirs: Vec<OpenDir>,
    /// The last entry name of each open directory, back to back, so that
    /// checking the order allocates nothing per entry.
    names: Vec<u8>,
    /// Buffer for file contents; grows on demand up to [`CONTENTS_CHUNK`].
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A node comes next: the root, or the node of an entry.
    Node,
    /// Inside a directory: an entry or its end comes next.
    Directory,
    /// Inside a regular file started by [`Encoder::begin_regular`]: more
    /// of its contents come next.
    Contents {
        /// The declared size.
        size: u64,
        /// Bytes still to come.
        remaining: u64,
    },
    /// The root node is complete.
    Done,
    /// An error occurred; the output is unusable.
    Failed,
}

/// A directory being written.
struct OpenDir {
    /// Where this directory's last entry name starts in `names`; the name
    /// runs to the end of `names` (empty before the first entry).
    name_start: usize,
}

impl<S: Write> Encoder<S> {
    /// An encoder into `out`. Nothing is written until the root node.
    pub(super) fn new(out: S, contents_copy: ContentsCopy) -> Self {
        Self {
            out: BufWriter::with_capacity(OUTPUT_BUFFER, out),
            written: 0,
            contents_copy,
            state: State::Node,
            started: false,
            dirs: Vec::new(),
            names: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// NAR bytes written so far.
    pub(super) fn position(&self) -> u64 {
        self.written
    }

    /// As [`NarWriter::regular`].
    pub(super) fn regular(
        &mut self,
        executable: bool,
        size: u64,
        contents: impl Read,
    ) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            w.regular_header(executable, size)?;
            w.copy_contents(size, contents)?;
            w.regular_trailer(size)
        })
    }

    /// As [`NarWriter::regular_bytes`].
    pub(super) fn regular_bytes(
        &mut self,
        executable: bool,
        contents: &[u8],
    ) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            let size = contents.len() as u64;
            w.regular_header(executable, size)?;
            w.put(contents)?;
            w.regular_trailer(size)
        })
    }

    /// Writes the regular file at `path`, as [`SizedFile`] reads it: the
    /// file system side of [`super::dump`].
    ///
    /// # Errors
    /// [`NarError::Fs`] naming `path` if reading fails (or, with
    /// [`ContentsCopy::Kernel`], if the copy fails: the kernel does not
    /// say which side failed), [`NarError::FileChanged`] if the file does
    /// not have exactly its declared size, [`NarError::Io`] if the output
    /// fails, [`NarError::Misuse`] if no node may be written here.
    pub(super) fn regular_file(
        &mut self,
        executable: bool,
        mut file: SizedFile,
        path: &Path,
    ) -> Result<(), NarError> {
        self.guarded(|w| {
            let size = file.size();
            w.begin_node()?;
            w.regular_header(executable, size)?;
            match w.contents_copy {
                ContentsCopy::Kernel if size >= KERNEL_COPY_MIN => {
                    w.copy_file_kernel(&mut file, path)?;
                }
                _ => w.copy_file_buffered(&mut file, path)?,
            }
            w.regular_trailer(size)
        })
    }

    /// Starts a regular file of `size` bytes, whose contents follow in
    /// [`Encoder::contents`] calls; the node is complete with its last byte
    /// (at once if `size` is 0).
    ///
    /// # Errors
    /// [`NarError::Misuse`] if no node may be written here,
    /// [`NarError::Io`] if the output fails.
    pub(super) fn begin_regular(&mut self, executable: bool, size: u64) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            w.regular_header(executable, size)?;
            if size == 0 {
                return w.regular_trailer(0);
            }
            w.state = State::Contents {
                size,
                remaining: size,
            };
            Ok(())
        })
    }

    /// Writes the next bytes of the file started by
    /// [`Encoder::begin_regular`].
    ///
    /// # Errors
    /// [`NarError::Misuse`] outside a file's contents or past their
    /// declared size, [`NarError::Io`] if the output fails.
    pub(super) fn contents(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.guarded(|w| {
            let State::Contents { size, remaining } = w.state else {
                return Err(w.out_of_order("contents()"));
            };
            let Some(remaining) = remaining.checked_sub(bytes.len() as u64) else {
                return Err(misuse(format!(
                    "{} bytes of contents where {remaining} are left of the declared {size}",
                    bytes.len()
                )));
            };
            w.put(bytes)?;
            w.state = State::Contents { size, remaining };
            if remaining == 0 {
                w.regular_trailer(size)?;
            }
            Ok(())
        })
    }

    /// As [`NarWriter::symlink`].
    pub(super) fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        self.guarded(|w| {
            let max = Limits::DEFAULT.max_target_len;
            if target.is_empty() || target.contains(&0) || target.len() > max {
                return Err(misuse(format!(
                    "invalid symlink target '{}' (must be 1 to {max} bytes, without NUL)",
                    Escaped(target)
                )));
            }
            w.begin_node()?;
            w.put(wire::SYMLINK)?;
            w.write_str(target)?;
            w.put(wire::CLOSE)?;
            w.end_node()
        })
    }

    /// As [`NarWriter::begin_directory`].
    pub(super) fn begin_directory(&mut self) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            w.put(wire::DIRECTORY)?;
            w.dirs.push(OpenDir {
                name_start: w.names.len(),
            });
            w.state = State::Directory;
            Ok(())
        })
    }

    /// As [`NarWriter::entry`].
    pub(super) fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        self.guarded(|w| {
            let Some(dir) = w.dirs.last().filter(|_| w.state == State::Directory) else {
                return Err(w.out_of_order("entry()"));
            };
            if !wire::is_valid_name(name) || name.len() > Limits::DEFAULT.max_name_len {
                return Err(misuse(format!("invalid entry name '{}'", Escaped(name))));
            }
            let previous = &w.names[dir.name_start..];
            // Names are never empty, so an empty `previous` means "first".
            if !previous.is_empty() && name <= previous {
                return Err(misuse(format!(
                    "entry '{}' after '{}': names must be strictly ascending",
                    Escaped(name),
                    Escaped(previous)
                )));
            }
            let name_start = dir.name_start;
            w.put(wire::ENTRY)?;
            w.write_str(name)?;
            w.put(wire::NODE)?;
            w.names.truncate(name_start);
            w.names.extend_from_slice(name);
            w.state = State::Node;
            Ok(())
        })
    }

    /// As [`NarWriter::end_directory`].
    pub(super) fn end_directory(&mut self) -> Result<(), NarError> {
        self.guarded(|w| {
            if w.state != State::Directory {
                return Err(w.out_of_order("end_directory()"));
            }
            w.put(wire::CLOSE)?;
            if let Some(dir) = w.dirs.pop() {
                w.names.truncate(dir.name_start);
            }
            w.end_node()
        })
    }

    /// Flushes the NAR and returns the output and the NAR's size.
    ///
    /// # Errors
    /// As [`NarWriter::finish`].
    pub(super) fn finish(mut self) -> Result<(S, u64), NarError> {
        if self.state != State::Done {
            return Err(self.out_of_order("finish()"));
        }
        self.out.flush()?;
        let out = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((out, self.written))
    }

    /// Runs `f`, and marks the writer failed if it fails.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, NarError>,
    ) -> Result<T, NarError> {
        if self.state == State::Failed {
            return Err(misuse(
                "the NAR writer failed earlier; its output is unusable",
            ));
        }
        let result = f(self);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Writes NAR bytes; every byte of the NAR but kernel-copied contents
    /// goes through here.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Checks that a node may start here, writing the magic before the root.
    fn begin_node(&mut self) -> Result<(), NarError> {
        if self.state != State::Node {
            return Err(self.out_of_order("a node"));
        }
        if !self.started {
            self.put(wire::MAGIC)?;
            self.started = true;
        }
        Ok(())
    }

    /// After a complete node: closes its entry, or completes the NAR.
    fn end_node(&mut self) -> Result<(), NarError> {
        if self.dirs.is_empty() {
            self.state = State::Done;
        } else {
            self.put(wire::CLOSE)?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn regular_header(&mut self, executable: bool, size: u64) -> io::Result<()> {
        self.put(wire::REGULAR)?;
        if executable {
            self.put(wire::EXECUTABLE)?;
        }
        self.put(wire::CONTENTS)?;
        self.put(&size.to_le_bytes())
    }

    fn regular_trailer(&mut self, size: u64) -> Result<(), NarError> {
        self.put(&ZEROS[..padding_len(size)])?;
        self.put(wire::CLOSE)?;
        self.end_node()
    }

    /// Copies exactly `size` bytes from `contents`, and checks it ends there.
    fn copy_contents(&mut self, size: u64, mut contents: impl Read) -> Result<(), NarError> {
        let mut remaining = size;
        loop {
            // Ask for one byte more than is left, so that a reader with too
            // much data shows it in this read rather than in an extra one;
            // a small file then takes one read plus the read that sees EOF.
            let want = remaining.saturating_add(1).min(CONTENTS_CHUNK as u64) as usize;
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let n = read_retrying(&mut contents, &mut self.buf[..want])
                .map_err(NarError::ContentsRead)?;
            if n == 0 {
                return match remaining {
                    0 => Ok(()),
                    _ => Err(NarError::ContentsSize {
                        declared: size,
                        longer: false,
                    }),
                };
            }
            if n as u64 > remaining {
                return Err(NarError::ContentsSize {
                    declared: size,
                    longer: true,
                });
            }
            self.put_contents(n)?;
            remaining -= n as u64;
        }
    }

    /// Copies a file's contents through `buf`, where they can be hashed.
    fn copy_file_buffered(&mut self, file: &mut SizedFile, path: &Path) -> Result<(), NarError> {
        // One byte more than the contents, so that a file that fits is
        // read, and seen to end, in one read (see `SizedFile`).
        let want = file
            .remaining()
            .saturating_add(1)
            .min(CONTENTS_CHUNK as u64) as usize;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        loop {
            let n = file.read(&mut self.buf[..want], path)?;
            if n == 0 {
                return Ok(());
            }
            // Chunks as large as `out`'s buffer go straight through it.
            self.put_contents(n)?;
        }
    }

    /// Writes the first `n` bytes of `buf`.
    fn put_contents(&mut self, n: usize) -> io::Result<()> {
        self.out.write_all(&self.buf[..n])?;
        self.written += n as u64;
        Ok(())
    }

    /// Copies a file's contents with `io::copy` (see [`ContentsCopy::Kernel`]).
    fn copy_file_kernel(&mut self, file: &mut SizedFile, path: &Path) -> Result<(), NarError> {
        // `Take` stops the copy at the declared size, whatever the file
        // holds; `io::copy` flushes `out` before it copies past it.
        let copied =
            io::copy(&mut file.file().take(file.remaining()), &mut self.out).map_err(|source| {
                NarError::Fs {
                    op: "copying the contents of",
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        self.written += copied;
        // A shorter file shows in the count; a longer one takes one more
        // read to see.
        file.skip(copied);
        while file.read(&mut [0u8; 1], path)? != 0 {}
        Ok(())
    }

    /// Writes `bytes(s)` (docs/formats.md §0).
    fn write_str(&mut self, s: &[u8]) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&ZEROS[..padding_len(s.len() as u64)])
    }

    /// The error for calling `what` in the current state.
    fn out_of_order(&self, what: &str) -> NarError {
        let expected = match self.state {
            State::Node if self.dirs.is_empty() => "the root node",
            State::Node => "the node of the entry just started",
            State::Directory => "entry() or end_directory()",
            State::Contents { .. } => "the rest of a file's contents",
            State::Done => "nothing (the root node is complete)",
            State::Failed => "nothing (the writer failed)",
        };
        misuse(format!("{what} written where the NAR needs {expected}"))
    }

    fn fmt_fields(&self, mut f: std::fmt::DebugStruct<'_, '_>) -> std::fmt::Result {
        f.field("state", &self.state)
            .field("depth", &self.dirs.len())
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

fn misuse(message: impl Into<String>) -> NarError {
    NarError::Misuse(message.into())
}

/// `read`, retried when interrupted by a signal.
pub(super) fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn misuse_message(r: Result<(), NarError>) -> String {
        match r {
            Err(NarError::Misuse(m)) => m,
            other => panic!("expected misuse, got {other:?}"),
        }
    }

    #[test]
    fn writes_empty_directory_as_in_spec() {
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.end_directory().unwrap();
        let (nar, summary) = w.finish().unwrap();
        assert_eq!(nar.len(), 96);
        assert_eq!(summary.nar_size, 96);
        assert_eq!(&nar[..24], wire::MAGIC);
    }

    #[test]
    fn refuses_unsorted_and_duplicate_names() {
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.entry(b"b").unwrap();
        w.regular_bytes(false, b"").unwrap();
        let m = misuse_message(w.entry(b"a"));
        assert!(m.contains("'a' after 'b'"), "{m}");

        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.entry(b"a").unwrap();
        w.begin_directory().unwrap();
        w.entry(b"z").unwrap();
        w.symlink(b"t").unwrap();
        w.end_directory().unwrap();
        // The order check is per directory: "z" inside "a" does not count.
        w.entry(b"b").unwrap();
        w.regular_bytes(false, b"").unwrap();
        assert!(misuse_message(w.entry(b"b")).contains("strictly ascending"));
    }

    #[test]
    fn refuses_invalid_names_and_targets() {
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'n'; 256]] {
            let mut w = NarWriter::new(Vec::new());
            w.begin_directory().unwrap();
            assert!(misuse_message(w.entry(name)).contains("invalid entry name"));
        }
        for target in [&b""[..], b"a\0", &[b'a'; 4096]] {
            let mut w = NarWriter::new(Vec::new());
            assert!(misuse_message(w.symlink(target)).contains("invalid symlink target"));
        }
    }

    #[test]
    fn refuses_calls_out_of_order() {
        let mut w = NarWriter::new(Vec::new());
        assert!(misuse_message(w.entry(b"a")).contains("entry()"));

        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.entry(b"a").unwrap();
        assert!(misuse_message(w.end_directory()).contains("node of the entry"));

        let mut w = NarWriter::new(Vec::new());
        w.symlink(b"t").unwrap();
        assert!(misuse_message(w.symlink(b"t")).contains("root node is complete"));

        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        assert!(matches!(w.finish(), Err(NarError::Misuse(_))));
        assert!(matches!(
            NarWriter::new(Vec::new()).finish(),
            Err(NarError::Misuse(_))
        ));
    }

    #[test]
    fn refuses_contents_of_the_wrong_size_and_then_everything() {
        let mut w = NarWriter::new(Vec::new());
        let r = w.regular(false, 3, &b"ab"[..]);
        assert!(matches!(
            r,
            Err(NarError::ContentsSize {
                declared: 3,
                longer: false
            })
        ));
        assert!(misuse_message(w.symlink(b"t")).contains("failed earlier"));

        let mut w = NarWriter::new(Vec::new());
        let r = w.regular(true, 1, &b"ab"[..]);
        assert!(matches!(
            r,
            Err(NarError::ContentsSize {
                declared: 1,
                longer: true
            })
        ));
    }

    /// A file of `len` bytes, and the NAR of a regular file with them.
    fn file_and_nar(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&data).unwrap();
        let mut w = NarWriter::new(Vec::new());
        w.regular_bytes(true, &data).unwrap();
        (t, w.finish().unwrap().0)
    }

    #[test]
    fn regular_file_copies_exactly_the_declared_size() {
        // The two large sizes take the kernel path under `Kernel`.
        for len in [0, 5, CONTENTS_CHUNK, CONTENTS_CHUNK * 2 + 5] {
            let (t, nar) = file_and_nar(len);
            let sized = |declared| SizedFile::new(File::open(t.path()).unwrap(), declared);
            for copy in [ContentsCopy::Buffered, ContentsCopy::Kernel] {
                // Into a `Vec`, and into a file, which the kernel can copy to.
                let mut e = Encoder::new(Vec::new(), copy);
                e.regular_file(true, sized(len as u64), t.path()).unwrap();
                assert!(e.finish().unwrap().0 == nar, "{len} {copy:?}");
                let out = tempfile::NamedTempFile::new().unwrap();
                let mut e = Encoder::new(out.as_file(), copy);
                e.regular_file(true, sized(len as u64), t.path()).unwrap();
                assert_eq!(e.finish().unwrap().1, nar.len() as u64);
                assert!(std::fs::read(out.path()).unwrap() == nar, "{len} {copy:?}");

                for declared in [len as u64 + 1, (len as u64).saturating_sub(1)] {
                    if declared == len as u64 {
                        continue;
                    }
                    let mut e = Encoder::new(Vec::new(), copy);
                    let r = e.regular_file(true, sized(declared), t.path());
                    assert!(
                        matches!(&r, Err(NarError::FileChanged { path, expected })
                            if path == t.path() && *expected == declared),
                        "{len} {copy:?} {declared}: {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn contents_in_pieces() {
        let mut e = Encoder::new(Vec::new(), ContentsCopy::Buffered);
        e.begin_directory().unwrap();
        e.entry(b"a").unwrap();
        e.begin_regular(false, 5).unwrap();
        assert!(misuse_message(e.entry(b"b")).contains("rest of a file's contents"));

        let mut e = Encoder::new(Vec::new(), ContentsCopy::Buffered);
        e.begin_directory().unwrap();
        e.entry(b"a").unwrap();
        e.begin_regular(false, 5).unwrap();
        e.contents(b"he").unwrap();
        e.contents(b"llo").unwrap();
        e.entry(b"b").unwrap();
        e.begin_regular(true, 0).unwrap();
        e.end_directory().unwrap();
        let mut w = NarWriter::new(Vec::new());
        w.begin_directory().unwrap();
        w.entry(b"a").unwrap();
        w.regular_bytes(false, b"hello").unwrap();
        w.entry(b"b").unwrap();
        w.regular_bytes(true, b"").unwrap();
        w.end_directory().unwrap();
        assert_eq!(e.finish().unwrap().0, w.finish().unwrap().0);

        let mut e = Encoder::new(Vec::new(), ContentsCopy::Buffered);
        e.begin_regular(false, 3).unwrap();
        e.contents(b"ab").unwrap();
        assert!(misuse_message(e.contents(b"cd")).contains("2 bytes of contents where 1"));
        let mut e = Encoder::new(Vec::new(), ContentsCopy::Buffered);
        assert!(misuse_message(e.contents(b"x")).contains("contents()"));
    }

    #[test]
    fn regular_from_reader_equals_from_bytes() {
        let data: Vec<u8> = (0..CONTENTS_CHUNK * 2 + 5).map(|i| i as u8).collect();
        let mut a = NarWriter::new(Vec::new());
        a.regular(true, data.len() as u64, &data[..]).unwrap();
        let mut b = NarWriter::new(Vec::new());
        b.regular_bytes(true, &data).unwrap();
        assert_eq!(a.finish().unwrap().0, b.finish().unwrap().0);
    }
}
