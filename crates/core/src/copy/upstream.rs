//! Upstream-aware pushes: a path that an upstream cache already serves
//! with a trusted signature is not pushed to a binary cache.
//!
//! # Why
//!
//! A binary cache is rarely a Nix client's only substituter: a company's
//! cache sits beside `https://cache.nixos.org`, and a client looks in
//! both. Pushing to it the paths cache.nixos.org already serves costs
//! upload time and storage for nothing; a closure built on `nixpkgs` is
//! mostly such paths. With [`CopyOptions::upstreams`] set, the copy asks
//! those caches which of the paths a destination lacks they serve, and
//! leaves those out.
//!
//! # What counts
//!
//! - Only destinations that are binary caches take part: a Nix store
//!   (`local`, `ssh://`) needs the whole closure in it
//!   ([`crate::store::Capabilities::needs_references_first`]), so it gets
//!   every path it lacks, whatever upstreams serve.
//! - An upstream's answer counts only for a path whose path info there
//!   carries a valid signature by one of [`CopyOptions::trusted_keys`], or
//!   a content address that verifies
//!   ([`crate::store::PathInfo::check_trust`], the check a copy makes of
//!   an untrusted source): a client substitutes only such paths from it.
//!   This holds whatever [`CopyOptions::check_sigs`] says.
//! - A path found upstream counts as present in the destination, as a
//!   path it has does: paths that refer to it are pushed as usual. Every
//!   path of the closure is either in the destination, served by an
//!   upstream, or pushed, so the destination and the upstreams together
//!   hold the closure (`nixferry cache verify --upstream` checks just
//!   that).
//! - Each found path gives [`Event::FoundUpstream`] per destination that
//!   leaves it out, and is counted in [`Summary::upstream`]; the
//!   [`Event::Planned`] that follows counts only what is to be copied.
//!
//! # Asking
//!
//! Upstreams are asked after the destinations, only about the paths some
//! binary-cache destination lacks, all upstreams at once, each in batches
//! of [`UPSTREAM_BATCH`] paths through its batched
//! [`Store::query_path_infos`]. A batch that fails, or gets no answer in
//! [`CopyOptions::upstream_timeout`], leaves that upstream out of the rest
//! of the copy with [`Event::UpstreamFailed`] (what it answered before
//! still counts: each of those answers was checked on its own); the copy
//! never fails for an upstream, it pushes what no upstream vouched for.
//! An upstream with the URL of a destination is not asked (it would only
//! say what the destination said), nor is one for another store
//! directory (its paths are other paths).
//!
//! [`Summary::upstream`]: super::Summary::upstream

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::tasks::Keyed;
use super::{CopyOptions, Engine, Event};
use crate::store::{Store, StoreUrl};
use crate::store_path::StorePath;

/// How many paths one question to an upstream names.
pub const UPSTREAM_BATCH: usize = 256;

/// How long an upstream may take to answer one batch of
/// [`UPSTREAM_BATCH`] paths, by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

impl CopyOptions {
    /// Leaves out of pushes to binary caches the paths that one of
    /// `stores` (upstream caches, such as `https://cache.nixos.org`)
    /// serves with a trusted signature, as [upstream-aware
    /// pushes](super::upstream) describe; upstreams are preferred in the
    /// order given. Adds to the upstreams set so far.
    ///
    /// ```
    /// use nixferry::copy::CopyOptions;
    ///
    /// // Opening a file:// cache writes nothing.
    /// let upstream = nixferry::store::open("file:///var/cache/upstream").unwrap();
    /// let opts = CopyOptions::default().with_upstreams([upstream]);
    /// assert_eq!(opts.upstreams[0].url(), "file:///var/cache/upstream");
    /// ```
    #[must_use]
    pub fn with_upstreams(mut self, stores: impl IntoIterator<Item = Arc<dyn Store>>) -> Self {
        self.upstreams.extend(stores);
        self
    }
}

/// Whether two store URLs name the same store: the same scheme and
/// location (a trailing `/` aside), whatever their parameters.
fn same_store(a: &str, b: &str) -> bool {
    match (StoreUrl::parse(a), StoreUrl::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.location().trim_end_matches('/') == b.location().trim_end_matches('/')
                && a.param("root") == b.param("root")
        }
        _ => a.trim_end_matches('/') == b.trim_end_matches('/'),
    }
}

impl Engine {
    /// The paths of `wanted` that some upstream serves with a trusted
    /// signature (or a content address that verifies), each with the URL
    /// of the first upstream, in the order given, that does. Upstreams
    /// that fail are left out with [`Event::UpstreamFailed`].
    pub(super) async fn query_upstreams(
        self: &Arc<Self>,
        wanted: Vec<StorePath>,
    ) -> BTreeMap<StorePath, String> {
        let wanted = Arc::new(wanted);
        let mut asks = Keyed::new();
        for (i, upstream) in self.opts.upstreams.iter().enumerate() {
            if self
                .dsts
                .iter()
                .any(|d| same_store(d.url(), upstream.url()))
            {
                continue;
            }
            if upstream.store_dir() != self.src.store_dir() {
                (self.on_event)(Event::UpstreamFailed {
                    upstream: upstream.url().to_owned(),
                    error: format!(
                        "it is a cache for {}, not for {}",
                        upstream.store_dir(),
                        self.src.store_dir()
                    ),
                });
                continue;
            }
            let engine = Arc::clone(self);
            let upstream = Arc::clone(upstream);
            let wanted = Arc::clone(&wanted);
            asks.spawn(
                i,
                async move { engine.ask_upstream(&*upstream, &wanted).await },
            );
        }
        let mut answers: Vec<Option<BTreeSet<StorePath>>> = vec![None; self.opts.upstreams.len()];
        while let Some((i, joined)) = asks.next().await {
            let url = self.opts.upstreams[i].url().to_owned();
            let (found, failed) = joined.unwrap_or_else(|e| {
                let e = crate::store::StoreError::task_died("asking the upstream", e);
                (BTreeSet::new(), Some(e.to_string()))
            });
            if let Some(error) = failed {
                (self.on_event)(Event::UpstreamFailed {
                    upstream: url,
                    error,
                });
            }
            answers[i] = Some(found);
        }
        let mut found = BTreeMap::new();
        for (i, paths) in answers.into_iter().enumerate() {
            let url = self.opts.upstreams[i].url();
            for path in paths.into_iter().flatten() {
                found.entry(path).or_insert_with(|| url.to_owned());
            }
        }
        found
    }

    /// Asks one upstream, batch by batch, which of `wanted` it serves with
    /// a trusted signature; returns those, and why it stopped answering if
    /// it did. Cancellation ends it quietly.
    async fn ask_upstream(
        &self,
        upstream: &dyn Store,
        wanted: &[StorePath],
    ) -> (BTreeSet<StorePath>, Option<String>) {
        let dir = upstream.store_dir();
        let timeout = self.opts.upstream_timeout;
        let mut found = BTreeSet::new();
        for batch in wanted.chunks(UPSTREAM_BATCH) {
            let answer = tokio::select! {
                r = tokio::time::timeout(timeout, upstream.query_path_infos(batch)) => r,
                () = self.cancel.cancelled() => return (found, None),
            };
            let infos = match answer {
                Ok(Ok(infos)) => infos,
                Ok(Err(e)) => return (found, Some(e.to_string())),
                Err(_) => {
                    let why = format!("no answer in {} s", timeout.as_secs_f64());
                    return (found, Some(why));
                }
            };
            for path in batch {
                let Some(info) = infos.get(path) else {
                    continue;
                };
                if info.path == *path && info.check_trust(dir, &self.opts.trusted_keys).is_ok() {
                    found.insert(path.clone());
                }
            }
        }
        (found, None)
    }
}

#[cfg(test)]
mod tests {
    use super::same_store;

    #[test]
    fn same_stores() {
        assert!(same_store("file:///c", "file:///c/"));
        assert!(same_store("file:///c?compression=xz", "file:///c"));
        assert!(same_store(
            "https://cache.example.org/",
            "https://cache.example.org?priority=10"
        ));
        assert!(!same_store("file:///c", "file:///d"));
        assert!(!same_store("http://h/c", "https://h/c"));
        assert!(!same_store("local?root=/a", "local?root=/b"));
        assert!(same_store("not a url", "not a url/"));
    }
}
