//! Pushing from the local Nix store as paths appear: a durable queue
//! ([`Queue`]) that anyone may add to (Nix's `post-build-hook`, say), and a
//! watcher ([`watch`]) that follows the store's database for newly valid
//! paths, queues them, and copies the closures of what is queued to one
//! or more stores with the copy engine, signed.
//!
//! # How the watcher works
//!
//! 1. It takes the queue's lock ([`Queue::lock`]): one watcher per queue.
//! 2. Following the store (unless told not to), it asks the database
//!    every [`PushOptions::poll_interval`] for the rows of `ValidPaths`
//!    past the last one it saw ([`LocalStore::registered_after`]) and
//!    queues them (derivations, `.drv` files, are left out: they are
//!    recipes, not what a cache serves). The last id seen is written to
//!    the queue's cursor after the paths are queued, so a crash queues a
//!    path twice at worst, never loses one. On a first start it begins at
//!    the current end of the database, not with the whole store.
//! 3. It copies the closures of the queued paths, longest waiting first,
//!    up to [`PushOptions::batch`] at a time, with
//!    [`copy_to_many`](crate::copy::copy_to_many), and removes a path's
//!    entry once its whole closure is in every destination (or, for the
//!    paths the copy leaves to upstream caches, [`CopyOptions::upstreams`],
//!    there). Paths no longer in the store (collected as garbage) are
//!    dropped.
//! 4. When a destination fails (it is down, say), the entries stay and
//!    the watcher tries again after a wait that doubles with each failure
//!    in a row, up to [`PushOptions::max_retry_delay`]; it keeps
//!    following the store meanwhile. Nothing is lost while a cache is
//!    away, and the queue drains when it is back.
//! 5. Cancelled (SIGTERM), it stops the copy at once: the copy engine
//!    leaves each destination consistent (a narinfo is written only after
//!    its NAR), and the entries of unfinished paths stay for the next run.
//!
//! # Examples
//!
//! Queue a path (as a post-build-hook would), then push what is queued
//! and what Nix registers from now on to a cache, signed, until Ctrl-C:
//!
//! ```no_run
//! use std::sync::Arc;
//! use nixferry::copy::{CancellationToken, CopyOptions};
//! use nixferry::push::{self, PushOptions, Queue};
//! use nixferry::signing::SecretKey;
//! use nixferry::store::{self, local::LocalStore, Store as _, StoreUrl};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = Queue::open_default()?;
//! let src = Arc::new(LocalStore::open(&StoreUrl::parse("local")?)?);
//! queue.push(&src.store_dir().parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-hi.txt")?)?;
//!
//! let key = SecretKey::from_file("/etc/nix/cache.sec")?;
//! let opts = PushOptions {
//!     copy: CopyOptions::default().with_secret_keys([key]),
//!     ..PushOptions::default()
//! };
//! let cache = store::open("file:///var/cache/nix")?;
//! let cancel = CancellationToken::new();
//! let stop = cancel.clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     stop.cancel();
//! });
//! push::watch(src, vec![cache], &queue, &opts, Arc::new(|e| eprintln!("{e:?}")), cancel).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::copy::{self, CancellationToken, CopyOptions};
use crate::store::local::LocalStore;
use crate::store::{Store, StoreError};
use crate::store_path::StorePath;

mod queue;

pub use queue::{Entry, Queue, QueueError, QueueLock};

/// How the watcher works.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// How paths are copied: keys to sign with, upstreams whose paths are
    /// left out, jobs, retries of one path.
    pub copy: CopyOptions,
    /// Follow the store's database and queue each path that becomes
    /// valid; without it, only what others queue is pushed.
    pub follow: bool,
    /// Follow the database from the row after this id instead of where
    /// the last run stopped (0: push the whole store).
    pub since: Option<i64>,
    /// How often the database and the queue are looked at.
    pub poll_interval: Duration,
    /// The most queued paths copied together.
    pub batch: usize,
    /// The wait after a first failed push; doubled for each further one
    /// in a row, plus up to half of it again at random.
    pub retry_delay: Duration,
    /// How long the wait between two pushes that fail grows at most
    /// (before the random part is added).
    pub max_retry_delay: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            copy: CopyOptions::default(),
            follow: true,
            since: None,
            poll_interval: Duration::from_secs(1),
            batch: 256,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
        }
    }
}

/// Something the watcher did. Paths are full store paths.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The watcher holds the queue and starts.
    Started {
        /// Paths waiting from before.
        queued: usize,
        /// The id of the last database row already seen, after which it
        /// follows the store; `None` when it does not follow it.
        cursor: Option<i64>,
    },
    /// A path became valid in the store and was queued.
    Queued {
        /// The path.
        path: String,
    },
    /// Queued paths are being pushed.
    Pushing {
        /// The paths whose closures are copied.
        paths: Vec<String>,
    },
    /// What the copy of the paths being pushed does.
    Copy(copy::Event),
    /// Paths whose closures are in every destination now (or in an
    /// upstream that serves them, [`CopyOptions::upstreams`]), taken off
    /// the queue.
    Pushed {
        /// The paths.
        paths: Vec<String>,
        /// Paths copied, each counted once per destination it went to.
        copied: usize,
        /// Paths left out because an upstream serves them, likewise.
        upstream: usize,
        /// NAR bytes copied, likewise.
        nar_bytes: u64,
        /// How long the push took.
        elapsed: Duration,
    },
    /// A queued path that cannot be pushed (it is no longer in the
    /// store), taken off the queue.
    Dropped {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A push failed; the paths stay queued and are pushed again after
    /// `delay`.
    Retrying {
        /// Failures in a row: 1 for the first.
        attempt: u32,
        /// The wait before the next push.
        delay: Duration,
        /// Paths waiting.
        queued: usize,
        /// What failed.
        error: String,
    },
    /// The watcher stopped, as asked.
    Stopped {
        /// Paths left waiting, for the next run.
        queued: usize,
    },
}

/// Why the watcher stopped without being asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The queue could not be used.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The store's database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many database rows are read at a time while following.
const ROWS_PER_READ: usize = 1000;

/// Pushes what `queue` holds, and (with [`PushOptions::follow`]) what
/// becomes valid in `src`, to every store of `dsts`, until `cancel` is
/// cancelled. See the [module docs](self).
///
/// # Errors
/// [`QueueError::Busy`] when another watcher holds the queue; otherwise
/// when the queue or the database cannot be read or written. A
/// destination that fails is no error: its paths are pushed again later.
pub async fn watch(
    src: Arc<LocalStore>,
    dsts: Vec<Arc<dyn Store>>,
    queue: &Queue,
    opts: &PushOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
) -> Result<(), PushError> {
    let lock = queue.lock()?;
    let mut follower = if opts.follow {
        Some(Follower::start(&src, &lock, opts.since).await?)
    } else {
        None
    };
    on_event(Event::Started {
        queued: queue.len()?,
        cursor: follower.as_ref().map(|f| f.cursor),
    });
    let pusher = Pusher {
        src,
        dsts,
        queue,
        opts,
        on_event: Arc::clone(&on_event),
        cancel: cancel.clone(),
    };
    let mut failures = 0;
    let mut next_push = Instant::now();
    while !cancel.is_cancelled() {
        if let Some(f) = &mut follower {
            f.poll(&pusher.src, queue, &lock, &*on_event).await?;
        }
        let mut waiting = 0;
        if Instant::now() >= next_push {
            let entries = queue.entries()?;
            waiting = entries.len().saturating_sub(opts.batch);
            match pusher.push(entries).await? {
                Outcome::Done => failures = 0,
                Outcome::Cancelled => break,
                Outcome::Failed(error) => {
                    failures += 1;
                    let delay =
                        crate::backoff::jittered(opts.retry_delay, failures, opts.max_retry_delay);
                    next_push = Instant::now() + delay;
                    on_event(Event::Retrying {
                        attempt: failures,
                        delay,
                        queued: queue.len()?,
                        error,
                    });
                }
            }
        }
        // More than a batch waits: the next batch goes at once.
        if waiting > 0 && failures == 0 {
            continue;
        }
        // Until the next look at the store, or the next push after a
        // failure if that comes first.
        let until_push = next_push.saturating_duration_since(Instant::now());
        let wait = if until_push.is_zero() {
            opts.poll_interval
        } else {
            until_push.min(opts.poll_interval)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => {}
        }
    }
    on_event(Event::Stopped {
        queued: queue.len()?,
    });
    Ok(())
}

/// Follows the database: queues each path registered after `cursor`.
struct Follower {
    /// The id of the last row queued.
    cursor: i64,
}

impl Follower {
    /// Starts after `since`, else where the last run on this database
    /// stopped, else at the database's end (a first start, or a database
    /// made anew since).
    async fn start(
        src: &LocalStore,
        lock: &QueueLock,
        since: Option<i64>,
    ) -> Result<Self, PushError> {
        let last = src.last_registered().await?;
        let cursor = match (since, lock.cursor(src.db_path())?) {
            (Some(since), _) => since,
            (None, Some(saved)) if saved <= last => saved,
            _ => last,
        };
        lock.set_cursor(src.db_path(), cursor)?;
        Ok(Self { cursor })
    }

    /// Queues what was registered since the last call.
    async fn poll(
        &mut self,
        src: &LocalStore,
        queue: &Queue,
        lock: &QueueLock,
        on_event: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<(), PushError> {
        loop {
            let rows = src.registered_after(self.cursor, ROWS_PER_READ).await?;
            let Some(&(last, _)) = rows.last() else {
                return Ok(());
            };
            for (_, path) in &rows {
                if !path.is_derivation() {
                    queue.push(path)?;
                    on_event(Event::Queued {
                        path: src.store_dir().full(path),
                    });
                }
            }
            // After the entries: a crash in between queues them again.
            lock.set_cursor(src.db_path(), last)?;
            self.cursor = last;
            if rows.len() < ROWS_PER_READ {
                return Ok(());
            }
        }
    }
}

/// How a push went.
enum Outcome {
    /// Every path pushed is in every destination (or there was nothing
    /// to push).
    Done,
    /// Some paths are not; why.
    Failed(String),
    /// The push was cancelled.
    Cancelled,
}

/// What a push needs.
struct Pusher<'a> {
    src: Arc<LocalStore>,
    dsts: Vec<Arc<dyn Store>>,
    queue: &'a Queue,
    opts: &'a PushOptions,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    cancel: CancellationToken,
}

impl Pusher<'_> {
    /// Pushes the closures of the first [`PushOptions::batch`] of
    /// `entries`, and takes those that are everywhere off the queue.
    async fn push(&self, entries: Vec<Entry>) -> Result<Outcome, PushError> {
        let dir = self.src.store_dir();
        let batch: Vec<Entry> = entries.into_iter().take(self.opts.batch.max(1)).collect();
        if batch.is_empty() {
            return Ok(Outcome::Done);
        }
        let roots: Vec<StorePath> = batch.iter().map(|e| e.path.clone()).collect();
        let valid = match self.src.query_valid_paths(&roots).await {
            Ok(valid) => valid,
            Err(e) => return Ok(Outcome::Failed(e.to_string())),
        };
        let (batch, gone): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|e| valid.contains(&e.path));
        for entry in gone {
            self.queue.remove(&entry)?;
            (self.on_event)(Event::Dropped {
                path: dir.full(&entry.path),
                reason: "no longer valid in the store".to_owned(),
            });
        }
        if batch.is_empty() {
            return Ok(Outcome::Done);
        }
        let roots: Vec<StorePath> = batch.iter().map(|e| e.path.clone()).collect();
        (self.on_event)(Event::Pushing {
            paths: roots.iter().map(|p| dir.full(p)).collect(),
        });
        let forward: Arc<dyn Fn(copy::Event) + Send + Sync> = {
            let on_event = Arc::clone(&self.on_event);
            Arc::new(move |e| on_event(Event::Copy(e)))
        };
        let start = Instant::now();
        let src: Arc<dyn Store> = self.src.clone();
        let copied = copy::copy_to_many(
            src,
            self.dsts.clone(),
            &roots,
            &self.opts.copy,
            forward,
            self.cancel.clone(),
        )
        .await;
        if self.cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let summaries = match copied {
            Ok(s) => s,
            Err(e) => return Ok(Outcome::Failed(e.to_string())),
        };
        let (done, error) = self.completed(&roots, &summaries).await;
        let mut pushed = Vec::new();
        for entry in batch.iter().filter(|e| done.contains(&e.path)) {
            self.queue.remove(entry)?;
            pushed.push(dir.full(&entry.path));
        }
        if !pushed.is_empty() {
            (self.on_event)(Event::Pushed {
                paths: pushed,
                copied: summaries.iter().map(|s| s.copied).sum(),
                upstream: summaries.iter().map(|s| s.upstream).sum(),
                nar_bytes: summaries.iter().map(|s| s.nar_bytes).sum(),
                elapsed: start.elapsed(),
            });
        }
        Ok(match error {
            Some(error) => Outcome::Failed(error),
            None => Outcome::Done,
        })
    }

    /// Which of `roots` have their whole closure in every destination
    /// after a copy that ended with `summaries`, and, if some do not,
    /// what went wrong.
    async fn completed(
        &self,
        roots: &[StorePath],
        summaries: &[copy::Summary],
    ) -> (BTreeSet<StorePath>, Option<String>) {
        let all = || roots.iter().cloned().collect();
        if summaries.iter().all(copy::Summary::is_complete) {
            return (all(), None);
        }
        if let Some((url, e)) = summaries
            .iter()
            .find_map(|s| s.error.as_ref().map(|e| (&s.url, e)))
        {
            return (BTreeSet::new(), Some(at_destination(url, e)));
        }
        let failed: BTreeSet<&StorePath> = summaries
            .iter()
            .flat_map(|s| s.failed.iter().map(|(p, _)| p))
            .collect();
        let error = summaries.iter().find_map(|s| {
            let (path, e) = s.failed.first()?;
            let full = self.src.store_dir().full(path);
            Some(at_destination(&s.url, format_args!("{full}: {e}")))
        });
        // Which roots the failed paths belong to: the closure of each,
        // one query of the database each.
        let mut done = BTreeSet::new();
        for root in roots {
            if let Ok(closure) = self.src.closure(std::slice::from_ref(root)).await {
                if !closure.keys().any(|p| failed.contains(p)) {
                    done.insert(root.clone());
                }
            }
        }
        (
            done,
            error.or_else(|| Some("the copy did not finish".to_owned())),
        )
    }
}

/// An error at a destination, said with its URL (once: store errors often
/// name it already).
pub fn at_destination(url: &str, error: impl std::fmt::Display) -> String {
    let error = error.to_string();
    if error.starts_with(url) {
        error
    } else {
        format!("{url}: {error}")
    }
}
