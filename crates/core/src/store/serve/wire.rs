//! The protocol's primitives (docs/formats.md §0) over tokio streams, bounded.
//!
//! Every length the peer sends is checked twice before anything is
//! allocated: against a limit for its field (a store path, a signature,
//! a list of references), and against the budget of the reply being read,
//! so a hostile server can make a reply cost at most a known amount of
//! memory. Errors name the field being read.

use std::io;

use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter,
};

use super::ServeError;
use crate::nar::padding_len;

/// Longest store path string accepted (Linux `PATH_MAX`; a valid one has
/// at most a store directory, 33 bytes and a 211-byte name).
pub(super) const MAX_PATH_LEN: usize = 4096;
/// Longest `narHash` string: `sha512:` and 128 hex digits fit well.
pub(super) const MAX_HASH_LEN: usize = 256;
/// Longest content-address string (`fixed:r:sha512:<base16>` is 151).
pub(super) const MAX_CA_LEN: usize = 1024;
/// Longest signature (`name:base64`); Nix does not bound key names, so
/// this is generous.
pub(super) const MAX_SIG_LEN: usize = 4096;
/// Most signatures on one path.
pub(super) const MAX_SIGS: u64 = 4096;
/// Most references of one path; real paths have at most a few thousand.
pub(super) const MAX_REFERENCES: u64 = 1 << 20;
/// Most paths in a closure reply.
pub(super) const MAX_CLOSURE: u64 = 1 << 24;
/// A reply may hold this many bytes of strings and integers, plus
/// [`REPLY_BUDGET_PER_PATH`] for each path asked about. A path info is
/// typically 1–2 KiB on the wire; the base leaves room for a few with
/// thousands of references, and for closures of a million paths.
pub(super) const REPLY_BUDGET_BASE: u64 = 64 << 20;
/// See [`REPLY_BUDGET_BASE`].
pub(super) const REPLY_BUDGET_PER_PATH: u64 = 16 << 10;

/// The reading side of a connection: a buffered stream and the budget of
/// the reply being read.
#[derive(Debug)]
pub(super) struct WireReader<R> {
    inner: BufReader<R>,
    budget: u64,
}

impl<R: AsyncRead + Unpin> WireReader<R> {
    /// Reads `inner` through a buffer of `capacity` bytes.
    pub(super) fn new(inner: R, capacity: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(capacity, inner),
            budget: REPLY_BUDGET_BASE,
        }
    }

    /// The buffered stream, for bytes that bypass the budget (NARs).
    pub(super) fn buffered(&mut self) -> &mut BufReader<R> {
        &mut self.inner
    }

    /// Gives up the stream; buffered bytes are lost.
    pub(super) fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// Starts a reply that may hold `budget` bytes.
    pub(super) fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    fn charge(&mut self, n: u64, what: &'static str) -> Result<(), ServeError> {
        match self.budget.checked_sub(n) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(ServeError::Protocol {
                what,
                reason: "the reply is larger than nixferry accepts for what was asked".to_owned(),
            }),
        }
    }

    async fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), ServeError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(read_error(e, what)),
        }
    }

    /// `u64`.
    pub(super) async fn u64(&mut self, what: &'static str) -> Result<u64, ServeError> {
        self.charge(8, what)?;
        let mut b = [0u8; 8];
        self.exact(&mut b, what).await?;
        Ok(u64::from_le_bytes(b))
    }

    /// A `u64` that must fit 32 bits, as Nix reads magic numbers, versions
    /// and flags (docs/formats.md §0).
    pub(super) async fn u32(&mut self, what: &'static str) -> Result<u32, ServeError> {
        let n = self.u64(what).await?;
        u32::try_from(n).map_err(|_| ServeError::Protocol {
            what,
            reason: format!("{n:#x} does not fit 32 bits"),
        })
    }

    /// A count of items that must not exceed `max`.
    pub(super) async fn count(&mut self, max: u64, what: &'static str) -> Result<u64, ServeError> {
        let n = self.u64(what).await?;
        if n > max {
            return Err(ServeError::Protocol {
                what,
                reason: format!("{n} items, more than the {max} accepted"),
            });
        }
        Ok(n)
    }

    /// `bytes(s)` of at most `max` bytes, padding checked.
    pub(super) async fn bytes(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, ServeError> {
        let len = self.u64(what).await?;
        if len > max as u64 {
            return Err(ServeError::Protocol {
                what,
                reason: format!("{len} bytes long, more than the {max} accepted"),
            });
        }
        let pad = padding_len(len);
        self.charge(len + pad as u64, what)?;
        // `len <= max`, a usize.
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(max)];
        self.exact(&mut data, what).await?;
        let mut padding = [0u8; 8];
        self.exact(&mut padding[..pad], what).await?;
        if padding.iter().any(|&b| b != 0) {
            return Err(ServeError::Protocol {
                what,
                reason: "non-zero padding".to_owned(),
            });
        }
        Ok(data)
    }

    /// A string of at most `max` bytes, which must be UTF-8 (every string
    /// of the protocol's path infos is ASCII).
    pub(super) async fn string(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<String, ServeError> {
        let b = self.bytes(max, what).await?;
        String::from_utf8(b).map_err(|e| ServeError::Protocol {
            what,
            reason: format!("not UTF-8: '{}'", e.as_bytes().escape_ascii()),
        })
    }

    /// `strings(L)`: at most `max_count` strings of at most `max_len` bytes.
    pub(super) async fn strings(
        &mut self,
        max_count: u64,
        max_len: usize,
        what: &'static str,
    ) -> Result<Vec<String>, ServeError> {
        let n = self.count(max_count, what).await?;
        // Never trust the count for an allocation: it grows as items arrive.
        let mut out = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            out.push(self.string(max_len, what).await?);
        }
        Ok(out)
    }
}

/// A read failure, saying plainly when the peer hung up.
pub(super) fn read_error(e: io::Error, what: &'static str) -> ServeError {
    let source = if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the connection was closed")
    } else {
        e
    };
    ServeError::Read { what, source }
}

/// The writing side of a connection.
#[derive(Debug)]
pub(super) struct WireWriter<W> {
    inner: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> WireWriter<W> {
    /// Writes to `inner` through a buffer of `capacity` bytes.
    pub(super) fn new(inner: W, capacity: usize) -> Self {
        Self {
            inner: BufWriter::with_capacity(capacity, inner),
        }
    }

    /// Gives up the stream; unflushed bytes are lost.
    pub(super) fn into_inner(self) -> W {
        self.inner.into_inner()
    }

    /// Raw bytes (a NAR).
    pub(super) async fn raw(&mut self, data: &[u8], what: &'static str) -> Result<(), ServeError> {
        self.inner
            .write_all(data)
            .await
            .map_err(|source| ServeError::Write { what, source })
    }

    /// `u64`.
    pub(super) async fn u64(&mut self, n: u64, what: &'static str) -> Result<(), ServeError> {
        self.raw(&n.to_le_bytes(), what).await
    }

    /// `bool`.
    pub(super) async fn bool(&mut self, b: bool, what: &'static str) -> Result<(), ServeError> {
        self.u64(u64::from(b), what).await
    }

    /// `bytes(s)`.
    pub(super) async fn bytes(&mut self, s: &[u8], what: &'static str) -> Result<(), ServeError> {
        self.u64(s.len() as u64, what).await?;
        self.raw(s, what).await?;
        self.raw(&[0; 8][..padding_len(s.len() as u64)], what).await
    }

    /// `strings(L)`.
    pub(super) async fn strings<S: AsRef<[u8]>>(
        &mut self,
        items: &[S],
        what: &'static str,
    ) -> Result<(), ServeError> {
        self.u64(items.len() as u64, what).await?;
        for s in items {
            self.bytes(s.as_ref(), what).await?;
        }
        Ok(())
    }

    /// Sends what is buffered.
    pub(super) async fn flush(&mut self, what: &'static str) -> Result<(), ServeError> {
        self.inner
            .flush()
            .await
            .map_err(|source| ServeError::Write { what, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(data: &[u8]) -> WireReader<&[u8]> {
        WireReader::new(data, 64)
    }

    #[tokio::test]
    async fn round_trip() {
        let mut w = WireWriter::new(Vec::new(), 16);
        w.u64(7, "n").await.unwrap();
        w.strings(&["", "a", "12345678", "123456789"], "l")
            .await
            .unwrap();
        w.flush("").await.unwrap();
        let buf = w.into_inner();
        assert_eq!(buf.len(), 8 + 8 + 8 + 16 + 16 + 24);
        let mut r = reader(&buf);
        assert_eq!(r.u64("n").await.unwrap(), 7);
        assert_eq!(
            r.strings(10, 100, "l").await.unwrap(),
            ["", "a", "12345678", "123456789"]
        );
    }

    #[tokio::test]
    async fn bounds_and_padding() {
        let mut long = 5000u64.to_le_bytes().to_vec();
        long.resize(5008, b'x');
        let e = reader(&long)
            .string(MAX_PATH_LEN, "a path")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a path"), "{e}");
        let huge = u64::MAX.to_le_bytes();
        assert!(reader(&huge).bytes(10, "x").await.is_err());
        assert!(reader(&huge).count(10, "x").await.is_err());
        assert!(reader(&huge).u32("x").await.is_err());
        let bad_pad = b"\x01\0\0\0\0\0\0\0a\0\0\0\0\0\0\x01";
        let e = reader(bad_pad).bytes(10, "x").await.unwrap_err();
        assert!(e.to_string().contains("non-zero padding"), "{e}");
        let short = b"\x09\0\0\0\0\0\0\0abc";
        let e = reader(short).bytes(10, "x").await.unwrap_err();
        assert!(matches!(e, ServeError::Read { .. }), "{e}");
        let mut r = reader(b"\x04\0\0\0\0\0\0\0abcd\0\0\0\0");
        r.set_budget(12);
        assert!(r.bytes(10, "x").await.is_err(), "over budget");
    }
}
