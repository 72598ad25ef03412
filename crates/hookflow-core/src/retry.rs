//! Retry policies, pure: step retries with exponential backoff and full jitter, and the
//! callback delivery schedule. Randomness comes from the caller's [`Rng`], so tests can seed it.

use std::time::Duration;

use rand::{Rng, RngExt};

mod delivery;

pub use delivery::{AttemptOutcome, DeliverySchedule, RetryRules, parse_retry_after};

/// How a step is retried: at most `max_attempts` attempts, waiting a random time up to
/// `initial_interval * backoff^(n-1)` (capped at `max_interval`) after failed attempt `n`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    /// Upper bound of the wait after the first failed attempt.
    pub initial_interval: Duration,
    /// Multiplier of the bound from one attempt to the next.
    pub backoff: f64,
    /// Largest bound.
    pub max_interval: Duration,
}

impl Default for RetryPolicy {
    /// One attempt (no retry); 1 s, doubling, up to 60 s if attempts are raised.
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_interval: Duration::from_secs(1),
            backoff: 2.0,
            max_interval: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// true if a new attempt may follow failed attempt number `attempt` (1-based).
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// Upper bound of the wait after failed attempt `attempt`:
    /// `min(max_interval, initial * backoff^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_interval.as_secs_f64() * self.backoff.powi(exponent);
        Duration::try_from_secs_f64(secs).map_or(self.max_interval, |d| d.min(self.max_interval))
    }

    /// Full jitter: uniform in `[0, ceiling]`.
    pub fn delay_after(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        Duration::from_nanos(rng.random_range(0..=nanos(self.ceiling(attempt))))
    }
}

/// Parses a duration such as `500ms`, `10s`, `15m`, `24h` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| format!("invalid duration {s:?}"))
}

/// A duration in nanoseconds, saturated to `u64` (about 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
