//! [`gc()`]: deleting what a binary cache no longer needs to keep.
//!
//! A gc marks, then sweeps:
//!
//! 1. **Roots.** The paths of the kept generations of every
//!    [pin](mod@super::pins); every path whose narinfo was written less than
//!    [`GcOptions::grace`] ago (a writer may be at work on its closure);
//!    and every path written less than [`GcOptions::keep_newer_than`] ago
//!    (all of them, without that option, when [`GcOptions::max_size`] is
//!    given). Without a pin, `keep_newer_than` or `max_size`, nothing
//!    would be kept: that is refused ([`GcError::NoRoots`]).
//! 2. **Mark.** The closures of the roots, over the references the
//!    narinfos declare, are kept.
//! 3. **Size.** With [`GcOptions::max_size`], while what is kept is
//!    larger, the least recently written paths that no pin or grace
//!    protects, and that no kept path refers to, are dropped too.
//! 4. **Look again.** The cache is listed a second time: narinfos that
//!    appeared or were rewritten since the first listing (a copy at work)
//!    become roots too.
//! 5. **Sweep.** Narinfos first, each only after every narinfo referring
//!    to it is gone, so that the cache never advertises a path whose
//!    references it lacks; then each deleted path's `.ls` listing; then
//!    NAR files no remaining narinfo names, listings without a narinfo,
//!    temporary files, and (S3) multipart uploads that were never
//!    finished, each only when older than the grace period.
//!
//! An interrupted gc leaves a consistent cache: at every moment, every
//! narinfo's NAR file and references are there. Narinfos that cannot be
//! parsed are left alone (`cache verify` reports them); narinfos that
//! cannot be read stop the gc before it deletes anything.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;

use super::pins::{self, PinError};
use super::{read_narinfo, Cache, CacheFiles, FileEntry, FileKind, UploadEntry};
use crate::narinfo::NarInfo;
use crate::store::StoreError;
use crate::store_path::StoreDir;

/// What to keep, and how.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Keep (the closures of) paths written less than this long ago.
    pub keep_newer_than: Option<Duration>,
    /// Drop the least recently written unprotected paths until what is
    /// kept takes at most this many bytes (narinfos, NAR files and
    /// listings).
    pub max_size: Option<u64>,
    /// Files younger than this are never deleted, and paths younger than
    /// this are roots: a writer may be at work.
    pub grace: Duration,
    /// Only say what would be deleted.
    pub dry_run: bool,
    /// Files read or deleted at once.
    pub jobs: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            keep_newer_than: None,
            max_size: None,
            grace: Duration::from_secs(3600),
            dry_run: false,
            jobs: 16,
        }
    }
}

/// Why a file is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Garbage {
    /// A path no root keeps: its narinfo.
    Path,
    /// A path dropped to fit [`GcOptions::max_size`]: its narinfo.
    OverSize,
    /// A NAR file no remaining narinfo names.
    NarFile,
    /// A `.ls` listing whose narinfo is gone.
    Listing,
    /// A temporary file a writer left.
    Temporary,
    /// A multipart upload never finished.
    Upload,
}

impl Garbage {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::OverSize => "over-size",
            Self::NarFile => "nar-file",
            Self::Listing => "listing",
            Self::Temporary => "temporary-file",
            Self::Upload => "unfinished-upload",
        }
    }
}

/// A file deleted (or, in a dry run, to delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Why.
    pub kind: Garbage,
    /// The file's key.
    pub key: String,
    /// The store path, for a narinfo.
    pub path: Option<String>,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`gc()`] did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Narinfos the cache had.
    pub narinfos: usize,
    /// Paths kept.
    pub kept: usize,
    /// Paths in the closures of pins.
    pub pinned: usize,
    /// Pins read.
    pub pins: usize,
    /// Pinned paths the cache lacks (full paths).
    pub pinned_missing: Vec<String>,
    /// Narinfos that do not parse, left alone.
    pub unparsable: Vec<String>,
    /// Narinfos deleted (or, in a dry run, to delete): paths.
    pub deleted_paths: usize,
    /// Other files deleted (or to delete), and uploads aborted.
    pub deleted_files: usize,
    /// Bytes the files deleted took.
    pub freed_bytes: u64,
    /// Files that could not be deleted, with why (what depends on them
    /// was kept).
    pub failed: Vec<(String, String)>,
    /// Bytes kept (narinfos, NAR files, listings of kept paths).
    pub kept_bytes: u64,
    /// Whether nothing was deleted.
    pub dry_run: bool,
}

impl GcReport {
    /// Counts `d` and passes it on.
    fn deleted(&mut self, on_deleted: &(dyn Fn(&Deleted) + Send + Sync), d: Deleted) {
        if matches!(d.kind, Garbage::Path | Garbage::OverSize) {
            self.deleted_paths += 1;
        } else {
            self.deleted_files += 1;
        }
        self.freed_bytes += d.size;
        on_deleted(&d);
    }
}

/// Why a gc could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Nothing would be kept.
    #[error(
        "the cache has no pins, and neither a minimum age nor a maximum size was given: \
         everything older than the grace period would be deleted (pin closures with \
         `cache pin`, or give --keep-newer-than or --max-size)"
    )]
    NoRoots,
    /// A pin could not be read.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A hash part, kept as its 32 bytes (it is ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HashPart([u8; 32]);

impl HashPart {
    fn new(s: &str) -> Option<Self> {
        s.as_bytes().try_into().ok().map(Self)
    }

    fn as_str(&self) -> &str {
        // Made from a `str` of 32 ASCII bytes only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// One path of the cache.
#[derive(Debug)]
struct Node {
    hash: HashPart,
    narinfo_size: u64,
    modified: Option<SystemTime>,
    /// Filled once the narinfo is read and parses.
    info: Option<Parsed>,
}

#[derive(Debug)]
struct Parsed {
    url: Box<str>,
    file_size: u64,
    /// The path's name (the full path is the store directory, the hash
    /// part and this).
    name: Box<str>,
    refs: Box<[u32]>,
}

/// The cache's paths, by hash part.
struct Graph {
    nodes: Vec<Node>,
    ids: HashMap<HashPart, u32>,
}

impl Graph {
    fn id(&self, hash: &str) -> Option<u32> {
        self.ids.get(&HashPart::new(hash)?).copied()
    }

    /// The full store path of node `id`, if its narinfo parsed.
    fn path(&self, dir: &StoreDir, id: usize) -> Option<String> {
        let node = &self.nodes[id];
        let name = &node.info.as_ref()?.name;
        Some(format!("{}/{}-{name}", dir.as_str(), node.hash.as_str()))
    }

    fn refs(&self, id: u32) -> &[u32] {
        self.nodes[id as usize]
            .info
            .as_ref()
            .map_or(&[], |i| &i.refs[..])
    }

    /// Adds the closures of `roots` to `marked`.
    fn mark(&self, roots: impl IntoIterator<Item = u32>, marked: &mut [bool]) {
        let mut stack: Vec<u32> = roots.into_iter().collect();
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut marked[id as usize], true) {
                continue;
            }
            stack.extend(self.refs(id).iter().filter(|&&r| !marked[r as usize]));
        }
    }

    fn parsed(&self, info: &NarInfo, id: u32) -> Parsed {
        Parsed {
            url: info.url().into(),
            file_size: info.file_size().unwrap_or(0),
            name: info.store_path().name().into(),
            refs: info
                .references()
                .iter()
                .filter_map(|r| self.id(r.hash_part()))
                .filter(|&r| r != id)
                .collect(),
        }
    }
}

/// What a listing of the cache says.
#[derive(Default)]
struct Inventory {
    narinfos: Vec<FileEntry>,
    nars: Vec<FileEntry>,
    listings: HashMap<String, FileEntry>,
    temporary: Vec<FileEntry>,
}

impl Inventory {
    async fn take(files: &dyn CacheFiles) -> Result<Self, StoreError> {
        let mut inv = Self::default();
        for e in files.list("").await? {
            match FileKind::of(&e.key) {
                FileKind::Temporary => inv.temporary.push(e),
                FileKind::Nar => inv.nars.push(e),
                FileKind::Narinfo(_) => inv.narinfos.push(e),
                FileKind::Listing(h) => {
                    inv.listings.insert(h.to_owned(), e);
                }
                FileKind::Other => {}
            }
        }
        inv.narinfos.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(inv)
    }
}

/// Collects a cache's garbage. See the [module docs](self).
/// `on_deleted` is told of each file as it is deleted (or, in a dry run,
/// found to delete): narinfos first, each after those that refer to it.
///
/// # Errors
/// [`GcError::NoRoots`]; a cache that cannot list its files, a pin that
/// cannot be read, or a narinfo that cannot be read (before anything is
/// deleted). Files that cannot be deleted are in the report.
pub async fn gc(
    cache: &Cache,
    opts: &GcOptions,
    on_deleted: &(dyn Fn(&Deleted) + Send + Sync),
) -> Result<GcReport, GcError> {
    let files = &**cache.files();
    let dir = cache.store_dir();
    super::require_listing(files)?;
    let jobs = opts.jobs.max(1);
    let start = SystemTime::now();
    let younger = |m: Option<SystemTime>, d: Duration| {
        m.is_none_or(|m| start.duration_since(m).map_or(true, |age| age < d))
    };

    let pins = pins::pins(cache).await?;
    if pins.is_empty() && opts.keep_newer_than.is_none() && opts.max_size.is_none() {
        return Err(GcError::NoRoots);
    }
    let mut inv = Inventory::take(files).await?;
    let narinfo_entries = std::mem::take(&mut inv.narinfos);

    // Every narinfo, read once.
    let mut graph = Graph {
        ids: HashMap::with_capacity(narinfo_entries.len()),
        nodes: Vec::with_capacity(narinfo_entries.len()),
    };
    for e in narinfo_entries {
        let Some(hash) = HashPart::new(e.key.trim_end_matches(".narinfo")) else {
            continue;
        };
        graph.ids.insert(hash, graph.nodes.len() as u32);
        graph.nodes.push(Node {
            hash,
            narinfo_size: e.size,
            modified: e.modified,
            info: None,
        });
    }
    let mut report = GcReport {
        narinfos: graph.nodes.len(),
        pins: pins.len(),
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let mut gone = vec![false; graph.nodes.len()];
    {
        let g = &graph;
        let mut reads = futures_util::stream::iter(0..g.nodes.len() as u32)
            .map(|id| async move {
                (
                    id,
                    read_narinfo(
                        files,
                        dir,
                        &format!("{}.narinfo", g.nodes[id as usize].hash.as_str()),
                    )
                    .await,
                )
            })
            .buffer_unordered(jobs);
        let mut parsed = Vec::new();
        while let Some((id, got)) = reads.next().await {
            match got? {
                None => gone[id as usize] = true,
                Some(Err(why)) => report.unparsable.push(format!(
                    "{}.narinfo: {why}",
                    graph.nodes[id as usize].hash.as_str()
                )),
                Some(Ok(info)) => parsed.push((id, graph.parsed(&info, id))),
            }
        }
        drop(reads);
        for (id, p) in parsed {
            graph.nodes[id as usize].info = Some(p);
        }
    }
    report.unparsable.sort();

    // Roots and marks.
    let n = graph.nodes.len();
    let mut pin_roots = Vec::new();
    for pin in &pins {
        for p in pin.roots(dir)? {
            match graph.id(p.hash_part()) {
                Some(id) if !gone[id as usize] => pin_roots.push(id),
                _ => report.pinned_missing.push(dir.full(&p)),
            }
        }
    }
    report.pinned_missing.sort();
    report.pinned_missing.dedup();
    let mut pinned = vec![false; n];
    graph.mark(pin_roots, &mut pinned);
    report.pinned = pinned.iter().filter(|&&m| m).count();

    let live_node = |id: usize| !gone[id];
    // Unparsable narinfos are left alone, and so is what they may need:
    // they count as roots whose references are unknown.
    let mut protected = pinned.clone();
    let fresh = (0..n as u32).filter(|&id| {
        let node = &graph.nodes[id as usize];
        live_node(id as usize) && (younger(node.modified, opts.grace) || node.info.is_none())
    });
    graph.mark(fresh.collect::<Vec<_>>(), &mut protected);
    let mut live = protected.clone();
    let aged: Vec<u32> = (0..n as u32)
        .filter(|&id| {
            live_node(id as usize)
                && match opts.keep_newer_than {
                    Some(d) => younger(graph.nodes[id as usize].modified, d),
                    None => opts.max_size.is_some(),
                }
        })
        .collect();
    graph.mark(aged, &mut live);

    let size_of = |id: usize| {
        let node = &graph.nodes[id];
        node.narinfo_size
            + node.info.as_ref().map_or(0, |i| i.file_size)
            + inv.listings.get(node.hash.as_str()).map_or(0, |e| e.size)
    };
    let mut over_size = vec![false; n];
    if let Some(max) = opts.max_size {
        let mut total: u64 = (0..n).filter(|&i| live[i]).map(size_of).sum();
        if total > max {
            // Live referrers of each live path.
            let mut referrers = vec![0u32; n];
            for id in (0..n).filter(|&i| live[i]) {
                for &r in graph.refs(id as u32) {
                    referrers[r as usize] += 1;
                }
            }
            let when = |id: usize| graph.nodes[id].modified.unwrap_or(start);
            let mut heap: BinaryHeap<Reverse<(SystemTime, u32)>> = (0..n)
                .filter(|&i| live[i] && !protected[i] && referrers[i] == 0)
                .map(|i| Reverse((when(i), i as u32)))
                .collect();
            while total > max {
                let Some(Reverse((_, id))) = heap.pop() else {
                    break;
                };
                live[id as usize] = false;
                over_size[id as usize] = true;
                total -= size_of(id as usize);
                for &r in graph.refs(id) {
                    let r = r as usize;
                    referrers[r] -= 1;
                    if referrers[r] == 0 && live[r] && !protected[r] {
                        heap.push(Reverse((when(r), r as u32)));
                    }
                }
            }
        }
    }

    // Look again: paths written since the first listing are roots, and
    // the NAR files they name are kept. Only the narinfos of this listing
    // are kept.
    let mut listed_now = vec![false; n];
    let mut late_roots = Vec::new();
    let mut late_urls: HashSet<Box<str>> = HashSet::new();
    for e in files.list("").await? {
        let FileKind::Narinfo(hash) = FileKind::of(&e.key) else {
            continue;
        };
        let id = graph.id(hash);
        if let Some(id) = id {
            listed_now[id as usize] = true;
            if graph.nodes[id as usize].modified == e.modified {
                continue;
            }
        }
        late_roots.extend(id);
        if let Some(Ok(info)) = read_narinfo(files, dir, &e.key).await? {
            late_urls.insert(info.url().into());
            late_roots.extend(
                info.references()
                    .iter()
                    .filter_map(|r| graph.id(r.hash_part())),
            );
        }
    }
    graph.mark(late_roots, &mut live);

    // The sweep of narinfos, referrers first.
    let doomed: Vec<usize> = (0..n)
        .filter(|&i| !live[i] && !gone[i] && listed_now[i])
        .collect();
    let mut waiting = vec![0u32; n];
    let is_doomed = {
        let mut d = vec![false; n];
        for &i in &doomed {
            d[i] = true;
        }
        d
    };
    for &i in &doomed {
        for &r in graph.refs(i as u32) {
            if is_doomed[r as usize] {
                waiting[r as usize] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = doomed
        .iter()
        .copied()
        .filter(|&i| waiting[i] == 0)
        .collect();
    let mut deleted = vec![false; n];
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < jobs {
            let Some(i) = ready.pop() else { break };
            let key = format!("{}.narinfo", graph.nodes[i].hash.as_str());
            let modified = graph.nodes[i].modified;
            running.push(async move {
                let r = if opts.dry_run {
                    Ok(true)
                } else {
                    files.delete_unless_changed(&key, modified).await
                };
                (i, key, r)
            });
        }
        let Some((i, key, result)) = running.next().await else {
            break;
        };
        match result {
            // Written again since it was listed: a writer wants it, and
            // what it refers to.
            Ok(false) => {}
            Ok(true) => {
                deleted[i] = true;
                report.deleted(
                    on_deleted,
                    Deleted {
                        kind: if over_size[i] {
                            Garbage::OverSize
                        } else {
                            Garbage::Path
                        },
                        key,
                        path: graph.path(dir, i),
                        size: graph.nodes[i].narinfo_size,
                    },
                );
                for &r in graph.refs(i as u32) {
                    let r = r as usize;
                    if is_doomed[r] {
                        waiting[r] -= 1;
                        if waiting[r] == 0 {
                            ready.push(r);
                        }
                    }
                }
            }
            Err(e) => report.failed.push((key, e.to_string())),
        }
    }
    drop(running);

    // Then the files no remaining narinfo needs.
    let settled = |m: Option<SystemTime>| !younger(m, opts.grace);
    let mut named: HashSet<&str> = late_urls.iter().map(|u| &**u).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !deleted[i] {
            if let Some(p) = &node.info {
                named.insert(&p.url);
            }
        }
    }
    let mut sweep: Vec<(Garbage, &FileEntry)> = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if deleted[i] {
            if let Some(e) = inv.listings.get(node.hash.as_str()) {
                sweep.push((Garbage::Listing, e));
            }
        }
    }
    for (hash, e) in &inv.listings {
        let owner = graph.id(hash).map(|id| id as usize);
        let swept_with_path = owner.is_some_and(|id| deleted[id]);
        let owned = owner.is_some_and(|id| listed_now[id] && !deleted[id]);
        if !owned && !swept_with_path && settled(e.modified) {
            sweep.push((Garbage::Listing, e));
        }
    }
    for e in &inv.nars {
        if !named.contains(e.key.as_str()) && settled(e.modified) {
            sweep.push((Garbage::NarFile, e));
        }
    }
    for e in &inv.temporary {
        if settled(e.modified) {
            sweep.push((Garbage::Temporary, e));
        }
    }
    let mut files_done = futures_util::stream::iter(sweep)
        .map(|(kind, e)| async move {
            let r = if opts.dry_run {
                Ok(())
            } else {
                files.delete(&e.key).await
            };
            (kind, e, r)
        })
        .buffer_unordered(jobs);
    while let Some((kind, e, r)) = files_done.next().await {
        match r {
            Ok(()) => report.deleted(
                on_deleted,
                Deleted {
                    kind,
                    key: e.key.clone(),
                    path: None,
                    size: e.size,
                },
            ),
            Err(err) => report.failed.push((e.key.clone(), err.to_string())),
        }
    }
    drop(files_done);

    let uploads: Vec<UploadEntry> = files
        .list_uploads()
        .await?
        .into_iter()
        .filter(|u| settled(u.initiated))
        .collect();
    for u in uploads {
        let r = if opts.dry_run {
            Ok(())
        } else {
            files.abort_upload(&u).await
        };
        match r {
            Ok(()) => report.deleted(
                on_deleted,
                Deleted {
                    kind: Garbage::Upload,
                    key: u.key,
                    path: None,
                    size: 0,
                },
            ),
            Err(e) => report.failed.push((u.key, e.to_string())),
        }
    }

    // Sizes: NAR files of deleted paths count once, as files.
    for (i, kept) in deleted.iter().map(|d| !d).enumerate() {
        if kept && !gone[i] {
            report.kept += 1;
            report.kept_bytes += size_of(i);
        }
    }
    report.failed.sort();
    Ok(report)
}
