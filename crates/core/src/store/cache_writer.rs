//! The binary cache writer that the `file://`, HTTP and S3 stores share,
//! so that all of them write the same files: a NAR handed to a binary
//! cache is decoded strictly and checked against its path info while it is
//! compressed (on a second thread for large NARs) into a temporary file
//! named by [`crate::atomic`], or, when it comes compressed as the cache
//! writes them, copied byte for byte while a second thread checks it
//! ([`NarFileCheck`]). What comes out is a [`StagedNar`]: the complete
//! file, its name, hash and size, and its listing if asked for, for the
//! store to move into place or upload, followed by the narinfo
//! ([`CacheWriter::narinfo`], signed with `?secret-key=`).
//!
//! See the `file://` store's module docs ([`super::file`]) for the URL
//! parameters it reads and the order in which files appear.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::chunks::CHUNK_SIZE;
use super::verify::{self, NarFileCheck};
use super::{Capabilities, NarFile, PathInfo, StoreError, StoreUrl};
use crate::atomic::{AtomicFile, BackgroundSync};
use crate::compression::{self, Compression};
use crate::hash::{HashingWriter, NixHash};
use crate::nar::{self, NarError, NarSummary};
use crate::narinfo::NarInfo;
use crate::signing::{KeyFileError, SecretKey};
use crate::store_path::{StoreDir, StorePath};

/// NARs at least this large are decoded and hashed on one thread while
/// another compresses and writes them, when there are two CPUs or more.
/// Smaller ones are not worth a thread.
const PIPELINE_MIN: u64 = 4 << 20;

/// Chunks (of up to 64 KiB, as the NAR decoder reads them) that may wait
/// for the compressing thread.
const PIPELINE_DEPTH: usize = 16;

/// How a binary cache writes NAR files, from the URL's writing parameters
/// (`compression`, `compression-level`, `parallel-compression`,
/// `write-nar-listing`, `secret-key`): shared by the `file://`, HTTP and
/// S3 stores, so that all of them write the same files.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    store_dir: StoreDir,
    compression: Compression,
    level: Option<i32>,
    /// Threads for one NAR's compression with `parallel-compression`: the
    /// CPUs, shared among the NARs being written at the time.
    threads: u32,
    /// NARs being written now.
    writing: AtomicUsize,
    /// Whether large NAR files are flushed to disk while they are written
    /// (the store flushes them again when it puts them in place).
    fsync: bool,
    write_listing: bool,
    secret_key: Option<SecretKey>,
    /// Whether large NARs are decoded and compressed on two threads.
    pipeline: bool,
}

/// A NAR file written to a temporary file by [`CacheWriter`], not yet in
/// place, with its facts and (if asked) its listing.
pub(crate) struct StagedNar {
    /// The complete file, removed when dropped.
    pub(crate) tmp: AtomicFile,
    /// Its name, compression, hash and size.
    pub(crate) file: NarFile,
    /// The NAR's listing, with `write-nar-listing`.
    pub(crate) listing: Option<nar::Listing>,
}

/// The compression of new NAR files when the URL names none: zstd,
/// which Nix reads and which compresses many times faster than xz (Nix's
/// own default); xz, then none, in builds without it.
pub(crate) fn default_compression() -> Compression {
    [Compression::Zstd, Compression::Xz]
        .into_iter()
        .find(compression::is_supported)
        .unwrap_or(Compression::None)
}

impl CacheWriter {
    /// The writing parameters of a binary cache URL. With `fsync`, large
    /// NAR files are flushed to disk while they are written, for a store
    /// that flushes them when it commits them ([`AtomicFile::commit`]).
    pub(crate) fn from_url(
        url: &StoreUrl,
        store_dir: StoreDir,
        fsync: bool,
    ) -> Result<Self, StoreError> {
        let compression = match url.param("compression") {
            None => default_compression(),
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
    #[cfg(any(feature = "http", feature = "s3"))]
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

    /// Reads the NAR in `src` strictly, checks it against `info`, and
    /// writes it compressed to a temporary file
    /// `<tmp_base>.tmp.<pid>.<random>`. Nothing is left behind on failure.
    pub(crate) fn encode(
        &self,
        info: &PathInfo,
        src: impl Read,
        tmp_base: &Path,
    ) -> Result<StagedNar, StoreError> {
        let tmp = AtomicFile::create(tmp_base)?;
        let sink = FileSink::new(&tmp, self.compression == Compression::None, self.fsync)?;
        let writing = Writing::start(&self.writing);
        let threads = self.compression_threads(info.nar_size, writing.count);
        let enc = compression::encoder(&self.compression, self.level, threads, sink)
            .map_err(|e| io_err("compressing", tmp.path())(e.into()))?;
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
        let enc = enc.map_err(io_err("writing", tmp.path()))?;
        let (summary, listing) = decoded.map_err(|e| nar_error(e, &info.path))?;
        verify::check_info(info, &self.store_dir, &summary)?;

        let sink = enc.finish().map_err(io_err("writing", tmp.path()))?;
        let (file_hash, file_size) = sink.finish(tmp.path(), summary.nar_hash)?;
        Ok(StagedNar {
            tmp,
            file: self.nar_file(file_hash, file_size),
            listing,
        })
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

    /// As [`Self::decode`], with `enc` compressing and writing on a
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
        let tmp = AtomicFile::create(tmp_base)?;
        // Hashed even for `none`: the bytes are checked, not assumed.
        let mut sink = FileSink::new(&tmp, false, self.fsync)?;
        let mut check = NarFileCheck::start(&self.compression, self.write_listing)
            .map_err(io_err("checking", tmp.path()))?;
        let copied = copy(
            src,
            &mut Both(&mut sink, &mut check),
            tmp.path(),
            &info.path,
        );
        let checked = check.finish_checked();
        match copied {
            // The check stopping is why writing failed: say why it stopped.
            Err(_) if check.stopped() => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let (summary, listing) = checked?;
        verify::check_info(info, &self.store_dir, &summary)?;
        let (file_hash, file_size) = sink.finish(tmp.path(), info.nar_hash)?;
        verify::check_file(
            &self.store_dir.full(&info.path),
            nar.file_hash.as_ref(),
            nar.file_size,
            &file_hash,
            file_size,
        )?;
        Ok(StagedNar {
            tmp,
            file: self.nar_file(file_hash, file_size),
            listing,
        })
    }

    /// The facts of a NAR file this writer wrote, named by its hash.
    fn nar_file(&self, file_hash: NixHash, file_size: u64) -> NarFile {
        NarFile {
            url: nar_file_name(&file_hash, &self.compression),
            compression: self.compression.clone(),
            file_hash: Some(file_hash),
            file_size: Some(file_size),
        }
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

/// Reads and parses a secret key file (`?secret-key=`).
fn load_secret_key(file: &str) -> Result<SecretKey, StoreError> {
    let source = match SecretKey::from_file(file) {
        Ok(key) => return Ok(key),
        Err(KeyFileError::Read { source, .. }) => source,
        Err(KeyFileError::Parse { source, .. }) => {
            io::Error::new(io::ErrorKind::InvalidData, source)
        }
    };
    Err(StoreError::Io {
        what: "reading secret key",
        path: file.to_owned(),
        source,
    })
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

/// The writing end of the channel to [`CacheWriter::decode_pipelined`]'s writer.
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
/// With `fsync`, once more than [`SYNC_EVERY`] bytes are written, a
/// helper thread flushes the file to disk again and again while writing
/// goes on ([`BackgroundSync`]), so the disk works while the CPU hashes
/// and compresses; the last data is flushed by the thread that wrote it,
/// while the NAR's check may still be running, and the fsync when the
/// store puts the file in place ([`AtomicFile::commit`]) finds nothing
/// left to do.
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

impl FileSink {
    /// A sink writing to `tmp`; `is_nar` when the file is the uncompressed
    /// NAR, which then need not be hashed again. With `fsync`, large files
    /// are flushed to disk in the background while they are written.
    fn new(tmp: &AtomicFile, is_nar: bool, fsync: bool) -> Result<Self, StoreError> {
        let f = tmp
            .as_file()
            .try_clone()
            .map_err(io_err("opening", tmp.path()))?;
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
    /// still runs when the file is committed.
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
            syncer.request();
        }
    }

    /// Writes what is buffered and waits for the background flushes;
    /// returns the file's hash (`nar_hash` if the sink was made for the
    /// NAR itself) and size.
    fn finish(self, tmp: &Path, nar_hash: NixHash) -> Result<(NixHash, u64), StoreError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err("writing", tmp)(e.into_error()))?;
        if let Some(syncer) = self.syncer {
            syncer.finish().map_err(io_err("writing", tmp))?;
        }
        if self.fsync {
            file.sync_data().map_err(io_err("writing", tmp))?;
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

/// The [`StoreError::Io`] of `what` ("reading", "writing", …) done to
/// `path`, for `map_err`. Used by every binary cache store.
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

/// The name, relative to the cache root, of a NAR file: `nar/<file hash>.nar<ext>`.
pub fn nar_file_name(file_hash: &NixHash, compression: &Compression) -> String {
    format!("nar/{}{}", file_hash.to_nix32(), compression.extension())
}
