//! `Store` and `PathInfo`: stores opened by URL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use nixferry::closure;
use nixferry::store::json::{path_info_json, PathInfoQuery};
use nixferry::store::{self, PathInfo, Store};
use nixferry::store_path::{StoreDir, StorePath};
use pyo3::prelude::*;

use crate::blocking;
use crate::errors;
use crate::hash::PyNixHash;
use crate::signing::{self, PySigningKey};
use crate::store_path as sp;

/// What a store knows about one of its paths.
#[pyclass(module = "nixferry._native", name = "PathInfo", frozen)]
pub(crate) struct PyPathInfo {
    info: PathInfo,
    dir: StoreDir,
}

impl PyPathInfo {
    fn full(&self, p: &StorePath) -> String {
        self.dir.full(p)
    }
}

#[pymethods]
impl PyPathInfo {
    /// The full store path.
    #[getter]
    fn path(&self) -> String {
        self.full(&self.info.path)
    }

    /// SHA-256 of the path's NAR.
    #[getter]
    fn nar_hash(&self) -> PyNixHash {
        PyNixHash(self.info.nar_hash)
    }

    /// Size of the path's NAR in bytes.
    #[getter]
    fn nar_size(&self) -> u64 {
        self.info.nar_size
    }

    /// The full paths it refers to, sorted (possibly itself).
    #[getter]
    fn references(&self) -> Vec<String> {
        self.info.references.iter().map(|r| self.full(r)).collect()
    }

    /// The derivation that built it, if known.
    #[getter]
    fn deriver(&self) -> Option<String> {
        self.info.deriver.as_ref().map(|d| self.full(d))
    }

    /// Signatures, `name:base64`.
    #[getter]
    fn signatures(&self) -> Vec<String> {
        self.info.signatures.clone()
    }

    /// The content address, for content-addressed paths.
    #[getter]
    fn ca(&self) -> Option<String> {
        self.info.ca.map(|c| c.to_string())
    }

    /// When it was registered (Unix seconds), 0 if unknown.
    #[getter]
    fn registration_time(&self) -> u64 {
        self.info.registration_time
    }

    /// Whether it was built on this machine.
    #[getter]
    fn ultimate(&self) -> bool {
        self.info.ultimate
    }

    /// The NAR file's URL relative to the cache, for binary caches.
    #[getter]
    fn url(&self) -> Option<String> {
        self.info.file.as_ref().map(|f| f.url.clone())
    }

    /// The NAR file's compression, for binary caches.
    #[getter]
    fn compression(&self) -> Option<String> {
        self.info
            .file
            .as_ref()
            .map(|f| f.compression.name().to_owned())
    }

    /// The NAR file's hash, when a binary cache knows it.
    #[getter]
    fn file_hash(&self) -> Option<PyNixHash> {
        self.info
            .file
            .as_ref()
            .and_then(|f| f.file_hash)
            .map(PyNixHash)
    }

    /// The NAR file's size, when a binary cache knows it.
    #[getter]
    fn file_size(&self) -> Option<u64> {
        self.info.file.as_ref().and_then(|f| f.file_size)
    }

    /// The string signatures sign.
    fn fingerprint(&self) -> String {
        self.info.fingerprint(&self.dir)
    }

    /// The path's object in `nix path-info --json`, compact, fields in
    /// Nix's order.
    fn to_json(&self) -> String {
        self.info.to_json(&self.dir)
    }

    /// Checks that the path is trusted: a valid signature by one of
    /// `trusted_keys`, or a content address that verifies. Returns the name
    /// of the key that verified, or `None` for a content address.
    ///
    /// Raises `VerificationError` saying why not.
    fn verify(&self, trusted_keys: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let trusted = signing::trusted_keys(trusted_keys)?;
        self.info
            .check_trust(&self.dir, &trusted)
            .map(|k| k.map(str::to_owned))
            .map_err(|e| errors::verify(&e))
    }

    fn __repr__(&self) -> String {
        format!(
            "PathInfo(path='{}', nar_size={})",
            self.path(),
            self.info.nar_size
        )
    }
}

/// A store opened by URL: `local`, `file:///dir?...`, `ssh://host?...`.
///
/// >>> store = open_store("file:///tmp/cache?compression=zstd")  # doctest: +SKIP
/// >>> store.has_paths(["/nix/store/...-hello-2.12"])  # doctest: +SKIP
/// set()
#[pyclass(module = "nixferry._native", name = "Store", frozen)]
pub(crate) struct PyStore {
    pub(crate) store: Arc<dyn Store>,
}

impl PyStore {
    fn paths(&self, paths: &Bound<'_, PyAny>) -> PyResult<Vec<StorePath>> {
        let dir = self.store.store_dir();
        if paths.is_instance_of::<pyo3::types::PyString>()
            || paths.downcast::<sp::PyStorePath>().is_ok()
        {
            return Ok(vec![sp::extract(paths, dir)?]);
        }
        paths.try_iter()?.map(|p| sp::extract(&p?, dir)).collect()
    }

    fn info(&self, info: PathInfo) -> PyPathInfo {
        PyPathInfo {
            info,
            dir: self.store.store_dir().clone(),
        }
    }

    fn query(
        &self,
        py: Python<'_>,
        paths: Vec<StorePath>,
    ) -> PyResult<BTreeMap<StorePath, PathInfo>> {
        let store = Arc::clone(&self.store);
        blocking::run(py, move |_| {
            crate::runtime().block_on(store.query_path_infos(&paths))
        })?
        .map_err(|e| errors::store(&e))
    }
}

#[pymethods]
impl PyStore {
    /// The URL the store was opened with.
    #[getter]
    fn url(&self) -> &str {
        self.store.url()
    }

    /// The store directory of its paths.
    #[getter]
    fn store_dir(&self) -> &str {
        self.store.store_dir().as_str()
    }

    /// The info of `path` (a full path, base name or `StorePath`), or
    /// `None` when the store does not have it.
    fn path_info(&self, py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<Option<PyPathInfo>> {
        let p = sp::extract(path, self.store.store_dir())?;
        let mut found = self.query(py, vec![p])?;
        Ok(found.pop_first().map(|(_, i)| self.info(i)))
    }

    /// The infos of those of `paths` the store has, by full path, in one
    /// batched question.
    fn path_infos(
        &self,
        py: Python<'_>,
        paths: &Bound<'_, PyAny>,
    ) -> PyResult<BTreeMap<String, PyPathInfo>> {
        let ps = self.paths(paths)?;
        let found = self.query(py, ps)?;
        let dir = self.store.store_dir();
        Ok(found
            .into_iter()
            .map(|(p, i)| (dir.full(&p), self.info(i)))
            .collect())
    }

    /// The full paths of those of `paths` the store has.
    fn has_paths(&self, py: Python<'_>, paths: &Bound<'_, PyAny>) -> PyResult<BTreeSet<String>> {
        let ps = self.paths(paths)?;
        let store = Arc::clone(&self.store);
        let valid = blocking::run(py, move |_| {
            crate::runtime().block_on(store.query_valid_paths(&ps))
        })?
        .map_err(|e| errors::store(&e))?;
        let dir = self.store.store_dir();
        Ok(valid.iter().map(|p| dir.full(p)).collect())
    }

    /// The closure of `paths`: them, their references, theirs, and so on,
    /// references before referrers.
    ///
    /// Raises `PathNotFoundError` for a path the store does not have,
    /// `ClosureError` for a missing reference or a cycle.
    fn closure(&self, py: Python<'_>, paths: &Bound<'_, PyAny>) -> PyResult<Vec<PyPathInfo>> {
        let ps = self.paths(paths)?;
        let store = Arc::clone(&self.store);
        let c = blocking::run(py, move |_| {
            crate::runtime().block_on(closure::compute(&*store, &ps))
        })?
        .map_err(|e| errors::closure(&e))?;
        Ok(c.into_infos().into_iter().map(|i| self.info(i)).collect())
    }

    /// What `nix path-info --json` prints about `paths` (and `nixferry
    /// path-info --json`): a JSON array with an object per path, in the
    /// order given; `{"path": ..., "valid": false}` for a path the store
    /// does not have. With `recursive=True`, the closure of `paths`
    /// instead, references first; with `closure_size=True`, each object
    /// has `closureSize` (and `closureDownloadSize` for binary caches that
    /// know every file size).
    ///
    /// Raises `PathNotFoundError` (with `recursive=True`) or `ClosureError`
    /// when a closure needed lacks a path.
    #[pyo3(signature = (paths, *, recursive = false, closure_size = false))]
    fn path_info_json(
        &self,
        py: Python<'_>,
        paths: &Bound<'_, PyAny>,
        recursive: bool,
        closure_size: bool,
    ) -> PyResult<String> {
        let ps = self.paths(paths)?;
        let store = Arc::clone(&self.store);
        let query = PathInfoQuery {
            recursive,
            closure_size,
        };
        let entries = blocking::run(py, move |_| {
            crate::runtime().block_on(query.run(&*store, &ps))
        })?
        .map_err(|e| errors::closure(&e))?;
        Ok(path_info_json(self.store.store_dir(), &entries))
    }

    /// Adds the file, directory or symlink at `path` as the
    /// content-addressed path `nix-store --add` makes of it (named after
    /// its last component unless `name` is given), signed with each of
    /// `secret_keys`, and returns its info; a path the store has already
    /// is left alone. The NAR is checked on its way in like any other.
    ///
    /// Raises `StorePathError` for an invalid name, `NarError` for a tree
    /// a NAR cannot hold, `StoreError` when the store refuses it.
    #[pyo3(signature = (path, *, name = None, secret_keys = None))]
    fn add(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<String>,
        secret_keys: Option<Vec<PySigningKey>>,
    ) -> PyResult<PyPathInfo> {
        let secret_keys = secret_keys.unwrap_or_default();
        let name = match name {
            Some(n) => n,
            None => sp::default_name(&path)?,
        };
        let keys: Vec<_> = secret_keys.into_iter().map(|k| k.0).collect();
        let store = Arc::clone(&self.store);
        let info = blocking::run(py, move |_| {
            crate::runtime().block_on(store::add_to_store(&*store, &path, &name, &keys))
        })?
        .map_err(|e| errors::store(&e))?;
        Ok(self.info(info))
    }

    fn __repr__(&self) -> String {
        format!("Store('{}')", self.store.url())
    }
}

/// Opens the store a URL names, as the command-line tool does: `local`
/// (or `/nix/store`, `local?root=/chroot`), `file:///dir?compression=...`
/// or `ssh://[user@]host?...`.
///
/// Raises `StoreUrlError` for a malformed URL or an unknown parameter.
#[pyfunction]
pub(crate) fn open_store(py: Python<'_>, url: &str) -> PyResult<PyStore> {
    let url = url.to_owned();
    let store = blocking::run(py, move |_| {
        // Some backends start tasks when opened.
        let _guard = crate::runtime().enter();
        store::open(&url)
    })?
    .map_err(|e| errors::store(&e))?;
    Ok(PyStore { store })
}

/// A store from Python: a `Store` or a URL.
pub(crate) fn store_arg(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn Store>> {
    if let Ok(s) = obj.downcast::<PyStore>() {
        return Ok(Arc::clone(&s.get().store));
    }
    let url: String = obj.extract()?;
    Ok(open_store(py, &url)?.store)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPathInfo>()?;
    m.add_class::<PyStore>()?;
    m.add_function(wrap_pyfunction!(open_store, m)?)?;
    Ok(())
}
