//! Callback delivery retries: the schedule, `Retry-After`, throttling floors.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, RngExt};

use super::{nanos, parse_duration};

/// Waits between callback delivery attempts: after failed attempt `n` comes `delays[n-1]`;
/// when the list is exhausted delivery stops. Default `5s,5m,30m,2h,5h,10h,10h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySchedule {
    /// The waits, in order.
    pub delays: Vec<Duration>,
}

impl Default for DeliverySchedule {
    fn default() -> Self {
        let (m, h) = (60, 3600);
        Self {
            delays: [5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl FromStr for DeliverySchedule {
    type Err = String;

    /// Parses a comma-separated list of durations, such as `5s,5m,30m,2h`.
    fn from_str(s: &str) -> Result<Self, String> {
        let delays = s
            .split(',')
            .map(|d| parse_duration(d).map_err(|e| format!("retry schedule {s:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { delays })
    }
}

impl fmt::Display for DeliverySchedule {
    /// The comma-separated list, readable back with `FromStr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", humantime::format_duration(*d))?;
        }
        Ok(())
    }
}

/// What happened on one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered,
    /// `410 Gone`: the receiver wants no more tries.
    Gone,
    /// `429 Too Many Requests`, with its `Retry-After` if any.
    TooManyRequests {
        /// The parsed `Retry-After` header.
        retry_after: Option<Duration>,
    },
    /// No answer within the delivery timeout.
    TimedOut,
    /// Any other status (3xx included) or a connection error.
    Failed {
        /// The parsed `Retry-After` header, when there was an answer with one.
        retry_after: Option<Duration>,
    },
}

/// How callback deliveries are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRules {
    /// Scheduled waits between attempts.
    pub schedule: DeliverySchedule,
    /// Minimum wait after a 429 or a timeout (default 60 s).
    pub throttle_floor: Duration,
    /// Largest `Retry-After` honoured (default 24 h); longer ones are clamped to it.
    pub max_retry_after: Duration,
}

impl Default for RetryRules {
    fn default() -> Self {
        Self {
            schedule: DeliverySchedule::default(),
            throttle_floor: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryRules {
    /// The wait before the next attempt after attempt number `attempt` (1-based) ended with
    /// `outcome`, or None when delivery stops (delivered, 410, or schedule exhausted).
    /// The scheduled delay gets ±20% jitter; a `Retry-After` (clamped to `max_retry_after`)
    /// raises it; 429 and timeouts wait at least `throttle_floor`.
    pub fn next_delay(
        &self,
        attempt: u32,
        outcome: &AttemptOutcome,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let (retry_after, floor) = match outcome {
            AttemptOutcome::Delivered | AttemptOutcome::Gone => return None,
            AttemptOutcome::TooManyRequests { retry_after } => (*retry_after, self.throttle_floor),
            AttemptOutcome::TimedOut => (None, self.throttle_floor),
            AttemptOutcome::Failed { retry_after } => (*retry_after, Duration::ZERO),
        };
        let index = usize::try_from(attempt.saturating_sub(1)).ok()?;
        let scheduled = nanos(*self.schedule.delays.get(index)?);
        let spread = scheduled / 5;
        let jittered = Duration::from_nanos(
            (scheduled - spread).saturating_add(rng.random_range(0..=spread.saturating_mul(2))),
        );
        let retry_after = retry_after.map_or(Duration::ZERO, |d| d.min(self.max_retry_after));
        Some(jittered.max(retry_after).max(floor))
    }
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP date (relative to
/// `now_unix` seconds; a past date means no wait); None if unparseable.
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let date_unix = i64::try_from(date.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some(Duration::from_secs(
        u64::try_from(date_unix.saturating_sub(now_unix)).unwrap_or(0),
    ))
}
