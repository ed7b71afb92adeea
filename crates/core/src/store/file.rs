//! A binary cache in a local directory (`file:///dir`), in exactly the
//! layout `nix copy --to file://` writes (docs/formats.md §3.1):
//!
//! ```text
//! <dir>/nix-cache-info                 StoreDir: /nix/store
//! <dir>/<hashPart>.narinfo             one per path, written last
//! <dir>/<hashPart>.ls                  with ?write-nar-listing=true
//! <dir>/nar/<fileHash>.nar<ext>        the NAR, compressed, named by the file's hash
//! <dir>/log/, <dir>/realisations/      created empty, as by Nix, with the first write
//! ```
//!
//! Opening the cache writes nothing: reading a directory never changes
//! it (Nix creates the layout even to read). The first path written
//! creates what is missing.
//!
//! # URL parameters
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `compression` | `zstd` (Nix: `xz`; `xz` in builds without zstd) | `none`, `xz`, `zstd`, `bzip2` or `br` ([`crate::compression`]) |
//! | `compression-level` | the method's Nix default | see [`crate::compression`] |
//! | `parallel-compression` | `false` | compress xz and zstd on several threads: a NAR of 8 MiB or more gets the CPUs, shared with the other NARs being written at the time |
//! | `write-nar-listing` | `false` | write `<hashPart>.ls` beside each narinfo (docs/formats.md §3.6) |
//! | `secret-key` | none | a secret key file: sign every narinfo written |
//! | `want-mass-query`, `priority` | none | override `nix-cache-info`; written into it when the cache is created |
//! | `trusted` | | accepted and ignored |
//! | `index-debug-info` | `false` | not supported: `true` is an error |
//! | `fsync` | `true` | nixferry's own: `false` skips flushing files to disk (see below) |
//!
//! # Writing
//!
//! A NAR handed to [`Store::add_path`] is untrusted. It is read on a
//! blocking thread through the strict NAR decoder (as Nix 2.8 does, which
//! parses every NAR it adds to a binary cache), and on the way hashed,
//! compressed and written to `nar/<hashPart>.tmp.<pid>.<random>`, whose own
//! hash gives the final name. The file is flushed to disk and renamed to
//! `nar/<fileHash>.nar<ext>` (unless a file of that name is there already:
//! NAR files are content-addressed), then the listing is written if asked,
//! and the narinfo last, atomically ([`crate::atomic`]: temporary file,
//! fsync, rename, fsync of the directory). So a reader never sees a narinfo whose NAR is missing,
//! and a crash leaves at most temporary files and unreferenced NAR files.
//! With `fsync=false` (Nix itself never flushes binary cache files), the
//! order of renames still protects against the process dying, but not
//! against the machine losing power: then a narinfo may survive whose NAR
//! file's data did not.
//! If the stream fails, is not a valid NAR, or does not match the path
//! info's `narHash`/`narSize`, nothing is left behind.
//!
//! A NAR file handed to [`Store::add_compressed`] (a copy between caches of
//! the same compression) is copied byte for byte, while a second thread
//! decompresses and decodes it ([`super::verify::NarFileCheck`]): it is
//! kept only if its NAR matches `narHash`/`narSize`. The file hash and size
//! the source gives are compared too, but never trusted, since no
//! signature covers them.
//!
//! With two CPUs or more, a NAR of 4 MiB or more is decoded and hashed on
//! one thread while a second compresses, hashes and writes it; and a NAR
//! file of more than 32 MiB is flushed to disk by a helper thread while it
//! is written, so that the final fsync does not wait for all of it.
//!
//! With `write-nar-listing`, the listing is built by the same decoding
//! pass, at the cost of hashing the NAR twice (`nar::list` does not return
//! its hash). A name or symlink target that is not UTF-8 is written as
//! U+FFFD in the listing (where Nix 2.8 would fail).
//!
//! A path whose narinfo exists is not written again: as in Nix 2.8, the
//! narinfo's existence is what makes a path valid in a cache; its NAR
//! stream is then left unread.
//!
//! # Reading
//!
//! Narinfos are read on blocking threads, in parallel batches. A narinfo
//! whose `StorePath` differs from the requested path in its name is
//! treated as absent, as by Nix. NARs are decompressed on a blocking
//! thread as Nix 2.8 does it: `none` and `br` as declared, anything else
//! by its magic bytes ([`compression::lenient_decoder`]), and stream to the
//! caller through a bounded channel, so memory stays flat. A narinfo `URL`
//! must be a relative path inside the cache without `..` components.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use super::cache_writer::{io_err, CacheWriter, FileFacts, StagedNar};
use super::chunks::{blocking_stream, CHUNK_SIZE};
use super::{
    url::Scheme, Capabilities, CompressedNar, NarStream, PathInfo, Store, StoreError, StoreUrl,
    UrlError,
};
use crate::atomic;
use crate::compression::{self, Compression};
use crate::narinfo::{CacheInfo, NarInfo, MAX_NARINFO_LEN};
use crate::store_path::{is_hash_part, StoreDir, StorePath};

pub use super::cache_writer::nar_file_name;

/// Narinfos read by one blocking task of [`Store::query_path_infos`].
const QUERY_BATCH: usize = 64;

/// Blocking tasks of one [`Store::query_path_infos`] running at once.
const QUERY_TASKS: usize = 16;

/// A binary cache in a directory. See the [module docs](self).
///
/// Cloning is cheap and gives a handle to the same store.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    root: PathBuf,
    store_dir: StoreDir,
    cache_info: CacheInfo,
    /// Whether files are flushed to disk before they are renamed into
    /// place (`fsync`, on by default).
    fsync: bool,
    writer: CacheWriter,
    /// Set once the cache's directories and `nix-cache-info` are known to
    /// be there: the first write makes them, reading never does.
    laid_out: std::sync::Mutex<bool>,
    /// What `nix-cache-info` gets when the first write creates it.
    new_cache_info: CacheInfo,
}

impl FileStore {
    /// Opens the cache a `file:///dir?…` URL names. Opening writes
    /// nothing (Nix creates the directory, `nar/`, `log/`, `realisations/`
    /// and `nix-cache-info` even to read): the first path written creates
    /// what is missing. A directory that does not exist reads as an empty
    /// cache.
    ///
    /// # Errors
    /// [`StoreError::Url`] for a parameter that is unknown or has a bad
    /// value, [`StoreError::Io`] if the cache cannot be created or the
    /// secret key file cannot be read or parsed, [`StoreError::Corrupt`] if
    /// `nix-cache-info` is invalid or names another store directory.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        if url.scheme() != Scheme::File {
            return Err(UrlError::Malformed {
                url: url.as_str().to_owned(),
                reason: "not a file:// URL",
            }
            .into());
        }
        let store_dir = StoreDir::default();
        let fsync = url.bool_param("fsync", true)?;
        let writer = CacheWriter::from_url(url, store_dir.clone(), fsync)?;
        let want_mass_query = url
            .param("want-mass-query")
            .map(|_| url.bool_param("want-mass-query", false))
            .transpose()?;
        let priority = url.int_param("priority")?;

        let root = PathBuf::from(url.location());
        let mut new_cache_info = CacheInfo::new(store_dir.clone());
        new_cache_info.want_mass_query = want_mass_query.unwrap_or(false);
        new_cache_info.priority = priority;
        let cache_info =
            read_cache_info(url.as_str(), &root, &store_dir, want_mass_query, priority)?
                .unwrap_or_else(|| new_cache_info.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.as_str().to_owned(),
                root,
                store_dir,
                cache_info,
                fsync,
                writer,
                laid_out: std::sync::Mutex::new(false),
                new_cache_info,
            }),
        })
    }

    /// Creates what the cache lacks of the layout Nix gives a new cache
    /// (the directory, `nar/`, `log/`, `realisations/`,
    /// `nix-cache-info`); writing a path does this first.
    ///
    /// # Errors
    /// [`StoreError::Io`] if a directory or file cannot be created.
    pub fn lay_out(&self) -> Result<(), StoreError> {
        self.inner.lay_out()
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The compression NAR files are written with.
    pub fn compression(&self) -> &Compression {
        self.inner.writer.compression()
    }

    /// The cache's `nix-cache-info`, with `want-mass-query` and `priority`
    /// from the URL taking precedence, as in Nix.
    pub fn cache_info(&self) -> &CacheInfo {
        &self.inner.cache_info
    }

    /// Reads the narinfo of `path`: `None` if the cache does not have it
    /// (or has a narinfo for another name with the same hash part). This
    /// blocks (one small file read).
    ///
    /// # Errors
    /// [`StoreError::Io`] if reading fails, [`StoreError::Corrupt`] if the
    /// narinfo does not parse.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, StoreError> {
        self.inner.read_narinfo(path)
    }
}

/// Reads `nix-cache-info` (`None` if there is none) and checks that it
/// is for `store_dir`; the URL's `want-mass-query` and `priority` win.
fn read_cache_info(
    url: &str,
    root: &Path,
    store_dir: &StoreDir,
    want_mass_query: Option<bool>,
    priority: Option<i64>,
) -> Result<Option<CacheInfo>, StoreError> {
    let path = root.join("nix-cache-info");
    let mut info = match read_limited(&path, MAX_NARINFO_LEN) {
        Ok(text) => {
            let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
                store: url.to_owned(),
                message: format!("'{}': {e}", path.display()),
            };
            let info = CacheInfo::parse(&text).map_err(|e| corrupt(&e))?;
            info.check_store_dir(store_dir).map_err(|e| corrupt(&e))?;
            info
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    if let Some(w) = want_mass_query {
        info.want_mass_query = w;
    }
    if priority.is_some() {
        info.priority = priority;
    }
    Ok(Some(info))
}

impl Inner {
    fn narinfo_path(&self, path: &StorePath) -> PathBuf {
        self.root.join(format!("{}.narinfo", path.hash_part()))
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            store: self.url.clone(),
            message,
        }
    }

    fn not_found(&self, path: &StorePath) -> StoreError {
        StoreError::NotFound {
            store: self.url.clone(),
            path: self.store_dir.display(path).to_string(),
        }
    }

    /// The narinfo of `path`, if the cache has it under that full name.
    fn read_narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, StoreError> {
        let info = self.read_by_hash_part(path.hash_part())?;
        // Nix requires the hash part and the name to match (docs/formats.md §3.1).
        Ok(info.filter(|info| info.store_path() == path))
    }

    /// The narinfo stored under hash part `hash` (a valid hash part), if
    /// its path has that hash part.
    fn read_by_hash_part(&self, hash: &str) -> Result<Option<NarInfo>, StoreError> {
        let file = self.root.join(format!("{hash}.narinfo"));
        let text = match read_limited(&file, MAX_NARINFO_LEN) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(self.corrupt(format!("'{}': {e}", file.display())))
            }
            Err(e) => return Err(io_err("reading", &file)(e)),
        };
        let info = NarInfo::parse_in(&text, &self.store_dir)
            .map_err(|e| self.corrupt(format!("'{}': {e}", file.display())))?;
        Ok((info.store_path().hash_part() == hash).then_some(info))
    }

    /// The path infos of those of `paths` the cache has.
    fn read_path_infos(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>, StoreError> {
        let mut infos = Vec::with_capacity(paths.len());
        for path in paths {
            if let Some(narinfo) = self.read_narinfo(path)? {
                infos.push(PathInfo::from_narinfo(&narinfo));
            }
        }
        Ok(infos)
    }

    /// The NAR file of `path` and its narinfo.
    fn open_nar_file(&self, path: &StorePath) -> Result<(File, NarInfo), StoreError> {
        let narinfo = self
            .read_narinfo(path)?
            .ok_or_else(|| self.not_found(path))?;
        let file = self.nar_file_path(narinfo.url())?;
        let f = File::open(&file).map_err(io_err("opening", &file))?;
        Ok((f, narinfo))
    }

    /// The file a narinfo `URL` names, which must stay inside the cache.
    fn nar_file_path(&self, url: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(url);
        let inside = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || url.contains("://") {
            return Err(self.corrupt(format!(
                "NAR URL '{url}' is not a relative path inside the cache"
            )));
        }
        Ok(self.root.join(rel))
    }

    /// The base name of temporary NAR files for `path`.
    fn nar_tmp_base(&self, path: &StorePath) -> PathBuf {
        self.root.join("nar").join(path.hash_part())
    }

    /// Creates what the cache lacks of its layout (the directory, `nar/`,
    /// `log/`, `realisations/`, `nix-cache-info`), as Nix's
    /// `LocalBinaryCacheStore::init` does, before the first write.
    fn lay_out(&self) -> Result<(), StoreError> {
        let mut done = self.laid_out.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return Ok(());
        }
        for sub in ["nar", "log", "realisations"] {
            let dir = self.root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        let info = self.root.join("nix-cache-info");
        if !info.exists() {
            atomic::write_atomic(&info, self.new_cache_info.render().as_bytes())?;
        }
        *done = true;
        Ok(())
    }

    /// Adds a path from its NAR, read from `src`. See the module docs.
    fn add_nar(&self, info: &PathInfo, src: impl Read) -> Result<(), StoreError> {
        if self.narinfo_path(&info.path).exists() {
            return Ok(());
        }
        self.lay_out()?;
        let staged = self
            .writer
            .encode(info, src, &self.nar_tmp_base(&info.path))?;
        self.commit(info, staged)
    }

    /// Adds a path from its NAR file, compressed as this store writes them,
    /// read from `src`.
    fn add_nar_file(
        &self,
        info: &PathInfo,
        nar: FileFacts,
        src: impl Read,
    ) -> Result<(), StoreError> {
        if self.narinfo_path(&info.path).exists() {
            return Ok(());
        }
        self.lay_out()?;
        let staged = self
            .writer
            .encode_file(info, nar, src, &self.nar_tmp_base(&info.path))?;
        self.commit(info, staged)
    }

    /// Moves a complete NAR file into place, then writes the listing and,
    /// last, the narinfo.
    fn commit(&self, info: &PathInfo, staged: StagedNar) -> Result<(), StoreError> {
        let StagedNar { tmp, file, listing } = staged;
        let nar_path = self.root.join(&file.url);
        if nar_path.exists() {
            // Content-addressed: the same bytes are there already.
            drop(tmp);
        } else {
            tmp.commit(&nar_path, self.fsync)?;
        }
        if let Some(listing) = listing {
            let ls = self.root.join(format!("{}.ls", info.path.hash_part()));
            atomic::write(&ls, listing.to_json().as_bytes(), self.fsync)?;
        }
        let narinfo = self.writer.narinfo(info, file)?;
        atomic::write(
            &self.narinfo_path(&info.path),
            narinfo.as_str().as_bytes(),
            self.fsync,
        )?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn url(&self) -> &str {
        &self.inner.url
    }

    async fn refresh_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::BTreeSet<StorePath>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let paths = paths.to_vec();
        tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            let mut present = std::collections::BTreeSet::new();
            for path in paths {
                let file = inner.narinfo_path(&path);
                // Opened for writing only to set its time; nothing is written.
                // A file whose time cannot be set (a cache this user may
                // not write) is still there.
                match fs::OpenOptions::new().write(true).open(&file) {
                    Ok(f) => {
                        let _ = f.set_modified(now);
                        present.insert(path);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => {
                        present.insert(path);
                    }
                }
            }
            Ok::<_, StoreError>(present)
        })
        .await
        .map_err(join_error)?
    }

    fn store_dir(&self) -> &StoreDir {
        &self.inner.store_dir
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.writer.capabilities()
    }

    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let mut found = BTreeMap::new();
        let mut batches = paths.chunks(QUERY_BATCH);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() < QUERY_TASKS {
                let Some(batch) = batches.next() else { break };
                let inner = self.inner.clone();
                let batch = batch.to_vec();
                tasks.spawn_blocking(move || inner.read_path_infos(&batch));
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            for info in done.map_err(join_error)?? {
                found.insert(info.path.clone(), info);
            }
        }
        Ok(found)
    }

    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        let inner = self.inner.clone();
        let path = info.path.clone();
        // Open first, so that a missing path fails here, not in the stream.
        let (file, narinfo) = tokio::task::spawn_blocking(move || inner.open_nar_file(&path))
            .await
            .map_err(join_error)??;
        Ok(blocking_stream(move |out| {
            let input = BufReader::with_capacity(CHUNK_SIZE, file);
            let mut dec = compression::lenient_decoder(narinfo.compression(), input)?;
            out.fill_from(&mut dec)
        }))
    }

    async fn compressed_nar(&self, info: &PathInfo) -> Result<Option<CompressedNar>, StoreError> {
        let inner = self.inner.clone();
        let path = info.path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let (mut file, narinfo) = inner.open_nar_file(&path)?;
            let name = narinfo.url().to_owned();
            let err = |e| io_err("reading", &inner.root.join(&name))(e);
            // Report what the file really is where Nix would sniff it, so
            // that a passthrough copy labels it right.
            let declared = narinfo.compression().clone();
            let compression = if compression::is_sniffed(&declared) {
                let mut head = Vec::with_capacity(compression::SNIFF_LEN);
                (&mut file)
                    .take(compression::SNIFF_LEN as u64)
                    .read_to_end(&mut head)
                    .map_err(err)?;
                file.rewind().map_err(err)?;
                compression::sniff(&head).unwrap_or(declared)
            } else {
                declared
            };
            let file_size = match narinfo.file_size() {
                Some(size) => size,
                None => file.metadata().map_err(err)?.len(),
            };
            Ok::<_, StoreError>((file, compression, narinfo.file_hash().copied(), file_size))
        })
        .await
        .map_err(join_error)??;
        let (file, compression, file_hash, file_size) = opened;
        Ok(Some(CompressedNar {
            compression,
            file_hash,
            file_size: Some(file_size),
            stream: blocking_stream(move |out| {
                let mut file = file;
                out.fill_from(&mut file)
            }),
        }))
    }

    async fn query_path_from_hash_part(&self, hash: &str) -> Result<Option<PathInfo>, StoreError> {
        // Only a hash part can name a narinfo: nothing else is read.
        if !is_hash_part(hash) {
            return Ok(None);
        }
        let inner = self.inner.clone();
        let hash = hash.to_owned();
        let info = tokio::task::spawn_blocking(move || inner.read_by_hash_part(&hash))
            .await
            .map_err(join_error)??;
        Ok(info.as_ref().map(PathInfo::from_narinfo))
    }

    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let info = info.clone();
        let src = SyncIoBridge::new(nar);
        tokio::task::spawn_blocking(move || inner.add_nar(&info, src))
            .await
            .map_err(join_error)?
    }

    async fn add_compressed(&self, info: &PathInfo, nar: CompressedNar) -> Result<(), StoreError> {
        self.inner
            .writer
            .check_compressed(&self.inner.url, &nar.compression)?;
        let inner = self.inner.clone();
        let info = info.clone();
        let facts = FileFacts {
            file_hash: nar.file_hash,
            file_size: nar.file_size,
        };
        let src = SyncIoBridge::new(nar.stream);
        tokio::task::spawn_blocking(move || inner.add_nar_file(&info, facts, src))
            .await
            .map_err(join_error)?
    }
}

/// A blocking task of a `file://` store that panicked or was cancelled.
fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::task_died("a blocking task of a file:// store", e)
}

/// Reads a text file of at most `limit` bytes (one more is read, so that
/// the parser sees the file is too long). Not UTF-8 is
/// [`io::ErrorKind::InvalidData`].
fn read_limited(path: &Path, limit: usize) -> io::Result<String> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}
