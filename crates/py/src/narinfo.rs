//! `NarInfo`: binary cache metadata.

use std::sync::RwLock;

use nixferry::narinfo::{Compression, NarInfo, NarInfoFields};
use nixferry::store_path::{ContentAddress, StoreDir};
use pyo3::prelude::*;

use crate::errors;
use crate::hash::PyNixHash;
use crate::signing::{self, PySigningKey};
use crate::store_path::{self as sp, PyStorePath};

/// A `.narinfo` document: parsed losslessly, rendered back byte for byte.
///
/// Fields are typed attributes; `str()` and `render()` give the text.
/// Signing adds a `Sig` line where Nix writes it.
///
/// >>> info = NarInfo.parse(open("x.narinfo").read())  # doctest: +SKIP
/// >>> info.verify(["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="])  # doctest: +SKIP
/// 'cache.nixos.org-1'
#[pyclass(module = "nixferry._native", name = "NarInfo", frozen)]
pub(crate) struct PyNarInfo {
    info: RwLock<NarInfo>,
}

impl PyNarInfo {
    fn get(&self) -> std::sync::RwLockReadGuard<'_, NarInfo> {
        self.info.read().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, p: &nixferry::store_path::StorePath) -> PyStorePath {
        PyStorePath::new(self.get().store_dir(), p.clone())
    }
}

/// Store paths from Python in `dir`.
fn paths(
    items: &[Bound<'_, PyAny>],
    dir: &StoreDir,
) -> PyResult<Vec<nixferry::store_path::StorePath>> {
    items.iter().map(|p| sp::extract(p, dir)).collect()
}

#[pymethods]
impl PyNarInfo {
    /// Makes a narinfo as Nix 2.8 writes one, in its field order.
    ///
    /// `compression` is `none`, `xz`, `bzip2`, `zstd`, `br`, ...; `ca` is a
    /// content address such as `fixed:r:sha256:<nix32>`.
    #[new]
    #[pyo3(signature = (
        store_path, url, nar_hash, nar_size, *, compression = "none", file_hash = None,
        file_size = None, references = None, deriver = None, system = None,
        sigs = None, ca = None, store_dir = "/nix/store"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store_path: &Bound<'_, PyAny>,
        url: String,
        nar_hash: PyNixHash,
        nar_size: u64,
        compression: &str,
        file_hash: Option<PyNixHash>,
        file_size: Option<u64>,
        references: Option<Vec<Bound<'_, PyAny>>>,
        deriver: Option<Bound<'_, PyAny>>,
        system: Option<String>,
        sigs: Option<Vec<String>>,
        ca: Option<&str>,
        store_dir: &str,
    ) -> PyResult<Self> {
        let (references, sigs) = (references.unwrap_or_default(), sigs.unwrap_or_default());
        let dir = sp::store_dir(store_dir)?;
        let fields = NarInfoFields {
            store_dir: dir.clone(),
            compression: Compression::parse(compression),
            file_hash: file_hash.map(|h| h.0),
            file_size,
            references: paths(&references, &dir)?,
            deriver: deriver.map(|d| sp::extract(&d, &dir)).transpose()?,
            system,
            sigs,
            ca: ca
                .map(ContentAddress::parse)
                .transpose()
                .map_err(|e| errors::store_path(&e))?,
            ..NarInfoFields::new(sp::extract(store_path, &dir)?, url, nar_hash.0, nar_size)
        };
        let info = NarInfo::new(fields).map_err(|e| errors::narinfo(&e))?;
        Ok(Self {
            info: RwLock::new(info),
        })
    }

    /// Parses a narinfo whose paths are in `store_dir`.
    ///
    /// Raises `NarInfoError` with the line of the first problem.
    #[staticmethod]
    #[pyo3(signature = (text, store_dir = "/nix/store"))]
    fn parse(text: &str, store_dir: &str) -> PyResult<Self> {
        let dir = sp::store_dir(store_dir)?;
        let info = NarInfo::parse_in(text, &dir).map_err(|e| errors::narinfo(&e))?;
        Ok(Self {
            info: RwLock::new(info),
        })
    }

    /// The text: the parsed input, byte for byte, with any added signature.
    fn render(&self) -> String {
        self.get().render()
    }

    fn __str__(&self) -> String {
        self.render()
    }

    fn __repr__(&self) -> String {
        let info = self.get();
        format!(
            "NarInfo(store_path='{}')",
            info.store_dir().display(info.store_path())
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.downcast::<Self>() {
            Ok(o) => *self.get() == *o.get().get(),
            Err(_) => false,
        }
    }

    /// The store directory.
    #[getter]
    fn store_dir(&self) -> String {
        self.get().store_dir().as_str().to_owned()
    }

    /// `StorePath`.
    #[getter]
    fn store_path(&self) -> PyStorePath {
        let info = self.get();
        PyStorePath::new(info.store_dir(), info.store_path().clone())
    }

    /// `URL`: where the NAR file is, relative to the cache.
    #[getter]
    fn url(&self) -> String {
        self.get().url().to_owned()
    }

    /// `Compression` (`bzip2` when absent, as in Nix).
    #[getter]
    fn compression(&self) -> String {
        self.get().compression().name().to_owned()
    }

    /// `FileHash`, if present.
    #[getter]
    fn file_hash(&self) -> Option<PyNixHash> {
        self.get().file_hash().copied().map(PyNixHash)
    }

    /// `FileSize`, if present.
    #[getter]
    fn file_size(&self) -> Option<u64> {
        self.get().file_size()
    }

    /// `NarHash`.
    #[getter]
    fn nar_hash(&self) -> PyNixHash {
        PyNixHash(*self.get().nar_hash())
    }

    /// `NarSize`.
    #[getter]
    fn nar_size(&self) -> u64 {
        self.get().nar_size()
    }

    /// `References`, in the order written.
    #[getter]
    fn references(&self) -> Vec<PyStorePath> {
        let refs = self.get().references().to_vec();
        refs.iter().map(|r| self.path(r)).collect()
    }

    /// `Deriver`, unless absent or `unknown-deriver`.
    #[getter]
    fn deriver(&self) -> Option<PyStorePath> {
        let d = self.get().deriver().cloned();
        d.map(|d| self.path(&d))
    }

    /// `System`, if present.
    #[getter]
    fn system(&self) -> Option<String> {
        self.get().system().map(str::to_owned)
    }

    /// The `Sig` values (`name:base64`), in the order written.
    #[getter]
    fn signatures(&self) -> Vec<String> {
        self.get().signatures().map(str::to_owned).collect()
    }

    /// `CA`, the content address, if present.
    #[getter]
    fn ca(&self) -> Option<String> {
        self.get().ca().map(ToString::to_string)
    }

    /// Lines with keys Nix does not know, as `(key, value)` pairs.
    #[getter]
    fn unknown_fields(&self) -> Vec<(String, String)> {
        self.get()
            .unknown_fields()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The string signatures sign: `1;<path>;<narHash>;<narSize>;<refs>`.
    fn fingerprint(&self) -> String {
        self.get().fingerprint()
    }

    /// Checks the signatures against `trusted_keys` (`VerifyingKey`s or
    /// `name:base64` strings) and returns the name of the key that
    /// verified.
    ///
    /// Raises `VerificationError` saying why none did (its `reason` is
    /// `no-signatures`, `untrusted-keys`, `bad-signature` or `unnamed`).
    fn verify(&self, py: Python<'_>, trusted_keys: &Bound<'_, PyAny>) -> PyResult<String> {
        let trusted = signing::trusted_keys(trusted_keys)?;
        let guard = self.get();
        let info: &NarInfo = &guard;
        py.allow_threads(|| info.verify(&trusted).map(str::to_owned))
            .map_err(|e| errors::verify(&e))
    }

    /// The number of distinct valid signatures by `trusted_keys`.
    fn count_valid_signatures(
        &self,
        py: Python<'_>,
        trusted_keys: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let trusted = signing::trusted_keys(trusted_keys)?;
        let guard = self.get();
        let info: &NarInfo = &guard;
        Ok(py.allow_threads(|| info.count_valid_signatures(&trusted)))
    }

    /// Whether the `CA` claim holds (recomputing the path from it gives
    /// `store_path`), which makes signatures unnecessary in Nix.
    fn verify_ca(&self) -> bool {
        self.get().verify_ca()
    }

    /// Checks that the fields agree with each other (a `CA` that gives the
    /// store path, a `URL` inside the cache, ...).
    ///
    /// Raises `NarInfoError` with the first problem.
    fn check(&self) -> PyResult<()> {
        self.get().check().map_err(|e| errors::narinfo(&e))
    }

    /// Signs with `key`, replacing any signature by a key of the same name.
    fn sign(&self, py: Python<'_>, key: &PySigningKey) {
        let mut guard = self.info.write().unwrap_or_else(|e| e.into_inner());
        let info: &mut NarInfo = &mut guard;
        py.allow_threads(|| info.sign(&key.0));
    }

    /// Removes every `Sig` line.
    fn clear_signatures(&self) {
        self.info
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear_signatures();
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNarInfo>()?;
    Ok(())
}
