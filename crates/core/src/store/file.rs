//! A binary cache in a local directory (`file:///dir`), SPEC §3.1.
//!
//! Writes are crash-safe: every file is written under a temporary name,
//! flushed to disk and renamed into place, and a path's narinfo is written
//! only after its NAR, so a reader never sees a narinfo whose NAR is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::NixHash;
use crate::nar;
use crate::narinfo::{CacheInfo, Compression, NarInfo, NarInfoFields};
use crate::signing::SecretKey;
use crate::store_path::{ContentAddress, FileIngestion, StoreDir, StorePath};

/// Errors from a `file://` binary cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileCacheError {
    /// The URL is not a `file://` URL with an absolute path.
    #[error("'{0}' is not a file:// URL with an absolute path")]
    BadUrl(String),
    /// An I/O error on a file of the cache.
    #[error("{what} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file in the cache could not be parsed.
    #[error("invalid file '{}' in binary cache: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: crate::narinfo::NarInfoError,
    },
    /// The content could not be packed.
    #[error(transparent)]
    Nar(#[from] nar::NarError),
    /// The name or content address is invalid.
    #[error(transparent)]
    StorePath(#[from] crate::store_path::StorePathError),
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> FileCacheError + 'p {
    move |source| FileCacheError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A binary cache in a directory.
#[derive(Debug, Clone)]
pub struct FileCache {
    root: PathBuf,
    store_dir: StoreDir,
}

impl FileCache {
    /// Opens the cache at a `file:///dir` URL or a plain directory path,
    /// creating the directory, `nar/` and `nix-cache-info` if missing, as
    /// Nix does.
    ///
    /// # Errors
    /// [`FileCacheError`] if the URL is malformed, the directory cannot be
    /// created, or its `nix-cache-info` names another store directory.
    pub fn open(url_or_dir: &str, store_dir: StoreDir) -> Result<Self, FileCacheError> {
        let dir = match url_or_dir.strip_prefix("file://") {
            Some(rest) => rest.split('?').next().unwrap_or(rest),
            None => url_or_dir,
        };
        if !dir.starts_with('/') {
            return Err(FileCacheError::BadUrl(url_or_dir.to_owned()));
        }
        let root = PathBuf::from(dir);
        let nar_dir = root.join("nar");
        fs::create_dir_all(&nar_dir).map_err(io_err("creating", &nar_dir))?;
        let cache = Self { root, store_dir };
        cache.check_cache_info()?;
        Ok(cache)
    }

    fn check_cache_info(&self) -> Result<(), FileCacheError> {
        let path = self.root.join("nix-cache-info");
        match fs::read_to_string(&path) {
            Ok(text) => CacheInfo::parse(&text)
                .and_then(|info| info.check_store_dir(&self.store_dir))
                .map_err(|source| FileCacheError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let info = CacheInfo::new(self.store_dir.clone());
                write_atomic(&path, info.render().as_bytes())
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn narinfo_path(&self, path: &StorePath) -> PathBuf {
        self.root.join(format!("{}.narinfo", path.hash_part()))
    }

    /// Whether the cache has `path` (its narinfo exists).
    pub fn has(&self, path: &StorePath) -> bool {
        self.narinfo_path(path).is_file()
    }

    /// Reads the narinfo of `path`, if the cache has it.
    ///
    /// # Errors
    /// [`FileCacheError`] on I/O errors or a corrupt narinfo.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, FileCacheError> {
        let file = self.narinfo_path(path);
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &file)(e)),
        };
        let info = NarInfo::parse_in(&text, &self.store_dir)
            .map_err(|source| FileCacheError::Corrupt { path: file, source })?;
        Ok(Some(info))
    }

    /// Adds a file or directory as the content-addressed path
    /// `nix-store --add` would make (recursive sha256, no references), with
    /// an uncompressed NAR and a narinfo signed by `keys`. A path the cache
    /// already has is left alone; its narinfo is returned either way.
    ///
    /// # Errors
    /// [`FileCacheError`] if the content cannot be read or packed, or the
    /// cache cannot be written.
    pub fn add_path(
        &self,
        source: &Path,
        name: &str,
        keys: &[SecretKey],
    ) -> Result<NarInfo, FileCacheError> {
        crate::store_path::validate_name(name)?;
        // One pass: pack into a temporary file while hashing, then name the
        // file after its hash.
        let tmp = temp_name(&self.root.join("nar/add"));
        let summary = (|| {
            let f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let summary = nar::dump(source, &mut w)?;
            let f = w
                .into_inner()
                .map_err(|e| io_err("writing", &tmp)(e.into_error()))?;
            f.sync_all().map_err(io_err("writing", &tmp))?;
            Ok::<_, FileCacheError>(summary)
        })()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;

        let ca = ContentAddress::Fixed {
            method: FileIngestion::Recursive,
            hash: summary.nar_hash,
        };
        let path = self.store_dir.make_ca_path(name, &ca, [], false)?;
        if let Some(existing) = self.narinfo(&path)? {
            let _ = fs::remove_file(&tmp);
            return Ok(existing);
        }
        let url = nar_file_name(&summary.nar_hash, &Compression::None);
        let nar_file = self.root.join(&url);
        fs::rename(&tmp, &nar_file).map_err(io_err("renaming", &nar_file))?;
        sync_dir(&self.root.join("nar"))?;

        let mut info = NarInfo::new(NarInfoFields {
            store_dir: self.store_dir.clone(),
            file_hash: Some(summary.nar_hash),
            file_size: Some(summary.nar_size),
            ca: Some(ca),
            ..NarInfoFields::new(path, url, summary.nar_hash, summary.nar_size)
        })
        .map_err(|source| FileCacheError::Corrupt {
            path: nar_file.clone(),
            source,
        })?;
        for k in keys {
            info.sign(k);
        }
        self.put_narinfo(&info)?;
        Ok(info)
    }

    /// Writes a narinfo, atomically. Call it only once the NAR it points to
    /// is in place.
    ///
    /// # Errors
    /// [`FileCacheError::Io`].
    pub fn put_narinfo(&self, info: &NarInfo) -> Result<(), FileCacheError> {
        write_atomic(
            &self.narinfo_path(info.store_path()),
            info.render().as_bytes(),
        )
    }
}

/// A fresh temporary name beside `base`: `<base>.tmp.<pid>.<n>`, the scheme
/// Nix uses, so leftovers of a crash are recognisable.
fn temp_name(base: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".tmp.{}.{n}", std::process::id()));
    PathBuf::from(s)
}

/// Writes `data` to `path` atomically: a temporary file beside it, fsync,
/// rename, fsync of the directory.
///
/// # Errors
/// [`FileCacheError::Io`]; the temporary file is removed on failure.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FileCacheError> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(data).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming", path))?;
        match path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), FileCacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// The name, relative to the cache root, of a NAR file: `nar/<file hash>.nar<ext>`.
pub fn nar_file_name(file_hash: &NixHash, compression: &Compression) -> String {
    format!(
        "nar/{}.nar{}",
        file_hash.to_nix32(),
        compression.extension()
    )
}

use super::{Capabilities, NarStream, PathInfo, Store, StoreError, StoreUrl};
use std::collections::BTreeMap;

/// A file:// binary cache.
#[derive(Debug)]
pub struct FileStore {
    url: String,
    store_dir: StoreDir,
}

impl FileStore {
    /// Opens the store a `local` URL names.
    ///
    /// # Errors
    /// Never yet.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        Ok(Self {
            url: url.as_str().to_owned(),
            store_dir: StoreDir::default(),
        })
    }
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn url(&self) -> &str {
        &self.url
    }
    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn query_path_infos(
        &self,
        _paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "queries",
        })
    }
    async fn nar(&self, _info: &PathInfo) -> Result<NarStream, StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "reading",
        })
    }
    async fn add_path(&self, _info: &PathInfo, _nar: NarStream) -> Result<(), StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "writing",
        })
    }
}
