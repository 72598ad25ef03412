//! Property tests of step backoff and callback delivery retries.

use std::time::{Duration, UNIX_EPOCH};

use hookflow_core::{AttemptOutcome, DeliverySchedule, RetryPolicy, RetryRules, parse_retry_after};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (1u32..=100, 1u64..3_600_000, 1.0f64..10.0, 0u64..86_400_000).prop_map(
        |(max_attempts, initial_ms, backoff, extra_ms)| RetryPolicy {
            max_attempts,
            initial_interval: Duration::from_millis(initial_ms),
            backoff,
            max_interval: Duration::from_millis(initial_ms + extra_ms),
        },
    )
}

fn outcome() -> impl Strategy<Value = AttemptOutcome> {
    let retry_after = proptest::option::of((0u64..200_000).prop_map(Duration::from_secs));
    prop_oneof![
        Just(AttemptOutcome::Delivered),
        Just(AttemptOutcome::Gone),
        Just(AttemptOutcome::TimedOut),
        retry_after
            .clone()
            .prop_map(|retry_after| AttemptOutcome::TooManyRequests { retry_after }),
        retry_after.prop_map(|retry_after| AttemptOutcome::Failed { retry_after }),
    ]
}

fn schedule() -> impl Strategy<Value = DeliverySchedule> {
    proptest::collection::vec((0u64..100_000_000).prop_map(Duration::from_millis), 0..10)
        .prop_map(|delays| DeliverySchedule { delays })
}

proptest! {
    #[test]
    fn ceiling_is_monotone_and_bounded(p in policy()) {
        prop_assert_eq!(p.ceiling(1), p.initial_interval);
        for attempt in 1..150 {
            prop_assert!(p.ceiling(attempt) <= p.ceiling(attempt + 1));
            prop_assert!(p.ceiling(attempt) <= p.max_interval);
        }
        prop_assert!(p.max_attempts == 1 || p.retries_after(p.max_attempts - 1));
        prop_assert!(!p.retries_after(p.max_attempts));
    }

    #[test]
    fn jittered_delay_is_within_the_ceiling(p in policy(), attempt in 1u32..200, seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        prop_assert!(p.delay_after(attempt, &mut rng) <= p.ceiling(attempt));
    }

    #[test]
    fn delivery_delays_follow_the_rules(
        schedule in schedule(),
        floor_s in 0u64..600,
        max_ra_s in 1u64..100_000,
        attempt in 1u32..12,
        outcome in outcome(),
        seed in any::<u64>(),
    ) {
        let rules = RetryRules {
            schedule,
            throttle_floor: Duration::from_secs(floor_s),
            max_retry_after: Duration::from_secs(max_ra_s),
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let next = rules.next_delay(attempt, &outcome, &mut rng);
        let scheduled = rules.schedule.delays.get(attempt as usize - 1).copied();
        let (Some(scheduled), false) = (scheduled, matches!(outcome, AttemptOutcome::Delivered | AttemptOutcome::Gone)) else {
            prop_assert_eq!(next, None);
            return Ok(());
        };
        let next = next.unwrap();
        let (low, high) = (scheduled - scheduled / 5, scheduled + scheduled / 5);
        let (retry_after, floor) = match outcome {
            AttemptOutcome::TooManyRequests { retry_after } => (retry_after, rules.throttle_floor),
            AttemptOutcome::TimedOut => (None, rules.throttle_floor),
            AttemptOutcome::Failed { retry_after } => (retry_after, Duration::ZERO),
            _ => unreachable!(),
        };
        let honoured = retry_after.map_or(Duration::ZERO, |d| d.min(rules.max_retry_after));
        prop_assert!(next >= low.max(floor).max(honoured), "{:?}", next);
        prop_assert!(next <= high.max(floor).max(honoured), "{:?}", next);
        if retry_after.is_none() && floor.is_zero() {
            prop_assert!(low <= next && next <= high);
        }
    }

    #[test]
    fn schedules_round_trip(schedule in schedule()) {
        prop_assume!(!schedule.delays.is_empty());
        prop_assert_eq!(schedule.to_string().parse::<DeliverySchedule>(), Ok(schedule));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates(secs in any::<u32>(), date in 0i64..4_000_000_000, now in 0i64..4_000_000_000) {
        prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(Duration::from_secs(secs.into())));
        let header = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(date as u64));
        prop_assert_eq!(
            parse_retry_after(&header, now),
            Some(Duration::from_secs((date - now).max(0) as u64))
        );
    }

    #[test]
    fn retry_after_never_panics(s in "\\PC{0,40}", now in any::<i64>()) {
        let _ = parse_retry_after(&s, now);
    }
}
