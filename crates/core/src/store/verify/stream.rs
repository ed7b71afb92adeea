//! A NAR stream that checks itself against its path info.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::Digest as _;
use tokio::io::{AsyncRead, ReadBuf};

use crate::hash::NixHash;
use crate::store::{NarStream, StoreError};

/// Wraps a NAR stream so that it fails, instead of ending, when its bytes
/// do not hash to `nar_hash` or do not number `nar_size`: a destination
/// store reads streams to the end before it commits a path, so a mismatch
/// aborts the write wherever it goes. It fails early when the stream runs
/// past `nar_size`. `on_bytes` sees every chunk's length, for progress.
///
/// Made with [`Verified::size_only`], it checks only the size: for
/// destinations that check the hash themselves, so the bytes are hashed
/// once.
pub(crate) struct Verified {
    inner: NarStream,
    /// The full store path, for messages.
    path: String,
    /// `None` when the hash is left to the destination.
    hasher: Option<sha2::Sha256>,
    count: u64,
    expected_hash: NixHash,
    expected_size: u64,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Verified {
    pub(crate) fn new(
        inner: NarStream,
        path: String,
        expected_hash: NixHash,
        expected_size: u64,
        on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        Self {
            inner,
            path,
            hasher: Some(sha2::Sha256::new()),
            count: 0,
            expected_hash,
            expected_size,
            on_bytes,
        }
    }

    /// As [`Verified::new`], checking the size only.
    pub(crate) fn size_only(
        inner: NarStream,
        path: String,
        expected_hash: NixHash,
        expected_size: u64,
        on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Self {
        Self {
            hasher: None,
            ..Self::new(inner, path, expected_hash, expected_size, on_bytes)
        }
    }

    /// The stream's error: a [`StoreError::NarMismatch`] inside an
    /// `io::Error`, which stores pass on as it is.
    fn mismatch(&self, message: String) -> io::Error {
        let e = StoreError::NarMismatch {
            path: self.path.clone(),
            message,
        };
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn check_end(&mut self) -> io::Result<()> {
        if self.count != self.expected_size {
            return Err(self.mismatch(format!(
                "NAR size mismatch: expected {} bytes, got {}",
                self.expected_size, self.count
            )));
        }
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let digest: [u8; 32] = hasher.finalize().into();
        let got = NixHash::sha256(digest);
        if got != self.expected_hash {
            return Err(self.mismatch(format!(
                "NAR hash mismatch: expected {}, got {got}",
                self.expected_hash
            )));
        }
        Ok(())
    }
}

impl AsyncRead for Verified {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let chunk = &buf.filled()[before..];
                if chunk.is_empty() {
                    return Poll::Ready(self.check_end());
                }
                let n = chunk.len() as u64;
                if let Some(h) = &mut self.hasher {
                    h.update(chunk);
                }
                self.count += n;
                (self.on_bytes)(n);
                if self.count > self.expected_size {
                    let e = self.mismatch(format!(
                        "NAR size mismatch: more than the expected {} bytes",
                        self.expected_size
                    ));
                    // A failed read must not hand out bytes.
                    buf.set_filled(before);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    type Make = fn(NarStream, String, NixHash, u64, Arc<dyn Fn(u64) + Send + Sync>) -> Verified;

    async fn read_with(
        make: Make,
        data: &'static [u8],
        hash: NixHash,
        size: u64,
    ) -> io::Result<Vec<u8>> {
        let mut v = make(
            Box::pin(data),
            "/nix/store/x".into(),
            hash,
            size,
            Arc::new(|_| {}),
        );
        let mut out = Vec::new();
        v.read_to_end(&mut out).await?;
        Ok(out)
    }

    async fn read_all(data: &'static [u8], hash: NixHash, size: u64) -> io::Result<Vec<u8>> {
        read_with(Verified::new, data, hash, size).await
    }

    #[tokio::test]
    async fn passes_matching_and_fails_mismatching_streams() {
        let data: &'static [u8] = b"some nar bytes";
        let good = NixHash::sha256(crate::hash::sha256(data));
        assert_eq!(read_all(data, good, 14).await.unwrap(), data);
        let e = read_all(data, good, 13).await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let e = read_all(data, good, 15).await.unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
        let bad = NixHash::sha256([0; 32]);
        let e = read_all(data, bad, 14).await.unwrap_err();
        assert!(e.to_string().contains("hash mismatch"), "{e}");
    }

    #[tokio::test]
    async fn size_only_leaves_the_hash_alone() {
        let data: &'static [u8] = b"some nar bytes";
        let bad = NixHash::sha256([0; 32]);
        let read = |size| read_with(Verified::size_only, data, bad, size);
        assert_eq!(read(14).await.unwrap(), data);
        assert!(read(13).await.is_err());
        assert!(read(15).await.is_err());
    }
}
