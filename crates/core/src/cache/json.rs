//! The reports of the cache operations as JSON objects: what
//! `nixferry cache … --json` prints and the Python bindings return, one
//! rendering for both. Field names are camelCase, as in
//! `nix path-info --json`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{
    CacheStats, ClosureSize, Deleted, GcReport, Pin, RepairReport, SignReport, VerifyReport,
};

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn reasons(list: &[(String, String)], name: &str) -> Vec<Value> {
    list.iter()
        .map(|(what, why)| json!({name: what, "reason": why}))
        .collect()
}

impl VerifyReport {
    /// `{"narinfos", "narFiles", "bytesRead", "clean", "problems": [{"kind",
    /// "path", "key", "message", "reference", "narFile"}]}`; `path`,
    /// `reference` and `narFile` are `null` where they do not apply.
    pub fn to_json(&self) -> String {
        self.json().to_string()
    }

    pub(crate) fn json(&self) -> Value {
        let problems: Vec<_> = self
            .problems
            .iter()
            .map(|p| {
                json!({
                    "kind": p.kind.name(),
                    "path": p.path,
                    "key": p.key,
                    "message": p.message,
                    "reference": p.reference,
                    "narFile": p.nar_file,
                })
            })
            .collect();
        json!({
            "narinfos": self.narinfos,
            "narFiles": self.nar_files,
            "bytesRead": self.bytes_read,
            "clean": self.is_clean(),
            "problems": problems,
        })
    }

    /// [`VerifyReport::to_json`] with what a repair did as `"repair"`:
    /// `{"repaired", "deleted", "unrepaired": [{"path", "reason"}]}`.
    pub fn to_json_with_repair(&self, repair: &RepairReport) -> String {
        let mut v = self.json();
        v["repair"] = json!({
            "repaired": repair.repaired,
            "deleted": repair.deleted,
            "unrepaired": reasons(&repair.unrepaired, "path"),
        });
        v.to_string()
    }
}

impl SignReport {
    /// `{"narinfos", "rewritten", "unchanged", "untrusted": [key],
    /// "failed": [{"key", "reason"}]}`.
    pub fn to_json(&self) -> String {
        json!({
            "narinfos": self.narinfos,
            "rewritten": self.rewritten,
            "unchanged": self.unchanged,
            "untrusted": self.untrusted,
            "failed": reasons(&self.failed, "key"),
        })
        .to_string()
    }
}

impl CacheStats {
    /// `{"paths", "unreadable", "narBytes", "storedBytes", "narDirBytes",
    /// "compressionRatio", "unsigned", "pins"}`.
    pub fn to_json(&self) -> String {
        json!({
            "paths": self.paths,
            "unreadable": self.unreadable,
            "narBytes": self.nar_bytes,
            "storedBytes": self.stored_bytes,
            "narDirBytes": self.nar_dir_bytes,
            "compressionRatio": self.compression_ratio(),
            "unsigned": self.unsigned,
            "pins": self.pins,
        })
        .to_string()
    }
}

impl GcReport {
    /// `{"dryRun", "narinfos", "pins", "pinned", "kept", "keptBytes",
    /// "deletedPaths", "deletedFiles", "freedBytes", "deleted": [{"kind",
    /// "key", "path", "size"}], "failed": [{"key", "reason"}],
    /// "pinnedMissing", "unparsable"}`, with `deleted` the files
    /// [`super::gc()`] reported (sorted here by kind and key).
    pub fn to_json(&self, deleted: &[Deleted]) -> String {
        let mut sorted: Vec<&Deleted> = deleted.iter().collect();
        sorted.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let deleted: Vec<_> = sorted
            .iter()
            .map(|d| json!({"kind": d.kind.name(), "key": d.key, "path": d.path, "size": d.size}))
            .collect();
        json!({
            "dryRun": self.dry_run,
            "narinfos": self.narinfos,
            "pins": self.pins,
            "pinned": self.pinned,
            "kept": self.kept,
            "keptBytes": self.kept_bytes,
            "deletedPaths": self.deleted_paths,
            "deletedFiles": self.deleted_files,
            "freedBytes": self.freed_bytes,
            "deleted": deleted,
            "failed": reasons(&self.failed, "key"),
            "pinnedMissing": self.pinned_missing,
            "unparsable": self.unparsable,
        })
        .to_string()
    }
}

impl Pin {
    /// `{"name", "keep", "generations": [{"generation", "time", "paths",
    /// "kept", and with `sizes` (one per generation) "closurePaths",
    /// "closureNarSize", "closureFileSize", "missingPaths"}]}`; `time` in
    /// Unix seconds.
    pub fn to_json(&self, sizes: Option<&[ClosureSize]>) -> String {
        self.json(sizes).to_string()
    }

    pub(crate) fn json(&self, sizes: Option<&[ClosureSize]>) -> Value {
        let first_kept = self.generations.len() - self.kept().len();
        let generations: Vec<_> = self
            .generations
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let mut v = json!({
                    "generation": g.number,
                    "time": unix_secs(g.time),
                    "paths": g.paths,
                    "kept": i >= first_kept,
                });
                if let Some(s) = sizes.and_then(|s| s.get(i)) {
                    v["closurePaths"] = s.paths.into();
                    v["closureNarSize"] = s.nar_bytes.into();
                    v["closureFileSize"] = s.file_bytes.into();
                    v["missingPaths"] = s.missing.into();
                }
                v
            })
            .collect();
        json!({"name": self.name, "keep": self.keep, "generations": generations})
    }
}

/// Pins with the closure sizes of their generations, as a JSON array of
/// [`Pin::to_json`] objects.
pub fn pins_json(pins: &[(Pin, Vec<ClosureSize>)]) -> String {
    Value::Array(pins.iter().map(|(p, s)| p.json(Some(s))).collect()).to_string()
}
