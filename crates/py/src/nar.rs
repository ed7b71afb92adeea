//! NAR functions and the entry reader.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;

use nixferry::nar::{self, Decoder, Entry, EntryKind, Event, NarError, NarSummary, RestoreOptions};
use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::blocking::{self, recv_released};
use crate::errors;
use crate::hash::PyNixHash;
use crate::io::{self as pyio, Cancellable, PyWriter, Slot, Source};

/// Input is read through a buffer of this size.
const INPUT_BUFFER: usize = 64 * 1024;

/// Chunks `dump_chunks` may be ahead of its consumer.
const CHUNKS_AHEAD: usize = 4;

/// The hash and size of a whole NAR (`NarHash` and `NarSize` of a narinfo).
#[pyclass(module = "nixferry._native", name = "NarSummary", frozen, eq)]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PyNarSummary {
    /// SHA-256 of the NAR.
    #[pyo3(get)]
    nar_hash: PyNixHash,
    /// Size of the NAR in bytes.
    #[pyo3(get)]
    nar_size: u64,
}

impl From<NarSummary> for PyNarSummary {
    fn from(s: NarSummary) -> Self {
        Self {
            nar_hash: PyNixHash(s.nar_hash),
            nar_size: s.nar_size,
        }
    }
}

#[pymethods]
impl PyNarSummary {
    fn __repr__(&self) -> String {
        format!(
            "NarSummary(nar_hash='{}', nar_size={})",
            self.nar_hash.0, self.nar_size
        )
    }
}

/// Raw NAR bytes as a `str`, decoded as `os.fsdecode` does.
fn fs_str<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    Ok(OsStr::from_bytes(b).into_pyobject(py)?.into_any())
}

/// Writes the NAR of the file-system object at `path` to `out`, as
/// `nix-store --dump` does, and returns its size in bytes.
///
/// `out` is a file path (the file is created or truncated) or a writable
/// binary stream. With `sync=True`, a file path is flushed to disk before
/// returning. The tree is read and the NAR written with the GIL released.
///
/// >>> import io, tempfile, pathlib
/// >>> d = pathlib.Path(tempfile.mkdtemp())
/// >>> _ = (d / "hello.txt").write_text("hello\n")
/// >>> buf = io.BytesIO()
/// >>> dump(d, buf) == len(buf.getvalue())
/// True
#[pyfunction]
#[pyo3(signature = (path, out, *, sync = false))]
fn dump(py: Python<'_>, path: PathBuf, out: &Bound<'_, PyAny>, sync: bool) -> PyResult<u64> {
    if pyio::is_path(out) {
        let target: PathBuf = out.extract()?;
        // A plain `File`, so that the kernel can copy file contents.
        let result = blocking::run(py, |_| -> Result<u64, PyErr> {
            let mut f = File::create(&target)
                .map_err(|e| errors::os_error(&e, "creating", Some(&target)))?;
            let n = nar::dump_unhashed(&path, &mut f).map_err(|e| errors::nar(&e, None))?;
            if sync {
                f.sync_all()
                    .map_err(|e| errors::os_error(&e, "writing", Some(&target)))?;
            }
            Ok(n)
        })?;
        return result;
    }
    if !out.hasattr("write")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "out must be a path or a writable binary stream",
        ));
    }
    let slot = Slot::default();
    let writer = PyWriter::new(out.clone().unbind(), slot.clone());
    let result = blocking::run(py, |cancel| {
        let mut w = io::BufWriter::with_capacity(INPUT_BUFFER, Cancellable::new(writer, cancel));
        nar::dump_unhashed(&path, &mut w).and_then(|n| {
            w.flush()?;
            Ok(n)
        })
    })?;
    result.map_err(|e| errors::nar(&e, Some(&slot)))
}

/// The NAR of the object at `path` as `bytes` (for small trees; see
/// `dump_chunks` for large ones).
#[pyfunction]
fn dump_bytes<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyBytes>> {
    let result = blocking::run(py, |cancel| {
        let mut out = Cancellable::new(Vec::new(), cancel);
        nar::dump_unhashed(&path, &mut out).map(|_| out.into_inner())
    })?;
    let bytes = result.map_err(|e| errors::nar(&e, None))?;
    Ok(PyBytes::new(py, &bytes))
}

/// What the dumping thread sends to a [`DumpChunks`] iterator.
enum ChunkMsg {
    Data(Vec<u8>),
    Done(Result<u64, NarError>),
}

/// A writer that sends full chunks down a channel.
struct ChunkWriter {
    tx: SyncSender<ChunkMsg>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .send(ChunkMsg::Data(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the iterator was dropped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

/// An iterator over the NAR of a path, in `bytes` chunks, made on a
/// background thread a few chunks ahead of the consumer.
#[pyclass(module = "nixferry._native", name = "DumpChunks", frozen)]
pub(crate) struct DumpChunks {
    rx: Mutex<Option<Receiver<ChunkMsg>>>,
}

#[pymethods]
impl DumpChunks {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut guard = self
            .rx
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("the iterator is in use by another thread"))?;
        let Some(mut rx) = guard.take() else {
            return Err(PyStopIteration::new_err(()));
        };
        loop {
            let (back, got) = recv_released(py, rx);
            rx = back;
            match got {
                Ok(ChunkMsg::Data(d)) => {
                    *guard = Some(rx);
                    return Ok(PyBytes::new(py, &d));
                }
                Ok(ChunkMsg::Done(Ok(_))) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(PyStopIteration::new_err(()))
                }
                Ok(ChunkMsg::Done(Err(e))) => return Err(errors::nar(&e, None)),
                // Dropping the receiver on an interrupt stops the dump.
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            }
        }
    }
}

/// Iterates over the NAR of the object at `path` in chunks of about
/// `chunk_size` bytes, made on a background thread.
///
/// >>> import tempfile, pathlib
/// >>> f = pathlib.Path(tempfile.mkdtemp()) / "hi"
/// >>> _ = f.write_bytes(b"hi")
/// >>> len(b"".join(dump_chunks(f)))
/// 120
#[pyfunction]
#[pyo3(signature = (path, chunk_size = 1048576))]
fn dump_chunks(path: PathBuf, chunk_size: usize) -> PyResult<DumpChunks> {
    if chunk_size == 0 {
        return Err(PyValueError::new_err("chunk_size must be positive"));
    }
    let (tx, rx) = mpsc::sync_channel(CHUNKS_AHEAD);
    std::thread::Builder::new()
        .name("nixferry-dump".into())
        .spawn(move || {
            let mut w = ChunkWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(chunk_size),
                chunk: chunk_size,
            };
            let result = nar::dump_unhashed(&path, &mut w).and_then(|n| {
                w.flush()?;
                Ok(n)
            });
            let _ = tx.send(ChunkMsg::Done(result));
        })
        .map_err(|e| errors::os_error(&e, "starting a thread", None))?;
    Ok(DumpChunks {
        rx: Mutex::new(Some(rx)),
    })
}

/// The NAR hash and size of the object at `path`, without keeping the NAR
/// (what `nix hash path` and `nix-store --add` compute).
///
/// >>> import tempfile, pathlib
/// >>> f = pathlib.Path(tempfile.mkdtemp()) / "hi"
/// >>> _ = f.write_bytes(b"hi")
/// >>> str(hash_path(f).nar_hash)
/// 'sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2'
#[pyfunction]
fn hash_path(py: Python<'_>, path: PathBuf) -> PyResult<PyNarSummary> {
    blocking::run(py, |_| nar::hash_path(&path))?
        .map(Into::into)
        .map_err(|e| errors::nar(&e, None))
}

/// Runs `work` over an opened source, without the GIL when it can.
fn with_source<T: Send>(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    work: impl FnOnce(Cancellable<'_, Source>) -> Result<T, NarError> + Send,
) -> PyResult<T> {
    let slot = Slot::default();
    let src = pyio::source(source, &slot)?;
    let result = blocking::run(py, |cancel| work(Cancellable::new(src, cancel)))?;
    result.map_err(|e| errors::nar(&e, Some(&slot)))
}

/// Reads a whole NAR strictly and returns its hash and size.
///
/// `source` is a file path, `bytes`, or a readable binary stream. Raises
/// `InvalidNarError` (with `offset`, `path` and `reason`) for any archive
/// that is not canonical, including data after its end.
#[pyfunction]
fn validate(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<PyNarSummary> {
    with_source(py, source, |src| {
        nar::validate(BufReader::with_capacity(INPUT_BUFFER, src))
    })
    .map(Into::into)
}

/// Unpacks the NAR in `source` at `dest` and returns its hash and size.
///
/// `dest` must not exist unless `overwrite=True`; nothing is ever written
/// outside it, and on any error everything created is removed again.
/// Raises `FileExistsError` when `dest` exists.
#[pyfunction]
#[pyo3(signature = (source, dest, *, overwrite = false))]
fn restore(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    dest: PathBuf,
    overwrite: bool,
) -> PyResult<PyNarSummary> {
    let opts = RestoreOptions {
        overwrite,
        ..RestoreOptions::default()
    };
    with_source(py, source, |src| nar::restore(src, &dest, &opts)).map(Into::into)
}

/// The contents of the regular file at `path` (`a/b`, without a leading
/// `/`) inside the NAR in `source`, without unpacking it.
///
/// Raises `NarPathNotFoundError` when the NAR has no such entry, `NarError`
/// when it is not a regular file.
#[pyfunction]
fn cat<'py>(
    py: Python<'py>,
    source: &Bound<'py, PyAny>,
    path: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let want: Vec<u8> = if let Ok(s) = path.extract::<PathBuf>() {
        s.into_os_string().into_encoded_bytes()
    } else {
        path.extract()?
    };
    let want = want.strip_prefix(b"/").unwrap_or(&want).to_vec();
    let data = with_source(py, source, |src| {
        let mut out = Vec::new();
        nar::cat(BufReader::with_capacity(INPUT_BUFFER, src), &want, &mut out)?;
        Ok(out)
    })?;
    Ok(PyBytes::new(py, &data))
}

/// Every entry of the NAR in `source`, in NAR order, without contents
/// (their `read()` raises).
#[pyfunction]
fn list(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<Vec<NarEntry>> {
    let listing = with_source(py, source, |src| nar::list(src))?;
    Ok(listing
        .iter()
        .map(|e| NarEntry::new(e.clone(), None, 0))
        .collect())
}

/// The `.ls` listing of the NAR in `source`, as the JSON text Nix writes
/// beside a NAR in a binary cache (`write-nar-listing=1`).
#[pyfunction]
fn listing_json(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<String> {
    let listing = with_source(py, source, |src| nar::list(src))?;
    Ok(listing.to_json())
}

/// The state of a [`NarReader`].
struct ReaderState {
    decoder: Option<Decoder<BufReader<Source>>>,
    /// Incremented for each entry; an entry's contents can be read while
    /// its number is the current one.
    serial: u64,
    summary: Option<NarSummary>,
    allow_trailing: bool,
    native: bool,
    slot: Slot,
}

impl ReaderState {
    /// Runs `f` on the decoder, without the GIL when the source needs none.
    fn with_decoder<T: Send>(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut Decoder<BufReader<Source>>) -> Result<T, NarError> + Send,
    ) -> PyResult<T> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Err(errors::new(
                "NarError",
                "the NAR reader is closed",
                Vec::new(),
            ));
        };
        let result = if self.native {
            py.allow_threads(|| f(decoder))
        } else {
            f(decoder)
        };
        result.map_err(|e| errors::nar(&e, Some(&self.slot)))
    }
}

/// A streaming reader over the entries of a NAR.
///
/// Iterating yields one `NarEntry` per node: the root first, then a
/// directory's entries by name, depth first. The contents of a regular file
/// can be read (`entry.read()`, `entry.open()`) until the next entry is
/// asked for; unread contents are skipped, still checked. The archive is
/// read strictly: a non-canonical NAR raises `InvalidNarError`. After the
/// last entry, `summary` holds the NAR's hash and size.
///
/// ```text
/// with NarReader("tree.nar") as reader:
///     for entry in reader:
///         if entry.type == "regular":
///             print(entry.path, entry.read())
///     print(reader.summary.nar_hash)
/// ```
#[pyclass(module = "nixferry._native", name = "NarReader", frozen)]
pub(crate) struct NarReader {
    state: Mutex<ReaderState>,
}

impl NarReader {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, ReaderState>> {
        self.state
            .try_lock()
            .map_err(|_| PyRuntimeError::new_err("the NAR reader is in use by another thread"))
    }
}

#[pymethods]
impl NarReader {
    /// Opens a reader over `source`: a file path, `bytes`, or a readable
    /// binary stream. With `allow_trailing=True`, data after the NAR is
    /// left unread instead of being an error.
    #[new]
    #[pyo3(signature = (source, *, allow_trailing = false))]
    fn new(source: &Bound<'_, PyAny>, allow_trailing: bool) -> PyResult<Self> {
        let slot = Slot::default();
        let src = pyio::source(source, &slot)?;
        let native = src.is_native();
        // A stream is read exactly up to the end of the NAR, as the caller
        // may go on reading it; the others are buffered.
        let capacity = if native || !allow_trailing {
            INPUT_BUFFER
        } else {
            1
        };
        Ok(Self {
            state: Mutex::new(ReaderState {
                decoder: Some(Decoder::new(BufReader::with_capacity(capacity, src))),
                serial: 0,
                summary: None,
                allow_trailing,
                native,
                slot,
            }),
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(slf: Bound<'_, Self>) -> PyResult<NarEntry> {
        let py = slf.py();
        let this = slf.get();
        let mut guard = this.lock()?;
        let st = &mut *guard;
        if st.decoder.is_none() {
            return Err(PyStopIteration::new_err(()));
        }
        let event = st.with_decoder(py, |d| loop {
            match d.next_event()? {
                Some(Event::Entry(e)) => return Ok(Some(e)),
                Some(Event::EndDirectory) => continue,
                None => return Ok(None),
            }
        })?;
        match event {
            Some(entry) => {
                st.serial += 1;
                Ok(NarEntry::new(entry, Some(slf.clone().unbind()), st.serial))
            }
            None => {
                st.serial += 1;
                if !st.allow_trailing {
                    st.with_decoder(py, Decoder::expect_eof)?;
                }
                if let Some(d) = st.decoder.take() {
                    let (_, summary) = d.finish().map_err(|e| errors::nar(&e, None))?;
                    st.summary = Some(summary);
                }
                Err(PyStopIteration::new_err(()))
            }
        }
    }

    /// The hash and size of the NAR, once every entry has been read;
    /// `None` before.
    #[getter]
    fn summary(&self) -> PyResult<Option<PyNarSummary>> {
        Ok(self.lock()?.summary.map(Into::into))
    }

    /// Stops reading; entries can no longer be read.
    fn close(&self) -> PyResult<()> {
        let mut st = self.lock()?;
        st.decoder = None;
        st.serial += 1;
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close()?;
        Ok(false)
    }
}

/// Reads up to `size` bytes (all that remain when `None`) of the current
/// file of `reader`, if entry `serial` is still current.
fn read_current(
    py: Python<'_>,
    reader: &Py<NarReader>,
    serial: u64,
    size: Option<usize>,
) -> PyResult<Vec<u8>> {
    let this = reader.get();
    let mut st = this.lock()?;
    if st.serial != serial || st.decoder.is_none() {
        return Err(errors::new(
            "NarError",
            "the entry's contents can only be read before the reader moves on",
            Vec::new(),
        ));
    }
    st.with_decoder(py, |d| {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; size.unwrap_or(256 * 1024).clamp(1, 256 * 1024)];
        loop {
            let want = match size {
                Some(s) => (s - out.len()).min(chunk.len()),
                None => chunk.len(),
            };
            if want == 0 {
                break;
            }
            let n = d.read_contents(&mut chunk[..want])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(out)
    })
}

/// One node of a NAR: a regular file, a symlink or a directory.
///
/// `path` is relative to the NAR's root (`""` for the root itself) with
/// names joined by `/`; names are bytes in a NAR, so `path` decodes them
/// as `os.fsdecode` does and `path_bytes` gives them raw.
#[pyclass(module = "nixferry._native", name = "NarEntry", frozen)]
pub(crate) struct NarEntry {
    entry: Entry,
    reader: Option<Py<NarReader>>,
    serial: u64,
}

impl NarEntry {
    fn new(entry: Entry, reader: Option<Py<NarReader>>, serial: u64) -> Self {
        Self {
            entry,
            reader,
            serial,
        }
    }

    fn reader(&self) -> PyResult<&Py<NarReader>> {
        match (&self.reader, &self.entry.kind) {
            (Some(r), EntryKind::Regular { .. }) => Ok(r),
            (None, _) => Err(errors::new(
                "NarError",
                "this entry comes from a listing and has no contents to read",
                Vec::new(),
            )),
            _ => Err(errors::new(
                "NarError",
                format!("a {} has no contents", self.entry.kind.type_name()),
                Vec::new(),
            )),
        }
    }
}

#[pymethods]
impl NarEntry {
    /// The path relative to the root, `""` for the root.
    #[getter]
    fn path<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        fs_str(py, &self.entry.path)
    }

    /// The path as raw bytes.
    #[getter]
    fn path_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.entry.path)
    }

    /// The last component of the path (`""` for the root).
    #[getter]
    fn name<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        fs_str(py, self.entry.name())
    }

    /// How deep the entry is: 0 for the root.
    #[getter]
    fn depth(&self) -> usize {
        self.entry.depth()
    }

    /// `"regular"`, `"symlink"` or `"directory"`.
    #[getter]
    fn r#type(&self) -> &'static str {
        self.entry.kind.type_name()
    }

    /// The size of a regular file's contents; `None` for other types.
    #[getter]
    fn size(&self) -> Option<u64> {
        match self.entry.kind {
            EntryKind::Regular { size, .. } => Some(size),
            _ => None,
        }
    }

    /// Whether a regular file is executable (`False` for other types).
    #[getter]
    fn executable(&self) -> bool {
        matches!(
            self.entry.kind,
            EntryKind::Regular {
                executable: true,
                ..
            }
        )
    }

    /// The NAR offset of a regular file's first content byte (`narOffset`
    /// in `.ls` listings); `None` for other types.
    #[getter]
    fn offset(&self) -> Option<u64> {
        match self.entry.kind {
            EntryKind::Regular { offset, .. } => Some(offset),
            _ => None,
        }
    }

    /// A symlink's target; `None` for other types.
    #[getter]
    fn target<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.entry.kind {
            EntryKind::Symlink { target } => fs_str(py, target).map(Some),
            _ => Ok(None),
        }
    }

    /// A symlink's target as raw bytes; `None` for other types.
    #[getter]
    fn target_bytes<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        match &self.entry.kind {
            EntryKind::Symlink { target } => Some(PyBytes::new(py, target)),
            _ => None,
        }
    }

    /// Reads up to `size` bytes of a regular file's contents (all that
    /// remain when `size` is negative), while the entry is current.
    #[pyo3(signature = (size = -1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let reader = self.reader()?;
        let size = usize::try_from(size).ok();
        let data = read_current(py, reader, self.serial, size)?;
        Ok(PyBytes::new(py, &data))
    }

    /// A binary reader over a regular file's contents, valid while the
    /// entry is current.
    fn open(&self, py: Python<'_>) -> PyResult<NarContents> {
        let reader = self.reader()?;
        Ok(NarContents {
            reader: reader.clone_ref(py),
            serial: self.serial,
        })
    }

    fn __repr__(&self) -> String {
        let path = String::from_utf8_lossy(&self.entry.path);
        match &self.entry.kind {
            EntryKind::Regular {
                executable, size, ..
            } => format!(
                "NarEntry(path='{path}', type='regular', size={size}, executable={})",
                if *executable { "True" } else { "False" }
            ),
            EntryKind::Symlink { target } => format!(
                "NarEntry(path='{path}', type='symlink', target='{}')",
                String::from_utf8_lossy(target)
            ),
            EntryKind::Directory => format!("NarEntry(path='{path}', type='directory')"),
        }
    }
}

/// A read-only binary stream over the contents of one file of a NAR being
/// read by a `NarReader`. Iterating yields chunks.
#[pyclass(module = "nixferry._native", name = "NarContents", frozen)]
pub(crate) struct NarContents {
    reader: Py<NarReader>,
    serial: u64,
}

#[pymethods]
impl NarContents {
    /// Reads up to `size` bytes (all that remain when negative); `b""` at
    /// the end.
    #[pyo3(signature = (size = -1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let data = read_current(py, &self.reader, self.serial, usize::try_from(size).ok())?;
        Ok(PyBytes::new(py, &data))
    }

    /// Always `True`.
    fn readable(&self) -> bool {
        true
    }

    /// Does nothing: the contents belong to the reader.
    fn close(&self) {}

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = read_current(py, &self.reader, self.serial, Some(256 * 1024))?;
        if data.is_empty() {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(PyBytes::new(py, &data))
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        false
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNarSummary>()?;
    m.add_class::<DumpChunks>()?;
    m.add_class::<NarReader>()?;
    m.add_class::<NarEntry>()?;
    m.add_class::<NarContents>()?;
    m.add_function(wrap_pyfunction!(dump, m)?)?;
    m.add_function(wrap_pyfunction!(dump_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(dump_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(hash_path, m)?)?;
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_function(wrap_pyfunction!(restore, m)?)?;
    m.add_function(wrap_pyfunction!(cat, m)?)?;
    m.add_function(wrap_pyfunction!(list, m)?)?;
    m.add_function(wrap_pyfunction!(listing_json, m)?)?;
    Ok(())
}
