//! `StorePath` and store path computations.

use std::path::{Path, PathBuf};

use nixferry::nar;
use nixferry::store_path::{self, FileIngestion, StoreDir, StorePath};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors;
use crate::hash::PyNixHash;

/// A store path: a validated base name (`<hash>-<name>`) in a store
/// directory.
///
/// `str()` and `os.fspath()` give the full path.
///
/// >>> p = StorePath.parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")
/// >>> p.name
/// 'nixspec-hi.txt'
/// >>> p.hash_part
/// '3pl2infwzaw2zw5fxxp3pvm3xasr0w4b'
#[pyclass(module = "nixferry._native", name = "StorePath", frozen, eq, ord, hash)]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PyStorePath {
    pub(crate) dir: String,
    pub(crate) path: StorePath,
}

impl PyStorePath {
    /// A Python store path for `path` in `dir`.
    pub(crate) fn new(dir: &StoreDir, path: StorePath) -> Self {
        Self {
            dir: dir.as_str().to_owned(),
            path,
        }
    }
}

/// A store directory from Python.
pub(crate) fn store_dir(dir: &str) -> PyResult<StoreDir> {
    StoreDir::new(dir).map_err(|e| errors::store_path(&e))
}

/// A store path given as a `StorePath`, a full path in `dir` or a base name.
pub(crate) fn extract(obj: &Bound<'_, PyAny>, dir: &StoreDir) -> PyResult<StorePath> {
    if let Ok(p) = obj.downcast::<PyStorePath>() {
        let p = p.get();
        if p.dir != dir.as_str() {
            return Err(errors::new(
                "StorePathError",
                format!(
                    "path '{}/{}' is not in the store directory '{}'",
                    p.dir,
                    p.path.as_str(),
                    dir.as_str()
                ),
                Vec::new(),
            ));
        }
        return Ok(p.path.clone());
    }
    let s: String = if obj.is_instance_of::<PyString>() {
        obj.extract()?
    } else {
        let p: PathBuf = obj.extract()?;
        p.to_str()
            .ok_or_else(|| errors::new("StorePathError", "store paths are ASCII", Vec::new()))?
            .to_owned()
    };
    parse_str(&s, dir)
}

/// A full path in `dir`, or a base name.
fn parse_str(s: &str, dir: &StoreDir) -> PyResult<StorePath> {
    let parsed = if s.starts_with('/') {
        dir.parse(s)
    } else {
        StorePath::from_base_name(s)
    };
    parsed.map_err(|e| errors::store_path(&e))
}

#[pymethods]
impl PyStorePath {
    /// Parses a full store path (`/nix/store/<hash>-<name>`) or a base name.
    #[staticmethod]
    #[pyo3(signature = (path, store_dir = "/nix/store"))]
    fn parse(path: &str, store_dir: &str) -> PyResult<Self> {
        let dir = self::store_dir(store_dir)?;
        let p = parse_str(path, &dir)?;
        Ok(Self::new(&dir, p))
    }

    /// Makes the path with a 20-byte digest and a name.
    #[staticmethod]
    #[pyo3(signature = (digest, name, store_dir = "/nix/store"))]
    fn from_digest(digest: &[u8], name: &str, store_dir: &str) -> PyResult<Self> {
        let dir = self::store_dir(store_dir)?;
        let d: [u8; 20] = digest.try_into().map_err(|_| {
            errors::new(
                "StorePathError",
                format!("a store path digest has 20 bytes, not {}", digest.len()),
                Vec::new(),
            )
        })?;
        let p = StorePath::from_digest(&d, name).map_err(|e| errors::store_path(&e))?;
        Ok(Self::new(&dir, p))
    }

    /// The 32-character hash part.
    #[getter]
    fn hash_part(&self) -> &str {
        self.path.hash_part()
    }

    /// The name after the hash part.
    #[getter]
    fn name(&self) -> &str {
        self.path.name()
    }

    /// `<hash>-<name>`.
    #[getter]
    fn base_name(&self) -> &str {
        self.path.as_str()
    }

    /// The store directory, such as `/nix/store`.
    #[getter]
    fn store_dir(&self) -> &str {
        &self.dir
    }

    /// The 20-byte digest the hash part encodes.
    #[getter]
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.path.digest())
    }

    /// Whether the name ends in `.drv`.
    #[getter]
    fn is_derivation(&self) -> bool {
        self.path.is_derivation()
    }

    fn __str__(&self) -> String {
        format!("{}/{}", self.dir, self.path.as_str())
    }

    fn __fspath__(&self) -> String {
        self.__str__()
    }

    fn __repr__(&self) -> String {
        format!("StorePath('{}')", self.__str__())
    }
}

/// Checks a store path name (the part after `<hash>-`).
///
/// Raises `StorePathError` saying what is wrong.
///
/// >>> validate_name("hello-2.12")
/// >>> validate_name("a/b")
/// Traceback (most recent call last):
/// ...
/// nixferry.errors.StorePathError: ...
#[pyfunction]
fn validate_name(name: &str) -> PyResult<()> {
    store_path::validate_name(name).map_err(|e| errors::store_path(&e))
}

/// Whether `path` is a valid store path (a full path in `store_dir`, or a
/// base name).
#[pyfunction]
#[pyo3(signature = (path, store_dir = "/nix/store"))]
fn is_valid_path(path: &str, store_dir: &str) -> PyResult<bool> {
    let dir = self::store_dir(store_dir)?;
    Ok(parse_str(path, &dir).is_ok())
}

/// One store path (a `str` or `StorePath`), or an iterable of them.
pub(crate) fn extract_many(obj: &Bound<'_, PyAny>, dir: &StoreDir) -> PyResult<Vec<StorePath>> {
    if obj.is_instance_of::<PyString>() || obj.downcast::<PyStorePath>().is_ok() {
        return Ok(vec![extract(obj, dir)?]);
    }
    obj.try_iter()?.map(|p| extract(&p?, dir)).collect()
}

/// The name `nix-store --add` gives `path`: its last component as given.
pub(crate) fn default_name(path: &Path) -> PyResult<String> {
    store_path::added_name(path)
        .map_err(|e| errors::os_error(&e, "getting the current directory", None))?
        .ok_or_else(|| {
            errors::new(
                "StorePathError",
                format!("'{}' has no usable name; give name=", path.display()),
                Vec::new(),
            )
        })
}

/// The store path `nix-store --add PATH` would give: the NAR hash of the
/// tree at `path`, as a recursive SHA-256 content address.
///
/// The tree is read with the GIL released.
#[pyfunction]
#[pyo3(signature = (path, *, name = None, store_dir = "/nix/store"))]
fn add_path(
    py: Python<'_>,
    path: PathBuf,
    name: Option<String>,
    store_dir: &str,
) -> PyResult<PyStorePath> {
    let dir = self::store_dir(store_dir)?;
    let name = match name {
        Some(n) => n,
        None => default_name(&path)?,
    };
    store_path::validate_name(&name).map_err(|e| errors::store_path(&e))?;
    let summary =
        crate::blocking::run(py, |_| nar::hash_path(&path))?.map_err(|e| errors::nar(&e, None))?;
    let p = dir
        .make_fixed_output_path(
            &name,
            FileIngestion::Recursive,
            &summary.nar_hash,
            [],
            false,
        )
        .map_err(|e| errors::store_path(&e))?;
    Ok(PyStorePath::new(&dir, p))
}

/// The store directory `store_dir` and `references` parsed in it.
fn dir_and_references(
    store_dir: &str,
    references: &[Bound<'_, PyAny>],
) -> PyResult<(StoreDir, Vec<StorePath>)> {
    let dir = self::store_dir(store_dir)?;
    let refs = references
        .iter()
        .map(|r| extract(r, &dir))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((dir, refs))
}

/// The store path of a fixed-output path: `hash` over the file contents
/// (`recursive=False`, `nix-store --add-fixed`) or over its NAR
/// (`recursive=True`).
#[pyfunction]
#[pyo3(signature = (name, hash, *, recursive = true, references = None, store_dir = "/nix/store"))]
fn fixed_output_path(
    name: &str,
    hash: PyNixHash,
    recursive: bool,
    references: Option<Vec<Bound<'_, PyAny>>>,
    store_dir: &str,
) -> PyResult<PyStorePath> {
    let (dir, refs) = dir_and_references(store_dir, &references.unwrap_or_default())?;
    let method = if recursive {
        FileIngestion::Recursive
    } else {
        FileIngestion::Flat
    };
    let p = dir
        .make_fixed_output_path(name, method, &hash.0, refs.iter(), false)
        .map_err(|e| errors::store_path(&e))?;
    Ok(PyStorePath::new(&dir, p))
}

/// The store path of a text file (`builtins.toFile`, a `.drv`) with
/// contents `contents` referring to `references`.
///
/// >>> str(text_path("hello.txt", b"hello\n"))[:11]
/// '/nix/store/'
#[pyfunction]
#[pyo3(signature = (name, contents, *, references = None, store_dir = "/nix/store"))]
fn text_path(
    name: &str,
    contents: &[u8],
    references: Option<Vec<Bound<'_, PyAny>>>,
    store_dir: &str,
) -> PyResult<PyStorePath> {
    let (dir, refs) = dir_and_references(store_dir, &references.unwrap_or_default())?;
    let hash = nixferry::hash::NixHash::sha256(nixferry::hash::sha256(contents));
    let p = dir
        .make_text_path(name, &hash, refs.iter())
        .map_err(|e| errors::store_path(&e))?;
    Ok(PyStorePath::new(&dir, p))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStorePath>()?;
    m.add_function(wrap_pyfunction!(validate_name, m)?)?;
    m.add_function(wrap_pyfunction!(is_valid_path, m)?)?;
    m.add_function(wrap_pyfunction!(add_path, m)?)?;
    m.add_function(wrap_pyfunction!(fixed_output_path, m)?)?;
    m.add_function(wrap_pyfunction!(text_path, m)?)?;
    Ok(())
}
