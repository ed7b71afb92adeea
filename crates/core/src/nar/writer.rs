//! [`NarWriter`]: the canonical NAR writer every encoder goes through.

use std::io::{self, BufWriter, Read, Write};

use super::wire::{self, padding_len, ZEROS};
use super::{Escaped, Limits, NarError, NarSummary};
use crate::hash::HashingWriter;

/// File contents are copied through a buffer of this size. Large enough that
/// per-call overhead vanishes next to hashing, small enough to stay in L2.
pub(super) const CONTENTS_CHUNK: usize = 256 * 1024;

/// Small tokens are gathered into this buffer before they are hashed and
/// passed on, so that an unbuffered output sees few large writes.
const OUTPUT_BUFFER: usize = 64 * 1024;

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
/// use nixferry::nar::NarWriter;
///
/// let mut w = NarWriter::new(Vec::new());
/// w.regular_bytes(false, b"hi")?;
/// let (nar, summary) = w.finish()?;
/// assert_eq!(nar.len(), 120); // SPEC §1.3, `hi.nar`
/// assert_eq!(
///     summary.nar_hash.to_string(),
///     "sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2"
/// );
/// # Ok::<(), nixferry::nar::NarError>(())
/// ```
pub struct NarWriter<W: Write> {
    out: BufWriter<HashingWriter<W>>,
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

impl<W: Write> NarWriter<W> {
    /// A writer into `out`. Nothing is written until the root node.
    pub fn new(out: W) -> Self {
        Self {
            out: BufWriter::with_capacity(OUTPUT_BUFFER, HashingWriter::new(out)),
            state: State::Node,
            started: false,
            dirs: Vec::new(),
            names: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// NAR bytes written so far.
    pub fn position(&self) -> u64 {
        self.out.get_ref().count() + self.out.buffer().len() as u64
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
        self.guarded(|w| {
            w.begin_node()?;
            w.regular_header(executable, size)?;
            w.copy_contents(size, contents)?;
            w.regular_trailer(size)
        })
    }

    /// Writes a regular file with the given contents.
    ///
    /// # Errors
    /// As [`NarWriter::regular`].
    pub fn regular_bytes(&mut self, executable: bool, contents: &[u8]) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            let size = contents.len() as u64;
            w.regular_header(executable, size)?;
            w.out.write_all(contents)?;
            w.regular_trailer(size)
        })
    }

    /// Writes a symlink (SPEC §1.1 rule 3: the raw target bytes).
    ///
    /// # Errors
    /// [`NarError::Misuse`] for an empty target, one containing NUL or one
    /// longer than 4095 bytes, or if no node may be written here;
    /// [`NarError::Io`] if the output fails.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        self.guarded(|w| {
            let max = Limits::DEFAULT.max_target_len;
            if target.is_empty() || target.contains(&0) || target.len() > max {
                return Err(misuse(format!(
                    "invalid symlink target '{}' (must be 1 to {max} bytes, without NUL)",
                    Escaped(target)
                )));
            }
            w.begin_node()?;
            w.out.write_all(wire::SYMLINK)?;
            w.write_str(target)?;
            w.out.write_all(wire::CLOSE)?;
            w.end_node()
        })
    }

    /// Starts a directory; its entries follow, then
    /// [`end_directory`](Self::end_directory).
    ///
    /// # Errors
    /// [`NarError::Misuse`] if no node may be written here,
    /// [`NarError::Io`] if the output fails.
    pub fn begin_directory(&mut self) -> Result<(), NarError> {
        self.guarded(|w| {
            w.begin_node()?;
            w.out.write_all(wire::DIRECTORY)?;
            w.dirs.push(OpenDir {
                name_start: w.names.len(),
            });
            w.state = State::Directory;
            Ok(())
        })
    }

    /// Starts an entry of the current directory; its node comes next.
    ///
    /// # Errors
    /// [`NarError::Misuse`] outside a directory, or for a name that is
    /// invalid (empty, `.`, `..`, containing `/` or NUL, longer than 255
    /// bytes) or not greater than the previous entry's name;
    /// [`NarError::Io`] if the output fails.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
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
            w.out.write_all(wire::ENTRY)?;
            w.write_str(name)?;
            w.out.write_all(wire::NODE)?;
            w.names.truncate(name_start);
            w.names.extend_from_slice(name);
            w.state = State::Node;
            Ok(())
        })
    }

    /// Ends the current directory.
    ///
    /// # Errors
    /// [`NarError::Misuse`] outside a directory or when the last entry has
    /// no node yet; [`NarError::Io`] if the output fails.
    pub fn end_directory(&mut self) -> Result<(), NarError> {
        self.guarded(|w| {
            if w.state != State::Directory {
                return Err(w.out_of_order("end_directory()"));
            }
            w.out.write_all(wire::CLOSE)?;
            if let Some(dir) = w.dirs.pop() {
                w.names.truncate(dir.name_start);
            }
            w.end_node()
        })
    }

    /// Flushes the NAR and returns the output with the NAR's hash and size.
    ///
    /// # Errors
    /// [`NarError::Misuse`] if the root node is not complete,
    /// [`NarError::Io`] if flushing fails.
    pub fn finish(mut self) -> Result<(W, NarSummary), NarError> {
        if self.state != State::Done {
            return Err(self.out_of_order("finish()"));
        }
        self.out.flush()?;
        let hashing = self.out.into_inner().map_err(|e| e.into_error())?;
        let (out, nar_hash, nar_size) = hashing.finish();
        Ok((out, NarSummary { nar_hash, nar_size }))
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

    /// Checks that a node may start here, writing the magic before the root.
    fn begin_node(&mut self) -> Result<(), NarError> {
        if self.state != State::Node {
            return Err(self.out_of_order("a node"));
        }
        if !self.started {
            self.out.write_all(wire::MAGIC)?;
            self.started = true;
        }
        Ok(())
    }

    /// After a complete node: closes its entry, or completes the NAR.
    fn end_node(&mut self) -> Result<(), NarError> {
        if self.dirs.is_empty() {
            self.state = State::Done;
        } else {
            self.out.write_all(wire::CLOSE)?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn regular_header(&mut self, executable: bool, size: u64) -> io::Result<()> {
        self.out.write_all(wire::REGULAR)?;
        if executable {
            self.out.write_all(wire::EXECUTABLE)?;
        }
        self.out.write_all(wire::CONTENTS)?;
        self.out.write_all(&size.to_le_bytes())
    }

    fn regular_trailer(&mut self, size: u64) -> Result<(), NarError> {
        self.out.write_all(&ZEROS[..padding_len(size)])?;
        self.out.write_all(wire::CLOSE)?;
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
            self.out.write_all(&self.buf[..n])?;
            remaining -= n as u64;
        }
    }

    /// Writes `bytes(s)` (SPEC §0).
    fn write_str(&mut self, s: &[u8]) -> io::Result<()> {
        self.out.write_all(&(s.len() as u64).to_le_bytes())?;
        self.out.write_all(s)?;
        self.out.write_all(&ZEROS[..padding_len(s.len() as u64)])
    }

    /// The error for calling `what` in the current state.
    fn out_of_order(&self, what: &str) -> NarError {
        let expected = match self.state {
            State::Node if self.dirs.is_empty() => "the root node",
            State::Node => "the node of the entry just started",
            State::Directory => "entry() or end_directory()",
            State::Done => "nothing (the root node is complete)",
            State::Failed => "nothing (the writer failed)",
        };
        misuse(format!("{what} written where the NAR needs {expected}"))
    }
}

impl<W: Write> std::fmt::Debug for NarWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarWriter")
            .field("state", &self.state)
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
