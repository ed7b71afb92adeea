//! Stores: places that hold store paths, behind one [`Store`] trait.
//!
//! A backend answers batched questions about paths ([`Store::query_path_infos`]),
//! streams a path's NAR out ([`Store::nar`]) and takes one in
//! ([`Store::add_path`]). The copy engine (`crate::copy`) only talks to this
//! trait, so every pair of backends can copy to each other.
//!
//! Backends, chosen by URL ([`StoreUrl`], [`open`]):
//!
//! | URL | backend |
//! |---|---|
//! | `file:///dir?compression=zstd&…` | [`mod@file`]: a binary cache in a directory (docs/formats.md §3) |
//! | `http://host/path`, `https://…` | [`mod@http`]: a binary cache served over HTTP(S) (docs/formats.md §3) |
//! | `s3://bucket[/prefix]?region=…&endpoint=…` | [`mod@s3`]: a binary cache in an S3 bucket (docs/formats.md §3) |
//! | `local`, `/nix/store`, `local?root=/x` | [`mod@local`]: a Nix store read through its SQLite database (docs/formats.md §6) |
//! | `ssh://[user@]host[:port]?…` | [`serve`]: a Nix store behind `nix-store --serve` over ssh (docs/formats.md §5) |
//!
//! # Design
//!
//! The trait is async (tokio), so network transports fit it without
//! blocking threads. Backends that do file-system or CPU work (hashing,
//! compression, NAR encoding) do it on blocking threads and exchange NARs
//! through bounded streams, so memory stays flat whatever the NAR size.
//!
//! # What is checked where
//!
//! Nothing unverified enters a store. A path's info is what signatures
//! cover (its `narHash`, `narSize`, references and name); every NAR handed
//! to a store is checked against that `narHash` and `narSize` before the
//! path becomes visible there, whichever way it comes in:
//!
//! | entry point | the check |
//! |---|---|
//! | [`Store::add_path`] of a binary cache (`file://`, HTTP `PUT`, S3) | the NAR is decoded strictly and hashed while it is compressed into a temporary file; the upload (HTTP, S3) starts only after it matched, and the narinfo is written last |
//! | [`Store::add_compressed`] (a compressed file moved as it is between binary caches) | a second thread decompresses and decodes the file while it is copied ([`verify::NarFileCheck`]); `FileHash`/`FileSize`, which no signature covers, are compared too but never trusted |
//! | [`Store::add_path`] of a Nix store (`ssh://`, `local`) | the remote `nix-store --serve` checks the hash (`AddToStoreNar`) and registers nothing on a mismatch; for servers too old for that (`ImportPaths`), the stream is hashed while it is sent, and its last bytes are held back until it matched |
//! | the copy engine ([`crate::copy`]) | every NAR read from a source goes through a check that fails at the end of a stream that does not match (the size as soon as it overruns); the hash is left to destinations that check it themselves ([`Capabilities::verifies_nar`]) |
//! | [`add_to_store`] (`nixferry add`) | the NAR is written once to a temporary file while it is hashed, and the store checks it as above when it reads it back |
//! | uploads to `nixferry serve --write` | the server checks the stored NAR file against the narinfo that follows it ([`verify::verify_nar_file`]: file name, `FileHash`, `FileSize`, `NarHash`, `NarSize`) before it publishes that narinfo |
//!
//! A mismatch fails that path with [`StoreError::NarMismatch`] and leaves
//! nothing visible behind. Signatures are checked by the copy engine
//! before any of this, for sources that are not trusted
//! ([`crate::copy::CopyOptions::check_sigs`]).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncRead;

use crate::hash::NixHash;
use crate::narinfo::{Compression, NarInfo, NarInfoFields};
use crate::signing::{TrustedKeys, VerifyError};
use crate::store_path::{ContentAddress, StoreDir, StorePath};

mod add;
pub(crate) mod cache_writer;
pub(crate) mod chunks;
pub use chunks::Chunks;
pub mod file;
#[cfg(feature = "http")]
pub mod http;
pub mod json;
#[cfg(feature = "local")]
pub mod local;
#[cfg(test)]
pub(crate) mod mem;
#[cfg(any(feature = "http", feature = "s3"))]
pub(crate) mod remote;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(feature = "ssh", feature = "local"))]
pub mod serve;
mod url;
pub mod verify;

pub use add::add_to_store;
pub use url::{Scheme, StoreUrl, UrlError};

/// A stream of NAR bytes (or compressed NAR bytes, see [`CompressedNar`]).
pub type NarStream = Pin<Box<dyn AsyncRead + Send>>;

/// What a store knows about one of its paths (Nix's `ValidPathInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// SHA-256 of its NAR.
    pub nar_hash: NixHash,
    /// Size of its NAR in bytes.
    pub nar_size: u64,
    /// The paths it refers to, sorted, possibly including itself.
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// Signatures, `keyname:base64`.
    pub signatures: Vec<String>,
    /// Its content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
    /// When it was registered (Unix seconds), 0 if unknown.
    pub registration_time: u64,
    /// Whether it was built on this machine (Nix's `ultimate`).
    pub ultimate: bool,
    /// Where a binary cache keeps its NAR file, for binary caches.
    pub file: Option<NarFile>,
}

/// A binary cache's NAR file for a path: the narinfo's `URL`,
/// `Compression`, `FileHash` and `FileSize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarFile {
    /// Relative to the cache root (or absolute).
    pub url: String,
    /// How the file is compressed.
    pub compression: Compression,
    /// Hash of the file as stored, if known.
    pub file_hash: Option<NixHash>,
    /// Size of the file as stored, if known.
    pub file_size: Option<u64>,
}

impl PathInfo {
    /// A path info with only the required facts.
    pub fn new(path: StorePath, nar_hash: NixHash, nar_size: u64) -> Self {
        Self {
            path,
            nar_hash,
            nar_size,
            references: Vec::new(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
            registration_time: 0,
            ultimate: false,
            file: None,
        }
    }

    /// The facts a narinfo holds.
    pub fn from_narinfo(info: &NarInfo) -> Self {
        let mut references = info.references().to_vec();
        references.sort();
        Self {
            path: info.store_path().clone(),
            nar_hash: *info.nar_hash(),
            nar_size: info.nar_size(),
            references,
            deriver: info.deriver().cloned(),
            signatures: info.signatures().map(str::to_owned).collect(),
            ca: info.ca().copied(),
            registration_time: 0,
            ultimate: false,
            file: Some(NarFile {
                url: info.url().to_owned(),
                compression: info.compression().clone(),
                file_hash: info.file_hash().copied(),
                file_size: info.file_size(),
            }),
        }
    }

    /// The narinfo fields for this path stored as `file`.
    pub fn narinfo_fields(&self, store_dir: &StoreDir, file: NarFile) -> NarInfoFields {
        NarInfoFields {
            store_dir: store_dir.clone(),
            compression: file.compression,
            file_hash: file.file_hash,
            file_size: file.file_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            sigs: self.signatures.clone(),
            ca: self.ca,
            ..NarInfoFields::new(self.path.clone(), file.url, self.nar_hash, self.nar_size)
        }
    }

    /// The fingerprint signatures are made over (docs/formats.md §4.2).
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        crate::narinfo::fingerprint(
            store_dir,
            &self.path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Whether the path's content-address claim holds, which makes it
    /// trusted without signatures (docs/formats.md §2.7, §4.4).
    pub fn ca_verifies(&self, store_dir: &StoreDir) -> bool {
        self.ca
            .as_ref()
            .is_some_and(|ca| store_dir.verify_ca(&self.path, ca, &self.references))
    }

    /// Checks that the path is trusted: a valid signature by one of
    /// `trusted`, or a content address that verifies. Returns the name of
    /// the key that verified, or `None` for a verified content address.
    ///
    /// # Errors
    /// [`VerifyError`] saying why no signature verified.
    pub fn check_trust<'t>(
        &self,
        store_dir: &StoreDir,
        trusted: &'t TrustedKeys,
    ) -> Result<Option<&'t str>, VerifyError> {
        if self.ca_verifies(store_dir) {
            return Ok(None);
        }
        let fingerprint = self.fingerprint(store_dir);
        trusted
            .verify(
                fingerprint.as_bytes(),
                self.signatures.iter().map(String::as_str),
            )
            .map(Some)
    }
}

/// A NAR as a binary cache stores it: compressed, with the file's hash.
pub struct CompressedNar {
    /// The compression of `stream`.
    pub compression: Compression,
    /// The file's hash, if known.
    pub file_hash: Option<NixHash>,
    /// The file's size, if known.
    pub file_size: Option<u64>,
    /// The compressed bytes.
    pub stream: NarStream,
}

impl fmt::Debug for CompressedNar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompressedNar")
            .field("compression", &self.compression)
            .field("file_hash", &self.file_hash)
            .field("file_size", &self.file_size)
            .finish_non_exhaustive()
    }
}

/// What a backend can do, so the copy engine can plan for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Paths must be added after their references (a Nix store: adding a
    /// path whose references are missing is an error there).
    pub needs_references_first: bool,
    /// With [`needs_references_first`](Self::needs_references_first): the
    /// store takes a path while its references are still being added, and
    /// makes it valid once they are (a remote `nixferry remote`, which
    /// holds a path back until its references are imported), so the copy
    /// engine only waits for a reference to have started, not to be done.
    /// A path whose reference then fails fails too.
    pub accepts_pending_references: bool,
    /// Signatures given with a path are kept.
    pub keeps_signatures: bool,
    /// A binary cache that writes NAR files with this compression; the copy
    /// engine can then hand it compressed NARs as they are.
    pub writes_compression: Option<Compression>,
    /// The store signs new paths itself (`?secret-key=`).
    pub signs: bool,
    /// Its paths are trusted without signatures, as Nix trusts what is in
    /// the machine's own store; paths from any other store need a valid
    /// signature or content address when signatures are checked.
    pub trusted_source: bool,
    /// The store checks the hash of every NAR handed to
    /// [`Store::add_path`] itself, in a way the copy engine cannot see
    /// (a remote Nix checking it), so that the engine need not hash the
    /// stream a second time. Every store checks NARs (see the module
    /// docs); this only says who hashes.
    pub verifies_nar: bool,
    /// How many paths the store should be given at once at most: more
    /// would only cost memory (a binary cache compressing with xz holds
    /// ~94 MB per encoder, and the CPUs are busy with fewer). The copy
    /// engine runs no more paths at once than its destinations allow.
    pub max_parallel_adds: Option<usize>,
}

/// Errors from stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL is malformed or names an unknown scheme or parameter.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// An I/O error on a file of the store.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file (or URL) it was done to.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file of the store is corrupt.
    #[error("invalid data in store '{store}': {message}")]
    Corrupt {
        /// The store URL.
        store: String,
        /// What is wrong, with the file or path.
        message: String,
    },
    /// The store does not have a path it was asked for.
    #[error("path '{path}' is not valid in store '{store}'")]
    NotFound {
        /// The store URL.
        store: String,
        /// The full path.
        path: String,
    },
    /// A NAR did not match the hash or size its path info declares.
    #[error("NAR of '{path}' does not match its path info: {message}")]
    NarMismatch {
        /// The full path.
        path: String,
        /// Expected against found.
        message: String,
    },
    /// The operation is not supported by this store.
    #[error("store '{store}' does not support {what}")]
    Unsupported {
        /// The store URL.
        store: String,
        /// The operation.
        what: &'static str,
    },
    /// A NAR could not be read or written.
    #[error(transparent)]
    Nar(#[from] crate::nar::NarError),
    /// A narinfo or nix-cache-info could not be parsed.
    #[error(transparent)]
    NarInfo(#[from] crate::narinfo::NarInfoError),
    /// A store path could not be parsed or made.
    #[error(transparent)]
    StorePath(#[from] crate::store_path::StorePathError),
    /// The remote end of a connection failed and said why (Nix's
    /// `error: …`, colour codes removed).
    #[error("{store}: remote error: {message}")]
    Remote {
        /// The store URL.
        store: String,
        /// The remote's message.
        message: String,
    },
    /// The connection to a remote store could not be made or broke (ssh
    /// failing, a hang-up without a message): trying again may help.
    #[error("{store}: connection failed: {message}")]
    Connection {
        /// The store URL.
        store: String,
        /// What happened, with what the transport said.
        message: String,
    },
    /// A remote store refused the connection for good: ssh could not
    /// verify the host key, the login was refused, the host is unknown.
    /// Trying again does not help.
    #[error("{store}: {message}")]
    Login {
        /// The store URL.
        store: String,
        /// What went wrong (`cannot log in: …`, `unknown host: …`), with
        /// what the transport said.
        message: String,
    },
    /// A remote store sent something that breaks its protocol.
    #[error("{store}: protocol error: {message}")]
    Protocol {
        /// The store URL.
        store: String,
        /// What is wrong.
        message: String,
    },
    /// A task doing the work panicked or was cancelled: a bug, or the
    /// runtime shutting down. Counted as a failure, never dropped.
    #[error("{what}: {message}")]
    Task {
        /// What the task was doing.
        what: String,
        /// How it ended.
        message: String,
    },
    /// One error reported to several receivers (the destinations of a
    /// fan-out copy, say), each holding a handle to it.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// The local store database could not be read.
    #[cfg(feature = "local")]
    #[error("reading the Nix database '{db}': {source}")]
    Database {
        /// The database file.
        db: String,
        /// The cause.
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// The error of a NAR stream that failed with `source` while `what`
    /// (`path`): the [`StoreError`] inside it if it carries one (as the
    /// streams that check `narHash`, or that come from a remote store, do),
    /// otherwise [`StoreError::Io`].
    pub fn from_stream(source: std::io::Error, what: &'static str, path: &str) -> Self {
        if source.get_ref().is_some_and(|e| e.is::<StoreError>()) {
            let kind = source.kind();
            return match source.into_inner().map(|e| e.downcast::<StoreError>()) {
                Some(Ok(e)) => *e,
                _ => StoreError::Io {
                    what,
                    path: path.to_owned(),
                    source: std::io::Error::new(kind, "the stream failed"),
                },
            };
        }
        StoreError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// The same error for one more receiver: the error moves behind an
    /// [`Arc`] (once), and this value and the one returned both become
    /// [`StoreError::Shared`] handles to it.
    pub fn share(&mut self) -> Self {
        if let Self::Shared(e) = self {
            return Self::Shared(Arc::clone(e));
        }
        let placeholder = Self::Unsupported {
            store: String::new(),
            what: "",
        };
        let e = Arc::new(std::mem::replace(self, placeholder));
        *self = Self::Shared(Arc::clone(&e));
        Self::Shared(e)
    }

    /// The error of a task that panicked or was cancelled while doing
    /// `what`, with the panic's message where it has one.
    pub(crate) fn task_died(what: impl fmt::Display, e: tokio::task::JoinError) -> Self {
        let message = match e.try_into_panic() {
            Ok(payload) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned());
                match text {
                    Some(text) => format!("the task panicked: {text}"),
                    None => "the task panicked".to_owned(),
                }
            }
            Err(_) => "the task was cancelled".to_owned(),
        };
        Self::Task {
            what: what.to_string(),
            message,
        }
    }

    /// Whether trying again may help (a transient network or I/O failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Shared(e) => e.is_retryable(),
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            Self::Connection { .. } => true,
            _ => false,
        }
    }
}

/// A place that holds store paths.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The URL the store was opened with, for messages.
    fn url(&self) -> &str;

    /// The store directory its paths live in.
    fn store_dir(&self) -> &StoreDir;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Path infos of those of `paths` the store has, in one batched
    /// question; absent paths are left out.
    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError>;

    /// Which of `paths` the store has, in one batched question.
    async fn query_valid_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::BTreeSet<StorePath>, StoreError> {
        Ok(self.query_path_infos(paths).await?.into_keys().collect())
    }

    /// Marks `paths`, which the store said it has, as wanted now, so that
    /// a garbage collection running at the same moment keeps them (a
    /// copy that skips a path because the destination has it relies on
    /// it staying): binary caches in a directory set their narinfos'
    /// modification times, which `cache gc` reads. Returns those still
    /// there; a store without such a notion returns them all.
    async fn refresh_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::BTreeSet<StorePath>, StoreError> {
        Ok(paths.iter().cloned().collect())
    }

    /// The valid outputs of the derivations `drvs` (paths of `.drv`
    /// files), for copies that include outputs. Stores that do not record
    /// which derivation built what (binary caches) know none.
    async fn query_derivation_outputs(
        &self,
        drvs: &[StorePath],
    ) -> Result<Vec<StorePath>, StoreError> {
        let _ = drvs;
        Ok(Vec::new())
    }

    /// Asks the store to fetch what it can of `paths` from its own
    /// substituters (a remote Nix store's binary caches, as `nix copy -s`
    /// does), then returns which of `paths` it has. Stores without
    /// substituters only answer the question.
    async fn substitute_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::BTreeSet<StorePath>, StoreError> {
        self.query_valid_paths(paths).await
    }

    /// The closure of `roots` in one question, for stores that can answer
    /// it directly (a Nix database); `None` makes callers walk the
    /// references level by level with [`Store::query_path_infos`].
    async fn query_closure(
        &self,
        roots: &[StorePath],
    ) -> Result<Option<BTreeMap<StorePath, PathInfo>>, StoreError> {
        let _ = roots;
        Ok(None)
    }

    /// The NAR of a path the store has, uncompressed. The bytes are not
    /// checked against `info`; the caller does that while reading.
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError>;

    /// Adds a path from its NAR. The store reads `nar` to its end and checks
    /// it against `info`'s `narHash` and `narSize` before it makes the path
    /// visible ([`StoreError::NarMismatch`] otherwise), and leaves nothing
    /// behind if reading or the check fails.
    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError>;

    /// The NAR file of a path as stored, compressed, where the store keeps
    /// one (binary caches). `None` when it has none.
    async fn compressed_nar(&self, info: &PathInfo) -> Result<Option<CompressedNar>, StoreError> {
        let _ = info;
        Ok(None)
    }

    /// Adds a path from a NAR file compressed the way this store writes
    /// them ([`Capabilities::writes_compression`]), storing it as is. The
    /// store checks that the file decompresses to a NAR matching `info`'s
    /// `narHash` and `narSize` before it makes the path visible
    /// ([`StoreError::NarMismatch`] otherwise): `nar`'s file hash and size
    /// are the source's word only.
    async fn add_compressed(&self, info: &PathInfo, nar: CompressedNar) -> Result<(), StoreError> {
        let _ = (info, nar);
        Err(StoreError::Unsupported {
            store: self.url().to_owned(),
            what: "adding compressed NAR files",
        })
    }

    /// The path whose hash part is `hash`, if the store has one (Nix's
    /// `queryPathFromHashPart`), with its info.
    async fn query_path_from_hash_part(&self, hash: &str) -> Result<Option<PathInfo>, StoreError> {
        let _ = hash;
        Err(StoreError::Unsupported {
            store: self.url().to_owned(),
            what: "looking paths up by hash part",
        })
    }

    /// Finishes what the store still has pending once a copy is over, such
    /// as cleaning up uploads that were cancelled. Stores stay usable.
    async fn close(&self) {}
}

/// Opens the store a URL names.
///
/// # Errors
/// [`StoreError::Url`] for a malformed URL, an unknown scheme or parameter;
/// otherwise what opening the backend gives.
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_url(&StoreUrl::parse(url)?)
}

/// Opens a store by its parsed URL, as [`open`] does; see
/// [`StoreUrl::set_default`] to give parameters defaults.
///
/// # Errors
/// As [`open`].
pub fn open_url(parsed: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    let url = parsed.as_str();
    match parsed.scheme() {
        Scheme::File => Ok(Arc::new(file::FileStore::open(parsed)?)),
        #[cfg(feature = "http")]
        Scheme::Http | Scheme::Https => Ok(Arc::new(http::HttpStore::open(parsed)?)),
        #[cfg(feature = "local")]
        Scheme::Local => Ok(Arc::new(local::LocalStore::open(parsed)?)),
        #[cfg(all(feature = "ssh", feature = "zstd"))]
        Scheme::Ssh => serve::ferry::open_ssh(parsed),
        #[cfg(all(feature = "ssh", not(feature = "zstd")))]
        Scheme::Ssh => Ok(Arc::new(serve::ServeStore::open(parsed)?)),
        #[cfg(feature = "s3")]
        Scheme::S3 => Ok(Arc::new(s3::S3Store::open(parsed)?)),
        #[allow(unreachable_patterns)]
        scheme => Err(UrlError::NotBuilt {
            url: url.to_owned(),
            scheme: scheme.name(),
            feature: scheme.feature(),
        }
        .into()),
    }
}
