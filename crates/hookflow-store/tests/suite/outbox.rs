//! The outbox: claiming events, recording attempts and their effects, manual events.

use std::sync::Arc;

use hookflow_store::{
    Applied, AttemptEffect, AttemptRecord, ClaimedDelivery, DeliveryStatus, Millis, Page,
    RunStatus, StepResult, Store, Trigger,
};
use serde_json::json;

use crate::common::{DagPlanner, EventLeasing, T0, TestDb, event, fixture, new_run};

/// Runs a one-step run to completion at `T0 + 1`; returns its id.
async fn completed_run(db: &TestDb) -> String {
    let (_, dep) = fixture(db, None).await;
    let run = new_run(&dep, &["a"]);
    db.store.create_run(&run).await.unwrap();
    let job = db
        .store
        .claim_jobs(T0, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.run_id == run.id)
        .unwrap();
    let planner = DagPlanner::parallel(&["a"]);
    let result = Some(StepResult::Completed(json!(1)));
    db.store
        .finish_job(&job, result, planner.shared(), T0 + 1)
        .await
        .unwrap();
    run.id
}

/// Runs a one-step run to completion at `T0 + 1` for a caller that takes the run's event under
/// a lease of `lease` ms; returns the run id and the event as that write leased it.
async fn completed_run_leasing_its_event(db: &TestDb, lease: i64) -> (String, ClaimedDelivery) {
    let (_, dep) = fixture(db, None).await;
    let run = new_run(&dep, &["a"]);
    db.store.create_run(&run).await.unwrap();
    let job = db.store.claim_jobs(T0, 100).await.unwrap();
    let job = job.into_iter().find(|j| j.run_id == run.id).unwrap();
    let planner = EventLeasing {
        dag: DagPlanner::parallel(&["a"]),
        lease,
    };
    let result = Some(StepResult::Completed(json!(1)));
    let applied = (db.store)
        .finish_job(&job, result, Arc::new(planner), T0 + 1)
        .await
        .unwrap();
    let Applied::Done {
        terminal: Some(RunStatus::Completed),
        event: true,
        leased_event: Some(leased),
        ..
    } = applied
    else {
        panic!("the run's end with its event leased, not {applied:?}");
    };
    (run.id, *leased)
}

/// Logs `record` as an attempt of event `id` of run `run_id` under lease `token`, with
/// `effect`; answers the event's status and attempt count after it.
async fn log_attempt(
    s: &Arc<dyn Store>,
    id: &str,
    run_id: &str,
    token: Option<i64>,
    record: AttemptRecord,
    effect: AttemptEffect,
) -> (DeliveryStatus, i64) {
    s.record_attempt(id, run_id, token, &record, effect)
        .await
        .unwrap();
    let stored = s.run_event(run_id).await.unwrap().unwrap();
    (stored.status, stored.attempts)
}

fn attempt(n: i64, trigger: Trigger, at: Millis, next: Option<Millis>) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        trigger,
        url: "https://example.test/callback".into(),
        status_code: Some(500),
        response_body: Some("nope\0".into()),
        duration_ms: 12,
        error: None,
        created_at: at,
        next_attempt_at: next,
    }
}

pub async fn deliveries_lease_and_record(db: &TestDb) {
    let s = &db.store;
    let run_id = completed_run(db).await;
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(T0 + 1));
    let t = T0 + 10;
    let claimed = s.claim_deliveries(t, 10, 1000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let d = claimed[0].clone();
    assert_eq!(
        (d.run_id.as_str(), d.event_type.as_str(), d.attempts),
        (run_id.as_str(), "workflow.completed", 0)
    );
    assert!(d.payload.contains(&run_id));
    assert!(s.claim_deliveries(t, 10, 1000).await.unwrap().is_empty());
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(t + 1000));

    // A failed attempt schedules the next one.
    let retry_at = t + 5000;
    assert_eq!(
        log_attempt(
            s,
            &d.id,
            &run_id,
            Some(d.lease_token),
            attempt(1, Trigger::Scheduled, t, Some(retry_at)),
            AttemptEffect::RetryAt(retry_at)
        )
        .await,
        (DeliveryStatus::Pending, 1)
    );
    assert!(
        s.claim_deliveries(retry_at - 1, 10, 1000)
            .await
            .unwrap()
            .is_empty()
    );
    let again = s.claim_deliveries(retry_at, 10, 1000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert!(again[0].lease_token > d.lease_token);

    // An attempt under a lost lease is logged but changes nothing.
    assert_eq!(
        log_attempt(
            s,
            &d.id,
            &run_id,
            Some(d.lease_token),
            attempt(2, Trigger::Scheduled, retry_at, None),
            AttemptEffect::Delivered
        )
        .await,
        (DeliveryStatus::Pending, 1)
    );

    assert_eq!(
        log_attempt(
            s,
            &d.id,
            &run_id,
            Some(again[0].lease_token),
            attempt(2, Trigger::Scheduled, retry_at, None),
            AttemptEffect::Delivered
        )
        .await,
        (DeliveryStatus::Delivered, 2)
    );
    assert_eq!(s.next_delivery_at().await.unwrap(), None);
    assert!(
        s.claim_deliveries(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty()
    );

    // A manual attempt counts, and leaves the schedule alone.
    assert_eq!(
        log_attempt(
            s,
            &d.id,
            &run_id,
            None,
            attempt(3, Trigger::Manual, retry_at + 1, None),
            AttemptEffect::Unchanged
        )
        .await,
        (DeliveryStatus::Delivered, 3)
    );

    // Every attempt is logged, newest first, paged by log id.
    let log = s
        .delivery_attempts(
            &run_id,
            &Page {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    let numbers = log.iter().map(|(_, a)| a.attempt).collect::<Vec<_>>();
    assert_eq!(numbers, [3, 2, 2, 1]);
    assert_eq!(log[3].1.next_attempt_at, Some(retry_at));
    assert_eq!(log[3].1.status_code, Some(500));
    // Stored whole, its U+0000 (which neither backend's batches can carry) replaced.
    assert_eq!(log[3].1.response_body.as_deref(), Some("nope\u{FFFD}"));
    assert_eq!(log[0].1.trigger, Trigger::Manual);
    let cursor = Some(log[1].0.to_string());
    let older = s
        .delivery_attempts(&run_id, &Page { limit: 10, cursor })
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|(_, a)| a.attempt).collect::<Vec<_>>(),
        [2, 1]
    );
}

pub async fn deliveries_give_up(db: &TestDb) {
    let s = &db.store;
    let run_id = completed_run(db).await;
    let d = s
        .claim_deliveries(T0 + 1, 10, 1000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        log_attempt(
            s,
            &d.id,
            &run_id,
            Some(d.lease_token),
            attempt(1, Trigger::Scheduled, T0 + 2, None),
            AttemptEffect::GiveUp
        )
        .await,
        (DeliveryStatus::Failed, 1)
    );
    assert!(
        s.claim_deliveries(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn manual_event(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let mut run = new_run(&dep, &[]);
    run.delivery = hookflow_store::Delivery::Direct;
    s.create_run(&run).await.unwrap();
    let stored = s.run_by_id(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
    assert!(s.run_event(&run.id).await.unwrap().is_none());
    let manual = event(&stored, "completed");
    s.insert_event(&stored, &manual, T0 + 5).await.unwrap();
    let found = s.run_event(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.status, found.attempts),
        (manual.id, DeliveryStatus::Pending, 0)
    );
    assert_eq!(found.deployment_id, dep.id);
    // Not scheduled: only manual attempts deliver it.
    assert!(
        s.claim_deliveries(i64::MAX / 2, 10, 1000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.next_delivery_at().await.unwrap(), None);
}

/// Attempts recorded at once (written in shared batches): each is logged and applied to its own
/// event, and one under a lost lease is logged without changing its event.
pub async fn concurrent_attempts(db: &TestDb) {
    let s = &db.store;
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(completed_run(db).await);
    }
    runs.sort();
    let t = T0 + 10;
    let claimed = s.claim_deliveries(t, 100, 1000).await.unwrap();
    assert_eq!(claimed.len(), 40);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, d) in claimed.iter().enumerate() {
        let (store, d) = (s.clone(), d.clone());
        // The first event's attempt carries a lease that no longer holds.
        let lease = if i == 0 {
            d.lease_token - 1
        } else {
            d.lease_token
        };
        tasks.spawn(async move {
            let result = store
                .record_attempt(
                    &d.id,
                    &d.run_id,
                    Some(lease),
                    &attempt(1, Trigger::Scheduled, t, None),
                    AttemptEffect::Delivered,
                )
                .await;
            (d.run_id, result)
        });
    }
    for (_, result) in tasks.join_all().await {
        result.unwrap();
    }
    for (i, d) in claimed.iter().enumerate() {
        let stored = s.run_event(&d.run_id).await.unwrap().unwrap();
        let expected = if i == 0 {
            (DeliveryStatus::Pending, 0)
        } else {
            (DeliveryStatus::Delivered, 1)
        };
        assert_eq!((stored.status, stored.attempts), expected, "event {i}");
        let page = Page {
            limit: 10,
            cursor: None,
        };
        let logged = s.delivery_attempts(&d.run_id, &page).await.unwrap();
        assert_eq!(logged.len(), 1, "event {i}");
        assert_eq!(
            (logged[0].1.attempt, logged[0].1.status_code),
            (1, Some(500))
        );
    }
    let mut claimed_runs: Vec<String> = claimed.into_iter().map(|d| d.run_id).collect();
    claimed_runs.sort();
    assert_eq!(claimed_runs, runs);
}

pub async fn finished_job_leases_its_end_event(db: &TestDb) {
    let s = &db.store;
    let lease = 1000;
    let (run_id, leased) = completed_run_leasing_its_event(db, lease).await;
    // What the write returned is the stored event, as a claim of it would give it.
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    let run = s.run_by_id(&run_id).await.unwrap().unwrap();
    assert_eq!(
        leased,
        ClaimedDelivery {
            id: stored.id.clone(),
            lease_token: 0,
            run_id: run_id.clone(),
            deployment_id: run.deployment_id.clone(),
            event_type: "workflow.completed".into(),
            payload: stored.payload.clone(),
            url: stored.url.clone(),
            attempts: 0,
        }
    );
    // Leased: nobody claims it until the lease ends.
    let until = T0 + 1 + lease;
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(until));
    assert!(
        s.claim_deliveries(until - 1, 10, 1000)
            .await
            .unwrap()
            .is_empty()
    );

    // Its holder's attempt counts.
    assert_eq!(
        log_attempt(
            s,
            &leased.id,
            &run_id,
            Some(leased.lease_token),
            attempt(1, Trigger::Scheduled, T0 + 5, None),
            AttemptEffect::Delivered
        )
        .await,
        (DeliveryStatus::Delivered, 1)
    );
    assert_eq!(s.next_delivery_at().await.unwrap(), None);
}

pub async fn leased_event_is_taken_over_after_its_lease(db: &TestDb) {
    let s = &db.store;
    let lease = 1000;
    let (run_id, leased) = completed_run_leasing_its_event(db, lease).await;
    // Its holder died: another node claims it once the lease ends.
    let until = T0 + 1 + lease;
    let claimed = s.claim_deliveries(until, 10, 1000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].attempts),
        (leased.id.as_str(), 0)
    );
    assert!(claimed[0].lease_token > leased.lease_token);

    // A late attempt of the first holder is logged but changes nothing.
    assert_eq!(
        log_attempt(
            s,
            &leased.id,
            &run_id,
            Some(leased.lease_token),
            attempt(1, Trigger::Scheduled, until, None),
            AttemptEffect::Delivered
        )
        .await,
        (DeliveryStatus::Pending, 0)
    );
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(until + 1000));
}
