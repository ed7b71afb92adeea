//! `copy`: the copy engine, with progress events and Ctrl-C.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;

use nixferry::closure::ClosureError;
use nixferry::copy::{copy_closure, CancellationToken, CopyOptions, Event, Summary};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::blocking::recv_released;
use crate::errors;
use crate::signing::{self, PySigningKey};
use crate::store::store_arg;
use crate::store_path as sp;

/// The plan: paths in the closure, paths some destination lacks, and
/// their total NAR size.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct CopyPlanned {
    /// Paths in the closure.
    closure: usize,
    /// Paths to copy.
    missing: usize,
    /// NAR bytes to copy.
    nar_bytes: u64,
}

/// A path the destination already has.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct PathSkipped {
    /// The full path.
    path: String,
}

/// A path the destination lacks, not copied because an upstream serves it
/// with a trusted signature.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct PathFoundUpstream {
    /// The full path.
    path: String,
    /// The URL of the upstream that serves it.
    upstream: String,
}

/// An upstream could not be asked; it is left out, and the paths it was
/// asked about are copied unless another upstream serves them.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct UpstreamFailed {
    /// The upstream's URL.
    upstream: String,
    /// Why.
    error: String,
}

/// A path started copying.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct PathStarted {
    /// The full path.
    path: String,
    /// Its NAR size.
    nar_size: u64,
}

/// More NAR bytes were read from the source (all paths together).
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct BytesCopied {
    /// How many, since the previous event of this kind.
    bytes: u64,
}

/// A path is in the destination.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct PathCopied {
    /// The full path.
    path: String,
    /// Its NAR size.
    nar_size: u64,
    /// Whether the compressed NAR file was moved as it is.
    passthrough: bool,
}

/// A try failed in a way that may pass; another follows after `delay`
/// seconds.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct CopyRetrying {
    /// The full path (empty while asking the destination what it has).
    path: String,
    /// The try that comes next: 1 for the first retry.
    attempt: u32,
    /// Seconds until then.
    delay: f64,
    /// What failed.
    error: String,
}

/// A path could not be copied.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct PathFailed {
    /// The full path.
    path: String,
    /// Why.
    error: String,
}

/// The destination could not be asked what it has; nothing is copied.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct DestinationFailed {
    /// Why.
    error: String,
}

macro_rules! event_repr {
    ($($ty:ident),*) => {$(
        #[pymethods]
        impl $ty {
            fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
                let py = slf.py();
                let names: Vec<String> = slf.getattr("__match_args__")?.extract()?;
                let mut parts = Vec::new();
                for n in names {
                    parts.push(format!("{n}={}", slf.getattr(n.as_str())?.repr()?));
                }
                let _ = py;
                Ok(format!("{}({})", stringify!($ty), parts.join(", ")))
            }
        }
    )*};
}

event_repr!(
    CopyPlanned,
    PathSkipped,
    PathFoundUpstream,
    UpstreamFailed,
    PathStarted,
    BytesCopied,
    PathCopied,
    CopyRetrying,
    PathFailed,
    DestinationFailed
);

/// The field names of each event class, for `__match_args__`.
const MATCH_ARGS: &[(&str, &[&str])] = &[
    ("CopyPlanned", &["closure", "missing", "nar_bytes"]),
    ("PathSkipped", &["path"]),
    ("PathFoundUpstream", &["path", "upstream"]),
    ("UpstreamFailed", &["upstream", "error"]),
    ("PathStarted", &["path", "nar_size"]),
    ("BytesCopied", &["bytes"]),
    ("PathCopied", &["path", "nar_size", "passthrough"]),
    ("CopyRetrying", &["path", "attempt", "delay", "error"]),
    ("PathFailed", &["path", "error"]),
    ("DestinationFailed", &["error"]),
];

/// The Python object for a core event; `None` for kinds this version does
/// not know.
fn event(py: Python<'_>, e: Event) -> PyResult<Option<PyObject>> {
    Ok(Some(match e {
        Event::Planned {
            closure,
            missing,
            nar_bytes,
        } => CopyPlanned {
            closure,
            missing,
            nar_bytes,
        }
        .into_py_any(py)?,
        Event::Skipped { path, .. } => PathSkipped { path }.into_py_any(py)?,
        Event::FoundUpstream { path, upstream, .. } => {
            PathFoundUpstream { path, upstream }.into_py_any(py)?
        }
        Event::UpstreamFailed { upstream, error } => {
            UpstreamFailed { upstream, error }.into_py_any(py)?
        }
        Event::Started { path, nar_size } => PathStarted { path, nar_size }.into_py_any(py)?,
        Event::Bytes { bytes } => BytesCopied { bytes }.into_py_any(py)?,
        Event::Copied {
            path,
            nar_size,
            passthrough,
            ..
        } => PathCopied {
            path,
            nar_size,
            passthrough,
        }
        .into_py_any(py)?,
        Event::Retrying {
            path,
            attempt,
            delay,
            error,
            ..
        } => CopyRetrying {
            path,
            attempt,
            delay: delay.as_secs_f64(),
            error,
        }
        .into_py_any(py)?,
        Event::Failed { path, error, .. } => PathFailed { path, error }.into_py_any(py)?,
        Event::DestinationFailed { error, .. } => DestinationFailed { error }.into_py_any(py)?,
        _ => return Ok(None),
    }))
}

/// What a copy did.
#[pyclass(module = "nixferry._native", frozen, get_all)]
pub(crate) struct CopySummary {
    /// The destination's URL.
    url: String,
    /// Paths copied.
    copied: usize,
    /// Paths the destination already had.
    skipped: usize,
    /// Paths the destination lacked and that were not copied because an
    /// upstream serves them.
    upstream: usize,
    /// NAR bytes copied.
    nar_bytes: u64,
    /// Paths that failed, as `(full path, reason)`.
    failed: Vec<(String, String)>,
    /// Seconds the copy took.
    elapsed: f64,
}

#[pymethods]
impl CopySummary {
    /// Whether every path is in the destination.
    #[getter]
    fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    fn __repr__(&self) -> String {
        format!(
            "CopySummary(url='{}', copied={}, skipped={}, upstream={}, failed={}, nar_bytes={})",
            self.url,
            self.copied,
            self.skipped,
            self.upstream,
            self.failed.len(),
            self.nar_bytes
        )
    }
}

/// What the copy sends to the waiting caller.
enum Msg {
    Event(Event),
    Done(Result<Summary, ClosureError>),
}

/// Copies the closure of `paths` from `src` to `dst` (each a `Store` or a
/// URL), as `nixferry copy` does, and returns a `CopySummary`.
///
/// Paths from a store other than the local one need a valid signature by
/// a trusted key, or a content address that verifies, unless
/// `check_sigs=False` (Nix's `require-sigs`). The trusted keys are
/// `trusted_keys` (default: Nix's default `trusted-public-keys`,
/// cache.nixos.org's key) and, as in Nix, the public halves of
/// `secret_keys`. Copied paths are signed with `secret_keys`. `jobs` paths
/// are copied at once.
///
/// `upstreams` (each a `Store` or a URL, such as
/// ``"https://cache.nixos.org"``) makes the copy upstream-aware: when
/// `dst` is a binary cache, the paths it lacks that one of them serves
/// with a valid signature by a trusted key (or a content address that
/// verifies) are not copied, and counted in the summary's ``upstream``;
/// paths that refer to them are copied as usual. An upstream that fails,
/// or does not answer a batch of paths in `upstream_timeout` seconds, is
/// left out (an `UpstreamFailed` event) and the copy goes on. A Nix store
/// destination gets every path it lacks.
///
/// `progress`, if given, is called in the calling thread with one event
/// object per step (`CopyPlanned`, `PathStarted`, `BytesCopied`,
/// `PathCopied`, `PathSkipped`, `PathFoundUpstream`, `UpstreamFailed`,
/// `CopyRetrying`, `PathFailed`, `DestinationFailed`). If it raises, the copy is cancelled and the
/// exception propagates. Ctrl-C cancels the copy, leaving the destination
/// consistent, and raises `KeyboardInterrupt`.
///
/// If paths fail, raises `CopyError`, whose ``failed`` lists them (with
/// why) and whose ``summary`` is the `CopySummary`; with
/// ``raise_on_failure=False`` the summary is returned and lists them
/// instead. Raises `PathNotFoundError` or `ClosureError` when the source
/// lacks a path of the closure.
///
/// >>> summary = copy("local", "file:///tmp/cache", ["/nix/store/...-hello"],
/// ...                progress=print, check_sigs=False)  # doctest: +SKIP
#[pyfunction]
#[pyo3(signature = (
    src, dst, paths, *, jobs = None, progress = None, check_sigs = true,
    trusted_keys = None, secret_keys = None, retries = 5, raise_on_failure = true,
    upstreams = None, upstream_timeout = 30.0
))]
#[allow(clippy::too_many_arguments)]
fn copy(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dst: &Bound<'_, PyAny>,
    paths: &Bound<'_, PyAny>,
    jobs: Option<usize>,
    progress: Option<Bound<'_, PyAny>>,
    check_sigs: bool,
    trusted_keys: Option<Bound<'_, PyAny>>,
    secret_keys: Option<Vec<PySigningKey>>,
    retries: u32,
    raise_on_failure: bool,
    upstreams: Option<Bound<'_, PyAny>>,
    upstream_timeout: f64,
) -> PyResult<CopySummary> {
    let secret_keys = secret_keys.unwrap_or_default();
    let src = store_arg(py, src)?;
    let dst = store_arg(py, dst)?;
    if !(upstream_timeout.is_finite() && upstream_timeout > 0.0 && upstream_timeout <= 3600.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "upstream_timeout must be above 0 and at most 3600 seconds, not {upstream_timeout}"
        )));
    }
    let upstreams = match &upstreams {
        None => Vec::new(),
        Some(u) if u.is_instance_of::<pyo3::types::PyString>() => {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "upstreams must be a list of stores or URLs, not a string",
            ))
        }
        Some(u) => u
            .try_iter()?
            .map(|u| store_arg(py, &u?))
            .collect::<PyResult<Vec<_>>>()?,
    };
    let dir = src.store_dir().clone();
    let roots = sp::extract_many(paths, &dir)?;
    // Nix's signature policy, as the command-line tool sets it up.
    let mut opts = CopyOptions {
        check_sigs,
        retries,
        ..CopyOptions::default()
    };
    if let Some(k) = &trusted_keys {
        opts = opts.with_trusted_keys(signing::trusted_keys(k)?);
    }
    opts = opts.with_secret_keys(secret_keys.into_iter().map(|k| k.0));
    if let Some(j) = jobs {
        opts.jobs = j.max(1);
    }
    opts = opts.with_upstreams(upstreams);
    opts.upstream_timeout = std::time::Duration::from_secs_f64(upstream_timeout);

    let (tx, mut rx) = mpsc::channel::<Msg>();
    let cancel = CancellationToken::new();
    let on_event: Arc<dyn Fn(Event) + Send + Sync> = {
        let tx = tx.clone();
        let want = progress.is_some();
        Arc::new(move |e| {
            if want {
                let _ = tx.send(Msg::Event(e));
            }
        })
    };
    let token = cancel.clone();
    crate::runtime().spawn(async move {
        let result = copy_closure(src, dst, &roots, &opts, on_event, token).await;
        let _ = tx.send(Msg::Done(result));
    });

    // Wait, delivering events in this thread; a failing callback or a
    // signal cancels the copy, which is then waited for.
    let mut raised: Option<PyErr> = None;
    let result = loop {
        let (back, got) = recv_released(py, rx);
        rx = back;
        match got {
            Ok(Msg::Event(e)) => {
                if raised.is_some() {
                    continue;
                }
                if let (Some(cb), Some(obj)) = (&progress, event(py, e)?) {
                    if let Err(err) = cb.call1((obj,)) {
                        cancel.cancel();
                        raised = Some(err);
                    }
                }
            }
            Ok(Msg::Done(r)) => break r,
            Err(RecvTimeoutError::Timeout) => {
                if raised.is_none() {
                    if let Err(err) = py.check_signals() {
                        cancel.cancel();
                        raised = Some(err);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the copy task ended without a result",
                ))
            }
        }
    };
    if let Some(err) = raised {
        return Err(err);
    }
    let summary = result.map_err(|e| errors::closure(&e))?;
    let failed: Vec<(String, String)> = summary
        .failed
        .iter()
        .map(|(p, e)| (dir.full(p), e.to_string()))
        .collect();
    let list = failed
        .iter()
        .map(|(p, e)| format!("{p}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let result = CopySummary {
        url: summary.url,
        copied: summary.copied,
        skipped: summary.skipped,
        upstream: summary.upstream,
        nar_bytes: summary.nar_bytes,
        failed: failed.clone(),
        elapsed: summary.elapsed.as_secs_f64(),
    };
    if raise_on_failure && !failed.is_empty() {
        let n = failed.len();
        return Err(errors::new(
            "CopyError",
            format!(
                "{n} {} failed: {list}",
                if n == 1 { "path" } else { "paths" }
            ),
            vec![
                ("failed", errors::obj(py, failed)),
                ("summary", errors::obj(py, result)),
            ],
        ));
    }
    Ok(result)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CopyPlanned>()?;
    m.add_class::<PathSkipped>()?;
    m.add_class::<PathFoundUpstream>()?;
    m.add_class::<UpstreamFailed>()?;
    m.add_class::<PathStarted>()?;
    m.add_class::<BytesCopied>()?;
    m.add_class::<PathCopied>()?;
    m.add_class::<CopyRetrying>()?;
    m.add_class::<PathFailed>()?;
    m.add_class::<DestinationFailed>()?;
    m.add_class::<CopySummary>()?;
    for (name, fields) in MATCH_ARGS {
        let cls = m.getattr(*name)?;
        let tuple = pyo3::types::PyTuple::new(m.py(), fields.iter())?;
        cls.setattr("__match_args__", tuple)?;
    }
    m.add_function(wrap_pyfunction!(copy, m)?)?;
    Ok(())
}
