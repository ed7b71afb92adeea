//! Closures: the paths a set of roots needs, over any [`Store`].
//!
//! - [`compute`] walks the references of the roots breadth-first, asking
//!   the store about all paths of one level in one batched
//!   [`Store::query_path_infos`] (a backend that talks to a network runs
//!   the questions of one batch in parallel itself), and returns a
//!   [`Closure`]: the path infos in topological order with the totals.
//! - [`topo_sort`] orders path infos so that references come before their
//!   referrers, as `nix-store -qR` prints them (docs/formats.md §6.4).
//! - [`missing`] asks a destination, in one batch, which paths it lacks.
//!
//! ```no_run
//! # async fn example(store: &dyn nixferry::store::Store, roots: &[nixferry::store_path::StorePath])
//! # -> Result<(), nixferry::closure::ClosureError> {
//! let closure = nixferry::closure::compute(store, roots).await?;
//! println!("{} paths, {} bytes", closure.len(), closure.nar_size());
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;

use crate::store::{PathInfo, Store, StoreError};
use crate::store_path::StorePath;

/// Errors from computing or ordering a closure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClosureError {
    /// The store failed, or does not have a root
    /// ([`StoreError::NotFound`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A path refers to a path the store does not have: the store is
    /// incomplete (a binary cache missing part of a closure, say).
    #[error("path '{path}', a reference of '{referrer}', is not valid in store '{store}'")]
    MissingReference {
        /// The store URL.
        store: String,
        /// The missing path, in full.
        path: String,
        /// A path that refers to it, in full.
        referrer: String,
    },
    /// The references form a cycle through more than one path, which no
    /// order can satisfy. (A path referring to itself is fine.)
    #[error("the references form a cycle: {}", Cycle(.paths))]
    Cycle {
        /// The paths of one cycle, each referring to the next and the
        /// last to the first.
        paths: Vec<StorePath>,
    },
}

/// Shows a cycle as `a -> b -> a`.
struct Cycle<'a>(&'a [StorePath]);

impl fmt::Display for Cycle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for path in self.0 {
            write!(f, "{path} -> ")?;
        }
        match self.0.first() {
            Some(first) => write!(f, "{first}"),
            None => Ok(()),
        }
    }
}

/// The path infos of a closure, references before referrers, with totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Closure {
    infos: Vec<PathInfo>,
}

impl Closure {
    /// Orders the path infos of a closure (see [`topo_sort`]).
    ///
    /// # Errors
    /// [`ClosureError::Cycle`] as [`topo_sort`].
    pub fn from_infos(infos: impl IntoIterator<Item = PathInfo>) -> Result<Self, ClosureError> {
        Ok(Self {
            infos: topo_sort(infos)?,
        })
    }

    /// The path infos, references before referrers.
    pub fn infos(&self) -> &[PathInfo] {
        &self.infos
    }

    /// The path infos, references before referrers.
    pub fn into_infos(self) -> Vec<PathInfo> {
        self.infos
    }

    /// The paths, references before referrers.
    pub fn paths(&self) -> impl Iterator<Item = &StorePath> {
        self.infos.iter().map(|i| &i.path)
    }

    /// The number of paths.
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether the closure has no paths (only when there are no roots).
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// The closure size: the sum of the NAR sizes (`nix path-info -S`).
    pub fn nar_size(&self) -> u64 {
        self.infos
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.nar_size))
    }

    /// The download size: the sum of the sizes of the (compressed) NAR
    /// files, when the store knows every one (binary caches whose
    /// narinfos give `FileSize`); `None` otherwise.
    pub fn download_size(&self) -> Option<u64> {
        self.infos.iter().try_fold(0u64, |sum, i| {
            Some(sum.saturating_add(i.file.as_ref()?.file_size?))
        })
    }
}

/// The closure of `roots` in `store`: the roots, their references, theirs,
/// and so on, in topological order.
///
/// Breadth-first: each round asks the store, in one
/// [`Store::query_path_infos`] batch, about every path of that level it
/// has not seen yet, so a closure of depth `d` takes `d` questions however
/// many paths it has.
///
/// # Errors
/// [`StoreError::NotFound`] (as [`ClosureError::Store`]) for a root the
/// store does not have; [`ClosureError::MissingReference`] for a
/// reference it does not have; [`ClosureError::Cycle`] as [`topo_sort`];
/// what the store's queries give.
pub async fn compute(store: &dyn Store, roots: &[StorePath]) -> Result<Closure, ClosureError> {
    Closure::from_infos(infos(store, roots).await?.into_values())
}

/// The path infos of the closure of `roots`, as [`compute`] finds them,
/// unordered.
///
/// # Errors
/// As [`compute`], but for cycles.
pub async fn infos(
    store: &dyn Store,
    roots: &[StorePath],
) -> Result<BTreeMap<StorePath, PathInfo>, ClosureError> {
    // A store that knows closures itself (a Nix database) answers at once.
    if let Some(closure) = store.query_closure(roots).await? {
        return Ok(closure);
    }
    let mut found: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
    // Each path asked about, with the first path seen referring to it
    // (`None` for roots), for messages.
    let mut level: BTreeMap<StorePath, Option<StorePath>> =
        roots.iter().map(|r| (r.clone(), None)).collect();
    while !level.is_empty() {
        let batch: Vec<StorePath> = level.keys().cloned().collect();
        let mut answer = store.query_path_infos(&batch).await?;
        let mut next = BTreeMap::new();
        for (path, referrer) in level {
            let Some(info) = answer.remove(&path) else {
                let full = store.store_dir().full(&path);
                return Err(match referrer {
                    None => StoreError::NotFound {
                        store: store.url().to_owned(),
                        path: full,
                    }
                    .into(),
                    Some(referrer) => ClosureError::MissingReference {
                        store: store.url().to_owned(),
                        path: full,
                        referrer: store.store_dir().full(&referrer),
                    },
                });
            };
            for reference in &info.references {
                if !found.contains_key(reference) && reference != &path {
                    next.entry(reference.clone())
                        .or_insert_with(|| Some(path.clone()));
                }
            }
            found.insert(path, info);
        }
        // A path found later in this level may already be in `next`.
        next.retain(|p, _| !found.contains_key(p));
        level = next;
    }
    Ok(found)
}

/// The valid outputs of the derivations in the closure of `roots`, as
/// `nix-copy-closure --include-outputs` adds them, in one batched question.
///
/// # Errors
/// As [`compute`], and what [`Store::query_derivation_outputs`] gives.
pub async fn derivation_outputs(
    store: &dyn Store,
    roots: &[StorePath],
) -> Result<Vec<StorePath>, ClosureError> {
    let closure = compute(store, roots).await?;
    let drvs: Vec<StorePath> = closure
        .paths()
        .filter(|p| p.name().ends_with(".drv"))
        .cloned()
        .collect();
    if drvs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(store.query_derivation_outputs(&drvs).await?)
}

/// Orders path infos so that every path comes after the paths it refers
/// to: the order in which a Nix store can accept them.
///
/// Self-references are allowed, and references to paths not among `infos`
/// are ignored, so a part of a closure (the paths a destination lacks,
/// say) can be sorted too. The order is deterministic: among the paths
/// that could come next, the smallest (by base name) does. A path given
/// twice counts once (the last one given).
///
/// # Errors
/// [`ClosureError::Cycle`] naming the paths of a cycle of references
/// through more than one path.
pub fn topo_sort(infos: impl IntoIterator<Item = PathInfo>) -> Result<Vec<PathInfo>, ClosureError> {
    // Sorted by path, the last one given of each kept: an index is then a
    // rank in path order, which makes the order below deterministic.
    let mut infos: Vec<PathInfo> = infos.into_iter().collect();
    infos.reverse();
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos.dedup_by(|later, first| later.path == first.path);
    let index: HashMap<&StorePath, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| (&info.path, i))
        .collect();
    // Kahn's algorithm over "refers to" edges within the set.
    let mut pending = vec![0usize; infos.len()];
    let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); infos.len()];
    for (i, info) in infos.iter().enumerate() {
        for r in &info.references {
            match index.get(r) {
                Some(&j) if j != i => {
                    pending[i] += 1;
                    referrers[j].push(i);
                }
                _ => {}
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..infos.len())
        .filter(|&i| pending[i] == 0)
        .map(Reverse)
        .collect();
    let mut order: Vec<usize> = Vec::with_capacity(infos.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &referrer in &referrers[i] {
            pending[referrer] -= 1;
            if pending[referrer] == 0 {
                ready.push(Reverse(referrer));
            }
        }
    }
    if order.len() < infos.len() {
        return Err(ClosureError::Cycle {
            paths: find_cycle(&infos, &index, &pending),
        });
    }
    drop(index);
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// One cycle among the paths Kahn's algorithm could not order (those with
/// `pending` references). Each of them refers to another such path (or it
/// would have been ordered), so walking such references from any of them
/// must come back to a path already walked; the walk from there is a cycle.
fn find_cycle(
    infos: &[PathInfo],
    index: &HashMap<&StorePath, usize>,
    pending: &[usize],
) -> Vec<StorePath> {
    let stuck = |i: usize| pending[i] > 0;
    let mut walk: Vec<usize> = Vec::new();
    // Where each path is in `walk`, if it is.
    let mut position: Vec<Option<usize>> = vec![None; infos.len()];
    let mut current = (0..infos.len()).find(|&i| stuck(i));
    while let Some(i) = current {
        if let Some(start) = position[i] {
            return walk[start..]
                .iter()
                .map(|&w| infos[w].path.clone())
                .collect();
        }
        position[i] = Some(walk.len());
        walk.push(i);
        current = infos[i]
            .references
            .iter()
            .filter_map(|r| index.get(r).copied())
            .find(|&j| j != i && stuck(j));
    }
    // Not reached: every stuck path has a stuck reference.
    walk.into_iter().map(|w| infos[w].path.clone()).collect()
}

/// Which of `paths` `dest` lacks, in the order given (without duplicates),
/// from one batched [`Store::query_valid_paths`].
///
/// # Errors
/// What the store's query gives.
pub async fn missing(dest: &dyn Store, paths: &[StorePath]) -> Result<Vec<StorePath>, StoreError> {
    let mut seen = BTreeSet::new();
    let unique: Vec<StorePath> = paths.iter().filter(|p| seen.insert(*p)).cloned().collect();
    let valid = dest.query_valid_paths(&unique).await?;
    Ok(unique.into_iter().filter(|p| !valid.contains(p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::NixHash;

    fn path(name: &str) -> StorePath {
        StorePath::from_digest(&[name.len() as u8; 20], name).unwrap()
    }

    fn info(name: &str, refs: &[&str]) -> PathInfo {
        let mut i = PathInfo::new(path(name), NixHash::sha256([0; 32]), 1);
        i.references = refs.iter().map(|r| path(r)).collect();
        i
    }

    #[test]
    fn cycle_message_names_the_paths() {
        let e = topo_sort([info("a", &["bb"]), info("bb", &["a"])]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("-a -> ") && msg.contains("-bb -> "), "{msg}");
    }
}
