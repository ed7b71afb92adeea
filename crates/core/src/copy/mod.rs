//! The copy engine: copies a closure from any [`Store`] to any other
//! (DESIGN.md, "How a copy flows").
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
//!
//! Progress is reported as [`Event`]s to a callback; cancellation is a
//! [`CancellationToken`]. A cancelled or failed copy leaves the destination
//! consistent (stores write a path's metadata last), and running it again
//! finishes the job.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::closure::{self, ClosureError};
use crate::signing::{SecretKey, TrustedKeys, VerifyError};
use crate::store::{PathInfo, Store, StoreError};
use crate::store_path::StorePath;

mod verify;

use verify::Verified;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// How many paths to copy at once.
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
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            check_sigs: true,
            trusted_keys: TrustedKeys::new(),
            secret_keys: Vec::new(),
            passthrough: true,
        }
    }
}

/// Something that happened during a copy. Paths are full store paths.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The plan: how many paths the closure has, how many of them the
    /// destination lacks, and their total NAR size.
    Planned {
        /// Paths in the closure.
        closure: usize,
        /// Paths to copy.
        missing: usize,
        /// NAR bytes to copy.
        nar_bytes: u64,
    },
    /// A path the destination already has.
    Skipped {
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
    /// More NAR bytes went through (for all paths together).
    Bytes {
        /// How many.
        bytes: u64,
    },
    /// A path is in the destination.
    Copied {
        /// The path.
        path: String,
        /// Its NAR size.
        nar_size: u64,
        /// Whether the compressed file was moved as it is.
        passthrough: bool,
    },
    /// A path could not be copied.
    Failed {
        /// The path.
        path: String,
        /// Why.
        error: String,
    },
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Paths copied.
    pub copied: usize,
    /// Paths the destination already had.
    pub skipped: usize,
    /// NAR bytes copied.
    pub nar_bytes: u64,
    /// Paths that failed, with the reason; paths whose references failed
    /// are among them.
    pub failed: Vec<(StorePath, CopyError)>,
    /// Whether the copy was cancelled before it finished.
    pub cancelled: bool,
    /// How long it took.
    pub elapsed: Duration,
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
    let start = Instant::now();
    let infos = closure::compute(&*src, roots).await?.into_infos();
    let all: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    let present = dst.query_valid_paths(&all).await?;
    let mut summary = Summary::default();
    let dir = src.store_dir().clone();
    let missing: Vec<PathInfo> = infos
        .into_iter()
        .filter(|info| {
            let have = present.contains(&info.path);
            if have {
                summary.skipped += 1;
                on_event(Event::Skipped {
                    path: dir.full(&info.path),
                });
            }
            !have
        })
        .collect();
    on_event(Event::Planned {
        closure: all.len(),
        missing: missing.len(),
        nar_bytes: missing.iter().map(|i| i.nar_size).sum(),
    });

    let plan = Plan::new(src, dst, opts, on_event, cancel);
    let results = plan.run(missing).await;
    for (path, result) in results {
        match result {
            Ok(nar_size) => {
                summary.copied += 1;
                summary.nar_bytes += nar_size;
            }
            Err(CopyError::Cancelled) => summary.cancelled = true,
            Err(e) => summary.failed.push((path, e)),
        }
    }
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// The shared state of one copy.
struct Plan {
    src: Arc<dyn Store>,
    dst: Arc<dyn Store>,
    opts: CopyOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
    /// Whether the source needs its signatures checked: a Nix store on this
    /// machine is trusted as Nix trusts it; anything else is not.
    source_untrusted: bool,
    bytes: Arc<AtomicU64>,
}

/// A path's outcome as its referrers see it: `None` while pending.
type Outcome = watch::Receiver<Option<bool>>;

impl Plan {
    fn new(
        src: Arc<dyn Store>,
        dst: Arc<dyn Store>,
        opts: &CopyOptions,
        on_event: Arc<dyn Fn(Event) + Send + Sync>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let source_untrusted = !src.capabilities().trusted_source;
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(opts.jobs.max(1))),
            src,
            dst,
            opts: opts.clone(),
            on_event,
            cancel,
            source_untrusted,
            bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Copies `missing` (in topological order), returning each path's
    /// outcome: its NAR size, or why it was not copied.
    async fn run(
        self: Arc<Self>,
        missing: Vec<PathInfo>,
    ) -> Vec<(StorePath, Result<u64, CopyError>)> {
        let ordered = self.dst.capabilities().needs_references_first;
        let mut outcomes: HashMap<StorePath, Outcome> = HashMap::new();
        let mut tasks = JoinSet::new();
        for info in missing {
            let (tx, rx) = watch::channel(None);
            // Only references that are being copied too need waiting for;
            // the rest are in the destination already.
            let waits: Vec<(StorePath, Outcome)> = if ordered {
                info.references
                    .iter()
                    .filter(|r| **r != info.path)
                    .filter_map(|r| outcomes.get(r).map(|o| (r.clone(), o.clone())))
                    .collect()
            } else {
                Vec::new()
            };
            outcomes.insert(info.path.clone(), rx);
            let plan = Arc::clone(&self);
            tasks.spawn(async move {
                let path = info.path.clone();
                let result = plan.copy_after(info, waits).await;
                let _ = tx.send(Some(result.is_ok()));
                (path, result)
            });
        }
        let mut results = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((path, result)) = joined {
                results.insert(path, result);
            }
        }
        results.into_iter().collect()
    }

    async fn copy_after(
        &self,
        info: PathInfo,
        waits: Vec<(StorePath, Outcome)>,
    ) -> Result<u64, CopyError> {
        let dir = self.src.store_dir();
        for (reference, mut outcome) in waits {
            let ok = tokio::select! {
                r = outcome.wait_for(Option::is_some) => r.map(|v| *v == Some(true)).unwrap_or(false),
                () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
            };
            if !ok {
                return Err(self.fail(
                    &info,
                    CopyError::ReferenceFailed {
                        path: dir.full(&info.path),
                        reference: dir.full(&reference),
                    },
                ));
            }
        }
        let _slot = tokio::select! {
            s = self.slots.acquire() => s.map_err(|_| CopyError::Cancelled)?,
            () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
        };
        tokio::select! {
            r = self.copy_one(&info) => r.map_err(|e| self.fail(&info, e)),
            () = self.cancel.cancelled() => Err(CopyError::Cancelled),
        }
    }

    fn fail(&self, info: &PathInfo, e: CopyError) -> CopyError {
        (self.on_event)(Event::Failed {
            path: self.src.store_dir().full(&info.path),
            error: e.to_string(),
        });
        e
    }

    async fn copy_one(&self, info: &PathInfo) -> Result<u64, CopyError> {
        let dir = self.src.store_dir();
        let full = dir.full(&info.path);
        if self.opts.check_sigs && self.source_untrusted {
            info.check_trust(dir, &self.opts.trusted_keys)
                .map_err(|reason| CopyError::Untrusted {
                    path: full.clone(),
                    reason,
                })?;
        }
        let mut info = info.clone();
        for key in &self.opts.secret_keys {
            let sig = key.sign(info.fingerprint(dir).as_bytes()).to_string();
            info.signatures
                .retain(|s| !s.starts_with(&format!("{}:", key.name())));
            info.signatures.push(sig);
        }
        info.signatures.sort();
        (self.on_event)(Event::Started {
            path: full.clone(),
            nar_size: info.nar_size,
        });

        let passthrough = self.try_passthrough(&info).await?;
        if !passthrough {
            let nar = self.src.nar(&info).await?;
            let bytes = Arc::clone(&self.bytes);
            let on_event = Arc::clone(&self.on_event);
            let report = Arc::new(move |n: u64| {
                bytes.fetch_add(n, Ordering::Relaxed);
                on_event(Event::Bytes { bytes: n });
            });
            let checked = if self.dst.capabilities().verifies_nar {
                Verified::size_only(nar, full.clone(), info.nar_hash, info.nar_size, report)
            } else {
                Verified::new(nar, full.clone(), info.nar_hash, info.nar_size, report)
            };
            self.dst.add_path(&info, Box::pin(checked)).await?;
        }
        (self.on_event)(Event::Copied {
            path: full,
            nar_size: info.nar_size,
            passthrough,
        });
        Ok(info.nar_size)
    }

    /// Moves the compressed NAR file as it is when both stores are binary
    /// caches of the same compression. Returns whether it did.
    async fn try_passthrough(&self, info: &PathInfo) -> Result<bool, StoreError> {
        let Some(want) = self.dst.capabilities().writes_compression else {
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
        self.dst.add_compressed(info, file).await?;
        (self.on_event)(Event::Bytes {
            bytes: info.nar_size,
        });
        Ok(true)
    }
}
