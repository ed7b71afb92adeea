//! [`ServeConnection`]: the client side of `nix-store --serve` over any pair
//! of streams (docs/formats.md §5.2–§5.4).
//!
//! This module keeps the connection's state: the streams, the queue of
//! requests whose replies are still to be read, and whether an operation
//! was interrupted. The rest is in its submodules: `handshake` opens a
//! session and knows the protocol versions, `commands` has a `send_*` and
//! a `recv_*` half for each command, and `readers` reads what has no
//! length on the wire ([`NarReader`], [`ExportReader`]).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

use super::wire::{WireReader, WireWriter, MAX_PATH_LEN, REPLY_BUDGET_BASE, REPLY_BUDGET_PER_PATH};
use super::ServeError;
use crate::store_path::{StoreDir, StorePath};

mod commands;
mod handshake;
mod pipeline;
mod readers;

pub use handshake::{PROTOCOL_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2};
pub use pipeline::{AddReplies, AddSender};
pub use readers::{ExportInfo, ExportReader, NarReader};

/// Marks the metadata after each NAR of an export stream (`"NIXE"`).
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// Buffer size of each direction of a connection, and of NAR copies.
const BUFFER: usize = 64 * 1024;

/// The commands of docs/formats.md §5.3 this client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    QueryValidPaths = 1,
    QueryPathInfos = 2,
    DumpStorePath = 3,
    ImportPaths = 4,
    ExportPaths = 5,
    QueryClosure = 7,
    AddToStoreNar = 9,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Self::QueryValidPaths => "QueryValidPaths",
            Self::QueryPathInfos => "QueryPathInfos",
            Self::DumpStorePath => "DumpStorePath",
            Self::ImportPaths => "ImportPaths",
            Self::ExportPaths => "ExportPaths",
            Self::QueryClosure => "QueryClosure",
            Self::AddToStoreNar => "AddToStoreNar",
        }
    }
}

/// A request whose reply has not been read, with what reading it needs.
#[derive(Debug)]
enum Pending {
    QueryValidPaths { asked: usize },
    QueryPathInfos { asked: BTreeSet<StorePath> },
    DumpStorePath,
    ImportPaths,
    ExportPaths { asked: usize },
    QueryClosure { asked: usize },
    AddToStoreNar,
}

impl Pending {
    fn command(&self) -> Command {
        match self {
            Self::QueryValidPaths { .. } => Command::QueryValidPaths,
            Self::QueryPathInfos { .. } => Command::QueryPathInfos,
            Self::DumpStorePath => Command::DumpStorePath,
            Self::ImportPaths => Command::ImportPaths,
            Self::ExportPaths { .. } => Command::ExportPaths,
            Self::QueryClosure { .. } => Command::QueryClosure,
            Self::AddToStoreNar => Command::AddToStoreNar,
        }
    }

    /// How many bytes the reply may hold.
    fn budget(&self) -> u64 {
        let asked = match self {
            Self::QueryValidPaths { asked }
            | Self::ExportPaths { asked }
            | Self::QueryClosure { asked } => *asked,
            Self::QueryPathInfos { asked } => asked.len(),
            Self::DumpStorePath | Self::ImportPaths | Self::AddToStoreNar => 0,
        };
        REPLY_BUDGET_BASE.saturating_add(REPLY_BUDGET_PER_PATH.saturating_mul(asked as u64))
    }
}

/// The client end of a `nix-store --serve` session, over any reader (the
/// server's stdout) and writer (its stdin).
///
/// Each command has a `send_*` method that writes the request (buffered)
/// and a `recv_*` method that flushes and reads the reply, plus a method
/// doing both. Replies come back in request order, so several requests
/// may be sent before their replies are read (pipelining); the connection
/// keeps the queue and refuses to read a reply out of turn. A server's
/// replies to a few dozen requests fit in a pipe buffer; beyond that, read
/// replies as you go, or both ends may wait on each other.
///
/// An operation that fails or is abandoned midway (an error, a dropped
/// future, a [`NarReader`] dropped before the NAR's end) leaves the stream
/// out of step: the connection then refuses every further operation
/// ([`is_usable`](Self::is_usable) is false) and should be dropped.
pub struct ServeConnection<R, W> {
    reader: WireReader<R>,
    writer: WireWriter<W>,
    store_dir: StoreDir,
    remote_version: u64,
    pending: VecDeque<Pending>,
    /// An operation is under way, or was interrupted.
    busy: bool,
}

impl<R, W> fmt::Debug for ServeConnection<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConnection")
            .field("store_dir", &self.store_dir)
            .field(
                "remote_version",
                &format_args!("{:#x}", self.remote_version),
            )
            .field("pending", &self.pending.len())
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeConnection<R, W> {
    /// The store directory paths are parsed against.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Whether the connection can take more operations: no operation was
    /// interrupted midway.
    pub fn is_usable(&self) -> bool {
        !self.busy
    }

    /// Whether the connection is usable and every reply has been read, so
    /// it can be handed to someone else.
    pub fn is_idle(&self) -> bool {
        !self.busy && self.pending.is_empty()
    }

    /// Requests whose replies have not been read.
    pub fn pending_replies(&self) -> usize {
        self.pending.len()
    }

    /// Sends the requests written so far.
    ///
    /// # Errors
    /// [`ServeError::Write`] when the connection fails.
    pub async fn flush(&mut self) -> Result<(), ServeError> {
        self.writer.flush("requests").await
    }

    /// Gives up the streams: drop the writer to end the session (the server
    /// exits when it reads end-of-file where a command should be).
    pub fn into_inner(self) -> (R, W) {
        (self.reader.into_inner(), self.writer.into_inner())
    }

    fn begin(&mut self) -> Result<(), ServeError> {
        if self.busy {
            return Err(ServeError::Misuse(
                "the connection is unusable: an earlier operation on it was interrupted".to_owned(),
            ));
        }
        self.busy = true;
        Ok(())
    }

    fn end(&mut self) {
        self.busy = false;
    }

    /// Starts a request.
    async fn begin_request(&mut self, command: Command) -> Result<(), ServeError> {
        self.begin()?;
        self.writer.u64(command as u64, command.name()).await
    }

    /// Ends a request whose reply is described by `pending`.
    fn end_request(&mut self, pending: Pending) {
        self.pending.push_back(pending);
        self.end();
    }

    /// Starts reading the reply to `command`, which must be the oldest
    /// request without one; sends the buffered requests first.
    async fn begin_reply(&mut self, command: Command) -> Result<Pending, ServeError> {
        match self.pending.front() {
            Some(p) if p.command() == command => {}
            Some(p) => {
                return Err(ServeError::Misuse(format!(
                    "the next reply is to {}, not to {}",
                    p.command().name(),
                    command.name()
                )))
            }
            None => {
                return Err(ServeError::Misuse(format!(
                    "no {} request is waiting for its reply",
                    command.name()
                )))
            }
        }
        self.begin()?;
        self.writer.flush(command.name()).await?;
        let pending = self
            .pending
            .pop_front()
            .ok_or_else(|| ServeError::Misuse("no request is waiting".to_owned()))?;
        self.reader.set_budget(pending.budget());
        Ok(pending)
    }

    fn full_paths(&self, paths: &[StorePath]) -> Vec<String> {
        paths.iter().map(|p| self.store_dir.full(p)).collect()
    }

    fn parse_path(&self, s: &str, what: &'static str) -> Result<StorePath, ServeError> {
        self.store_dir.parse(s).map_err(|e| ServeError::Protocol {
            what,
            reason: e.to_string(),
        })
    }

    async fn read_path_list(
        &mut self,
        max: u64,
        what: &'static str,
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        let n = self.reader.count(max, what).await?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            let s = self.reader.string(MAX_PATH_LEN, what).await?;
            out.insert(self.parse_path(&s, what)?);
        }
        Ok(out)
    }
}
