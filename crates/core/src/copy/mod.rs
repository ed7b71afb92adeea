//! The copy engine: copies a closure from any [`Store`] to any other.
//!
//! 1. The closure of the roots is computed on the source with batched
//!    queries ([`crate::closure`]).
//! 2. The destination is asked, in one batch, which of those it has.
//! 3. Each missing path is checked (signatures, when the source is not
//!    trusted), signed with the given keys, and streamed from the source to
//!    the destination through a check of its `narHash` and `narSize`, so a
//!    corrupt or tampered NAR aborts that path and leaves nothing behind.
//!    Between binary caches whose compression matches, the compressed file
//!    moves as it is.
//! 4. Paths run in parallel, up to [`CopyOptions::jobs`] at a time; a
//!    destination that needs references first gets each path only after
//!    its references.
//! 5. A failure that may pass (a dropped connection, say:
//!    [`StoreError::is_retryable`]) is retried, with exponential backoff
//!    and jitter, up to [`CopyOptions::retries`] times; the destination is
//!    asked again first whether it has the path by then.
//!
//! [`copy_to_many`] copies one closure to several destinations at once
//! (fan-out): each NAR is read from the source once and streamed to every
//! destination that lacks it, and a destination that fails does not stop
//! the others; each gets its own [`Summary`].
//!
//! Progress is reported as [`Event`]s to a callback; cancellation is a
//! [`CancellationToken`]. A cancelled or failed copy leaves the destination
//! consistent (stores write a path's metadata last), and running it again
//! finishes the job.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch, Semaphore};
pub use tokio_util::sync::CancellationToken;

use crate::closure::{self, ClosureError};
use crate::signing::{SecretKey, TrustedKeys, VerifyError};
use crate::store::chunks::{ChannelReader, CHUNKS_AHEAD, CHUNK_SIZE};
use crate::store::{NarStream, PathInfo, Store, StoreError};
use crate::store_path::StorePath;

use crate::store::verify::Verified;

mod tasks;

use tasks::Keyed;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How many paths to copy at once (fewer if a destination asks for
    /// fewer: [`crate::store::Capabilities::max_parallel_adds`]).
    pub jobs: usize,
    /// Refuse paths from an untrusted source that carry no valid signature
    /// by one of [`CopyOptions::trusted_keys`] (Nix's `require-sigs`).
    /// Content-addressed paths whose address verifies need none.
    pub check_sigs: bool,
    /// Keys whose signatures are trusted.
    pub trusted_keys: TrustedKeys,
    /// Keys to sign copied paths with.
    pub secret_keys: Vec<SecretKey>,
    /// Move compressed NAR files as they are between binary caches of the
    /// same compression.
    pub passthrough: bool,
    /// Ask each destination to fetch what it can from its own substituters
    /// before anything is sent to it (`nix copy -s`); see
    /// [`Store::substitute_paths`].
    pub substitute_on_destination: bool,
    /// How many times a failure that may pass is tried again, per path
    /// and destination.
    pub retries: u32,
    /// The wait before the first retry, doubled for each further one (up
    /// to [`MAX_RETRY_DELAY`]), plus up to half of it again at random.
    pub retry_delay: Duration,
}

/// The longest wait between two tries.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            check_sigs: true,
            trusted_keys: TrustedKeys::new(),
            secret_keys: Vec::new(),
            passthrough: true,
            substitute_on_destination: false,
            retries: 5,
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// Something that happened during a copy. Paths are full store paths;
/// `dest` is the index of a destination in the list given to
/// [`copy_to_many`] (always 0 for [`copy_closure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The plan: how many paths the closure has, how many of them some
    /// destination lacks (each is read from the source once), and their
    /// total NAR size.
    Planned {
        /// Paths in the closure.
        closure: usize,
        /// Paths to copy.
        missing: usize,
        /// NAR bytes to copy.
        nar_bytes: u64,
    },
    /// A path a destination already has.
    Skipped {
        /// The destination.
        dest: usize,
        /// The path.
        path: String,
    },
    /// A path started copying.
    Started {
        /// The path.
        path: String,
        /// Its NAR size.
        nar_size: u64,
    },
    /// More NAR bytes were read from the source (for all paths together).
    Bytes {
        /// How many.
        bytes: u64,
    },
    /// A path is in a destination.
    Copied {
        /// The destination.
        dest: usize,
        /// The path.
        path: String,
        /// Its NAR size.
        nar_size: u64,
        /// Whether the compressed file was moved as it is.
        passthrough: bool,
    },
    /// A try failed in a way that may pass; another follows after `delay`.
    /// `path` is empty when the destination was being asked what it has.
    Retrying {
        /// The destination.
        dest: usize,
        /// The path.
        path: String,
        /// The try that comes next: 1 for the first retry.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// What failed.
        error: String,
    },
    /// A path could not be copied to a destination.
    Failed {
        /// The destination.
        dest: usize,
        /// The path.
        path: String,
        /// Why.
        error: String,
    },
    /// A destination could not be asked what it has; nothing is copied
    /// to it.
    DestinationFailed {
        /// The destination.
        dest: usize,
        /// Why.
        error: String,
    },
}

/// What a copy did, for one destination.
#[derive(Debug, Default)]
pub struct Summary {
    /// The destination's URL.
    pub url: String,
    /// Paths copied.
    pub copied: usize,
    /// Paths the destination already had.
    pub skipped: usize,
    /// NAR bytes copied.
    pub nar_bytes: u64,
    /// Paths that failed, with the reason; paths whose references failed
    /// are among them.
    pub failed: Vec<(StorePath, CopyError)>,
    /// Why nothing could be copied to the destination: it could not be
    /// asked what it has.
    pub error: Option<StoreError>,
    /// Whether the copy was cancelled before it finished.
    pub cancelled: bool,
    /// How long it took.
    pub elapsed: Duration,
}

impl Summary {
    /// Whether every path is in the destination.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.error.is_none() && !self.cancelled
    }
}

/// Why a path was not copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source or destination failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The path lacks a valid signature by a trusted key.
    #[error("path '{path}' lacks a valid signature by a trusted key: {reason}")]
    Untrusted {
        /// The full path.
        path: String,
        /// The verification failure.
        reason: VerifyError,
    },
    /// A reference of the path failed, so the path was not attempted.
    #[error("path '{path}' was not copied because its reference '{reference}' failed")]
    ReferenceFailed {
        /// The full path.
        path: String,
        /// The full path of the reference that failed.
        reference: String,
    },
    /// The copy was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl CopyError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }

    /// The same error again, for another destination.
    fn duplicate(&mut self) -> Self {
        match self {
            Self::Store(e) => Self::Store(e.share()),
            Self::Untrusted { path, reason } => Self::Untrusted {
                path: path.clone(),
                reason: reason.clone(),
            },
            Self::ReferenceFailed { path, reference } => Self::ReferenceFailed {
                path: path.clone(),
                reference: reference.clone(),
            },
            Self::Cancelled => Self::Cancelled,
        }
    }
}

/// Copies the closure of `roots` from `src` to `dst`.
///
/// Per-path failures do not stop the other paths (except those that
/// depend on them when the destination needs references first); they are
/// in [`Summary::failed`].
///
/// # Errors
/// [`ClosureError`] when the plan cannot be made: a root or a reference is
/// missing in the source, or a query fails.
pub async fn copy_closure(
    src: Arc<dyn Store>,
    dst: Arc<dyn Store>,
    roots: &[StorePath],
    opts: &CopyOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
) -> Result<Summary, ClosureError> {
    let mut summaries = copy_to_many(src, vec![dst], roots, opts, on_event, cancel).await?;
    let mut summary = summaries.pop().unwrap_or_default();
    match summary.error.take() {
        Some(e) => Err(e.into()),
        None => Ok(summary),
    }
}

/// Copies the closure of `roots` from `src` to every store of `dsts` at
/// once, reading each NAR from the source once for all destinations that
/// lack it. A destination that fails (it cannot be reached, or a path
/// fails there) does not stop the others; the summaries, one per
/// destination in the order given, say what happened where.
///
/// # Errors
/// [`ClosureError`] when the plan cannot be made because of the source: a
/// root or a reference is missing there, or a query fails.
pub async fn copy_to_many(
    src: Arc<dyn Store>,
    dsts: Vec<Arc<dyn Store>>,
    roots: &[StorePath],
    opts: &CopyOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
) -> Result<Vec<Summary>, ClosureError> {
    let start = Instant::now();
    let infos = closure_with_retries(&*src, roots, opts, &cancel)
        .await?
        .into_infos();
    let all: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    let plan = Plan::new(src, dsts, opts, on_event, cancel);

    // Every destination is asked at once, each in one batch.
    let mut asks = Keyed::new();
    for dest in 0..plan.dsts.len() {
        let plan = Arc::clone(&plan);
        let all = all.clone();
        asks.spawn(dest, async move { plan.query_present(dest, &all).await });
    }
    let mut summaries: Vec<Summary> = plan
        .dsts
        .iter()
        .map(|d| Summary {
            url: d.url().to_owned(),
            ..Summary::default()
        })
        .collect();
    let mut present: Vec<Option<BTreeSet<StorePath>>> = vec![None; plan.dsts.len()];
    while let Some((dest, joined)) = asks.next().await {
        let result = tasks::or_died(joined, "asking the destination what it has");
        match result {
            Ok(set) => present[dest] = Some(set),
            Err(CopyError::Cancelled) => summaries[dest].cancelled = true,
            Err(e) => {
                (plan.on_event)(Event::DestinationFailed {
                    dest,
                    error: e.to_string(),
                });
                summaries[dest].error = Some(match e {
                    CopyError::Store(e) => e,
                    other => StoreError::Connection {
                        store: plan.dsts[dest].url().to_owned(),
                        message: other.to_string(),
                    },
                });
            }
        }
    }

    let dir = plan.src.store_dir().clone();
    let mut work = Vec::new();
    for info in infos {
        let mut lacking = Vec::new();
        for (dest, set) in present.iter().enumerate() {
            let Some(set) = set else { continue };
            if set.contains(&info.path) {
                summaries[dest].skipped += 1;
                (plan.on_event)(Event::Skipped {
                    dest,
                    path: dir.full(&info.path),
                });
            } else {
                lacking.push(dest);
            }
        }
        if !lacking.is_empty() {
            work.push((info, lacking));
        }
    }
    (plan.on_event)(Event::Planned {
        closure: all.len(),
        missing: work.len(),
        nar_bytes: work.iter().map(|(i, _)| i.nar_size).sum(),
    });

    let dsts = plan.dsts.clone();
    for (path, dest, result) in plan.run(work).await {
        let summary = &mut summaries[dest];
        match result {
            Ok(nar_size) => {
                summary.copied += 1;
                summary.nar_bytes += nar_size;
            }
            Err(CopyError::Cancelled) => summary.cancelled = true,
            Err(e) => summary.failed.push((path, e)),
        }
    }
    // Whatever the destinations still have pending (aborts of cancelled
    // uploads) finishes before the copy returns.
    futures_util::future::join_all(dsts.iter().map(|d| d.close())).await;
    for summary in &mut summaries {
        summary.failed.sort_by(|a, b| a.0.cmp(&b.0));
        summary.elapsed = start.elapsed();
    }
    Ok(summaries)
}

/// The closure of `roots` in `src`, asked again after failures that may
/// pass, as paths are.
async fn closure_with_retries(
    src: &dyn Store,
    roots: &[StorePath],
    opts: &CopyOptions,
    cancel: &CancellationToken,
) -> Result<closure::Closure, ClosureError> {
    let mut tries = 0;
    loop {
        match closure::compute(src, roots).await {
            Err(ClosureError::Store(e)) if e.is_retryable() && tries < opts.retries => {
                tries += 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff(opts.retry_delay, tries)) => {}
                    () = cancel.cancelled() => return Err(ClosureError::Store(e)),
                }
            }
            other => return other,
        }
    }
}

/// The shared state of one copy.
struct Plan {
    src: Arc<dyn Store>,
    dsts: Vec<Arc<dyn Store>>,
    opts: CopyOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
    slots: Semaphore,
    /// Whether the source needs its signatures checked: a Nix store on this
    /// machine is trusted as Nix trusts it; anything else is not.
    source_untrusted: bool,
    bytes: Arc<AtomicU64>,
}

/// A path's outcome in one destination, as its referrers see it: `None`
/// while pending.
type Outcome = watch::Receiver<Option<bool>>;

/// One path's result in one destination.
type PathResult = (StorePath, usize, Result<u64, CopyError>);

/// A try's result in one destination: whether the compressed NAR file
/// moved as it is, or why it failed.
type Tried = (usize, Result<bool, CopyError>);

impl Plan {
    fn new(
        src: Arc<dyn Store>,
        dsts: Vec<Arc<dyn Store>>,
        opts: &CopyOptions,
        on_event: Arc<dyn Fn(Event) + Send + Sync>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let source_untrusted = !src.capabilities().trusted_source;
        let jobs = dsts
            .iter()
            .filter_map(|d| d.capabilities().max_parallel_adds)
            .fold(opts.jobs, usize::min);
        Arc::new(Self {
            slots: Semaphore::new(jobs.max(1)),
            src,
            dsts,
            opts: opts.clone(),
            on_event,
            cancel,
            source_untrusted,
            bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Which of `paths` destination `dest` has (after substituting, if
    /// asked to), retrying failures that may pass.
    async fn query_present(
        &self,
        dest: usize,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        let dst = &self.dsts[dest];
        self.retrying(dest, "", None, || async {
            let r = if self.opts.substitute_on_destination {
                dst.substitute_paths(paths).await
            } else {
                dst.query_valid_paths(paths).await
            };
            r.map_err(CopyError::from)
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails in a way that will not
    /// pass, or has been retried [`CopyOptions::retries`] times, waiting
    /// longer before each retry; cancellation stops it at once. `failed`
    /// is the error of a try made already, if there was one.
    async fn retrying<T, F, Fut>(
        &self,
        dest: usize,
        path: &str,
        mut failed: Option<CopyError>,
        mut attempt: F,
    ) -> Result<T, CopyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CopyError>>,
    {
        let mut tries = 0;
        loop {
            if let Some(e) = failed.take() {
                if !e.is_retryable() || tries >= self.opts.retries {
                    return Err(e);
                }
                tries += 1;
                let delay = backoff(self.opts.retry_delay, tries);
                (self.on_event)(Event::Retrying {
                    dest,
                    path: path.to_owned(),
                    attempt: tries,
                    delay,
                    error: e.to_string(),
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
                }
            }
            let result = tokio::select! {
                r = attempt() => r,
                () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
            };
            match result {
                Err(e) => failed = Some(e),
                ok => return ok,
            }
        }
    }

    /// Copies `work` (paths in topological order, each with the
    /// destinations that lack it), returning each path's outcome in each
    /// of those destinations: its NAR size, or why it was not copied.
    async fn run(self: Arc<Self>, work: Vec<(PathInfo, Vec<usize>)>) -> Vec<PathResult> {
        let ordered: Vec<bool> = self
            .dsts
            .iter()
            .map(|d| d.capabilities().needs_references_first)
            .collect();
        let mut outcomes: HashMap<(StorePath, usize), Outcome> = HashMap::new();
        let mut tasks = Keyed::new();
        for (info, dests) in work {
            let mut senders = Vec::new();
            let mut waits = Vec::new();
            for &dest in &dests {
                let (tx, rx) = watch::channel(None);
                senders.push((dest, tx));
                // Only references that are being copied too need waiting
                // for; the rest are in the destination already.
                if ordered[dest] {
                    for r in info.references.iter().filter(|r| **r != info.path) {
                        if let Some(o) = outcomes.get(&(r.clone(), dest)) {
                            waits.push((dest, r.clone(), o.clone()));
                        }
                    }
                }
                outcomes.insert((info.path.clone(), dest), rx);
            }
            let plan = Arc::clone(&self);
            let key = (info.path.clone(), dests.clone());
            tasks.spawn(key, async move {
                let path = info.path.clone();
                let results = plan.copy_after(info, dests, waits).await;
                for (dest, tx) in senders {
                    let ok = results.iter().any(|(d, r)| *d == dest && r.is_ok());
                    let _ = tx.send(Some(ok));
                }
                results
                    .into_iter()
                    .map(|(dest, r)| (path.clone(), dest, r))
                    .collect::<Vec<_>>()
            });
        }
        let mut results = Vec::new();
        while let Some(((path, dests), joined)) = tasks.next().await {
            match joined {
                Ok(r) => results.extend(r),
                // The path's task died: each of its destinations has it
                // as a failure (and its referrers see it failed, its
                // outcome senders being gone).
                Err(e) => {
                    let full = self.src.store_dir().full(&path);
                    let mut e = CopyError::Store(StoreError::task_died(
                        format_args!("copying '{full}'"),
                        e,
                    ));
                    for dest in dests {
                        let e = self.fail(dest, &full, e.duplicate());
                        results.push((path.clone(), dest, Err(e)));
                    }
                }
            }
        }
        results
    }

    /// Copies one path to `dests`, each once the references it waits for
    /// are there.
    async fn copy_after(
        self: Arc<Self>,
        info: PathInfo,
        dests: Vec<usize>,
        waits: Vec<(usize, StorePath, Outcome)>,
    ) -> Vec<(usize, Result<u64, CopyError>)> {
        let dir = self.src.store_dir();
        let full = dir.full(&info.path);
        let mut done: Vec<(usize, Result<u64, CopyError>)> = Vec::new();
        let is_done = |done: &[(usize, _)], dest| done.iter().any(|(d, _)| *d == dest);
        for (dest, reference, mut outcome) in waits {
            if is_done(&done, dest) {
                continue;
            }
            let ok = tokio::select! {
                r = outcome.wait_for(Option::is_some) => r.is_ok_and(|v| *v == Some(true)),
                () = self.cancel.cancelled() => false,
            };
            let e = if self.cancel.is_cancelled() {
                CopyError::Cancelled
            } else if ok {
                continue;
            } else {
                CopyError::ReferenceFailed {
                    path: full.clone(),
                    reference: dir.full(&reference),
                }
            };
            done.push((dest, Err(self.fail(dest, &full, e))));
        }
        let todo: Vec<usize> = dests.into_iter().filter(|&d| !is_done(&done, d)).collect();
        if todo.is_empty() {
            return done;
        }
        let slot = tokio::select! {
            s = self.slots.acquire() => s.ok(),
            () = self.cancel.cancelled() => None,
        };
        let prepared = match slot {
            None => Err(CopyError::Cancelled),
            Some(_) => self.prepare(&info),
        };
        let info = match prepared {
            Ok(info) => info,
            Err(mut e) => {
                for dest in todo {
                    let e = e.duplicate();
                    done.push((dest, Err(self.fail(dest, &full, e))));
                }
                return done;
            }
        };
        (self.on_event)(Event::Started {
            path: full.clone(),
            nar_size: info.nar_size,
        });

        // One try for all destinations together; failures that may pass
        // are tried again, each destination on its own, after asking it
        // whether the path got there after all.
        let mut retries = Keyed::new();
        let mut results = Vec::new();
        // Cancellation drops the attempt: stores leave nothing visible of a
        // path they did not finish.
        let first = tokio::select! {
            r = self.attempt(&info, &todo) => r,
            () = self.cancel.cancelled() => {
                todo.iter().map(|&d| (d, Err(CopyError::Cancelled))).collect()
            }
        };
        for (dest, r) in first {
            match r {
                Err(e) if e.is_retryable() => {
                    let plan = Arc::clone(&self);
                    let info = info.clone();
                    retries.spawn(dest, async move { plan.retry(&info, dest, e).await });
                }
                r => results.push((dest, r)),
            }
        }
        while let Some((dest, joined)) = retries.next().await {
            let r = tasks::or_died(joined, format_args!("retrying '{full}'"));
            results.push((dest, r));
        }
        for (dest, r) in results {
            let r = match r {
                Ok(passthrough) => {
                    (self.on_event)(Event::Copied {
                        dest,
                        path: full.clone(),
                        nar_size: info.nar_size,
                        passthrough,
                    });
                    Ok(info.nar_size)
                }
                Err(e) => Err(self.fail(dest, &full, e)),
            };
            done.push((dest, r));
        }
        done
    }

    /// Tells of a failure (but not of a cancellation) and passes it on.
    fn fail(&self, dest: usize, full: &str, e: CopyError) -> CopyError {
        if !matches!(e, CopyError::Cancelled) {
            (self.on_event)(Event::Failed {
                dest,
                path: full.to_owned(),
                error: e.to_string(),
            });
        }
        e
    }

    /// Checks the path's signatures if the source needs it, and signs it
    /// with the copy's keys.
    fn prepare(&self, info: &PathInfo) -> Result<PathInfo, CopyError> {
        let dir = self.src.store_dir();
        if self.opts.check_sigs && self.source_untrusted {
            info.check_trust(dir, &self.opts.trusted_keys)
                .map_err(|reason| CopyError::Untrusted {
                    path: dir.full(&info.path),
                    reason,
                })?;
        }
        let mut info = info.clone();
        for key in &self.opts.secret_keys {
            let sig = key.sign(info.fingerprint(dir).as_bytes()).to_string();
            let prefix = format!("{}:", key.name());
            info.signatures.retain(|s| !s.starts_with(&prefix));
            info.signatures.push(sig);
        }
        info.signatures.sort();
        Ok(info)
    }

    /// Tries a path again in one destination after `failed`.
    async fn retry(
        &self,
        info: &PathInfo,
        dest: usize,
        failed: CopyError,
    ) -> Result<bool, CopyError> {
        let full = self.src.store_dir().full(&info.path);
        let dst = &self.dsts[dest];
        self.retrying(dest, &full, Some(failed), || async {
            let there = dst
                .query_valid_paths(std::slice::from_ref(&info.path))
                .await?;
            if there.contains(&info.path) {
                return Ok(false);
            }
            let mut tried = self.attempt(info, &[dest]).await;
            tried.pop().map_or(Ok(false), |(_, r)| r)
        })
        .await
    }

    /// One try at copying `info` to `dests`: the compressed NAR file as it
    /// is where that works, and for the others one read of the NAR from
    /// the source, checked on the way and streamed to each of them.
    async fn attempt(&self, info: &PathInfo, dests: &[usize]) -> Vec<Tried> {
        let mut results = Vec::new();
        let mut streamed = Vec::new();
        for &dest in dests {
            match self.try_passthrough(dest, info).await {
                Ok(true) => results.push((dest, Ok(true))),
                Ok(false) => streamed.push(dest),
                Err(e) => results.push((dest, Err(e.into()))),
            }
        }
        if streamed.is_empty() {
            return results;
        }
        let nar = match self.src.nar(info).await {
            Ok(nar) => nar,
            Err(e) => {
                let mut e = CopyError::from(e);
                results.extend(streamed.into_iter().map(|d| (d, Err(e.duplicate()))));
                return results;
            }
        };
        let full = self.src.store_dir().full(&info.path);
        let bytes = Arc::clone(&self.bytes);
        let on_event = Arc::clone(&self.on_event);
        let report = Arc::new(move |n: u64| {
            bytes.fetch_add(n, Ordering::Relaxed);
            on_event(Event::Bytes { bytes: n });
        });
        // Hashed here unless every destination checks the hash itself.
        let all_verify = streamed
            .iter()
            .all(|&d| self.dsts[d].capabilities().verifies_nar);
        let checked: NarStream = if all_verify {
            Box::pin(Verified::size_only(
                nar,
                full.clone(),
                info.nar_hash,
                info.nar_size,
                report,
            ))
        } else {
            Box::pin(Verified::new(
                nar,
                full.clone(),
                info.nar_hash,
                info.nar_size,
                report,
            ))
        };
        if let [dest] = streamed[..] {
            let r = self.dsts[dest].add_path(info, checked).await;
            results.push((dest, r.map(|()| false).map_err(CopyError::from)));
            return results;
        }

        let mut adds = Keyed::new();
        let mut outs = Vec::new();
        for &dest in &streamed {
            let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
            outs.push(tx);
            let dst = Arc::clone(&self.dsts[dest]);
            let info = info.clone();
            adds.spawn(dest, async move {
                let r = dst.add_path(&info, Box::pin(ChannelReader::new(rx))).await;
                r.map(|()| false).map_err(CopyError::from)
            });
        }
        let collect = async {
            let mut added = Vec::new();
            while let Some((dest, joined)) = adds.next().await {
                let r = tasks::or_died(joined, format_args!("adding '{full}'"));
                added.push((dest, r));
            }
            added
        };
        let ((), added) = tokio::join!(tee(checked, outs, &full), collect);
        results.extend(added);
        results
    }

    /// Moves the compressed NAR file as it is when both stores are binary
    /// caches of the same compression. Returns whether it did.
    async fn try_passthrough(&self, dest: usize, info: &PathInfo) -> Result<bool, StoreError> {
        let dst = &self.dsts[dest];
        let Some(want) = dst.capabilities().writes_compression else {
            return Ok(false);
        };
        let same = info
            .file
            .as_ref()
            .is_some_and(|f| f.compression == want && f.file_hash.is_some());
        if !self.opts.passthrough || !same {
            return Ok(false);
        }
        let Some(file) = self.src.compressed_nar(info).await? else {
            return Ok(false);
        };
        // The narinfo may declare another compression than the file has
        // (Nix reads by magic bytes, so old caches get away with it): then
        // the file is recompressed like any other.
        if file.compression != want {
            return Ok(false);
        }
        dst.add_compressed(info, file).await?;
        (self.on_event)(Event::Bytes {
            bytes: info.nar_size,
        });
        Ok(true)
    }
}

/// A chunk of a NAR on its way to several destinations.
type SharedChunk = io::Result<Arc<[u8]>>;

/// Reads `nar` and sends each chunk to every one of `outs` still
/// listening (a destination that failed stops listening), in step, so
/// that memory stays bounded; an error reading goes to all of them.
async fn tee(mut nar: NarStream, mut outs: Vec<mpsc::Sender<SharedChunk>>, full: &str) {
    let mut buf = vec![0; CHUNK_SIZE];
    loop {
        match nar.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
                let mut open = Vec::with_capacity(outs.len());
                for tx in outs {
                    if tx.send(Ok(Arc::clone(&chunk))).await.is_ok() {
                        open.push(tx);
                    }
                }
                outs = open;
                if outs.is_empty() {
                    return;
                }
            }
            Err(e) => {
                let kind = e.kind();
                let mut shared = StoreError::from_stream(e, "reading the NAR of", full);
                for tx in &outs {
                    let _ = tx.send(Err(io::Error::new(kind, shared.share()))).await;
                }
                return;
            }
        }
    }
}

/// The wait before retry number `attempt` (from 1): `base` doubled for
/// each retry before it, at most [`MAX_RETRY_DELAY`], plus up to half of
/// it again, at random, so that many clients do not retry in step.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let delay = crate::backoff::doubled(base, attempt.saturating_sub(1), MAX_RETRY_DELAY);
    delay + delay.mul_f64(crate::backoff::random_fraction() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        for (attempt, want) in [(1, 100), (2, 200), (3, 400), (10, 30_000), (40, 30_000)] {
            let got = backoff(base, attempt);
            let want = Duration::from_millis(want);
            assert!(got >= want && got <= want + want / 2, "{attempt}: {got:?}");
        }
    }
}
