//! Waits between tries: exponential growth with random jitter, shared by
//! the copy engine, the network stores and the push watcher, so that
//! many clients failing together do not retry in step.

use std::time::Duration;

/// `base` doubled `doublings` times, at most `cap`.
pub(crate) fn doubled(base: Duration, doublings: u32, cap: Duration) -> Duration {
    base.saturating_mul(1 << doublings.min(16)).min(cap)
}

/// A random number in `[0, 1]`, or 0.5 if the system has no randomness
/// to give.
pub(crate) fn random_fraction() -> f64 {
    let mut seed = [0u8; 4];
    match getrandom::getrandom(&mut seed) {
        Ok(()) => f64::from(u32::from_le_bytes(seed)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

/// The wait before retry number `attempt` (from 1): `base` doubled for
/// each retry before it, at most `cap`, plus up to half of it again, at
/// random, so that many clients do not retry in step.
pub(crate) fn jittered(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let delay = doubled(base, attempt.saturating_sub(1), cap);
    delay + delay.mul_f64(random_fraction() / 2.0)
}
