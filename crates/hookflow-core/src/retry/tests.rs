use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_interval: Duration::from_secs(1),
        backoff: 2.0,
        max_interval: Duration::from_secs(10),
    }
}

#[test]
fn default_policy_does_not_retry() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 1);
    assert!(!p.retries_after(1));
    assert_eq!(p.ceiling(1), Duration::from_secs(1));
}

#[test]
fn retries_until_max_attempts() {
    let p = policy();
    assert!(p.retries_after(1));
    assert!(p.retries_after(4));
    assert!(!p.retries_after(5));
    assert!(!p.retries_after(6));
}

#[test]
fn ceiling_grows_and_is_capped() {
    let p = policy();
    let secs: Vec<u64> = (1..=6).map(|a| p.ceiling(a).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    assert_eq!(p.ceiling(0), Duration::from_secs(1));
    assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
    let huge = RetryPolicy {
        backoff: f64::MAX,
        ..policy()
    };
    assert_eq!(huge.ceiling(3), Duration::from_secs(10));
}

#[test]
fn delay_is_within_ceiling_and_seeded() {
    let p = policy();
    let mut a = StdRng::seed_from_u64(7);
    let mut b = StdRng::seed_from_u64(7);
    for attempt in 1..10 {
        let d = p.delay_after(attempt, &mut a);
        assert!(d <= p.ceiling(attempt));
        assert_eq!(d, p.delay_after(attempt, &mut b));
    }
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration(" 24h "), Ok(Duration::from_secs(86400)));
    assert_eq!(
        parse_duration("10 parsecs"),
        Err("invalid duration \"10 parsecs\"".to_owned())
    );
    assert!(parse_duration("").is_err());
    assert!(parse_duration("-5s").is_err());
    assert!(parse_duration("10").is_err());
}

mod delivery {
    use super::*;

    fn rules() -> RetryRules {
        RetryRules::default()
    }

    fn failed() -> AttemptOutcome {
        AttemptOutcome::Failed { retry_after: None }
    }

    #[test]
    fn schedule_round_trips() {
        let s = DeliverySchedule::default();
        assert_eq!(s.to_string(), "5s,5m,30m,2h,5h,10h,10h");
        assert_eq!(s.to_string().parse::<DeliverySchedule>(), Ok(s));
        let odd: DeliverySchedule = "1h30m, 500ms".parse().unwrap();
        assert_eq!(
            odd.delays,
            [Duration::from_secs(5400), Duration::from_millis(500)]
        );
        assert_eq!(odd.to_string().parse::<DeliverySchedule>(), Ok(odd));
        let e = "5s,,5m".parse::<DeliverySchedule>().unwrap_err();
        assert!(e.contains("invalid duration \"\""), "{e}");
        assert!("5s,soon".parse::<DeliverySchedule>().is_err());
    }

    #[test]
    fn stops_when_delivered_gone_or_exhausted() {
        let r = rules();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(r.next_delay(1, &AttemptOutcome::Delivered, &mut rng), None);
        assert_eq!(r.next_delay(1, &AttemptOutcome::Gone, &mut rng), None);
        assert!(r.next_delay(7, &failed(), &mut rng).is_some());
        assert_eq!(r.next_delay(8, &failed(), &mut rng), None);
        assert_eq!(r.next_delay(8, &AttemptOutcome::TimedOut, &mut rng), None);
    }

    #[test]
    fn scheduled_delay_is_jittered_by_20_percent() {
        let r = rules();
        let mut rng = StdRng::seed_from_u64(2);
        let delays: Vec<Duration> = (0..50)
            .map(|_| r.next_delay(2, &failed(), &mut rng).unwrap())
            .collect();
        assert!(delays.iter().all(|d| (240..=360).contains(&d.as_secs())));
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn throttling_waits_at_least_the_floor() {
        let r = rules();
        let mut rng = StdRng::seed_from_u64(3);
        let after_429 = AttemptOutcome::TooManyRequests { retry_after: None };
        assert!(r.next_delay(1, &after_429, &mut rng).unwrap() >= Duration::from_secs(60));
        assert!(
            r.next_delay(1, &AttemptOutcome::TimedOut, &mut rng)
                .unwrap()
                >= Duration::from_secs(60)
        );
        assert!(r.next_delay(1, &failed(), &mut rng).unwrap() <= Duration::from_secs(6));
    }

    #[test]
    fn retry_after_raises_the_delay_within_reason() {
        let r = rules();
        let mut rng = StdRng::seed_from_u64(4);
        let hour = AttemptOutcome::Failed {
            retry_after: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            r.next_delay(1, &hour, &mut rng),
            Some(Duration::from_secs(3600))
        );
        let year = AttemptOutcome::TooManyRequests {
            retry_after: Some(Duration::from_secs(365 * 86400)),
        };
        assert_eq!(
            r.next_delay(1, &year, &mut rng),
            Some(Duration::from_secs(86400))
        );
        let short = AttemptOutcome::Failed {
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(r.next_delay(3, &short, &mut rng).unwrap() >= Duration::from_secs(24 * 60));
    }

    #[test]
    fn parses_retry_after() {
        let now = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
