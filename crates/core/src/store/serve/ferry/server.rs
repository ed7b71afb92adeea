//! The remote end, `nixferry remote` (docs/formats.md §7): answers
//! questions about a local store, sends NARs compressed, and takes paths
//! in, each checked against its `narHash` and `narSize` in a spool file
//! before the store imports it, so that an interrupted add resumes where
//! the spool ends.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch, Notify, OnceCell};
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;

use super::codec::{self, MAX_BASE};
use super::mux::{self, Level, Sender, START_LEVEL};
use super::wire::{
    Encoding, Failure, Frame, FrameReader, Kind, Missing, ReadError, Reply, Request, FERRY_MAGIC,
    VERSION,
};
use crate::delta::{BlockDecoder, DeltaKind, Signature, ZstdRefDecoder};
use crate::hash::NixHash;
use crate::store::local::LocalStore;
use crate::store::serve::SERVE_MAGIC_1;
use crate::store::{PathInfo, Store, StoreError};
use crate::store_path::StorePath;

/// How long an add waits for a reference that is not in the store to
/// arrive in the same session.
const REFERENCE_WAIT: Duration = Duration::from_secs(120);

/// How long an add waits for another session to let go of the spool file
/// of the same path before it writes a file of its own.
const SPOOL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Spool files older than this are left-overs of adds nobody resumed.
const SPOOL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The remote end's settings.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Where partly received NARs are kept between connections.
    pub spool_dir: PathBuf,
}

impl RemoteOptions {
    /// The spool under this user's nixferry state directory
    /// (`$XDG_STATE_HOME/nixferry/incoming`), else under the system's
    /// temporary directory.
    pub fn new() -> Self {
        let spool_dir = crate::state::dir()
            .unwrap_or_else(|| std::env::temp_dir().join("nixferry"))
            .join("incoming");
        Self { spool_dir }
    }
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves one client on `input`/`output` (a connection's stdin and
/// stdout) for `store`, until the client hangs up.
///
/// # Errors
/// The greeting is not the serve protocol's, the client broke the
/// protocol, or the connection failed. Work in flight when the client
/// went away is finished (an add whose NAR was complete is imported) or
/// left in the spool.
pub async fn serve_remote<R, W>(
    mut input: R,
    mut output: W,
    store: Arc<LocalStore>,
    options: RemoteOptions,
) -> Result<(), StoreError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let io_error = |what: &'static str| {
        move |source| StoreError::Io {
            what,
            path: "the client".to_owned(),
            source,
        }
    };
    let magic = input
        .read_u64_le()
        .await
        .map_err(io_error("reading the greeting of"))?;
    if magic != SERVE_MAGIC_1 {
        return Err(protocol(format!("bad greeting {magic:#x}")));
    }
    let _client_version = input
        .read_u64_le()
        .await
        .map_err(io_error("reading the greeting of"))?;
    output
        .write_u64_le(FERRY_MAGIC)
        .await
        .map_err(io_error("greeting"))?;
    output
        .write_u64_le(VERSION)
        .await
        .map_err(io_error("greeting"))?;
    fs::create_dir_all(&options.spool_dir).map_err(|source| StoreError::Io {
        what: "creating the spool directory",
        path: options.spool_dir.display().to_string(),
        source,
    })?;
    clean_spool(&options.spool_dir);

    let level = Level::new(START_LEVEL);
    let (out, writer) = mux::writer(output, Arc::clone(&level));
    let hello = serde_json::json!({
        "op": "hello",
        "version": VERSION,
        "storeDir": store.store_dir().as_str(),
        "nixferry": env!("CARGO_PKG_VERSION"),
    });
    out.send(Frame::message(&hello)).await;
    let session = Arc::new(Session {
        store,
        spool: options.spool_dir,
        out,
        level,
        inflight: Mutex::new(HashMap::new()),
        changed: Notify::new(),
        bases: OnceCell::new(),
    });
    let mut reader = FrameReader::new(input, 16);
    let mut streams: HashMap<u32, mpsc::Sender<Chunk>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let result = loop {
        let offset = reader.offset();
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(ReadError::Io(e)) => break Err(io_error("reading from")(e)),
            Err(ReadError::Wire(e)) => break Err(protocol(e.to_string())),
        };
        match frame.kind {
            Kind::Message => {
                let request = super::wire::parse_message(&frame.payload, offset)
                    .and_then(|map| Request::parse(&map, offset));
                let request = match request {
                    Ok(r) => r,
                    Err(e) => break Err(protocol(e.to_string())),
                };
                let s = Arc::clone(&session);
                match request {
                    Request::Query {
                        id,
                        paths,
                        want_bases,
                        bases,
                    } => {
                        tasks.spawn(async move { s.query(id, paths, want_bases, bases).await });
                    }
                    Request::Closure { id, paths } => {
                        tasks.spawn(async move { s.closure(id, paths).await });
                    }
                    Request::Add {
                        id,
                        info,
                        encoding,
                        offset,
                    } => {
                        if streams.contains_key(&id) {
                            let at = reader.offset();
                            break Err(protocol(format!(
                                "before byte {at}: stream {id} is in use"
                            )));
                        }
                        let (tx, rx) = mpsc::channel(16);
                        streams.insert(id, tx);
                        let (done, _) = watch::channel(None);
                        session.lock().insert(info.path.clone(), done.subscribe());
                        session.changed.notify_waiters();
                        tasks.spawn(
                            async move { s.add(id, *info, encoding, offset, rx, done).await },
                        );
                    }
                    Request::Signature {
                        id,
                        base,
                        base_hash,
                        base_size,
                    } => {
                        tasks.spawn(async move {
                            s.send_signature(id, base, base_hash, base_size).await
                        });
                    }
                    Request::Nar { id, path } => {
                        tasks.spawn(async move { s.send_nar(id, path).await });
                    }
                }
            }
            kind => {
                let Some(tx) = streams.get(&frame.stream) else {
                    break Err(protocol(format!(
                        "at byte {offset}: data for stream {} which is not open",
                        frame.stream
                    )));
                };
                let chunk = match kind {
                    Kind::Data => Chunk::Data(frame.payload),
                    Kind::End => Chunk::End,
                    _ => Chunk::Abort(String::from_utf8_lossy(&frame.payload).into_owned()),
                };
                let last = !matches!(chunk, Chunk::Data(_));
                // An add that already failed no longer reads.
                let _ = tx.send(chunk).await;
                if last {
                    streams.remove(&frame.stream);
                }
            }
        }
    };
    // Adds whose data stopped coming keep what they have in the spool.
    drop(streams);
    while tasks.join_next().await.is_some() {}
    drop(session);
    let _ = writer.await;
    result
}

fn protocol(message: String) -> StoreError {
    StoreError::Protocol {
        store: "the client".to_owned(),
        message,
    }
}

/// Removes spool files nobody resumed for a long time.
fn clean_spool(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > SPOOL_MAX_AGE);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A piece of an add's stream.
enum Chunk {
    Data(Bytes),
    End,
    Abort(String),
}

/// One client's session.
struct Session {
    store: Arc<LocalStore>,
    spool: PathBuf,
    out: Sender,
    /// The compression level the link calls for, for NARs sent.
    level: Arc<Level>,
    /// Adds of this session, by path: `Some(ok)` once finished.
    inflight: Mutex<HashMap<StorePath, watch::Receiver<Option<bool>>>>,
    /// Woken when an add starts or ends.
    changed: Notify,
    /// The store's paths by name without version, for delta bases.
    bases: OnceCell<HashMap<String, Vec<StorePath>>>,
}

/// A failed add: what kind, and the message.
type AddError = (Failure, String);

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StorePath, watch::Receiver<Option<bool>>>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn reply(&self, reply: Reply) {
        self.out.send(Frame::message(&reply.to_json())).await;
    }

    async fn fail(&self, id: u32, failure: Failure, message: String) {
        self.reply(Reply::Failed {
            id,
            failure,
            message,
        })
        .await;
    }

    async fn query(&self, id: u32, paths: Vec<StorePath>, want_bases: bool, bases: Vec<String>) {
        let valid = match self.store.query_path_infos(&paths).await {
            Ok(v) => v,
            Err(e) => return self.fail(id, Failure::Other, e.to_string()).await,
        };
        let missing: Vec<StorePath> = paths
            .into_iter()
            .filter(|p| !valid.contains_key(p))
            .collect();
        let chosen = if want_bases && !missing.is_empty() {
            self.choose_bases(&missing, &bases).await
        } else {
            HashMap::new()
        };
        let missing = missing
            .into_iter()
            .map(|path| Missing {
                partial: spool_name(&self.spool, &path, None)
                    .and_then(|prefix| partial_len(&self.spool, &prefix))
                    .unwrap_or(0),
                base: chosen.get(&path).cloned(),
                path,
            })
            .collect();
        self.reply(Reply::Paths {
            id,
            valid: valid.into_values().collect(),
            missing,
        })
        .await;
    }

    /// For each missing path, the best base the store has: a path of the
    /// same name without version, preferring the closures of `preferred`
    /// (store paths or profile links), then the same full name, then the
    /// most recently registered.
    async fn choose_bases(
        &self,
        missing: &[StorePath],
        preferred: &[String],
    ) -> HashMap<StorePath, PathInfo> {
        let index = self
            .bases
            .get_or_init(|| async {
                let mut index: HashMap<String, Vec<StorePath>> = HashMap::new();
                if let Ok(all) = self.store.registered_after(0, usize::MAX).await {
                    for (_, path) in all {
                        index
                            .entry(pname(path.name()).to_owned())
                            .or_default()
                            .push(path);
                    }
                }
                index
            })
            .await;
        let roots: Vec<StorePath> = preferred
            .iter()
            .filter_map(|p| {
                let target = fs::canonicalize(p).ok()?;
                let target = target.to_str()?;
                let dir = self.store.store_dir();
                dir.parse_prefix(target)
                    .ok()
                    .or_else(|| {
                        let real = self.store.real_store_dir().to_str()?;
                        let rest = target.strip_prefix(real)?;
                        dir.parse_prefix(&format!("{}{rest}", dir.as_str()))
                            .ok()
                            .map(|(p, _)| (p, ""))
                    })
                    .map(|(p, _)| p)
            })
            .collect();
        let preferred: BTreeSet<StorePath> = if roots.is_empty() {
            BTreeSet::new()
        } else {
            match self.store.query_closure(&roots).await {
                Ok(Some(c)) => c.into_keys().collect(),
                _ => BTreeSet::new(),
            }
        };
        let mut chosen = HashMap::new();
        for path in missing {
            let Some(candidates) = index.get(pname(path.name())) else {
                continue;
            };
            // Later registrations come later in the index.
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| *c != path)
                .max_by_key(|(i, c)| (preferred.contains(*c), c.name() == path.name(), *i))
                .map(|(_, c)| c.clone());
            if let Some(best) = best {
                chosen.insert(path.clone(), best);
            }
        }
        let wanted: Vec<StorePath> = chosen.values().cloned().collect();
        let infos = self
            .store
            .query_path_infos(&wanted)
            .await
            .unwrap_or_default();
        chosen
            .into_iter()
            .filter_map(|(path, base)| {
                let info = infos.get(&base)?;
                (info.nar_size <= MAX_BASE).then(|| (path, info.clone()))
            })
            .collect()
    }

    async fn closure(&self, id: u32, paths: Vec<StorePath>) {
        match self.store.query_closure(&paths).await {
            Ok(c) => {
                let c = c.unwrap_or_default();
                self.reply(Reply::Closure {
                    id,
                    infos: c.into_values().collect(),
                })
                .await;
            }
            Err(e) => self.fail(id, Failure::Other, e.to_string()).await,
        }
    }

    /// Sends the block signature of a base, for a kind 2 delta.
    async fn send_signature(&self, id: u32, base: StorePath, base_hash: NixHash, base_size: u64) {
        let bytes = match self.load_base(&base, base_hash, base_size).await {
            Ok(bytes) => bytes,
            Err((failure, message)) => return self.fail(id, failure, message).await,
        };
        let out = self.out.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let sig = Signature::compute(&bytes[..], bytes.len() as u64)?;
            Ok::<_, io::Error>(out.blocking_data(id, &sig.to_bytes()))
        })
        .await;
        match sent {
            Ok(Ok(true)) => {
                self.out.end(id).await;
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => self.fail(id, Failure::Other, e.to_string()).await,
            Err(e) => self.fail(id, Failure::Other, e.to_string()).await,
        }
    }

    async fn send_nar(&self, id: u32, path: StorePath) {
        let info = match self
            .store
            .query_path_infos(std::slice::from_ref(&path))
            .await
        {
            Ok(mut infos) => match infos.remove(&path) {
                Some(info) => info,
                None => {
                    let full = self.store.store_dir().full(&path);
                    return self
                        .fail(id, Failure::Other, format!("path '{full}' is not valid"))
                        .await;
                }
            },
            Err(e) => return self.fail(id, Failure::Other, e.to_string()).await,
        };
        let nar = match self.store.nar(&info).await {
            Ok(nar) => nar,
            Err(e) => return self.fail(id, Failure::Other, e.to_string()).await,
        };
        let out = self.out.clone();
        let level = Arc::clone(&self.level);
        let sent = tokio::task::spawn_blocking(move || {
            codec::compress(SyncIoBridge::new(nar), &out, id, &level, None)
        })
        .await;
        match sent {
            Ok(Ok(_)) => {
                self.out.end(id).await;
            }
            Ok(Err(e)) => {
                self.out.abort(id, &e.to_string()).await;
            }
            Err(e) => {
                self.out.abort(id, &e.to_string()).await;
            }
        }
    }

    async fn add(
        self: Arc<Self>,
        id: u32,
        info: PathInfo,
        encoding: Encoding,
        offset: Option<u64>,
        rx: mpsc::Receiver<Chunk>,
        done: watch::Sender<Option<bool>>,
    ) {
        let result = self.receive(id, &info, encoding, offset, rx).await;
        let _ = done.send(Some(result.is_ok()));
        self.changed.notify_waiters();
        match result {
            Ok(()) => self.reply(Reply::Added { id }).await,
            Err((failure, message)) => {
                let full = self.store.store_dir().full(&info.path);
                eprintln!("nixferry remote: adding '{full}': {message}");
                self.fail(id, failure, message).await;
            }
        }
    }

    async fn receive(
        &self,
        id: u32,
        info: &PathInfo,
        encoding: Encoding,
        offset: Option<u64>,
        rx: mpsc::Receiver<Chunk>,
    ) -> Result<(), AddError> {
        let other = |e: &dyn std::fmt::Display| (Failure::Other, e.to_string());
        let present = self
            .store
            .query_valid_paths(std::slice::from_ref(&info.path))
            .await
            .map_err(|e| other(&e))?;
        if !present.is_empty() {
            return Ok(());
        }
        let (dir, for_spool) = (self.spool.clone(), info.clone());
        let mut spool = tokio::task::spawn_blocking(move || SpoolFile::open(&dir, &for_spool))
            .await
            .map_err(|e| other(&e))?
            .map_err(|e| other(&e))?;
        let start = match offset {
            Some(o) if o > spool.len => {
                return Err((
                    Failure::Offset,
                    format!("has {} bytes of the NAR, not {o}", spool.len),
                ))
            }
            Some(o) => o,
            None => {
                self.reply(Reply::Offset {
                    id,
                    offset: spool.len,
                })
                .await;
                spool.len
            }
        };
        let base = match encoding {
            Encoding::Zstd => None,
            Encoding::Delta {
                kind,
                base,
                base_hash,
                base_size,
            } => Some((kind, self.load_base(&base, base_hash, base_size).await?)),
        };
        let nar_size = info.nar_size;
        let nar_hash = info.nar_hash;
        let spool = tokio::task::spawn_blocking(move || {
            let base = base.as_ref().map(|(kind, bytes)| (*kind, &bytes[..]));
            let received = spool.receive(start, nar_size, base, rx);
            if let Err((Failure::Mismatch, _)) = received {
                // Bytes that do not decode, or more than narSize: what
                // the file has is no NAR to resume.
                spool.kept = false;
            }
            received?;
            spool.check(nar_size, &nar_hash)?;
            Ok::<_, AddError>(spool)
        })
        .await
        .map_err(|e| other(&e))??;
        self.wait_for_references(info).await?;
        let file = spool.reopen().map_err(|e| other(&e))?;
        let nar = Box::pin(tokio::fs::File::from_std(file));
        self.store.add_path(info, nar).await.map_err(|e| match e {
            StoreError::NarMismatch { .. } => (Failure::Mismatch, e.to_string()),
            e => other(&e),
        })?;
        spool.remove();
        Ok(())
    }

    /// The base's NAR from the store, checked against what the sender
    /// expects and against the store's own record of it.
    async fn load_base(
        &self,
        base: &StorePath,
        base_hash: NixHash,
        base_size: u64,
    ) -> Result<Vec<u8>, AddError> {
        let full = self.store.store_dir().full(base);
        let bad = |why: String| (Failure::Base, format!("the delta's base '{full}' {why}"));
        let info = self
            .store
            .query_path_infos(std::slice::from_ref(base))
            .await
            .map_err(|e| bad(e.to_string()))?
            .remove(base)
            .ok_or_else(|| bad("is not valid here".to_owned()))?;
        if info.nar_hash != base_hash || info.nar_size != base_size || base_size > MAX_BASE {
            return Err(bad("is not the one the sender has".to_owned()));
        }
        let mut nar = self
            .store
            .nar(&info)
            .await
            .map_err(|e| bad(e.to_string()))?;
        let mut bytes = Vec::with_capacity(usize::try_from(base_size).unwrap_or(0));
        (&mut nar)
            .take(base_size + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        let hash = NixHash::sha256(Sha256::digest(&bytes).into());
        if bytes.len() as u64 != base_size || hash != base_hash {
            return Err(bad("is damaged: its NAR does not match its hash".to_owned()));
        }
        Ok(bytes)
    }

    /// Waits until each reference of `info` is valid in the store,
    /// following adds of this session that bring them.
    async fn wait_for_references(&self, info: &PathInfo) -> Result<(), AddError> {
        let refs: Vec<StorePath> = info
            .references
            .iter()
            .filter(|r| **r != info.path)
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + REFERENCE_WAIT;
        loop {
            let changed = self.changed.notified();
            let valid = self
                .store
                .query_valid_paths(&refs)
                .await
                .map_err(|e| (Failure::Other, e.to_string()))?;
            let Some(missing) = refs.iter().find(|r| !valid.contains(*r)) else {
                return Ok(());
            };
            let full = self.store.store_dir().full(missing);
            let state = self.lock().get(missing).cloned();
            match state {
                Some(mut rx) => {
                    let ok = rx
                        .wait_for(Option::is_some)
                        .await
                        .is_ok_and(|v| *v == Some(true));
                    if !ok {
                        return Err((
                            Failure::Reference,
                            format!("its reference '{full}' could not be added"),
                        ));
                    }
                }
                None => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err((
                            Failure::Reference,
                            format!("its reference '{full}' is not in the store"),
                        ));
                    }
                }
            }
        }
    }
}

/// The name of a path without its version, as Nix splits names: up to the
/// first `-` that is not followed by a letter.
fn pname(name: &str) -> &str {
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return &name[..i];
        }
    }
    name
}

/// The spool file of a path with NAR hash `hash` (any hash when `None`,
/// as a prefix).
fn spool_name(dir: &Path, path: &StorePath, hash: Option<&NixHash>) -> Option<String> {
    let _ = dir;
    Some(match hash {
        Some(h) => format!("{}-{}.nar", path.hash_part(), h.to_nix32()),
        None => format!("{}-", path.hash_part()),
    })
}

/// The length of the spool file starting with `prefix`, if there is one.
fn partial_len(dir: &Path, prefix: &str) -> Option<u64> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".nar"))
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
}

/// A NAR being received: the spool file, locked while this session
/// writes it (a second session adding the same path gets a file of its
/// own that is not kept).
struct SpoolFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// Whether the file is the path's shared spool file, kept when the
    /// add is interrupted.
    kept: bool,
    hasher: Sha256,
}

impl SpoolFile {
    fn open(dir: &Path, info: &PathInfo) -> io::Result<Self> {
        let name = spool_name(dir, &info.path, Some(&info.nar_hash)).unwrap_or_default();
        let path = dir.join(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // The session of a connection that just broke may still hold it
        // for a moment.
        let deadline = std::time::Instant::now() + SPOOL_LOCK_WAIT;
        let mut locked = false;
        while !locked && std::time::Instant::now() < deadline {
            locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok();
            if !locked {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if locked {
            let len = file.metadata()?.len();
            return Ok(Self {
                file,
                path,
                len,
                kept: true,
                hasher: Sha256::new(),
            });
        }
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        let (file, path) = temp.keep().map_err(|e| e.error)?;
        Ok(Self {
            file,
            path,
            len: 0,
            kept: false,
            hasher: Sha256::new(),
        })
    }

    /// Writes the NAR from `start` on, decoding the stream's chunks:
    /// hashes what the file already has up to `start`, then what comes.
    fn receive(
        &mut self,
        start: u64,
        nar_size: u64,
        base: Option<(DeltaKind, &[u8])>,
        rx: mpsc::Receiver<Chunk>,
    ) -> Result<(), AddError> {
        let io = |e: io::Error| (Failure::Other, format!("spool file: {e}"));
        self.file.set_len(start).map_err(io)?;
        self.file.rewind().map_err(io)?;
        let copied = io::copy(
            &mut (&self.file).take(start),
            &mut HashWriter(&mut self.hasher),
        )
        .map_err(io)?;
        if copied != start {
            return Err((Failure::Offset, "the spool file shrank".to_owned()));
        }
        self.len = start;
        let mut input = io::BufReader::with_capacity(256 * 1024, ChunkReader::new(rx));
        let mut sink = Sink {
            spool: self,
            limit: nar_size,
        };
        let decoded = match base {
            None => codec::decompress_to(&mut input, &mut sink, nar_size).map(drop),
            Some((DeltaKind::Block, base)) => {
                let size = base.len() as u64;
                BlockDecoder::new(&mut input, io::Cursor::new(base), size, nar_size, start)
                    .map_err(io::Error::from)
                    .and_then(|mut d| io::copy(&mut d, &mut sink).map(drop))
                    .and_then(|()| at_end(&mut input))
            }
            Some((_, base)) => ZstdRefDecoder::new(&mut input, base, nar_size, start)
                .and_then(|mut d| io::copy(&mut d, &mut sink).map(drop))
                .and_then(|()| at_end(&mut input)),
        };
        decoded.map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionAborted => (Failure::Other, e.to_string()),
            _ => (
                Failure::Mismatch,
                format!("the stream does not decode: {e}"),
            ),
        })
    }

    /// Checks the NAR received; a mismatch removes the file.
    fn check(&mut self, nar_size: u64, nar_hash: &NixHash) -> Result<(), AddError> {
        let hash = NixHash::sha256(std::mem::take(&mut self.hasher).finalize().into());
        if self.len != nar_size || hash != *nar_hash {
            let message = format!(
                "NAR mismatch: expected {nar_size} bytes with hash {nar_hash}, got {} bytes with hash {hash}",
                self.len
            );
            self.kept = false;
            let _ = fs::remove_file(&self.path);
            return Err((Failure::Mismatch, message));
        }
        Ok(())
    }

    fn reopen(&self) -> io::Result<File> {
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        Ok(file)
    }

    fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = self.file.flush();
        }
    }
}

/// Checks that nothing but the end follows a delta's payload.
fn at_end(input: &mut impl io::Read) -> io::Result<()> {
    match input.read(&mut [0])? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes after the end of the delta",
        )),
    }
}

/// An add's data chunks as a byte stream, ending at its end frame; an
/// abort or a broken connection is an error of kind
/// [`io::ErrorKind::ConnectionAborted`].
struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            let aborted = |why: String| io::Error::new(io::ErrorKind::ConnectionAborted, why);
            match self.rx.blocking_recv() {
                Some(Chunk::Data(data)) => self.current = data,
                Some(Chunk::End) => self.ended = true,
                Some(Chunk::Abort(why)) => {
                    return Err(aborted(format!("the sender gave up: {why}")))
                }
                None => return Err(aborted("the connection ended".to_owned())),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Where decoded NAR bytes go: the spool file and its hash, refusing
/// more than the NAR's size.
struct Sink<'a> {
    spool: &'a mut SpoolFile,
    limit: u64,
}

impl Write for Sink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.spool.len + data.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "NAR mismatch: more than the {} bytes of its narSize",
                    self.limit
                ),
            ));
        }
        self.spool.file.write_all(data)?;
        self.spool.hasher.update(data);
        self.spool.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pname;

    #[test]
    fn names_without_versions() {
        assert_eq!(pname("hello-2.12.1"), "hello");
        assert_eq!(pname("bench-small-12"), "bench-small");
        assert_eq!(pname("gnu-config-2023-09-19"), "gnu-config");
        assert_eq!(pname("glibc"), "glibc");
        assert_eq!(pname("perl5.36.0-Moo-2.0"), "perl5.36.0-Moo");
    }
}
