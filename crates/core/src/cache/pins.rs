//! Pins: the closures a fleet runs, recorded in the cache itself so that
//! [`super::gc()`] keeps them, whichever tool or machine runs it.
//!
//! A pin is a name (one per host, say, or per environment) and its
//! generations: each a set of store paths deployed together, numbered
//! from 1, with the time it was recorded. A pin keeps its last `keep`
//! generations (older ones are dropped when a new one is recorded), and
//! the gc keeps the closures of all of them.
//!
//! Each pin is one JSON file, `nixferry/pins/<name>.json`, beside the
//! cache's narinfos (Nix ignores it):
//!
//! ```json
//! {"version":1,"name":"web","keep":3,"generations":[
//!   {"generation":7,"time":1796200000,"paths":["/nix/store/…-system"]}]}
//! ```
//!
//! Recording a generation reads the pin and writes it whole: two tools
//! recording generations of the *same* pin at the same moment may lose
//! one of them (the last write wins); pins of different names never
//! interfere.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::{Cache, CacheFiles};
use crate::narinfo::MAX_NARINFO_LEN;
use crate::store::StoreError;
use crate::store_path::{StoreDir, StorePath};

/// Where pins are kept, relative to the cache's root.
pub const PINS_PREFIX: &str = "nixferry/pins/";

/// Generations a pin keeps unless told otherwise.
pub const DEFAULT_KEEP: usize = 3;

/// Longest pin name.
const MAX_NAME_LEN: usize = 128;

/// Longest pin file read.
const MAX_PIN_FILE_LEN: usize = 16 << 20;

/// Narinfos read at once while walking closures.
const PARALLEL: usize = 16;

/// A named set of deployed generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Its name.
    pub name: String,
    /// How many generations it keeps.
    pub keep: usize,
    /// Its generations, oldest first.
    pub generations: Vec<Generation>,
}

/// One deployed set of paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Its number: one more than the pin's previous generation.
    pub number: u64,
    /// When it was recorded.
    pub time: SystemTime,
    /// Its store paths (full paths).
    pub paths: Vec<String>,
}

/// A pin file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The name is not usable as a pin's name.
    #[error(
        "'{0}' is not a valid pin name (1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.')"
    )]
    BadName(String),
    /// The pin file does not parse.
    #[error("pin file '{key}' is malformed: {reason}")]
    Malformed {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A path to pin is not in the cache.
    #[error("'{0}' is not in the cache: copy it there before pinning it")]
    NotInCache(String),
    /// No such pin.
    #[error("there is no pin named '{0}'")]
    NoSuchPin(String),
    /// No such generation of a pin.
    #[error("pin '{name}' has no generation {number}")]
    NoSuchGeneration {
        /// The pin.
        name: String,
        /// The generation asked for.
        number: u64,
    },
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `name` can name a pin (and so a file).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn key_of(name: &str) -> String {
    format!("{PINS_PREFIX}{name}.json")
}

impl Pin {
    fn file_json(&self) -> Value {
        json!({
            "version": 1,
            "name": self.name,
            "keep": self.keep,
            "generations": self.generations.iter().map(|g| json!({
                "generation": g.number,
                "time": g.time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "paths": g.paths,
            })).collect::<Vec<_>>(),
        })
    }

    fn from_json(key: &str, bytes: &[u8]) -> Result<Self, PinError> {
        let bad = |reason: &str| PinError::Malformed {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if v["version"] != 1 {
            return Err(bad("unknown version (expected 1)"));
        }
        let name = v["name"].as_str().ok_or_else(|| bad("no name"))?;
        let keep = v["keep"]
            .as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .filter(|&k| k > 0)
            .ok_or_else(|| bad("no keep count"))?;
        let mut generations = Vec::new();
        for g in v["generations"]
            .as_array()
            .ok_or_else(|| bad("no generations"))?
        {
            let number = g["generation"]
                .as_u64()
                .ok_or_else(|| bad("a generation without a number"))?;
            let time = g["time"]
                .as_u64()
                .ok_or_else(|| bad("a generation without a time"))?;
            let paths = g["paths"]
                .as_array()
                .ok_or_else(|| bad("a generation without paths"))?
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a path that is not a string"))?;
            generations.push(Generation {
                number,
                time: UNIX_EPOCH + Duration::from_secs(time),
                paths,
            });
        }
        generations.sort_by_key(|g| g.number);
        Ok(Self {
            name: name.to_owned(),
            keep,
            generations,
        })
    }

    /// The store paths of the generations kept, parsed in `dir`: a path
    /// that does not parse is an error, so that a gc never runs on a
    /// partial set of roots.
    pub fn roots(&self, dir: &StoreDir) -> Result<Vec<StorePath>, PinError> {
        let mut out = Vec::new();
        for g in self.kept() {
            for p in &g.paths {
                out.push(dir.parse(p).map_err(|e| PinError::Malformed {
                    key: key_of(&self.name),
                    reason: format!("'{p}': {e}"),
                })?);
            }
        }
        Ok(out)
    }

    /// The generations the gc keeps: the last `keep`.
    pub fn kept(&self) -> &[Generation] {
        let n = self.generations.len();
        &self.generations[n.saturating_sub(self.keep)..]
    }
}

/// Reads one pin: `None` if there is none of that name.
///
/// # Errors
/// [`PinError::BadName`], [`PinError::Malformed`], or the cache's error.
pub async fn read_pin(cache: &Cache, name: &str) -> Result<Option<Pin>, PinError> {
    if !is_valid_name(name) {
        return Err(PinError::BadName(name.to_owned()));
    }
    let key = key_of(name);
    match cache.files().read_small(&key, MAX_PIN_FILE_LEN).await? {
        None => Ok(None),
        Some(bytes) => Pin::from_json(&key, &bytes).map(Some),
    }
}

/// Every pin of the cache, by name.
///
/// # Errors
/// A cache that cannot list its files, or a pin file that is malformed
/// (a gc must not run without knowing all its roots).
pub async fn pins(cache: &Cache) -> Result<Vec<Pin>, PinError> {
    let files = &**cache.files();
    super::require_listing(files)?;
    let mut names: Vec<String> = files
        .list(PINS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|e| {
            e.key
                .strip_prefix(PINS_PREFIX)?
                .strip_suffix(".json")
                .filter(|n| is_valid_name(n))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if let Some(pin) = read_pin(cache, &name).await? {
            out.push(pin);
        }
    }
    Ok(out)
}

/// Records a new generation of pin `name` (creating the pin) holding
/// `paths`, which must all be in the cache; `keep`, if given, changes
/// how many generations the pin keeps. Returns the pin as written.
///
/// # Errors
/// [`PinError::NotInCache`] for a path the cache lacks, or as
/// [`read_pin`].
pub async fn pin(
    cache: &Cache,
    name: &str,
    paths: &[StorePath],
    keep: Option<usize>,
) -> Result<Pin, PinError> {
    let dir = cache.store_dir();
    let files = &**cache.files();
    let mut checks = futures_util::stream::iter(paths)
        .map(|p| async move {
            let key = format!("{}.narinfo", p.hash_part());
            (p, files.read_small(&key, MAX_NARINFO_LEN).await)
        })
        .buffered(PARALLEL);
    while let Some((p, got)) = checks.next().await {
        if got?.is_none() {
            return Err(PinError::NotInCache(dir.full(p)));
        }
    }
    let mut pin = read_pin(cache, name).await?.unwrap_or_else(|| Pin {
        name: name.to_owned(),
        keep: DEFAULT_KEEP,
        generations: Vec::new(),
    });
    if let Some(k) = keep {
        pin.keep = k.max(1);
    }
    let number = pin.generations.last().map_or(1, |g| g.number + 1);
    let mut full: Vec<String> = paths.iter().map(|p| dir.full(p)).collect();
    full.sort();
    full.dedup();
    pin.generations.push(Generation {
        number,
        time: SystemTime::now(),
        paths: full,
    });
    let drop = pin.generations.len().saturating_sub(pin.keep);
    pin.generations.drain(..drop);
    write_pin(files, &pin).await?;
    Ok(pin)
}

async fn write_pin(files: &dyn CacheFiles, pin: &Pin) -> Result<(), StoreError> {
    let mut text = pin.file_json().to_string();
    text.push('\n');
    files.write(&key_of(&pin.name), text.into_bytes()).await
}

/// Removes pin `name` whole, or only its generation `generation`.
///
/// # Errors
/// [`PinError::NoSuchPin`], [`PinError::NoSuchGeneration`], or as
/// [`read_pin`].
pub async fn unpin(cache: &Cache, name: &str, generation: Option<u64>) -> Result<(), PinError> {
    let mut pin = read_pin(cache, name)
        .await?
        .ok_or_else(|| PinError::NoSuchPin(name.to_owned()))?;
    let files = &**cache.files();
    match generation {
        None => files.delete(&key_of(name)).await?,
        Some(number) => {
            let before = pin.generations.len();
            pin.generations.retain(|g| g.number != number);
            if pin.generations.len() == before {
                return Err(PinError::NoSuchGeneration {
                    name: name.to_owned(),
                    number,
                });
            }
            write_pin(files, &pin).await?;
        }
    }
    Ok(())
}

/// Every pin of the cache, each with the closure sizes of its
/// generations (in order).
///
/// # Errors
/// As [`pins`] and [`closure_size`].
pub async fn pins_with_sizes(cache: &Cache) -> Result<Vec<(Pin, Vec<ClosureSize>)>, PinError> {
    let mut out = Vec::new();
    for pin in pins(cache).await? {
        let mut sizes = Vec::new();
        for g in &pin.generations {
            let roots: Vec<StorePath> = g
                .paths
                .iter()
                .filter_map(|p| cache.store_dir().parse(p).ok())
                .collect();
            sizes.push(closure_size(cache, &roots).await?);
        }
        out.push((pin, sizes));
    }
    Ok(out)
}

/// What a closure in the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosureSize {
    /// Paths in it that the cache has.
    pub paths: usize,
    /// Their NAR sizes, summed.
    pub nar_bytes: u64,
    /// Their NAR files' sizes, summed (as the narinfos declare them).
    pub file_bytes: u64,
    /// Paths in it that the cache lacks.
    pub missing: usize,
}

/// The size of the closure of `roots` in the cache, read narinfo by
/// narinfo.
///
/// # Errors
/// The cache's error when a narinfo cannot be read.
pub async fn closure_size(cache: &Cache, roots: &[StorePath]) -> Result<ClosureSize, StoreError> {
    let files = &**cache.files();
    let dir = cache.store_dir();
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<StorePath> = VecDeque::new();
    for r in roots {
        if seen.insert(r.hash_part().to_owned()) {
            queue.push_back(r.clone());
        }
    }
    let mut size = ClosureSize::default();
    while !queue.is_empty() {
        let batch: Vec<_> = queue.drain(..queue.len().min(PARALLEL * 4)).collect();
        let mut reads = futures_util::stream::iter(batch)
            .map(|p| async move {
                let key = format!("{}.narinfo", p.hash_part());
                files.read_small(&key, MAX_NARINFO_LEN).await
            })
            .buffer_unordered(PARALLEL);
        while let Some(got) = reads.next().await {
            let Some(bytes) = got? else {
                size.missing += 1;
                continue;
            };
            let Ok(info) = super::parse_narinfo(&bytes, dir) else {
                size.missing += 1;
                continue;
            };
            size.paths += 1;
            size.nar_bytes += info.nar_size();
            size.file_bytes += info.file_size().unwrap_or(0);
            for r in info.references() {
                if seen.insert(r.hash_part().to_owned()) {
                    queue.push_back(r.clone());
                }
            }
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "host-1.prod", "a_b", "X"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "..", "é", &"x".repeat(129)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn json_round_trip_and_kept_generations() {
        let pin = Pin {
            name: "web".into(),
            keep: 2,
            generations: (1..=3)
                .map(|n| Generation {
                    number: n,
                    time: UNIX_EPOCH + Duration::from_secs(1_000 * n),
                    paths: vec![format!("/nix/store/{}-x", "a".repeat(32))],
                })
                .collect(),
        };
        let bytes = pin.file_json().to_string();
        let back = Pin::from_json("k", bytes.as_bytes()).unwrap();
        assert_eq!(back, pin);
        assert_eq!(
            back.kept().iter().map(|g| g.number).collect::<Vec<_>>(),
            [2, 3]
        );
        for bad in [
            "{}",
            r#"{"version":2,"name":"a","keep":1,"generations":[]}"#,
            r#"{"version":1,"name":"a","keep":0,"generations":[]}"#,
            r#"{"version":1,"name":"a","keep":1,"generations":[{"generation":1,"time":1,"paths":[1]}]}"#,
            "not json",
        ] {
            assert!(
                matches!(
                    Pin::from_json("k", bad.as_bytes()),
                    Err(PinError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }
}
