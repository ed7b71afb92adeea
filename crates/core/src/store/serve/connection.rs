//! [`ServeConnection`]: the client side of `nix-store --serve` over any pair
//! of streams (docs/formats.md §5.2–§5.4).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite,
    AsyncWriteExt as _, ReadBuf,
};

use super::framer::NarFramer;
use super::wire::{
    read_error, WireReader, WireWriter, MAX_CA_LEN, MAX_CLOSURE, MAX_HASH_LEN, MAX_PATH_LEN,
    MAX_REFERENCES, MAX_SIGS, MAX_SIG_LEN, REPLY_BUDGET_BASE, REPLY_BUDGET_PER_PATH,
};
use super::ServeError;
use crate::hash::{HashAlgo, NixHash};
use crate::store::PathInfo;
use crate::store_path::{ContentAddress, StoreDir, StorePath};

/// The protocol version this client speaks: 2.7, that of Nix 2.8.
pub const PROTOCOL_VERSION: u64 = 0x207;
/// The client's hello (`SERVE_MAGIC_1`).
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// The server's hello (`SERVE_MAGIC_2`).
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;
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
    /// Opens a session: sends the client's magic number and version back
    /// to back, then reads the server's (docs/formats.md §5.2). `store_dir` is the
    /// server's store directory, used to parse the paths it sends.
    ///
    /// # Errors
    /// [`ServeError::Protocol`] for a wrong magic number or a server whose
    /// major version is not 2; [`ServeError::Read`] or
    /// [`ServeError::Write`] when the connection fails.
    pub async fn handshake(reader: R, writer: W, store_dir: StoreDir) -> Result<Self, ServeError> {
        let mut conn = Self {
            reader: WireReader::new(reader, BUFFER),
            writer: WireWriter::new(writer, BUFFER),
            store_dir,
            remote_version: 0,
            pending: VecDeque::new(),
            busy: true,
        };
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
        let version = conn.reader.u32("the server's protocol version").await?;
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
        conn.remote_version = u64::from(version);
        conn.busy = false;
        Ok(conn)
    }

    /// The version the server announced.
    pub fn remote_version(&self) -> u64 {
        self.remote_version
    }

    /// The version this client acts on: the lower of the two.
    pub fn version(&self) -> u64 {
        self.remote_version.min(PROTOCOL_VERSION)
    }

    fn minor(&self) -> u64 {
        self.version() & 0xff
    }

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

    fn needs_minor(&self, minor: u64, what: &'static str) -> Result<(), ServeError> {
        if self.minor() >= minor {
            Ok(())
        } else {
            Err(ServeError::Unsupported {
                what,
                remote: self.remote_version,
            })
        }
    }

    // --- QueryValidPaths (1) ---

    /// Which of `paths` the server has (command 1). With `lock`, the server
    /// registers temporary GC roots for them; with `substitute`, it tries
    /// its substituters for missing ones first.
    ///
    /// # Errors
    /// As [`send_query_valid_paths`](Self::send_query_valid_paths) and
    /// [`recv_query_valid_paths`](Self::recv_query_valid_paths).
    pub async fn query_valid_paths(
        &mut self,
        lock: bool,
        substitute: bool,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        self.send_query_valid_paths(lock, substitute, paths).await?;
        self.recv_query_valid_paths().await
    }

    /// Writes a QueryValidPaths request, paths in the order given.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`] on an unusable connection.
    pub async fn send_query_valid_paths(
        &mut self,
        lock: bool,
        substitute: bool,
        paths: &[StorePath],
    ) -> Result<(), ServeError> {
        let what = Command::QueryValidPaths.name();
        self.begin_request(Command::QueryValidPaths).await?;
        self.writer.bool(lock, what).await?;
        self.writer.bool(substitute, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryValidPaths { asked: paths.len() });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryValidPaths.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a malformed reply
    /// or one with more paths than were asked about; [`ServeError::Misuse`]
    /// when the next reply is to another request.
    pub async fn recv_query_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, ServeError> {
        let Pending::QueryValidPaths { asked } = self.begin_reply(Command::QueryValidPaths).await?
        else {
            return Err(ServeError::Misuse("reply kinds out of step".to_owned()));
        };
        let valid = self.read_path_list(asked as u64, "the valid paths").await?;
        self.end();
        Ok(valid)
    }

    // --- QueryPathInfos (2) ---

    /// The path infos of those of `paths` the server has (command 2); the
    /// others are left out. The server does not say when or how a path was
    /// registered, so `registration_time` is 0 and `ultimate` false.
    ///
    /// # Errors
    /// As [`send_query_path_infos`](Self::send_query_path_infos) and
    /// [`recv_query_path_infos`](Self::recv_query_path_infos).
    pub async fn query_path_infos(
        &mut self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, ServeError> {
        self.send_query_path_infos(paths).await?;
        self.recv_query_path_infos().await
    }

    /// Writes a QueryPathInfos request, paths in the order given.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a server older than 2.4, which does
    /// not send NAR hashes; [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_query_path_infos(&mut self, paths: &[StorePath]) -> Result<(), ServeError> {
        self.needs_minor(4, "QueryPathInfos with NAR hashes")?;
        let what = Command::QueryPathInfos.name();
        self.begin_request(Command::QueryPathInfos).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryPathInfos {
            asked: paths.iter().cloned().collect(),
        });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryPathInfos.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a malformed reply,
    /// an info for a path not asked about, or too many; [`ServeError::Misuse`].
    pub async fn recv_query_path_infos(
        &mut self,
    ) -> Result<BTreeMap<StorePath, PathInfo>, ServeError> {
        let Pending::QueryPathInfos { asked } = self.begin_reply(Command::QueryPathInfos).await?
        else {
            return Err(ServeError::Misuse("reply kinds out of step".to_owned()));
        };
        let mut infos = BTreeMap::new();
        let mut entries = 0usize;
        loop {
            let path = self
                .reader
                .string(MAX_PATH_LEN, "a path info's path")
                .await?;
            if path.is_empty() {
                break;
            }
            entries += 1;
            if entries > asked.len() {
                return Err(ServeError::Protocol {
                    what: "the path infos",
                    reason: "more path infos than paths asked about".to_owned(),
                });
            }
            let info = self.read_path_info(&path).await?;
            if !asked.contains(&info.path) {
                return Err(ServeError::Protocol {
                    what: "the path infos",
                    reason: format!("an info for '{path}', which was not asked about"),
                });
            }
            infos.insert(info.path.clone(), info);
        }
        self.end();
        Ok(infos)
    }

    /// One entry of a QueryPathInfos reply, after its path.
    async fn read_path_info(&mut self, path: &str) -> Result<PathInfo, ServeError> {
        let r = &mut self.reader;
        let store_path = self
            .store_dir
            .parse(path)
            .map_err(|e| ServeError::Protocol {
                what: "a path info's path",
                reason: e.to_string(),
            })?;
        let deriver = r.string(MAX_PATH_LEN, "a path info's deriver").await?;
        let references = r
            .strings(MAX_REFERENCES, MAX_PATH_LEN, "a path info's references")
            .await?;
        let _download_size = r.u64("a path info's download size").await?;
        let nar_size = r.u64("a path info's NAR size").await?;
        let hash = r.string(MAX_HASH_LEN, "a path info's NAR hash").await?;
        let ca = r
            .string(MAX_CA_LEN, "a path info's content address")
            .await?;
        let mut signatures = r
            .strings(MAX_SIGS, MAX_SIG_LEN, "a path info's signatures")
            .await?;

        let nar_hash = NixHash::parse(&hash)
            .ok()
            .filter(|h| h.algo() == HashAlgo::Sha256)
            .ok_or_else(|| ServeError::Protocol {
                what: "a path info's NAR hash",
                reason: format!("'{path}' has NAR hash '{hash}', not a SHA-256 hash"),
            })?;
        let mut info = PathInfo::new(store_path, nar_hash, nar_size);
        if !deriver.is_empty() {
            info.deriver = Some(self.parse_path(&deriver, "a path info's deriver")?);
        }
        info.references = references
            .iter()
            .map(|r| self.parse_path(r, "a path info's references"))
            .collect::<Result<_, _>>()?;
        info.references.sort();
        info.references.dedup();
        if !ca.is_empty() {
            info.ca = Some(
                ContentAddress::parse(&ca).map_err(|e| ServeError::Protocol {
                    what: "a path info's content address",
                    reason: e.to_string(),
                })?,
            );
        }
        signatures.sort();
        signatures.dedup();
        info.signatures = signatures;
        Ok(info)
    }

    // --- DumpStorePath (3) ---

    /// The NAR of `path` (command 3), as a stream that ends where the NAR
    /// does; the connection is usable again once it has been read to its
    /// end. For a stream that owns the connection, use
    /// [`send_dump_store_path`](Self::send_dump_store_path) and
    /// [`NarReader::recv`].
    ///
    /// # Errors
    /// As [`NarReader::recv`]: a server that cannot dump the path hangs up
    /// at once, which is a [`ServeError::Read`] error here.
    pub async fn dump_store_path(
        &mut self,
        path: &StorePath,
    ) -> Result<NarReader<&mut Self>, ServeError> {
        self.send_dump_store_path(path).await?;
        NarReader::recv(self).await.map_err(|(e, _)| e)
    }

    /// Writes a DumpStorePath request.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_dump_store_path(&mut self, path: &StorePath) -> Result<(), ServeError> {
        let what = Command::DumpStorePath.name();
        self.begin_request(Command::DumpStorePath).await?;
        self.writer
            .bytes(self.store_dir.full(path).as_bytes(), what)
            .await?;
        self.end_request(Pending::DumpStorePath);
        Ok(())
    }

    // --- ImportPaths (4) ---

    /// Adds paths from their NARs by sending an export stream (command 4,
    /// docs/formats.md §5.4), in the order given: references must be valid on the
    /// server or come earlier. Each NAR must be exactly `nar_size` bytes
    /// and hash to `nar_hash`, which is checked here: only the path,
    /// references and deriver of each info are sent, and the server
    /// registers whatever it receives (it keeps no signatures or CA).
    ///
    /// # Errors
    /// As [`send_import_paths`](Self::send_import_paths) and
    /// [`recv_import_paths`](Self::recv_import_paths).
    pub async fn import_paths<'a, S: AsyncRead + Unpin>(
        &mut self,
        records: impl IntoIterator<Item = (&'a PathInfo, S)>,
    ) -> Result<(), ServeError> {
        self.send_import_paths(records).await?;
        self.recv_import_paths().await
    }

    /// Writes an ImportPaths request with its export stream.
    ///
    /// # Errors
    /// [`ServeError::Local`] when a NAR stream fails; [`ServeError::BadNar`]
    /// when one is not a NAR of its declared size and hash;
    /// [`ServeError::Write`];
    /// [`ServeError::Misuse`].
    pub async fn send_import_paths<'a, S: AsyncRead + Unpin>(
        &mut self,
        records: impl IntoIterator<Item = (&'a PathInfo, S)>,
    ) -> Result<(), ServeError> {
        let what = Command::ImportPaths.name();
        self.begin_request(Command::ImportPaths).await?;
        for (info, nar) in records {
            let full = self.store_dir.full(&info.path);
            self.writer.u64(1, what).await?;
            self.send_nar(&full, info.nar_size, nar, Some(&info.nar_hash))
                .await?;
            self.writer.u64(EXPORT_MAGIC, what).await?;
            self.writer.bytes(full.as_bytes(), what).await?;
            self.writer
                .strings(&self.full_paths(&info.references), what)
                .await?;
            let deriver = info.deriver.as_ref().map(|d| self.store_dir.full(d));
            self.writer
                .bytes(deriver.unwrap_or_default().as_bytes(), what)
                .await?;
            // No legacy signature.
            self.writer.u64(0, what).await?;
        }
        self.writer.u64(0, what).await?;
        self.end_request(Pending::ImportPaths);
        Ok(())
    }

    /// Reads the reply to the oldest pending ImportPaths.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a reply other
    /// than 1; [`ServeError::Misuse`].
    pub async fn recv_import_paths(&mut self) -> Result<(), ServeError> {
        self.begin_reply(Command::ImportPaths).await?;
        self.read_success("the reply to ImportPaths").await
    }

    async fn read_success(&mut self, what: &'static str) -> Result<(), ServeError> {
        match self.reader.u64(what).await? {
            1 => {
                self.end();
                Ok(())
            }
            n => Err(ServeError::Protocol {
                what,
                reason: format!("expected 1, got {n}"),
            }),
        }
    }

    // --- ExportPaths (5) ---

    /// The export stream of `paths` (command 5): one record per path,
    /// dependencies first, read with [`ExportReader::next_record`]. Servers
    /// of protocol 2.8 and newer no longer have this command.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a 2.8 server; otherwise as
    /// [`send_query_valid_paths`](Self::send_query_valid_paths).
    pub async fn export_paths(
        &mut self,
        paths: &[StorePath],
    ) -> Result<ExportReader<'_, R, W>, ServeError> {
        self.send_export_paths(paths).await?;
        ExportReader::recv(self).await
    }

    /// Writes an ExportPaths request.
    ///
    /// # Errors
    /// As [`export_paths`](Self::export_paths).
    pub async fn send_export_paths(&mut self, paths: &[StorePath]) -> Result<(), ServeError> {
        if self.remote_version >= 0x208 {
            return Err(ServeError::Unsupported {
                what: "ExportPaths (removed in protocol 2.8)",
                remote: self.remote_version,
            });
        }
        let what = Command::ExportPaths.name();
        self.begin_request(Command::ExportPaths).await?;
        // An obsolete "sign" flag, ignored by the server.
        self.writer.u64(0, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::ExportPaths { asked: paths.len() });
        Ok(())
    }

    // --- QueryClosure (7) ---

    /// The closure of `paths` (command 7), the paths included; with
    /// `include_outputs`, also the valid outputs of every derivation in it.
    ///
    /// # Errors
    /// As [`send_query_closure`](Self::send_query_closure) and
    /// [`recv_query_closure`](Self::recv_query_closure).
    pub async fn query_closure(
        &mut self,
        include_outputs: bool,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        self.send_query_closure(include_outputs, paths).await?;
        self.recv_query_closure().await
    }

    /// Writes a QueryClosure request.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_query_closure(
        &mut self,
        include_outputs: bool,
        paths: &[StorePath],
    ) -> Result<(), ServeError> {
        let what = Command::QueryClosure.name();
        self.begin_request(Command::QueryClosure).await?;
        self.writer.bool(include_outputs, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryClosure { asked: paths.len() });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryClosure.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`]; [`ServeError::Misuse`].
    pub async fn recv_query_closure(&mut self) -> Result<BTreeSet<StorePath>, ServeError> {
        self.begin_reply(Command::QueryClosure).await?;
        let closure = self.read_path_list(MAX_CLOSURE, "the closure").await?;
        self.end();
        Ok(closure)
    }

    // --- AddToStoreNar (9) ---

    /// Adds a path from its NAR (command 9, protocol 2.5 and newer). The
    /// info is sent as given (`narHash` in base16, as Nix does), then
    /// exactly `nar_size` bytes of `nar`. The server checks the hash, and
    /// not the signatures.
    ///
    /// # Errors
    /// As [`send_add_to_store_nar`](Self::send_add_to_store_nar) and
    /// [`recv_add_to_store_nar`](Self::recv_add_to_store_nar).
    pub async fn add_to_store_nar<S: AsyncRead + Unpin>(
        &mut self,
        info: &PathInfo,
        nar: S,
    ) -> Result<(), ServeError> {
        self.send_add_to_store_nar(info, nar).await?;
        self.recv_add_to_store_nar().await
    }

    /// Writes an AddToStoreNar request with its NAR.
    ///
    /// `nar` must yield exactly `info.nar_size` bytes. Its last bytes are
    /// held back until it has reported its end without an error, so a
    /// stream that fails at its end (as one checking `narHash` does) never
    /// lets the server complete the path; the connection must then be
    /// dropped, which makes the server abandon it.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a server older than 2.5 (use
    /// [`import_paths`](Self::import_paths)); [`ServeError::Misuse`] for an
    /// info without a SHA-256 hash or size; [`ServeError::Local`] when `nar`
    /// fails; [`ServeError::BadNar`] when its size is wrong;
    /// [`ServeError::Write`].
    pub async fn send_add_to_store_nar<S: AsyncRead + Unpin>(
        &mut self,
        info: &PathInfo,
        nar: S,
    ) -> Result<(), ServeError> {
        self.needs_minor(5, "AddToStoreNar")?;
        let full = self.store_dir.full(&info.path);
        if info.nar_hash.algo() != HashAlgo::Sha256 || info.nar_size == 0 {
            return Err(ServeError::Misuse(format!(
                "the path info of '{full}' needs a SHA-256 NAR hash and a NAR size"
            )));
        }
        let what = Command::AddToStoreNar.name();
        self.begin_request(Command::AddToStoreNar).await?;
        let w = &mut self.writer;
        w.bytes(full.as_bytes(), what).await?;
        let deriver = info.deriver.as_ref().map(|d| self.store_dir.full(d));
        w.bytes(deriver.unwrap_or_default().as_bytes(), what)
            .await?;
        w.bytes(info.nar_hash.to_hex().as_bytes(), what).await?;
        let references: Vec<String> = info
            .references
            .iter()
            .map(|p| self.store_dir.full(p))
            .collect();
        w.strings(&references, what).await?;
        w.u64(info.registration_time, what).await?;
        w.u64(info.nar_size, what).await?;
        w.bool(info.ultimate, what).await?;
        w.strings(&info.signatures, what).await?;
        let ca = info.ca.map(|ca| ca.to_string()).unwrap_or_default();
        w.bytes(ca.as_bytes(), what).await?;
        self.send_nar(&full, info.nar_size, nar, None).await?;
        self.end_request(Pending::AddToStoreNar);
        Ok(())
    }

    /// Reads the reply to the oldest pending AddToStoreNar.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a reply other
    /// than 1; [`ServeError::Misuse`].
    pub async fn recv_add_to_store_nar(&mut self) -> Result<(), ServeError> {
        self.begin_reply(Command::AddToStoreNar).await?;
        self.read_success("the reply to AddToStoreNar").await
    }

    /// Writes exactly `size` bytes of `nar`, holding the last chunk back
    /// until `nar` has ended cleanly. For an export record (`hash` given),
    /// also checks that the bytes are one NAR ending exactly at `size` (an
    /// export stream has no other way to tell where it ends) and that they
    /// hash to `hash` (the server would register whatever it gets), both
    /// before the last chunk goes out.
    async fn send_nar<S: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        size: u64,
        mut nar: S,
        hash: Option<&NixHash>,
    ) -> Result<(), ServeError> {
        let local = |source| ServeError::Local {
            what: "reading the NAR of",
            path: path.to_owned(),
            source,
        };
        let bad = |problem: String| ServeError::BadNar {
            path: path.to_owned(),
            problem,
        };
        let mut check = hash.map(|h| (NarFramer::new(), Sha256::new(), h));
        let mut buf = vec![0u8; BUFFER];
        let mut sent = 0u64;
        while sent < size {
            let want = usize::try_from(size - sent).map_or(BUFFER, |left| left.min(BUFFER));
            let n = nar.read(&mut buf[..want]).await.map_err(local)?;
            if n == 0 {
                return Err(bad(format!(
                    "has {sent} bytes, fewer than the {size} its path info declares"
                )));
            }
            let last = sent + n as u64 == size;
            if let Some((framer, hasher, expected)) = &mut check {
                let used = framer
                    .feed(&buf[..n])
                    .map_err(|e| bad(format!("is not a valid NAR: {e}")))?;
                if used < n || framer.is_done() != last {
                    return Err(bad(format!(
                        "does not end at the {size} bytes its path info declares"
                    )));
                }
                hasher.update(&buf[..n]);
                if last {
                    let got = NixHash::sha256(std::mem::take(hasher).finalize().into());
                    if got != **expected {
                        return Err(bad(format!(
                            "has hash {got}, not the {expected} its path info declares"
                        )));
                    }
                }
            }
            if last {
                // The stream must end here, and say so without an error,
                // before the server gets the last bytes.
                let mut probe = [0u8; 1];
                if nar.read(&mut probe).await.map_err(local)? != 0 {
                    return Err(bad(format!(
                        "is longer than the {size} bytes its path info declares"
                    )));
                }
            }
            self.writer.raw(&buf[..n], "a NAR").await?;
            sent += n as u64;
        }
        Ok(())
    }

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
pub(super) fn to_io(e: ServeError) -> io::Error {
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
