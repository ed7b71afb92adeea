//! The client: [`FerryStore`], a Nix store on another machine reached by
//! ssh running `nixferry remote` there (docs/formats.md §7).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::OnceCell as Once;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::codec::{self, MAX_BASE};
use super::mux::{self, Level, Sender, START_LEVEL};
use super::wire::{
    Encoding, Failure, Frame, FrameReader, Kind, Missing, ReadError, Reply, Request, FERRY_MAGIC,
};
use crate::delta::{DeltaKind, Signature, SignatureLimits};
use tokio::process::{ChildStdin, ChildStdout};

use crate::store::serve::process::{Launcher, Process};
use crate::store::serve::{ServeError, PROTOCOL_VERSION, SERVE_MAGIC_1, SERVE_MAGIC_2};
use crate::store::{Capabilities, NarStream, PathInfo, Store, StoreError};
use crate::store_path::{StoreDir, StorePath};

/// Paths asked about in one query at most.
const QUERY_BATCH: usize = 10_000;

/// Bytes of base NARs held in memory for deltas at once, in MiB.
const DELTA_MEMORY_MIB: u32 = 2048;

/// A Nix store behind `nixferry remote` over ssh: one connection carries
/// every question and every path at once, NARs go zstd-compressed (the
/// level following the link) or as deltas against similar paths the
/// remote has, and an add cut off resumes where the remote's copy ends.
pub struct FerryStore {
    url: String,
    store_dir: StoreDir,
    launcher: Launcher,
    delta: bool,
    /// Store paths or profiles on the remote whose closures are the
    /// preferred delta bases.
    bases: Vec<String>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// What queries said of missing paths: partial NARs and bases.
    missing: Mutex<HashMap<StorePath, Missing>>,
    /// Paths whose add was tried before: the next try asks where to
    /// resume.
    tried: Mutex<HashSet<StorePath>>,
    /// Paths whose delta the remote refused (its base is damaged or
    /// gone): they go whole from then on, whatever later queries say.
    whole: Mutex<HashSet<StorePath>>,
    /// This machine's Nix store, where bases for deltas are read.
    local: OnceCell<Option<Arc<dyn Store>>>,
    delta_memory: Arc<Semaphore>,
    /// NARs pulled at once (see [`FerryStore::nar`]).
    pulls: Arc<Semaphore>,
    level: Arc<Level>,
}

impl fmt::Debug for FerryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FerryStore")
            .field("url", &self.url)
            .field("command", &self.launcher.argv())
            .field("delta", &self.delta)
            .finish_non_exhaustive()
    }
}

/// Opening a connection failed.
pub(super) enum ConnectError {
    /// The remote speaks the serve protocol: it has no nixferry. The
    /// process, greeted up to the server's magic number, for the serve
    /// protocol client to go on with.
    NoFerry(Process, ChildStdout, ChildStdin),
    /// Anything else.
    Store(StoreError),
}

impl FerryStore {
    pub(super) fn new(url: String, launcher: Launcher, delta: bool, bases: Vec<String>) -> Self {
        Self {
            url,
            store_dir: StoreDir::default(),
            launcher,
            delta,
            bases,
            conn: tokio::sync::Mutex::new(None),
            missing: Mutex::new(HashMap::new()),
            tried: Mutex::new(HashSet::new()),
            whole: Mutex::new(HashSet::new()),
            local: OnceCell::new(),
            delta_memory: Arc::new(Semaphore::new(DELTA_MEMORY_MIB as usize)),
            pulls: Arc::new(Semaphore::new(1)),
            level: Level::new(START_LEVEL),
        }
    }

    /// Uses `store` as this machine's store, where delta bases are read
    /// (by default the local Nix store, if there is one).
    pub fn set_delta_source(&self, store: Arc<dyn Store>) {
        let _ = self.local.set(Some(store));
    }

    /// The open connection, or a new one.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>, ConnectError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_broken() {
                return Ok(Arc::clone(conn));
            }
        }
        let conn = Arc::new(Conn::open(&self.url, &self.launcher, Arc::clone(&self.level)).await?);
        *guard = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn connection(&self) -> Result<Arc<Conn>, StoreError> {
        self.conn().await.map_err(|e| match e {
            ConnectError::Store(e) => e,
            ConnectError::NoFerry(..) => StoreError::Remote {
                store: self.url.clone(),
                message: "the remote runs nix-store --serve, not nixferry remote".to_owned(),
            },
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This machine's store, for delta bases.
    async fn local(&self) -> Option<Arc<dyn Store>> {
        self.local
            .get_or_init(|| async {
                #[cfg(feature = "local")]
                {
                    let url = crate::store::StoreUrl::parse("local").ok()?;
                    let store = crate::store::local::LocalStore::open(&url).ok()?;
                    Some(Arc::new(store) as Arc<dyn Store>)
                }
                #[cfg(not(feature = "local"))]
                None
            })
            .await
            .clone()
    }

    /// What a delta of `info` can be made against, when the remote named
    /// a base: its NAR, if this machine has it (with a hold on the memory
    /// it takes), else its block signature, asked of the remote.
    async fn base(&self, conn: &Arc<Conn>, info: &PathInfo) -> Option<Base> {
        if !self.delta || Self::lock(&self.whole).contains(&info.path) {
            return None;
        }
        let base = Self::lock(&self.missing).get(&info.path)?.base.clone()?;
        if base.nar_size > MAX_BASE {
            return None;
        }
        match self.local_nar(&base).await {
            Some((bytes, permit)) => Some(Base::Nar(
                base,
                HeldNar {
                    bytes,
                    _permit: permit,
                },
            )),
            None => self
                .signature(conn, &base)
                .await
                .map(|sig| Base::Signature(base, sig)),
        }
    }

    /// The NAR of `base` from this machine's store, if it has it.
    async fn local_nar(
        &self,
        base: &PathInfo,
    ) -> Option<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        let local = self.local().await?;
        let have = local
            .query_path_infos(std::slice::from_ref(&base.path))
            .await
            .ok()?
            .remove(&base.path)?;
        if have.nar_hash != base.nar_hash || have.nar_size != base.nar_size {
            return None;
        }
        let mib = u32::try_from(base.nar_size >> 20)
            .unwrap_or(u32::MAX)
            .clamp(1, DELTA_MEMORY_MIB);
        let permit = Arc::clone(&self.delta_memory)
            .acquire_many_owned(mib)
            .await
            .ok()?;
        let mut nar = local.nar(&have).await.ok()?;
        let mut bytes = Vec::with_capacity(usize::try_from(have.nar_size).ok()?);
        (&mut nar)
            .take(have.nar_size + 1)
            .read_to_end(&mut bytes)
            .await
            .ok()?;
        let hash =
            crate::hash::NixHash::sha256(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into());
        (bytes.len() as u64 == have.nar_size && hash == have.nar_hash).then_some((bytes, permit))
    }

    /// The block signature of `base`, computed by the remote from its
    /// copy; `None` when it cannot give one.
    async fn signature(&self, conn: &Arc<Conn>, base: &PathInfo) -> Option<Signature> {
        let mut call = conn
            .call(|id| Request::Signature {
                id,
                base: base.path.clone(),
                base_hash: base.nar_hash,
                base_size: base.nar_size,
            })
            .await
            .ok()?;
        // 20 bytes a block of at least 2 KiB, and a header.
        let limit = base.nar_size / 2048 * 20 + 4096;
        let mut bytes = Vec::new();
        loop {
            match call.event().await.ok()? {
                Event::Data(data) => {
                    bytes.extend_from_slice(&data);
                    if bytes.len() as u64 > limit {
                        return None;
                    }
                }
                Event::End => break,
                _ => return None,
            }
        }
        let sig = Signature::parse(&bytes, &SignatureLimits::default()).ok()?;
        let matches = sig.base_size() == base.nar_size
            && crate::hash::NixHash::sha256(sig.base_sha256()) == base.nar_hash;
        matches.then_some(sig)
    }

    async fn query(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let conn = self.connection().await?;
        let mut found = BTreeMap::new();
        for batch in paths.chunks(QUERY_BATCH) {
            let asked: BTreeSet<&StorePath> = batch.iter().collect();
            let mut call = conn
                .call(|id| Request::Query {
                    id,
                    paths: batch.to_vec(),
                    want_bases: self.delta,
                    bases: self.bases.clone(),
                })
                .await?;
            match call.reply().await? {
                Reply::Paths { valid, missing, .. } => {
                    for info in valid {
                        if !asked.contains(&info.path) {
                            return Err(
                                conn.violation(&self.url, "a reply names a path not asked about")
                            );
                        }
                        found.insert(info.path.clone(), info);
                    }
                    let mut known = Self::lock(&self.missing);
                    for m in missing {
                        if !asked.contains(&m.path) {
                            return Err(
                                conn.violation(&self.url, "a reply names a path not asked about")
                            );
                        }
                        known.insert(m.path.clone(), m);
                    }
                }
                other => return Err(call.unexpected(&self.url, &other)),
            }
        }
        Ok(found)
    }

    /// One try at adding a path.
    async fn try_add(
        &self,
        info: &PathInfo,
        nar: NarStream,
        ask_offset: bool,
        delta: bool,
    ) -> Result<(), AddFailure> {
        let conn = self.connection().await.map_err(AddFailure::Store)?;
        let base = if delta {
            self.base(&conn, info).await
        } else {
            None
        };
        let known = Self::lock(&self.missing)
            .get(&info.path)
            .map_or(0, |m| m.partial);
        let offset = (!ask_offset).then_some(known.min(info.nar_size));
        let encoding = match &base {
            Some(b) => {
                let (kind, info) = match b {
                    Base::Nar(info, ..) => (DeltaKind::ZstdRef, info),
                    Base::Signature(info, _) => (DeltaKind::Block, info),
                };
                Encoding::Delta {
                    kind,
                    base: info.path.clone(),
                    base_hash: info.nar_hash,
                    base_size: info.nar_size,
                }
            }
            None => Encoding::Zstd,
        };
        let mut call = conn
            .call(|id| Request::Add {
                id,
                info: Box::new(info.clone()),
                encoding,
                offset,
            })
            .await
            .map_err(AddFailure::Store)?;
        let start = match offset {
            Some(o) => o,
            None => match call.reply().await.map_err(AddFailure::Store)? {
                Reply::Offset { offset, .. } if offset <= info.nar_size => offset,
                // The remote has the path already (an earlier try got in
                // after all): it reads nothing of this stream.
                Reply::Added { .. } => {
                    conn.out.end(call.id).await;
                    return Ok(());
                }
                Reply::Failed {
                    failure, message, ..
                } => return Err(AddFailure::Remote(failure, message)),
                other => return Err(AddFailure::Store(call.unexpected(&self.url, &other))),
            },
        };
        // The bytes before `start` are read (and checked by the copy) but
        // not sent.
        let mut nar = nar;
        let skipped = tokio::io::copy(&mut (&mut nar).take(start), &mut tokio::io::sink())
            .await
            .map_err(|e| {
                AddFailure::Store(StoreError::from_stream(e, "reading the NAR of", &self.url))
            })?;
        if skipped != start {
            return Err(AddFailure::Store(StoreError::NarMismatch {
                path: self.store_dir.full(&info.path),
                message: format!("the NAR ends at {skipped} bytes, before its narSize"),
            }));
        }
        let out = conn.out.clone();
        let id = call.id;
        let level = Arc::clone(&self.level);
        let target_size = info.nar_size;
        let sent = tokio::task::spawn_blocking(move || {
            let base = base.as_ref().map(|b| codec::DeltaBase {
                base: match b {
                    Base::Nar(_, held) => codec::Reference::Nar(&held.bytes),
                    Base::Signature(_, sig) => codec::Reference::Signature(sig),
                },
                target_size,
                offset: start,
            });
            codec::compress(SyncIoBridge::new(nar), &out, id, &level, base)
        })
        .await
        .map_err(|e| AddFailure::Store(StoreError::task_died("compressing a NAR", e)))?;
        match sent {
            Ok(_) => {
                conn.out.end(id).await;
            }
            Err(e) => {
                conn.out.abort(id, &e.to_string()).await;
                // A connection that broke says why itself.
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Err(AddFailure::Store(conn.failure().await));
                }
                return Err(AddFailure::Store(StoreError::from_stream(
                    e,
                    "sending the NAR of",
                    &self.url,
                )));
            }
        }
        match call.reply().await.map_err(AddFailure::Store)? {
            Reply::Added { .. } => Ok(()),
            Reply::Failed {
                failure, message, ..
            } => Err(AddFailure::Remote(failure, message)),
            other => Err(AddFailure::Store(call.unexpected(&self.url, &other))),
        }
    }
}

/// What a delta is made against.
enum Base {
    /// The base's NAR from this machine's store.
    Nar(PathInfo, HeldNar),
    /// The base's block signature, from the remote.
    Signature(PathInfo, Signature),
}

/// A base's NAR in memory, and the hold on the memory it takes.
struct HeldNar {
    bytes: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Why one try at an add failed.
enum AddFailure {
    Store(StoreError),
    Remote(Failure, String),
}

#[async_trait::async_trait]
impl Store for FerryStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_references_first: true,
            accepts_pending_references: true,
            keeps_signatures: true,
            writes_compression: None,
            signs: false,
            trusted_source: false,
            // The remote checks the hash and size before it imports.
            verifies_nar: true,
            max_parallel_adds: Some(32),
        }
    }

    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        self.query(paths).await
    }

    async fn query_closure(
        &self,
        roots: &[StorePath],
    ) -> Result<Option<BTreeMap<StorePath, PathInfo>>, StoreError> {
        let conn = self.connection().await?;
        let mut call = conn
            .call(|id| Request::Closure {
                id,
                paths: roots.to_vec(),
            })
            .await?;
        match call.reply().await? {
            Reply::Closure { infos, .. } => Ok(Some(
                infos.into_iter().map(|i| (i.path.clone(), i)).collect(),
            )),
            Reply::Failed { message, .. } => Err(StoreError::Remote {
                store: self.url.clone(),
                message,
            }),
            other => Err(call.unexpected(&self.url, &other)),
        }
    }

    /// The remote sends a NAR as fast as the link goes, and one reader
    /// routes everything that arrives: a NAR nobody reads would stop the
    /// others behind it (a destination that takes one path at a time
    /// holds the streams it has not started). So a NAR is asked for only
    /// once its stream is read, and one at a time.
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        let conn = self.connection().await?;
        let url = self.url.clone();
        let limit = info.nar_size;
        let path = info.path.clone();
        let pulls = Arc::clone(&self.pulls);
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<()>();
        // Compressed chunks as they come, decompressed on a blocking
        // thread into a pipe the caller reads.
        let (chunks_tx, chunks_rx) = mpsc::channel::<io::Result<Bytes>>(16);
        tokio::spawn(async move {
            if start_rx.await.is_err() {
                return;
            }
            let Ok(_permit) = pulls.acquire_owned().await else {
                return;
            };
            let mut call = match conn.call(|id| Request::Nar { id, path }).await {
                Ok(call) => call,
                Err(e) => {
                    let _ = chunks_tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            };
            loop {
                let item = match call.event().await {
                    Ok(Event::Data(b)) => Ok(b),
                    Ok(Event::End) => break,
                    Ok(Event::Abort(why)) => Err(io::Error::other(StoreError::Remote {
                        store: url.clone(),
                        message: why,
                    })),
                    Ok(Event::Reply(Reply::Failed { message, .. })) => {
                        Err(io::Error::other(StoreError::Remote {
                            store: url.clone(),
                            message,
                        }))
                    }
                    Ok(Event::Reply(other)) => Err(io::Error::other(call.unexpected(&url, &other))),
                    Err(e) => Err(io::Error::other(e)),
                };
                let stop = item.is_err();
                if chunks_tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        let compressed = StreamReader::new(Box::pin(tokio_stream_from(chunks_rx)));
        let stream = crate::store::chunks::blocking_stream(move |out| {
            codec::decompress_to(SyncIoBridge::new(compressed), out, limit).map(drop)
        });
        Ok(Box::pin(StartOnRead {
            inner: stream,
            start: Some(start_tx),
        }))
    }

    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
        let ask = Self::lock(&self.tried).contains(&info.path);
        Self::lock(&self.tried).insert(info.path.clone());
        let full = self.store_dir.full(&info.path);
        match self.try_add(info, nar, ask, true).await {
            Ok(()) => Ok(()),
            Err(AddFailure::Store(e)) => Err(e),
            Err(AddFailure::Remote(Failure::Mismatch, message)) => Err(StoreError::NarMismatch {
                path: full,
                message,
            }),
            // The base or the resume point did not hold: the engine tries
            // again with a fresh NAR stream, which asks where to resume
            // and leaves out the delta (a query in between names the
            // same base again: `whole` outlasts it).
            Err(AddFailure::Remote(Failure::Base, message)) => {
                Self::lock(&self.whole).insert(info.path.clone());
                Err(StoreError::Connection {
                    store: self.url.clone(),
                    message,
                })
            }
            Err(AddFailure::Remote(Failure::Offset, message)) => Err(StoreError::Connection {
                store: self.url.clone(),
                message,
            }),
            Err(AddFailure::Remote(_, message)) => Err(StoreError::Remote {
                store: self.url.clone(),
                message,
            }),
        }
    }
}

/// A stream that says when it is first read.
struct StartOnRead {
    inner: NarStream,
    start: Option<tokio::sync::oneshot::Sender<()>>,
}

impl tokio::io::AsyncRead for StartOnRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if let Some(start) = self.start.take() {
            let _ = start.send(());
        }
        self.inner.as_mut().poll_read(cx, buf)
    }
}

fn tokio_stream_from(
    rx: mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// What arrives for one request or stream.
pub(super) enum Event {
    Reply(Reply),
    Data(Bytes),
    End,
    Abort(String),
}

type Routes = HashMap<u32, mpsc::Sender<Event>>;

/// One connection: the writer task, the reader task routing what arrives
/// to the request it is for, and the process (killed with the reader).
pub(super) struct Conn {
    url: String,
    out: Sender,
    routes: Arc<Mutex<Option<Routes>>>,
    next_id: Arc<AtomicU32>,
    failure: Arc<Once<Arc<StoreError>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    async fn open(url: &str, launcher: &Launcher, level: Arc<Level>) -> Result<Self, ConnectError> {
        let (mut process, mut stdout, mut stdin) = launcher.spawn().map_err(|source| {
            ConnectError::Store(StoreError::Io {
                what: "starting",
                path: launcher.program(),
                source,
            })
        })?;
        let greet = async {
            stdin.write_u64_le(SERVE_MAGIC_1).await?;
            stdin.write_u64_le(PROTOCOL_VERSION).await?;
            stdin.flush().await?;
            stdout.read_u64_le().await
        };
        let magic = match greet.await {
            Ok(m) => m,
            Err(source) => {
                let e = process
                    .explain(
                        url,
                        ServeError::Read {
                            what: "the handshake",
                            source,
                        },
                    )
                    .await;
                return Err(ConnectError::Store(e));
            }
        };
        if magic == SERVE_MAGIC_2 {
            return Err(ConnectError::NoFerry(process, stdout, stdin));
        }
        let bad = |message: String| {
            ConnectError::Store(StoreError::Protocol {
                store: url.to_owned(),
                message,
            })
        };
        if magic != FERRY_MAGIC {
            let e = ServeError::Protocol {
                what: "the handshake",
                reason: format!(
                    "expected the magic number {SERVE_MAGIC_2:#x} (or nixferry's \
                     {FERRY_MAGIC:#x}), got {magic:#x} (does the remote shell print \
                     something when it starts?)"
                ),
            };
            return Err(ConnectError::Store(e.into_store_error(url)));
        }
        let version = stdout.read_u64_le().await.map_err(|e| bad(e.to_string()))?;
        if version == 0 {
            return Err(bad("protocol version 0".to_owned()));
        }
        let mut reader = FrameReader::new(stdout, 16);
        let hello = match reader.next().await {
            Ok(Some(f)) if f.kind == Kind::Message => {
                super::wire::parse_message(&f.payload, 16).map_err(|e| bad(e.to_string()))?
            }
            Ok(_) => return Err(bad("no hello".to_owned())),
            Err(ReadError::Wire(e)) => return Err(bad(e.to_string())),
            Err(ReadError::Io(source)) => {
                return Err(ConnectError::Store(
                    process
                        .explain(
                            url,
                            ServeError::Read {
                                what: "the hello",
                                source,
                            },
                        )
                        .await,
                ))
            }
        };
        let dir = hello
            .get("storeDir")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if dir != StoreDir::default().as_str() {
            return Err(bad(format!("the remote's store directory is '{dir}'")));
        }
        let (out, _writer) = mux::writer(stdin, level);
        let routes: Arc<Mutex<Option<Routes>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let failure: Arc<Once<Arc<StoreError>>> = Arc::new(Once::new());
        let next_id = Arc::new(AtomicU32::new(1));
        let reader = {
            let routes = Arc::clone(&routes);
            let failure = Arc::clone(&failure);
            let next_id = Arc::clone(&next_id);
            let url = url.to_owned();
            tokio::spawn(async move {
                let e = read_loop(&mut reader, &routes, &next_id).await;
                let e = match e {
                    ReadError::Wire(w) => StoreError::Protocol {
                        store: url.clone(),
                        message: w.to_string(),
                    },
                    ReadError::Io(source) => {
                        process
                            .explain(
                                &url,
                                ServeError::Read {
                                    what: "a reply",
                                    source,
                                },
                            )
                            .await
                    }
                };
                let _ = failure.set(Arc::new(e));
                // Waiters wake up to the failure.
                routes.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(process);
            })
        };
        Ok(Self {
            url: url.to_owned(),
            out,
            routes,
            next_id,
            failure,
            reader,
        })
    }

    fn is_broken(&self) -> bool {
        self.failure.initialized() || self.reader.is_finished()
    }

    /// The error the connection failed with.
    async fn failure(&self) -> StoreError {
        // The reader may still be finding out why.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !self.failure.initialized() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        match self.failure.get() {
            Some(e) => StoreError::Shared(Arc::clone(e)),
            None => StoreError::Connection {
                store: self.url.clone(),
                message: "the connection broke".to_owned(),
            },
        }
    }

    /// Ends the connection for a reply that breaks the protocol: every
    /// request in flight fails with the error.
    fn violation(&self, url: &str, message: &str) -> StoreError {
        let e = Arc::new(StoreError::Protocol {
            store: url.to_owned(),
            message: message.to_owned(),
        });
        let _ = self.failure.set(Arc::clone(&e));
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.reader.abort();
        StoreError::Shared(e)
    }

    /// Sends a request, returning the handle its replies come to.
    async fn call(self: &Arc<Self>, make: impl FnOnce(u32) -> Request) -> Result<Call, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(32);
        let routed = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(|r| r.insert(id, tx))
            .is_some();
        if !routed {
            return Err(self.failure().await);
        }
        let call = Call {
            id,
            rx,
            conn: Arc::clone(self),
        };
        if !self.out.send(Frame::message(&make(id).to_json())).await {
            return Err(self.failure().await);
        }
        Ok(call)
    }
}

/// Routes frames until the connection ends or breaks the protocol.
async fn read_loop(
    reader: &mut FrameReader<ChildStdout>,
    routes: &Mutex<Option<Routes>>,
    next_id: &AtomicU32,
) -> ReadError {
    loop {
        let offset = reader.offset();
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return ReadError::Io(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => return e,
        };
        let (id, event) = match frame.kind {
            Kind::Message => {
                let reply = super::wire::parse_message(&frame.payload, offset)
                    .and_then(|m| Reply::parse(&m, offset));
                match reply {
                    Ok(r) => (r.id(), Event::Reply(r)),
                    Err(e) => return ReadError::Wire(e),
                }
            }
            Kind::Data => (frame.stream, Event::Data(frame.payload)),
            Kind::End => (frame.stream, Event::End),
            Kind::Abort => (
                frame.stream,
                Event::Abort(String::from_utf8_lossy(&frame.payload).into_owned()),
            ),
        };
        let tx = routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|r| r.get(&id).cloned());
        match tx {
            // A request nobody waits for any more (its caller gave up)
            // drops what comes for it.
            Some(tx) => {
                let _ = tx.send(event).await;
            }
            None if id == 0 || id >= next_id.load(Ordering::Relaxed) => {
                return ReadError::Wire(super::wire::WireError {
                    offset,
                    reason: format!("a reply for id {id}"),
                })
            }
            None => {}
        }
    }
}

/// A request in flight: its replies and stream events arrive here.
pub(super) struct Call {
    id: u32,
    rx: mpsc::Receiver<Event>,
    conn: Arc<Conn>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(routes) = self
            .conn
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            routes.remove(&self.id);
        }
    }
}

impl Call {
    async fn event(&mut self) -> Result<Event, StoreError> {
        match self.rx.recv().await {
            Some(e) => Ok(e),
            None => Err(self.conn.failure().await),
        }
    }

    async fn reply(&mut self) -> Result<Reply, StoreError> {
        match self.event().await? {
            Event::Reply(r) => Ok(r),
            _ => Err(self
                .conn
                .violation(&self.conn.url, "stream data for a request")),
        }
    }

    fn unexpected(&self, url: &str, reply: &Reply) -> StoreError {
        self.conn.violation(
            url,
            &format!("unexpected reply {:?}", reply.to_json()["op"]),
        )
    }
}
