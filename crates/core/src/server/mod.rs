//! A store served as a Nix binary cache over HTTP (docs/formats.md §3): what
//! `nixferry serve` runs, for any program to embed.
//!
//! Two backends, chosen by the kind of store:
//!
//! - a `file://` cache is served file by file as it lies on disk, and can
//!   take uploads (`PUT`) when the server is [writable](ServerBuilder::writable);
//! - a Nix store (`local`, `local?root=…`) gets narinfos made from its
//!   database, signed on the fly with the server's
//!   [keys](ServerBuilder::secret_keys), and NARs dumped (and optionally
//!   zstd-compressed, [`ServerBuilder::compression`]) on the fly; other
//!   binary caches (`s3://`, `http(s)://`) are served the same way,
//!   narinfos looked up by hash part, NARs decompressed from the cache.
//!
//! # Requests
//!
//! | request | answer |
//! |---|---|
//! | `GET /nix-cache-info` | the cache's `nix-cache-info` (the `file://` cache's own), with the [priority](ServerBuilder::priority) and [`WantMassQuery`](ServerBuilder::want_mass_query) set on top |
//! | `GET /<hash>.narinfo` | the path's narinfo |
//! | `GET /nar/<hash>.nar[.xz\|.zst\|.bz2\|.br]` | the NAR file, with `Range` requests of a single byte range honoured where its length is known |
//! | `GET /nar/<path hash>-<NAR hash>.nar[.zst]` | a served Nix store's NAR: its narinfos name NARs by the path's hash part and the NAR hash, so any server of the store answers them, after a restart or from another replica, as long as the path is there with that content |
//! | `GET /nar/<path hash>-<NAR hash>.nar[.xz\|.zst\|.bz2\|.br]` | with [upstreams](#upstreams): the NAR file of a path from upstream, as the upstream stores it, streamed and checked on the way; without an extension, the plain NAR |
//! | `GET /<hash>.ls`, `GET /log/<drv>` | the path's listing, a build log |
//! | `GET /metrics` | counters in the Prometheus text format |
//! | `GET /health` | `ok`: the server answers (for load balancers and service managers) |
//! | `HEAD` of any of them | the head of the `GET` |
//! | `PUT` of a cache file | an upload into a writable `file://` cache, with the [token](ServerBuilder::token) as `Authorization: Bearer <token>` or as the password of basic credentials |
//!
//! A private cache ([`ServerBuilder::tokens_file`]) answers reads without
//! a valid token (except `/health`, and `nix-cache-info` if
//! [public](ServerBuilder::public_cache_info)) with `401` and
//! `WWW-Authenticate`.
//!
//! Only the exact file names of the layout are served: no request can name
//! a file outside the cache. Nothing unverified is published by an upload:
//! a NAR file is kept only if its content hashes to its name, and a
//! narinfo only if the NAR file it names is there and decompresses to the
//! NAR the narinfo describes.
//!
//! # Bounds
//!
//! No client can take the server down or pin it: connections are limited
//! ([`ServerBuilder::max_connections`]), and so are requests in flight
//! ([`ServerBuilder::max_requests`]); a request head must arrive within
//! the [header timeout](ServerBuilder::header_timeout) (which also closes
//! idle connections), and a connection that stops moving bytes while it
//! sends a body or reads an answer is closed after the
//! [I/O timeout](ServerBuilder::io_timeout). CPU work (listings, and NARs
//! compressed on the fly) runs in a pool of a few
//! [slots](ServerBuilder::cpu_slots), and listings once made are kept (up
//! to 64 MiB of them). Malformed requests get a `4xx` from the HTTP
//! parser or the router.
//!
//! # Upstreams
//!
//! With [upstream caches](ServerBuilder::upstream), a narinfo or NAR the
//! store lacks is fetched from them (all asked at once, the first in the
//! order given preferred), within a
//! [timeout](ServerBuilder::upstream_timeout): an upstream that fails or
//! does not answer in time is left out for [`DOWN_FOR`], and the request
//! answered `404` at once. A path is served only with a valid signature
//! by one of the [trusted keys](ServerBuilder::trusted_keys) (Nix's
//! default, `cache.nixos.org-1`, unless set), or a content address that
//! verifies; any other is refused, as missing. Its narinfo keeps the
//! upstream's signatures, which cover the path, its NAR hash and size and
//! its references, and names the NAR by path hash and NAR hash, so any
//! server with the same upstreams answers it, after a restart too. The
//! NAR file is streamed as the upstream stores it, with its
//! `Content-Length` where known, and hashed on the way: a file that does
//! not match what its narinfo says ends in a broken transfer, never in a
//! complete bad file. Lookups are remembered for [`FOUND_TTL`] (misses
//! for a second).
//!
//! With a [cache of upstream paths](ServerBuilder::cache_upstream) (a
//! `file://` cache, the served one included), each path served from
//! upstream is also copied there with its closure, in the background, by
//! the copy engine, which checks signatures and NAR hashes as for any
//! copy; copies are deduplicated, [`KEEPS_AT_ONCE`] at a time, and a
//! failure is logged, never seen by clients. That cache is asked before
//! the upstreams, so the next client gets the path from there.
//!
//! `/metrics` counts upstream lookups and downloads by result
//! (`nixferry_upstream_fetches_total{kind="narinfo|nar",result="hit|miss|refused|error|skipped"}`)
//! and the paths kept.
//!
//! # Lifecycle
//!
//! [`Server::builder`] takes the store (a URL, or a store already open),
//! [`ServerBuilder::start`] binds the address and serves on a task of the
//! current tokio runtime, and [`Server::shutdown`] stops it gracefully:
//! no new connections, requests in flight given
//! [a grace period](ServerBuilder::shutdown_grace) to finish. The server
//! speaks HTTP/1.1.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read as _, Write as _};
//! use nixferry::server::Server;
//!
//! // A binary cache in a directory, served on a free port.
//! let dir = tempfile::tempdir()?;
//! let cache = format!("file://{}", dir.path().display());
//! let server = Server::builder(cache)
//!     .listen("127.0.0.1:0".parse()?)
//!     .priority(40)
//!     .start()
//!     .await?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//!
//! // Any HTTP client will do; here a plain HTTP/1.0 request.
//! let addr = server.local_addr();
//! let text = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
//!     let mut conn = std::net::TcpStream::connect(addr)?;
//!     conn.write_all(b"GET /nix-cache-info HTTP/1.0\r\n\r\n")?;
//!     let mut text = String::new();
//!     conn.read_to_string(&mut text)?;
//!     Ok(text)
//! })
//! .await??;
//! assert!(text.starts_with("HTTP/1.0 200 OK\r\n"));
//! assert!(text.contains("StoreDir: /nix/store\n"));
//! assert!(text.contains("Priority: 40\n"));
//!
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod access;
mod auth;
mod conn;
mod handler;
mod metrics;
mod pool;
mod range;
mod route;
mod upload;
mod upstream;

pub use access::LogFormat;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::narinfo::Compression;
use crate::signing::SecretKey;
use crate::store::file::FileStore;
use crate::store::{Store, StoreError, StoreUrl};
use crate::store_path::StoreDir;
use access::Log;
use handler::{Backend, State, StoreBackend};
pub use upstream::{DEFAULT_UPSTREAM_TIMEOUT, DOWN_FOR, FOUND_TTL, KEEPS_AT_ONCE};

/// How long requests in flight get after a shutdown, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to send a request head, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may go without a byte moving either way while it
/// waits to read or write, by default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How many connections a server keeps open at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// How many NARs a server dumps from a local Nix store at once at most;
/// more wait their turn. Each takes a blocking thread for as long as its
/// client reads, so this bounds the threads they take and leaves the rest
/// of the runtime's blocking pool to the short work of other requests.
pub const MAX_DUMPS: usize = 64;

/// How many requests a server works on or answers at once at most, by
/// default.
pub const DEFAULT_MAX_REQUESTS: usize = 512;

/// The address a server listens on unless told otherwise: a free port on
/// the loopback interface.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Errors starting or stopping a [`Server`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store could not be opened (or its URL is malformed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is of a kind the server cannot serve.
    #[error(
        "cannot serve a store of type '{scheme}': only local, file://, s3:// and http(s):// stores"
    )]
    UnsupportedStore {
        /// The store URL's scheme.
        scheme: String,
    },
    /// [Uploads](ServerBuilder::writable) were asked of a store that is
    /// not a `file://` cache.
    #[error("uploads need a file:// store")]
    WritableNeedsFileStore,
    /// [Uploads](ServerBuilder::writable) were asked without a
    /// [token](ServerBuilder::token) or a `write` token in the
    /// [tokens file](ServerBuilder::tokens_file).
    #[error("uploads need a token")]
    WritableNeedsToken,
    /// The [tokens file](ServerBuilder::tokens_file) could not be read.
    #[error("reading the tokens file '{}': {source}", path.display())]
    TokensFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of the [tokens file](ServerBuilder::tokens_file) is not
    /// `read <token>` or `write <token>`.
    #[error("the tokens file '{}', line {line}: {reason}", path.display())]
    Tokens {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The [token](ServerBuilder::token) is empty.
    #[error("the upload token is empty")]
    EmptyToken,
    /// [Secret keys](ServerBuilder::secret_keys) were given for a `file://`
    /// cache, which is served as it is.
    #[error("secret keys only apply to served Nix stores and caches served again; sign a file:// cache when filling it")]
    KeysForFileStore,
    /// A [compression](ServerBuilder::compression) the server cannot
    /// apply on the fly (only `none` and `zstd`).
    #[error("NARs can be compressed on the fly with none or zstd, not '{method}'")]
    UnsupportedCompression {
        /// The method's name.
        method: String,
    },
    /// The cache directory of a `file://` store could not be resolved.
    #[error("opening the cache directory '{}': {source}", path.display())]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The address could not be listened on.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A socket given with [`ServerBuilder::listener`] could not be
    /// served.
    #[error("serving the socket{}: {source}", addr.map(|a| format!(" on {a}")).unwrap_or_default())]
    Listener {
        /// Its address, if it has one.
        addr: Option<SocketAddr>,
        /// The cause.
        source: std::io::Error,
    },
    /// An [upstream](ServerBuilder::upstream) or the
    /// [cache of upstream paths](ServerBuilder::cache_upstream) could not
    /// be opened (or its URL is malformed).
    #[error("opening the upstream '{url}': {source}")]
    Upstream {
        /// The store's URL.
        url: String,
        /// The cause.
        source: StoreError,
    },
    /// An [upstream](ServerBuilder::upstream) or the
    /// [cache of upstream paths](ServerBuilder::cache_upstream) is for
    /// another store directory than the served store.
    #[error(
        "the upstream '{url}' is a cache for {store_dir}, not for the served store's directory"
    )]
    UpstreamStoreDir {
        /// The upstream's URL.
        url: String,
        /// Its store directory.
        store_dir: String,
    },
    /// A [cache of upstream paths](ServerBuilder::cache_upstream) was
    /// given without an [upstream](ServerBuilder::upstream).
    #[error("a cache of upstream paths needs an upstream")]
    CacheUpstreamWithoutUpstream,
    /// The server's task panicked or was cancelled (the runtime shutting
    /// down).
    #[error("the server task failed: {message}")]
    Task {
        /// How it ended.
        message: String,
    },
}

/// The error of a server task that did not finish: it panicked, or the
/// runtime is shutting down.
fn died(e: tokio::task::JoinError) -> ServerError {
    ServerError::Task {
        message: e.to_string(),
    }
}

/// The store a server serves: a URL, opened when the server starts, or a
/// store already open. Made with `into()` from a `&str`, a `String` or an
/// `Arc<dyn Store>`.
///
/// A store already open is served by the kind its [URL](Store::url)
/// names: a `file://` cache file by file from its directory, a local Nix
/// store from its database and store directory; any other store (one
/// whose URL nixferry does not know included) through its
/// [`Store::query_path_from_hash_part`] and [`Store::nar`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServedStore {
    /// A store URL (`local`, `file:///dir`, `s3://bucket`, `https://…`).
    Url(String),
    /// A store already open.
    Store(Arc<dyn Store>),
}

impl From<&str> for ServedStore {
    fn from(url: &str) -> Self {
        Self::Url(url.to_owned())
    }
}

impl From<String> for ServedStore {
    fn from(url: String) -> Self {
        Self::Url(url)
    }
}

impl From<Arc<dyn Store>> for ServedStore {
    fn from(store: Arc<dyn Store>) -> Self {
        Self::Store(store)
    }
}

/// A sink for the server's log lines.
type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How to serve a store: made by [`Server::builder`], started with
/// [`ServerBuilder::start`].
#[must_use = "a server builder does nothing until started"]
pub struct ServerBuilder {
    store: ServedStore,
    listen: SocketAddr,
    secret_keys: Vec<SecretKey>,
    priority: Option<i64>,
    want_mass_query: Option<bool>,
    writable: bool,
    token: Option<String>,
    tokens_file: Option<PathBuf>,
    public_cache_info: bool,
    compression: Compression,
    log: Option<LogFn>,
    log_format: LogFormat,
    header_timeout: Duration,
    io_timeout: Duration,
    max_connections: usize,
    max_requests: usize,
    cpu_slots: Option<usize>,
    listeners: Vec<std::net::TcpListener>,
    shutdown_grace: Duration,
    upstream: upstream::Settings,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("store", &self.store)
            .field("listen", &self.listen)
            .field("secret_keys", &self.secret_keys)
            .field("priority", &self.priority)
            .field("want_mass_query", &self.want_mass_query)
            .field("writable", &self.writable)
            // Never the token itself.
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tokens_file", &self.tokens_file)
            .field("public_cache_info", &self.public_cache_info)
            .field("compression", &self.compression)
            .field("log", &self.log.as_ref().map(|_| "…"))
            .field("log_format", &self.log_format)
            .field("header_timeout", &self.header_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_requests", &self.max_requests)
            .field("cpu_slots", &self.cpu_slots)
            .field("listeners", &self.listeners)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl ServerBuilder {
    /// The address to listen on ([`DEFAULT_LISTEN`] unless set: a free
    /// port on 127.0.0.1). Port 0 picks a free port; the one picked is
    /// [`Server::local_addr`].
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Keys to sign the narinfos of a served Nix store (or of a binary
    /// cache served again) with, replacing any given before. A `file://`
    /// cache is served as it is, so keys for one are an error
    /// ([`ServerError::KeysForFileStore`]): sign it when filling it.
    pub fn secret_keys(mut self, keys: impl IntoIterator<Item = SecretKey>) -> Self {
        self.secret_keys = keys.into_iter().collect();
        self
    }

    /// One more key to sign with, as [`ServerBuilder::secret_keys`].
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.secret_keys.push(key);
        self
    }

    /// The `Priority` to announce in `nix-cache-info` (Nix prefers caches
    /// with lower values); the cache's own, or none, unless set.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The `WantMassQuery` to announce in `nix-cache-info`; the cache's
    /// own, or false, unless set.
    pub fn want_mass_query(mut self, want: bool) -> Self {
        self.want_mass_query = Some(want);
        self
    }

    /// Whether to take uploads (`PUT`) into the store, which must then be
    /// a `file://` cache, from clients presenting the
    /// [token](ServerBuilder::token). Off unless set; a server that is not
    /// writable answers `PUT` with `405`.
    pub fn writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// The token uploads must present: `Authorization: Bearer <token>`,
    /// or basic credentials with the token as password (what Nix sends
    /// from a netrc file). Compared in constant time. Needed by a
    /// [writable](ServerBuilder::writable) server.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Makes the cache private: reads need a token of `file` too, which
    /// holds one token a line after its scope, `read <token>` or
    /// `write <token>` (which may upload, to a
    /// [writable](ServerBuilder::writable) server, as well as read);
    /// blank lines and `#` comments are left out. A token is presented as
    /// `Authorization: Bearer <token>` or as the password of basic
    /// credentials (what Nix sends from a `netrc-file`). A read without a
    /// valid token gets `401` with `WWW-Authenticate`, so that Nix fails
    /// loudly instead of building what it cannot download; `/health`
    /// stays open, and so does `nix-cache-info` with
    /// [`ServerBuilder::public_cache_info`]. [`Server::reload_tokens`]
    /// reads the file again.
    pub fn tokens_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.tokens_file = Some(file.into());
        self
    }

    /// Whether a private cache ([`ServerBuilder::tokens_file`]) serves
    /// `nix-cache-info` without a token. Off unless set, and best left
    /// off: Nix 2.8 says a cache whose `nix-cache-info` it may not read
    /// "does not appear to be a binary cache", but takes a refused narinfo
    /// for a missing one.
    pub fn public_cache_info(mut self, public: bool) -> Self {
        self.public_cache_info = public;
        self
    }

    /// How NARs made on the fly (of a Nix store, or of a binary cache
    /// served again) are compressed: [`Compression::None`] (the default)
    /// or [`Compression::Zstd`]. A `file://` cache's NAR files are served
    /// as they are stored.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Where the server's log lines go: one per request once its answer
    /// is sent, cut short or abandoned (`method=GET path=/nix-cache-info
    /// status=200 bytes=52 ms=0.12 client=127.0.0.1:41234
    /// kind=cache_info end=done`, see [`LogFormat`]), and one for each
    /// request that failed or upload that was refused, saying why. None
    /// are made unless set.
    pub fn log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// How log lines are written ([`LogFormat::Text`] unless set).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// How long a client may take to send a request head, including the
    /// wait for it on a connection kept open ([`DEFAULT_HEADER_TIMEOUT`]
    /// unless set): idle and slow-drip connections are closed after it.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection may go without a byte moving either way
    /// while it waits to read a request body or to write an answer
    /// ([`DEFAULT_IO_TIMEOUT`] unless set): a client that stops sending an
    /// upload or stops reading a NAR is cut off after it.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// How many connections to keep open at most
    /// ([`DEFAULT_MAX_CONNECTIONS`] unless set); beyond it, new
    /// connections wait in the listening socket's queue until one
    /// closes. Each takes a file descriptor: the process's limit
    /// (`RLIMIT_NOFILE`) must be above it.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How many requests to work on or answer at once at most
    /// ([`DEFAULT_MAX_REQUESTS`] unless set), from the arrival of a
    /// request's head to the last byte of its answer; beyond it, requests
    /// wait their turn.
    pub fn max_requests(mut self, n: usize) -> Self {
        self.max_requests = n.max(1);
        self
    }

    /// How many listings (`.ls`) and chunks of on-the-fly compression run
    /// at once at most (one per core unless set); more wait their turn.
    pub fn cpu_slots(mut self, n: usize) -> Self {
        self.cpu_slots = Some(n.max(1));
        self
    }

    /// Serves on a socket already listening, instead of binding the
    /// [`listen`](ServerBuilder::listen) address; repeatable. This is how a
    /// service manager's sockets are served (systemd's socket activation
    /// passes them as `LISTEN_FDS`).
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// How long [`Server::shutdown`] lets requests in flight finish before
    /// it closes their connections ([`DEFAULT_SHUTDOWN_GRACE`] unless
    /// set).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Opens the store (for a URL), binds the address and starts serving
    /// on a task of the current tokio runtime.
    ///
    /// # Errors
    /// [`ServerError::Store`] if the store cannot be opened,
    /// [`ServerError::Bind`] if the address cannot be listened on, and
    /// the other [`ServerError`]s for settings that do not fit the store.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<Server, ServerError> {
        if self.token.as_ref().is_some_and(String::is_empty) {
            return Err(ServerError::EmptyToken);
        }
        let auth = Arc::new(auth::Auth::new(
            self.token.clone(),
            self.tokens_file.clone(),
            self.public_cache_info,
        )?);
        if self.writable && !auth.has_write_tokens() {
            return Err(ServerError::WritableNeedsToken);
        }
        let on_the_fly = match self.compression {
            Compression::None => true,
            Compression::Zstd => crate::compression::is_supported(&Compression::Zstd),
            _ => false,
        };
        if !on_the_fly {
            return Err(ServerError::UnsupportedCompression {
                method: self.compression.name().to_owned(),
            });
        }
        let Self {
            store,
            listen,
            secret_keys,
            priority,
            want_mass_query,
            writable,
            compression,
            log,
            log_format,
            header_timeout,
            io_timeout,
            max_connections,
            max_requests,
            cpu_slots,
            listeners,
            shutdown_grace,
            upstream,
            ..
        } = self;
        // Opening a store reads files (a database, `nix-cache-info`).
        let (backend, store_dir) =
            tokio::task::spawn_blocking(move || backend(store, secret_keys, writable, compression))
                .await
                .map_err(died)??;
        let listeners = if listeners.is_empty() {
            let listener = bind(listen).map_err(|source| ServerError::Bind {
                addr: listen,
                source,
            })?;
            vec![listener]
        } else {
            listeners
                .into_iter()
                .map(|l| {
                    let addr = l.local_addr();
                    l.set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(l))
                        .map_err(|source| ServerError::Listener {
                            addr: addr.ok(),
                            source,
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let addr = listeners[0]
            .local_addr()
            .map_err(|source| ServerError::Listener { addr: None, source })?;
        let metrics = Arc::new(metrics::Metrics::default());
        let log = Log {
            sink: log,
            format: log_format,
        };
        let upstream = upstream::Upstreams::start(
            upstream,
            &store_dir,
            log.clone(),
            Arc::clone(&metrics.upstream),
        )
        .await?;
        let state = Arc::new(State {
            backend,
            store_dir,
            want_mass_query,
            priority,
            auth: Arc::clone(&auth),
            write: writable,
            log,
            recent: handler::RecentNarinfos::default(),
            metrics,
            upstream,
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_requests)),
            cpu: pool::CpuPool::new(cpu_slots.unwrap_or_else(pool::default_cpu_slots)),
            listings: pool::Listings::new(pool::LISTINGS_BYTES),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let limits = Limits {
            header_timeout,
            io_timeout,
            max_connections,
            grace: shutdown_grace,
        };
        let task = tokio::spawn(serve(conn::Listeners(listeners), state, stopped, limits));
        Ok(Server {
            addr,
            auth,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// How many connections the kernel queues for a listening socket of the
/// server's own until they are accepted (the kernel caps it at
/// `net.core.somaxconn`): a fleet connecting at once is queued, not
/// refused.
const BACKLOG: u32 = 4096;

/// A socket listening on `addr`, as `TcpListener::bind` makes one
/// (`SO_REUSEADDR` on Unix) but with a deeper queue.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Picks the backend for `store` and checks the settings that depend on
/// it. Blocks.
fn backend(
    store: ServedStore,
    keys: Vec<SecretKey>,
    writable: bool,
    compression: Compression,
) -> Result<(Backend, StoreDir), ServerError> {
    let (url, open) = match store {
        ServedStore::Url(url) => (url, None),
        ServedStore::Store(s) => (s.url().to_owned(), Some(s)),
    };
    let parsed = match (StoreUrl::parse(&url), &open) {
        (Ok(u), _) => Some(u),
        (Err(e), None) => return Err(StoreError::from(e).into()),
        // A store of a kind of its own.
        (Err(_), Some(_)) => None,
    };
    let scheme = parsed.as_ref().map(|u| u.scheme().name());
    let store_backend = |backend: StoreBackend| {
        let dir = backend.store_dir().clone();
        (Backend::Store(Box::new(backend)), dir)
    };
    match (scheme, parsed) {
        (Some("file"), Some(parsed)) => {
            if !keys.is_empty() {
                return Err(ServerError::KeysForFileStore);
            }
            let files = FileStore::open(&parsed)?;
            let dir = match &open {
                Some(s) => s.store_dir().clone(),
                None => files.store_dir().clone(),
            };
            let root = files.root();
            // A cache to write into, or a new one, gets the layout a
            // first write would give it.
            if writable || !root.exists() {
                files.lay_out()?;
            }
            let root = std::fs::canonicalize(root).map_err(|source| ServerError::CacheDir {
                path: root.to_path_buf(),
                source,
            })?;
            Ok((Backend::Files { root }, dir))
        }
        #[cfg(feature = "local")]
        (Some("local"), Some(parsed)) => {
            if writable {
                return Err(ServerError::WritableNeedsFileStore);
            }
            let backend = match open {
                Some(store) => StoreBackend::new(store, true, keys, compression),
                None => {
                    // Opened here: its database is read directly.
                    let local = Arc::new(crate::store::local::LocalStore::open(&parsed)?);
                    let store: Arc<dyn Store> = Arc::clone(&local) as _;
                    StoreBackend::new(store, true, keys, compression).read_directly(local)
                }
            };
            Ok(store_backend(backend))
        }
        (Some("s3" | "http" | "https") | None, _) => {
            if writable {
                return Err(ServerError::WritableNeedsFileStore);
            }
            let store = match open {
                Some(s) => s,
                None => crate::store::open(&url)?,
            };
            Ok(store_backend(StoreBackend::new(
                store,
                false,
                keys,
                compression,
            )))
        }
        (Some(other), _) => Err(ServerError::UnsupportedStore {
            scheme: other.to_owned(),
        }),
    }
}

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    io_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

/// Accepts connections until told to stop (or the [`Server`] handle is
/// dropped), at most `limits.max_connections` open at once, then lets the
/// connections finish their requests for at most `limits.grace`.
async fn serve(
    listeners: conn::Listeners,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    limits: Limits,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                state.log.line(|| {
                    format!(
                        "{} connections open: new ones wait until one closes",
                        limits.max_connections
                    )
                });
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = &mut stop => break,
                }
            }
        };
        let (stream, client) = tokio::select! {
            accepted = listeners.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    state.log.line(|| format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Told to stop, or the handle is gone.
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let open = state.metrics.connection();
        let served = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req| {
            let state = Arc::clone(&served);
            async move { Ok::<_, std::convert::Infallible>(state.handle(req, Some(client)).await) }
        });
        let io = TokioIo::new(conn::Inactivity::new(stream, limits.io_timeout));
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            // A client going away mid-request is not the server's
            // business.
            let _ = conn.await;
            drop((open, slot));
        });
    }
    drop(listeners);
    state.log.line(|| "shutting down".to_owned());
    if let Some(up) = &state.upstream {
        up.stop();
    }
    let _ = tokio::time::timeout(limits.grace, graceful.shutdown()).await;
}

/// A running server: made by [`ServerBuilder::start`].
///
/// Dropping it stops the server too, as [`Server::shutdown`] does, but
/// without waiting: requests in flight then finish (for the grace
/// period) in the background.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct Server {
    addr: SocketAddr,
    auth: Arc<auth::Auth>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// A builder for a server of `store`: a store URL (`"local"`,
    /// `"file:///srv/cache"`, `"s3://bucket?region=…"`) or an
    /// `Arc<dyn Store>` already open (see [`ServedStore`]).
    pub fn builder(store: impl Into<ServedStore>) -> ServerBuilder {
        ServerBuilder {
            store: store.into(),
            listen: DEFAULT_LISTEN,
            secret_keys: Vec::new(),
            priority: None,
            want_mass_query: None,
            writable: false,
            token: None,
            tokens_file: None,
            public_cache_info: false,
            compression: Compression::None,
            log: None,
            log_format: LogFormat::Text,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_requests: DEFAULT_MAX_REQUESTS,
            cpu_slots: None,
            listeners: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            upstream: upstream::Settings::default(),
        }
    }

    /// Reads the [tokens file](ServerBuilder::tokens_file) again (on
    /// `SIGHUP`, say) and returns how many tokens it holds; requests from
    /// then on are checked against them. Without a tokens file, `Ok(0)`.
    ///
    /// # Errors
    /// [`ServerError::TokensFile`] or [`ServerError::Tokens`]; the tokens
    /// stay as they were then.
    pub fn reload_tokens(&self) -> Result<usize, ServerError> {
        self.auth.reload()
    }

    /// The address the server listens on, with the port picked when
    /// asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL, `http://<address>:<port>` (`http://[::1]:<port>`
    /// for IPv6), as a substituter or an HTTP store URL
    /// ([`crate::store::open`]) takes it. For a server listening on all
    /// interfaces (`0.0.0.0`, `::`) it names the loopback address.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// Stops the server gracefully: it accepts no more connections, and
    /// waits until the requests in flight are answered (for at most the
    /// [grace period](ServerBuilder::shutdown_grace), after which their
    /// connections are closed).
    ///
    /// # Errors
    /// [`ServerError::Task`] if the server's task panicked.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            // The task may be gone already; then there is nothing to stop.
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(died),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
