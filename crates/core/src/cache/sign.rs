//! [`sign()`] and [`stats()`]: going over every narinfo of a cache to
//! sign it again (key rotation) or to count.

use futures_util::StreamExt as _;

use super::{Cache, CacheFiles, FileKind};
use crate::narinfo::NarInfo;
use crate::signing::{SecretKey, TrustedKeys};
use crate::store::StoreError;
use crate::store_path::StoreDir;

/// Narinfos read (and written) at once.
const PARALLEL: usize = 16;

/// How to sign a cache's narinfos.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// The keys to add signatures by (replacing one by a key of the same
    /// name).
    pub keys: Vec<SecretKey>,
    /// Key names whose signatures are removed.
    pub remove_signatures_by: Vec<String>,
    /// If set, only narinfos with a valid signature by one of these keys
    /// (or a content address that verifies) are signed; the others are
    /// left as they are and counted in [`SignReport::untrusted`].
    pub require_trusted: Option<TrustedKeys>,
}

/// What [`sign()`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignReport {
    /// Narinfos in the cache.
    pub narinfos: usize,
    /// Narinfos rewritten.
    pub rewritten: usize,
    /// Narinfos that had the signatures asked for already.
    pub unchanged: usize,
    /// Narinfos left alone for want of a trusted signature, by key.
    pub untrusted: Vec<String>,
    /// Narinfos that could not be read, parsed or written, by key, with
    /// why.
    pub failed: Vec<(String, String)>,
}

/// The keys of every narinfo of a cache that can list its files.
async fn narinfo_keys(files: &dyn CacheFiles) -> Result<Vec<String>, StoreError> {
    super::require_listing(files)?;
    let mut keys: Vec<String> = files
        .list("")
        .await?
        .into_iter()
        .map(|e| e.key)
        .filter(|k| matches!(FileKind::of(k), FileKind::Narinfo(_)))
        .collect();
    keys.sort();
    Ok(keys)
}

/// Reads and parses the narinfo `key`: `None` if it is gone; why it
/// cannot be read or parsed, as text.
async fn read(
    files: &dyn CacheFiles,
    dir: &StoreDir,
    key: &str,
) -> Result<Option<NarInfo>, String> {
    super::read_narinfo(files, dir, key)
        .await
        .map_err(|e| e.to_string())?
        .transpose()
}

/// Adds signatures by `opts.keys` to every narinfo of the cache and
/// removes those by `opts.remove_signatures_by`, rewriting each narinfo
/// that changes at once (a reader sees the old one or the new one).
///
/// # Errors
/// [`StoreError`] if the cache cannot be listed (`http(s)://`) or
/// listing it fails; single narinfos that fail are in the report.
pub async fn sign(cache: &Cache, opts: &SignOptions) -> Result<SignReport, StoreError> {
    sign_with_progress(cache, opts, &|_, _| {}).await
}

/// [`sign`], calling `progress(done, total)` after each narinfo.
///
/// # Errors
/// As [`sign`].
pub async fn sign_with_progress(
    cache: &Cache,
    opts: &SignOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SignReport, StoreError> {
    let files = &**cache.files();
    let dir = cache.store_dir();
    let keys = narinfo_keys(files).await?;
    let mut report = SignReport {
        narinfos: keys.len(),
        ..SignReport::default()
    };
    let mut results = futures_util::stream::iter(keys)
        .map(|key| async move {
            let result = sign_one(files, dir, &key, opts).await;
            (key, result)
        })
        .buffer_unordered(PARALLEL);
    let mut done = 0;
    while let Some((key, result)) = results.next().await {
        done += 1;
        progress(done, report.narinfos);
        match result {
            Ok(Some(true)) => report.rewritten += 1,
            Ok(Some(false)) => report.unchanged += 1,
            Ok(None) => report.untrusted.push(key),
            Err(e) => report.failed.push((key, e)),
        }
    }
    report.untrusted.sort();
    report.failed.sort();
    Ok(report)
}

/// Signs one narinfo: whether it was rewritten, `None` if it is not
/// trusted.
async fn sign_one(
    files: &dyn CacheFiles,
    dir: &StoreDir,
    key: &str,
    opts: &SignOptions,
) -> Result<Option<bool>, String> {
    let Some(mut info) = read(files, dir, key).await? else {
        return Ok(Some(false));
    };
    if let Some(trusted) = &opts.require_trusted {
        if !info.verify_ca() && info.verify(trusted).is_err() {
            return Ok(None);
        }
    }
    let before = info.as_str().to_owned();
    for name in &opts.remove_signatures_by {
        info.remove_signatures_by(name);
    }
    for k in &opts.keys {
        info.sign(k);
    }
    if info.as_str() == before {
        return Ok(Some(false));
    }
    files
        .write(key, info.as_str().as_bytes().to_vec())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(true))
}

/// What a cache holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Paths (narinfos that parse).
    pub paths: usize,
    /// Narinfos that cannot be read or parsed.
    pub unreadable: usize,
    /// The sum of their `NarSize`s.
    pub nar_bytes: u64,
    /// The sum of their NAR files' sizes (`FileSize`, else the file's
    /// size as listed), each file counted once.
    pub stored_bytes: u64,
    /// All files under `nar/`, named by a narinfo or not.
    pub nar_dir_bytes: u64,
    /// Paths without any signature.
    pub unsigned: usize,
    /// Pins (files under `nixferry/pins/`).
    pub pins: usize,
}

impl CacheStats {
    /// Stored bytes per NAR byte (0 for an empty cache).
    pub fn compression_ratio(&self) -> f64 {
        if self.nar_bytes == 0 {
            0.0
        } else {
            self.stored_bytes as f64 / self.nar_bytes as f64
        }
    }
}

/// Counts what a cache that can list its files holds.
///
/// # Errors
/// [`StoreError`] if the cache cannot be listed or listing it fails.
pub async fn stats(cache: &Cache) -> Result<CacheStats, StoreError> {
    stats_with_progress(cache, &|_, _| {}).await
}

/// [`stats`], calling `progress(read, total)` after each narinfo.
///
/// # Errors
/// As [`stats`].
pub async fn stats_with_progress(
    cache: &Cache,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<CacheStats, StoreError> {
    let files = &**cache.files();
    let dir = cache.store_dir();
    super::require_listing(files)?;
    let listing = files.list("").await?;
    let sizes: std::collections::HashMap<&str, u64> = listing
        .iter()
        .filter(|e| e.key.starts_with("nar/"))
        .map(|e| (e.key.as_str(), e.size))
        .collect();
    let mut stats = CacheStats {
        nar_dir_bytes: sizes.values().sum(),
        pins: listing
            .iter()
            .filter(|e| {
                e.key
                    .strip_prefix(super::pins::PINS_PREFIX)
                    .is_some_and(|n| n.ends_with(".json"))
            })
            .count(),
        ..CacheStats::default()
    };
    let keys: Vec<&str> = listing
        .iter()
        .map(|e| e.key.as_str())
        .filter(|k| matches!(FileKind::of(k), FileKind::Narinfo(_)))
        .collect();
    let total = keys.len();
    let mut infos = futures_util::stream::iter(keys)
        .map(|key| read(files, dir, key))
        .buffer_unordered(PARALLEL);
    let mut counted = std::collections::HashSet::new();
    let mut done = 0;
    while let Some(info) = infos.next().await {
        done += 1;
        progress(done, total);
        let info = match info {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(_) => {
                stats.unreadable += 1;
                continue;
            }
        };
        stats.paths += 1;
        stats.nar_bytes += info.nar_size();
        if info.signatures().next().is_none() {
            stats.unsigned += 1;
        }
        if counted.insert(info.url().to_owned()) {
            let size = info.file_size().or_else(|| sizes.get(info.url()).copied());
            stats.stored_bytes += size.unwrap_or_default();
        }
    }
    Ok(stats)
}
