//! Opening a session (docs/formats.md §5.2): the magic numbers, the
//! protocol version each side speaks, and what a command needs of the
//! server's version.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ServeConnection, BUFFER};
use crate::store::serve::wire::{WireReader, WireWriter};
use crate::store::serve::ServeError;
use crate::store_path::StoreDir;

/// The protocol version this client speaks: 2.7, that of Nix 2.8.
pub const PROTOCOL_VERSION: u64 = 0x207;
/// The client's hello (`SERVE_MAGIC_1`).
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// The server's hello (`SERVE_MAGIC_2`).
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeConnection<R, W> {
    /// Opens a session: sends the client's magic number and version back
    /// to back, then reads the server's (docs/formats.md §5.2). `store_dir` is the
    /// server's store directory, used to parse the paths it sends.
    ///
    /// # Errors
    /// [`ServeError::Protocol`] for a wrong magic number or a server whose
    /// major version is not 2; [`ServeError::Read`] or
    /// [`ServeError::Write`] when the connection fails.
    pub async fn handshake(reader: R, writer: W, store_dir: StoreDir) -> Result<Self, ServeError> {
        let mut conn = Self::greeting(reader, writer, store_dir);
        const WHAT: &str = "the handshake";
        conn.writer.u64(SERVE_MAGIC_1, WHAT).await?;
        conn.writer.u64(PROTOCOL_VERSION, WHAT).await?;
        conn.writer.flush(WHAT).await?;
        let magic = conn.reader.u64(WHAT).await?;
        if magic != SERVE_MAGIC_2 {
            return Err(ServeError::Protocol {
                what: WHAT,
                reason: format!(
                    "expected the magic number {SERVE_MAGIC_2:#x}, got {magic:#x} (does the \
                     remote shell print something when it starts?)"
                ),
            });
        }
        conn.read_version().await?;
        Ok(conn)
    }

    /// A session whose greeting was already exchanged up to the server's
    /// magic number (by a client that asked whether the remote speaks
    /// another protocol first): reads the server's version, as
    /// [`ServeConnection::handshake`] would next.
    ///
    /// # Errors
    /// As [`ServeConnection::handshake`].
    pub async fn after_magic(
        reader: R,
        writer: W,
        store_dir: StoreDir,
    ) -> Result<Self, ServeError> {
        let mut conn = Self::greeting(reader, writer, store_dir);
        conn.read_version().await?;
        Ok(conn)
    }

    /// A connection in the middle of its greeting: busy until the
    /// server's version is read.
    fn greeting(reader: R, writer: W, store_dir: StoreDir) -> Self {
        Self {
            reader: WireReader::new(reader, BUFFER),
            writer: WireWriter::new(writer, BUFFER),
            store_dir,
            remote_version: 0,
            pending: VecDeque::new(),
            busy: true,
        }
    }

    async fn read_version(&mut self) -> Result<(), ServeError> {
        let version = self.reader.u32("the server's protocol version").await?;
        if version & 0xff00 != 0x200 {
            return Err(ServeError::Protocol {
                what: "the server's protocol version",
                reason: format!(
                    "version {}.{} is not supported; nixferry speaks 2.x",
                    version >> 8,
                    version & 0xff
                ),
            });
        }
        self.remote_version = u64::from(version);
        self.busy = false;
        Ok(())
    }

    /// The version the server announced.
    pub fn remote_version(&self) -> u64 {
        self.remote_version
    }

    /// The version this client acts on: the lower of the two.
    pub fn version(&self) -> u64 {
        self.remote_version.min(PROTOCOL_VERSION)
    }

    /// The minor version acted on.
    fn minor(&self) -> u64 {
        self.version() & 0xff
    }

    /// Refuses what needs protocol 2.`minor` or newer when the version
    /// acted on is older.
    pub(super) fn needs_minor(&self, minor: u64, what: &'static str) -> Result<(), ServeError> {
        if self.minor() >= minor {
            Ok(())
        } else {
            Err(ServeError::Unsupported {
                what,
                remote: self.remote_version,
            })
        }
    }
}
