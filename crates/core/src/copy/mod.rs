//! The copy engine: copies a closure from any [`Store`] to any other.
//!
//! 1. The closure of the roots is computed on the source with batched
//!    queries ([`crate::closure`]).
//! 2. The destination is asked, in one batch, which of those it has;
//!    with [`CopyOptions::upstreams`], binary-cache destinations leave out
//!    what an upstream cache already serves with a trusted signature
//!    ([upstream-aware pushes](upstream)).
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

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
pub use tokio_util::sync::CancellationToken;

use crate::closure::ClosureError;
use crate::signing::{SecretKey, TrustedKeys, VerifyError};
use crate::store::{Store, StoreError};
use crate::store_path::StorePath;

mod plan;
mod retry;
mod schedule;
mod tasks;
mod transfer;
mod trust;
pub mod upstream;

pub use upstream::{DEFAULT_UPSTREAM_TIMEOUT, UPSTREAM_BATCH};

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How many paths to copy at once (fewer if a destination asks for
    /// fewer: [`crate::store::Capabilities::max_parallel_adds`]).
    pub jobs: usize,
    /// Refuse paths from an untrusted source that carry no valid signature
    /// by one of [`CopyOptions::trusted_keys`] (Nix's `require-sigs`).
    /// Content-addressed paths whose address verifies need none.
    /// Default: `true`, as in Nix.
    pub check_sigs: bool,
    /// Keys whose signatures are trusted (Nix's `trusted-public-keys`).
    /// Default: Nix's, [`TrustedKeys::nix_default`]; set with
    /// [`CopyOptions::with_trusted_keys`].
    pub trusted_keys: TrustedKeys,
    /// Keys to sign copied paths with; set with
    /// [`CopyOptions::with_secret_keys`], which trusts them too.
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
    /// Upstream binary caches (`https://cache.nixos.org`, say): a path one
    /// of them serves with a valid signature by one of
    /// [`CopyOptions::trusted_keys`] is not copied to destinations that
    /// are binary caches ([upstream-aware pushes](upstream)). Default:
    /// none; set with [`CopyOptions::with_upstreams`].
    pub upstreams: Vec<Arc<dyn Store>>,
    /// How long an upstream may take to answer a batch of
    /// [`UPSTREAM_BATCH`] paths before it is left out.
    pub upstream_timeout: Duration,
}

/// The longest wait between two tries.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            check_sigs: true,
            trusted_keys: TrustedKeys::nix_default(),
            secret_keys: Vec::new(),
            passthrough: true,
            substitute_on_destination: false,
            retries: 5,
            retry_delay: Duration::from_millis(500),
            upstreams: Vec::new(),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

/// Something that happened during a copy. Paths are full store paths;
/// `dest` is the index of a destination in the list given to
/// [`copy_to_many`] (always 0 for [`copy_closure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The plan: how many paths the closure has, how many of them are to
    /// be copied to some destination (each is read from the source once;
    /// paths found upstream are not among them), and their total NAR
    /// size.
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
    /// A path a binary-cache destination lacks, left out because an
    /// upstream serves it with a trusted signature
    /// ([`CopyOptions::upstreams`]).
    FoundUpstream {
        /// The destination.
        dest: usize,
        /// The path.
        path: String,
        /// The URL of the upstream that serves it.
        upstream: String,
    },
    /// An upstream could not be asked (it failed, or did not answer in
    /// [`CopyOptions::upstream_timeout`]); it is left out, and the paths
    /// it was asked about are copied unless another upstream serves them.
    UpstreamFailed {
        /// The upstream's URL.
        upstream: String,
        /// Why.
        error: String,
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
    /// Paths the destination lacked and that were not copied because an
    /// upstream serves them ([`CopyOptions::upstreams`]).
    pub upstream: usize,
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
    let infos = plan::closure_with_retries(&*src, roots, opts, &cancel)
        .await?
        .into_infos();
    let engine = Engine::new(src, dsts, opts, on_event, cancel);
    let mut summaries: Vec<Summary> = engine
        .dsts
        .iter()
        .map(|d| Summary {
            url: d.url().to_owned(),
            ..Summary::default()
        })
        .collect();
    let work = engine.plan(infos, &mut summaries).await;

    let dsts = engine.dsts.clone();
    for (path, dest, result) in engine.run(work).await {
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

/// The shared state of one copy.
struct Engine {
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

impl Engine {
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
}
