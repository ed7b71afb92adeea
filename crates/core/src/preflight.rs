//! Checks before a copy: for every destination, at once and before a
//! single byte moves, whether the copy would go through.
//!
//! [`check`] computes the closure once on the source, then asks every
//! destination in parallel, each within a time limit, so that one that
//! hangs or fails never hides the others:
//!
//! | destination | what is checked |
//! |---|---|
//! | every store | which paths of the closure it has; the NAR size of those it lacks |
//! | `ssh://` | ssh logs in (the refusals of [`StoreError::Login`]); the remote Nix's version; the free space of the filesystem of its store directory (`remote-store` `DIR` or `local?root=DIR`: `DIR/nix/store`), which must hold the NARs of the missing paths; with [`Options::substitute`], its `substituters` and `trusted-public-keys` (from `nix show-config`), which paths its substituters have with a signature it trusts (it would substitute them) and which it would receive from us, and whether it trusts the signatures those carry |
//! | `file://` | the directory (or, for a new cache, its nearest existing parent) is writable, `nix-cache-info` parses, and its filesystem has room for the NARs of the missing paths (an upper bound: NAR files are compressed) |
//! | `http(s)://`, `s3://` | `nix-cache-info` can be read and parses; the cache can be written with the credentials at hand (netrc, token, AWS credentials): `nix-cache-info` is written back unchanged, so that nothing the cache holds changes (a cache without one gets the one its first upload would write, as Nix does) |
//! | binary caches | which keys will sign the paths; a warning when none will and the cache does not sign itself |
//! | `local` | the free space of the store's filesystem |
//!
//! Each check ends [`Status::Ok`], [`Status::Warn`] (the copy would go
//! through, but something deserves a look) or [`Status::Fail`] (the copy
//! would fail, or the destination would not do what was asked). With
//! substitution, a path that the destination's substituters have but that
//! carries no signature the destination trusts fails the check: the
//! destination would not substitute it, and would fall back to receiving
//! it from us (or, for a path it needed by itself, to building it). Paths
//! it would receive from us without a signature it trusts only warn: Nix
//! takes them over `nix-store --serve --write` from a trusted login.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::closure::ClosureError;
use crate::human_bytes;
use crate::signing::SecretKey;
use crate::store::{self, PathInfo, Scheme, Store, StoreError, StoreUrl};
use crate::store_path::StorePath;

/// What a check of a remote binary cache's access found
/// (`HttpStore::check_access`, `S3Store::check_access`).
#[derive(Debug)]
pub struct CacheAccess {
    /// Whether the cache has a `nix-cache-info`.
    pub has_cache_info: bool,
    /// How writing `nix-cache-info` back went.
    pub write: Result<(), StoreError>,
}

/// How [`check`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Let destinations substitute what they can (`copy -s`): ask them
    /// for their substituters and trusted keys, and those substituters
    /// for the missing paths.
    pub substitute: bool,
    /// The keys the copy will sign with.
    pub secret_keys: Vec<SecretKey>,
    /// How long one destination may take.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            substitute: false,
            secret_keys: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// The copy would go through, but something deserves a look.
    Warn,
    /// The copy would fail, or the destination would not do what was
    /// asked.
    Fail,
}

impl Status {
    /// `ok`, `warn`, `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of a destination's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked: `login`, `nix`, `cache-info`, `write`, `paths`,
    /// `substitute`, `trust`, `space`, `keys`, `time`.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, for people.
    pub message: String,
}

/// Paths and the bytes of their NARs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// How many paths.
    pub paths: usize,
    /// The sum of their NAR sizes.
    pub nar_bytes: u64,
}

impl Amount {
    fn of<'a>(infos: impl IntoIterator<Item = &'a PathInfo>) -> Self {
        infos.into_iter().fold(Self::default(), |a, i| Self {
            paths: a.paths + 1,
            nar_bytes: a.nar_bytes + i.nar_size,
        })
    }

    fn json(self) -> Value {
        json!({"paths": self.paths, "narBytes": self.nar_bytes})
    }
}

/// Free space where a destination keeps what it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// The directory measured (the nearest existing one).
    pub dir: String,
    /// Bytes available to the user writing.
    pub free: u64,
    /// Bytes needed: the NAR sizes of the missing paths.
    pub needed: u64,
}

/// What was found about one destination.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The destination's URL.
    pub url: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// The closure to copy.
    pub closure: Amount,
    /// The paths of the closure the destination lacks, if it could be
    /// asked.
    pub missing: Option<Amount>,
    /// The remote Nix's version (`nix-store --version`), for `ssh://`.
    pub nix_version: Option<String>,
    /// Free space against what is needed, where it could be measured.
    pub space: Option<Space>,
    /// The destination's substituters, when asked.
    pub substituters: Vec<String>,
    /// What it would substitute, when asked.
    pub substitute: Option<Amount>,
    /// What it would receive from us, when substitution was asked about.
    pub receive: Option<Amount>,
    /// How many of the paths it would receive carry no signature it
    /// trusts, when its trusted keys are known.
    pub untrusted: Option<usize>,
    /// The names of the keys that will sign what it receives (ours, and
    /// the cache's own `secret-key`).
    pub signing_keys: Vec<String>,
}

impl Report {
    fn new(url: &str, closure: Amount) -> Self {
        Self {
            url: url.to_owned(),
            closure,
            ..Self::default()
        }
    }

    fn push(&mut self, name: &'static str, status: Status, message: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            message: message.into(),
        });
    }

    /// The worst status of its checks.
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// Whether the copy to this destination would go through as asked.
    pub fn ok(&self) -> bool {
        self.status() != Status::Fail
    }

    /// The report as one JSON object: `{"to", "status", "ok", "checks":
    /// [{"check", "status", "message"}], "closure": {"paths",
    /// "narBytes"}, "missing", "nixVersion", "space": {"dir", "freeBytes",
    /// "neededBytes"}, "substituters", "substitute", "receive",
    /// "untrusted", "signingKeys"}`; what was not found out is `null`.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| json!({"check": c.name, "status": c.status.name(), "message": c.message}))
            .collect();
        json!({
            "to": self.url,
            "status": self.status().name(),
            "ok": self.ok(),
            "checks": checks,
            "closure": self.closure.json(),
            "missing": self.missing.map(Amount::json),
            "nixVersion": self.nix_version,
            "space": self.space.as_ref().map(|s| json!({
                "dir": s.dir, "freeBytes": s.free, "neededBytes": s.needed,
            })),
            "substituters": self.substituters,
            "substitute": self.substitute.map(Amount::json),
            "receive": self.receive.map(Amount::json),
            "untrusted": self.untrusted,
            "signingKeys": self.signing_keys,
        })
    }
}

/// Checks every destination in `dests` for a copy of the closure of
/// `roots` from `src`, all at once, each within [`Options::timeout`]. The
/// reports come in the order of `dests`; a destination that fails is
/// reported, never an error.
///
/// # Errors
/// Only when the closure cannot be computed on the source.
pub async fn check(
    src: &dyn Store,
    roots: &[StorePath],
    dests: &[StoreUrl],
    opts: &Options,
) -> Result<Vec<Report>, ClosureError> {
    let closure = crate::closure::compute(src, roots).await?;
    let infos: Arc<Vec<PathInfo>> = Arc::new(closure.into_infos());
    let tasks: Vec<_> = dests
        .iter()
        .map(|url| {
            let url = url.clone();
            let infos = Arc::clone(&infos);
            let opts = opts.clone();
            let src_dir = src.store_dir().clone();
            tokio::spawn(async move {
                let mut report = Report::new(url.as_str(), Amount::of(infos.iter()));
                let limit = opts.timeout;
                let run = check_one(&url, &infos, &src_dir, &opts, &mut report);
                if tokio::time::timeout(limit, run).await.is_err() {
                    report.push(
                        "time",
                        Status::Fail,
                        format!("no answer within {} s", limit.as_secs_f64()),
                    );
                }
                report
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(tasks.len());
    for (task, url) in tasks.into_iter().zip(dests) {
        reports.push(task.await.unwrap_or_else(|e| {
            let mut r = Report::new(url.as_str(), Amount::of(infos.iter()));
            r.push(
                "time",
                Status::Fail,
                StoreError::task_died("the check", e).to_string(),
            );
            r
        }));
    }
    Ok(reports)
}

/// The checks of one destination, written into `report` as they go, so
/// that what was found before a time-out stays.
#[cfg_attr(not(feature = "ssh"), allow(unused_variables))]
async fn check_one(
    url: &StoreUrl,
    infos: &[PathInfo],
    src_dir: &crate::store_path::StoreDir,
    opts: &Options,
    report: &mut Report,
) {
    match url.scheme() {
        #[cfg(feature = "ssh")]
        Scheme::Ssh => ssh::check(url, infos, src_dir, opts, report).await,
        Scheme::File => file_cache(url, infos, opts, report).await,
        #[cfg(feature = "http")]
        Scheme::Http | Scheme::Https => match store::http::HttpStore::open(url) {
            Ok(s) => {
                let access = s.check_access().await;
                remote_cache(&s, access, infos, opts, report).await;
            }
            Err(e) => report.push("login", Status::Fail, e.to_string()),
        },
        #[cfg(feature = "s3")]
        Scheme::S3 => match store::s3::S3Store::open(url) {
            Ok(s) => {
                let access = s.check_access().await;
                remote_cache(&s, access, infos, opts, report).await;
            }
            Err(e) => report.push("login", Status::Fail, e.to_string()),
        },
        #[cfg(feature = "local")]
        Scheme::Local => local(url, infos, report).await,
        #[allow(unreachable_patterns)]
        _ => match store::open_url(url) {
            Ok(store) => {
                missing(&*store, infos, report).await;
            }
            Err(e) => report.push("login", Status::Fail, e.to_string()),
        },
    }
}

/// Asks `store` which paths it lacks, and reports it: `None` (and a
/// failed check) if it could not be asked.
async fn missing<'i>(
    store: &dyn Store,
    infos: &'i [PathInfo],
    report: &mut Report,
) -> Option<Vec<&'i PathInfo>> {
    let paths: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    match store.query_valid_paths(&paths).await {
        Ok(valid) => {
            let lacking: Vec<&PathInfo> =
                infos.iter().filter(|i| !valid.contains(&i.path)).collect();
            let amount = Amount::of(lacking.iter().copied());
            report.missing = Some(amount);
            let has = infos.len() - lacking.len();
            let message = if lacking.is_empty() {
                format!("has all {} paths: nothing to copy", infos.len())
            } else {
                format!(
                    "has {has} of {} paths; {} missing ({} of NAR)",
                    infos.len(),
                    lacking.len(),
                    human_bytes(amount.nar_bytes)
                )
            };
            report.push("paths", Status::Ok, message);
            Some(lacking)
        }
        Err(e) => {
            report.push(
                "paths",
                Status::Fail,
                format!("cannot ask which paths it has: {}", said(&e, store.url())),
            );
            None
        }
    }
}

/// An error for a destination's report, which names the destination
/// already: without the store URL the error starts with.
fn said(e: &StoreError, url: &str) -> String {
    let text = e.to_string();
    text.strip_prefix(url)
        .and_then(|t| t.strip_prefix(": "))
        .map_or_else(|| text.clone(), str::to_owned)
}

/// Compares free space with what the missing paths need.
fn space(report: &mut Report, dir: &Path, free: u64, needed: u64, what: &str) {
    let dir_text = dir.display().to_string();
    report.space = Some(Space {
        dir: dir_text.clone(),
        free,
        needed,
    });
    if needed > free {
        report.push(
            "space",
            Status::Fail,
            format!(
                "not enough space: needs {} ({what}), only {} free on {dir_text}",
                human_bytes(needed),
                human_bytes(free)
            ),
        );
    } else {
        report.push(
            "space",
            Status::Ok,
            format!(
                "needs {} ({what}), {} free on {dir_text}",
                human_bytes(needed),
                human_bytes(free)
            ),
        );
    }
}

/// The signing-keys check of a binary cache: which keys will sign, and a
/// warning when none will and the paths carry no signature either.
fn keys(report: &mut Report, cache_signs: bool, opts: &Options, lacking: &[&PathInfo]) {
    report.signing_keys = opts
        .secret_keys
        .iter()
        .map(|k| k.name().to_owned())
        .collect();
    let mut names = report.signing_keys.clone();
    if cache_signs {
        names.push("the cache's secret-key".to_owned());
    }
    if !names.is_empty() {
        report.push(
            "keys",
            Status::Ok,
            format!("signed with {}", names.join(", ")),
        );
        return;
    }
    // A content-addressed path needs no signature: its address vouches
    // for it.
    let unsigned = lacking
        .iter()
        .filter(|i| i.signatures.is_empty() && i.ca.is_none())
        .count();
    if unsigned == 0 {
        report.push(
            "keys",
            Status::Ok,
            "no key of ours signs; the paths keep the signatures they carry",
        );
    } else {
        report.push(
            "keys",
            Status::Warn,
            format!(
                "no key signs (no --secret-key-file or secret-key-files, and the cache has no \
                 secret-key), and {unsigned} of the paths it lacks carry no signature nor \
                 content address: substituters that check signatures will not take them"
            ),
        );
    }
}

/// A `file://` cache.
async fn file_cache(url: &StoreUrl, infos: &[PathInfo], opts: &Options, report: &mut Report) {
    let store = match store::file::FileStore::open(url) {
        Ok(s) => s,
        Err(e) => {
            report.push("cache-info", Status::Fail, e.to_string());
            return;
        }
    };
    let root = store.root().to_owned();
    let exists = root.is_dir();
    report.push(
        "cache-info",
        Status::Ok,
        if !exists {
            "no cache there yet: the copy creates it".to_owned()
        } else if root.join("nix-cache-info").is_file() {
            "nix-cache-info read".to_owned()
        } else {
            "no nix-cache-info: the copy writes one".to_owned()
        },
    );
    let probe_root = root.clone();
    let writable = tokio::task::spawn_blocking(move || probe_write(&probe_root)).await;
    let dir = match writable {
        Ok(Ok(dir)) => {
            report.push(
                "write",
                Status::Ok,
                format!("{} is writable", dir.display()),
            );
            dir
        }
        Ok(Err((dir, e))) => {
            report.push(
                "write",
                Status::Fail,
                format!("cannot write in {}: {e}", dir.display()),
            );
            dir
        }
        Err(e) => {
            report.push("write", Status::Fail, e.to_string());
            return;
        }
    };
    let Some(lacking) = missing(&store, infos, report).await else {
        return;
    };
    local_space(
        report,
        &dir,
        &lacking,
        "the NAR sizes of the missing paths, an upper bound: files are compressed",
    );
    keys(report, store.capabilities().signs, opts, &lacking);
}

/// Creates and removes a temporary file in `root`, or in its nearest
/// existing parent for a cache not made yet; returns the directory
/// written in, with the error if it could not be.
fn probe_write(root: &Path) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let dir = nearest_existing(root);
    tempfile::Builder::new()
        .prefix(".nixferry-check-")
        .tempfile_in(&dir)
        .map(|_| dir.clone())
        .map_err(|e| (dir, e))
}

/// The space check of a store on this machine: the free space of the
/// filesystem `dir` is on against the NAR bytes of `lacking` (`what` says
/// what those bytes are).
fn local_space(report: &mut Report, dir: &Path, lacking: &[&PathInfo], what: &str) {
    match free_space(dir) {
        Ok(free) => space(
            report,
            dir,
            free,
            Amount::of(lacking.iter().copied()).nar_bytes,
            what,
        ),
        Err(e) => report.push(
            "space",
            Status::Warn,
            format!("cannot tell the free space of {}: {e}", dir.display()),
        ),
    }
}

/// `dir`, or its nearest ancestor that exists.
fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// The bytes available to this user on the filesystem of `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// An `http(s)://` or `s3://` cache, and what
/// `check_access` found of it.
#[cfg(any(feature = "http", feature = "s3"))]
async fn remote_cache(
    store: &dyn Store,
    access: Result<CacheAccess, StoreError>,
    infos: &[PathInfo],
    opts: &Options,
    report: &mut Report,
) {
    match access {
        Ok(access) => {
            report.push(
                "cache-info",
                Status::Ok,
                if access.has_cache_info {
                    "nix-cache-info read"
                } else {
                    "no nix-cache-info: the copy writes one"
                },
            );
            match access.write {
                Ok(()) if access.has_cache_info => report.push(
                    "write",
                    Status::Ok,
                    "writable (nix-cache-info written back unchanged)",
                ),
                Ok(()) => report.push(
                    "write",
                    Status::Ok,
                    "writable (nix-cache-info written, as the copy would first)",
                ),
                Err(e) => report.push("write", Status::Fail, refusal(store, "write access", &e)),
            }
        }
        Err(e) => {
            report.push(
                "cache-info",
                Status::Fail,
                refusal(store, "reading nix-cache-info", &e),
            );
            return;
        }
    }
    let Some(lacking) = missing(store, infos, report).await else {
        return;
    };
    keys(report, store.capabilities().signs, opts, &lacking);
}

/// What to look at when a cache refuses the credentials.
#[cfg(any(feature = "http", feature = "s3"))]
fn credentials(store: &dyn Store) -> &'static str {
    if store.url().starts_with("s3://") {
        "check the AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile"
    } else {
        "check the credentials: the netrc file (netrc-file) or NIXFERRY_HTTP_TOKEN"
    }
}

/// Why a cache cannot be written (or read), with what to do for a login
/// problem.
#[cfg(any(feature = "http", feature = "s3"))]
fn refusal(store: &dyn Store, what: &str, e: &StoreError) -> String {
    match e {
        StoreError::Login { .. } => format!(
            "{what} refused: {} ({})",
            said(e, store.url()),
            credentials(store)
        ),
        _ => format!("{what} failed: {}", said(e, store.url())),
    }
}

/// The local Nix store (`local`, `local?root=…`).
#[cfg(feature = "local")]
async fn local(url: &StoreUrl, infos: &[PathInfo], report: &mut Report) {
    let store = match store::local::LocalStore::open(url) {
        Ok(s) => s,
        Err(e) => {
            report.push("login", Status::Fail, e.to_string());
            return;
        }
    };
    let Some(lacking) = missing(&store, infos, report).await else {
        return;
    };
    let dir = nearest_existing(store.real_store_dir());
    local_space(report, &dir, &lacking, "the NAR sizes of the missing paths");
}

#[cfg(feature = "ssh")]
mod ssh {
    //! `ssh://` destinations.

    use std::collections::BTreeMap;

    use super::*;
    use crate::signing::{PublicKey, TrustedKeys};
    use crate::store::serve::ServeStore;

    /// Signs `info` with `keys` as the copy would, for trust checks.
    fn signed(info: &PathInfo, dir: &crate::store_path::StoreDir, keys: &[SecretKey]) -> PathInfo {
        let mut info = info.clone();
        for key in keys {
            info.signatures
                .push(key.sign(info.fingerprint(dir).as_bytes()).to_string());
        }
        info
    }

    /// What a remote Nix says of itself, from the script [`script`]
    /// runs: sections `@@NAME` … `@@end STATUS`.
    pub(super) fn sections(output: &str) -> BTreeMap<String, (String, i32)> {
        let mut out = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        for line in output.lines() {
            if let Some(rest) = line.strip_prefix("@@end ") {
                if let Some((name, text)) = current.take() {
                    out.insert(name, (text, rest.trim().parse().unwrap_or(-1)));
                }
            } else if let Some(name) = line.strip_prefix("@@") {
                current = Some((name.trim().to_owned(), String::new()));
            } else if let Some((_, text)) = &mut current {
                text.push_str(line);
                text.push('\n');
            }
        }
        out
    }

    /// The space `df -Pk` reports available, in bytes: the field before the
    /// capacity (`NN%`) of its last line.
    pub(super) fn parse_df(text: &str) -> Option<u64> {
        let line = text.lines().rfind(|l| !l.trim().is_empty())?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let pct = fields
            .iter()
            .rposition(|f| f.ends_with('%') && f[..f.len() - 1].parse::<u32>().is_ok())?;
        let kib: u64 = fields.get(pct.checked_sub(1)?)?.parse().ok()?;
        kib.checked_mul(1024)
    }

    /// The list value of a setting in `nix show-config --json`.
    pub(super) fn config_list(config: &Value, name: &str) -> Vec<String> {
        match &config[name]["value"] {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
                .collect(),
            Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// The directory on the remote machine whose filesystem holds the
    /// store `remote-store` names: `DIR/nix/store` for a chroot store
    /// (`DIR`, `local?root=DIR`), else `/nix/store`.
    pub(super) fn remote_store_dir(remote_store: Option<&str>) -> String {
        let Some(store) = remote_store else {
            return "/nix/store".to_owned();
        };
        let (base, query) = store.split_once('?').unwrap_or((store, ""));
        let root = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("root="))
            .filter(|r| r.starts_with('/'))
            .or_else(|| base.starts_with('/').then_some(base));
        match root {
            Some(root) => format!("{}/nix/store", root.trim_end_matches('/')),
            None => "/nix/store".to_owned(),
        }
    }

    /// The `nix` next to the remote `nix-store` (`remote-program`).
    fn nix_program(program: &str) -> String {
        let (first, rest) = program.split_once(' ').unwrap_or((program, ""));
        let nix = match first.strip_suffix("nix-store") {
            Some(prefix) => format!("{prefix}nix"),
            None => "nix".to_owned(),
        };
        format!("{nix} {rest}").trim_end().to_owned()
    }

    /// The script run on the remote machine: the Nix version, the free
    /// space of the store's filesystem, and with `config` Nix's
    /// configuration, each in a section of its own.
    pub(super) fn script(program: &str, store_dir: &str, config: bool) -> String {
        let dir = format!("'{}'", store_dir.replace('\'', r"'\''"));
        // Each section ends on a line of its own, whatever its command
        // printed last.
        let mut s = format!(
            "echo @@version; {program} --version 2>&1; s=$?; echo; echo \"@@end $s\"\n\
             d={dir}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done\n\
             echo \"@@df $d\"; df -Pk \"$d\" 2>&1; s=$?; echo; echo \"@@end $s\"\n"
        );
        if config {
            s.push_str(&format!(
                "echo @@config; {} --extra-experimental-features nix-command show-config --json \
                 2>&1; s=$?; echo; echo \"@@end $s\"\n",
                nix_program(program)
            ));
        }
        s.push_str("exit 0\n");
        s
    }

    pub(super) async fn check(
        url: &StoreUrl,
        infos: &[PathInfo],
        src_dir: &crate::store_path::StoreDir,
        opts: &Options,
        report: &mut Report,
    ) {
        let store = match ServeStore::open(url) {
            Ok(s) => s,
            Err(e) => {
                report.push("login", Status::Fail, e.to_string());
                return;
            }
        };
        let program = store.remote_program().unwrap_or("nix-store").to_owned();
        let store_dir = remote_store_dir(store.remote_store());
        let output = match store
            .run_script(&script(&program, &store_dir, opts.substitute))
            .await
        {
            Ok(out) => out,
            Err(e) => {
                report.push("login", Status::Fail, said(&e, url.as_str()));
                return;
            }
        };
        report.push("login", Status::Ok, "logged in");
        let found = sections(&output);
        match found.get("version") {
            Some((text, 0)) => {
                // Nix may warn before it answers.
                let version = text
                    .lines()
                    .rfind(|l| l.contains("(Nix)"))
                    .or_else(|| text.lines().rfind(|l| !l.trim().is_empty()))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                report.push("nix", Status::Ok, version.clone());
                report.nix_version = Some(version);
            }
            Some((text, _)) => report.push(
                "nix",
                Status::Fail,
                format!("'{program} --version' failed: {}", text.trim()),
            ),
            None => report.push("nix", Status::Fail, "the remote shell said nothing of Nix"),
        }
        let Some(lacking) = missing(&store, infos, report).await else {
            store.close().await;
            return;
        };
        store.close().await;
        let needed = Amount::of(lacking.iter().copied()).nar_bytes;
        let df = found.iter().find(|(name, _)| name.starts_with("df "));
        match df {
            Some((name, (text, 0))) => match parse_df(text) {
                Some(free) => space(
                    report,
                    Path::new(name.trim_start_matches("df ").trim()),
                    free,
                    needed,
                    "the NAR sizes of the missing paths",
                ),
                None => report.push(
                    "space",
                    Status::Warn,
                    format!("cannot read what df said: {}", text.trim()),
                ),
            },
            Some((_, (text, _))) => report.push(
                "space",
                Status::Warn,
                format!("cannot tell the free space of {store_dir}: {}", text.trim()),
            ),
            None => report.push(
                "space",
                Status::Warn,
                format!("cannot tell the free space of {store_dir}"),
            ),
        }
        if opts.substitute {
            substitution(&found, &lacking, src_dir, opts, report).await;
        }
    }

    /// What the destination would substitute and what it would receive,
    /// and whether it trusts the signatures of both.
    async fn substitution(
        found: &BTreeMap<String, (String, i32)>,
        lacking: &[&PathInfo],
        src_dir: &crate::store_path::StoreDir,
        opts: &Options,
        report: &mut Report,
    ) {
        let config = match found.get("config") {
            Some((text, 0)) => text
                .lines()
                .find(|l| l.trim_start().starts_with('{'))
                .and_then(|l| serde_json::from_str::<Value>(l).ok()),
            _ => None,
        };
        let Some(config) = config else {
            let said = found.get("config").map(|(t, _)| t.trim()).unwrap_or("");
            report.push(
                "substitute",
                Status::Fail,
                format!("cannot read the remote Nix's configuration (nix show-config): {said}"),
            );
            return;
        };
        let substituters = config_list(&config, "substituters");
        let key_names = config_list(&config, "trusted-public-keys");
        let require_sigs = config["require-sigs"]["value"].as_bool().unwrap_or(true);
        let trusted: TrustedKeys = key_names
            .iter()
            .filter_map(|k| PublicKey::parse(k).ok())
            .collect();
        report.substituters.clone_from(&substituters);
        let names: Vec<&str> = trusted.iter().map(PublicKey::name).collect();
        let trusts = |info: &PathInfo| !require_sigs || info.check_trust(src_dir, &trusted).is_ok();

        // Each missing path: the first substituter that has it with a
        // signature the destination trusts, else none.
        let paths: Vec<StorePath> = lacking.iter().map(|i| i.path.clone()).collect();
        let mut substitutable: BTreeMap<StorePath, bool> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for sub in &substituters {
            let answer = match store::open(sub) {
                Ok(s) => s.query_path_infos(&paths).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(infos) => {
                    for (path, info) in infos {
                        let ok = trusts(&info);
                        let entry = substitutable.entry(path).or_insert(false);
                        *entry |= ok;
                    }
                }
                Err(e) => unreachable.push(format!("{sub}: {e}")),
            }
        }
        let (subst, receive): (Vec<&PathInfo>, Vec<&PathInfo>) = lacking
            .iter()
            .copied()
            .partition(|i| substitutable.get(&i.path) == Some(&true));
        let refused = receive
            .iter()
            .filter(|i| substitutable.get(&i.path) == Some(&false))
            .count();
        let subst_amount = Amount::of(subst.iter().copied());
        let receive_amount = Amount::of(receive.iter().copied());
        report.substitute = Some(subst_amount);
        report.receive = Some(receive_amount);
        let list = if substituters.is_empty() {
            "none".to_owned()
        } else {
            substituters.join(" ")
        };
        let summary = format!(
            "substituters: {list}; would substitute {} ({}), receive {} ({}) from us",
            subst_amount.paths,
            human_bytes(subst_amount.nar_bytes),
            receive_amount.paths,
            human_bytes(receive_amount.nar_bytes)
        );
        if refused > 0 {
            report.push(
                "substitute",
                Status::Fail,
                format!(
                    "{summary}: its substituters have {refused} of them, but without a signature \
                     it trusts (trusted-public-keys: {}), so it would not substitute them",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(" ")
                    }
                ),
            );
        } else if !unreachable.is_empty() {
            report.push(
                "substitute",
                Status::Warn,
                format!("{summary}; could not ask {}", unreachable.join("; ")),
            );
        } else {
            report.push("substitute", Status::Ok, summary);
        }
        // What we would send: with the copy's signatures.
        let untrusted = receive
            .iter()
            .filter(|i| !trusts(&signed(i, src_dir, &opts.secret_keys)))
            .count();
        report.untrusted = Some(untrusted);
        report.signing_keys = opts
            .secret_keys
            .iter()
            .map(|k| k.name().to_owned())
            .collect();
        if receive.is_empty() {
            report.push("trust", Status::Ok, "receives nothing from us");
        } else if untrusted == 0 {
            report.push(
                "trust",
                Status::Ok,
                format!(
                    "trusts the signatures of the {} paths it would receive",
                    receive.len()
                ),
            );
        } else {
            report.push(
                "trust",
                Status::Warn,
                format!(
                    "{untrusted} of the {} paths it would receive carry no signature it trusts \
                     (trusted-public-keys: {}): it keeps them only from a trusted user",
                    receive.len(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(" ")
                    }
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "ssh")]
    use super::ssh::{config_list, parse_df, sections};

    #[cfg(feature = "ssh")]
    #[test]
    fn df_output() {
        let text = "Filesystem     1024-blocks  Used Available Capacity Mounted on\n\
                    tmpfs                 1024     4      1020       1% /tmp/a b\n";
        assert_eq!(parse_df(text), Some(1020 * 1024));
        assert_eq!(parse_df("df: /x: No such file or directory\n"), None);
        assert_eq!(parse_df(""), None);
    }

    #[cfg(feature = "ssh")]
    #[test]
    fn script_sections() {
        let out = "@@version\nnix-store (Nix) 2.8.0\n@@end 0\n@@df /nix\nx\n@@end 1\n";
        let s = sections(out);
        assert_eq!(s["version"], ("nix-store (Nix) 2.8.0\n".to_owned(), 0));
        assert_eq!(s["df /nix"], ("x\n".to_owned(), 1));
    }

    #[cfg(feature = "ssh")]
    #[test]
    fn remote_store_dirs() {
        use super::ssh::remote_store_dir;
        assert_eq!(remote_store_dir(None), "/nix/store");
        assert_eq!(remote_store_dir(Some("daemon")), "/nix/store");
        assert_eq!(remote_store_dir(Some("/tmp/r/")), "/tmp/r/nix/store");
        assert_eq!(remote_store_dir(Some("local?root=/x")), "/x/nix/store");
        assert_eq!(remote_store_dir(Some("/y?root=/x")), "/x/nix/store");
    }

    #[cfg(feature = "ssh")]
    #[test]
    fn config_lists() {
        let v: Value = serde_json::from_str(
            r#"{"substituters": {"value": ["file:///a", ""]}, "x": {"value": "a b"}}"#,
        )
        .unwrap();
        assert_eq!(config_list(&v, "substituters"), ["file:///a"]);
        assert_eq!(config_list(&v, "x"), ["a", "b"]);
        assert!(config_list(&v, "none").is_empty());
    }
}
