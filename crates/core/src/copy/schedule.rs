//! Running a planned copy: paths in parallel, up to the copy's job
//! slots, each in a destination that needs references first only once
//! they are there; every path ends with an outcome in each destination,
//! even when its task dies.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::plan::Work;
use super::tasks::{self, Keyed};
use super::{CopyError, Engine, Event};
use crate::store::PathInfo;
use crate::store_path::StorePath;

/// How far a path has got in one destination, as its referrers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Waiting for its references or a job slot.
    Pending,
    /// Being sent.
    Started,
    /// Finished: copied (`true`) or failed.
    Done(bool),
}

type Outcome = watch::Receiver<Progress>;

/// What a referrer waits for of a reference in one destination: its end,
/// or, for a destination that takes a path while its references are still
/// coming ([`Capabilities::accepts_pending_references`]), its start.
///
/// [`Capabilities::accepts_pending_references`]: crate::store::Capabilities::accepts_pending_references
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Done,
    Started,
}

/// A reference a path waits for in one destination.
struct Wait {
    dest: usize,
    reference: StorePath,
    outcome: Outcome,
    until: Until,
}

/// One path's result in one destination.
type PathResult = (StorePath, usize, Result<u64, CopyError>);

impl Engine {
    /// Copies `work` (paths in topological order, each with the
    /// destinations that lack it), returning each path's outcome in each
    /// of those destinations: its NAR size, or why it was not copied.
    pub(super) async fn run(self: Arc<Self>, work: Work) -> Vec<PathResult> {
        let ordered: Vec<Option<Until>> = self
            .dsts
            .iter()
            .map(|d| {
                let caps = d.capabilities();
                match (caps.needs_references_first, caps.accepts_pending_references) {
                    (false, _) => None,
                    (true, false) => Some(Until::Done),
                    (true, true) => Some(Until::Started),
                }
            })
            .collect();
        let mut outcomes: HashMap<(StorePath, usize), Outcome> = HashMap::new();
        let mut tasks = Keyed::new();
        for (info, dests) in work {
            let mut senders = Vec::new();
            let mut waits = Vec::new();
            for &dest in &dests {
                let (tx, rx) = watch::channel(Progress::Pending);
                senders.push((dest, tx));
                // Only references that are being copied too need waiting
                // for; the rest are in the destination already.
                if let Some(until) = ordered[dest] {
                    for r in info.references.iter().filter(|r| **r != info.path) {
                        if let Some(o) = outcomes.get(&(r.clone(), dest)) {
                            waits.push(Wait {
                                dest,
                                reference: r.clone(),
                                outcome: o.clone(),
                                until,
                            });
                        }
                    }
                }
                outcomes.insert((info.path.clone(), dest), rx);
            }
            let engine = Arc::clone(&self);
            let key = (info.path.clone(), dests.clone());
            tasks.spawn(key, async move {
                let path = info.path.clone();
                let results = engine.copy_after(info, dests, waits, &senders).await;
                for (dest, tx) in senders {
                    let ok = results.iter().any(|(d, r)| *d == dest && r.is_ok());
                    let _ = tx.send(Progress::Done(ok));
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
                    let mut e = tasks::died(e, format_args!("copying '{full}'"));
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
    /// are there (or on their way), telling `progress` when it starts.
    async fn copy_after(
        self: Arc<Self>,
        info: PathInfo,
        dests: Vec<usize>,
        waits: Vec<Wait>,
        progress: &[(usize, watch::Sender<Progress>)],
    ) -> Vec<(usize, Result<u64, CopyError>)> {
        let dir = self.src.store_dir();
        let full = dir.full(&info.path);
        let mut done: Vec<(usize, Result<u64, CopyError>)> = Vec::new();
        let is_done = |done: &[(usize, _)], dest| done.iter().any(|(d, _)| *d == dest);
        for Wait {
            dest,
            reference,
            mut outcome,
            until,
        } in waits
        {
            if is_done(&done, dest) {
                continue;
            }
            let reached = |p: &Progress| match (p, until) {
                (Progress::Pending, _) => false,
                (Progress::Started, until) => until == Until::Started,
                (Progress::Done(_), _) => true,
            };
            let ok = tokio::select! {
                r = outcome.wait_for(reached) => {
                    r.is_ok_and(|p| matches!(*p, Progress::Started | Progress::Done(true)))
                }
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
        for (dest, tx) in progress {
            if todo.contains(dest) {
                let _ = tx.send(Progress::Started);
            }
        }

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
                    let engine = Arc::clone(&self);
                    let info = info.clone();
                    retries.spawn(dest, async move { engine.retry(&info, dest, e).await });
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
}
