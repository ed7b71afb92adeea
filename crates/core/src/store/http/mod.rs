//! A binary cache served over HTTP or HTTPS (`http://host/path`,
//! `https://host/path`), in exactly the layout of a `file://` cache
//! (docs/formats.md §3.1), as Nix's `HttpBinaryCacheStore` reads and writes it.
//!
//! # URL parameters
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `compression`, `compression-level`, `parallel-compression`, `write-nar-listing`, `secret-key`, `index-debug-info`, `trusted` | as for `file://` | how NAR files are written ([`super::file`]) |
//! | `want-mass-query`, `priority` | from `nix-cache-info` | override what the cache says |
//! | `netrc-file` | `$NETRC`, else `~/.netrc` | credentials for basic authentication, as Nix uses them |
//! | `connect-timeout` | `30` | seconds to wait for a connection |
//! | `timeout` | `300` | seconds a request may go without receiving anything |
//! | `retries` | `5` | attempts after the first for a request that failed transiently |
//!
//! If the environment variable `NIXFERRY_HTTP_TOKEN` ([`TOKEN_ENV`]) is
//! set and not empty, requests to the cache's host carry it as
//! `Authorization: Bearer <token>`, in place of netrc credentials.
//! Server certificates are checked against the Mozilla roots built in,
//! plus those of the PEM file `NIX_SSL_CERT_FILE` or `SSL_CERT_FILE`
//! names, if set.
//!
//! # Reading
//!
//! `nix-cache-info` is fetched on first use; its `StoreDir` must be this
//! store's. A cache without one is read as one for `/nix/store`.
//! Narinfos are fetched with `GET <base>/<hashPart>.narinfo`, up to
//! [`PARALLEL_REQUESTS`] at once over pooled keep-alive connections
//! (HTTP/2 where TLS negotiates it). The logic of the binary cache is
//! shared with `s3://` ([`super::s3`]). A 404 or a 403 means the cache does
//! not have the path (403: what S3 buckets that cannot be listed answer,
//! docs/formats.md §3.1), and so does a narinfo whose `StorePath` names another path.
//! NAR files are streamed and decompressed as `file://` does it (the
//! declared `none` and `br`, anything else by its magic bytes), on a
//! blocking thread with a bounded buffer. A narinfo `URL` is relative to
//! the cache, or an absolute `http://` or `https://` URL.
//!
//! # Writing
//!
//! As Nix does, with `PUT`: the NAR is first read through the strict NAR
//! decoder, checked against the path info, compressed and hashed into a
//! temporary file (in the system's temporary directory) by the same code as
//! `file://` uses, which gives the file's name `nar/<fileHash>.nar<ext>`;
//! that file is then uploaded unless the cache has it already (a `HEAD`
//! request), then the `.ls` listing if asked, and the narinfo last, so a
//! reader never sees a narinfo whose NAR is missing. Content types are
//! Nix's: `application/x-nix-nar`, `application/json`,
//! `text/x-nix-narinfo`, `text/x-nix-cache-info`. A path whose narinfo
//! exists is skipped. A cache without `nix-cache-info` gets one before
//! the first upload, as Nix writes it.
//!
//! # Errors and retries
//!
//! Failed connections, timeouts, 5xx answers and 429 are tried again
//! (but not a server certificate that does not verify),
//! `retries` times, after an exponential backoff with jitter (or after the
//! seconds of a `Retry-After` header). Other 4xx answers are not. What
//! still fails becomes [`StoreError::Connection`] (so that the copy engine
//! may retry the whole path), except 401 and 403 answers
//! ([`StoreError::Login`]) and other unexpected answers
//! ([`StoreError::Remote`]); every message names the method, the URL and
//! the HTTP status.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use tokio_util::io::{ReaderStream, StreamReader};

use super::cache_writer::{io_err, CacheWriter};
use super::chunks::CHUNK_SIZE;
use super::remote::{
    error_chain, relative_key, remote_store, retries_param, Blobs, Body, Download, RemoteCache,
};
use super::{url::Scheme, StoreError, StoreUrl, UrlError};
use crate::compression::Compression;
use crate::narinfo::{CacheInfo, NarInfo};
use crate::store_path::StorePath;

mod netrc;

pub use super::remote::PARALLEL_REQUESTS;

/// The environment variable holding a bearer token for the cache's host.
pub const TOKEN_ENV: &str = "NIXFERRY_HTTP_TOKEN";

/// Default of `connect-timeout`, in seconds.
const DEFAULT_CONNECT_TIMEOUT: u64 = 30;

/// Default of `timeout`, in seconds: as Nix's `stalled-download-timeout`.
const DEFAULT_TIMEOUT: u64 = 300;

/// The first backoff; each retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two attempts, also for `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A binary cache over HTTP(S). See the [module docs](self).
///
/// Cloning is cheap and gives a handle to the same store.
#[derive(Debug, Clone)]
pub struct HttpStore {
    inner: Arc<RemoteCache<Http>>,
}

remote_store!(HttpStore);

/// Requests to the cache's server.
#[derive(Debug)]
struct Http {
    url: String,
    /// `scheme://host/path`, without a trailing slash.
    base: String,
    host: String,
    client: reqwest::Client,
    retries: u32,
    auth: Auth,
}

/// How requests authenticate.
#[derive(Default)]
struct Auth {
    token: Option<String>,
    netrc: netrc::Netrc,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl HttpStore {
    /// The cache's files, for [`crate::cache`]: read-only, by name.
    pub(crate) fn files(&self) -> Arc<dyn crate::cache::CacheFiles> {
        Arc::new(super::remote::BlobFiles(Arc::clone(&self.inner)))
    }

    /// Opens the cache an `http://` or `https://` URL names. Nothing is
    /// fetched yet: `nix-cache-info` is read on first use.
    ///
    /// # Errors
    /// [`StoreError::Url`] for a malformed URL or a parameter that is
    /// unknown or has a bad value, [`StoreError::Io`] if the secret key,
    /// the netrc file the URL names, or the certificate file cannot be
    /// read.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let https = match url.scheme() {
            Scheme::Http => false,
            Scheme::Https => true,
            _ => {
                return Err(UrlError::Malformed {
                    url: url.as_str().to_owned(),
                    reason: "not an http:// or https:// URL",
                }
                .into())
            }
        };
        let base = format!(
            "{}://{}",
            if https { "https" } else { "http" },
            url.location().trim_end_matches('/')
        );
        let malformed = |reason| UrlError::Malformed {
            url: url.as_str().to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(&base).map_err(|_| malformed("not a valid HTTP URL"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| malformed("no host"))?
            .to_owned();
        let (writer, want_mass_query, priority) = CacheWriter::for_remote(url)?;
        let seconds = |name: &str, default: u64| -> Result<Duration, UrlError> {
            match url.int_param(name)? {
                None => Ok(Duration::from_secs(default)),
                Some(s) if s > 0 => Ok(Duration::from_secs(s.unsigned_abs())),
                Some(s) => Err(url.bad_value(name, &s.to_string(), "expected seconds above 0")),
            }
        };
        let connect_timeout = seconds("connect-timeout", DEFAULT_CONNECT_TIMEOUT)?;
        let timeout = seconds("timeout", DEFAULT_TIMEOUT)?;
        let retries = retries_param(url)?;
        let auth = Auth {
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            netrc: load_netrc(url.param("netrc-file"))?,
        };

        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("nixferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .read_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        for var in ["NIX_SSL_CERT_FILE", "SSL_CERT_FILE"] {
            if let Some(file) = std::env::var_os(var).filter(|f| !f.is_empty()) {
                let file = PathBuf::from(file);
                let failed = |source| io_err("reading certificates", &file)(source);
                let pem = std::fs::read(&file).map_err(failed)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
                break;
            }
        }
        let client = builder.build().map_err(|e| StoreError::Connection {
            store: url.as_str().to_owned(),
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        let http = Http {
            url: url.as_str().to_owned(),
            base,
            host,
            client,
            retries,
            auth,
        };
        Ok(Self {
            inner: Arc::new(RemoteCache::new(
                http,
                writer,
                want_mass_query,
                priority,
                "nixferry-http",
            )),
        })
    }

    /// The cache's root URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.blobs.base
    }

    /// The compression NAR files are written with.
    pub fn compression(&self) -> &Compression {
        self.inner.compression()
    }

    /// The cache's `nix-cache-info` (fetched on first use), with
    /// `want-mass-query` and `priority` from the URL taking precedence.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if it does not parse or is for another
    /// store directory; request errors as described in the module docs.
    pub async fn cache_info(&self) -> Result<&CacheInfo, StoreError> {
        self.inner.cache_info().await
    }

    /// Fetches the narinfo of `path`: `None` if the cache does not have it
    /// (or has a narinfo for another name with the same hash part).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if the narinfo does not parse; request
    /// errors as described in the module docs.
    pub async fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, StoreError> {
        self.inner.narinfo(path).await
    }
}

/// Reads the netrc file: `explicit` (the `netrc-file` parameter), which
/// must be readable, else `$NETRC` or `~/.netrc` if they exist.
fn load_netrc(explicit: Option<&str>) -> Result<netrc::Netrc, StoreError> {
    let file = match explicit {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("NETRC").filter(|f| !f.is_empty()) {
            Some(f) => PathBuf::from(f),
            None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
                Some(home) => PathBuf::from(home).join(".netrc"),
                None => return Ok(netrc::Netrc::default()),
            },
        },
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(netrc::Netrc::parse(&text)),
        Err(e) if explicit.is_none() && e.kind() == io::ErrorKind::NotFound => {
            Ok(netrc::Netrc::default())
        }
        Err(source) => Err(io_err("reading netrc file", &file)(source)),
    }
}

/// Whether an answer with this status is worth trying again.
fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The seconds of a `Retry-After: <seconds>` header (the date form is not
/// honoured), capped at [`MAX_BACKOFF`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_BACKOFF))
}

/// The wait before retry number `attempt` (0-based): exponential, with
/// the upper half of it random, so that clients do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let full = crate::backoff::doubled(FIRST_BACKOFF, attempt, MAX_BACKOFF);
    full.mul_f64(0.5 + crate::backoff::random_fraction() / 2.0)
}

impl Http {
    fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.base)
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            store: self.url.clone(),
            message,
        }
    }

    fn connection(&self, message: String) -> StoreError {
        StoreError::Connection {
            store: self.url.clone(),
            message,
        }
    }

    /// The error for an answer the caller did not expect.
    fn status_error(&self, method: &Method, url: &str, status: StatusCode) -> StoreError {
        let message = format!("{method} {url}: HTTP {status}");
        if retryable_status(status) {
            self.connection(message)
        } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            StoreError::Login {
                store: self.url.clone(),
                message: format!("cannot log in: {message}"),
            }
        } else {
            StoreError::Remote {
                store: self.url.clone(),
                message,
            }
        }
    }

    /// Sends a request, trying again on connection errors, timeouts, 5xx
    /// and 429 (see the module docs). Returns the first answer that is not
    /// to be retried, whatever its status.
    async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&'static str>,
        body: Option<&Body>,
    ) -> Result<reqwest::Response, StoreError> {
        let mut attempt = 0;
        loop {
            let mut req = self.client.request(method.clone(), url);
            req = self.authenticate(req, url);
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            req = match body {
                None => req,
                Some(Body::Bytes(b)) => req.body(b.clone()),
                Some(Body::File(path, size)) => {
                    let f = tokio::fs::File::open(path)
                        .await
                        .map_err(io_err("opening", path))?;
                    // The length is set, so that the upload is not chunked
                    // (which simple servers do not take).
                    req.header(CONTENT_LENGTH, *size)
                        .body(reqwest::Body::wrap_stream(ReaderStream::with_capacity(
                            f, CHUNK_SIZE,
                        )))
                }
            };
            let (wait, failure) = match req.send().await {
                Ok(resp) if retryable_status(resp.status()) => {
                    let wait = retry_after(resp.headers());
                    (wait, self.status_error(&method, url, resp.status()))
                }
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_builder() => {
                    return Err(self.corrupt(format!("invalid request URL '{url}': {e}")))
                }
                // A certificate that does not verify will not verify on
                // the next try either.
                Err(e) if error_chain(&e).contains("certificate") => {
                    return Err(StoreError::Remote {
                        store: self.url.clone(),
                        message: format!("{method} {url}: {}", error_chain(&e)),
                    })
                }
                Err(e) => (
                    None,
                    self.connection(format!("{method} {url}: {}", error_chain(&e))),
                ),
            };
            if attempt >= self.retries {
                return Err(failure);
            }
            tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            attempt += 1;
        }
    }

    /// Adds credentials: the bearer token for the cache's own host, else
    /// netrc credentials for the request's host.
    fn authenticate(&self, req: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let Some(host) = host else { return req };
        match &self.auth.token {
            Some(token) if host == self.host => req.bearer_auth(token),
            _ => match self.auth.netrc.lookup(&host) {
                Some(c) => req.basic_auth(c.login, Some(c.password)),
                None => req,
            },
        }
    }

    /// The full URL of a narinfo `URL`: relative to the cache, or an
    /// absolute HTTP(S) URL (docs/formats.md §3.1).
    fn nar_url(&self, url: &str) -> Result<String, StoreError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(url.to_owned());
        }
        match relative_key(url) {
            Some(key) => Ok(self.url_of(key)),
            None => Err(self.corrupt(format!(
                "NAR URL '{url}' is neither relative to the cache nor an HTTP URL"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Blobs for Http {
    fn store_url(&self) -> &str {
        &self.url
    }

    fn locate(&self, key: &str) -> String {
        self.url_of(key)
    }

    /// A `GET` of a small file: `None` on 404 or 403, the body otherwise,
    /// which must be at most `limit` bytes. A connection that
    /// breaks while the body arrives is retried like one that breaks
    /// before the answer.
    async fn get_small(&self, rel: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let url = self.url_of(rel);
        let mut attempt = 0;
        let bytes = loop {
            let mut resp = self.send(Method::GET, &url, None, None).await?;
            match resp.status() {
                StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(None),
                s if s.is_success() => {}
                s => return Err(self.status_error(&Method::GET, &url, s)),
            }
            let mut bytes = Vec::new();
            let broken = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        if bytes.len() + chunk.len() > limit {
                            return Err(
                                self.corrupt(format!("'{url}' is longer than {limit} bytes"))
                            );
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            match broken {
                None => break bytes,
                Some(e) if attempt >= self.retries => {
                    return Err(self.connection(format!("GET {url}: {}", error_chain(&e))));
                }
                Some(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        Ok(Some(bytes))
    }

    /// Whether `rel` exists (`HEAD` answering 2xx).
    async fn exists(&self, rel: &str) -> Result<bool, StoreError> {
        let url = self.url_of(rel);
        let resp = self.send(Method::HEAD, &url, None, None).await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(self.status_error(&Method::HEAD, &url, s)),
        }
    }

    /// A `PUT` of `rel`, which must answer 2xx.
    async fn put(
        &self,
        rel: &str,
        content_type: &'static str,
        body: Body,
    ) -> Result<(), StoreError> {
        let url = self.url_of(rel);
        let resp = self
            .send(Method::PUT, &url, Some(content_type), Some(&body))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.status_error(&Method::PUT, &url, resp.status()))
        }
    }

    async fn get(&self, nar_url: &str) -> Result<Option<Download>, StoreError> {
        let url = self.nar_url(nar_url)?;
        let resp = self.send(Method::GET, &url, None, None).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(Download {
                length: resp.content_length(),
                body: Box::pin(body_reader(resp, self.url.clone(), url.clone())),
                location: url,
            })),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(None),
            s => Err(self.status_error(&Method::GET, &url, s)),
        }
    }
}

/// The body of `resp` as an async reader whose errors carry a retryable
/// [`StoreError::Connection`] naming `url`.
fn body_reader(
    resp: reqwest::Response,
    store: String,
    url: String,
) -> StreamReader<impl futures_util::Stream<Item = io::Result<bytes::Bytes>>, bytes::Bytes> {
    StreamReader::new(resp.bytes_stream().map_err(move |e| {
        io::Error::other(StoreError::Connection {
            store: store.clone(),
            message: format!("GET {url}: {}", error_chain(&e)),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let full = FIRST_BACKOFF
                .saturating_mul(1 << attempt.min(16))
                .min(MAX_BACKOFF);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_BACKOFF));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn params() {
        let open = |u: &str| HttpStore::open(&StoreUrl::parse(u).unwrap());
        let s = open("http://127.0.0.1:1/cache/?compression=zstd").unwrap();
        assert_eq!(s.base_url(), "http://127.0.0.1:1/cache");
        assert_eq!(s.compression(), &Compression::Zstd);
        assert_eq!(s.capabilities().writes_compression, Some(Compression::Zstd));
        for bad in [
            "http://h?timeout=0",
            "http://h?connect-timeout=x",
            "http://h?retries=-1",
            "http://h?compression=lz4",
            "http://h?netrc-file=/nonexistent/netrc",
        ] {
            assert!(open(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nar_urls() {
        let s = HttpStore::open(&StoreUrl::parse("https://c.example/x").unwrap()).unwrap();
        let i = &s.inner.blobs;
        assert_eq!(
            i.nar_url("nar/a.nar.xz").unwrap(),
            "https://c.example/x/nar/a.nar.xz"
        );
        assert_eq!(i.nar_url("http://o/n.nar").unwrap(), "http://o/n.nar");
        for bad in ["file:///etc/passwd", "/abs", "nar/../../x"] {
            assert!(i.nar_url(bad).is_err(), "{bad}");
        }
    }
}
