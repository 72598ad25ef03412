//! The `Store` conformance suite, run against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `HOOKFLOW_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates and drops its own database.
//! When PostgreSQL is unreachable the PostgreSQL tests fail: they never skip.

mod common;
mod suite;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use hookflow_store::postgres::PgStore;
use hookflow_store::{Accounts, Signal, StepResult};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Instantiates every suite function once per backend.
macro_rules! conformance {
    ($($module:ident::$name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    crate::suite::$module::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    crate::suite::$module::$name(&db).await;
                }
            )*
        }
    };
}

conformance!(
    accounts::workspaces_are_ensured_once,
    accounts::api_keys,
    accounts::secrets,
    accounts::server_keys,
    definitions::workflow_versions,
    definitions::concurrent_workflow_versions,
    definitions::deployments,
    runs::create_and_read,
    runs::created_finished,
    runs::created_run_leases_its_first_step,
    runs::created_run_leases_its_end_event,
    runs::concurrent_creates,
    runs::idempotency,
    runs::concurrency_limit_queues,
    runs::concurrency_limit_race,
    runs::promote_after_limit_raised,
    runs::cancel,
    runs::list_runs_filters,
    queue::claims_lease_jobs,
    queue::concurrent_claimers,
    queue::finish_job_plans_next_steps,
    queue::leased_step_is_taken_over_after_its_lease,
    queue::retries_then_fails,
    queue::racing_finishes_end_run_once,
    queue::racing_finishes_join_once,
    queue::concurrent_finishes_share_batches,
    outbox::deliveries_lease_and_record,
    outbox::finished_job_leases_its_end_event,
    outbox::leased_event_is_taken_over_after_its_lease,
    outbox::deliveries_give_up,
    outbox::concurrent_attempts,
    outbox::manual_event,
    waiting::async_completion,
    waiting::async_timeout,
    waiting::near_timeout_wakes,
    waiting::racing_completions,
    waiting::approvals,
    waiting::approvals_time_out,
    waiting::racing_answers,
);

/// SQLite serves one node: there is nothing to watch, and watching is harmless.
#[tokio::test]
async fn sqlite_watch_is_a_no_op() {
    let db = TestDb::sqlite().await;
    db.store.watch(Arc::new(|_| {})).await.unwrap();
}

/// A node watching sees other nodes' commits: new work, new events, ended sync runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_watch_signals() {
    let (db, mut rx) = watched_postgres().await;
    let other = db.node().await;
    let (_, dep) = common::fixture(&db, None).await;
    // A sync run: its end wakes the waiting invoke, on whichever node it waits.
    let mut run = common::new_run(&dep, &["a"]);
    run.delivery = hookflow_store::Delivery::Direct;
    other.create_run(&run).await.unwrap();
    expect_signals(&mut rx, &[Signal::Work]).await;

    let job = other.claim_jobs(common::T0, 10).await.unwrap().remove(0);
    let planner = common::DagPlanner::parallel(&["a"]);
    let done = Some(StepResult::Completed(serde_json::json!(1)));
    other
        .finish_job(&job, done, planner.shared(), common::T0 + 1)
        .await
        .unwrap();
    expect_signals(&mut rx, &[Signal::Outbox, Signal::RunEnded(run.id.clone())]).await;
}

/// A PostgreSQL test database whose store hands every signal it hears to the returned channel.
async fn watched_postgres() -> (TestDb, mpsc::UnboundedReceiver<Signal>) {
    let db = TestDb::postgres().await;
    let (tx, rx) = mpsc::unbounded_channel();
    db.store
        .watch(Arc::new(move |signal| {
            let _ = tx.send(signal);
        }))
        .await
        .unwrap();
    (db, rx)
}

/// Waits (up to 10 s) until every one of `wanted` arrived.
async fn expect_signals(rx: &mut mpsc::UnboundedReceiver<Signal>, wanted: &[Signal]) {
    let mut missing: Vec<&Signal> = wanted.iter().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(signal)) => missing.retain(|w| **w != signal),
            _ => panic!("signals never arrived: {missing:?}"),
        }
    }
}

/// A new run whose first job is due beyond the wake horizon (parked on a delay) wakes no node;
/// one due now does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_parked_runs_wake_no_one() {
    let (db, mut rx) = watched_postgres().await;
    let other = db.node().await;
    let (_, dep) = common::fixture(&db, None).await;
    let mut parked = common::new_run(&dep, &["a"]);
    parked.plan.start[0].run_at = parked.created_at + 86_400_000;
    other.create_run(&parked).await.unwrap();
    // A signal reaches a listener within milliseconds (`postgres_watch_signals`).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard: Vec<Signal> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(!heard.contains(&Signal::Work), "{heard:?}");

    other
        .create_run(&common::new_run(&dep, &["a"]))
        .await
        .unwrap();
    expect_signals(&mut rx, &[Signal::Work]).await;
}

/// Nodes starting together on an empty database migrate it once (sqlx's advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_migrate_together() {
    let empty = common::EmptyPg::create().await;
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let url = empty.url.clone();
        tasks.spawn(async move { PgStore::connect_with(&url, 2).await });
    }
    for node in tasks.join_all().await {
        let node = node.expect("every node starts");
        assert_eq!(node.workspace_count().await.unwrap(), 0);
        node.close().await;
    }
}

/// A node vacuums a queue table once churn leaves its threshold of dead rows behind, whether
/// autovacuum is on or off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_vacuums_churned_queues() {
    let db = TestDb::postgres().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    // Where autovacuum is on, it must not clean the table first: only hookflow's vacuum may.
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (run_id, attempt, run_at, lease_ms) \
         SELECT 'r' || n, 1, 0, 0 FROM generate_series(1, 2000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM jobs")
        .execute(&pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (vacuumed, dead): (bool, i64) = sqlx::query_as(
            "SELECT last_vacuum IS NOT NULL, n_dead_tup FROM pg_stat_user_tables \
             WHERE relname = 'jobs' AND schemaname = current_schema()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if vacuumed {
            assert!(dead < 2000, "the vacuum left {dead} dead rows");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs was not vacuumed within 30 s ({dead} dead rows)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pool.close().await;
}
