//! Answering requests: routing, the two backends, responses.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use super::access::{self, Log, Logged};
use super::auth::Auth;
use super::metrics::Metrics;
use super::pool::{CpuPool, Listings};
use super::range::{ByteRange, Requested};
use super::route::{self, Kind, Route};
use crate::narinfo::{CacheInfo, Compression, NarInfo};
use crate::signing::SecretKey;
use crate::store::{Chunks, NarFile, NarStream, PathInfo, Store};
use crate::store_path::StoreDir;

/// A response body.
pub(super) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Why a request could not be answered: logged, and answered with a 500.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes on one line, skipping a cause whose text the
/// message already holds (messages often embed their source).
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

pub(super) const CT_CACHE_INFO: &str = "text/x-nix-cache-info";
pub(super) const CT_NARINFO: &str = "text/x-nix-narinfo";
pub(super) const CT_NAR: &str = "application/x-nix-nar";
pub(super) const CT_JSON: &str = "application/json";
pub(super) const CT_TEXT: &str = "text/plain; charset=utf-8";
const CT_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// NAR files are named by their hash: they never change.
pub(super) const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// narinfos, listings and logs of a path do not change either, but may be
/// re-signed.
const CACHE_DAY: &str = "public, max-age=86400";
pub(super) const CACHE_SHORT: &str = "public, max-age=300";
const CACHE_NONE: &str = "no-cache";

/// The server's state, shared by all connections.
#[derive(Debug)]
pub(super) struct State {
    pub(super) backend: Backend,
    pub(super) store_dir: StoreDir,
    pub(super) want_mass_query: Option<bool>,
    pub(super) priority: Option<i64>,
    pub(super) auth: Arc<Auth>,
    pub(super) write: bool,
    pub(super) log: Log,
    pub(super) metrics: Arc<Metrics>,
    pub(super) recent: RecentNarinfos,
    /// Permits for requests in flight (from the head's arrival to the end
    /// of the answer's body).
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    /// Where listings and on-the-fly compression run.
    pub(super) cpu: CpuPool,
    /// Listings made of a served store's paths.
    pub(super) listings: Listings,
    /// Caches to fetch what the store lacks from, if any.
    pub(super) upstream: Option<Arc<super::upstream::Upstreams>>,
}

/// Where the served files come from.
#[derive(Debug)]
pub(super) enum Backend {
    /// A `file://` cache directory (canonical path), served as it is.
    Files { root: PathBuf },
    /// A Nix store: narinfos and NARs made on the fly.
    Store(Box<StoreBackend>),
}

/// A Nix store served as a binary cache.
#[derive(Debug)]
pub(super) struct StoreBackend {
    store: Arc<dyn Store>,
    keys: Vec<SecretKey>,
    compression: Compression,
    /// For a local store, permits for NARs dumped at once: each takes a
    /// blocking thread for as long as its client reads.
    dumps: Option<Arc<tokio::sync::Semaphore>>,
    /// A local store opened by the server, read directly.
    #[cfg(feature = "local")]
    direct: Option<Arc<crate::store::local::LocalStore>>,
}

/// Narinfos served in the last [`RECENT_NARINFO_TTL`], by hash part: many
/// clients asking for the same paths at once (a fleet fetching one
/// closure) get them without a database read and a signature each, or a
/// file read.
#[derive(Debug, Default)]
pub(super) struct RecentNarinfos {
    map: Mutex<HashMap<String, (Instant, Bytes)>>,
}

impl RecentNarinfos {
    /// The narinfo with hash part `hash` if it was served less than
    /// [`RECENT_NARINFO_TTL`] ago.
    fn get(&self, hash: &str) -> Option<Bytes> {
        let map = self.map.lock().ok()?;
        let (made, text) = map.get(hash)?;
        (made.elapsed() < RECENT_NARINFO_TTL).then(|| text.clone())
    }

    fn put(&self, hash: &str, text: Bytes) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_RECENT_NARINFOS {
                map.retain(|_, (made, _)| made.elapsed() < RECENT_NARINFO_TTL);
                if map.len() >= MAX_RECENT_NARINFOS {
                    map.clear();
                }
            }
            map.insert(hash.to_owned(), (Instant::now(), text));
        }
    }
}

/// How long a narinfo is served again as it is.
const RECENT_NARINFO_TTL: Duration = Duration::from_secs(2);

/// How many recent narinfos are kept at most.
const MAX_RECENT_NARINFOS: usize = 10_000;

impl StoreBackend {
    /// `local`: whether `store` is a local Nix store, whose NARs are
    /// dumped by blocking threads.
    pub(super) fn new(
        store: Arc<dyn Store>,
        local: bool,
        keys: Vec<SecretKey>,
        compression: Compression,
    ) -> Self {
        Self {
            store,
            keys,
            compression,
            dumps: local.then(|| Arc::new(tokio::sync::Semaphore::new(super::MAX_DUMPS))),
            #[cfg(feature = "local")]
            direct: None,
        }
    }

    /// Reads the database of `local` (the store served) directly: a
    /// narinfo's lookup then runs on the thread answering the request.
    #[cfg(feature = "local")]
    pub(super) fn read_directly(mut self, local: Arc<crate::store::local::LocalStore>) -> Self {
        self.direct = Some(local);
        self
    }

    /// The NAR of `info`; from a local store once one of the
    /// [`super::MAX_DUMPS`] permits is free, held until the NAR is read
    /// or dropped.
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, Failure> {
        let Some(dumps) = &self.dumps else {
            return Ok(self.store.nar(info).await?);
        };
        let permit = Arc::clone(dumps).acquire_owned().await?;
        let nar = self.store.nar(info).await?;
        Ok(Box::pin(Held {
            inner: nar,
            _permit: permit,
        }))
    }

    /// The NAR of `info` in the chunks it is dumped in, for a local store
    /// read directly (`None` for other stores), holding a permit as
    /// [`StoreBackend::nar`].
    #[cfg(feature = "local")]
    async fn nar_chunks(&self, info: &PathInfo) -> Result<Option<Held<Chunks>>, Failure> {
        let (Some(local), Some(dumps)) = (&self.direct, &self.dumps) else {
            return Ok(None);
        };
        let permit = Arc::clone(dumps).acquire_owned().await?;
        let chunks = local.nar_chunks(info).await?;
        Ok(Some(Held {
            inner: chunks,
            _permit: permit,
        }))
    }

    #[cfg(not(feature = "local"))]
    async fn nar_chunks(&self, _: &PathInfo) -> Result<Option<Held<Chunks>>, Failure> {
        Ok(None)
    }

    /// The served store's directory.
    pub(super) fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    /// The path info of the valid path with hash part `hash` (for a local
    /// store, one query of its database's index, made on this thread: a
    /// read of an index in the page cache takes less than handing it to a
    /// blocking thread and back).
    async fn lookup(&self, hash: &str) -> Result<Option<PathInfo>, Failure> {
        #[cfg(feature = "local")]
        if let Some(local) = &self.direct {
            return Ok(local.query_path_from_hash_part_now(hash)?);
        }
        Ok(self.store.query_path_from_hash_part(hash).await?)
    }

    /// The narinfo of `info`, signed with the server's keys.
    fn narinfo(&self, store_dir: &StoreDir, info: &PathInfo) -> Result<String, Failure> {
        let none = self.compression == Compression::None;
        let file = NarFile {
            // The path's hash part, then its NAR hash (route::Route::Nar):
            // any server of this store can answer it, after a restart too,
            // and a path whose content changed is not served under the
            // old name.
            url: format!(
                "nar/{}-{}{}",
                info.path.hash_part(),
                info.nar_hash.to_nix32(),
                self.compression.extension()
            ),
            compression: self.compression.clone(),
            // Known only without compression (docs/formats.md §3.3: then FileHash
            // equals NarHash); compressing on the fly cannot know them.
            file_hash: none.then_some(info.nar_hash),
            file_size: none.then_some(info.nar_size),
        };
        let mut narinfo = NarInfo::new(info.narinfo_fields(store_dir, file))?;
        for key in &self.keys {
            narinfo.sign(key);
        }
        Ok(narinfo.render())
    }

    /// The path info behind a NAR URL of [`StoreBackend::narinfo`]: the
    /// path with hash part `path`, if its NAR hash (nix32) is still
    /// `nar_hash`.
    async fn nar_info(&self, path: &str, nar_hash: &str) -> Result<Option<PathInfo>, Failure> {
        let info = self.lookup(path).await?;
        Ok(info.filter(|i| i.nar_hash.to_nix32() == nar_hash))
    }
}

/// A reader or stream that holds a permit while it lives.
struct Held<R> {
    inner: R,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Held<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// A body of `n` bytes from `start` of what `chunks` give, passed on as
/// they come (cut where the range starts and ends). Its length is in the
/// response's `Content-Length`: chunks that end early show as a cut
/// transfer.
fn chunks_body(chunks: Held<Chunks>, start: u64, n: u64) -> Body {
    let stream = futures_util::stream::try_unfold(
        (chunks, start, n),
        |(mut chunks, mut skip, mut left)| async move {
            use futures_util::StreamExt as _;
            loop {
                if left == 0 {
                    return Ok(None);
                }
                let Some(mut chunk) = chunks.next().await.transpose()? else {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the NAR ended early",
                    ));
                };
                let len = chunk.len() as u64;
                if skip >= len {
                    skip -= len;
                    continue;
                }
                // Both below the chunk's length, which is a usize.
                let from = usize::try_from(skip).unwrap_or(0);
                let to = usize::try_from(left.saturating_add(skip).min(len)).unwrap_or(chunk.len());
                chunk = chunk.slice(from..to);
                skip = 0;
                left -= chunk.len() as u64;
                return Ok(Some((Frame::data(chunk), (chunks, skip, left))));
            }
        },
    );
    StreamBody::new(stream).boxed_unsync()
}

impl State {
    /// Answers one request. Never fails: errors become responses.
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: Option<SocketAddr>,
    ) -> Response<Body> {
        let start = Instant::now();
        let open = self.metrics.in_flight();
        // Never closed, so always a permit.
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let route = route::parse(&path);
        let kind = route.as_ref().map_or(Kind::Other, Route::kind);
        let head = method == Method::HEAD;
        let needs_token = match &route {
            _ if !self.auth.reads_need_token() => false,
            Some(Route::Health) => false,
            Some(Route::CacheInfo) => !self.auth.public_cache_info(),
            _ => true,
        };
        let response = match (route, &method) {
            (_, &Method::GET | &Method::HEAD)
                if needs_token
                    && self
                        .auth
                        .scope(req.headers().get(header::AUTHORIZATION))
                        .is_none() =>
            {
                unauthorized("a valid token is needed to read this cache\n")
            }
            (None, _) => not_found(),
            (Some(r), &Method::GET | &Method::HEAD) => match self.get(&r, &req, head).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.log.line(|| format!("{method} {path}: {}", chain(&*e)));
                    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            },
            (Some(r), &Method::PUT) => super::upload::put(&self, &r, req).await,
            (Some(_), _) => {
                let allow = if self.write {
                    "GET, HEAD, PUT"
                } else {
                    "GET, HEAD"
                };
                method_not_allowed(allow, "method not allowed\n")
            }
        };
        let status = response.status().as_u16();
        self.metrics.request(kind, status, start.elapsed());
        let (parts, body) = response.into_parts();
        let body = if head { empty() } else { body };
        let request = access::Request {
            start,
            method,
            path,
            kind,
            status,
            client,
        };
        let held = Box::new((permit, open));
        let body = Logged::new(
            body,
            request,
            self.log.clone(),
            Arc::clone(&self.metrics),
            held,
        );
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// The `nix-cache-info` to serve: the cache's own (for a `file://`
    /// cache) with the command line's settings on top.
    async fn cache_info(&self) -> String {
        let mut info = CacheInfo::new(self.store_dir.clone());
        if let Backend::Files { root } = &self.backend {
            if let Ok(Some(bytes)) = read_small(root, "nix-cache-info").await {
                if let Ok(parsed) = CacheInfo::parse(&String::from_utf8_lossy(&bytes)) {
                    info = parsed;
                }
            }
        }
        if let Some(w) = self.want_mass_query {
            info.want_mass_query = w;
        }
        if let Some(p) = self.priority {
            info.priority = Some(p);
        }
        info.render()
    }

    async fn get(
        &self,
        route: &Route,
        req: &Request<Incoming>,
        head: bool,
    ) -> Result<Response<Body>, Failure> {
        match route {
            Route::CacheInfo => Ok(full(
                CT_CACHE_INFO,
                CACHE_SHORT,
                self.cache_info().await.into(),
            )),
            Route::Metrics => Ok(full(CT_METRICS, "no-store", self.metrics.render().into())),
            Route::Health => Ok(full(CT_TEXT, "no-store", Bytes::from_static(b"ok\n"))),
            _ => {
                let range = Requested::of(req.method(), req.headers());
                let answer = match &self.backend {
                    Backend::Files { root } => self.get_file(root, route, range.as_ref()).await?,
                    Backend::Store(s) => {
                        self.get_from_store(s, route, head, range.as_ref()).await?
                    }
                };
                // What the store lacks may come from upstream.
                match &self.upstream {
                    Some(up) if answer.status() == StatusCode::NOT_FOUND => {
                        Ok(up.get(route, head).await.unwrap_or(answer))
                    }
                    _ => Ok(answer),
                }
            }
        }
    }

    async fn get_file(
        &self,
        root: &Path,
        route: &Route,
        range: Option<&Requested>,
    ) -> Result<Response<Body>, Failure> {
        let Some(rel) = route.relative() else {
            return Ok(not_found());
        };
        if let Route::NarInfo(hash) = route {
            if let Some(text) = self.recent.get(hash) {
                self.metrics.narinfo(true);
                return Ok(full(CT_NARINFO, CACHE_DAY, text));
            }
            let text = read_small(root, &rel).await?;
            self.metrics.narinfo(text.is_some());
            let Some(text) = text else {
                return Ok(not_found());
            };
            let text = Bytes::from(text);
            self.recent.put(hash, text.clone());
            return Ok(full(CT_NARINFO, CACHE_DAY, text));
        }
        let opened = open_in(root, &rel).await?;
        if let Route::NarInfo(_) = route {
            self.metrics.narinfo(opened.is_some());
        }
        let Some((mut file, len)) = opened else {
            return Ok(not_found());
        };
        let (ctype, cache) = match route {
            Route::NarInfo(_) => (CT_NARINFO, CACHE_DAY),
            Route::Nar { .. } => (CT_NAR, CACHE_IMMUTABLE),
            Route::Listing(_) => (CT_JSON, CACHE_DAY),
            _ => (CT_TEXT, CACHE_DAY),
        };
        let builder = Response::builder()
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CACHE_CONTROL, cache)
            .header(header::ACCEPT_RANGES, "bytes");
        let (builder, send) = ByteRange::of(range, len).respond(builder, len);
        let Some((start, n)) = send else {
            return Ok(builder.body(empty())?);
        };
        if start > 0 {
            file.seek(io::SeekFrom::Start(start)).await?;
        }
        Ok(builder.body(stream_body(Box::pin(file.take(n))))?)
    }

    async fn get_from_store(
        &self,
        s: &StoreBackend,
        route: &Route,
        head: bool,
        range: Option<&Requested>,
    ) -> Result<Response<Body>, Failure> {
        match route {
            Route::NarInfo(hash) => {
                if let Some(text) = self.recent.get(hash) {
                    self.metrics.narinfo(true);
                    return Ok(full(CT_NARINFO, CACHE_DAY, text));
                }
                let info = s.lookup(hash).await?;
                self.metrics.narinfo(info.is_some());
                let Some(info) = info else {
                    return Ok(not_found());
                };
                let text = Bytes::from(s.narinfo(&self.store_dir, &info)?);
                self.recent.put(hash, text.clone());
                Ok(full(CT_NARINFO, CACHE_DAY, text))
            }
            Route::Nar { path, hash, ext } => {
                // A served store's NAR URLs name the path.
                let Some(path) = path else {
                    return Ok(not_found());
                };
                let Some(info) = s.nar_info(path, hash).await? else {
                    return Ok(not_found());
                };
                let builder = Response::builder()
                    .header(header::CONTENT_TYPE, CT_NAR)
                    .header(header::CACHE_CONTROL, CACHE_IMMUTABLE);
                match ext.as_str() {
                    "" => {
                        // A range is dumped from the start, its first
                        // bytes skipped: costly for a range far into a big
                        // NAR, but no more than the whole NAR.
                        let len = info.nar_size;
                        let builder = builder.header(header::ACCEPT_RANGES, "bytes");
                        let (builder, send) = ByteRange::of(range, len).respond(builder, len);
                        let Some((start, n)) = send.filter(|_| !head) else {
                            return Ok(builder.body(empty())?);
                        };
                        if let Some(chunks) = s.nar_chunks(&info).await? {
                            return Ok(builder.body(chunks_body(chunks, start, n))?);
                        }
                        let mut nar = s.nar(&info).await?;
                        let skipped =
                            tokio::io::copy(&mut (&mut nar).take(start), &mut tokio::io::sink())
                                .await?;
                        if skipped < start {
                            return Err(format!("the NAR of {} ended early", info.path).into());
                        }
                        Ok(builder.body(stream_body(Box::pin(nar.take(n))))?)
                    }
                    // Compressed on the fly: the length is unknown, so a
                    // `Range` is ignored and the whole file sent.
                    ".zst" => {
                        if head {
                            return Ok(builder.body(empty())?);
                        }
                        let nar = s.nar(&info).await?;
                        Ok(builder.body(zstd_body(nar, self.cpu.clone()))?)
                    }
                    _ => Ok(not_found()),
                }
            }
            Route::Listing(hash) => {
                let Some(info) = s.lookup(hash).await? else {
                    return Ok(not_found());
                };
                // Made once per path and content, then served again.
                let key = format!("{hash}-{}", info.nar_hash.to_nix32());
                if let Some(json) = self.listings.get(&key) {
                    return Ok(full(CT_JSON, CACHE_DAY, json));
                }
                let nar = s.nar(&info).await?;
                let bridge = tokio_util::io::SyncIoBridge::new(nar);
                let json = self
                    .cpu
                    .run(move || {
                        crate::nar::list(bridge)
                            .map(|l| Bytes::from(l.to_json()))
                            .map_err(io::Error::other)
                    })
                    .await?;
                self.listings.put(key, json.clone());
                Ok(full(CT_JSON, CACHE_DAY, json))
            }
            _ => Ok(not_found()),
        }
    }
}

/// Opens `rel` under `root` for reading if it is a regular file that,
/// with every symlink resolved, lies inside `root`. `None` if not.
///
/// # Errors
/// I/O errors other than the file's absence.
pub(super) async fn open_in(root: &Path, rel: &str) -> io::Result<Option<(tokio::fs::File, u64)>> {
    let (root, rel) = (root.to_owned(), rel.to_owned());
    let found = blocking(move || open_in_blocking(&root, &rel)).await?;
    Ok(found.map(|(file, len)| (tokio::fs::File::from_std(file), len)))
}

/// The largest file [`read_small`] reads: the longest narinfo nixferry
/// accepts.
const MAX_SMALL_FILE: u64 = crate::narinfo::MAX_NARINFO_LEN as u64;

/// Reads a small file under `root`, as [`open_in`].
///
/// # Errors
/// As [`open_in`], and for a file over [`MAX_SMALL_FILE`] (never served
/// cut short).
pub(super) async fn read_small(root: &Path, rel: &str) -> io::Result<Option<Vec<u8>>> {
    let (root, rel) = (root.to_owned(), rel.to_owned());
    blocking(move || {
        let Some((file, _)) = open_in_blocking(&root, &rel)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_SMALL_FILE + 1), &mut buf)?;
        if buf.len() as u64 > MAX_SMALL_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("'{rel}' is larger than {MAX_SMALL_FILE} bytes"),
            ));
        }
        Ok(Some(buf))
    })
    .await
}

/// Runs file-system work on one blocking thread: resolving, opening and
/// reading a small file in one go costs one hand-over instead of one per
/// step.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// [`open_in`] on the calling thread.
fn open_in_blocking(root: &Path, rel: &str) -> io::Result<Option<(std::fs::File, u64)>> {
    let real = match std::fs::canonicalize(root.join(rel)) {
        Ok(p) => p,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !real.starts_with(root) {
        return Ok(None);
    }
    let file = match std::fs::File::open(&real) {
        Ok(f) => f,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta.len())))
}

/// Whether an error means "there is no such file" (including a path
/// through something that is not a directory, or a symlink loop).
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput
    ) || e.raw_os_error() == Some(40) // ELOOP
        || e.raw_os_error() == Some(36) // ENAMETOOLONG
}

/// A body streaming what `reader` gives. Its length is in the response's
/// `Content-Length`, so a reader that fails or ends early shows as a
/// truncated transfer.
fn stream_body(reader: NarStream) -> Body {
    let stream = ReaderStream::with_capacity(reader, 64 * 1024).map_ok(Frame::data);
    StreamBody::new(stream).boxed_unsync()
}

/// A body with the zstd-compressed bytes of `nar`, compressed a chunk at
/// a time in the CPU pool: a client slow to read holds no thread and no
/// slot of the pool while it reads.
fn zstd_body(nar: NarStream, cpu: CpuPool) -> Body {
    /// How much of the NAR is compressed at a time.
    const CHUNK: usize = 1 << 20;
    let out = Drained::default();
    let encoder = crate::compression::encoder(&Compression::Zstd, None, 1, out.clone())
        .map_err(io::Error::other);
    let stream = futures_util::stream::try_unfold(
        (nar, Some(encoder), out, cpu),
        |(mut nar, encoder, out, cpu)| async move {
            let Some(encoder) = encoder else {
                return Ok(None);
            };
            let mut encoder = encoder?;
            let mut chunk = vec![0; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match nar.read(&mut chunk[n..]).await? {
                    0 => break,
                    k => n += k,
                }
            }
            chunk.truncate(n);
            let end = n < CHUNK;
            let encoder = cpu
                .run(move || {
                    io::Write::write_all(&mut encoder, &chunk)?;
                    if end {
                        encoder.finish()?;
                        return Ok(None);
                    }
                    Ok(Some(Ok(encoder)))
                })
                .await?;
            let bytes = out.take();
            Ok(Some((Frame::data(bytes), (nar, encoder, out, cpu))))
        },
    );
    StreamBody::new(stream).boxed_unsync()
}

/// A writer whose bytes are taken out in chunks from another handle.
#[derive(Debug, Clone, Default)]
struct Drained(Arc<Mutex<Vec<u8>>>);

impl Drained {
    /// What was written since the last call.
    fn take(&self) -> Bytes {
        self.0
            .lock()
            .map(|mut v| Bytes::from(std::mem::take(&mut *v)))
            .unwrap_or_default()
    }
}

impl io::Write for Drained {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A 200 response with a body in memory.
pub(super) fn full(ctype: &'static str, cache: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.clone())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

/// A plain-text response with `status`, not cached.
pub(super) fn text(status: StatusCode, message: impl Into<Bytes>) -> Response<Body> {
    let mut r = full(CT_TEXT, CACHE_NONE, message.into());
    *r.status_mut() = status;
    r
}

/// A 405 answer, with the methods that are allowed (as `Allow` must).
pub(super) fn method_not_allowed(allow: &'static str, message: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, message);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A 401 answer, asking for credentials (`WWW-Authenticate`): what makes
/// curl (and so Nix) present those of its netrc file, and a client
/// without them fail loudly.
pub(super) fn unauthorized(message: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"nixferry\""),
    );
    r
}

pub(super) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

#[cfg(test)]
mod tests {
    use super::{Bytes, RecentNarinfos, MAX_RECENT_NARINFOS, RECENT_NARINFO_TTL};

    #[test]
    fn recent_narinfos_expire_and_stay_bounded() {
        let recent = RecentNarinfos::default();
        recent.put("a", Bytes::from_static(b"StorePath: a"));
        assert_eq!(recent.get("a").as_deref(), Some(&b"StorePath: a"[..]));
        assert_eq!(recent.get("b"), None);
        for i in 0..MAX_RECENT_NARINFOS + 10 {
            recent.put(&i.to_string(), Bytes::new());
        }
        assert!(recent.map.lock().unwrap().len() <= MAX_RECENT_NARINFOS);
        std::thread::sleep(RECENT_NARINFO_TTL + std::time::Duration::from_millis(100));
        assert_eq!(recent.get("1"), None);
    }
}
