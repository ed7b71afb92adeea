//! Answering requests: routing, the two backends, responses.

use std::collections::HashMap;
use std::io;
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

use super::auth::Auth;
use super::metrics::Metrics;
use super::range::{ByteRange, Requested};
use super::route::{self, Kind, Route};
use crate::narinfo::{CacheInfo, Compression, NarInfo};
use crate::signing::SecretKey;
use crate::store::{NarFile, NarStream, PathInfo, Store};
use crate::store_path::{StoreDir, StorePath};

/// A response body.
pub(super) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Why a request could not be answered: logged, and answered with a 500.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The server's log sink, if it has one.
#[derive(Clone, Default)]
pub(super) struct Log(pub(super) Option<super::LogFn>);

impl Log {
    /// Logs the line `make` makes, if there is a sink (`make` is not
    /// called otherwise).
    pub(super) fn line(&self, make: impl FnOnce() -> String) {
        if let Some(sink) = &self.0 {
            sink(&make());
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Log(on)"
        } else {
            "Log(off)"
        })
    }
}

/// An error and its causes on one line, skipping a cause whose text the
/// message already holds (messages often embed their source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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
    pub(super) metrics: Metrics,
    pub(super) recent: RecentNarinfos,
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
    /// The real directory of the store's paths (differs from the logical
    /// store directory for chroot stores), for a local store; other stores
    /// look their paths up by hash part themselves.
    real_dir: Option<PathBuf>,
    keys: Vec<SecretKey>,
    compression: Compression,
    /// The store directory's entries, by hash part.
    listing: tokio::sync::Mutex<Option<DirListing>>,
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
    pub(super) fn new(
        store: Arc<dyn Store>,
        real_dir: Option<PathBuf>,
        keys: Vec<SecretKey>,
        compression: Compression,
    ) -> Self {
        Self {
            store,
            real_dir,
            keys,
            compression,
            listing: tokio::sync::Mutex::new(None),
        }
    }

    /// The path info of the valid path with hash part `hash`.
    async fn lookup(&self, hash: &str) -> Result<Option<PathInfo>, Failure> {
        let Some(dir) = &self.real_dir else {
            return Ok(self.store.query_path_from_hash_part(hash).await?);
        };
        let candidates = self.candidates(dir, hash).await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let infos = self.store.query_path_infos(&candidates).await?;
        Ok(infos.into_values().next())
    }

    /// The entries of the store directory with hash part `hash`, from a
    /// listing of the directory that is refreshed when it is older than
    /// [`LISTING_MAX_AGE`], or on a miss when older than
    /// [`LISTING_MISS_AGE`] (a path may have been added since): clients
    /// ask for many narinfos at once, and listing a big store takes a
    /// while.
    async fn candidates(&self, dir: &Path, hash: &str) -> Result<Vec<StorePath>, Failure> {
        let mut listing = self.listing.lock().await;
        let fresh = |l: &Option<DirListing>, max: Duration| {
            l.as_ref().is_some_and(|l| l.made.elapsed() < max)
        };
        if fresh(&listing, LISTING_MAX_AGE) {
            if let Some(found) = listing.as_ref().and_then(|l| l.by_hash.get(hash)) {
                return Ok(found.clone());
            }
            if fresh(&listing, LISTING_MISS_AGE) {
                return Ok(Vec::new());
            }
        }
        let dir = dir.to_path_buf();
        let made = Instant::now();
        let by_hash = tokio::task::spawn_blocking(move || list_store_dir(&dir)).await??;
        let found = by_hash.get(hash).cloned().unwrap_or_default();
        *listing = Some(DirListing { made, by_hash });
        Ok(found)
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

/// The store paths in a store directory, by hash part.
#[derive(Debug)]
struct DirListing {
    made: Instant,
    by_hash: HashMap<String, Vec<StorePath>>,
}

/// How long a listing of the store directory is used for hits.
const LISTING_MAX_AGE: Duration = Duration::from_secs(10);
/// How long a listing is trusted to say a path is absent.
const LISTING_MISS_AGE: Duration = Duration::from_secs(1);

/// Lists the store paths in `dir` (lock files and other entries left out).
fn list_store_dir(dir: &Path) -> io::Result<HashMap<String, Vec<StorePath>>> {
    let mut by_hash: HashMap<String, Vec<StorePath>> = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".lock") {
            continue;
        }
        if let Ok(p) = StorePath::from_base_name(name) {
            by_hash.entry(p.hash_part().to_owned()).or_default().push(p);
        }
    }
    Ok(by_hash)
}

impl State {
    /// Answers one request. Never fails: errors become responses.
    pub(super) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
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
        self.log.line(|| {
            format!(
                "{method} {path} {status} {:.1}ms",
                start.elapsed().as_secs_f64() * 1000.0
            )
        });
        let (parts, body) = response.into_parts();
        if head {
            return Response::from_parts(parts, empty());
        }
        let server = Arc::clone(&self);
        let body = body
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    server.metrics.sent(d.len());
                }
                f
            })
            .boxed_unsync();
        Response::from_parts(parts, body)
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
                        let mut nar = s.store.nar(&info).await?;
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
                        let nar = s.store.nar(&info).await?;
                        Ok(builder.body(zstd_body(nar))?)
                    }
                    _ => Ok(not_found()),
                }
            }
            Route::Listing(hash) => {
                let Some(info) = s.lookup(hash).await? else {
                    return Ok(not_found());
                };
                let nar = s.store.nar(&info).await?;
                let bridge = tokio_util::io::SyncIoBridge::new(nar);
                let json = tokio::task::spawn_blocking(move || {
                    crate::nar::list(bridge).map(|l| l.to_json())
                })
                .await??;
                Ok(full(CT_JSON, CACHE_DAY, json.into()))
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

/// A body with the zstd-compressed bytes of `nar`, compressed on a
/// blocking thread and handed over through a small channel.
fn zstd_body(nar: NarStream) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let mut reader = tokio_util::io::SyncIoBridge::new(nar);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { tx: tx.clone() };
        let result = (|| -> io::Result<()> {
            let mut enc = crate::compression::encoder(&Compression::Zstd, None, 1, writer)?;
            io::copy(&mut reader, &mut enc)?;
            enc.finish()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Sends what is written to it as chunks over a channel; fails once the
/// receiver (the response body) is gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
}

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
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
