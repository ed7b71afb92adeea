//! [`verify()`]: checks that a binary cache serves what it advertises.
//!
//! For every narinfo of the cache (or of the closure of given paths):
//!
//! | check | problem |
//! |---|---|
//! | it can be read and parses, under the name of its path's hash part | [`ProblemKind::Unreadable`], [`ProblemKind::Unparsable`], [`ProblemKind::WrongName`] |
//! | a signature by a trusted key verifies (or its content address does) | [`ProblemKind::Unsigned`], [`ProblemKind::Untrusted`] (signed by other keys only), [`ProblemKind::BadSignature`] (a trusted key's signature does not verify) |
//! | its NAR file exists, with the declared `FileSize` and `FileHash` | [`ProblemKind::NarMissing`], [`ProblemKind::NarFileMismatch`] |
//! | the file decompresses to a valid NAR of `NarSize` and `NarHash` | [`ProblemKind::NarCorrupt`], [`ProblemKind::NarMismatch`] |
//! | every reference has a narinfo in the cache (or in one of [`VerifyOptions::upstreams`]) | [`ProblemKind::MissingReference`] |
//! | its `.ls` listing, where there is one, is the NAR's | [`ProblemKind::ListingMismatch`] |
//!
//! A whole cache (one that can list its files) is also checked for NAR
//! files no narinfo names ([`ProblemKind::OrphanNar`]), listings without
//! a narinfo ([`ProblemKind::OrphanListing`]), temporary files left by
//! writers that died ([`ProblemKind::TemporaryFile`]) and multipart
//! uploads (of S3 caches) begun and never completed nor aborted
//! ([`ProblemKind::UnfinishedUpload`], see [`CacheFiles::list_uploads`]);
//! files written, and uploads begun, less than [`VerifyOptions::grace`]
//! ago are left out of those, since a writer at work has them. Given
//! paths that the cache lacks are [`ProblemKind::MissingPath`].
//!
//! NAR files are streamed, each read once on one thread (hashed as
//! stored, decompressed, decoded and hashed as a NAR; an uncompressed
//! file is hashed once, as its NAR), [`VerifyOptions::jobs`] at a time,
//! so memory stays bounded whatever their sizes; what is kept for
//! the whole cache is the names of its files.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use tokio_util::io::SyncIoBridge;

use super::{Cache, CacheFiles, FileEntry, FileKind, UploadEntry};
use crate::compression::Compression;
use crate::hash::{HashingReader, NixHash};
use crate::nar::{Listing, NarError, NarSummary};
use crate::narinfo::{NarInfo, MAX_NARINFO_LEN};
use crate::signing::{TrustedKeys, VerifyError};
use crate::store::chunks::CHUNK_SIZE;
use crate::store::{PathInfo, StoreError};
use crate::store_path::{StoreDir, StorePath};

/// Limit of a `.ls` listing read for comparison.
const MAX_LISTING_LEN: usize = 64 << 20;

/// What to check, and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The keys whose signatures make a path trusted.
    pub trusted_keys: TrustedKeys,
    /// Check the closures of these paths only; empty for the whole cache.
    pub paths: Vec<StorePath>,
    /// Narinfos checked at once.
    pub jobs: usize,
    /// Orphan and temporary files, and unfinished uploads, younger than
    /// this are left alone: a writer may be at work on them.
    pub grace: Duration,
    /// Stores that may hold references the cache lacks (the caches
    /// clients also substitute from): a reference one of them has is not
    /// a [`ProblemKind::MissingReference`].
    pub upstreams: Vec<std::sync::Arc<dyn crate::store::Store>>,
}

impl Default for VerifyOptions {
    /// Nix's default key trusted, the whole cache, twice the CPUs (4 to
    /// 32) at once, a grace of an hour.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            trusted_keys: TrustedKeys::nix_default(),
            paths: Vec::new(),
            jobs: (cpus * 2).clamp(4, 32),
            grace: Duration::from_secs(3600),
            upstreams: Vec::new(),
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A narinfo (or a NAR file, midway) could not be read.
    Unreadable,
    /// A narinfo does not parse.
    Unparsable,
    /// A narinfo is stored under another hash part than its path's.
    WrongName,
    /// A narinfo has no signature (and no content address that verifies).
    Unsigned,
    /// A narinfo is signed only by keys that are not trusted.
    Untrusted,
    /// A trusted key's signature on a narinfo does not verify.
    BadSignature,
    /// A path asked for has no narinfo.
    MissingPath,
    /// The NAR file a narinfo names is not there.
    NarMissing,
    /// The NAR file's size or hash is not the narinfo's `FileSize` or
    /// `FileHash`.
    NarFileMismatch,
    /// The NAR file does not decompress to a valid NAR.
    NarCorrupt,
    /// The NAR's size or hash is not the narinfo's `NarSize` or `NarHash`.
    NarMismatch,
    /// A reference of a path has no narinfo in the cache.
    MissingReference,
    /// A `.ls` listing is not the listing of the NAR.
    ListingMismatch,
    /// A NAR file no narinfo names.
    OrphanNar,
    /// A `.ls` listing without a narinfo.
    OrphanListing,
    /// A temporary file a writer left.
    TemporaryFile,
    /// A multipart upload begun and neither completed nor aborted (S3
    /// keeps, and bills, its parts until one or the other).
    UnfinishedUpload,
}

impl ProblemKind {
    /// Its name in reports: `nar-missing`, `unsigned`, ….
    pub fn name(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Unparsable => "unparsable",
            Self::WrongName => "wrong-name",
            Self::Unsigned => "unsigned",
            Self::Untrusted => "untrusted",
            Self::BadSignature => "bad-signature",
            Self::MissingPath => "missing-path",
            Self::NarMissing => "nar-missing",
            Self::NarFileMismatch => "nar-file-mismatch",
            Self::NarCorrupt => "nar-corrupt",
            Self::NarMismatch => "nar-mismatch",
            Self::MissingReference => "missing-reference",
            Self::ListingMismatch => "listing-mismatch",
            Self::OrphanNar => "orphan-nar",
            Self::OrphanListing => "orphan-listing",
            Self::TemporaryFile => "temporary-file",
            Self::UnfinishedUpload => "unfinished-upload",
        }
    }

    /// Whether the cache cannot serve the path as it advertises it (its
    /// NAR is missing or wrong, or the narinfo is): what `--repair` and
    /// `--delete-broken` act on. Signatures, references and listings do
    /// not make a path broken.
    pub fn breaks_path(self) -> bool {
        matches!(
            self,
            Self::Unparsable
                | Self::NarMissing
                | Self::NarFileMismatch
                | Self::NarCorrupt
                | Self::NarMismatch
        )
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The store path it concerns, in full, where known.
    pub path: Option<String>,
    /// The file it concerns (its key in the cache).
    pub key: String,
    /// Details, for a human.
    pub message: String,
    /// For a [`ProblemKind::MissingReference`], the missing path.
    pub reference: Option<String>,
    /// For a problem with a narinfo's NAR file, that file's key.
    pub nar_file: Option<String>,
}

/// What [`verify()`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Narinfos checked.
    pub narinfos: usize,
    /// NAR files read to their end.
    pub nar_files: usize,
    /// Bytes of NAR files read.
    pub bytes_read: u64,
    /// The problems, sorted by key, then kind.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How far a [`verify()`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Narinfos checked so far.
    pub checked: usize,
    /// Narinfos to check.
    pub total: usize,
    /// Bytes of NAR files read so far.
    pub bytes_read: u64,
    /// Problems found so far.
    pub problems: usize,
}

/// What a listing of the whole cache says.
#[derive(Debug, Default)]
struct Inventory {
    /// NAR files (not temporary ones): key, size.
    nars: HashMap<String, FileEntry>,
    /// Hash parts with a `.ls` listing.
    listings: HashSet<String>,
    /// Temporary files.
    temporary: Vec<FileEntry>,
    /// Multipart uploads begun and not finished.
    uploads: Vec<UploadEntry>,
}

/// Whether `key` is a temporary file a writer makes and renames
/// (`<target>.tmp.<pid>.<…>`, as Nix and nixferry name them).
pub(crate) fn is_temporary(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.contains(".tmp."))
}

/// A duration in its two largest units: `3d 4h`, `2h 5m`, `45s`.
fn human_age(d: Duration) -> String {
    let secs = d.as_secs();
    let units = [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, n)| secs >= *n) else {
        return "0s".to_owned();
    };
    let (name, n) = units[first];
    let mut out = format!("{}{name}", secs / n);
    if let Some((next, m)) = units.get(first + 1) {
        let rest = secs % n / m;
        if rest > 0 {
            out.push_str(&format!(" {rest}{next}"));
        }
    }
    out
}

/// Checks a binary cache. See the [module docs](self). `progress` is
/// called after each narinfo.
///
/// # Errors
/// [`StoreError`] if the check cannot run: the cache cannot be listed
/// (without `paths`, or an `http(s)://` cache, which cannot list its
/// files), or listing it fails. Problems with single files are in the
/// report, not errors.
pub async fn verify(
    cache: &Cache,
    opts: &VerifyOptions,
    progress: &(dyn Fn(&VerifyProgress) + Send + Sync),
) -> Result<VerifyReport, StoreError> {
    let files = &**cache.files();
    let store_dir = cache.store_dir();
    let mut problems = Vec::new();
    let (keys, present, inventory) = if opts.paths.is_empty() {
        if !files.can_list() {
            return Err(StoreError::Unsupported {
                store: files.url().to_owned(),
                what: "listing its files (name the paths to check)",
            });
        }
        let mut keys = Vec::new();
        let mut present = HashSet::new();
        let mut inventory = Inventory::default();
        for entry in files.list("").await? {
            match FileKind::of(&entry.key) {
                FileKind::Temporary => inventory.temporary.push(entry),
                FileKind::Nar => {
                    inventory.nars.insert(entry.key.clone(), entry);
                }
                FileKind::Narinfo(hash) => {
                    present.insert(hash.to_owned());
                    keys.push(entry.key);
                }
                FileKind::Listing(hash) => {
                    inventory.listings.insert(hash.to_owned());
                }
                FileKind::Other => {}
            }
        }
        inventory.uploads = files.list_uploads().await?;
        keys.sort();
        (keys, present, Some(inventory))
    } else {
        let (keys, present) = walk_closure(files, store_dir, opts, &mut problems).await?;
        (keys, present, None)
    };

    let ctx = Ctx {
        files,
        store_dir,
        opts,
        present: &present,
        inventory: inventory.as_ref(),
        checked: AtomicUsize::new(0),
        total: keys.len(),
        bytes: AtomicU64::new(0),
        problems: AtomicUsize::new(problems.len()),
        nar_files: AtomicUsize::new(0),
        progress,
    };
    let mut named = HashSet::new();
    let mut checks = futures_util::stream::iter(keys.iter())
        .map(|key| ctx.check(key))
        .buffer_unordered(opts.jobs.max(1));
    while let Some((found, nar_url)) = checks.next().await {
        problems.extend(found);
        if let Some(url) = nar_url {
            named.insert(url);
        }
    }
    drop(checks);

    if let Some(inventory) = &inventory {
        let now = SystemTime::now();
        let settled = |e: &FileEntry| {
            e.modified
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age >= opts.grace)
        };
        for entry in inventory.nars.values() {
            if !named.contains(&entry.key) && settled(entry) {
                problems.push(Problem {
                    kind: ProblemKind::OrphanNar,
                    path: None,
                    key: entry.key.clone(),
                    message: format!("no narinfo names this NAR file ({} bytes)", entry.size),
                    reference: None,
                    nar_file: Some(entry.key.clone()),
                });
            }
        }
        for hash in &inventory.listings {
            if !present.contains(hash) {
                problems.push(Problem {
                    kind: ProblemKind::OrphanListing,
                    path: None,
                    key: format!("{hash}.ls"),
                    message: "a listing without a narinfo".to_owned(),
                    reference: None,
                    nar_file: None,
                });
            }
        }
        for entry in inventory.temporary.iter().filter(|e| settled(e)) {
            problems.push(Problem {
                kind: ProblemKind::TemporaryFile,
                path: None,
                key: entry.key.clone(),
                message: format!("a temporary file a writer left ({} bytes)", entry.size),
                reference: None,
                nar_file: None,
            });
        }
        for upload in &inventory.uploads {
            // One begun in the future (clocks disagree) is as young as can be.
            let age = upload
                .initiated
                .map(|i| now.duration_since(i).unwrap_or_default());
            if age.is_some_and(|age| age < opts.grace) {
                continue;
            }
            let begun = match age {
                Some(age) => format!("begun {} ago", human_age(age)),
                None => "begun at an unknown time".to_owned(),
            };
            problems.push(Problem {
                kind: ProblemKind::UnfinishedUpload,
                path: None,
                key: upload.key.clone(),
                message: format!(
                    "a multipart upload {begun} and never completed (upload id {})",
                    upload.id
                ),
                reference: None,
                nar_file: None,
            });
        }
    }
    if !opts.upstreams.is_empty() {
        let upstream = in_upstreams(store_dir, &opts.upstreams, &problems).await?;
        problems.retain(|p| {
            p.kind != ProblemKind::MissingReference
                || !p.reference.as_ref().is_some_and(|r| upstream.contains(r))
        });
    }
    problems.sort_by(|a, b| (&a.key, a.kind).cmp(&(&b.key, b.kind)));
    Ok(VerifyReport {
        narinfos: keys.len(),
        nar_files: ctx.nar_files.load(Ordering::Relaxed),
        bytes_read: ctx.bytes.load(Ordering::Relaxed),
        problems,
    })
}

/// The missing references of `problems` that one of `upstreams` has,
/// as full paths.
async fn in_upstreams(
    store_dir: &StoreDir,
    upstreams: &[std::sync::Arc<dyn crate::store::Store>],
    problems: &[Problem],
) -> Result<HashSet<String>, StoreError> {
    let mut wanted: Vec<StorePath> = problems
        .iter()
        .filter(|p| p.kind == ProblemKind::MissingReference)
        .filter_map(|p| store_dir.parse(p.reference.as_deref()?).ok())
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut found = HashSet::new();
    for up in upstreams {
        if wanted.is_empty() {
            break;
        }
        let has = up.query_valid_paths(&wanted).await?;
        wanted.retain(|p| !has.contains(p));
        found.extend(has.iter().map(|p| store_dir.full(p)));
    }
    Ok(found)
}

/// The narinfo keys of the closure of `opts.paths`, and the hash parts
/// that have one; roots without one are [`ProblemKind::MissingPath`].
async fn walk_closure(
    files: &dyn CacheFiles,
    store_dir: &StoreDir,
    opts: &VerifyOptions,
    problems: &mut Vec<Problem>,
) -> Result<(Vec<String>, HashSet<String>), StoreError> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<(StorePath, bool)> = VecDeque::new();
    for p in &opts.paths {
        if seen.insert(p.hash_part().to_owned()) {
            queue.push_back((p.clone(), true));
        }
    }
    let mut keys = Vec::new();
    let mut present = HashSet::new();
    while !queue.is_empty() {
        let batch: Vec<_> = queue
            .drain(..queue.len().min(opts.jobs.max(1) * 4))
            .collect();
        let mut reads = futures_util::stream::iter(batch)
            .map(|(path, root)| async move {
                let key = format!("{}.narinfo", path.hash_part());
                let got = files.read_small(&key, MAX_NARINFO_LEN).await;
                (path, root, key, got)
            })
            .buffer_unordered(opts.jobs.max(1));
        while let Some((path, root, key, got)) = reads.next().await {
            match got {
                Ok(None) if root => problems.push(Problem {
                    kind: ProblemKind::MissingPath,
                    path: Some(store_dir.full(&path)),
                    key,
                    message: "the cache has no narinfo for this path".to_owned(),
                    reference: None,
                    nar_file: None,
                }),
                // A missing reference: its referrer's check reports it.
                Ok(None) => {}
                // The check reads it again and reports what is wrong.
                Err(_) => {
                    present.insert(path.hash_part().to_owned());
                    keys.push(key);
                }
                Ok(Some(bytes)) => {
                    present.insert(path.hash_part().to_owned());
                    keys.push(key);
                    let parsed = super::parse_narinfo(&bytes, store_dir).ok();
                    for r in parsed.iter().flat_map(|n| n.references()) {
                        if seen.insert(r.hash_part().to_owned()) {
                            queue.push_back((r.clone(), false));
                        }
                    }
                }
            }
        }
    }
    keys.sort();
    Ok((keys, present))
}

/// What the checks of narinfos share.
struct Ctx<'a> {
    files: &'a dyn CacheFiles,
    store_dir: &'a StoreDir,
    opts: &'a VerifyOptions,
    present: &'a HashSet<String>,
    inventory: Option<&'a Inventory>,
    checked: AtomicUsize,
    total: usize,
    bytes: AtomicU64,
    problems: AtomicUsize,
    nar_files: AtomicUsize,
    progress: &'a (dyn Fn(&VerifyProgress) + Send + Sync),
}

/// What reading a NAR file found.
struct FileCheck {
    /// Reading the file failed (not the check).
    read_error: Option<io::Error>,
    /// The file's hash; `None` for an uncompressed file that does not hold
    /// a valid NAR (its hash is the NAR's, computed once).
    file_hash: Option<NixHash>,
    file_size: u64,
    /// The NAR inside, and its listing if asked for.
    nar: Result<(NarSummary, Option<Listing>), NarError>,
}

/// A reader that keeps the first error its source gives, so that a file
/// that cannot be read is told apart from one that does not decode.
struct Recording<R> {
    inner: R,
    error: Option<io::Error>,
    count: u64,
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

/// Reads a NAR file to its end, on the calling thread: its hash and
/// size, and the NAR inside (decompressed as declared, decoded strictly),
/// each byte read once. An uncompressed file is hashed once, as the NAR
/// (the file hash is the same bytes' hash); a compressed one is hashed as
/// it is read and decompressed.
fn check_file(src: impl Read, compression: &Compression, listing: bool) -> FileCheck {
    let mut file = Recording {
        inner: src,
        error: None,
        count: 0,
    };
    if *compression == Compression::None {
        let nar = crate::store::verify::decode(&mut file, listing);
        // What follows a valid NAR was refused by the decoder; read the
        // rest so that the file's size is known.
        let _ = io::copy(&mut file, &mut io::sink());
        let file_hash = match &nar {
            Ok((summary, _)) if summary.nar_size == file.count => Some(summary.nar_hash),
            _ => None,
        };
        return FileCheck {
            read_error: file.error,
            file_hash,
            file_size: file.count,
            nar,
        };
    }
    let mut hashing = HashingReader::new(file);
    let nar = match crate::compression::decoder(
        compression,
        BufReader::with_capacity(CHUNK_SIZE, &mut hashing),
    ) {
        Ok(dec) => crate::store::verify::decode(dec, listing),
        Err(e) => Err(NarError::Io(io::Error::from(e))),
    };
    // What follows the compressed data is part of the file.
    let _ = io::copy(&mut hashing, &mut io::sink());
    let (file, file_hash, file_size) = hashing.finish();
    FileCheck {
        read_error: file.error,
        file_hash: Some(file_hash),
        file_size,
        nar,
    }
}

impl Ctx<'_> {
    /// Checks one narinfo: its problems, and the NAR file it names.
    async fn check(&self, key: &str) -> (Vec<Problem>, Option<String>) {
        let mut found = Vec::new();
        let url = self.check_narinfo(key, &mut found).await;
        let checked = self.checked.fetch_add(1, Ordering::Relaxed) + 1;
        let problems = self.problems.fetch_add(found.len(), Ordering::Relaxed) + found.len();
        (self.progress)(&VerifyProgress {
            checked,
            total: self.total,
            bytes_read: self.bytes.load(Ordering::Relaxed),
            problems,
        });
        (found, url)
    }

    async fn check_narinfo(&self, key: &str, found: &mut Vec<Problem>) -> Option<String> {
        let mut problem = |kind, path: Option<&StorePath>, message: String| {
            found.push(Problem {
                kind,
                path: path.map(|p| self.store_dir.full(p)),
                key: key.to_owned(),
                message,
                reference: None,
                nar_file: None,
            });
        };
        let bytes = match self.files.read_small(key, MAX_NARINFO_LEN).await {
            Ok(Some(bytes)) => bytes,
            // Gone since the listing: nothing to check.
            Ok(None) => return None,
            Err(e) => {
                problem(ProblemKind::Unreadable, None, e.to_string());
                return None;
            }
        };
        let narinfo = match super::parse_narinfo(&bytes, self.store_dir) {
            Ok(n) => n,
            Err(e) => {
                problem(ProblemKind::Unparsable, None, e);
                return None;
            }
        };
        let path = narinfo.store_path().clone();
        let p = Some(&path);
        if FileKind::of(key) != FileKind::Narinfo(path.hash_part()) {
            problem(
                ProblemKind::WrongName,
                p,
                format!(
                    "stored as '{key}', but its path's hash part is {}",
                    path.hash_part()
                ),
            );
        }
        let info = PathInfo::from_narinfo(&narinfo);
        match info.check_trust(self.store_dir, &self.opts.trusted_keys) {
            Ok(_) => {}
            Err(e @ VerifyError::NoSignatures) => problem(ProblemKind::Unsigned, p, e.to_string()),
            Err(e @ VerifyError::BadSignature { .. }) => {
                problem(ProblemKind::BadSignature, p, e.to_string());
            }
            Err(e) => problem(ProblemKind::Untrusted, p, e.to_string()),
        }
        let nar_url = narinfo.url().to_owned();
        self.check_nar(&narinfo, &mut problem).await;
        let nar_problems = found.len();
        for r in narinfo.references() {
            if !self.present.contains(r.hash_part()) {
                let full = self.store_dir.full(r);
                found.push(Problem {
                    kind: ProblemKind::MissingReference,
                    path: Some(self.store_dir.full(&path)),
                    key: key.to_owned(),
                    message: format!("its reference '{full}' has no narinfo in the cache"),
                    reference: Some(full),
                    nar_file: None,
                });
            }
        }
        for p in &mut found[..nar_problems] {
            if p.kind.breaks_path() {
                p.nar_file = Some(nar_url.clone());
            }
        }
        Some(nar_url)
    }

    /// Checks the NAR file and the listing of `narinfo`.
    async fn check_nar(
        &self,
        narinfo: &NarInfo,
        problem: &mut impl FnMut(ProblemKind, Option<&StorePath>, String),
    ) {
        let path = narinfo.store_path();
        let p = Some(path);
        let url = narinfo.url();
        let at = self.files.locate(url);
        if let Some(inventory) = self.inventory {
            match inventory.nars.get(url) {
                None => {
                    problem(ProblemKind::NarMissing, p, format!("'{at}' does not exist"));
                    return;
                }
                Some(e) if narinfo.file_size().is_some_and(|s| s != e.size) => {
                    let declared = narinfo.file_size().unwrap_or_default();
                    problem(
                        ProblemKind::NarFileMismatch,
                        p,
                        format!("'{at}' is {} bytes, FileSize says {declared}", e.size),
                    );
                    return;
                }
                Some(_) => {}
            }
        }
        let listing_key = format!("{}.ls", path.hash_part());
        let listing = match self.inventory {
            Some(inv) if !inv.listings.contains(path.hash_part()) => None,
            _ => match self.files.read_small(&listing_key, MAX_LISTING_LEN).await {
                Ok(l) => l,
                Err(e) => {
                    problem(ProblemKind::Unreadable, p, e.to_string());
                    None
                }
            },
        };
        let compression = narinfo.compression().clone();
        let want_listing = listing.is_some();
        let checked = if let Some(file) = self.files.local_path(url) {
            tokio::task::spawn_blocking(move || match std::fs::File::open(&file) {
                Ok(f) => Some(check_file(f, &compression, want_listing)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => Some(FileCheck {
                    read_error: Some(e),
                    file_hash: None,
                    file_size: 0,
                    nar: Err(NarError::Io(io::Error::other("not read"))),
                }),
            })
            .await
        } else {
            let stream = match self.files.open(url).await {
                Ok(s) => s,
                Err(e) => {
                    problem(ProblemKind::Unreadable, p, e.to_string());
                    return;
                }
            };
            let src = stream.map(SyncIoBridge::new);
            tokio::task::spawn_blocking(move || {
                src.map(|src| check_file(src, &compression, want_listing))
            })
            .await
        };
        let checked = match checked {
            Ok(None) => {
                problem(ProblemKind::NarMissing, p, format!("'{at}' does not exist"));
                return;
            }
            Ok(Some(got)) => Ok(got),
            Err(e) => Err(e),
        };
        let got = match checked {
            Ok(got) => got,
            Err(e) => {
                problem(ProblemKind::Unreadable, p, e.to_string());
                return;
            }
        };
        self.bytes.fetch_add(got.file_size, Ordering::Relaxed);
        if let Some(e) = got.read_error {
            problem(ProblemKind::Unreadable, p, format!("reading '{at}': {e}"));
            return;
        }
        self.nar_files.fetch_add(1, Ordering::Relaxed);
        if let Some(size) = narinfo.file_size().filter(|s| *s != got.file_size) {
            problem(
                ProblemKind::NarFileMismatch,
                p,
                format!("'{at}' is {} bytes, FileSize says {size}", got.file_size),
            );
            return;
        }
        if let (Some(hash), Some(got_hash)) = (narinfo.file_hash(), got.file_hash) {
            if *hash != got_hash {
                problem(
                    ProblemKind::NarFileMismatch,
                    p,
                    format!("'{at}' has hash {got_hash}, FileHash says {hash}"),
                );
                return;
            }
        }
        let (nar, nar_listing) = match got.nar {
            Ok(n) => n,
            Err(e) => {
                problem(
                    ProblemKind::NarCorrupt,
                    p,
                    format!(
                        "'{at}' does not hold a valid NAR ({}): {e}",
                        narinfo.compression()
                    ),
                );
                return;
            }
        };
        if nar.nar_hash != *narinfo.nar_hash() || nar.nar_size != narinfo.nar_size() {
            problem(
                ProblemKind::NarMismatch,
                p,
                format!(
                    "'{at}' holds a NAR of {} bytes with hash {}; the narinfo says {} bytes, {}",
                    nar.nar_size,
                    nar.nar_hash,
                    narinfo.nar_size(),
                    narinfo.nar_hash()
                ),
            );
            return;
        }
        if let (Some(stored), Some(actual)) = (listing, nar_listing) {
            if stored != actual.to_json().as_bytes() {
                problem(
                    ProblemKind::ListingMismatch,
                    p,
                    format!(
                        "'{}' is not the listing of the NAR",
                        self.files.locate(&format!("{}.ls", path.hash_part()))
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let age = |s| human_age(Duration::from_secs(s));
        assert_eq!(age(0), "0s");
        assert_eq!(age(45), "45s");
        assert_eq!(age(3600), "1h");
        assert_eq!(age(3600 + 5 * 60 + 7), "1h 5m");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(age(86_400 + 30), "1d");
    }

    /// A NAR of one small file, and its hash.
    fn small_nar() -> (Vec<u8>, NarSummary) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello\n").unwrap();
        let mut nar = Vec::new();
        let summary = crate::nar::dump(&file, &mut nar).unwrap();
        (nar, summary)
    }

    #[test]
    fn an_uncompressed_file_is_hashed_once_as_its_nar() {
        let (nar, summary) = small_nar();
        let got = check_file(&nar[..], &Compression::None, false);
        assert!(got.read_error.is_none());
        assert_eq!(got.file_hash, Some(summary.nar_hash));
        assert_eq!(got.file_size, nar.len() as u64);
        assert_eq!(got.nar.unwrap().0, summary);

        // Trailing bytes: not a valid NAR, and not its hash; every byte
        // counted.
        let mut longer = nar.clone();
        longer.extend_from_slice(b"junk");
        let got = check_file(&longer[..], &Compression::None, false);
        assert!(got.nar.is_err() && got.file_hash.is_none());
        assert_eq!(got.file_size, longer.len() as u64);

        let got = check_file(&nar[..nar.len() - 8], &Compression::None, true);
        assert!(got.nar.is_err() && got.file_hash.is_none());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn a_compressed_file_is_hashed_as_stored_and_as_its_nar() {
        let (nar, summary) = small_nar();
        let mut enc = crate::compression::encoder(&Compression::Zstd, None, 1, Vec::new()).unwrap();
        io::Write::write_all(&mut enc, &nar).unwrap();
        let mut file = enc.finish().unwrap();
        let got = check_file(&file[..], &Compression::Zstd, true);
        let (checked, listing) = got.nar.unwrap();
        assert_eq!(checked, summary);
        assert!(listing.is_some());
        assert_eq!(got.file_hash, Some(NixHash::sha256(sha2_of(&file))));
        assert_eq!(got.file_size, file.len() as u64);

        // Bytes after the compressed data are part of the file.
        file.extend_from_slice(b"junk");
        let got = check_file(&file[..], &Compression::Zstd, false);
        assert_eq!(got.file_size, file.len() as u64);
        assert_eq!(got.file_hash, Some(NixHash::sha256(sha2_of(&file))));

        // A file that cannot be read is a read error, not a bad NAR.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let got = check_file(Failing, &Compression::Zstd, false);
        assert_eq!(got.read_error.unwrap().to_string(), "disk on fire");
    }

    #[cfg(feature = "zstd")]
    fn sha2_of(data: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(data).into()
    }

    #[test]
    fn names() {
        assert_eq!(ProblemKind::UnfinishedUpload.name(), "unfinished-upload");
        assert!(!ProblemKind::UnfinishedUpload.breaks_path());
    }
}
