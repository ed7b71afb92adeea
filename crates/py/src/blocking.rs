//! [`run`]: work without the GIL, interruptible by Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use pyo3::prelude::*;

/// How often a waiting caller takes the GIL back to run signal handlers.
/// Short enough that Ctrl-C feels immediate, long enough to cost nothing.
pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Waits up to [`SIGNAL_POLL`] for a message on `rx` with the GIL
/// released. The receiver goes into the waiting closure and comes back
/// with the result (it is not `Sync`, so it cannot be lent to it).
pub(crate) fn recv_released<T: Send>(
    py: Python<'_>,
    rx: mpsc::Receiver<T>,
) -> (mpsc::Receiver<T>, Result<T, RecvTimeoutError>) {
    py.allow_threads(move || {
        let got = rx.recv_timeout(SIGNAL_POLL);
        (rx, got)
    })
}

/// A flag that work running in [`run`] checks to stop early.
#[derive(Debug, Default)]
pub(crate) struct Cancel(AtomicBool);

impl Cancel {
    /// Whether the caller was interrupted.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Asks the work to stop.
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// `Err` once cancelled: the error readers and writers return to stop
    /// the work they feed.
    pub(crate) fn check(&self) -> std::io::Result<()> {
        if self.is_set() {
            Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ))
        } else {
            Ok(())
        }
    }
}

/// Runs `work` on a worker thread while the calling thread waits without
/// the GIL.
///
/// Every [`SIGNAL_POLL`] the caller takes the GIL back and lets Python run
/// its signal handlers. When one raises (Ctrl-C gives `KeyboardInterrupt`),
/// the [`Cancel`] flag is set, the work is waited for (its readers and
/// writers fail at their next call), and the handler's exception is
/// returned instead of the work's result.
///
/// # Errors
/// The exception of a signal handler.
pub(crate) fn run<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> T + Send,
{
    let cancel = Cancel::default();
    std::thread::scope(|scope| {
        let (tx, mut rx) = mpsc::sync_channel(1);
        let flag = &cancel;
        scope.spawn(move || {
            // The receiver is only gone if the caller panicked.
            let _ = tx.send(work(flag));
        });
        let mut interrupted: Option<PyErr> = None;
        loop {
            let (back, got) = recv_released(py, rx);
            rx = back;
            match got {
                Ok(value) => {
                    return match interrupted {
                        Some(e) => Err(e),
                        None => Ok(value),
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if interrupted.is_none() {
                        if let Err(e) = py.check_signals() {
                            cancel.set();
                            interrupted = Some(e);
                        }
                    }
                }
                // The worker panicked; leaving the scope re-raises the
                // panic, which pyo3 turns into an exception.
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "nixferry worker thread failed",
                    ))
                }
            }
        }
    })
}
