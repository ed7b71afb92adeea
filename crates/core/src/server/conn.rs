//! Connections: an inactivity timeout on their I/O, and the listening
//! sockets they come from.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection's I/O that fails with [`io::ErrorKind::TimedOut`] once no
/// byte has moved either way for `timeout` while the connection waits to
/// read or write: a client that stops sending a request body, or stops
/// reading an answer, cannot pin the connection for ever. (A client that
/// is slow to send a request head is the header timeout's business, and
/// a request being worked on is not I/O waiting.)
pub(super) struct Inactivity<T> {
    io: T,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Whether `sleep` runs: since the first wait after the last progress.
    armed: bool,
}

impl<T> Inactivity<T> {
    pub(super) fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// Notes the outcome of a poll of the inner I/O: bytes moved (or an
    /// error) disarm the timer; a wait arms it if it does not run yet,
    /// and a wait past the deadline is the timeout. A poll that is ready
    /// without moving a byte (a flush with nothing to flush) changes
    /// nothing: it is no progress.
    fn after<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
        moved: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match &polled {
            Poll::Ready(Ok(r)) if !moved(r) => return polled,
            Poll::Ready(_) => {
                self.armed = false;
                return polled;
            }
            Poll::Pending => {}
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress for {:?}", self.timeout),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Inactivity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        // An end of file is a move too: the last one.
        let moved = buf.filled().len() > before || buf.remaining() > 0;
        this.after(cx, polled, |()| moved)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inactivity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.after(cx, polled, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after(cx, polled, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.after(cx, polled, |()| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.after(cx, polled, |()| true)
    }
}

/// The sockets a server accepts connections on.
#[derive(Debug)]
pub(super) struct Listeners(pub(super) Vec<tokio::net::TcpListener>);

impl Listeners {
    /// The next connection on any of the sockets.
    pub(super) async fn accept(&self) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            for l in &self.0 {
                if let Poll::Ready(r) = l.poll_accept(cx) {
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_peer_times_out_and_progress_resets_the_clock() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut io = Inactivity::new(ours, Duration::from_secs(10));
        // Bytes keep coming, each within the timeout: no error, however
        // long it all takes.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                theirs.write_all(b"x").await.unwrap();
            }
            theirs
        });
        let mut buf = [0; 1];
        for _ in 0..5 {
            io.read_exact(&mut buf).await.unwrap();
        }
        let mut theirs = feeder.await.unwrap();
        // Then nothing: a read fails after the timeout.
        let started = Instant::now();
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A peer that stops reading: writes fill the pipe, then fail.
        let e = io.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let mut drained = Vec::new();
        let _ = theirs.read_buf(&mut drained).await;
    }
}
