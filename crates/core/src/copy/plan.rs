//! Planning a copy: the closure to copy, what each destination lacks, and
//! the checks a path passes (and the signatures it gets) before any of
//! its bytes move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::tasks::{self, Keyed};
use super::{CancellationToken, CopyError, CopyOptions, Engine, Event, Summary};
use crate::closure::{self, ClosureError};
use crate::store::{PathInfo, Store, StoreError};
use crate::store_path::StorePath;

/// The paths to copy, in the closure's order (references first), each
/// with the destinations that lack it.
pub(super) type Work = Vec<(PathInfo, Vec<usize>)>;

/// The closure of `roots` in `src`, asked again after failures that may
/// pass, as paths are.
pub(super) async fn closure_with_retries(
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
                    () = tokio::time::sleep(super::retry::backoff(opts.retry_delay, tries)) => {}
                    () = cancel.cancelled() => return Err(ClosureError::Store(e)),
                }
            }
            other => return other,
        }
    }
}

impl Engine {
    /// Asks every destination at once, each in one batch, which of the
    /// closure's paths (`infos`, references first) it has, then the
    /// upstreams about what binary-cache destinations lack
    /// ([`super::upstream`]), and returns what is left to copy. A path a
    /// destination has counts as skipped in its summary, one an upstream
    /// serves as found upstream; a destination that cannot be asked gets
    /// the error in its summary and nothing to copy. Ends with
    /// [`Event::Planned`].
    pub(super) async fn plan(
        self: &Arc<Self>,
        infos: Vec<PathInfo>,
        summaries: &mut [Summary],
    ) -> Work {
        let all: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
        let mut asks = Keyed::new();
        for dest in 0..self.dsts.len() {
            let engine = Arc::clone(self);
            let all = all.clone();
            asks.spawn(dest, async move { engine.query_present(dest, &all).await });
        }
        let mut present: Vec<Option<BTreeSet<StorePath>>> = vec![None; self.dsts.len()];
        while let Some((dest, joined)) = asks.next().await {
            let result = tasks::or_died(joined, "asking the destination what it has");
            match result {
                Ok(set) => present[dest] = Some(set),
                Err(CopyError::Cancelled) => summaries[dest].cancelled = true,
                Err(e) => {
                    (self.on_event)(Event::DestinationFailed {
                        dest,
                        error: e.to_string(),
                    });
                    summaries[dest].error = Some(match e {
                        CopyError::Store(e) => e,
                        other => StoreError::Connection {
                            store: self.dsts[dest].url().to_owned(),
                            message: other.to_string(),
                        },
                    });
                }
            }
        }

        // A Nix store needs the whole closure in it: only binary caches
        // may leave out what an upstream serves.
        let caches: Vec<bool> = self
            .dsts
            .iter()
            .map(|d| !d.capabilities().needs_references_first)
            .collect();
        let upstream = if self.opts.upstreams.is_empty() {
            BTreeMap::new()
        } else {
            let wanted: Vec<StorePath> = all
                .iter()
                .filter(|p| {
                    present.iter().zip(&caches).any(|(set, &cache)| {
                        cache && set.as_ref().is_some_and(|set| !set.contains(p))
                    })
                })
                .cloned()
                .collect();
            if wanted.is_empty() {
                BTreeMap::new()
            } else {
                self.query_upstreams(wanted).await
            }
        };

        let dir = self.src.store_dir().clone();
        let mut work = Vec::new();
        for info in infos {
            let mut lacking = Vec::new();
            for (dest, set) in present.iter().enumerate() {
                let Some(set) = set else { continue };
                if set.contains(&info.path) {
                    summaries[dest].skipped += 1;
                    (self.on_event)(Event::Skipped {
                        dest,
                        path: dir.full(&info.path),
                    });
                } else if let (true, Some(url)) = (caches[dest], upstream.get(&info.path)) {
                    summaries[dest].upstream += 1;
                    (self.on_event)(Event::FoundUpstream {
                        dest,
                        path: dir.full(&info.path),
                        upstream: url.clone(),
                    });
                } else {
                    lacking.push(dest);
                }
            }
            if !lacking.is_empty() {
                work.push((info, lacking));
            }
        }
        (self.on_event)(Event::Planned {
            closure: all.len(),
            missing: work.len(),
            nar_bytes: work.iter().map(|(i, _)| i.nar_size).sum(),
        });
        work
    }

    /// Which of `paths` destination `dest` has (after substituting, if
    /// asked to), each refreshed ([`crate::store::Store::refresh_paths`]),
    /// retrying failures that may pass.
    async fn query_present(
        &self,
        dest: usize,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        let dst = &self.dsts[dest];
        self.retrying(dest, "", None, || async {
            let present = if self.opts.substitute_on_destination {
                dst.substitute_paths(paths).await?
            } else {
                dst.query_valid_paths(paths).await?
            };
            // What is skipped must stay: a gc of the destination at work
            // now keeps what was just refreshed.
            let present: Vec<StorePath> = present.into_iter().collect();
            Ok(dst.refresh_paths(&present).await?)
        })
        .await
    }

    /// Checks the path's signatures if the source needs it, and signs it
    /// with the copy's keys.
    pub(super) fn prepare(&self, info: &PathInfo) -> Result<PathInfo, CopyError> {
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
}
