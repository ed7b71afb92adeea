//! What binary caches kept away from the local file system have in common:
//! HTTP servers and S3 buckets hold the same files as a `file://` cache
//! (docs/formats.md §3.1) and differ only in how a file is fetched, looked for and
//! uploaded. [`RemoteCache`] implements the binary cache on top of the
//! few operations of [`Blobs`] that each of them provides.
//!
//! Reading: `nix-cache-info` on first use (its `StoreDir` must be this
//! store's; a cache without one is read as one for `/nix/store`), then
//! narinfos, [`PARALLEL_REQUESTS`] at a time, a narinfo naming another path
//! with the same hash part counting as absent (docs/formats.md §3.1), and NAR files
//! streamed and decompressed on a blocking thread as `file://` does it.
//!
//! Writing, as Nix does: the NAR is first read through the strict NAR
//! decoder, checked against the path info, compressed and hashed into a
//! temporary file by the same code as `file://` uses, which gives the
//! file's name `nar/<fileHash>.nar<ext>`; that file is uploaded unless the
//! cache has it already, then the `.ls` listing if asked, and the narinfo
//! last, so a reader never sees a narinfo whose NAR is missing. A path
//! whose narinfo exists is skipped. A cache without `nix-cache-info` gets
//! one before the first upload.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt as _;
use tokio::io::AsyncReadExt as _;
use tokio::sync::OnceCell;
use tokio_util::io::SyncIoBridge;

use super::cache_writer::{CacheWriter, FileFacts, StagedNar};
use super::chunks::{blocking_stream, CHUNK_SIZE};
use super::{Capabilities, CompressedNar, NarStream, PathInfo, StoreError, StoreUrl, UrlError};
use crate::compression::{self, Compression};
use crate::narinfo::{CacheInfo, NarInfo, MAX_NARINFO_LEN};
use crate::store_path::{is_hash_part, StoreDir, StorePath};

/// Requests of one batched question that run at once.
#[cfg_attr(not(feature = "http"), allow(unreachable_pub))]
pub const PARALLEL_REQUESTS: usize = 32;

/// Default of the `retries` parameter.
const DEFAULT_RETRIES: u32 = 5;

/// The `retries` parameter: attempts after the first for a request that
/// failed transiently, 0 to 100.
pub(crate) fn retries_param(url: &StoreUrl) -> Result<u32, UrlError> {
    match url.int_param("retries")? {
        None => Ok(DEFAULT_RETRIES),
        Some(r) => u32::try_from(r)
            .ok()
            .filter(|r| *r <= 100)
            .ok_or_else(|| url.bad_value("retries", &r.to_string(), "expected 0 to 100")),
    }
}

/// Content types of the files of a binary cache, as Nix sets them.
pub(crate) mod content_type {
    pub(crate) const NAR: &str = "application/x-nix-nar";
    pub(crate) const LISTING: &str = "application/json";
    pub(crate) const NARINFO: &str = "text/x-nix-narinfo";
    pub(crate) const CACHE_INFO: &str = "text/x-nix-cache-info";
}

/// What to upload.
#[derive(Debug)]
pub(crate) enum Body {
    /// Bytes in memory (narinfos, listings, `nix-cache-info`).
    Bytes(Vec<u8>),
    /// A file of this size, streamed from disk (a staged NAR file).
    File(PathBuf, u64),
}

/// A file being downloaded.
pub(crate) struct Download {
    /// Where it comes from, for messages.
    pub(crate) location: String,
    /// Its length, if the server said.
    pub(crate) length: Option<u64>,
    /// Its content, whose read errors are [`StoreError`]s (wrapped in
    /// `io::Error`) saying whether trying again may help.
    pub(crate) body: NarStream,
}

/// The operations a remote binary cache is built on. Keys are paths
/// relative to the cache's root, as in narinfo `URL`s (`nar/…`,
/// `<hashPart>.narinfo`). Each implementation retries what may pass on
/// its own.
#[async_trait::async_trait]
pub(crate) trait Blobs: Send + Sync + fmt::Debug + 'static {
    /// The store URL, for errors.
    fn store_url(&self) -> &str;

    /// Where `key` is, for messages (a URL).
    fn locate(&self, key: &str) -> String;

    /// The whole of a small file: `None` if the cache does not have it, an
    /// error if it is longer than `limit` bytes. The limit holds for the
    /// bytes that arrive, read as they come: the reading stops at the
    /// first byte over it, and a length the server declares is neither
    /// trusted nor used to allocate.
    async fn get_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether the cache has `key`.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;

    /// Uploads `key`, replacing what is there.
    async fn put(
        &self,
        key: &str,
        content_type: &'static str,
        body: Body,
    ) -> Result<(), StoreError>;

    /// Starts the download of the file a narinfo `URL` names: `None` if
    /// the cache does not have it. A URL the backend cannot follow is
    /// [`StoreError::Corrupt`].
    async fn get(&self, nar_url: &str) -> Result<Option<Download>, StoreError>;

    /// Every file whose key starts with `prefix`, for caches that can
    /// list their files.
    async fn list(&self, prefix: &str) -> Result<Vec<crate::cache::FileEntry>, StoreError> {
        let _ = prefix;
        Err(StoreError::Unsupported {
            store: self.store_url().to_owned(),
            what: "listing its files",
        })
    }

    /// Removes `key`; a key that is not there is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let _ = key;
        Err(StoreError::Unsupported {
            store: self.store_url().to_owned(),
            what: "deleting files",
        })
    }

    /// Multipart uploads under the cache that were begun and neither
    /// completed nor aborted, keyed like [`Blobs::list`]'s files; none
    /// for a cache without them.
    async fn list_uploads(&self) -> Result<Vec<crate::cache::UploadEntry>, StoreError> {
        Ok(Vec::new())
    }

    /// Aborts a multipart upload [`Blobs::list_uploads`] gave; one already
    /// gone is no error.
    async fn abort_upload(&self, upload: &crate::cache::UploadEntry) -> Result<(), StoreError> {
        let _ = upload;
        Err(StoreError::Unsupported {
            store: self.store_url().to_owned(),
            what: "aborting multipart uploads",
        })
    }

    /// Whether [`Blobs::list`] and [`Blobs::delete`] work, and
    /// [`Blobs::put`] may be used by the cache's maintenance.
    fn can_list(&self) -> bool {
        false
    }

    /// Finishes what is pending (such as cancelled uploads to clean up).
    async fn close(&self) {}
}

/// An error with its causes, `: `-separated; a cause whose text is in
/// the message already (as some libraries repeat it) is left out.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// A narinfo `URL` that is a path inside the cache: relative, without
/// `..` components or a scheme (docs/formats.md §3.1). URL parsers (the
/// HTTP client's among them) also read `\` as `/` and `%2e` as `.`, so
/// those spellings of a climb out of the cache are refused too.
pub(crate) fn relative_key(url: &str) -> Option<&str> {
    let dot_dot = |c: &str| c.to_ascii_lowercase().replace("%2e", ".") == "..";
    let inside = !url.is_empty()
        && !url.contains("://")
        && !url.starts_with(['/', '\\'])
        && !url.split(['/', '\\']).any(dot_dot);
    inside.then_some(url)
}

/// A binary cache on top of [`Blobs`]. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct RemoteCache<B> {
    pub(crate) blobs: B,
    store_dir: StoreDir,
    writer: CacheWriter,
    want_mass_query: Option<bool>,
    priority: Option<i64>,
    /// A prefix for the names of temporary NAR files.
    tmp_prefix: &'static str,
    cache_info: OnceCell<CacheInfo>,
    /// Set once the cache is known to have a `nix-cache-info`.
    cache_info_exists: OnceCell<()>,
}

impl<B: Blobs> RemoteCache<B> {
    /// A cache reached through `blobs`, with the parameters every binary
    /// cache URL takes already read into `writer`; `want-mass-query` and
    /// `priority` from the URL, if given, override the cache's.
    pub(crate) fn new(
        blobs: B,
        writer: CacheWriter,
        want_mass_query: Option<bool>,
        priority: Option<i64>,
        tmp_prefix: &'static str,
    ) -> Self {
        Self {
            blobs,
            store_dir: StoreDir::default(),
            writer,
            want_mass_query,
            priority,
            tmp_prefix,
            cache_info: OnceCell::new(),
            cache_info_exists: OnceCell::new(),
        }
    }

    pub(crate) fn url(&self) -> &str {
        self.blobs.store_url()
    }

    pub(crate) fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    pub(crate) fn compression(&self) -> &Compression {
        self.writer.compression()
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        self.writer.capabilities()
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            store: self.url().to_owned(),
            message,
        }
    }

    /// A small text file: `None` if absent, an error if not UTF-8.
    async fn get_text(&self, key: &str, limit: usize) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self.blobs.get_small(key, limit).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| self.corrupt(format!("'{}' is not UTF-8", self.blobs.locate(key))))
    }

    /// `nix-cache-info`, fetched once, with `want-mass-query` and
    /// `priority` from the URL taking precedence.
    pub(crate) async fn cache_info(&self) -> Result<&CacheInfo, StoreError> {
        self.cache_info
            .get_or_try_init(|| async {
                let text = self.get_text("nix-cache-info", MAX_NARINFO_LEN).await?;
                let mut info = match text {
                    Some(text) => {
                        let at = self.blobs.locate("nix-cache-info");
                        let corrupt = |e: &dyn fmt::Display| self.corrupt(format!("'{at}': {e}"));
                        let info = CacheInfo::parse(&text).map_err(|e| corrupt(&e))?;
                        info.check_store_dir(&self.store_dir)
                            .map_err(|e| corrupt(&e))?;
                        // Known to exist: no need to write it.
                        let _ = self.cache_info_exists.set(());
                        info
                    }
                    None => CacheInfo::new(self.store_dir.clone()),
                };
                if let Some(w) = self.want_mass_query {
                    info.want_mass_query = w;
                }
                if self.priority.is_some() {
                    info.priority = self.priority;
                }
                Ok(info)
            })
            .await
    }

    /// Uploads `nix-cache-info` before the first write to a cache that
    /// has none, as Nix does.
    async fn ensure_cache_info(&self) -> Result<(), StoreError> {
        self.cache_info().await?;
        self.cache_info_exists
            .get_or_try_init(|| async {
                let mut info = CacheInfo::new(self.store_dir.clone());
                info.want_mass_query = self.want_mass_query.unwrap_or(false);
                info.priority = self.priority;
                let body = Body::Bytes(info.render().into_bytes());
                self.blobs
                    .put("nix-cache-info", content_type::CACHE_INFO, body)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Whether the cache can be read and written with the credentials at
    /// hand, without changing what it holds: `nix-cache-info` is read
    /// (and must parse), then written back byte for byte; a cache without
    /// one gets the one its first upload would write, as Nix does.
    pub(crate) async fn check_access(&self) -> Result<crate::preflight::CacheAccess, StoreError> {
        self.cache_info().await?;
        let current = self
            .blobs
            .get_small("nix-cache-info", MAX_NARINFO_LEN)
            .await?;
        let has_cache_info = current.is_some();
        let write = match current {
            Some(bytes) => {
                self.blobs
                    .put(
                        "nix-cache-info",
                        content_type::CACHE_INFO,
                        Body::Bytes(bytes),
                    )
                    .await
            }
            None => self.ensure_cache_info().await,
        };
        Ok(crate::preflight::CacheAccess {
            has_cache_info,
            write,
        })
    }

    /// The narinfo of `path`, if the cache has it under that full name.
    pub(crate) async fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, StoreError> {
        self.cache_info().await?;
        self.fetch_narinfo(path).await
    }

    async fn fetch_narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, StoreError> {
        let info = self.fetch_by_hash_part(path.hash_part()).await?;
        // Nix requires the hash part and the name to match (docs/formats.md §3.1).
        Ok(info.filter(|info| info.store_path() == path))
    }

    /// The narinfo stored under hash part `hash`, if its path has that
    /// hash part.
    async fn fetch_by_hash_part(&self, hash: &str) -> Result<Option<NarInfo>, StoreError> {
        let key = format!("{hash}.narinfo");
        let Some(text) = self.get_text(&key, MAX_NARINFO_LEN).await? else {
            return Ok(None);
        };
        let info = NarInfo::parse_in(&text, &self.store_dir)
            .map_err(|e| self.corrupt(format!("'{}': {e}", self.blobs.locate(&key))))?;
        Ok((info.store_path().hash_part() == hash).then_some(info))
    }

    pub(crate) async fn query_path_from_hash_part(
        &self,
        hash: &str,
    ) -> Result<Option<PathInfo>, StoreError> {
        // Only a hash part can name a narinfo: nothing else is fetched.
        if !is_hash_part(hash) {
            return Ok(None);
        }
        self.cache_info().await?;
        let info = self.fetch_by_hash_part(hash).await?;
        Ok(info.as_ref().map(PathInfo::from_narinfo))
    }

    /// The narinfo `URL` and `Compression` of a path: from `info` if it
    /// came from a binary cache, else from the path's narinfo.
    async fn nar_location(&self, info: &PathInfo) -> Result<(String, Compression), StoreError> {
        if let Some(file) = &info.file {
            return Ok((file.url.clone(), file.compression.clone()));
        }
        let narinfo = self
            .narinfo(&info.path)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                store: self.url().to_owned(),
                path: self.store_dir.display(&info.path).to_string(),
            })?;
        Ok((narinfo.url().to_owned(), narinfo.compression().clone()))
    }

    /// Starts the download of a path's NAR file.
    async fn get_nar_file(&self, info: &PathInfo) -> Result<(Compression, Download), StoreError> {
        let (url, compression) = self.nar_location(info).await?;
        match self.blobs.get(&url).await? {
            Some(download) => Ok((compression, download)),
            None => Err(self.corrupt(format!(
                "the NAR file of '{}' is missing: {}",
                self.store_dir.display(&info.path),
                self.blobs.locate(&url)
            ))),
        }
    }

    /// Whether the cache has the narinfo of `path` already, after making
    /// sure it can be written to.
    async fn prepare_write(&self, path: &StorePath) -> Result<bool, StoreError> {
        self.ensure_cache_info().await?;
        self.blobs
            .exists(&format!("{}.narinfo", path.hash_part()))
            .await
    }

    /// Uploads a staged NAR file, its listing and, last, the narinfo.
    async fn upload(&self, info: &PathInfo, staged: StagedNar) -> Result<(), StoreError> {
        let StagedNar { tmp, file, listing } = staged;
        if !self.blobs.exists(&file.url).await? {
            let size = file.file_size.unwrap_or_default();
            let body = Body::File(tmp.path().to_owned(), size);
            self.blobs.put(&file.url, content_type::NAR, body).await?;
        }
        drop(tmp);
        if let Some(listing) = listing {
            let key = format!("{}.ls", info.path.hash_part());
            let body = Body::Bytes(listing.to_json().into_bytes());
            self.blobs.put(&key, content_type::LISTING, body).await?;
        }
        let narinfo = self.writer.narinfo(info, file)?;
        let key = format!("{}.narinfo", info.path.hash_part());
        let body = Body::Bytes(narinfo.as_str().as_bytes().to_vec());
        self.blobs.put(&key, content_type::NARINFO, body).await
    }

    /// The base name of temporary NAR files for `path`.
    fn tmp_base(&self, path: &StorePath) -> PathBuf {
        std::env::temp_dir().join(format!("{}-{}", self.tmp_prefix, path.hash_part()))
    }

    pub(crate) async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        self.cache_info().await?;
        let mut found = BTreeMap::new();
        let mut answers = futures_util::stream::iter(paths.iter().cloned())
            .map(|path| async move { self.fetch_narinfo(&path).await })
            .buffer_unordered(PARALLEL_REQUESTS);
        while let Some(answer) = answers.next().await {
            if let Some(narinfo) = answer? {
                let info = PathInfo::from_narinfo(&narinfo);
                found.insert(info.path.clone(), info);
            }
        }
        Ok(found)
    }

    pub(crate) async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        let (compression, download) = self.get_nar_file(info).await?;
        let body = SyncIoBridge::new(download.body);
        Ok(blocking_stream(move |out| {
            let input = io::BufReader::with_capacity(CHUNK_SIZE, body);
            let mut dec = compression::lenient_decoder(&compression, input)?;
            out.fill_from(&mut dec)
        }))
    }

    pub(crate) async fn compressed_nar(
        &self,
        info: &PathInfo,
    ) -> Result<Option<CompressedNar>, StoreError> {
        let (declared, download) = self.get_nar_file(info).await?;
        let Download {
            location,
            length,
            mut body,
        } = download;
        // Report what the file really is where Nix would sniff it, so that
        // a passthrough copy labels it right.
        let (compression, stream): (Compression, NarStream) = if compression::is_sniffed(&declared)
        {
            let mut head = Vec::with_capacity(compression::SNIFF_LEN);
            (&mut body)
                .take(compression::SNIFF_LEN as u64)
                .read_to_end(&mut head)
                .await
                .map_err(|e| StoreError::from_stream(e, "reading", &location))?;
            let sniffed = compression::sniff(&head).unwrap_or(declared);
            let stream = tokio::io::AsyncReadExt::chain(io::Cursor::new(head), body);
            (sniffed, Box::pin(stream))
        } else {
            (declared, body)
        };
        let file = info.file.as_ref();
        Ok(Some(CompressedNar {
            compression,
            file_hash: file.and_then(|f| f.file_hash),
            file_size: file.and_then(|f| f.file_size).or(length),
            stream,
        }))
    }

    pub(crate) async fn add_path(
        self: &Arc<Self>,
        info: &PathInfo,
        nar: NarStream,
    ) -> Result<(), StoreError> {
        if self.prepare_write(&info.path).await? {
            return Ok(());
        }
        let this = Arc::clone(self);
        let owned = info.clone();
        let src = SyncIoBridge::new(nar);
        let staged = tokio::task::spawn_blocking(move || {
            this.writer.encode(&owned, src, &this.tmp_base(&owned.path))
        })
        .await
        .map_err(|e| self.join_error(e))??;
        self.upload(info, staged).await
    }

    pub(crate) async fn add_compressed(
        self: &Arc<Self>,
        info: &PathInfo,
        nar: CompressedNar,
    ) -> Result<(), StoreError> {
        self.writer.check_compressed(self.url(), &nar.compression)?;
        if self.prepare_write(&info.path).await? {
            return Ok(());
        }
        let this = Arc::clone(self);
        let owned = info.clone();
        let facts = FileFacts {
            file_hash: nar.file_hash,
            file_size: nar.file_size,
        };
        let src = SyncIoBridge::new(nar.stream);
        let staged = tokio::task::spawn_blocking(move || {
            this.writer
                .encode_file(&owned, facts, src, &this.tmp_base(&owned.path))
        })
        .await
        .map_err(|e| self.join_error(e))??;
        self.upload(info, staged).await
    }

    /// A blocking task that panicked or was cancelled.
    fn join_error(&self, e: tokio::task::JoinError) -> StoreError {
        StoreError::task_died(format_args!("a blocking task of '{}'", self.url()), e)
    }
}

/// The files of a remote cache, for [`crate::cache`]: what [`Blobs`]
/// offers, under the cache's own rules for keys.
#[derive(Debug)]
pub(crate) struct BlobFiles<B>(pub(crate) Arc<RemoteCache<B>>);

#[async_trait::async_trait]
impl<B: Blobs> crate::cache::CacheFiles for BlobFiles<B> {
    fn url(&self) -> &str {
        self.0.url()
    }

    fn locate(&self, key: &str) -> String {
        self.0.blobs.locate(key)
    }

    fn can_list(&self) -> bool {
        self.0.blobs.can_list()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<crate::cache::FileEntry>, StoreError> {
        self.0.blobs.list(prefix).await
    }

    async fn read_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.key(key)?;
        self.0.blobs.get_small(key, limit).await
    }

    async fn open(&self, key: &str) -> Result<Option<NarStream>, StoreError> {
        self.key(key)?;
        Ok(self.0.blobs.get(key).await?.map(|d| d.body))
    }

    async fn write(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.key(key)?;
        if !self.0.blobs.can_list() {
            return Err(StoreError::Unsupported {
                store: self.url().to_owned(),
                what: "rewriting files",
            });
        }
        let content_type = if key.ends_with(".narinfo") {
            content_type::NARINFO
        } else if key.ends_with(".ls") {
            content_type::LISTING
        } else if key == "nix-cache-info" {
            content_type::CACHE_INFO
        } else {
            "application/octet-stream"
        };
        self.0.blobs.put(key, content_type, Body::Bytes(data)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.key(key)?;
        self.0.blobs.delete(key).await
    }

    async fn list_uploads(&self) -> Result<Vec<crate::cache::UploadEntry>, StoreError> {
        self.0.blobs.list_uploads().await
    }

    async fn abort_upload(&self, upload: &crate::cache::UploadEntry) -> Result<(), StoreError> {
        self.key(&upload.key)?;
        self.0.blobs.abort_upload(upload).await
    }
}

impl<B: Blobs> BlobFiles<B> {
    /// Refuses a key that is not a path inside the cache.
    fn key<'k>(&self, key: &'k str) -> Result<&'k str, StoreError> {
        relative_key(key).ok_or_else(|| {
            self.0
                .corrupt(format!("'{key}' is not a relative path inside the cache"))
        })
    }
}

/// Implements [`super::Store`] for a type whose `inner` field is an
/// `Arc<RemoteCache<_>>`.
macro_rules! remote_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $ty {
            fn url(&self) -> &str {
                self.inner.url()
            }

            fn store_dir(&self) -> &$crate::store_path::StoreDir {
                self.inner.store_dir()
            }

            fn capabilities(&self) -> $crate::store::Capabilities {
                self.inner.capabilities()
            }

            async fn query_path_infos(
                &self,
                paths: &[$crate::store_path::StorePath],
            ) -> Result<
                std::collections::BTreeMap<$crate::store_path::StorePath, $crate::store::PathInfo>,
                $crate::store::StoreError,
            > {
                self.inner.query_path_infos(paths).await
            }

            async fn nar(
                &self,
                info: &$crate::store::PathInfo,
            ) -> Result<$crate::store::NarStream, $crate::store::StoreError> {
                self.inner.nar(info).await
            }

            async fn add_path(
                &self,
                info: &$crate::store::PathInfo,
                nar: $crate::store::NarStream,
            ) -> Result<(), $crate::store::StoreError> {
                self.inner.add_path(info, nar).await
            }

            async fn compressed_nar(
                &self,
                info: &$crate::store::PathInfo,
            ) -> Result<Option<$crate::store::CompressedNar>, $crate::store::StoreError> {
                self.inner.compressed_nar(info).await
            }

            async fn add_compressed(
                &self,
                info: &$crate::store::PathInfo,
                nar: $crate::store::CompressedNar,
            ) -> Result<(), $crate::store::StoreError> {
                self.inner.add_compressed(info, nar).await
            }

            async fn query_path_from_hash_part(
                &self,
                hash: &str,
            ) -> Result<Option<$crate::store::PathInfo>, $crate::store::StoreError> {
                self.inner.query_path_from_hash_part(hash).await
            }

            async fn close(&self) {
                self.inner.blobs.close().await;
            }
        }

        impl $ty {
            /// Whether the cache can be read and written with the
            /// credentials at hand, found without changing what it holds:
            /// `nix-cache-info` is read (and must parse), then written
            /// back byte for byte (a cache without one gets the one its
            /// first upload would write, as Nix does).
            ///
            /// # Errors
            /// Reading `nix-cache-info` failed (the outcome of the write
            /// is in the answer).
            pub async fn check_access(
                &self,
            ) -> Result<$crate::preflight::CacheAccess, $crate::store::StoreError> {
                self.inner.check_access().await
            }
        }
    };
}
pub(crate) use remote_store;

#[cfg(test)]
mod tests {
    use super::relative_key;

    #[test]
    fn relative_keys() {
        for good in ["nar/a.nar.xz", "nar/a..b.nar", "nar/%2e.nar", "nar/./a.nar"] {
            assert_eq!(relative_key(good), Some(good));
        }
        for bad in [
            "",
            "file:///etc/passwd",
            "/abs",
            "nar/../../x",
            "http://o/n",
            "nar/%2e%2e/%2E%2e/x",
            "nar/.%2e/x",
            "nar\\..\\..\\x",
            "\\x",
        ] {
            assert_eq!(relative_key(bad), None, "{bad}");
        }
    }
}
