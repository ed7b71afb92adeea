//! `nixferry.cache`: verify, repair, sign, count, pin and collect a
//! binary cache. The reports are the JSON objects `nixferry cache …
//! --json` prints, as strings; `nixferry/cache.py` parses them.

use std::time::Duration;

use nixferry::cache::{self, Cache, GcError, GcOptions, PinError, SignOptions, VerifyOptions};
use nixferry::copy::CopyOptions;
use nixferry::store_path::StorePath;
use pyo3::prelude::*;

use crate::blocking;
use crate::errors;
use crate::signing::{self, PySigningKey};
use crate::store::store_arg;
use crate::store_path as sp;

fn open(py: Python<'_>, url: &str) -> PyResult<Cache> {
    let url = url.to_owned();
    blocking::run(py, move |_| {
        let _guard = crate::runtime().enter();
        Cache::open(&url)
    })?
    .map_err(|e| errors::store(&e))
}

/// Runs the future `f` makes on the cache without the GIL, then closes
/// the cache.
fn run<'c, T: Send, F, Fut>(py: Python<'_>, cache: &'c Cache, f: F) -> PyResult<T>
where
    F: FnOnce(&'c Cache) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    blocking::run(py, move |_| {
        crate::runtime().block_on(async {
            let out = f(cache).await;
            cache.store().close().await;
            out
        })
    })
}

fn paths(obj: Option<&Bound<'_, PyAny>>, cache: &Cache) -> PyResult<Vec<StorePath>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    sp::extract_many(obj, cache.store_dir())
}

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{what} must be a number of seconds, 0 or more"
        ))
    })
}

fn pin_error(e: &PinError) -> PyErr {
    match e {
        PinError::Store(s) => errors::store(s),
        _ => errors::new("CacheError", e, Vec::new()),
    }
}

/// Checks a binary cache (or the closures of `paths`); returns the report
/// as a JSON string. See `nixferry.cache.verify`.
#[pyfunction]
#[pyo3(signature = (
    url, paths = None, *, trusted_keys = None, jobs = None, grace = 3600.0,
    upstreams = None, repair_from = None, delete_broken = false
))]
#[allow(clippy::too_many_arguments)]
fn cache_verify(
    py: Python<'_>,
    url: &str,
    paths: Option<Bound<'_, PyAny>>,
    trusted_keys: Option<Bound<'_, PyAny>>,
    jobs: Option<usize>,
    grace: f64,
    upstreams: Option<Vec<Bound<'_, PyAny>>>,
    repair_from: Option<Bound<'_, PyAny>>,
    delete_broken: bool,
) -> PyResult<String> {
    let cache = open(py, url)?;
    let mut opts = VerifyOptions {
        paths: self::paths(paths.as_ref(), &cache)?,
        grace: seconds("grace", grace)?,
        ..VerifyOptions::default()
    };
    if let Some(k) = &trusted_keys {
        opts.trusted_keys = signing::trusted_keys(k)?;
    }
    if let Some(j) = jobs {
        opts.jobs = j.max(1);
    }
    for u in upstreams.iter().flatten() {
        opts.upstreams.push(store_arg(py, u)?);
    }
    let from = repair_from.map(|f| store_arg(py, &f)).transpose()?;
    let fix = from.is_some() || delete_broken;
    let result = run(py, &cache, |cache| async {
        let report = cache::verify(cache, &opts, &|_| {}).await?;
        if !fix || report.is_clean() {
            return Ok(report.to_json());
        }
        let repair_opts = cache::RepairOptions {
            from: from.clone(),
            delete_broken,
            copy: CopyOptions::default().with_trusted_keys(opts.trusted_keys.clone()),
        };
        let repaired = cache::repair(cache, &report, &repair_opts).await?;
        let report = cache::verify(cache, &opts, &|_| {}).await?;
        Ok(report.to_json_with_repair(&repaired))
    })?;
    result.map_err(|e: nixferry::store::StoreError| errors::store(&e))
}

/// Signs every narinfo of a cache again; returns the report as a JSON
/// string. See `nixferry.cache.sign`.
#[pyfunction]
#[pyo3(signature = (url, secret_keys, *, remove_signatures_by = None, trusted_keys = None))]
fn cache_sign(
    py: Python<'_>,
    url: &str,
    secret_keys: Vec<PySigningKey>,
    remove_signatures_by: Option<Vec<String>>,
    trusted_keys: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let cache = open(py, url)?;
    let opts = SignOptions {
        keys: secret_keys.into_iter().map(|k| k.0).collect(),
        remove_signatures_by: remove_signatures_by.unwrap_or_default(),
        require_trusted: trusted_keys
            .as_ref()
            .map(signing::trusted_keys)
            .transpose()?,
    };
    run(py, &cache, |c| cache::sign(c, &opts))?
        .map(|r| r.to_json())
        .map_err(|e| errors::store(&e))
}

/// What a cache holds, as a JSON string. See `nixferry.cache.stats`.
#[pyfunction]
fn cache_stats(py: Python<'_>, url: &str) -> PyResult<String> {
    let cache = open(py, url)?;
    run(py, &cache, cache::stats)?
        .map(|s| s.to_json())
        .map_err(|e| errors::store(&e))
}

/// Records a generation of a pin; returns the pin as a JSON string. See
/// `nixferry.cache.pin`.
#[pyfunction]
#[pyo3(signature = (url, name, paths, *, keep = None))]
fn cache_pin(
    py: Python<'_>,
    url: &str,
    name: &str,
    paths: Bound<'_, PyAny>,
    keep: Option<usize>,
) -> PyResult<String> {
    let cache = open(py, url)?;
    let roots = self::paths(Some(&paths), &cache)?;
    run(py, &cache, |c| cache::pin(c, name, &roots, keep))?
        .map(|p| p.to_json(None))
        .map_err(|e| pin_error(&e))
}

/// The pins of a cache with their closure sizes, as a JSON string. See
/// `nixferry.cache.pins`.
#[pyfunction]
fn cache_pins(py: Python<'_>, url: &str) -> PyResult<String> {
    let cache = open(py, url)?;
    run(py, &cache, cache::pins_with_sizes)?
        .map(|p| cache::pins_json(&p))
        .map_err(|e| pin_error(&e))
}

/// Removes a pin or one of its generations. See `nixferry.cache.unpin`.
#[pyfunction]
#[pyo3(signature = (url, name, *, generation = None))]
fn cache_unpin(py: Python<'_>, url: &str, name: &str, generation: Option<u64>) -> PyResult<()> {
    let cache = open(py, url)?;
    run(py, &cache, |c| cache::unpin(c, name, generation))?.map_err(|e| pin_error(&e))
}

/// Collects a cache's garbage; returns the report as a JSON string. See
/// `nixferry.cache.gc`.
#[pyfunction]
#[pyo3(signature = (
    url, *, keep_newer_than = None, max_size = None, grace = 3600.0, dry_run = false, jobs = 16
))]
fn cache_gc(
    py: Python<'_>,
    url: &str,
    keep_newer_than: Option<f64>,
    max_size: Option<u64>,
    grace: f64,
    dry_run: bool,
    jobs: usize,
) -> PyResult<String> {
    let cache = open(py, url)?;
    let opts = GcOptions {
        keep_newer_than: keep_newer_than
            .map(|s| seconds("keep_newer_than", s))
            .transpose()?,
        max_size,
        grace: seconds("grace", grace)?,
        dry_run,
        jobs: jobs.max(1),
    };
    let deleted = std::sync::Mutex::new(Vec::new());
    let on_deleted = |d: &cache::Deleted| {
        deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(d.clone());
    };
    let report = run(py, &cache, |c| cache::gc(c, &opts, &on_deleted))?;
    let deleted = deleted.into_inner().unwrap_or_else(|e| e.into_inner());
    report.map(|r| r.to_json(&deleted)).map_err(|e| match e {
        GcError::Store(s) => errors::store(&s),
        GcError::Pin(p) => pin_error(&p),
        other => errors::new("CacheError", other, Vec::new()),
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cache_verify, m)?)?;
    m.add_function(wrap_pyfunction!(cache_sign, m)?)?;
    m.add_function(wrap_pyfunction!(cache_stats, m)?)?;
    m.add_function(wrap_pyfunction!(cache_pin, m)?)?;
    m.add_function(wrap_pyfunction!(cache_pins, m)?)?;
    m.add_function(wrap_pyfunction!(cache_unpin, m)?)?;
    m.add_function(wrap_pyfunction!(cache_gc, m)?)?;
    Ok(())
}
