//! Adds pipelined on one connection: [`ServeConnection::split_adds`] gives
//! a sending half and a reading half that can be used at the same time, so
//! the next path's request and NAR flow while the server is still
//! importing the previous one, and replies are read in order as they come.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::commands::{check_add_info, write_add_to_store_nar, write_export_records};
use super::{Command, ServeConnection};
use crate::store::serve::wire::{WireReader, WireWriter};
use crate::store::serve::ServeError;
use crate::store::PathInfo;
use crate::store_path::StoreDir;

/// The sending half of a connection split for pipelined adds: writes
/// AddToStoreNar requests (ImportPaths of one path for servers older than
/// protocol 2.5), each sent in full before it returns.
pub struct AddSender<W> {
    writer: WireWriter<W>,
    store_dir: StoreDir,
    remote_version: u64,
    /// Requests begun whose replies have not been read, shared with the
    /// reading half.
    owed: Arc<AtomicU64>,
    /// Requests begun.
    begun: u64,
    busy: bool,
}

/// The reading half of a connection split for pipelined adds: reads the
/// replies to the adds, in the order they were sent, and never more of
/// them than were sent.
pub struct AddReplies<R> {
    reader: WireReader<R>,
    owed: Arc<AtomicU64>,
    busy: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeConnection<R, W> {
    /// Splits an idle connection into a half that sends adds and a half
    /// that reads their replies, to be used at the same time (see
    /// [`AddSender`]); [`AddSender::rejoin`] makes it whole again.
    ///
    /// # Errors
    /// [`ServeError::Misuse`], with the connection, when it is not idle.
    #[allow(clippy::result_large_err)]
    pub fn split_adds(self) -> Result<(AddSender<W>, AddReplies<R>), (ServeError, Self)> {
        if !self.is_idle() {
            return Err((
                ServeError::Misuse(
                    "only an idle connection can be split for pipelined adds".to_owned(),
                ),
                self,
            ));
        }
        let owed = Arc::new(AtomicU64::new(0));
        Ok((
            AddSender {
                writer: self.writer,
                store_dir: self.store_dir,
                remote_version: self.remote_version,
                owed: Arc::clone(&owed),
                begun: 0,
                busy: false,
            },
            AddReplies {
                reader: self.reader,
                owed,
                busy: false,
            },
        ))
    }
}

impl<W: AsyncWrite + Unpin> AddSender<W> {
    /// The protocol version the server announced.
    pub fn remote_version(&self) -> u64 {
        self.remote_version
    }

    /// How many requests have been begun (written in full or in part).
    pub fn begun(&self) -> u64 {
        self.begun
    }

    /// Whether no add was interrupted midway.
    pub fn is_usable(&self) -> bool {
        !self.busy
    }

    /// Writes an add of `info` from `nar` and sends it: AddToStoreNar (the
    /// server checks the hash), or for a server older than protocol 2.5
    /// ImportPaths of this one path (its hash checked here while sending).
    /// As with [`ServeConnection::send_add_to_store_nar`], the NAR's last
    /// bytes are held back until it has ended cleanly.
    ///
    /// Once this has begun a request ([`begun`](Self::begun) went up), its
    /// reply is owed even when this fails; but after a failure other than
    /// a [`ServeError::Write`], the server is still waiting for the rest of
    /// the request: drop the sender (which ends the server's input) before
    /// reading that reply.
    ///
    /// # Errors
    /// [`ServeError::Misuse`] after an interrupted add, or for an info
    /// AddToStoreNar cannot send (nothing is written then);
    /// [`ServeError::Local`] and [`ServeError::BadNar`] for a failing NAR;
    /// [`ServeError::Write`].
    pub async fn send_add<S: AsyncRead + Unpin>(
        &mut self,
        info: &PathInfo,
        nar: S,
    ) -> Result<(), ServeError> {
        if self.busy {
            return Err(ServeError::Misuse(
                "the connection is unusable: an earlier add on it was interrupted".to_owned(),
            ));
        }
        let nar_command = self.remote_version & 0xff >= 5;
        if nar_command {
            check_add_info(&self.store_dir, info)?;
        }
        self.busy = true;
        self.begun += 1;
        self.owed.fetch_add(1, Ordering::SeqCst);
        if nar_command {
            let command = Command::AddToStoreNar;
            self.writer.u64(command as u64, command.name()).await?;
            write_add_to_store_nar(&mut self.writer, &self.store_dir, info, nar).await?;
        } else {
            let command = Command::ImportPaths;
            self.writer.u64(command as u64, command.name()).await?;
            write_export_records(&mut self.writer, &self.store_dir, [(info, nar)]).await?;
        }
        self.writer.flush("an add").await?;
        self.busy = false;
        Ok(())
    }

    /// Makes the connection whole again, once every reply has been read
    /// and nothing was interrupted; otherwise `None` (drop the halves).
    pub fn rejoin<R: AsyncRead + Unpin>(
        self,
        replies: AddReplies<R>,
    ) -> Option<ServeConnection<R, W>> {
        if self.busy || replies.busy || replies.owed.load(Ordering::SeqCst) != 0 {
            return None;
        }
        Some(ServeConnection {
            reader: replies.reader,
            writer: self.writer,
            store_dir: self.store_dir,
            remote_version: self.remote_version,
            pending: std::collections::VecDeque::new(),
            busy: false,
        })
    }
}

impl<R: AsyncRead + Unpin> AddReplies<R> {
    /// Whether no read was interrupted midway.
    pub fn is_usable(&self) -> bool {
        !self.busy
    }

    /// Replies owed: adds begun whose replies have not been read.
    pub fn owed(&self) -> u64 {
        self.owed.load(Ordering::SeqCst)
    }

    /// Reads the reply to the oldest add whose reply has not been read.
    ///
    /// # Errors
    /// [`ServeError::Read`] when the server hung up (as it does when an
    /// add fails); [`ServeError::Protocol`] for a reply other than 1;
    /// [`ServeError::Misuse`] when no reply is owed or an earlier read was
    /// interrupted.
    pub async fn recv_add(&mut self) -> Result<(), ServeError> {
        if self.busy {
            return Err(ServeError::Misuse(
                "the connection is unusable: an earlier read on it was interrupted".to_owned(),
            ));
        }
        if self.owed() == 0 {
            return Err(ServeError::Misuse(
                "no add is waiting for its reply".to_owned(),
            ));
        }
        self.busy = true;
        // A reply is one number.
        self.reader.set_budget(8);
        let what = "the reply to an add";
        let n = self.reader.u64(what).await?;
        self.owed.fetch_sub(1, Ordering::SeqCst);
        if n != 1 {
            return Err(ServeError::Protocol {
                what,
                reason: format!("expected 1, got {n}"),
            });
        }
        self.busy = false;
        Ok(())
    }
}
