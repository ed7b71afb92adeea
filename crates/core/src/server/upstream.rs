//! The upstream proxy: what the served store lacks is looked up in
//! upstream binary caches ([`ServerBuilder::upstream`]), checked against
//! the trusted keys, and served from there; optionally kept in a cache
//! ([`ServerBuilder::cache_upstream`]) so that the next client gets it
//! from there.
//!
//! # What is served
//!
//! A narinfo request the store cannot answer goes to every upstream at
//! once (each within the [timeout](ServerBuilder::upstream_timeout)); the
//! answer of the first one in the order given that has the path with a
//! valid signature by a trusted key (or a content address that verifies)
//! is served. A path without one is refused: served as missing, logged,
//! and counted. An upstream that fails or does not answer in time is left
//! out for a few seconds ([`DOWN_FOR`]), so a dead upstream costs one
//! timeout, not one per request.
//!
//! The narinfo served keeps the upstream's signatures, which cover only
//! the path, its NAR hash and size and its references, and names the NAR
//! file by a URL of this server that needs no state to answer:
//! `nar/<path hash>-<NAR hash>.nar<ext>`, with the extension of the
//! upstream's compression (`.xz`, `.zst`, `.bz2`, `.br`; none for `none`).
//! A path compressed otherwise is served as a plain NAR. A request for
//! such a URL looks the path up again (lookups are remembered for
//! [`FOUND_TTL`]), checks the NAR hash, and streams the upstream's file
//! as it is, while hashing it: a file that does not match its `FileHash`
//! and `FileSize` (for a plain NAR, its signed `NarHash` and `NarSize`)
//! ends the response with an error before its last bytes, so the client
//! sees a broken transfer, never a complete bad file. `nar/<path
//! hash>-<NAR hash>.nar` gives the plain NAR of any path, decompressed if
//! need be.
//!
//! # Keeping
//!
//! With a cache of upstream paths, each path whose NAR is served from an
//! upstream is also copied there with its closure, in the background, by
//! the copy engine ([`crate::copy`]), which checks signatures and NAR
//! hashes as for any copy: nothing unverified enters it. Copies are
//! deduplicated and run [`KEEPS_AT_ONCE`] at a time; a failure is logged
//! and counted, and never changes an answer. That cache is asked first,
//! before the upstreams; it may be the served `file://` cache itself.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper::{header, Response, StatusCode};
use tokio::io::AsyncReadExt as _;

use super::access::Log;
use super::handler::{self, chain, Body, CACHE_IMMUTABLE, CACHE_SHORT, CT_NAR, CT_NARINFO};
use super::metrics::UpstreamCounters;
use super::route::Route;
use super::{ServedStore, ServerBuilder, ServerError};
use crate::copy::{CancellationToken, CopyOptions};
use crate::hash::{Hasher, NixHash};
use crate::narinfo::{Compression, NarInfo};
use crate::signing::TrustedKeys;
use crate::store::{NarFile, NarStream, PathInfo, Store, StoreError, StoreUrl};
use crate::store_path::{StoreDir, StorePath};

/// How long an upstream may take to answer a lookup, or to start sending
/// a NAR file, by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an upstream that failed or timed out is left out.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// How long a path found upstream is remembered (a client asks for its
/// narinfo, then for its NAR).
pub const FOUND_TTL: Duration = Duration::from_secs(60);

/// How long a path an upstream lacks (or that was refused) is remembered.
const MISSING_TTL: Duration = Duration::from_secs(1);

/// How many lookups are remembered at most.
const MAX_REMEMBERED: usize = 10_000;

/// How long a NAR download from upstream may go without a byte.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest chunk of a NAR download handed on at once.
const CHUNK: usize = 256 * 1024;

/// How many copies into the cache of upstream paths run at once.
pub const KEEPS_AT_ONCE: usize = 2;

/// How many paths may wait to be kept; more are not kept.
const MAX_PENDING_KEEPS: usize = 10_000;

/// The compressions whose files are served as they are.
fn passed_through(c: &Compression) -> bool {
    matches!(
        c,
        Compression::None
            | Compression::Xz
            | Compression::Bzip2
            | Compression::Zstd
            | Compression::Br
    )
}

/// The upstream settings of a [`ServerBuilder`].
#[derive(Debug, Clone)]
pub(super) struct Settings {
    stores: Vec<ServedStore>,
    keep: Option<ServedStore>,
    trusted: TrustedKeys,
    timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stores: Vec::new(),
            keep: None,
            trusted: TrustedKeys::nix_default(),
            timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

impl ServerBuilder {
    /// One more upstream binary cache (a URL such as
    /// `https://cache.nixos.org`, or a store already open), asked for
    /// what the served store lacks; upstreams are preferred in the order
    /// given. What an upstream has is served only with a valid signature
    /// by one of the [trusted keys](ServerBuilder::trusted_keys) (or a
    /// content address that verifies). See [upstreams](crate::server#upstreams).
    ///
    /// An `http(s)://` URL is opened with `connect-timeout` set to the
    /// [timeout](ServerBuilder::upstream_timeout) and `retries=0`, unless
    /// it sets them itself: a client waiting for an answer is better
    /// served by a quick miss than by retries.
    pub fn upstream(mut self, store: impl Into<ServedStore>) -> Self {
        self.upstream.stores.push(store.into());
        self
    }

    /// The keys whose signatures make a path from upstream trusted
    /// (Nix's `trusted-public-keys`); Nix's default
    /// ([`TrustedKeys::nix_default`], `cache.nixos.org-1`) unless set.
    /// The server's own [secret keys](ServerBuilder::secret_keys) have no
    /// say here.
    pub fn trusted_keys(mut self, keys: TrustedKeys) -> Self {
        self.upstream.trusted = keys;
        self
    }

    /// Keeps the paths served from upstream in `store` (a URL such as
    /// `file:///srv/upstream`, or a store already open; the served
    /// `file://` cache itself will do): each is copied there with its
    /// closure, in the background, checked as every copy is. That store
    /// is asked before the upstreams. Needs an
    /// [upstream](ServerBuilder::upstream).
    pub fn cache_upstream(mut self, store: impl Into<ServedStore>) -> Self {
        self.upstream.keep = Some(store.into());
        self
    }

    /// How long an upstream may take to answer a lookup, or to start
    /// sending a NAR file ([`DEFAULT_UPSTREAM_TIMEOUT`] unless set); one
    /// that does not is left out for [`DOWN_FOR`].
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream.timeout = timeout;
        self
    }
}

/// Opens an upstream: a URL with the quick-failure defaults for HTTP.
/// Blocks.
fn open_upstream(store: ServedStore, timeout: Duration) -> Result<Arc<dyn Store>, ServerError> {
    let url = match store {
        ServedStore::Store(s) => return Ok(s),
        ServedStore::Url(url) => url,
    };
    let failed = |source: StoreError| ServerError::Upstream {
        url: url.clone(),
        source,
    };
    let parsed = StoreUrl::parse(&url).map_err(|e| failed(e.into()))?;
    let mut url = url.clone();
    if matches!(parsed.scheme().name(), "http" | "https") {
        let secs = timeout.as_secs().max(1) + u64::from(timeout.subsec_nanos() > 0);
        for (name, value) in [
            ("connect-timeout", secs.to_string()),
            ("retries", "0".into()),
        ] {
            if parsed.param(name).is_none() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&format!("{name}={value}"));
            }
        }
    }
    crate::store::open(&url).map_err(failed)
}

/// A place paths are looked up in: an upstream, or the cache of upstream
/// paths.
#[derive(Debug)]
struct Source {
    store: Arc<dyn Store>,
    /// Whether this is the cache of upstream paths (asked first, never
    /// counted as an upstream fetch nor kept from).
    kept: bool,
    /// Until when it is left out, after a failure.
    down_until: Mutex<Option<Instant>>,
}

impl Source {
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .ok()
            .and_then(|d| *d)
            .is_some_and(|until| Instant::now() < until)
    }

    fn mark_down(&self) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(Instant::now() + DOWN_FOR);
        }
    }
}

/// What a source said about a hash part.
#[derive(Debug, Clone)]
enum Verdict {
    /// It has the path, trusted.
    Found(Arc<PathInfo>),
    /// It does not have it.
    Missing,
    /// It has it, without a valid signature by a trusted key.
    Refused,
    /// It failed or did not answer in time.
    Failed,
}

/// The cache of upstream paths, and the copies into it.
#[derive(Debug)]
struct Keeper {
    store: Arc<dyn Store>,
    opts: CopyOptions,
    /// Paths being kept, or waiting to be.
    pending: Mutex<HashSet<StorePath>>,
    permits: tokio::sync::Semaphore,
    cancel: CancellationToken,
}

/// The upstream caches of a server. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Upstreams {
    /// The cache of upstream paths first, if any, then the upstreams in
    /// the order of preference.
    sources: Vec<Arc<Source>>,
    trusted: TrustedKeys,
    store_dir: StoreDir,
    timeout: Duration,
    /// Recent lookups, by source and hash part.
    remembered: Mutex<HashMap<(usize, String), (Instant, Verdict)>>,
    keeper: Option<Arc<Keeper>>,
    log: Log,
    counters: Arc<UpstreamCounters>,
}

impl Upstreams {
    /// Opens the upstreams and the cache of upstream paths of `settings`;
    /// `None` without upstreams.
    ///
    /// # Errors
    /// [`ServerError::Upstream`] if one cannot be opened,
    /// [`ServerError::UpstreamStoreDir`] for one of another store
    /// directory, [`ServerError::CacheUpstreamWithoutUpstream`].
    pub(super) async fn start(
        settings: Settings,
        store_dir: &StoreDir,
        log: Log,
        counters: Arc<UpstreamCounters>,
    ) -> Result<Option<Arc<Self>>, ServerError> {
        let Settings {
            stores,
            keep,
            trusted,
            timeout,
        } = settings;
        if stores.is_empty() {
            return match keep {
                Some(_) => Err(ServerError::CacheUpstreamWithoutUpstream),
                None => Ok(None),
            };
        }
        // Opening a store may read files.
        let (stores, keep) = tokio::task::spawn_blocking(move || {
            let stores = stores
                .into_iter()
                .map(|s| open_upstream(s, timeout))
                .collect::<Result<Vec<_>, _>>()?;
            let keep = match keep {
                Some(ServedStore::Url(url)) => Some(
                    crate::store::open(&url)
                        .map_err(|source| ServerError::Upstream { url, source })?,
                ),
                Some(ServedStore::Store(s)) => Some(s),
                None => None,
            };
            Ok::<_, ServerError>((stores, keep))
        })
        .await
        .map_err(super::died)??;
        for s in stores.iter().chain(&keep) {
            if s.store_dir() != store_dir {
                return Err(ServerError::UpstreamStoreDir {
                    url: s.url().to_owned(),
                    store_dir: s.store_dir().to_string(),
                });
            }
        }
        let source = |store, kept| {
            Arc::new(Source {
                store,
                kept,
                down_until: Mutex::new(None),
            })
        };
        let mut sources = Vec::new();
        let keeper = keep.map(|store| {
            sources.push(source(Arc::clone(&store), true));
            let mut opts = CopyOptions::default().with_trusted_keys(trusted.clone());
            opts.check_sigs = true;
            opts.jobs = 4;
            opts.retries = 2;
            Arc::new(Keeper {
                store,
                opts,
                pending: Mutex::new(HashSet::new()),
                permits: tokio::sync::Semaphore::new(KEEPS_AT_ONCE),
                cancel: CancellationToken::new(),
            })
        });
        sources.extend(stores.into_iter().map(|s| source(s, false)));
        Ok(Some(Arc::new(Self {
            sources,
            trusted,
            store_dir: store_dir.clone(),
            timeout,
            remembered: Mutex::new(HashMap::new()),
            keeper,
            log,
            counters,
        })))
    }

    /// Cancels the copies into the cache of upstream paths (the server
    /// is stopping); what they copied so far stays consistent.
    pub(super) fn stop(&self) {
        if let Some(k) = &self.keeper {
            k.cancel.cancel();
        }
    }

    /// The answer from upstream to a request the store answered with 404:
    /// `None` if there is none (the 404 stands).
    pub(super) async fn get(self: &Arc<Self>, route: &Route, head: bool) -> Option<Response<Body>> {
        match route {
            Route::NarInfo(hash) => self.narinfo(hash).await,
            Route::Nar {
                path: Some(path),
                hash,
                ext,
            } => self.nar(path, hash, ext, head).await,
            _ => None,
        }
    }

    /// A served narinfo for a path found upstream.
    async fn narinfo(self: &Arc<Self>, hash: &str) -> Option<Response<Body>> {
        let (_, info) = self.find(hash, |_| true).await?;
        let file = served_file(&info);
        let text = match NarInfo::new(info.narinfo_fields(&self.store_dir, file)) {
            Ok(n) => n.render(),
            Err(e) => {
                self.log
                    .line(|| format!("upstream: cannot serve {}: {e}", self.show(&info)));
                return None;
            }
        };
        Some(handler::full(CT_NARINFO, CACHE_SHORT, text.into()))
    }

    /// A NAR served from upstream: the path with hash part `path`, if its
    /// NAR hash (nix32) is `nar_hash` and its file can be had with
    /// extension `ext`.
    async fn nar(
        self: &Arc<Self>,
        path: &str,
        nar_hash: &str,
        ext: &str,
        head: bool,
    ) -> Option<Response<Body>> {
        let wanted = |info: &PathInfo| {
            info.nar_hash.to_nix32() == nar_hash && (ext.is_empty() || served_ext(info) == ext)
        };
        let Some((i, info)) = self.find(path, wanted).await else {
            self.counters.fetch("nar", "miss");
            return None;
        };
        let source = Arc::clone(&self.sources[i]);
        // The plain NAR is checked against its signed hash and size; a
        // compressed file against what the upstream says of it.
        let file = info
            .file
            .as_ref()
            .filter(|f| passed_through(&f.compression));
        let plain = ext.is_empty();
        let as_stored = !plain || file.is_some_and(|f| f.compression == Compression::None);
        let mut check = if plain {
            Check {
                hash: Some(info.nar_hash),
                size: Some(info.nar_size),
            }
        } else {
            Check {
                hash: file.and_then(|f| f.file_hash),
                size: file.and_then(|f| f.file_size),
            }
        };
        let builder = Response::builder()
            .header(header::CONTENT_TYPE, CT_NAR)
            .header(header::CACHE_CONTROL, CACHE_IMMUTABLE);
        if head {
            let builder = match check.size {
                Some(len) => builder.header(header::CONTENT_LENGTH, len),
                None => builder,
            };
            return builder.body(handler::empty()).ok();
        }
        let opened = tokio::time::timeout(self.timeout, async {
            if as_stored {
                let c = source.store.compressed_nar(&info).await?;
                Ok::<_, StoreError>(c.map(|c| (c.stream, c.file_size)))
            } else {
                Ok(Some((source.store.nar(&info).await?, None)))
            }
        })
        .await;
        let stream = match opened {
            Ok(Ok(Some((stream, size)))) => {
                if check.size.is_none() {
                    check.size = size;
                }
                stream
            }
            Ok(Ok(None)) => {
                return self.nar_failed(&source, &info, "no NAR file".to_owned(), false);
            }
            Ok(Err(e)) => {
                let down = e.is_retryable();
                return self.nar_failed(&source, &info, chain(&e), down);
            }
            Err(_) => {
                let why = format!("no answer in {:?}", self.timeout);
                return self.nar_failed(&source, &info, why, true);
            }
        };
        if !source.kept {
            self.keep(&source, &info.path);
        }
        let builder = match check.size {
            Some(len) => builder.header(header::CONTENT_LENGTH, len),
            None => builder,
        };
        let this = Arc::clone(self);
        let what = format!("{} from {}", self.show(&info), source.store.url());
        let counted = !source.kept;
        let done = move |result: Result<(), String>| {
            if counted {
                let outcome = if result.is_ok() { "hit" } else { "error" };
                this.counters.fetch("nar", outcome);
            }
            if let Err(why) = result {
                this.log
                    .line(|| format!("upstream: the NAR of {what}: {why}"));
            }
        };
        builder
            .body(checked_body(stream, check, Box::new(done)))
            .ok()
    }

    /// Logs and counts a NAR that could not be had from `source`, and
    /// answers 502: the path is there, but not its NAR.
    fn nar_failed(
        &self,
        source: &Source,
        info: &PathInfo,
        why: String,
        down: bool,
    ) -> Option<Response<Body>> {
        if down {
            source.mark_down();
        }
        if !source.kept {
            self.counters.fetch("nar", "error");
        }
        self.log.line(|| {
            format!(
                "upstream {}: the NAR of {}: {why}",
                source.store.url(),
                self.show(info)
            )
        });
        Some(handler::text(
            StatusCode::BAD_GATEWAY,
            "the upstream cache failed\n",
        ))
    }

    fn show(&self, info: &PathInfo) -> String {
        self.store_dir.display(&info.path).to_string()
    }

    /// The first source, in the order of preference, that has a trusted
    /// path with hash part `hash` for which `wanted` holds: all are asked
    /// at once (those that are down left out), and those after the one
    /// found are not waited for.
    async fn find(
        self: &Arc<Self>,
        hash: &str,
        wanted: impl Fn(&PathInfo) -> bool,
    ) -> Option<(usize, PathInfo)> {
        let mut asked = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            if source.is_down() {
                if !source.kept {
                    self.counters.fetch("narinfo", "skipped");
                }
                continue;
            }
            let this = Arc::clone(self);
            let hash = hash.to_owned();
            asked.push((i, tokio::spawn(async move { this.lookup(i, &hash).await })));
        }
        let mut found = None;
        for (i, task) in asked {
            if found.is_some() {
                task.abort();
                continue;
            }
            if let Ok(Verdict::Found(info)) = task.await {
                if wanted(&info) {
                    found = Some((i, Arc::unwrap_or_clone(info)));
                }
            }
        }
        found
    }

    /// What source `i` says of hash part `hash`: remembered, or asked
    /// within the timeout and checked against the trusted keys.
    async fn lookup(&self, i: usize, hash: &str) -> Verdict {
        let key = (i, hash.to_owned());
        if let Some(v) = self.remembered(&key) {
            return v;
        }
        let source = &self.sources[i];
        let url = source.store.url();
        let asked =
            tokio::time::timeout(self.timeout, source.store.query_path_from_hash_part(hash)).await;
        let verdict = match asked {
            Err(_) => {
                source.mark_down();
                self.log.line(|| {
                    format!(
                        "upstream {url}: no answer in {:?}; left out for {DOWN_FOR:?}",
                        self.timeout
                    )
                });
                Verdict::Failed
            }
            Ok(Err(e)) => {
                if e.is_retryable() {
                    source.mark_down();
                }
                self.log
                    .line(|| format!("upstream {url}: looking up {hash}: {}", chain(&e)));
                Verdict::Failed
            }
            Ok(Ok(Some(info))) if info.path.hash_part() == hash => {
                match info.check_trust(&self.store_dir, &self.trusted) {
                    Ok(_) => Verdict::Found(Arc::new(info)),
                    Err(e) => {
                        self.log
                            .line(|| format!("upstream {url}: refused {}: {e}", self.show(&info)));
                        Verdict::Refused
                    }
                }
            }
            Ok(Ok(_)) => Verdict::Missing,
        };
        if !source.kept {
            self.counters.fetch(
                "narinfo",
                match verdict {
                    Verdict::Found(_) => "hit",
                    Verdict::Missing => "miss",
                    Verdict::Refused => "refused",
                    Verdict::Failed => "error",
                },
            );
        }
        if !matches!(verdict, Verdict::Failed) {
            self.remember(key, verdict.clone());
        }
        verdict
    }

    fn remembered(&self, key: &(usize, String)) -> Option<Verdict> {
        let map = self.remembered.lock().ok()?;
        let (when, verdict) = map.get(key)?;
        let ttl = match verdict {
            Verdict::Found(_) => FOUND_TTL,
            _ => MISSING_TTL,
        };
        (when.elapsed() < ttl).then(|| verdict.clone())
    }

    fn remember(&self, key: (usize, String), verdict: Verdict) {
        if let Ok(mut map) = self.remembered.lock() {
            if map.len() >= MAX_REMEMBERED {
                map.retain(|_, (when, v)| {
                    matches!(v, Verdict::Found(_)) && when.elapsed() < FOUND_TTL
                });
                if map.len() >= MAX_REMEMBERED {
                    map.clear();
                }
            }
            map.insert(key, (Instant::now(), verdict));
        }
    }

    /// Copies `path` with its closure from `source` into the cache of
    /// upstream paths, in the background, unless it is on its way there.
    fn keep(&self, source: &Source, path: &StorePath) {
        let Some(keeper) = &self.keeper else { return };
        {
            let Ok(mut pending) = keeper.pending.lock() else {
                return;
            };
            if pending.len() >= MAX_PENDING_KEEPS || !pending.insert(path.clone()) {
                return;
            }
        }
        let keeper = Arc::clone(keeper);
        let src = Arc::clone(&source.store);
        let path = path.clone();
        let log = self.log.clone();
        let counters = Arc::clone(&self.counters);
        let shown = self.store_dir.display(&path).to_string();
        tokio::spawn(async move {
            let copied = async {
                let _permit = keeper.permits.acquire().await.ok()?;
                if keeper.cancel.is_cancelled() {
                    return None;
                }
                let ignore: Arc<dyn Fn(crate::copy::Event) + Send + Sync> = Arc::new(|_| {});
                Some(
                    crate::copy::copy_closure(
                        src,
                        Arc::clone(&keeper.store),
                        std::slice::from_ref(&path),
                        &keeper.opts,
                        ignore,
                        keeper.cancel.clone(),
                    )
                    .await,
                )
            }
            .await;
            let to = keeper.store.url();
            match copied {
                None => {}
                Some(Ok(summary)) => {
                    counters.kept(summary.copied, summary.failed.len());
                    for (p, e) in &summary.failed {
                        log.line(|| format!("upstream: keeping {p} in {to} failed: {e}"));
                    }
                    if summary.copied > 0 {
                        log.line(|| {
                            format!("upstream: kept {shown} in {to} ({} paths)", summary.copied)
                        });
                    }
                }
                Some(Err(e)) => {
                    counters.kept(0, 1);
                    log.line(|| format!("upstream: keeping {shown} in {to} failed: {e}"));
                }
            }
            if let Ok(mut pending) = keeper.pending.lock() {
                pending.remove(&path);
            }
        });
    }
}

/// The NAR file the served narinfo of a path from upstream names: the
/// upstream's file as it is, or the plain NAR.
fn served_file(info: &PathInfo) -> NarFile {
    let base = format!("nar/{}-{}", info.path.hash_part(), info.nar_hash.to_nix32());
    match info
        .file
        .as_ref()
        .filter(|f| passed_through(&f.compression))
    {
        Some(f) => NarFile {
            url: format!("{base}{}", f.compression.extension()),
            compression: f.compression.clone(),
            file_hash: f.file_hash,
            file_size: f.file_size,
        },
        None => NarFile {
            url: format!("{base}.nar"),
            compression: Compression::None,
            file_hash: Some(info.nar_hash),
            file_size: Some(info.nar_size),
        },
    }
}

/// The extension (after `.nar`) of [`served_file`]'s URL.
fn served_ext(info: &PathInfo) -> &'static str {
    match info
        .file
        .as_ref()
        .filter(|f| passed_through(&f.compression))
    {
        Some(f) => f.compression.extension().strip_prefix(".nar").unwrap_or(""),
        None => "",
    }
}

/// What the bytes of a download must come to, where known.
#[derive(Debug, Clone, Copy)]
struct Check {
    hash: Option<NixHash>,
    size: Option<u64>,
}

/// Called once with how a download ended: `Ok` if it was complete and
/// matched, else why not. Not called if the client went away.
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A body streaming `reader` through `check`: the last chunk is held back
/// until the end of the stream matched, so a mismatch ends the body with
/// an error before the client has all of it.
fn checked_body(reader: NarStream, check: Check, done: Done) -> Body {
    let state = Checked {
        reader,
        hasher: check.hash.map(|h| Hasher::new(h.algo())),
        check,
        seen: 0,
        held: None,
        done: Some(done),
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        s.next().await.map(|item| (item.map(Frame::data), s))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// The state of [`checked_body`].
struct Checked {
    reader: NarStream,
    check: Check,
    hasher: Option<Hasher>,
    seen: u64,
    held: Option<Bytes>,
    /// Taken once the stream ended, well or not.
    done: Option<Done>,
}

impl Checked {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            self.done.as_ref()?;
            // Chunks of up to CHUNK bytes, gathered from the smaller
            // reads of a network stream: fewer, larger writes.
            let mut buf = BytesMut::with_capacity(CHUNK);
            let mut n = 0;
            while buf.len() < CHUNK / 2 {
                let read = tokio::time::timeout(STALL_TIMEOUT, self.reader.read_buf(&mut buf));
                match read.await {
                    Err(_) => return self.fail(format!("nothing came for {STALL_TIMEOUT:?}")),
                    Ok(Err(e)) => return self.fail(e.to_string()),
                    Ok(Ok(0)) => break,
                    Ok(Ok(got)) => n += got,
                }
            }
            if n == 0 {
                if let Some(why) = self.mismatch() {
                    return self.fail(why);
                }
                if let Some(done) = self.done.take() {
                    done(Ok(()));
                }
                return self.held.take().map(Ok);
            }
            self.seen += n as u64;
            if let Some(size) = self.check.size.filter(|s| self.seen > *s) {
                return self.fail(format!("more than the {size} bytes expected"));
            }
            let chunk = buf.freeze();
            if let Some(h) = &mut self.hasher {
                h.update(&chunk);
            }
            if let Some(previous) = self.held.replace(chunk) {
                return Some(Ok(previous));
            }
        }
    }

    /// How the whole download differs from what was expected, if it does.
    fn mismatch(&mut self) -> Option<String> {
        if let Some(size) = self.check.size.filter(|s| *s != self.seen) {
            return Some(format!("{} bytes instead of {size}", self.seen));
        }
        let expected = self.check.hash?;
        let got = self.hasher.take()?.finish();
        (got != expected).then(|| format!("hash {got} instead of {expected}"))
    }

    fn fail(&mut self, why: String) -> Option<io::Result<Bytes>> {
        self.held = None;
        let done = self.done.take()?;
        done(Err(why.clone()));
        Some(Err(io::Error::new(io::ErrorKind::InvalidData, why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(data: &'static [u8], check: Check) -> (Vec<u8>, bool, Option<bool>) {
        let reader: NarStream = Box::pin(io::Cursor::new(data));
        let outcome = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&outcome);
        let done: Done = Box::new(move |r| *seen.lock().unwrap() = Some(r.is_ok()));
        let mut body = checked_body(reader, check, done);
        let mut got = Vec::new();
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => failed = true,
            }
        }
        let ok = *outcome.lock().unwrap();
        (got, failed, ok)
    }

    #[tokio::test]
    async fn checked_bodies_end_in_an_error_on_a_mismatch() {
        let data: &'static [u8] = b"some NAR bytes";
        let hash = NixHash::digest(crate::hash::HashAlgo::Sha256, data);
        let good = Check {
            hash: Some(hash),
            size: Some(data.len() as u64),
        };
        assert_eq!(run(data, good).await, (data.to_vec(), false, Some(true)));
        let unknown = Check {
            hash: None,
            size: None,
        };
        assert_eq!(run(data, unknown).await, (data.to_vec(), false, Some(true)));
        let other = NixHash::digest(crate::hash::HashAlgo::Sha256, b"other");
        for bad in [
            Check {
                hash: Some(other),
                size: None,
            },
            Check {
                hash: None,
                size: Some(data.len() as u64 + 1),
            },
            Check {
                hash: Some(hash),
                size: Some(data.len() as u64 - 1),
            },
        ] {
            let (got, failed, ok) = run(data, bad).await;
            assert!(failed && ok == Some(false), "{bad:?}");
            // Never all of it.
            assert!(got.len() < data.len(), "{bad:?}");
        }
    }

    #[test]
    fn served_files_keep_passthrough_compressions_only() {
        let path = StorePath::from_base_name("jgs69zx98r4fpm73d82y357pps9llcic-x").unwrap();
        let hash = NixHash::digest(crate::hash::HashAlgo::Sha256, b"nar");
        let mut info = PathInfo::new(path, hash, 3);
        let base = format!("nar/jgs69zx98r4fpm73d82y357pps9llcic-{}", hash.to_nix32());
        assert_eq!(served_file(&info).url, format!("{base}.nar"));
        assert_eq!(served_file(&info).file_hash, Some(hash));
        for (c, ext) in [
            (Compression::Xz, ".xz"),
            (Compression::Zstd, ".zst"),
            (Compression::None, ""),
            (Compression::Gzip, ""),
            (Compression::Lz4, ""),
        ] {
            info.file = Some(NarFile {
                url: "nar/x.nar".into(),
                compression: c.clone(),
                file_hash: None,
                file_size: Some(9),
            });
            assert_eq!(served_file(&info).url, format!("{base}.nar{ext}"), "{c}");
            assert_eq!(served_ext(&info), ext, "{c}");
            let kept = passed_through(&c);
            assert_eq!(served_file(&info).compression == c, kept, "{c}");
        }
    }
}
