//! Byte streams between threads and tasks, in bounded chunks.
//!
//! Backends do their file-system and CPU work on blocking threads and hand
//! NARs to async code through [`blocking_stream`]: what the thread writes
//! to a [`ChunkWriter`] arrives, chunk by chunk, at the [`ChannelReader`]
//! the caller reads. The channel holds a few chunks at most, so memory
//! stays flat whatever the NAR size, and a slow reader slows the writer.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use super::NarStream;

/// Bytes a [`ChunkWriter`] sends at a time.
pub(crate) const CHUNK_SIZE: usize = 256 * 1024;

/// Chunks that may wait in a channel: with [`CHUNK_SIZE`], 1 MiB.
pub(crate) const CHUNKS_AHEAD: usize = 4;

/// Runs `produce` on a blocking thread; what it writes to its
/// [`ChunkWriter`] comes out of the returned stream. An error it returns
/// is the stream's last read; if the stream is dropped, its writes fail
/// with [`io::ErrorKind::BrokenPipe`].
pub(crate) fn blocking_stream<F>(produce: F) -> NarStream
where
    F: FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
{
    blocking_chunks(produce).into_reader()
}

/// The chunks a blocking producer writes, as they were cut: for a reader
/// that passes them on whole (an HTTP body), without the copy into its
/// buffers that reading them as a byte stream takes.
pub struct Chunks {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunks")
    }
}

impl Chunks {
    /// The chunks as a byte stream.
    pub(crate) fn into_reader(self) -> NarStream {
        Box::pin(ChannelReader::new(self.rx))
    }
}

impl futures_util::Stream for Chunks {
    type Item = io::Result<bytes::Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|c| c.map(bytes::Bytes::from)))
    }
}

/// As [`blocking_stream`], the chunks as they are cut.
pub(crate) fn blocking_chunks<F>(produce: F) -> Chunks
where
    F: FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_SIZE),
        };
        let result = produce(&mut out).and_then(|()| out.send_buffered());
        if let Err(e) = result {
            // The reader may be gone; then nobody needs the error.
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    Chunks { rx }
}

/// The writing end of [`blocking_stream`]: cuts what is written into
/// chunks and sends them, waiting while the channel is full.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader of the NAR stream went away",
            )
        })
    }

    /// Reads `r` to its end straight into chunks.
    pub(crate) fn fill_from(&mut self, r: &mut impl Read) -> io::Result<()> {
        loop {
            let start = self.buf.len();
            self.buf.resize(CHUNK_SIZE, 0);
            let result = r.read(&mut self.buf[start..]);
            self.buf.truncate(start + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.buf.len() == CHUNK_SIZE {
                self.send_buffered()?;
            }
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// The reading end of a channel of chunks, as an [`AsyncRead`]: the
/// chunks in order, then the end when every sender is gone. An error
/// received is returned once, in order.
pub(crate) struct ChannelReader<C> {
    rx: mpsc::Receiver<io::Result<C>>,
    chunk: Option<C>,
    pos: usize,
}

impl<C: AsRef<[u8]>> ChannelReader<C> {
    pub(crate) fn new(rx: mpsc::Receiver<io::Result<C>>) -> Self {
        Self {
            rx,
            chunk: None,
            pos: 0,
        }
    }
}

impl<C: AsRef<[u8]> + Unpin> AsyncRead for ChannelReader<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = &this.chunk {
                let chunk = chunk.as_ref();
                if this.pos < chunk.len() {
                    let n = buf.remaining().min(chunk.len() - this.pos);
                    buf.put_slice(&chunk[this.pos..this.pos + n]);
                    this.pos += n;
                    return Poll::Ready(Ok(()));
                }
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    this.chunk = Some(chunk);
                    this.pos = 0;
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn streams_everything_then_the_error() {
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 17).map(|i| i as u8).collect();
        let expected = data.clone();
        let mut s = blocking_stream(move |out| out.write_all(&data));
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);

        let mut s = blocking_stream(|out| {
            out.fill_from(&mut &b"abc"[..])?;
            Err(io::Error::other("boom"))
        });
        let e = s.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }
}
