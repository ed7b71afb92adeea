//! A binary cache in a local directory (`file:///dir`), in exactly the
//! layout `nix copy --to file://` writes (docs/formats.md §3.1):
//!
//! ```text
//! <dir>/nix-cache-info                 StoreDir: /nix/store
//! <dir>/<hashPart>.narinfo             one per path, written last
//! <dir>/<hashPart>.ls                  with ?write-nar-listing=true
//! <dir>/nar/<fileHash>.nar<ext>        the NAR, compressed, named by the file's hash
//! <dir>/log/, <dir>/realisations/      created empty, as by Nix
//! ```
//!
//! # URL parameters
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `compression` | `xz` | `none`, `xz`, `zstd`, `bzip2` or `br` ([`crate::compression`]) |
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
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use super::chunks::{blocking_stream, CHUNK_SIZE};
use super::verify::{self, NarFileCheck};
use super::{
    url::Scheme, Capabilities, CompressedNar, NarFile, NarStream, PathInfo, Store, StoreError,
    StoreUrl, UrlError,
};
use crate::atomic;
use crate::compression::{self, Compression};
use crate::hash::{HashingWriter, NixHash};
use crate::nar::{self, NarError, NarSummary};
use crate::narinfo::{CacheInfo, NarInfo, MAX_NARINFO_LEN};
use crate::signing::SecretKey;
use crate::store_path::{StoreDir, StorePath};

/// NARs at least this large are decoded and hashed on one thread while
/// another compresses and writes them, when there are two CPUs or more.
/// Smaller ones are not worth a thread.
const PIPELINE_MIN: u64 = 4 << 20;

/// Chunks (of up to 64 KiB, as the NAR decoder reads them) that may wait
/// for the compressing thread.
const PIPELINE_DEPTH: usize = 16;

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
    writer: NarWriter,
}

/// How a binary cache writes NAR files, from the URL's writing parameters
/// (`compression`, `compression-level`, `parallel-compression`,
/// `write-nar-listing`, `secret-key`): shared by the `file://` and HTTP
/// stores, so that both write the same files.
#[derive(Debug)]
pub(crate) struct NarWriter {
    store_dir: StoreDir,
    compression: Compression,
    level: Option<i32>,
    /// Threads for one NAR's compression with `parallel-compression`: the
    /// CPUs, shared among the NARs being written at the time.
    threads: u32,
    /// NARs being written now.
    writing: AtomicUsize,
    /// Whether NAR files are flushed to disk before they are complete.
    fsync: bool,
    write_listing: bool,
    secret_key: Option<SecretKey>,
    /// Whether large NARs are decoded and compressed on two threads.
    pipeline: bool,
}

/// A NAR file written to a temporary file by [`NarWriter`], not yet in
/// place, with its facts and (if asked) its listing.
pub(crate) struct StagedNar {
    /// The complete file, removed when dropped.
    pub(crate) tmp: TempFile,
    /// Its name, compression, hash and size.
    pub(crate) file: NarFile,
    /// The NAR's listing, with `write-nar-listing`.
    pub(crate) listing: Option<nar::Listing>,
}

impl FileStore {
    /// Opens the cache a `file:///dir?…` URL names, creating the directory,
    /// `nar/`, `log/`, `realisations/` and `nix-cache-info` if missing, as
    /// Nix does (even to read).
    ///
    /// If the directories cannot be created but the cache directory exists
    /// (a read-only cache), opening goes on: reading works, and writing
    /// fails when it is tried.
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
        let writer = NarWriter::from_url(url, store_dir.clone(), fsync)?;
        let want_mass_query = url
            .param("want-mass-query")
            .map(|_| url.bool_param("want-mass-query", false))
            .transpose()?;
        let priority = url.int_param("priority")?;

        let root = PathBuf::from(url.location());
        create_dirs(&root)?;
        let cache_info =
            read_or_create_cache_info(url.as_str(), &root, &store_dir, want_mass_query, priority)?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.as_str().to_owned(),
                root,
                store_dir,
                cache_info,
                fsync,
                writer,
            }),
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The compression NAR files are written with.
    pub fn compression(&self) -> &Compression {
        &self.inner.writer.compression
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

impl NarWriter {
    /// The writing parameters of a binary cache URL. NAR files are
    /// flushed to disk when complete if `fsync`.
    pub(crate) fn from_url(
        url: &StoreUrl,
        store_dir: StoreDir,
        fsync: bool,
    ) -> Result<Self, StoreError> {
        let compression = match url.param("compression") {
            None => Compression::Xz,
            Some(name) => {
                let c = Compression::parse(name);
                if name.is_empty() || !compression::is_supported(&c) {
                    return Err(url
                        .bad_value("compression", name, "supported: none, xz, zstd, bzip2, br")
                        .into());
                }
                c
            }
        };
        let level = match url.int_param("compression-level")? {
            None => None,
            Some(l) => {
                let reason = match compression {
                    Compression::Xz => "xz levels are 0 to 9",
                    Compression::Zstd => "zstd levels are -131072 to 22",
                    Compression::Bzip2 => "bzip2 levels are 1 to 9",
                    Compression::Br => "br levels are 0 to 11",
                    _ => "out of range for the compression method",
                };
                let bad = || url.bad_value("compression-level", &l.to_string(), reason);
                let l = i32::try_from(l).map_err(|_| bad())?;
                compression::check_level(&compression, l).map_err(|_| bad())?;
                Some(l)
            }
        };
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let threads = if url.bool_param("parallel-compression", false)? {
            cpus
        } else {
            1
        };
        let write_listing = url.bool_param("write-nar-listing", false)?;
        if url.bool_param("index-debug-info", false)? {
            return Err(url
                .bad_value("index-debug-info", "true", "not supported by nixferry")
                .into());
        }
        url.bool_param("trusted", false)?;
        let secret_key = url.param("secret-key").map(load_secret_key).transpose()?;
        Ok(Self {
            store_dir,
            compression,
            level,
            threads,
            writing: AtomicUsize::new(0),
            fsync,
            write_listing,
            secret_key,
            pipeline: cpus > 1,
        })
    }

    /// The writing parameters of a remote binary cache's URL, whose NAR
    /// files are staged in temporary files (never flushed: they only live
    /// until uploaded), with its `want-mass-query` and `priority`.
    pub(crate) fn for_remote(
        url: &StoreUrl,
    ) -> Result<(Self, Option<bool>, Option<i64>), StoreError> {
        let writer = Self::from_url(url, StoreDir::default(), false)?;
        let want_mass_query = url
            .param("want-mass-query")
            .map(|_| url.bool_param("want-mass-query", false))
            .transpose()?;
        let priority = url.int_param("priority")?;
        Ok((writer, want_mass_query, priority))
    }

    /// The compression NAR files are written with.
    pub(crate) fn compression(&self) -> &Compression {
        &self.compression
    }

    /// What a binary cache writing through this writer can do.
    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_references_first: false,
            keeps_signatures: true,
            writes_compression: Some(self.compression.clone()),
            signs: self.signs(),
            verifies_nar: true,
            max_parallel_adds: self.heavy_compression().then(cpus),
            ..Capabilities::default()
        }
    }

    /// Whether compressing takes the CPUs and much memory per NAR (xz,
    /// bzip2, brotli), so that more NARs at once than CPUs gain nothing.
    fn heavy_compression(&self) -> bool {
        matches!(
            self.compression,
            Compression::Xz | Compression::Bzip2 | Compression::Br
        )
    }

    /// Refuses a NAR file compressed other than as this writer writes
    /// them, for [`Store::add_compressed`] of the store `url`.
    pub(crate) fn check_compressed(
        &self,
        url: &str,
        compression: &Compression,
    ) -> Result<(), StoreError> {
        if *compression == self.compression {
            return Ok(());
        }
        Err(StoreError::Unsupported {
            store: url.to_owned(),
            what: "adding NAR files compressed other than the store's compression",
        })
    }

    /// Whether narinfos are signed.
    pub(crate) fn signs(&self) -> bool {
        self.secret_key.is_some()
    }

    /// The narinfo of `info` stored as `file`, signed if the store has a
    /// secret key.
    pub(crate) fn narinfo(&self, info: &PathInfo, file: NarFile) -> Result<NarInfo, StoreError> {
        let mut narinfo = NarInfo::new(info.narinfo_fields(&self.store_dir, file))?;
        if let Some(key) = &self.secret_key {
            narinfo.sign(key);
        }
        Ok(narinfo)
    }
}

/// Reads and parses a secret key file (`?secret-key=`).
fn load_secret_key(file: &str) -> Result<SecretKey, StoreError> {
    let err = |source| StoreError::Io {
        what: "reading secret key",
        path: file.to_owned(),
        source,
    };
    let text = fs::read_to_string(file).map_err(err)?;
    SecretKey::parse(&text).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Creates the cache directory and its subdirectories, as Nix's
/// `LocalBinaryCacheStore::init` does. A failure is tolerated for an
/// existing cache directory, so that read-only caches can be read.
fn create_dirs(root: &Path) -> Result<(), StoreError> {
    for sub in ["nar", "log", "realisations"] {
        let dir = root.join(sub);
        if let Err(e) = fs::create_dir_all(&dir) {
            if !root.is_dir() {
                return Err(io_err("creating", &dir)(e));
            }
        }
    }
    Ok(())
}

/// Reads `nix-cache-info`, or creates it as Nix does (`StoreDir` only,
/// plus the URL's `want-mass-query` and `priority` if given), and checks
/// that it is for `store_dir`.
fn read_or_create_cache_info(
    url: &str,
    root: &Path,
    store_dir: &StoreDir,
    want_mass_query: Option<bool>,
    priority: Option<i64>,
) -> Result<CacheInfo, StoreError> {
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
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut info = CacheInfo::new(store_dir.clone());
            info.want_mass_query = want_mass_query.unwrap_or(false);
            info.priority = priority;
            atomic::write_atomic(&path, info.render().as_bytes())?;
            info
        }
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    if let Some(w) = want_mass_query {
        info.want_mass_query = w;
    }
    if priority.is_some() {
        info.priority = priority;
    }
    Ok(info)
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
        let file = self.narinfo_path(path);
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
        // Nix requires the hash part and the name to match (docs/formats.md §3.1).
        Ok((info.store_path() == path).then_some(info))
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

    /// Adds a path from its NAR, read from `src`. See the module docs.
    fn add_nar(&self, info: &PathInfo, src: impl Read) -> Result<(), StoreError> {
        if self.narinfo_path(&info.path).exists() {
            return Ok(());
        }
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
            tmp.persist(&nar_path)?;
            if self.fsync {
                atomic::sync_dir(&self.root.join("nar"))?;
            }
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

impl NarWriter {
    /// Reads the NAR in `src` strictly, checks it against `info`, and
    /// writes it compressed to a temporary file
    /// `<tmp_base>.tmp.<pid>.<random>`. Nothing is left behind on failure.
    pub(crate) fn encode(
        &self,
        info: &PathInfo,
        src: impl Read,
        tmp_base: &Path,
    ) -> Result<StagedNar, StoreError> {
        let tmp = TempFile::create(tmp_base)?;
        let sink = FileSink::new(&tmp, self.compression == Compression::None, self.fsync)?;
        let writing = Writing::start(&self.writing);
        let threads = self.compression_threads(info.nar_size, writing.count);
        let enc = compression::encoder(&self.compression, self.level, threads, sink)
            .map_err(|e| io_err("compressing", &tmp.path)(e.into()))?;
        let (decoded, enc) = if self.pipeline && info.nar_size >= PIPELINE_MIN {
            self.decode_pipelined(src, enc)
        } else {
            let (decoded, tee) = self.decode(src, enc);
            let enc = match tee.write_error {
                Some(e) => Err(e),
                None => Ok(tee.out),
            };
            (decoded, enc)
        };
        // A failed write is the cause when there is one (then the decoder
        // only saw the tee fail).
        let enc = enc.map_err(io_err("writing", &tmp.path))?;
        let (summary, listing) = decoded.map_err(|e| nar_error(e, &info.path))?;
        verify::check_info(info, &self.store_dir, &summary)?;

        let sink = enc.finish().map_err(io_err("writing", &tmp.path))?;
        let (file_hash, file_size) = sink.finish(&tmp.path, summary.nar_hash)?;
        let file = NarFile {
            url: nar_file_name(&file_hash, &self.compression),
            compression: self.compression.clone(),
            file_hash: Some(file_hash),
            file_size: Some(file_size),
        };
        Ok(StagedNar { tmp, file, listing })
    }

    /// Reads the NAR in `src` strictly and to its end (so that the
    /// stream's own checks run), writing every byte read to `out`; returns
    /// its hash, size and (if the store writes them) listing, and the tee,
    /// which holds `out` and the first error writing to it.
    fn decode<R: Read, W: Write>(&self, src: R, out: W) -> (Decoded, Tee<R, W>) {
        let mut tee = Tee {
            src,
            out,
            write_error: None,
        };
        let decoded = verify::decode(&mut tee, self.write_listing);
        (decoded, tee)
    }

    /// As [`Inner::decode`], with `enc` compressing and writing on a
    /// second thread while this one decodes and hashes. Returns the
    /// encoder, or the error that stopped it.
    fn decode_pipelined<R: Read, W: Write + Send>(
        &self,
        src: R,
        mut enc: W,
    ) -> (Decoded, io::Result<W>) {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
            let writer = scope.spawn(move || {
                for chunk in rx {
                    enc.write_all(&chunk)?;
                }
                Ok(enc)
            });
            let (decoded, tee) = self.decode(src, ChunkSender { tx });
            // Closes the channel: the writer ends.
            drop(tee);
            let enc = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the compressing thread panicked")));
            (decoded, enc)
        })
    }

    /// Copies a NAR file compressed as this store writes them from `src`
    /// to a temporary file `<tmp_base>.tmp.<pid>.<random>`, byte for byte.
    /// The file's own hash and size, which the caller gives but no signature
    /// covers, are only checked; what makes the file trusted is its
    /// content: a second thread ([`NarFileCheck`]) decompresses and decodes
    /// it while it is copied, and its NAR must match `info`'s `narHash` and
    /// `narSize` (the listing, if asked for, comes from the same pass).
    pub(crate) fn encode_file(
        &self,
        info: &PathInfo,
        nar: FileFacts,
        src: impl Read,
        tmp_base: &Path,
    ) -> Result<StagedNar, StoreError> {
        let tmp = TempFile::create(tmp_base)?;
        // Hashed even for `none`: the bytes are checked, not assumed.
        let mut sink = FileSink::new(&tmp, false, self.fsync)?;
        let mut check = NarFileCheck::start(&self.compression, self.write_listing)
            .map_err(io_err("checking", &tmp.path))?;
        let copied = copy(src, &mut Both(&mut sink, &mut check), &tmp.path, &info.path);
        let checked = check.finish_checked();
        match copied {
            // The check stopping is why writing failed: say why it stopped.
            Err(_) if check.stopped() => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let (summary, listing) = checked?;
        verify::check_info(info, &self.store_dir, &summary)?;
        let (file_hash, file_size) = sink.finish(&tmp.path, info.nar_hash)?;
        verify::check_file(
            &self.store_dir.full(&info.path),
            nar.file_hash.as_ref(),
            nar.file_size,
            &file_hash,
            file_size,
        )?;
        let file = NarFile {
            url: nar_file_name(&file_hash, &self.compression),
            compression: self.compression.clone(),
            file_hash: Some(file_hash),
            file_size: Some(file_size),
        };
        Ok(StagedNar { tmp, file, listing })
    }

    /// How many threads compress a NAR of `nar_size` bytes while `writing`
    /// NARs (this one included) are being written: with
    /// `parallel-compression`, the CPUs are shared among them, so that a
    /// copy running several paths at once does not start more compressing
    /// threads (each with its own buffers) than there are CPUs. Small NARs
    /// get one: splitting them would not pay.
    fn compression_threads(&self, nar_size: u64, writing: usize) -> u32 {
        if self.threads <= 1 || nar_size < PARALLEL_MIN {
            return 1;
        }
        let writing = u32::try_from(writing.max(1)).unwrap_or(u32::MAX);
        (self.threads / writing).max(1)
    }
}

/// The CPUs this process may use.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// NARs smaller than this are compressed on one thread.
const PARALLEL_MIN: u64 = 8 << 20;

/// Counts a NAR as being written while it lives.
struct Writing<'a> {
    counter: &'a AtomicUsize,
    /// NARs being written when this one started, this one included.
    count: usize,
}

impl<'a> Writing<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        Self { counter, count }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the caller of [`Store::add_compressed`] says about the file.
pub(crate) struct FileFacts {
    /// The file's hash, if known.
    pub(crate) file_hash: Option<NixHash>,
    /// The file's size, if known.
    pub(crate) file_size: Option<u64>,
}

/// The error of a NAR that could not be read: the stream's own error
/// (see [`stream_error`]) when reading it failed, else the decoder's.
fn nar_error(e: NarError, path: &StorePath) -> StoreError {
    match e {
        NarError::Io(source) => stream_error(source, path),
        other => StoreError::Nar(other),
    }
}

/// The error for a failing input stream. A stream that fails with an
/// [`io::Error`] wrapping a [`StoreError`] (as a stream checking
/// `narHash` does) gives that `StoreError` back.
fn stream_error(source: io::Error, path: &StorePath) -> StoreError {
    StoreError::from_stream(source, "reading the NAR of", &path.to_string())
}

/// Copies `src` to `out` in large chunks, telling read errors (the
/// stream's) from write errors (the file's).
fn copy(
    mut src: impl Read,
    out: &mut impl Write,
    tmp: &Path,
    path: &StorePath,
) -> Result<u64, StoreError> {
    let mut buf = vec![0; CHUNK_SIZE];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e, path)),
        };
        out.write_all(&buf[..n]).map_err(io_err("writing", tmp))?;
        total += n as u64;
    }
}

/// What decoding a NAR gives: its hash and size, and its listing if asked.
type Decoded = Result<(NarSummary, Option<nar::Listing>), NarError>;

/// The writing end of the channel to [`Inner::decode_pipelined`]'s writer.
struct ChunkSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.send(buf.to_vec()).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the compressing thread stopped")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that writes everything to both of its writers.
struct Both<'a, A, B>(&'a mut A, &'a mut B);

impl<A: Write, B: Write> Write for Both<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// A reader that writes everything it reads to `out`, keeping the first
/// write error apart from read errors.
struct Tee<R, W> {
    src: R,
    out: W,
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.write_error.is_some() {
            return Err(io::Error::other("writing the NAR file failed"));
        }
        let n = self.src.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "writing the NAR file failed"));
        }
        Ok(n)
    }
}

/// The temporary NAR file: buffered, counting and (unless it is the NAR
/// itself, whose hash the NAR decoder computes) hashing what is written.
///
/// Once more than [`SYNC_EVERY`] bytes are written, a helper thread flushes
/// the file to disk again and again while writing goes on, so the disk
/// works while the CPU hashes and compresses, and the final fsync finds
/// little left to do.
struct FileSink {
    out: BufWriter<File>,
    hasher: Option<HashingWriter<io::Sink>>,
    size: u64,
    synced_at: u64,
    syncer: Option<BackgroundSync>,
    fsync: bool,
}

/// Bytes written between two requests to flush a NAR file in the
/// background.
const SYNC_EVERY: u64 = 32 << 20;

/// A thread that flushes a file to disk each time it is asked to.
struct BackgroundSync {
    requests: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

impl BackgroundSync {
    fn start(file: File) -> io::Result<Self> {
        // One request may wait while a flush runs; more would be no use.
        let (requests, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("nixferry-fsync".into())
            .spawn(move || {
                for () in rx {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Self { requests, thread })
    }

    /// Waits for the flushes asked for so far.
    fn finish(self) -> io::Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")))
    }
}

impl FileSink {
    /// A sink writing to `tmp`; `is_nar` when the file is the uncompressed
    /// NAR, which then need not be hashed again.
    /// `fsync` says whether the file goes to disk before `finish`
    /// returns.
    fn new(tmp: &TempFile, is_nar: bool, fsync: bool) -> Result<Self, StoreError> {
        let f = tmp
            .as_file()
            .try_clone()
            .map_err(io_err("opening", &tmp.path))?;
        Ok(Self {
            out: BufWriter::with_capacity(CHUNK_SIZE, f),
            hasher: (!is_nar).then(|| HashingWriter::new(io::sink())),
            size: 0,
            // Without fsync, the background flushes never start.
            synced_at: if fsync { 0 } else { u64::MAX },
            syncer: None,
            fsync,
        })
    }

    /// Asks for the data written so far to go to disk, in the background.
    /// Failing to start the thread only costs speed: the final fsync
    /// still runs.
    fn request_sync(&mut self) {
        self.synced_at = self.size;
        if self.syncer.is_none() {
            self.syncer = self
                .out
                .get_ref()
                .try_clone()
                .and_then(BackgroundSync::start)
                .ok();
        }
        if let Some(syncer) = &self.syncer {
            // Full: a flush is pending, which will cover this data too.
            // Disconnected: it failed, and `finish` reports why.
            let _ = syncer.requests.try_send(());
        }
    }

    /// Flushes the file to disk; returns its hash (`nar_hash` if the sink
    /// was made for the NAR itself) and size.
    fn finish(self, tmp: &Path, nar_hash: NixHash) -> Result<(NixHash, u64), StoreError> {
        let f = self
            .out
            .into_inner()
            .map_err(|e| io_err("writing", tmp)(e.into_error()))?;
        if let Some(syncer) = self.syncer {
            syncer.finish().map_err(io_err("writing", tmp))?;
        }
        if self.fsync {
            f.sync_all().map_err(io_err("writing", tmp))?;
        }
        let hash = self.hasher.map_or(nar_hash, |h| h.finish().1);
        Ok((hash, self.size))
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(h) = &mut self.hasher {
            // Writing to a sink cannot fail.
            h.write_all(&buf[..n])?;
        }
        self.size += n as u64;
        if self.size.saturating_sub(self.synced_at) >= SYNC_EVERY {
            self.request_sync();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A temporary file (`<base>.tmp.<pid>.<random>`), removed when dropped
/// unless persisted.
pub(crate) type TempFile = atomic::AtomicFile;

#[async_trait::async_trait]
impl Store for FileStore {
    fn url(&self) -> &str {
        &self.inner.url
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

pub(crate) fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
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

/// The name, relative to the cache root, of a NAR file: `nar/<file hash>.nar<ext>`.
pub fn nar_file_name(file_hash: &NixHash, compression: &Compression) -> String {
    format!("nar/{}{}", file_hash.to_nix32(), compression.extension())
}
