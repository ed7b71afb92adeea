//! Trying again: failures that may pass ([`CopyError::is_retryable`]) are
//! retried with exponential backoff and jitter, up to
//! [`CopyOptions::retries`](super::CopyOptions::retries) times.

use std::future::Future;
use std::time::Duration;

use super::{CopyError, Engine, Event, MAX_RETRY_DELAY};
use crate::store::PathInfo;

impl Engine {
    /// Runs `attempt` until it succeeds, fails in a way that will not
    /// pass, or has been retried [`CopyOptions::retries`](super::CopyOptions::retries) times, waiting
    /// longer before each retry; cancellation stops it at once. `failed`
    /// is the error of a try made already, if there was one.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        dest: usize,
        path: &str,
        mut failed: Option<CopyError>,
        mut attempt: F,
    ) -> Result<T, CopyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CopyError>>,
    {
        let mut tries = 0;
        loop {
            if let Some(e) = failed.take() {
                if !e.is_retryable() || tries >= self.opts.retries {
                    return Err(e);
                }
                tries += 1;
                let delay = backoff(self.opts.retry_delay, tries);
                (self.on_event)(Event::Retrying {
                    dest,
                    path: path.to_owned(),
                    attempt: tries,
                    delay,
                    error: e.to_string(),
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
                }
            }
            let result = tokio::select! {
                r = attempt() => r,
                () = self.cancel.cancelled() => return Err(CopyError::Cancelled),
            };
            match result {
                Err(e) => failed = Some(e),
                ok => return ok,
            }
        }
    }

    /// Tries a path again in one destination after `failed`.
    pub(super) async fn retry(
        &self,
        info: &PathInfo,
        dest: usize,
        failed: CopyError,
    ) -> Result<bool, CopyError> {
        let full = self.src.store_dir().full(&info.path);
        let dst = &self.dsts[dest];
        self.retrying(dest, &full, Some(failed), || async {
            let there = dst
                .query_valid_paths(std::slice::from_ref(&info.path))
                .await?;
            if there.contains(&info.path) {
                return Ok(false);
            }
            let mut tried = self.attempt(info, &[dest]).await;
            tried.pop().map_or(Ok(false), |(_, r)| r)
        })
        .await
    }
}

/// The wait before retry number `attempt` (from 1):
/// [`crate::backoff::jittered`], at most [`MAX_RETRY_DELAY`] before the
/// jitter.
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    crate::backoff::jittered(base, attempt, MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        for (attempt, want) in [(1, 100), (2, 200), (3, 400), (10, 30_000), (40, 30_000)] {
            let got = backoff(base, attempt);
            let want = Duration::from_millis(want);
            assert!(got >= want && got <= want + want / 2, "{attempt}: {got:?}");
        }
    }
}
