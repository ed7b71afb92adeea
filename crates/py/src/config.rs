//! `nix_config`: Nix's configuration, read as Nix reads it.

use nixferry::nixconf::{ConfigSources, NixConfig};
use pyo3::prelude::*;

use crate::errors;

/// Nix's effective configuration for the settings nixferry uses, as a
/// JSON string; `options` are `(name, value)` pairs applied last, as
/// `--option` does. See `nixferry.nix_config`.
#[pyfunction]
#[pyo3(signature = (options = Vec::new()))]
fn nix_config_json(options: Vec<(String, String)>) -> PyResult<String> {
    let mut config = NixConfig::load(&ConfigSources::from_env()).map_err(|e| {
        errors::new(
            "NixferryError",
            format!("reading Nix's configuration: {e}"),
            vec![],
        )
    })?;
    for (name, value) in &options {
        config
            .set(name, value)
            .map_err(|e| errors::new("NixferryError", format!("option {name}: {e}"), vec![]))?;
    }
    Ok(config.to_json())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(nix_config_json, m)?)
}
