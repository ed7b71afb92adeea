//! The native half of the `nixferry` Python package (`nixferry._native`).
//!
//! This crate only adapts the `nixferry` core to Python: it converts
//! arguments and results, maps errors to the exception classes of
//! `nixferry.errors`, and runs every call that does I/O or heavy CPU work
//! with the GIL released. It holds no format logic of its own.
//!
//! # Design
//!
//! - **Blocking work** goes through one helper, [`blocking::run`]: the work
//!   runs on a scoped worker thread while the calling thread waits without
//!   the GIL, waking up a few times a second to let Python run its signal
//!   handlers. Ctrl-C raises `KeyboardInterrupt` in the caller and sets a
//!   cancellation flag that the work's readers and writers check, so the
//!   work stops soon after.
//! - **Async stores** run on one small multi-threaded tokio runtime shared
//!   by the whole process ([`runtime`]).
//! - **Python streams** are read and written through adapters that take
//!   the GIL for each call ([`io`]); a Python exception raised by a stream
//!   is kept and re-raised as it is.
//! - **Errors** ([`errors`]) become instances of the classes defined in
//!   Python (`nixferry/errors.py`), with the core's message and, where it
//!   helps, attributes; operating-system errors on files become
//!   `FileNotFoundError`, `PermissionError` and the other `OSError`
//!   subclasses, with `errno` and `filename`.

// The crate has no Rust API: these docs are for the module's maintainers
// and point them to its private modules.
#![allow(rustdoc::private_intra_doc_links)]

use std::sync::OnceLock;

use pyo3::prelude::*;

mod blocking;
mod cache;
mod check;
mod config;
mod copy;
mod errors;
mod hash;
mod io;
mod nar;
mod narinfo;
mod server;
mod signing;
mod store;
mod store_path;

/// The tokio runtime that runs store operations: two workers, as the
/// bindings' own threads do the waiting.
///
/// # Panics
/// If the operating system refuses to start the runtime's threads.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nixferry-tokio")
            .enable_all()
            .build()
            .expect("starting the tokio runtime for nixferry")
    })
}

/// The module `nixferry._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    hash::register(m)?;
    store_path::register(m)?;
    nar::register(m)?;
    signing::register(m)?;
    narinfo::register(m)?;
    store::register(m)?;
    copy::register(m)?;
    server::register(m)?;
    cache::register(m)?;
    check::register(m)?;
    config::register(m)?;
    Ok(())
}
