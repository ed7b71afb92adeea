//! `serve` and `Server`: a store served as a binary cache over HTTP, by
//! the core's server running on the shared tokio runtime.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nixferry::narinfo::Compression;
use nixferry::server::{LogFormat, ServedStore, Server, ServerError};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::blocking;
use crate::errors;
use crate::signing::PySigningKey;
use crate::store::PyStore;

/// A server error as a Python exception: the store's errors as the store
/// calls raise them, an address or directory that fails as `OSError`,
/// settings that do not fit as `ValueError`.
fn error(e: &ServerError) -> PyErr {
    match e {
        ServerError::Store(s) => errors::store(s),
        ServerError::Bind { addr, source } => {
            errors::os_error(source, &format!("listening on {addr}"), None)
        }
        ServerError::CacheDir { path, source } => {
            errors::os_error(source, "opening the cache directory", Some(Path::new(path)))
        }
        ServerError::TokensFile { path, source } => {
            errors::os_error(source, "reading the tokens file", Some(Path::new(path)))
        }
        ServerError::Upstream { source, .. } => errors::store(source),
        ServerError::Task { .. } => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// A running binary cache server, made by `serve()`.
///
/// Stop it with `close()`, or use it as a context manager, which closes
/// it on exit. Closing is graceful: no new connections, requests in
/// flight given a few seconds to finish. A server that is garbage
/// collected unclosed stops accepting connections too.
///
/// >>> with serve("file:///tmp/cache") as server:  # doctest: +SKIP
/// ...     copy(server.url, "file:///tmp/other", ["/nix/store/...-hello"])
#[pyclass(module = "nixferry._native", name = "Server", frozen)]
pub(crate) struct PyServer {
    addr: SocketAddr,
    url: String,
    /// The running server; `None` once closed.
    running: Mutex<Option<Server>>,
}

#[pymethods]
impl PyServer {
    /// The server's URL, ``http://127.0.0.1:PORT``: what `open_store`,
    /// `copy` and Nix (as a substituter) take.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// The address listened on, ``(host, port)``.
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.addr.ip().to_string(), self.addr.port())
    }

    /// The port listened on (the one picked, when asked for port 0).
    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Whether the server was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.running.lock().map_or(true, |r| r.is_none())
    }

    /// Stops the server gracefully: it accepts no more connections and
    /// waits (a few seconds at most) for the requests in flight to be
    /// answered. Closing a closed server does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let server = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the server's lock is poisoned"))?
            .take();
        let Some(server) = server else {
            return Ok(());
        };
        blocking::run(py, move |_| crate::runtime().block_on(server.shutdown()))?
            .map_err(|e| error(&e))
    }

    /// Reads the tokens file (``serve(..., tokens_file=...)``) again and
    /// returns how many tokens it holds (0 without one). Raises
    /// ``ValueError`` for a malformed file, ``OSError`` for an unreadable
    /// one; the tokens stay as they were then.
    fn reload_tokens(&self) -> PyResult<usize> {
        let running = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the server's lock is poisoned"))?;
        match running.as_ref() {
            Some(server) => server.reload_tokens().map_err(|e| error(&e)),
            None => Err(PyValueError::new_err("the server is closed")),
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { "closed" } else { "running" };
        format!("Server(url='{}', {state})", self.url)
    }
}

/// Serves `store` (a `Store` or a URL) as a Nix binary cache over HTTP,
/// as `nixferry serve` does, and returns the running `Server`.
///
/// A ``file://`` cache is served as its files are; with ``writable=True``
/// it takes uploads (``PUT``) from clients presenting ``token`` (as
/// ``Authorization: Bearer TOKEN``, or as the password of basic
/// credentials), each checked before it is published: a NAR file must
/// hash to its name, a narinfo must describe the NAR file it names. A Nix
/// store (``local``) or another binary cache (``s3://``, ``http(s)://``)
/// is served with narinfos made on the fly, signed with ``secret_keys``,
/// and NARs compressed on the fly with ``compression`` (``"none"`` or
/// ``"zstd"``).
///
/// With ``tokens_file``, the cache is private: reads need a token of the
/// file too (lines ``read TOKEN`` or ``write TOKEN``), and get ``401``
/// without one; ``public_cache_info=True`` serves ``nix-cache-info`` to
/// anyone. `Server.reload_tokens()` reads the file again.
///
/// With ``upstreams`` (store URLs such as ``"https://cache.nixos.org"``,
/// or `Store` objects, in order of preference), what the store lacks is
/// fetched from them and served, if it carries a valid signature by one
/// of ``trusted_keys`` (``VerifyingKey`` objects or ``"name:base64"``
/// strings; default: Nix's, ``cache.nixos.org-1``); NAR files are
/// streamed as they come, checked on the way. An upstream that does not
/// answer within ``upstream_timeout`` seconds is left out for a few
/// seconds. ``cache_upstream`` (a store URL or `Store`, such as a
/// ``file://`` cache, the served one included) keeps what was served
/// from upstream: each path is copied there in the background, checked,
/// and served from there afterwards.
///
/// ``listen`` is ``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6); port 0
/// picks a free port. ``priority`` and ``want_mass_query`` are announced
/// in ``nix-cache-info``. ``verbose=True`` logs one line per request on
/// stderr once it is answered, as ``key=value`` pairs or, with
/// ``log_format="json"``, a JSON object.
///
/// Bounds: at most ``max_connections`` connections (more wait to be
/// accepted) and ``max_requests`` requests in flight (more wait their
/// turn); a request head must come within ``header_timeout`` seconds
/// (which also closes idle connections), and a connection that moves no
/// byte for ``io_timeout`` seconds while it uploads or downloads is
/// closed.
///
/// Raises ``ValueError`` for settings that do not fit the store (uploads
/// without a token or to a store that is not a ``file://`` cache, keys
/// for a ``file://`` cache), ``OSError`` when the address cannot be
/// listened on, and the store errors of `open_store`.
///
/// >>> with serve("file:///tmp/cache", priority=40) as server:  # doctest: +SKIP
/// ...     print(server.url)
/// http://127.0.0.1:41023
#[pyfunction]
#[pyo3(signature = (
    store, *, listen = "127.0.0.1:0", secret_keys = None, priority = None,
    want_mass_query = None, writable = false, token = None, tokens_file = None,
    public_cache_info = false, compression = "none", verbose = false,
    upstreams = None, trusted_keys = None, cache_upstream = None,
    upstream_timeout = 3.0, log_format = "text", max_connections = 10_000,
    max_requests = 512, header_timeout = 30.0, io_timeout = 60.0
))]
#[allow(clippy::too_many_arguments)]
fn serve(
    py: Python<'_>,
    store: &Bound<'_, PyAny>,
    listen: &str,
    secret_keys: Option<Vec<PySigningKey>>,
    priority: Option<i64>,
    want_mass_query: Option<bool>,
    writable: bool,
    token: Option<String>,
    tokens_file: Option<std::path::PathBuf>,
    public_cache_info: bool,
    compression: &str,
    verbose: bool,
    upstreams: Option<Vec<Bound<'_, PyAny>>>,
    trusted_keys: Option<Bound<'_, PyAny>>,
    cache_upstream: Option<Bound<'_, PyAny>>,
    upstream_timeout: f64,
    log_format: &str,
    max_connections: usize,
    max_requests: usize,
    header_timeout: f64,
    io_timeout: f64,
) -> PyResult<PyServer> {
    let listen: SocketAddr = listen.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "invalid address to listen on '{listen}': expected HOST:PORT such as 127.0.0.1:0"
        ))
    })?;
    // A URL is opened by the server, as it starts.
    let served = |store: &Bound<'_, PyAny>| -> PyResult<ServedStore> {
        Ok(match store.downcast::<PyStore>() {
            Ok(s) => ServedStore::Store(Arc::clone(&s.get().store)),
            Err(_) => ServedStore::Url(store.extract()?),
        })
    };
    let store = served(store)?;
    if !(upstream_timeout > 0.0 && upstream_timeout <= 3600.0) {
        return Err(PyValueError::new_err(format!(
            "upstream_timeout must be above 0 and at most 3600 seconds, not {upstream_timeout}"
        )));
    }
    let seconds = |name: &str, value: f64| {
        if value > 0.0 && value <= 86_400.0 {
            Ok(std::time::Duration::from_secs_f64(value))
        } else {
            Err(PyValueError::new_err(format!(
                "{name} must be above 0 and at most 86400 seconds, not {value}"
            )))
        }
    };
    let log_format = match log_format {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(PyValueError::new_err(format!(
                "log_format must be \"text\" or \"json\", not {other:?}"
            )))
        }
    };
    let mut builder = Server::builder(store)
        .listen(listen)
        .log_format(log_format)
        .max_connections(max_connections)
        .max_requests(max_requests)
        .header_timeout(seconds("header_timeout", header_timeout)?)
        .io_timeout(seconds("io_timeout", io_timeout)?)
        .secret_keys(secret_keys.unwrap_or_default().into_iter().map(|k| k.0))
        .writable(writable)
        .compression(Compression::parse(compression));
    if let Some(t) = token {
        builder = builder.token(t);
    }
    if let Some(f) = tokens_file {
        builder = builder.tokens_file(f).public_cache_info(public_cache_info);
    }
    if let Some(p) = priority {
        builder = builder.priority(p);
    }
    if let Some(w) = want_mass_query {
        builder = builder.want_mass_query(w);
    }
    if verbose {
        builder = builder.log(|line| eprintln!("{line}"));
    }
    for u in upstreams.iter().flatten() {
        builder = builder.upstream(served(u)?);
    }
    if let Some(k) = &trusted_keys {
        builder = builder.trusted_keys(crate::signing::trusted_keys(k)?);
    }
    if let Some(c) = &cache_upstream {
        builder = builder.cache_upstream(served(c)?);
    }
    builder = builder.upstream_timeout(std::time::Duration::from_secs_f64(upstream_timeout));
    let server = blocking::run(py, move |_| crate::runtime().block_on(builder.start()))?
        .map_err(|e| error(&e))?;
    Ok(PyServer {
        addr: server.local_addr(),
        url: server.url(),
        running: Mutex::new(Some(server)),
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServer>()?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    Ok(())
}
