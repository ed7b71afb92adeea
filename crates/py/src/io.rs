//! Inputs and outputs given from Python: paths, bytes and binary streams.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

use crate::blocking::Cancel;
use crate::errors;

/// Holds the first Python exception a stream raised, so that it reaches
/// the caller as it was rather than as an I/O error of the core.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot(Arc<Mutex<Option<PyErr>>>);

impl Slot {
    /// Keeps `e` unless an earlier exception is kept.
    fn keep(&self, e: PyErr) {
        if let Ok(mut kept) = self.0.lock() {
            kept.get_or_insert(e);
        }
    }

    /// The kept exception, if any.
    pub(crate) fn take(&self) -> Option<PyErr> {
        self.0.lock().ok().and_then(|mut kept| kept.take())
    }
}

/// The I/O error standing for a Python exception kept in a [`Slot`].
fn python_failed() -> io::Error {
    io::Error::other("the Python stream raised an exception")
}

/// A readable binary stream: anything with `read(n)` returning bytes.
#[derive(Debug)]
pub(crate) struct PyReader {
    obj: Py<PyAny>,
    slot: Slot,
}

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        Python::with_gil(|py| {
            let got = self
                .obj
                .bind(py)
                .call_method1("read", (buf.len(),))
                .and_then(|data| {
                    if data.is_none() {
                        // A non-blocking stream with nothing available.
                        return Err(pyo3::exceptions::PyBlockingIOError::new_err(
                            "the stream has no data available (non-blocking)",
                        ));
                    }
                    let bytes: Cow<'_, [u8]> = data.extract()?;
                    if bytes.len() > buf.len() {
                        return Err(pyo3::exceptions::PyValueError::new_err(
                            "read(n) returned more than n bytes",
                        ));
                    }
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Ok(bytes.len())
                });
            got.map_err(|e| {
                self.slot.keep(e);
                python_failed()
            })
        })
    }
}

/// A writable binary stream: anything with `write(bytes)`.
#[derive(Debug)]
pub(crate) struct PyWriter {
    obj: Py<PyAny>,
    slot: Slot,
}

impl PyWriter {
    /// A writer over `obj`, keeping its exceptions in `slot`.
    pub(crate) fn new(obj: Py<PyAny>, slot: Slot) -> Self {
        Self { obj, slot }
    }
}

impl Write for PyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Python::with_gil(|py| {
            let mut done = 0;
            // Raw streams may write less than asked; write the rest.
            while done < buf.len() {
                let data = PyBytes::new(py, &buf[done..]);
                match self.obj.bind(py).call_method1("write", (data,)) {
                    Ok(n) => match n.extract::<Option<usize>>() {
                        Ok(Some(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(Some(n)) => done += n.min(buf.len() - done),
                        Ok(None) => done = buf.len(),
                        Err(e) => {
                            self.slot.keep(e);
                            return Err(python_failed());
                        }
                    },
                    Err(e) => {
                        self.slot.keep(e);
                        return Err(python_failed());
                    }
                }
            }
            Ok(buf.len())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where input comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A file opened by path.
    File(File),
    /// The data of a `bytes` object (shared, not copied) or of a copy of
    /// another `bytes`-like object.
    Bytes(Cursor<PyBackedBytes>),
    /// A Python binary stream.
    Stream(PyReader),
}

impl Source {
    /// Whether reading needs no GIL, so that callers can release it.
    pub(crate) fn is_native(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::File(f) => f.read(buf),
            Self::Bytes(c) => c.read(buf),
            Self::Stream(s) => s.read(buf),
        }
    }
}

/// Whether `obj` names a file: a `str` or an `os.PathLike`.
pub(crate) fn is_path(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__").unwrap_or(false)
}

/// Opens an input: a path (`str` or `os.PathLike`), a `bytes`-like object,
/// or a binary stream with `read`.
///
/// # Errors
/// `OSError` when the file cannot be opened, `TypeError` for anything else.
pub(crate) fn source(obj: &Bound<'_, PyAny>, slot: &Slot) -> PyResult<Source> {
    if is_path(obj) {
        let path: PathBuf = obj.extract()?;
        let file = obj
            .py()
            .allow_threads(|| File::open(&path))
            .map_err(|e| errors::os_error(&e, "opening", Some(&path)))?;
        return Ok(Source::File(file));
    }
    if obj.is_instance_of::<PyBytes>()
        || obj.is_instance_of::<PyByteArray>()
        || obj.is_instance_of::<PyMemoryView>()
    {
        let data: PyBackedBytes = if obj.is_instance_of::<PyMemoryView>() {
            obj.call_method0("tobytes")?.extract()?
        } else {
            obj.extract()?
        };
        return Ok(Source::Bytes(Cursor::new(data)));
    }
    if obj.hasattr("read")? {
        return Ok(Source::Stream(PyReader {
            obj: obj.clone().unbind(),
            slot: slot.clone(),
        }));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "expected a path, bytes or a binary stream, got {}",
        obj.get_type().name()?
    )))
}

/// A reader or writer that fails once its work is cancelled.
#[derive(Debug)]
pub(crate) struct Cancellable<'c, T> {
    inner: T,
    cancel: &'c Cancel,
}

impl<'c, T> Cancellable<'c, T> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: T, cancel: &'c Cancel) -> Self {
        Self { inner, cancel }
    }

    /// The wrapped value.
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read> Read for Cancellable<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.read(buf)
    }
}

impl<T: Write> Write for Cancellable<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.cancel.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
