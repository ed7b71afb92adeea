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

/// A path's outcome in one destination, as its referrers see it: `None`
/// while pending.
type Outcome = watch::Receiver<Option<bool>>;

/// One path's result in one destination.
type PathResult = (StorePath, usize, Result<u64, CopyError>);

impl Engine {
    /// Copies `work` (paths in topological order, each with the
    /// destinations that lack it), returning each path's outcome in each
    /// of those destinations: its NAR size, or why it was not copied.
    pub(super) async fn run(self: Arc<Self>, work: Work) -> Vec<PathResult> {
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
            let engine = Arc::clone(&self);
            let key = (info.path.clone(), dests.clone());
            tasks.spawn(key, async move {
                let path = info.path.clone();
                let results = engine.copy_after(info, dests, waits).await;
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
