//! Looking after a binary cache as a whole: checking it ([`verify()`]),
//! repairing it ([`repair()`]), signing it again ([`sign()`]), counting
//! what it holds ([`stats()`]), recording what a fleet runs ([`pin()`], [`mod@pins`])
//! and deleting the rest ([`gc()`]), and the raw access to its files
//! that this needs ([`CacheFiles`]). The reports render as the JSON that
//! `nixferry cache … --json` prints (`to_json`).
//!
//! A binary cache (docs/formats.md §3.1) is a set of files: narinfos at
//! the top, NAR files under `nar/`, `.ls` listings beside the narinfos.
//! The [`crate::store::Store`] view of it answers questions about paths;
//! the operations here work on the files themselves, which only the cache
//! can list: [`Cache::open`] gives both views of one cache.
//!
//! | URL | list | read | write, delete |
//! |---|---|---|---|
//! | `file:///dir` | yes | yes | yes (writes are atomic: temporary file, rename) |
//! | `s3://bucket[/prefix]` | yes | yes | yes (one `PUT` replaces an object whole) |
//! | `http(s)://…` | no | files whose names are known (narinfos of given paths, and what they name) | no |
//!
//! An S3 cache also lists the multipart uploads under it that were begun
//! and never completed nor aborted, and aborts them
//! ([`CacheFiles::list_uploads`], [`CacheFiles::abort_upload`]): a
//! writer that died leaves them, and S3 keeps (and bills) their parts.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::atomic;
use crate::narinfo::{NarInfo, MAX_NARINFO_LEN};
use crate::store::{self, NarStream, Store, StoreError, StoreUrl};
use crate::store_path::{is_hash_part, StoreDir};

pub mod gc;
mod json;
pub mod pins;
pub mod repair;
pub mod sign;
pub mod verify;

pub use gc::{gc, Deleted, Garbage, GcError, GcOptions, GcReport};
pub use json::pins_json;
pub use pins::{
    closure_size, pin, pins, pins_with_sizes, read_pin, unpin, ClosureSize, Generation, Pin,
    PinError,
};
pub use repair::{repair, RepairOptions, RepairReport};
pub use sign::{
    sign, sign_with_progress, stats, stats_with_progress, CacheStats, SignOptions, SignReport,
};
pub use verify::{verify, Problem, ProblemKind, VerifyOptions, VerifyProgress, VerifyReport};

/// One file of a cache, as a listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its key: the path relative to the cache's root, `/`-separated
    /// (`nar/….nar.xz`, `<hashPart>.narinfo`).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, where known.
    pub modified: Option<SystemTime>,
}

/// A multipart upload that was begun and neither completed nor aborted
/// (S3 keeps its parts, and bills them, until one or the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEntry {
    /// The key the upload would create.
    pub key: String,
    /// The server's id of the upload.
    pub id: String,
    /// When it was begun, where known.
    pub initiated: Option<SystemTime>,
}

/// Raw access to the files of a binary cache, by key (the path relative
/// to the cache's root, as narinfo `URL`s name NAR files). See the
/// [module docs](self) for what each kind of cache supports; what it does
/// not is [`StoreError::Unsupported`].
#[async_trait::async_trait]
pub trait CacheFiles: Send + Sync + fmt::Debug {
    /// The cache's URL, for messages.
    fn url(&self) -> &str;

    /// Where `key` is, for messages (a file path or URL).
    fn locate(&self, key: &str) -> String;

    /// Whether [`CacheFiles::list`] works.
    fn can_list(&self) -> bool;

    /// The file of `key` on this machine's file system, for a cache in a
    /// directory (read it there with blocking I/O, faster than
    /// [`CacheFiles::open`]'s stream); `None` elsewhere.
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        let _ = key;
        None
    }

    /// Every file whose key starts with `prefix` (a directory such as
    /// `nar/`, or empty for all), in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<FileEntry>, StoreError>;

    /// The whole of a small file: `None` if the cache does not have it, an
    /// error if it is longer than `limit` bytes.
    async fn read_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError>;

    /// A file's bytes as they are stored, streamed: `None` if the cache
    /// does not have it.
    async fn open(&self, key: &str) -> Result<Option<NarStream>, StoreError>;

    /// Replaces (or creates) a small file at once: a reader sees the old
    /// content or the new, never a part.
    async fn write(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError>;

    /// Removes a file; one that is not there is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes a file unless it was written again since a listing gave
    /// its time as `modified`: whether it was deleted. In a directory the
    /// check and the deletion are one step, as far as other writers can
    /// tell; elsewhere the file is deleted as [`CacheFiles::delete`]
    /// does.
    async fn delete_unless_changed(
        &self,
        key: &str,
        modified: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        let _ = modified;
        self.delete(key).await?;
        Ok(true)
    }

    /// Multipart uploads under the cache that were begun and neither
    /// completed nor aborted; none for a cache without them.
    async fn list_uploads(&self) -> Result<Vec<UploadEntry>, StoreError> {
        Ok(Vec::new())
    }

    /// Aborts a multipart upload [`CacheFiles::list_uploads`] gave, freeing
    /// its parts; one already gone is no error.
    async fn abort_upload(&self, _upload: &UploadEntry) -> Result<(), StoreError> {
        Err(StoreError::Unsupported {
            store: self.url().to_owned(),
            what: "aborting multipart uploads",
        })
    }
}

/// What a file of a cache is, by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind<'k> {
    /// A temporary file a writer makes and renames.
    Temporary,
    /// A NAR file, under `nar/`.
    Nar,
    /// `<hashPart>.narinfo`, with its hash part.
    Narinfo(&'k str),
    /// `<hashPart>.ls`, with its hash part.
    Listing(&'k str),
    /// Anything else (`nix-cache-info`, `log/`, pins…).
    Other,
}

impl FileKind<'_> {
    /// The kind of the file `key`.
    pub(crate) fn of(key: &str) -> FileKind<'_> {
        let top = |suffix| key.strip_suffix(suffix).filter(|h| is_hash_part(h));
        if verify::is_temporary(key) {
            FileKind::Temporary
        } else if key.starts_with("nar/") {
            FileKind::Nar
        } else if let Some(hash) = top(".narinfo") {
            FileKind::Narinfo(hash)
        } else if let Some(hash) = top(".ls") {
            FileKind::Listing(hash)
        } else {
            FileKind::Other
        }
    }
}

/// Parses the bytes of a narinfo read from a cache; the error says why
/// not, for a report.
pub(crate) fn parse_narinfo(bytes: &[u8], dir: &StoreDir) -> Result<NarInfo, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    NarInfo::parse_in(text, dir).map_err(|e| e.to_string())
}

/// Reads the narinfo `key` and parses it: `None` if the cache lacks it;
/// the outer error is the cache's, the inner one why it does not parse.
pub(crate) async fn read_narinfo(
    files: &dyn CacheFiles,
    dir: &StoreDir,
    key: &str,
) -> Result<Option<Result<NarInfo, String>>, StoreError> {
    Ok(files
        .read_small(key, MAX_NARINFO_LEN)
        .await?
        .map(|bytes| parse_narinfo(&bytes, dir)))
}

/// Refuses a cache that cannot list its files (an HTTP cache), for the
/// operations that go over the whole of one.
pub(crate) fn require_listing(files: &dyn CacheFiles) -> Result<(), StoreError> {
    if files.can_list() {
        Ok(())
    } else {
        Err(StoreError::Unsupported {
            store: files.url().to_owned(),
            what: "listing its files",
        })
    }
}

/// A binary cache, as a store and as files.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Arc<dyn Store>,
    files: Arc<dyn CacheFiles>,
}

impl Cache {
    /// Opens the binary cache `url` names: `file://`, `s3://` or
    /// `http(s)://`. A `file://` cache must exist (it is not created).
    ///
    /// # Errors
    /// [`StoreError::Url`] for a malformed URL or one that is not a binary
    /// cache, [`StoreError::Io`] for a `file://` directory that does not
    /// exist, otherwise what opening the store gives.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let parsed = StoreUrl::parse(url)?;
        match parsed.scheme() {
            store::Scheme::File => {
                let root = PathBuf::from(parsed.location());
                if !root.is_dir() {
                    return Err(StoreError::Io {
                        what: "opening the cache",
                        path: root.display().to_string(),
                        source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
                    });
                }
                let store = store::file::FileStore::open(&parsed)?;
                let files = Arc::new(DirFiles {
                    url: url.to_owned(),
                    root: store.root().to_owned(),
                });
                Ok(Self {
                    store: Arc::new(store),
                    files,
                })
            }
            #[cfg(feature = "s3")]
            store::Scheme::S3 => {
                let store = store::s3::S3Store::open(&parsed)?;
                let files = store.files();
                Ok(Self {
                    store: Arc::new(store),
                    files,
                })
            }
            #[cfg(feature = "http")]
            store::Scheme::Http | store::Scheme::Https => {
                let store = store::http::HttpStore::open(&parsed)?;
                let files = store.files();
                Ok(Self {
                    store: Arc::new(store),
                    files,
                })
            }
            _ => Err(store::UrlError::Malformed {
                url: url.to_owned(),
                reason: "not a binary cache (expected file://, s3:// or http(s):// with its feature built)",
            }
            .into()),
        }
    }

    /// A cache of these two views of it.
    #[cfg(test)]
    pub(crate) fn from_parts(store: Arc<dyn Store>, files: Arc<dyn CacheFiles>) -> Self {
        Self { store, files }
    }

    /// The cache as a store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The cache's files.
    pub fn files(&self) -> &Arc<dyn CacheFiles> {
        &self.files
    }

    /// The store directory of the cache's paths.
    pub fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }
}

/// A name beside `path` for it while it is being deleted:
/// `<name>.tmp.<pid>.gc<n>`, a temporary file as writers name them, so
/// that one left by a process that died is cleaned up as such.
fn aside_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}.gc{n}", std::process::id()));
    path.with_file_name(name)
}

/// The files of a `file://` cache.
#[derive(Debug)]
struct DirFiles {
    url: String,
    root: PathBuf,
}

impl DirFiles {
    /// The file of `key`, which must be a relative path inside the cache.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        let inside = !key.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(StoreError::Corrupt {
                store: self.url.clone(),
                message: format!("'{key}' is not a relative path inside the cache"),
            });
        }
        Ok(self.root.join(rel))
    }
}

/// An I/O error on `path`.
fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Runs blocking file work on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::task_died("a blocking task of a file:// cache", e))?
}

/// Every file under `dir`, recursively, keyed by its path relative to
/// `root` (after `prefix`).
fn walk(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("listing", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error("listing", &path))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            // A writer may rename or remove a file while it is listed.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("reading", &path)(e)),
            };
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key: Vec<_> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect();
            out.push(FileEntry {
                key: key.join("/"),
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl CacheFiles for DirFiles {
    fn url(&self) -> &str {
        &self.url
    }

    fn locate(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn can_list(&self) -> bool {
        true
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<FileEntry>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // The directory the prefix is in; keys are filtered below.
            let dir = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut out = Vec::new();
            walk(&root, &dir, &mut out)?;
            out.retain(|e| e.key.starts_with(&prefix));
            Ok(out)
        })
        .await
    }

    async fn read_small(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key)?;
        let url = self.url.clone();
        blocking(move || {
            use io::Read as _;
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error("opening", &path)(e)),
            };
            let mut data = Vec::new();
            file.take(limit as u64 + 1)
                .read_to_end(&mut data)
                .map_err(io_error("reading", &path))?;
            if data.len() > limit {
                return Err(StoreError::Corrupt {
                    store: url,
                    message: format!("'{}' is longer than {limit} bytes", path.display()),
                });
            }
            Ok(Some(data))
        })
        .await
    }

    async fn delete_unless_changed(
        &self,
        key: &str,
        modified: Option<SystemTime>,
    ) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        blocking(move || {
            // Moved aside first: a writer that refreshes or rewrites the
            // file from now on finds it gone (and writes it anew), one
            // that did so before left its time on it.
            let aside = aside_name(&path);
            match std::fs::rename(&path, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(io_error("moving aside", &path)(e)),
            }
            let now = std::fs::metadata(&aside)
                .map_err(io_error("reading", &aside))?
                .modified()
                .ok();
            if modified.is_some() && now == modified {
                std::fs::remove_file(&aside).map_err(io_error("deleting", &aside))?;
                return Ok(true);
            }
            // Written since: put back, unless a writer made it anew.
            if std::fs::hard_link(&aside, &path).is_err() && !path.exists() {
                std::fs::rename(&aside, &path).map_err(io_error("restoring", &path))?;
                return Ok(false);
            }
            std::fs::remove_file(&aside).map_err(io_error("deleting", &aside))?;
            Ok(false)
        })
        .await
    }

    async fn open(&self, key: &str) -> Result<Option<NarStream>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(Box::pin(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("opening", &path)(e)),
        }
    }

    async fn write(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(key)?;
        blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
            }
            Ok(atomic::write(&path, &data, true)?)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("deleting", &path)(e)),
        }
    }
}
