//! A binary cache in an S3 bucket (`s3://bucket[/prefix]`), in exactly the
//! layout of a `file://` cache (docs/formats.md §3.1), as Nix's `S3BinaryCacheStore`
//! reads and writes it; any S3-compatible service works (AWS, MinIO, Ceph,
//! R2, B2). Requests go through the `object_store` crate.
//!
//! # URL parameters
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `compression`, `compression-level`, `parallel-compression`, `write-nar-listing`, `secret-key`, `index-debug-info`, `trusted` | as for `file://` | how NAR files are written ([`super::file`]) |
//! | `want-mass-query`, `priority` | from `nix-cache-info` | override what the cache says |
//! | `region` | `$AWS_REGION`, `$AWS_DEFAULT_REGION`, the profile's, else `us-east-1` | the bucket's region |
//! | `endpoint` | `$AWS_ENDPOINT_URL_S3`, `$AWS_ENDPOINT_URL`, else AWS | an S3-compatible server: `host[:port]` or a URL; requests then use path-style addressing, as Nix's do |
//! | `scheme` | `https` | `http` or `https`, for an `endpoint` given without one |
//! | `profile` | see below | the profile of the shared credentials and config files to use |
//! | `buffer-size` | 8 MiB | the size of the parts of multipart uploads (at least 5 MiB, S3's minimum) |
//! | `multipart-upload` | | accepted for Nix's URLs: nixferry always uploads NAR files larger than `buffer-size` in parts |
//! | `retries` | `5` | nixferry's own: attempts after the first for a request that failed transiently |
//!
//! # Credentials
//!
//! Without `profile`, as the AWS SDKs look for them:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`)
//! from the environment, else the profile `$AWS_PROFILE` (or `default`) of
//! the shared credentials file (`$AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`) or of the config file (`$AWS_CONFIG_FILE`, else
//! `~/.aws/config`, where it is `[profile NAME]`), else what the machine
//! provides (web identity token, container or instance metadata). With
//! `profile=NAME`, only that profile of those files, which must exist (as
//! Nix does it).
//!
//! # Reading
//!
//! Narinfos are fetched in parallel, [`super::http::PARALLEL_REQUESTS`]
//! at a time; a narinfo stored with a `Content-Encoding` (Nix's
//! `narinfo-compression`) is decoded. NAR files are streamed. A missing
//! key (`NoSuchKey`) means the cache does not have the file; a missing
//! bucket, a refused signature or a denied access is an error that says
//! so.
//!
//! # Writing
//!
//! As for HTTP caches ([`super::http`]), with the same code: the NAR is
//! checked, compressed and hashed into a temporary file, then uploaded,
//! then the listing, and the narinfo last. A NAR file larger than
//! `buffer-size` is uploaded with a multipart upload whose parts are read
//! from that file and sent in parallel: at most [`PARTS_IN_FLIGHT`] parts,
//! over all uploads of the store, are in memory at once. An upload that
//! fails is aborted, and so is one whose copy is cancelled (the abort is
//! finished by [`Store::close`](super::Store::close)). Running uploads
//! are written down in a journal (`$XDG_STATE_HOME/nixferry/s3-uploads/`,
//! else `~/.local/state/nixferry/s3-uploads/`), so that the next run on the
//! same machine aborts those of a process that was killed, before its own
//! first upload to the bucket (no narinfo ever points to them). For
//! uploads that no run comes back to, an `AbortIncompleteMultipartUpload`
//! lifecycle rule on the bucket is the safety net; `cache verify` reports
//! them (`unfinished-upload`), and [`crate::cache::CacheFiles`] lists and
//! aborts them (`ListMultipartUploads`, which `object_store` lacks, is
//! sent signed through the same client).
//!
//! Content types are Nix's (`application/x-nix-nar`,
//! `text/x-nix-narinfo`, …). Payloads are not signed (as by Nix: requests
//! are; TLS protects the bodies on the way).
//!
//! # Errors and retries
//!
//! Errors are told apart by what the server answered: its status and the
//! `Code` of its S3 error document, never by the wording of a message.
//! Connection failures, timeouts, 5xx answers and throttling (503
//! `SlowDown`, 429) are tried again by `object_store`, `retries` times,
//! with exponential backoff; what still fails becomes
//! [`StoreError::Connection`], which the copy engine may retry as a
//! whole. Other answers are not tried again: 404 is a missing key (or,
//! with `NoSuchBucket`, a missing bucket, [`StoreError::Remote`]); 401
//! and 403 (wrong or missing credentials, denied access) become
//! [`StoreError::Login`], other refusals [`StoreError::Remote`].
//!
//! Small files (narinfos, `nix-cache-info`) are read only up to their
//! limit: reading stops, and fails, as soon as more has arrived, whatever
//! size the server declares.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector as _};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore,
    ObjectStoreExt as _, PutOptions, PutPayload, RetryConfig,
};
use tokio::sync::Semaphore;

mod failure;
mod unfinished;
mod upload;

use super::cache_writer::{io_err, CacheWriter};
use super::remote::{
    content_type, error_chain, relative_key, remote_store, retries_param, Blobs, Body, Download,
    RemoteCache,
};
use super::{url::Scheme, StoreError, StoreUrl, UrlError};
use crate::compression::{self, Compression};

/// Default of `buffer-size`: the size of multipart upload parts.
const DEFAULT_PART_SIZE: u64 = 8 << 20;

/// S3's smallest part (but the last).
const MIN_PART_SIZE: u64 = 5 << 20;

/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;

/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;

/// Parts being uploaded at once, over all uploads of a store: each is in
/// memory until sent.
pub const PARTS_IN_FLIGHT: usize = 4;

/// How long one request may take, body included: NAR downloads are
/// streamed within it (Nix's S3 store allows 10 minutes too).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary cache in an S3 bucket. See the [module docs](self).
///
/// Cloning is cheap and gives a handle to the same store.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<RemoteCache<S3>>,
}

remote_store!(S3Store);

/// Requests to the bucket.
#[derive(Debug)]
struct S3 {
    url: String,
    bucket: String,
    /// Prepended to every key: empty, or ending in `/`.
    prefix: String,
    client: AmazonS3,
    /// The bucket's URL (path-style: `{endpoint}/{bucket}`), for the
    /// requests `object_store` cannot make.
    bucket_url: String,
    region: String,
    /// The client's connections, for those requests.
    http: HttpClient,
    retries: u32,
    part_size: u64,
    /// Permits for parts in memory, shared by all uploads.
    parts: Arc<Semaphore>,
    /// Multipart uploads still to abort.
    aborts: Arc<Mutex<upload::Aborts>>,
    /// Where running multipart uploads are written down, if anywhere.
    journal: Option<upload::Journal>,
    /// Which server and bucket, as the journal names them.
    identity: String,
    /// Set once the uploads a dead process left are aborted.
    cleaned: tokio::sync::OnceCell<()>,
}

/// Static credentials.
#[derive(Default, PartialEq, Eq)]
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Opens the cache an `s3://bucket[/prefix]` URL names. Nothing is
    /// fetched yet: `nix-cache-info` is read on first use.
    ///
    /// # Errors
    /// [`StoreError::Url`] for a malformed URL or a parameter that is
    /// unknown or has a bad value; [`StoreError::Io`] if the secret key or
    /// a credentials file cannot be read; [`StoreError::Login`] if
    /// `profile` names a profile that is nowhere.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        Self::open_in(url, &|name| std::env::var_os(name))
    }

    /// [`Self::open`], in the environment `environ` gives the variables
    /// of.
    fn open_in(
        url: &StoreUrl,
        environ: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Self, StoreError> {
        if url.scheme() != Scheme::S3 {
            return Err(UrlError::Malformed {
                url: url.as_str().to_owned(),
                reason: "not an s3:// URL",
            }
            .into());
        }
        let location = url.location().trim_end_matches('/');
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        if bucket.is_empty() || Key::parse(&prefix).is_err() {
            return Err(UrlError::Malformed {
                url: url.as_str().to_owned(),
                reason: "expected s3://bucket or s3://bucket/prefix",
            }
            .into());
        }
        let (writer, want_mass_query, priority) = CacheWriter::for_remote(url)?;
        let retries = retries_param(url)?;
        let part_size = match url.int_param("buffer-size")? {
            None => DEFAULT_PART_SIZE,
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| (MIN_PART_SIZE..=MAX_PART_SIZE).contains(n))
                .ok_or_else(|| {
                    url.bad_value(
                        "buffer-size",
                        &n.to_string(),
                        "expected 5 MiB to 5 GiB, in bytes",
                    )
                })?,
        };
        url.bool_param("multipart-upload", true)?;

        let env = |name: &str| {
            environ(name)
                .and_then(|v| v.into_string().ok())
                .filter(|v| !v.is_empty())
        };
        let profile_param = url.param("profile").filter(|p| !p.is_empty());
        let profile_name = profile_param
            .map(str::to_owned)
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let files = AwsFiles::load(environ)?;
        let profile = files.profile(&profile_name);
        if profile_param.is_some() && profile.is_none() {
            return Err(StoreError::Login {
                store: url.as_str().to_owned(),
                message: format!(
                    "cannot log in: AWS profile '{profile_name}' is in neither {} nor {}",
                    files.credentials_path.display(),
                    files.config_path.display()
                ),
            });
        }
        let from_env = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret)) if profile_param.is_none() => Some(Credentials {
                key_id,
                secret,
                token: env("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        let credentials = from_env.or_else(|| profile.as_ref().and_then(Profile::credentials));
        let region = url
            .param("region")
            .map(str::to_owned)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.as_ref().and_then(|p| p.get("region")))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = match url.param("endpoint").filter(|e| !e.is_empty()) {
            Some(e) => Some(endpoint_url(url, e)?),
            None => env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")),
        };

        let identity = format!(
            "{} {bucket}",
            endpoint.as_deref().unwrap_or(&format!("aws:{region}"))
        );
        // Requests are path-style: to `{endpoint}/{bucket}/{key}`, AWS's
        // endpoint being the region's.
        let connector = failure::Connector::new(
            endpoint
                .as_deref()
                .unwrap_or(&format!("https://s3.{region}.amazonaws.com")),
            bucket,
        );
        let mut options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_allow_http(
                endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        // Content types for uploads that cannot carry them (multipart
        // uploads are started without attributes), by the key's suffix.
        for ext in ["nar", "xz", "zst", "bz2", "br"] {
            options = options.with_content_type_for_suffix(ext, content_type::NAR);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: retries as usize,
            retry_timeout: Duration::from_secs(180),
        };
        let bucket_url = connector.bucket_url().to_owned();
        let setup_failed = |e: object_store::Error| StoreError::Connection {
            store: url.as_str().to_owned(),
            message: format!("cannot set up the S3 client: {e}"),
        };
        let http = connector.connect(&options).map_err(setup_failed)?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_client_options(options)
            .with_retry(retry)
            .with_http_connector(connector)
            .with_unsigned_payload(true);
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(c) = credentials {
            builder = builder
                .with_access_key_id(c.key_id)
                .with_secret_access_key(c.secret);
            if let Some(token) = c.token {
                builder = builder.with_token(token);
            }
        }
        let client = builder.build().map_err(setup_failed)?;
        let s3 = S3 {
            url: url.as_str().to_owned(),
            bucket: bucket.to_owned(),
            prefix,
            client,
            bucket_url,
            region,
            http,
            retries,
            part_size,
            parts: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
            aborts: Arc::default(),
            journal: upload::Journal::open(),
            identity,
            cleaned: tokio::sync::OnceCell::new(),
        };
        Ok(Self {
            inner: Arc::new(RemoteCache::new(
                s3,
                writer,
                want_mass_query,
                priority,
                "nixferry-s3",
            )),
        })
    }

    /// The cache's files, for [`crate::cache`].
    pub(crate) fn files(&self) -> Arc<dyn crate::cache::CacheFiles> {
        Arc::new(super::remote::BlobFiles(Arc::clone(&self.inner)))
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.inner.blobs.bucket
    }

    /// The compression NAR files are written with.
    pub fn compression(&self) -> &Compression {
        self.inner.compression()
    }
}

/// The URL of an `endpoint` parameter: as given if it has a scheme, else
/// with the `scheme` parameter's.
fn endpoint_url(url: &StoreUrl, endpoint: &str) -> Result<String, UrlError> {
    if endpoint.contains("://") {
        return Ok(endpoint.trim_end_matches('/').to_owned());
    }
    let scheme = match url.param("scheme") {
        None | Some("https") => "https",
        Some("http") => "http",
        Some(other) => return Err(url.bad_value("scheme", other, "expected http or https")),
    };
    Ok(format!("{scheme}://{}", endpoint.trim_end_matches('/')))
}

/// The shared credentials and config files of the AWS tools.
struct AwsFiles {
    credentials_path: PathBuf,
    config_path: PathBuf,
    /// Sections of the credentials file, by profile name.
    credentials: BTreeMap<String, BTreeMap<String, String>>,
    /// Sections of the config file, by profile name.
    config: BTreeMap<String, BTreeMap<String, String>>,
}

/// One profile's settings, from both files.
struct Profile {
    /// Credentials file first, then config file.
    sections: Vec<BTreeMap<String, String>>,
}

impl Profile {
    fn get(&self, key: &str) -> Option<String> {
        self.sections.iter().find_map(|s| s.get(key).cloned())
    }

    /// The profile's static credentials, taken together from the first
    /// file that has a key id.
    fn credentials(&self) -> Option<Credentials> {
        self.sections.iter().find_map(|s| {
            Some(Credentials {
                key_id: s.get("aws_access_key_id")?.clone(),
                secret: s.get("aws_secret_access_key")?.clone(),
                token: s.get("aws_session_token").cloned(),
            })
        })
    }
}

impl AwsFiles {
    /// Reads both files; a file that does not exist is empty.
    fn load(environ: &dyn Fn(&str) -> Option<OsString>) -> Result<Self, StoreError> {
        let home = environ("HOME").map_or_else(PathBuf::new, PathBuf::from);
        let path = |var: &str, default: &str| {
            environ(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| home.join(".aws").join(default), PathBuf::from)
        };
        let credentials_path = path("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_path = path("AWS_CONFIG_FILE", "config");
        let credentials = parse_ini(&read_optional(&credentials_path)?);
        let config = parse_ini(&read_optional(&config_path)?)
            .into_iter()
            .filter_map(|(name, section)| {
                // The config file names profiles `[profile NAME]`, except
                // `[default]`.
                let name = match name.strip_prefix("profile ") {
                    Some(n) => n.trim().to_owned(),
                    None if name == "default" => name,
                    None => return None,
                };
                Some((name, section))
            })
            .collect();
        Ok(Self {
            credentials_path,
            config_path,
            credentials,
            config,
        })
    }

    fn profile(&self, name: &str) -> Option<Profile> {
        let sections: Vec<_> = [self.credentials.get(name), self.config.get(name)]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        (!sections.is_empty()).then_some(Profile { sections })
    }
}

/// A file's text, empty if it does not exist.
fn read_optional(path: &Path) -> Result<String, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(io_err("reading", path)(source)),
    }
}

/// The sections of an INI file as the AWS tools write them: `[name]`
/// headers, `key = value` lines, `#` and `;` comments. Keys before the
/// first header, and indented lines (nested settings), are ignored.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            if let Some(s) = sections.get_mut(section) {
                s.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }
    sections
}

impl S3 {
    fn key(&self, key: &str) -> Result<Key, StoreError> {
        Key::parse(format!("{}{key}", self.prefix)).map_err(|e| StoreError::Corrupt {
            store: self.url.clone(),
            message: format!("invalid key '{key}': {e}"),
        })
    }

    /// The [`StoreError`] for a failed request about `key`: `None` for a
    /// key that does not exist (but the bucket does). What the server
    /// answered decides: a 404 is a missing key, or with the code
    /// `NoSuchBucket` a missing bucket; 401 and 403 are refused
    /// credentials or access; other answers that trying again will not
    /// change are refusals; the rest (no answer, 5xx, throttling) may
    /// pass.
    fn error(&self, what: &str, key: &str, e: object_store::Error) -> Option<StoreError> {
        let store = self.url.clone();
        let at = self.locate(key);
        let answer = failure::Failure::of(&e);
        let message = match answer {
            Some(f) => format!("{what} {at}: {f}"),
            None => format!("{what} {at}: {}", error_chain(&e)),
        };
        if answer.and_then(|f| f.code.as_deref()) == Some("NoSuchBucket") {
            return Some(StoreError::Remote {
                store,
                message: format!("bucket '{}' does not exist: {message}", self.bucket),
            });
        }
        Some(match failure::status(&e) {
            Some(404) => return None,
            Some(401 | 403) => StoreError::Login {
                store,
                message: format!("cannot log in: {message}"),
            },
            Some(status) if !failure::transient(status) => StoreError::Remote { store, message },
            _ => StoreError::Connection { store, message },
        })
    }

    /// Like [`Self::error`], for a request where a missing key is an error
    /// too.
    fn failed(&self, what: &str, key: &str, e: object_store::Error) -> StoreError {
        self.error(what, key, e)
            .unwrap_or_else(|| StoreError::Remote {
                store: self.url.clone(),
                message: format!("{what} {}: not found", self.locate(key)),
            })
    }

    /// Attributes of an upload.
    fn attributes(content_type: &'static str) -> Attributes {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, content_type.into());
        a
    }

    async fn put_bytes(
        &self,
        key: &str,
        content_type: &'static str,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let opts = PutOptions {
            attributes: Self::attributes(content_type),
            ..PutOptions::default()
        };
        self.client
            .put_opts(&self.key(key)?, PutPayload::from(data), opts)
            .await
            .map_err(|e| self.failed("PUT", key, e))?;
        Ok(())
    }

    /// The failure of an upload of `key` for a reason of nixferry's own.
    fn upload_failed(&self, key: &str, why: &str) -> StoreError {
        StoreError::Io {
            what: "uploading",
            path: self.locate(key),
            source: std::io::Error::other(why),
        }
    }
}

/// Decodes a small file stored with a `Content-Encoding` (Nix's
/// `narinfo-compression` and `ls-compression`), reading at most `limit`
/// bytes of it.
fn decode_small(encoding: &str, data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let c = Compression::parse(encoding);
    if !compression::is_supported(&c) {
        return Err(format!("unsupported Content-Encoding '{encoding}'"));
    }
    let mut dec = compression::decoder(&c, data).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    (&mut dec)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot decode ({encoding}): {e}"))?;
    if out.len() > limit {
        return Err(format!("longer than {limit} bytes once decoded"));
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Blobs for S3 {
    fn store_url(&self) -> &str {
        &self.url
    }

    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    /// The object's body, read until more than `limit` bytes have
    /// arrived (the size the server declares is not trusted); a body that
    /// breaks off is fetched again.
    async fn get_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.key(key)?;
        let at = self.locate(key);
        let corrupt = |message| StoreError::Corrupt {
            store: self.url.clone(),
            message,
        };
        let mut attempt = 0;
        loop {
            let got = match self.client.get_opts(&path, GetOptions::default()).await {
                Ok(got) => got,
                Err(e) => return self.error("GET", key, e).map_or(Ok(None), Err),
            };
            let encoding = got
                .attributes
                .get(&Attribute::ContentEncoding)
                .map(|v| v.to_string())
                .filter(|e| !e.is_empty() && e != "identity");
            let mut body = got.into_stream();
            let mut data = Vec::new();
            let broken = loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        if chunk.len() > limit - data.len() {
                            return Err(corrupt(format!("'{at}' is longer than {limit} bytes")));
                        }
                        data.extend_from_slice(&chunk);
                    }
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            match broken {
                None => {
                    return match encoding {
                        None => Ok(Some(data)),
                        Some(enc) => decode_small(&enc, &data, limit)
                            .map(Some)
                            .map_err(|e| corrupt(format!("'{at}': {e}"))),
                    };
                }
                // The body broke on the way: fetch it again.
                Some(e) if attempt >= self.retries => return Err(self.failed("GET", key, e)),
                Some(_) => attempt += 1,
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.client.head(&self.key(key)?).await {
            Ok(_) => Ok(true),
            Err(e) => self.error("HEAD", key, e).map_or(Ok(false), Err),
        }
    }

    async fn put(
        &self,
        key: &str,
        content_type: &'static str,
        body: Body,
    ) -> Result<(), StoreError> {
        match body {
            Body::Bytes(data) => self.put_bytes(key, content_type, data).await,
            Body::File(path, size) if size > self.part_size => {
                self.put_multipart(key, &path, size).await
            }
            Body::File(path, _) => {
                let data = tokio::fs::read(&path)
                    .await
                    .map_err(io_err("reading", &path))?;
                self.put_bytes(key, content_type, data).await
            }
        }
    }

    async fn get(&self, nar_url: &str) -> Result<Option<Download>, StoreError> {
        let Some(key) = relative_key(nar_url) else {
            return Err(StoreError::Corrupt {
                store: self.url.clone(),
                message: format!("NAR URL '{nar_url}' is not a key relative to the cache"),
            });
        };
        let got = match self
            .client
            .get_opts(&self.key(key)?, GetOptions::default())
            .await
        {
            Ok(got) => got,
            Err(e) => return self.error("GET", key, e).map_or(Ok(None), Err),
        };
        let location = self.locate(key);
        let length = Some(got.meta.size);
        let store = self.url.clone();
        let at = location.clone();
        let stream = got.into_stream().map(move |chunk| {
            chunk.map_err(|e| {
                std::io::Error::other(StoreError::Connection {
                    store: store.clone(),
                    message: format!("GET {at}: {}", error_chain(&e)),
                })
            })
        });
        Ok(Some(Download {
            location,
            length,
            body: Box::pin(tokio_util::io::StreamReader::new(stream)),
        }))
    }

    fn can_list(&self) -> bool {
        true
    }

    async fn list(&self, prefix: &str) -> Result<Vec<crate::cache::FileEntry>, StoreError> {
        // object_store lists by directory: list the one the prefix is in
        // and keep the keys that start with it.
        let dir_rel = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let dir = format!("{}{dir_rel}", self.prefix);
        let dir = dir.trim_end_matches('/');
        let dir = if dir.is_empty() {
            None
        } else {
            Some(Key::parse(dir).map_err(|e| StoreError::Corrupt {
                store: self.url.clone(),
                message: format!("invalid key '{prefix}': {e}"),
            })?)
        };
        let mut listing = self.client.list(dir.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.failed("LIST", prefix, e))?;
            let Some(key) = meta.location.as_ref().strip_prefix(&self.prefix) else {
                continue;
            };
            if key.starts_with(prefix) {
                out.push(crate::cache::FileEntry {
                    key: key.to_owned(),
                    size: meta.size,
                    modified: Some(meta.last_modified.into()),
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.client.delete(&self.key(key)?).await {
            Ok(()) => Ok(()),
            Err(e) => self.error("DELETE", key, e).map_or(Ok(()), Err),
        }
    }

    async fn list_uploads(&self) -> Result<Vec<crate::cache::UploadEntry>, StoreError> {
        self.unfinished_uploads().await
    }

    async fn abort_upload(&self, upload: &crate::cache::UploadEntry) -> Result<(), StoreError> {
        self.abort_unfinished(upload).await
    }

    /// Waits for the aborts of cancelled uploads, then tries once more to
    /// abort those whose abort failed (the server may be back). What
    /// still fails is left to the bucket's lifecycle rules.
    async fn close(&self) {
        self.finish_aborts().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::narinfo::MAX_NARINFO_LEN;

    #[test]
    fn ini_files() {
        let text = "# comment\n[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n\
                    [profile other]\nregion = eu-west-1\ns3 =\n  max_concurrent_requests = 2\n";
        let s = parse_ini(text);
        assert_eq!(s["default"]["aws_access_key_id"], "A");
        assert_eq!(s["default"]["aws_secret_access_key"], "B");
        assert_eq!(s["profile other"]["region"], "eu-west-1");
        assert!(!s["profile other"].contains_key("max_concurrent_requests"));
    }

    #[test]
    fn profiles_take_credentials_from_one_file() {
        let p = Profile {
            sections: vec![
                [("region", "r")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                [("aws_access_key_id", "K"), ("aws_secret_access_key", "S")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ],
        };
        let c = p.credentials().unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret.as_str(), c.token),
            ("K", "S", None)
        );
        assert_eq!(p.get("region").as_deref(), Some("r"));
    }

    #[test]
    fn urls() {
        let open = |u: &str| S3Store::open(&StoreUrl::parse(u).unwrap());
        let s = open("s3://b/some/prefix/?endpoint=127.0.0.1:9000&scheme=http&compression=zstd")
            .unwrap();
        assert_eq!(s.bucket(), "b");
        assert_eq!(s.inner.blobs.prefix, "some/prefix/");
        assert_eq!(
            s.inner.blobs.locate("x.narinfo"),
            "s3://b/some/prefix/x.narinfo"
        );
        assert_eq!(s.compression(), &Compression::Zstd);
        for bad in [
            "s3://b?scheme=ftp&endpoint=h",
            "s3://b?buffer-size=1024",
            "s3://b?retries=x",
            "s3://b?profile=surely-no-such-profile-here",
            "s3://b?colour=blue",
        ] {
            assert!(StoreUrl::parse(bad).is_err() || open(bad).is_err(), "{bad}");
        }
        let u = StoreUrl::parse("s3://b?endpoint=h:1").unwrap();
        assert_eq!(endpoint_url(&u, "h:1").unwrap(), "https://h:1");
        assert_eq!(endpoint_url(&u, "http://h:1/").unwrap(), "http://h:1");
    }

    /// A server on 127.0.0.1 that answers each request with what `answer`
    /// gives for its method and path (head and body, the connection
    /// closed after it), and writes the requests down.
    struct Canned {
        port: u16,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl Canned {
        fn start(answer: fn(&str, &str) -> Vec<u8>) -> Self {
            use std::io::{BufRead as _, Write as _};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let mut head = std::io::BufReader::new(conn.try_clone().unwrap());
                    let mut first = String::new();
                    if head.read_line(&mut first).is_err() {
                        continue;
                    }
                    let mut line = String::new();
                    while head.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let mut words = first.split(' ');
                    let method = words.next().unwrap_or("").to_owned();
                    let path = words.next().unwrap_or("").to_owned();
                    seen.lock().unwrap().push(format!("{method} {path}"));
                    let _ = conn.write_all(&answer(&method, &path));
                }
            });
            Self { port, requests }
        }

        /// An S3 store of `bucket` on this server, with static
        /// credentials and 2 retries.
        fn store(&self, bucket: &str) -> S3Store {
            let url = format!(
                "s3://{bucket}?endpoint=127.0.0.1:{}&scheme=http&retries=2",
                self.port
            );
            let env = |name: &str| {
                let value = match name {
                    "AWS_ACCESS_KEY_ID" => "id",
                    "AWS_SECRET_ACCESS_KEY" => "secret",
                    "AWS_SHARED_CREDENTIALS_FILE" | "AWS_CONFIG_FILE" => "/nonexistent",
                    _ => return None,
                };
                Some(OsString::from(value))
            };
            S3Store::open_in(&StoreUrl::parse(&url).unwrap(), &env).unwrap()
        }

        /// How many requests were `METHOD /path`.
        fn count(&self, request: &str) -> usize {
            let requests = self.requests.lock().unwrap();
            requests.iter().filter(|r| *r == request).count()
        }
    }

    /// An answer with an S3 error document.
    fn error_answer(status: &str, code: &str) -> Vec<u8> {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Error><Code>{code}</Code><Message>said &amp; meant</Message></Error>"
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn answer(method: &str, path: &str) -> Vec<u8> {
        let plain = |head: &str, body: &[u8]| {
            let mut a = format!("HTTP/1.1 {head}\r\nConnection: close\r\n\r\n").into_bytes();
            a.extend_from_slice(body);
            a
        };
        match (method, path) {
            ("HEAD", _) => plain("404 Not Found\r\nContent-Length: 0", b""),
            (_, "/b/ok") => plain("200 OK\r\nContent-Length: 5", b"hello"),
            (_, "/b/denied") => error_answer("403 Forbidden", "SignatureDoesNotMatch"),
            (_, "/b/bad") => error_answer("400 Bad Request", "InvalidArgument"),
            (_, "/b/busy") => error_answer("503 Service Unavailable", "SlowDown"),
            (_, "/b/throttled") => error_answer("429 Too Many Requests", "SlowDown"),
            (_, "/b/moved") => error_answer("301 Moved Permanently", "PermanentRedirect"),
            (_, "/b/huge") => {
                // Declares a terabyte; sends a little more than the limit.
                plain(
                    "200 OK\r\nContent-Length: 1099511627776",
                    &vec![b'x'; MAX_NARINFO_LEN + 4096],
                )
            }
            (_, p) if p.starts_with("/b/") => error_answer("404 Not Found", "NoSuchKey"),
            _ => error_answer("404 Not Found", "NoSuchBucket"),
        }
    }

    /// Errors are classified by the status and S3 code the server
    /// answered, and only what may pass is retried.
    #[tokio::test]
    async fn answers_decide() {
        let server = Canned::start(answer);
        let s3 = &server.store("b").inner.blobs;
        let get = |key: &'static str| s3.get_small(key, MAX_NARINFO_LEN);

        assert_eq!(get("ok").await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(get("missing").await.unwrap(), None);
        assert!(!s3.exists("missing").await.unwrap());

        let e = get("denied").await.unwrap_err();
        assert!(matches!(e, StoreError::Login { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("403 Forbidden: SignatureDoesNotMatch: said & meant"),
            "{e}"
        );
        for key in ["bad", "moved"] {
            let e = get(key).await.unwrap_err();
            assert!(matches!(e, StoreError::Remote { .. }), "{key}: {e}");
        }
        for key in ["busy", "throttled"] {
            let e = get(key).await.unwrap_err();
            assert!(matches!(e, StoreError::Connection { .. }), "{key}: {e}");
            assert!(e.to_string().contains("SlowDown"), "{e}");
        }
        let e = s3
            .put("denied", content_type::NARINFO, Body::Bytes(b"x".to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Login { .. }), "{e}");

        // Refusals are asked once; what may pass, once and twice again.
        for (request, times) in [
            ("GET /b/denied", 1),
            ("GET /b/bad", 1),
            ("GET /b/moved", 1),
            ("GET /b/missing", 1),
            ("GET /b/busy", 3),
            ("GET /b/throttled", 3),
        ] {
            assert_eq!(server.count(request), times, "{request}");
        }

        let other = server.store("nobucket");
        let e = other
            .inner
            .blobs
            .get_small("x", MAX_NARINFO_LEN)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Remote { .. }), "{e}");
        assert!(
            e.to_string().contains("bucket 'nobucket' does not exist"),
            "{e}"
        );
    }

    /// A small file is read only as far as the limit, whatever size the
    /// server declares.
    #[tokio::test]
    async fn small_files_are_bounded_by_what_arrives() {
        let server = Canned::start(answer);
        let s3 = &server.store("b").inner.blobs;
        let e = s3.get_small("huge", MAX_NARINFO_LEN).await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("longer than"), "{e}");
        assert_eq!(server.count("GET /b/huge"), 1);
        let e = s3.get_small("ok", 4).await.unwrap_err();
        assert!(e.to_string().contains("longer than 4 bytes"), "{e}");
    }

    /// Answers about multipart upload listings: two pages under `p/`, and
    /// buckets that fail in one way each.
    fn listing_answer(method: &str, path: &str) -> Vec<u8> {
        let xml = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let root = |inner: &str| {
            format!("<ListMultipartUploadsResult>{inner}</ListMultipartUploadsResult>")
        };
        match (method, path) {
            ("GET", "/b?uploads&prefix=p%2F") => xml(&root(
                "<IsTruncated>true</IsTruncated>\
                 <NextKeyMarker>p/nar/a b.nar</NextKeyMarker>\
                 <NextUploadIdMarker>1</NextUploadIdMarker>\
                 <Upload><Key>p/nar/a b.nar</Key><UploadId>1</UploadId>\
                 <Initiated>2020-01-01T00:00:00.000Z</Initiated></Upload>",
            )),
            ("GET", "/b?uploads&prefix=p%2F&key-marker=p%2Fnar%2Fa%20b.nar&upload-id-marker=1") => {
                xml(&root(
                    "<IsTruncated>false</IsTruncated>\
                     <Upload><Key>p/nar/c.nar</Key><UploadId>2</UploadId></Upload>",
                ))
            }
            ("DELETE", p) if p.starts_with("/b/p/nar/") => {
                error_answer("404 Not Found", "NoSuchUpload")
            }
            ("GET", p) if p.starts_with("/busy?uploads") => {
                error_answer("503 Service Unavailable", "SlowDown")
            }
            ("GET", p) if p.starts_with("/denied?uploads") => {
                error_answer("403 Forbidden", "AccessDenied")
            }
            ("GET", p) if p.starts_with("/stuck?uploads") => {
                xml(&root("<IsTruncated>true</IsTruncated>"))
            }
            ("GET", p) if p.starts_with("/junk?uploads") => xml("<html></html>"),
            _ => error_answer("404 Not Found", "NoSuchBucket"),
        }
    }

    /// Unfinished uploads are listed page by page, keyed relative to the
    /// cache; an abort of one that is gone succeeds; failures are told
    /// apart as for other requests.
    #[tokio::test]
    async fn unfinished_uploads() {
        let server = Canned::start(listing_answer);
        let files = server.store("b/p").files();
        let uploads = files.list_uploads().await.unwrap();
        let got: Vec<_> = uploads
            .iter()
            .map(|u| (u.key.as_str(), u.id.as_str(), u.initiated))
            .collect();
        let new_year = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
        assert_eq!(
            got,
            [
                ("nar/a b.nar", "1", Some(new_year)),
                ("nar/c.nar", "2", None)
            ]
        );
        files.abort_upload(&uploads[0]).await.unwrap();
        assert_eq!(server.count("DELETE /b/p/nar/a%20b.nar?uploadId=1"), 1);

        let list = |bucket: &str| server.store(bucket).files();
        let e = list("busy").list_uploads().await.unwrap_err();
        assert!(matches!(e, StoreError::Connection { .. }), "{e}");
        assert!(e.to_string().contains("SlowDown"), "{e}");
        assert_eq!(server.count("GET /busy?uploads"), 3);
        let e = list("denied").list_uploads().await.unwrap_err();
        assert!(matches!(e, StoreError::Login { .. }), "{e}");
        assert!(
            e.to_string().contains(
                "listing the multipart uploads under s3://denied/: 403 Forbidden: AccessDenied"
            ),
            "{e}"
        );
        assert_eq!(server.count("GET /denied?uploads"), 1);
        for bucket in ["stuck", "junk", "nobucket"] {
            let e = list(bucket).list_uploads().await.unwrap_err();
            assert!(matches!(e, StoreError::Remote { .. }), "{bucket}: {e}");
        }
    }

    #[test]
    fn encoded_narinfos() {
        let mut xz = Vec::new();
        {
            let mut e = compression::encoder(&Compression::Xz, None, 1, &mut xz).unwrap();
            std::io::Write::write_all(&mut e, b"StorePath: x\n").unwrap();
            e.finish().unwrap();
        }
        assert_eq!(decode_small("xz", &xz, 100).unwrap(), b"StorePath: x\n");
        assert!(decode_small("xz", &xz, 5).is_err());
        assert!(decode_small("compress", &xz, 100).is_err());
    }
}
