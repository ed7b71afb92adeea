//! Tasks that each stand for something (a path, a destination), so that a
//! task that panics or is cancelled is still accounted for.

use std::collections::HashMap;
use std::future::Future;

use std::fmt;

use tokio::task::{Id, JoinError, JoinSet};

use super::CopyError;
use crate::store::StoreError;

/// A [`JoinSet`] whose tasks each carry a key saying what they are for.
pub(super) struct Keyed<K, T> {
    set: JoinSet<T>,
    keys: HashMap<Id, K>,
}

impl<K, T: Send + 'static> Keyed<K, T> {
    pub(super) fn new() -> Self {
        Self {
            set: JoinSet::new(),
            keys: HashMap::new(),
        }
    }

    /// Runs `task` for `key`.
    pub(super) fn spawn<F>(&mut self, key: K, task: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.keys.insert(handle.id(), key);
    }

    /// The next task to end, with its key: its output, or how it died.
    pub(super) async fn next(&mut self) -> Option<(K, Result<T, JoinError>)> {
        loop {
            let (id, result) = match self.set.join_next_with_id().await? {
                Ok((id, output)) => (id, Ok(output)),
                Err(e) => (e.id(), Err(e)),
            };
            // Every task was spawned with a key.
            if let Some(key) = self.keys.remove(&id) {
                return Some((key, result));
            }
        }
    }
}

/// A task's result, or the failure of a task that died while doing `what`.
pub(super) fn or_died<T>(
    joined: Result<Result<T, CopyError>, JoinError>,
    what: impl fmt::Display,
) -> Result<T, CopyError> {
    joined.unwrap_or_else(|e| Err(died(e, what)))
}

/// The failure of a task that died (panicked or was cancelled) while
/// doing `what`.
pub(super) fn died(e: JoinError, what: impl fmt::Display) -> CopyError {
    CopyError::Store(StoreError::task_died(what, e))
}
