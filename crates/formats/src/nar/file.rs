//! [`SizedFile`]: reading a regular file's contents for [`super::dump`],
//! exactly as many bytes as `lstat` said, and no fewer or more.

use std::fs::File;
use std::path::Path;

use super::writer::read_retrying;
use super::NarError;

/// The contents of a regular file whose size was taken from `lstat` (docs/formats.md
/// §1.1 rule 6) and written into the NAR before its contents: the file
/// must still have exactly that many bytes. Fewer or more is
/// [`NarError::FileChanged`], because the NAR cannot be right.
///
/// Seeing the end of a file usually costs a `read` that returns 0, one
/// system call per file on top of the one that read the contents. For a
/// tree of small files that is a large share of the work, so this reader
/// avoids it: it always asks for one byte more than is left, and a *short*
/// read that ends exactly at the declared size is taken as the end of the
/// file. On Linux a read from a regular file returns fewer bytes than asked
/// only at the end of the file (or when a fatal signal is pending, when
/// nothing matters any more). A file system that returns short reads in
/// the middle of a file (some FUSE or network file systems can) could hide
/// a file that grew, if its short read happened to end exactly at the old
/// size; that is a race with the writer, which no check can close anyway,
/// and Nix does not look for growth at all. A file that is too long still
/// shows in the same read, as the extra byte.
pub(super) struct SizedFile {
    file: File,
    /// The size from `lstat`, as written into the NAR.
    declared: u64,
    /// Bytes still to read.
    remaining: u64,
    /// Whether the end of the file has been seen where it should be.
    ended: bool,
}

impl SizedFile {
    /// The contents of `file`, declared to be `size` bytes long, from the
    /// start.
    pub(super) fn new(file: File, size: u64) -> Self {
        Self {
            file,
            declared: size,
            remaining: size,
            ended: false,
        }
    }

    /// The declared size.
    pub(super) fn size(&self) -> u64 {
        self.declared
    }

    /// Bytes still to read.
    pub(super) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The file, to read by other means (then see [`SizedFile::skip`]).
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Accounts for `n` bytes read by other means (at most
    /// [`remaining`](Self::remaining)).
    pub(super) fn skip(&mut self, n: u64) {
        debug_assert!(n <= self.remaining);
        self.remaining -= n.min(self.remaining);
    }

    /// Reads the next bytes into `buf` (not empty) and returns how many;
    /// 0 once all the declared bytes have been read and the file has been
    /// seen to end there. Pass a buffer longer than what is left to read a
    /// file and see its end in one system call. `path` is the file's, for
    /// errors.
    ///
    /// # Errors
    /// [`NarError::Fs`] if reading fails, [`NarError::FileChanged`] if the
    /// file turns out shorter or longer than declared.
    pub(super) fn read(&mut self, buf: &mut [u8], path: &Path) -> Result<usize, NarError> {
        debug_assert!(!buf.is_empty());
        if self.ended {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = read_retrying(&mut self.file, &mut buf[..want]).map_err(|source| NarError::Fs {
            op: "reading file",
            path: path.to_path_buf(),
            source,
        })?;
        if n as u64 > self.remaining || (n == 0 && self.remaining > 0) {
            return Err(NarError::FileChanged {
                path: path.to_path_buf(),
                expected: self.declared,
            });
        }
        self.remaining -= n as u64;
        // A short read is the end of the file (see the type's comment); a
        // full one that completes the contents needs one more read to show
        // the end. A short read before the declared size is not the end
        // yet: the next read says whether the file really is shorter.
        if n < want && self.remaining == 0 {
            self.ended = true;
        }
        Ok(n)
    }

    /// Reads the rest of the contents into `buf`, which must hold at least
    /// [`remaining`](Self::remaining) bytes, and sees the end of the file;
    /// returns the number of bytes read. With one byte more than that, a
    /// file takes a single system call.
    ///
    /// # Errors
    /// As [`SizedFile::read`].
    pub(super) fn read_all(&mut self, buf: &mut [u8], path: &Path) -> Result<usize, NarError> {
        debug_assert!(buf.len() as u64 >= self.remaining);
        let mut filled = 0;
        loop {
            let n = match buf.get_mut(filled..) {
                Some(rest) if !rest.is_empty() => self.read(rest, path)?,
                // All read but the end not seen: a byte more is an error.
                _ => self.read(&mut [0u8; 1], path)?,
            };
            if n == 0 {
                return Ok(filled);
            }
            filled += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn sized(contents: &[u8], declared: u64) -> (tempfile::NamedTempFile, SizedFile) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(contents).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, SizedFile::new(f, declared))
    }

    #[test]
    fn reads_exactly_the_declared_size() {
        let (t, mut r) = sized(b"hello", 5);
        let mut buf = [0u8; 16];
        assert_eq!(r.read_all(&mut buf, t.path()).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.read(&mut buf, t.path()).unwrap(), 0);
    }

    #[test]
    fn reads_in_small_chunks_and_sees_the_end() {
        let (t, mut r) = sized(b"hello", 5);
        let mut out = Vec::new();
        let mut buf = [0u8; 2];
        loop {
            match r.read(&mut buf, t.path()).unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(out, b"hello");
    }

    #[test]
    fn longer_and_shorter_files_are_changed() {
        let mut buf = [0u8; 16];
        for (contents, declared) in [(&b"hello"[..], 4), (b"hello", 6), (b"", 1), (b"x", 0)] {
            let (t, mut r) = sized(contents, declared);
            let e = r.read_all(&mut buf, t.path()).unwrap_err();
            assert!(
                matches!(e, NarError::FileChanged { expected, .. } if expected == declared),
                "{e:?}"
            );
        }
        // Also when the buffer holds exactly the declared size, so that the
        // extra byte shows only in a second read.
        let (t, mut r) = sized(b"hello", 4);
        let e = r.read_all(&mut buf[..4], t.path()).unwrap_err();
        assert!(matches!(e, NarError::FileChanged { .. }), "{e:?}");
    }
}
