//! The `nix-store --serve` protocol (docs/formats.md §5) and the `ssh://` store built
//! on it.
//!
//! Two layers:
//!
//! - [`ServeConnection`] is the protocol client over any pair of async
//!   streams: the handshake and the commands a copy needs (QueryValidPaths,
//!   QueryPathInfos, QueryClosure, DumpStorePath, ImportPaths, ExportPaths,
//!   AddToStoreNar). A request for many paths is one command, and requests
//!   may be pipelined: each command has a `send_*` and a `recv_*` half.
//!   It knows nothing of processes, which keeps it testable against
//!   recorded transcripts and scripted servers in memory.
//! - [`ServeStore`] implements [`Store`](super::Store) by running
//!   `nix-store --serve --write` through the system `ssh` (so `~/.ssh/config`,
//!   agents and `known_hosts` apply), or as a local child process, with a
//!   pool of such connections.
//!
//! # Untrusted replies
//!
//! The server is not trusted to be well-behaved. Every length it sends is
//! bounded before anything is allocated (per field, and per reply in total,
//! in proportion to what was asked), padding is checked, and a reply may
//! only mention paths that were asked about. NARs (DumpStorePath, export
//! records) carry no length: their end is found by following the NAR
//! framing as the bytes pass, skipping file contents by their length, so a
//! NAR of any size streams through in constant memory and leaves the
//! connection usable after it.
//!
//! # Errors
//!
//! The protocol has no error frame: a server that fails writes `error: …`
//! to its stderr and exits, and the client sees end-of-file. [`ServeStore`]
//! keeps the last few KiB of the child's stderr and turns such failures
//! into [`StoreError::Remote`] carrying the
//! remote's message, or, when the connection itself failed (ssh exiting
//! with status 255, a reset, a hang-up without a message), into the
//! retryable [`StoreError::Connection`].

use std::io;

use super::StoreError;

mod connection;
#[cfg(feature = "zstd")]
pub mod ferry;
pub(crate) mod framer;
mod process;
mod store;
mod wire;

pub use connection::{
    AddReplies, AddSender, ExportInfo, ExportReader, NarReader, ServeConnection, EXPORT_MAGIC,
    PROTOCOL_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2,
};
pub use store::{ServeStore, DEFAULT_MAX_CONNECTIONS};

/// Errors of a [`ServeConnection`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading from the server failed, or it hung up.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// Writing to the server failed (mostly: it hung up).
    #[error("writing {what}: {source}")]
    Write {
        /// What was being written.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The server sent something that breaks the protocol or exceeds a
    /// limit.
    #[error("{what} from the server is invalid: {reason}")]
    Protocol {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server's protocol version does not have the command.
    #[error(
        "{what} is not supported by the server's serve protocol {}.{}",
        remote >> 8,
        remote & 0xff
    )]
    Unsupported {
        /// The command or feature.
        what: &'static str,
        /// The server's version.
        remote: u64,
    },
    /// A local stream failed: the NAR being sent, or the writer an
    /// exported NAR is copied to. A NAR stream that fails with an
    /// `io::Error` wrapping a [`StoreError`] (a failed hash check) keeps it
    /// as its source.
    #[error("{what} '{path}': {source}")]
    Local {
        /// What was being done.
        what: &'static str,
        /// To which path or record.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A NAR to be sent does not have the size its path info declares, or
    /// is not a NAR.
    #[error("the NAR of '{path}' {problem}")]
    BadNar {
        /// The full store path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The connection cannot do what was asked: an earlier operation was
    /// interrupted, a reply is read out of turn, or the request itself is
    /// incomplete.
    #[error("{0}")]
    Misuse(String),
}

impl ServeError {
    /// Whether the connection itself failed (as opposed to the server
    /// sending nonsense or the caller's own streams failing).
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Write { .. })
    }

    /// The [`StoreError`] for this error on the store `store`, without
    /// what a server's stderr could add (see [`ServeStore`]): connection
    /// failures become [`StoreError::Connection`], protocol violations
    /// [`StoreError::Protocol`], a wrong NAR size
    /// [`StoreError::NarMismatch`], and a failing local stream the error
    /// it carries.
    pub fn into_store_error(self, store: &str) -> StoreError {
        match self {
            Self::Read { .. } | Self::Write { .. } => StoreError::Connection {
                store: store.to_owned(),
                message: self.to_string(),
            },
            Self::Protocol { .. } | Self::Misuse(_) => StoreError::Protocol {
                store: store.to_owned(),
                message: self.to_string(),
            },
            Self::Unsupported { what, .. } => StoreError::Unsupported {
                store: store.to_owned(),
                what,
            },
            Self::BadNar { path, problem } => StoreError::NarMismatch {
                path,
                message: problem,
            },
            Self::Local { what, path, source } => {
                if source.get_ref().is_some_and(|e| e.is::<StoreError>()) {
                    if let Some(Ok(e)) = source.into_inner().map(|e| e.downcast::<StoreError>()) {
                        return *e;
                    }
                    return StoreError::Io {
                        what,
                        path,
                        source: io::Error::other("the stream failed"),
                    };
                }
                StoreError::Io { what, path, source }
            }
        }
    }
}
