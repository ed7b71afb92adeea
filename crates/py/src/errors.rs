//! Core errors as Python exceptions (the classes of `nixferry/errors.py`).

use std::io;
use std::path::Path;

use nixferry::closure::ClosureError;
use nixferry::hash::HashError;
use nixferry::nar::NarError;
use nixferry::narinfo::NarInfoError;
use nixferry::signing::{SigningError, VerifyError};
use nixferry::store::StoreError;
use nixferry::store_path::StorePathError;
use pyo3::exceptions::{PyFileExistsError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::IntoPyObjectExt;

use crate::io::Slot;

/// An attribute value for an exception.
pub(crate) type Attr = (&'static str, PyObject);

/// An instance of `nixferry.errors.<class>` with `message` and `attrs`.
pub(crate) fn new(class: &str, message: impl ToString, attrs: Vec<Attr>) -> PyErr {
    let message = message.to_string();
    Python::with_gil(|py| {
        let made = (|| -> PyResult<PyErr> {
            let cls = py.import("nixferry.errors")?.getattr(class)?;
            let value = cls.call1((message,))?;
            for (name, v) in attrs {
                value.setattr(name, v)?;
            }
            Ok(PyErr::from_value(value))
        })();
        made.unwrap_or_else(|e| e)
    })
}

/// The text of an I/O error without Rust's ` (os error N)` suffix.
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// An operating-system error on `path` as Python's `OSError`, which picks
/// the subclass (`FileNotFoundError`, `PermissionError`, ...) from
/// `errno`, as `open()` does.
pub(crate) fn os_error(e: &io::Error, what: &str, path: Option<&Path>) -> PyErr {
    let message = format!("{} ({what})", describe(e));
    let errno = e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::NotFound => 2,
        io::ErrorKind::PermissionDenied => 13,
        io::ErrorKind::AlreadyExists => 17,
        _ => 0,
    });
    match (errno, path) {
        (0, _) => PyOSError::new_err(message),
        (n, Some(p)) => PyOSError::new_err((n, message, p.as_os_str().to_owned())),
        (n, None) => PyOSError::new_err((n, message)),
    }
}

/// Any value as a Python object (`None` if it cannot be converted).
pub(crate) fn obj<'py, T: IntoPyObjectExt<'py>>(py: Python<'py>, v: T) -> PyObject {
    v.into_py_any(py).unwrap_or_else(|_| py.None())
}

/// Bytes as a Python `bytes` object.
fn bytes(py: Python<'_>, b: &[u8]) -> PyObject {
    PyBytes::new(py, b).into_any().unbind()
}

/// A NAR error; a Python stream's exception kept in `slot` wins.
pub(crate) fn nar(e: &NarError, slot: Option<&Slot>) -> PyErr {
    if let Some(kept) = slot.and_then(Slot::take) {
        return kept;
    }
    Python::with_gil(|py| match e {
        NarError::Invalid(inv) => new(
            "InvalidNarError",
            e,
            vec![
                ("offset", obj(py, inv.offset)),
                ("path", bytes(py, &inv.path)),
                ("reason", obj(py, inv.reason.to_string())),
            ],
        ),
        NarError::Fs { op, path, source } => os_error(source, op, Some(path)),
        NarError::Io(source) => os_error(source, "NAR I/O", None),
        NarError::TargetExists { path } => {
            PyFileExistsError::new_err((17, e.to_string(), path.as_os_str().to_owned()))
        }
        NarError::NotFound { path } => {
            new("NarPathNotFoundError", e, vec![("path", bytes(py, path))])
        }
        _ => new("NarError", e, Vec::new()),
    })
}

/// A narinfo error.
pub(crate) fn narinfo(e: &NarInfoError) -> PyErr {
    new("NarInfoError", e, Vec::new())
}

/// A hash error.
pub(crate) fn hash(e: &HashError) -> PyErr {
    new("HashError", e, Vec::new())
}

/// A store path error.
pub(crate) fn store_path(e: &StorePathError) -> PyErr {
    new("StorePathError", e, Vec::new())
}

/// A key or signature error.
pub(crate) fn signing(e: &SigningError) -> PyErr {
    match e {
        SigningError::Verify(v) => verify(v),
        _ => new("SignatureError", e, Vec::new()),
    }
}

/// A verification failure, with `reason` and `key_names`.
pub(crate) fn verify(e: &VerifyError) -> PyErr {
    Python::with_gil(|py| {
        let (reason, names): (&str, Vec<String>) = match e {
            VerifyError::NoSignatures => ("no-signatures", Vec::new()),
            VerifyError::UntrustedKeys { key_names } => ("untrusted-keys", key_names.clone()),
            VerifyError::BadSignature { key_name } => ("bad-signature", vec![key_name.clone()]),
            VerifyError::Unnamed { .. } => ("unnamed", Vec::new()),
            _ => ("other", Vec::new()),
        };
        new(
            "VerificationError",
            e,
            vec![("reason", obj(py, reason)), ("key_names", obj(py, names))],
        )
    })
}

/// A store error.
pub(crate) fn store(e: &StoreError) -> PyErr {
    match e {
        StoreError::Shared(inner) => store(inner),
        StoreError::Url(_) => new("StoreUrlError", e, Vec::new()),
        StoreError::NotFound { path, .. } => {
            Python::with_gil(|py| new("PathNotFoundError", e, vec![("path", obj(py, path))]))
        }
        StoreError::Io { what, path, source }
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            os_error(source, what, Some(Path::new(path)))
        }
        StoreError::Nar(n) => nar(n, None),
        StoreError::NarInfo(n) => narinfo(n),
        StoreError::StorePath(p) => store_path(p),
        StoreError::Connection { .. } | StoreError::Login { .. } => {
            new("StoreConnectionError", e, Vec::new())
        }
        _ => new("StoreError", e, Vec::new()),
    }
}

/// A closure error.
pub(crate) fn closure(e: &ClosureError) -> PyErr {
    match e {
        ClosureError::Store(s) => store(s),
        _ => new("ClosureError", e, Vec::new()),
    }
}
