//! What arrives on a connection without a length: a NAR (the reply to
//! DumpStorePath) and an export stream (the reply to ExportPaths), whose
//! ends are found by following the NAR framing as the bytes pass.

use std::fmt;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf,
};

use super::{Command, Pending, ServeConnection, EXPORT_MAGIC};
use crate::store::serve::framer::NarFramer;
use crate::store::serve::wire::{read_error, MAX_PATH_LEN, MAX_REFERENCES, MAX_SIG_LEN};
use crate::store::serve::ServeError;
use crate::store_path::StorePath;

/// The metadata of one record of an export stream (docs/formats.md §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The path.
    pub path: StorePath,
    /// Its references, sorted.
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// The size of its NAR.
    pub nar_size: u64,
}

/// A NAR arriving on a connection (the reply to DumpStorePath): an
/// [`AsyncRead`] that ends where the NAR ends, found by following its
/// framing as it passes (file contents are not buffered, so any size takes
/// constant memory). Once it has ended, the connection can be used again.
///
/// `C` is how the reader holds the connection: `&mut ServeConnection`, or
/// anything that owns one (a pool's guard), so that the stream can outlive
/// the function that started it.
///
/// Read errors are [`io::Error`]s wrapping a [`ServeError`]; a NAR that
/// breaks its framing fails with [`io::ErrorKind::InvalidData`].
pub struct NarReader<C> {
    conn: C,
    framer: NarFramer,
    done: bool,
}

impl<C> fmt::Debug for NarReader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NarReader")
            .field("position", &self.framer.position())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<C, R, W> NarReader<C>
where
    C: DerefMut<Target = ServeConnection<R, W>>,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Starts reading the reply to the oldest pending DumpStorePath, after
    /// sending the buffered requests. Waits until the reply starts: a
    /// server that cannot dump the path hangs up instead.
    ///
    /// # Errors
    /// [`ServeError::Read`] when the connection is closed before the NAR
    /// starts; [`ServeError::Misuse`] when the next reply is to another
    /// request. The connection comes back with the error, so that the
    /// caller can find out why the server hung up.
    pub async fn recv(mut conn: C) -> Result<Self, (ServeError, C)> {
        const WHAT: &str = "the NAR";
        if let Err(e) = conn.begin_reply(Command::DumpStorePath).await {
            return Err((e, conn));
        }
        let first = conn.reader.buffered().fill_buf().await;
        let error = match first {
            Ok([]) => read_error(io::ErrorKind::UnexpectedEof.into(), WHAT),
            Err(e) => read_error(e, WHAT),
            Ok(_) => {
                return Ok(Self {
                    conn,
                    framer: NarFramer::new(),
                    done: false,
                })
            }
        };
        Err((error, conn))
    }
}

impl<C> NarReader<C> {
    /// Whether the whole NAR has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// NAR bytes read so far.
    pub fn position(&self) -> u64 {
        self.framer.position()
    }

    /// The connection back (usable only if [`is_done`](Self::is_done)).
    pub fn into_inner(self) -> C {
        self.conn
    }
}

/// A [`ServeError`] as the error of an [`AsyncRead`].
fn to_io(e: ServeError) -> io::Error {
    let kind = match &e {
        ServeError::Read { source, .. } | ServeError::Write { source, .. } => source.kind(),
        ServeError::Local { source, .. } => source.kind(),
        ServeError::Protocol { .. } | ServeError::BadNar { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl<C, R, W> AsyncRead for NarReader<C>
where
    C: DerefMut<Target = ServeConnection<R, W>> + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        const WHAT: &str = "the NAR";
        let this = self.get_mut();
        if this.done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let conn = &mut *this.conn;
        let data = match ready!(Pin::new(conn.reader.buffered()).poll_fill_buf(cx)) {
            Ok(data) => data,
            Err(e) => return Poll::Ready(Err(to_io(read_error(e, WHAT)))),
        };
        if data.is_empty() {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection was closed after {} bytes of the NAR",
                    this.framer.position()
                ),
            );
            return Poll::Ready(Err(to_io(ServeError::Read {
                what: WHAT,
                source: e,
            })));
        }
        let n = data.len().min(buf.remaining());
        let used = match this.framer.feed(&data[..n]) {
            Ok(used) if used > 0 => used,
            Ok(_) => {
                return Poll::Ready(Err(to_io(ServeError::Misuse(
                    "the NAR framer made no progress".to_owned(),
                ))))
            }
            Err(e) => {
                return Poll::Ready(Err(to_io(ServeError::Protocol {
                    what: WHAT,
                    reason: e.to_string(),
                })))
            }
        };
        buf.put_slice(&data[..used]);
        Pin::new(conn.reader.buffered()).consume(used);
        if this.framer.is_done() {
            this.done = true;
            conn.end();
        }
        Poll::Ready(Ok(()))
    }
}

/// An export stream arriving on a connection (the reply to ExportPaths),
/// read record by record.
pub struct ExportReader<'c, R, W> {
    conn: &'c mut ServeConnection<R, W>,
    asked: usize,
    records: usize,
    done: bool,
}

impl<R, W> fmt::Debug for ExportReader<'_, R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportReader")
            .field("records", &self.records)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'c, R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ExportReader<'c, R, W> {
    /// Starts reading the reply to the oldest pending ExportPaths.
    ///
    /// # Errors
    /// [`ServeError::Write`] flushing the requests; [`ServeError::Misuse`].
    pub async fn recv(conn: &'c mut ServeConnection<R, W>) -> Result<Self, ServeError> {
        let Pending::ExportPaths { asked } = conn.begin_reply(Command::ExportPaths).await? else {
            return Err(ServeError::Misuse("reply kinds out of step".to_owned()));
        };
        Ok(Self {
            conn,
            asked,
            records: 0,
            done: false,
        })
    }

    /// Copies the next record's NAR to `nar_out` and returns the record's
    /// metadata, or `None` after the last record (the connection is then
    /// usable again). The metadata follows the NAR in the stream, so it is
    /// known only once the NAR has been copied.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a malformed
    /// stream or more records than paths asked about; [`ServeError::Local`]
    /// when writing to `nar_out` fails.
    pub async fn next_record<S: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        nar_out: &mut S,
    ) -> Result<Option<ExportInfo>, ServeError> {
        if self.done {
            return Ok(None);
        }
        let conn = &mut *self.conn;
        match conn.reader.u64("an export record's flag").await? {
            0 => {
                self.done = true;
                conn.end();
                return Ok(None);
            }
            1 => {}
            n => {
                return Err(ServeError::Protocol {
                    what: "an export record's flag",
                    reason: format!("expected 0 or 1, got {n}"),
                })
            }
        }
        self.records += 1;
        if self.records > self.asked {
            return Err(ServeError::Protocol {
                what: "the export stream",
                reason: "more records than paths asked about".to_owned(),
            });
        }
        let nar_size = conn
            .copy_nar(nar_out, "an exported NAR", self.records)
            .await?;
        let magic = conn.reader.u64("an export record's magic number").await?;
        if magic != EXPORT_MAGIC {
            return Err(ServeError::Protocol {
                what: "an export record's magic number",
                reason: format!("expected {EXPORT_MAGIC:#x}, got {magic:#x}"),
            });
        }
        let path = conn
            .reader
            .string(MAX_PATH_LEN, "an export record's path")
            .await?;
        let path = conn.parse_path(&path, "an export record's path")?;
        let references = conn
            .reader
            .strings(
                MAX_REFERENCES,
                MAX_PATH_LEN,
                "an export record's references",
            )
            .await?;
        let mut references = references
            .iter()
            .map(|r| conn.parse_path(r, "an export record's references"))
            .collect::<Result<Vec<_>, _>>()?;
        references.sort();
        references.dedup();
        let deriver = conn
            .reader
            .string(MAX_PATH_LEN, "an export record's deriver")
            .await?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(conn.parse_path(&deriver, "an export record's deriver")?)
        };
        match conn.reader.u64("an export record's signature flag").await? {
            0 => {}
            // A legacy signature: read and ignored, as Nix does.
            1 => {
                conn.reader
                    .bytes(MAX_SIG_LEN, "an export record's legacy signature")
                    .await?;
            }
            n => {
                return Err(ServeError::Protocol {
                    what: "an export record's signature flag",
                    reason: format!("expected 0 or 1, got {n}"),
                })
            }
        }
        Ok(Some(ExportInfo {
            path,
            references,
            deriver,
            nar_size,
        }))
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeConnection<R, W> {
    /// Copies one NAR from the connection to `out`; returns its size.
    async fn copy_nar<S: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        out: &mut S,
        what: &'static str,
        record: usize,
    ) -> Result<u64, ServeError> {
        let mut framer = NarFramer::new();
        while !framer.is_done() {
            let data = self
                .reader
                .buffered()
                .fill_buf()
                .await
                .map_err(|e| read_error(e, what))?;
            if data.is_empty() {
                return Err(read_error(io::ErrorKind::UnexpectedEof.into(), what));
            }
            let used = framer.feed(data).map_err(|e| ServeError::Protocol {
                what,
                reason: e.to_string(),
            })?;
            out.write_all(&data[..used])
                .await
                .map_err(|source| ServeError::Local {
                    what: "writing the NAR of export record",
                    path: format!("#{record}"),
                    source,
                })?;
            self.reader.buffered().consume(used);
        }
        Ok(framer.position())
    }
}
