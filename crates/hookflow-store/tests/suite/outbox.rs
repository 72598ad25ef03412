//! The outbox: claiming events, recording attempts and their effects, manual events.

use hookflow_store::{
    AttemptEffect, AttemptRecord, DeliveryStatus, Millis, Page, RunStatus, StepResult, Trigger,
};
use serde_json::json;

use crate::common::{DagPlanner, T0, TestDb, event, fixture, new_run};

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
    s.record_attempt(
        &d.id,
        &run_id,
        Some(d.lease_token),
        &attempt(1, Trigger::Scheduled, t, Some(retry_at)),
        AttemptEffect::RetryAt(retry_at),
    )
    .await
    .unwrap();
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
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
    s.record_attempt(
        &d.id,
        &run_id,
        Some(d.lease_token),
        &attempt(2, Trigger::Scheduled, retry_at, None),
        AttemptEffect::Delivered,
    )
    .await
    .unwrap();
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
        (DeliveryStatus::Pending, 1)
    );

    s.record_attempt(
        &d.id,
        &run_id,
        Some(again[0].lease_token),
        &attempt(2, Trigger::Scheduled, retry_at, None),
        AttemptEffect::Delivered,
    )
    .await
    .unwrap();
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
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
    s.record_attempt(
        &d.id,
        &run_id,
        None,
        &attempt(3, Trigger::Manual, retry_at + 1, None),
        AttemptEffect::Unchanged,
    )
    .await
    .unwrap();
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
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
    s.record_attempt(
        &d.id,
        &run_id,
        Some(d.lease_token),
        &attempt(1, Trigger::Scheduled, T0 + 2, None),
        AttemptEffect::GiveUp,
    )
    .await
    .unwrap();
    let stored = s.run_event(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.attempts),
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
