//! Waits between tries: exponential growth with random jitter, shared by
//! the copy engine and the network stores, so that many clients failing
//! together do not retry in step.

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
