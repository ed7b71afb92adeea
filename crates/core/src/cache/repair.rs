//! [`repair()`]: what [`super::verify()`] found broken, copied again from
//! a source, or removed.
//!
//! A path is broken when the cache cannot serve it as its narinfo says
//! ([`ProblemKind::breaks_path`]: its NAR file is missing or wrong, or
//! its narinfo does not parse); a path is missing when a narinfo refers
//! to it, or it was asked for, and the cache has no narinfo for it.
//!
//! With a source, each broken path the source has is removed from the
//! cache (narinfo first, then its NAR file, which a copy would otherwise
//! take for the right one, as NAR files are named by their hash) and
//! copied again, with the missing paths the source has, by the copy
//! engine, which checks every NAR against its signed hash on the way.
//! With `delete_broken`, each broken path that is not repaired is
//! removed: narinfo first, then its listing and NAR file, so that the
//! cache never advertises what it cannot serve.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{Cache, Problem, ProblemKind, VerifyReport};
use crate::copy::{copy_closure, CancellationToken, CopyOptions};
use crate::store::{Store, StoreError};
use crate::store_path::StorePath;

/// How to repair.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Where to copy broken and missing paths from.
    pub from: Option<Arc<dyn Store>>,
    /// Remove broken paths that are not repaired.
    pub delete_broken: bool,
    /// How to copy (the trusted keys the source's paths need).
    pub copy: CopyOptions,
}

/// What [`repair()`] did. Paths are full store paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Broken or missing paths copied from the source.
    pub repaired: Vec<String>,
    /// Broken paths removed (and unparsable narinfos, by key).
    pub deleted: Vec<String>,
    /// Broken or missing paths left as they are, with why; a broken path
    /// whose copy failed has had its narinfo removed.
    pub unrepaired: Vec<(String, String)>,
}

/// Repairs what `report` (of [`super::verify()`] on `cache`) found. See
/// the [module docs](self).
///
/// # Errors
/// [`StoreError`] when the source cannot be asked what it has, or a file
/// of the cache cannot be removed; the copy of single paths failing is in
/// the report.
pub async fn repair(
    cache: &Cache,
    report: &VerifyReport,
    opts: &RepairOptions,
) -> Result<RepairReport, StoreError> {
    let files = cache.files();
    let dir = cache.store_dir();
    let mut out = RepairReport::default();
    // Broken paths, with their problems.
    let mut broken: BTreeMap<StorePath, Vec<&Problem>> = BTreeMap::new();
    let mut unparsable = Vec::new();
    let mut missing = BTreeSet::new();
    for p in &report.problems {
        let path = p.path.as_deref().and_then(|s| dir.parse(s).ok());
        match (p.kind, path) {
            (ProblemKind::Unparsable, _) => unparsable.push(p.key.clone()),
            (kind, Some(path)) if kind.breaks_path() => broken.entry(path).or_default().push(p),
            (ProblemKind::MissingPath, Some(path)) => {
                missing.insert(path);
            }
            (ProblemKind::MissingReference, _) => {
                if let Some(r) = p.reference.as_deref().and_then(|s| dir.parse(s).ok()) {
                    missing.insert(r);
                }
            }
            _ => {}
        }
    }

    let mut copied = BTreeSet::new();
    if let Some(src) = &opts.from {
        let wanted: Vec<StorePath> = broken.keys().chain(&missing).cloned().collect();
        let have = src.query_valid_paths(&wanted).await?;
        for path in broken.keys().filter(|p| have.contains(*p)) {
            remove(cache, path, &broken[path], false).await?;
        }
        let roots: Vec<StorePath> = wanted.into_iter().filter(|p| have.contains(p)).collect();
        if !roots.is_empty() {
            let summary = copy_closure(
                Arc::clone(src),
                Arc::clone(cache.store()),
                &roots,
                &opts.copy,
                Arc::new(|_| {}),
                CancellationToken::new(),
            )
            .await
            .map_err(|e| StoreError::Remote {
                store: src.url().to_owned(),
                message: e.to_string(),
            })?;
            let failed: BTreeMap<_, _> = summary
                .failed
                .iter()
                .map(|(p, e)| (p.clone(), e.to_string()))
                .collect();
            for root in &roots {
                match failed.get(root) {
                    Some(why) => out.unrepaired.push((dir.full(root), why.clone())),
                    None => {
                        out.repaired.push(dir.full(root));
                        copied.insert(root.clone());
                    }
                }
            }
        }
        for path in broken.keys().chain(&missing) {
            if !have.contains(path) {
                out.unrepaired
                    .push((dir.full(path), format!("'{}' does not have it", src.url())));
            }
        }
    } else {
        for path in broken.keys().chain(&missing) {
            out.unrepaired
                .push((dir.full(path), "no source to copy it from".to_owned()));
        }
    }

    if opts.delete_broken {
        for (path, problems) in &broken {
            if !copied.contains(path) {
                remove(cache, path, problems, true).await?;
                out.deleted.push(dir.full(path));
            }
        }
        for key in unparsable {
            files.delete(&key).await?;
            out.deleted.push(key);
        }
    }
    let deleted = &out.deleted;
    out.unrepaired.retain(|(p, _)| !deleted.contains(p));
    out.repaired.sort();
    out.deleted.sort();
    out.unrepaired.sort();
    Ok(out)
}

/// Removes a broken path: its narinfo first, then (with `listing`) its
/// listing, then its NAR file if that is wrong.
async fn remove(
    cache: &Cache,
    path: &StorePath,
    problems: &[&Problem],
    listing: bool,
) -> Result<(), StoreError> {
    let files = cache.files();
    files
        .delete(&format!("{}.narinfo", path.hash_part()))
        .await?;
    if listing {
        files.delete(&format!("{}.ls", path.hash_part())).await?;
    }
    for p in problems {
        if let Some(nar) = &p.nar_file {
            if p.kind != ProblemKind::NarMissing {
                files.delete(nar).await?;
            }
        }
    }
    Ok(())
}
