//! `check_json`: the checks `nixferry check` makes before a copy. See
//! `nixferry.check`.

use std::time::Duration;

use nixferry::preflight::{self, Options};
use nixferry::store::StoreUrl;
use pyo3::prelude::*;

use crate::store::store_arg;
use crate::{blocking, errors, signing::PySigningKey, store_path as sp};

/// Checks each of `dsts` (URLs) for a copy of the closure of `paths` from
/// `src`; returns the reports, one per destination in order, as a JSON
/// array string.
#[pyfunction]
#[pyo3(signature = (src, dsts, paths, *, substitute = false, secret_keys = None, timeout = 60.0))]
fn check_json(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    dsts: Vec<String>,
    paths: &Bound<'_, PyAny>,
    substitute: bool,
    secret_keys: Option<Vec<PySigningKey>>,
    timeout: f64,
) -> PyResult<String> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be above 0 and at most a day, in seconds, not {timeout}"
        )));
    }
    let src = store_arg(py, src)?;
    let dir = src.store_dir().clone();
    let roots = sp::extract_many(paths, &dir)?;
    let urls = dsts
        .iter()
        .map(|u| StoreUrl::parse(u).map_err(|e| errors::store(&e.into())))
        .collect::<PyResult<Vec<_>>>()?;
    let opts = Options {
        substitute,
        secret_keys: secret_keys
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.0)
            .collect(),
        timeout: Duration::from_secs_f64(timeout),
    };
    let reports = blocking::run(py, move |_| {
        crate::runtime().block_on(preflight::check(&*src, &roots, &urls, &opts))
    })?
    .map_err(|e| errors::closure(&e))?;
    let all: Vec<String> = reports.iter().map(|r| r.to_json().to_string()).collect();
    Ok(format!("[{}]", all.join(",")))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(check_json, m)?)
}
