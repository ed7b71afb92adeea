//! `NixHash` and the hash encodings.

use nixferry::hash::{self, HashAlgo, NixHash};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;

/// A hash with its algorithm, as Nix writes them.
///
/// `str()` gives the prefixed Nix base-32 form (`sha256:1z63...`).
///
/// >>> h = NixHash.parse("sha256-bThRp6kUVcN0kWuzxqN6xGgm58DFIu2qDcADioVPaQg=")
/// >>> h.algo
/// 'sha256'
/// >>> h.to_nix32()
/// '02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d'
#[pyclass(module = "nixferry._native", name = "NixHash", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PyNixHash(pub(crate) NixHash);

/// An algorithm name as the core knows it.
fn algo(name: &str) -> PyResult<HashAlgo> {
    HashAlgo::parse(name).map_err(|e| errors::hash(&e))
}

#[pymethods]
impl PyNixHash {
    /// Parses a prefixed hash (`sha256:<nix32|hex|base64>`) or an SRI hash
    /// (`sha256-<base64>`).
    #[staticmethod]
    fn parse(s: &str) -> PyResult<Self> {
        NixHash::parse(s).map(Self).map_err(|e| errors::hash(&e))
    }

    /// Parses a hash without a prefix (nix32, hex or base64) of algorithm
    /// `algo`.
    #[staticmethod]
    fn parse_unprefixed(s: &str, algo: &str) -> PyResult<Self> {
        NixHash::parse_unprefixed(s, self::algo(algo)?)
            .map(Self)
            .map_err(|e| errors::hash(&e))
    }

    /// The hash of `data` with `algo` (`md5`, `sha1`, `sha256`, `sha512`).
    #[staticmethod]
    fn compute(py: Python<'_>, algo: &str, data: &[u8]) -> PyResult<Self> {
        let algo = self::algo(algo)?;
        Ok(Self(py.allow_threads(|| NixHash::digest(algo, data))))
    }

    /// A hash from its raw digest bytes.
    #[staticmethod]
    fn from_bytes(algo: &str, digest: &[u8]) -> PyResult<Self> {
        let a = self::algo(algo)?;
        NixHash::from_bytes(a, digest).map(Self).ok_or_else(|| {
            errors::new(
                "HashError",
                format!(
                    "a {algo} digest has {} bytes, not {}",
                    a.size(),
                    digest.len()
                ),
                Vec::new(),
            )
        })
    }

    /// The algorithm: `md5`, `sha1`, `sha256` or `sha512`.
    #[getter]
    fn algo(&self) -> &'static str {
        self.0.algo().name()
    }

    /// The raw digest.
    #[getter]
    fn raw<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    /// The digest in Nix base-32, without prefix.
    fn to_nix32(&self) -> String {
        self.0.to_nix32()
    }

    /// The digest in lowercase hex, without prefix.
    fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// The digest in standard base64, without prefix.
    fn to_base64(&self) -> String {
        self.0.to_base64()
    }

    /// The SRI form, `sha256-<base64>`.
    fn to_sri(&self) -> String {
        self.0.to_sri()
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __repr__(&self) -> String {
        format!("NixHash('{}')", self.0)
    }
}

/// Encodes bytes in Nix base-32.
///
/// >>> nix32_encode(b"\x00" * 20)
/// '00000000000000000000000000000000'
#[pyfunction]
fn nix32_encode(data: &[u8]) -> String {
    hash::nix32::encode(data)
}

/// Decodes Nix base-32 into `size` bytes.
///
/// Raises `HashError` when `s` is not the Nix base-32 form of `size` bytes.
#[pyfunction]
fn nix32_decode<'py>(py: Python<'py>, s: &str, size: usize) -> PyResult<Bound<'py, PyBytes>> {
    hash::nix32::decode(s, size)
        .map(|b| PyBytes::new(py, &b))
        .ok_or_else(|| {
            errors::new(
                "HashError",
                format!("'{s}' is not the Nix base-32 form of {size} bytes"),
                Vec::new(),
            )
        })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNixHash>()?;
    m.add_function(wrap_pyfunction!(nix32_encode, m)?)?;
    m.add_function(wrap_pyfunction!(nix32_decode, m)?)?;
    Ok(())
}
