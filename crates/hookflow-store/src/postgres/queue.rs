//! The work queue: claiming due jobs under a lease, and applying their outcomes.
//!
//! Everything that advances a run first locks its row (`SELECT … FOR UPDATE`), so two nodes
//! finishing two steps of one run plan one after the other, each seeing the other's outcome:
//! a join step is scheduled once, and a run ends once with one event.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::deliveries::insert_delivery;
use super::runs::schedule_steps;
use super::{LockSpace, PgStore, Tx, clean, lock, rows};
use crate::{
    Applied, ClaimedJob, Completion, JobKind, Millis, NewApproval, Planner, Queue, Result,
    RunRecord, Signal, StepResult, StoreError, Terminal,
};

/// Lease of a job that starts a promoted run or times out a waiting step.
const TIMER_LEASE_MS: i64 = 30_000;

/// Loads a run and locks it until the transaction ends.
pub(super) async fn lock_run(conn: &mut PgConnection, run_id: &str) -> Result<Option<RunRecord>> {
    let sql = format!(
        "SELECT {} FROM runs WHERE id = $1 FOR UPDATE",
        rows::RUN_COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::run).transpose()
}

/// Marks every open attempt of a run abandoned and drops its jobs (jobs first: a claimer holds
/// its job before it touches the job's execution row).
async fn abandon_open_work(conn: &mut PgConnection, run_id: &str, now: Millis) -> Result<()> {
    sqlx::query("DELETE FROM jobs WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE step_executions SET status = 'abandoned', finished_at = $2 \
         WHERE run_id = $1 AND status IN ('scheduled', 'running')",
    )
    .bind(run_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE approvals SET status = 'cancelled' WHERE run_id = $1 AND status = 'pending'",
    )
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Makes a locked run terminal, writes its event (the outbox row) and frees its concurrency
/// slot.
pub(super) async fn end_run(
    tx: &mut Tx,
    run: &RunRecord,
    terminal: &Terminal,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET status = $1, output = $2, error = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(terminal.status.as_str())
    .bind(terminal.output.as_ref().map(|v| v.to_string()))
    .bind(clean(terminal.error.as_deref()))
    .bind(now)
    .bind(&run.id)
    .execute(&mut **tx)
    .await?;
    abandon_open_work(tx, &run.id, now).await?;
    if let Some(event) = &terminal.event {
        insert_delivery(tx, run, event, Some(now), now).await?;
        tx.signal(Signal::Outbox);
    }
    tx.signal(Signal::RunEnded(run.id.clone()));
    // Deployments without a limit and without queued runs (the common case) skip the slot
    // lock, so their runs end without waiting for each other.
    let promote: Option<bool> = sqlx::query_scalar(
        "SELECT d.concurrency_limit IS NOT NULL OR EXISTS ( \
           SELECT 1 FROM runs WHERE deployment_id = $1 AND status = 'queued') \
         FROM deployments d WHERE d.id = $1",
    )
    .bind(&run.deployment_id)
    .fetch_optional(&mut **tx)
    .await?;
    if promote == Some(true) {
        promote_queued(tx, &run.deployment_id, now).await?;
    }
    Ok(())
}

/// Starts the oldest queued runs of a deployment while it has free slots, under the
/// deployment's slot lock (which `create_run` takes to count and queue).
pub(super) async fn promote_queued(tx: &mut Tx, deployment_id: &str, now: Millis) -> Result<()> {
    lock(tx, LockSpace::DeploymentSlots, deployment_id).await?;
    // Free slots: unlimited without a limit (LIMIT NULL), none without the deployment. A queued
    // run locked by a concurrent cancel is skipped rather than waited for.
    let started = sqlx::query(
        "WITH free AS ( \
           SELECT CASE WHEN d.concurrency_limit IS NOT NULL THEN \
             GREATEST(d.concurrency_limit - (SELECT COUNT(*) FROM runs a \
               WHERE a.deployment_id = $1 AND a.status IN ('running', 'waiting')), 0) END AS n \
           FROM deployments d WHERE d.id = $1), \
         started AS ( \
           UPDATE runs SET status = 'running', started_at = $2 WHERE id = ANY(ARRAY( \
             SELECT id FROM runs WHERE deployment_id = $1 AND status = 'queued' \
             AND EXISTS (SELECT 1 FROM free) \
             ORDER BY id LIMIT (SELECT n FROM free) FOR UPDATE SKIP LOCKED)) \
           RETURNING id) \
         INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) \
         SELECT id, NULL, 0, $2, $3 FROM started",
    )
    .bind(deployment_id)
    .bind(now)
    .bind(TIMER_LEASE_MS)
    .execute(&mut **tx)
    .await?;
    if started.rows_affected() > 0 {
        tx.signal(Signal::Work);
    }
    Ok(())
}

/// Records one attempt's outcome on its execution row.
async fn record_step(
    conn: &mut PgConnection,
    run_id: &str,
    step_id: &str,
    attempt: i64,
    result: &StepResult,
    now: Millis,
) -> Result<()> {
    let (status, output, error) = match result {
        StepResult::Completed(output) => ("completed", Some(output.to_string()), None),
        StepResult::Skipped => ("skipped", None, None),
        StepResult::Failed { error, .. } => ("failed", None, clean(Some(error))),
        StepResult::Waiting { .. } => return Ok(()),
    };
    sqlx::query(
        "UPDATE step_executions SET status = $1, output = $2, error = $3, finished_at = $4, \
         started_at = COALESCE(started_at, $4) WHERE run_id = $5 AND step_id = $6 AND attempt = $7",
    )
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(now)
    .bind(run_id)
    .bind(step_id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Opens a human step's approval (and its `approval.requested` event).
async fn open_approval(
    tx: &mut Tx,
    run: &RunRecord,
    step_id: &str,
    attempt: i64,
    approval: &NewApproval,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO approvals (id, workspace_id, run_id, step_id, attempt, prompt, assignee, \
         status, created_at, deadline) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9)",
    )
    .bind(&approval.id)
    .bind(&run.workspace_id)
    .bind(&run.id)
    .bind(step_id)
    .bind(attempt)
    .bind(&approval.prompt)
    .bind(&approval.assignee)
    .bind(now)
    .bind(approval.deadline)
    .execute(&mut **tx)
    .await?;
    if let Some(event) = &approval.event {
        insert_delivery(tx, run, event, Some(now), now).await?;
        tx.signal(Signal::Outbox);
    }
    Ok(())
}

/// Applies one attempt's result to a live, locked run, then plans what follows.
pub(super) async fn apply_result(
    tx: &mut Tx,
    run: &RunRecord,
    step: Option<(&str, i64)>,
    result: Option<StepResult>,
    planner: &dyn Planner,
    now: Millis,
) -> Result<Applied> {
    if let (Some((step_id, attempt)), Some(result)) = (step, &result) {
        record_step(tx, &run.id, step_id, attempt, result, now).await?;
        match result {
            StepResult::Failed {
                retry: Some(retry), ..
            } => {
                schedule_steps(tx, &run.id, std::slice::from_ref(retry), now).await?;
                return Ok(Applied::Done {
                    terminal: None,
                    event: false,
                });
            }
            StepResult::Waiting { deadline, approval } => {
                if let Some(deadline) = deadline {
                    sqlx::query(
                        "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms, kind) \
                         VALUES ($1, $2, $3, $4, $5, 'timeout')",
                    )
                    .bind(&run.id)
                    .bind(step_id)
                    .bind(attempt)
                    .bind(deadline)
                    .bind(TIMER_LEASE_MS)
                    .execute(&mut **tx)
                    .await?;
                    tx.signal(Signal::Work);
                }
                if let Some(approval) = approval {
                    open_approval(tx, run, step_id, attempt, approval, now).await?;
                }
            }
            _ => {}
        }
    }
    plan(tx, run, planner, now).await
}

/// Asks the planner what follows from the run's stored state, and writes it.
async fn plan(tx: &mut Tx, run: &RunRecord, planner: &dyn Planner, now: Millis) -> Result<Applied> {
    let sql = format!(
        "SELECT {} FROM step_executions WHERE run_id = $1 ORDER BY step_id, attempt",
        rows::STEP_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&run.id)
        .fetch_all(&mut **tx)
        .await?;
    let steps = rows
        .iter()
        .map(rows::step_execution)
        .collect::<Result<Vec<_>>>()?;
    let plan = planner.plan(run, &steps, now);
    if let Some(terminal) = &plan.terminal {
        end_run(tx, run, terminal, now).await?;
        return Ok(Applied::Done {
            terminal: Some(terminal.status),
            event: terminal.event.is_some(),
        });
    }
    schedule_steps(tx, &run.id, &plan.start, now).await?;
    if plan.status != run.status {
        sqlx::query("UPDATE runs SET status = $1 WHERE id = $2")
            .bind(plan.status.as_str())
            .bind(&run.id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Applied::Done {
        terminal: None,
        event: false,
    })
}

#[async_trait]
impl Queue for PgStore {
    /// One statement: `SKIP LOCKED` lets nodes claim side by side without waiting for or
    /// double-claiming each other's rows; the walk along `jobs_due` stops after `limit` rows,
    /// and `id = ANY(ARRAY(…))` keeps the update on the primary key whatever the planner
    /// guesses for the batch size (a join may turn into a scan of the whole backlog).
    async fn claim_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
        let rows = sqlx::query(
            "WITH claimed AS ( \
               UPDATE jobs SET run_at = $1 + lease_ms, lease_token = lease_token + 1 \
               WHERE id = ANY(ARRAY( \
                 SELECT id FROM jobs WHERE run_at <= $1 ORDER BY run_at, id LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)) \
               RETURNING id, run_id, step_id, attempt, lease_token, kind), \
             started AS ( \
               UPDATE step_executions s SET status = 'running', started_at = $1 FROM claimed c \
               WHERE c.kind = 'execute' AND s.run_id = c.run_id AND s.step_id = c.step_id \
               AND s.attempt = c.attempt AND s.status = 'scheduled') \
             SELECT * FROM claimed",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedJob {
                    id: row.try_get("id")?,
                    lease_token: row.try_get("lease_token")?,
                    run_id: row.try_get("run_id")?,
                    step_id: row.try_get("step_id")?,
                    attempt: row.try_get("attempt")?,
                    kind: rows::parse(row.try_get("kind")?, JobKind::parse)?,
                })
            })
            .collect()
    }

    async fn next_job_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar("SELECT MIN(run_at) FROM jobs")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn finish_job(
        &self,
        job: &ClaimedJob,
        result: Option<StepResult>,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Applied> {
        let mut tx = self.begin().await?;
        let run = lock_run(&mut tx, &job.run_id).await?;
        let held = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2")
            .bind(job.id)
            .bind(job.lease_token)
            .execute(&mut *tx)
            .await?;
        if held.rows_affected() == 0 {
            return Ok(Applied::Stale);
        }
        let run =
            run.ok_or_else(|| StoreError::Corrupt(format!("job of missing run {}", job.run_id)))?;
        if run.status.is_terminal() {
            tx.commit().await?;
            return Ok(Applied::Stale);
        }
        let step = job.step_id.as_deref().map(|id| (id, job.attempt));
        if let (Some((step_id, attempt)), JobKind::Timeout) = (step, job.kind) {
            sqlx::query(
                "UPDATE approvals SET status = 'timed_out' \
                 WHERE run_id = $1 AND step_id = $2 AND attempt = $3 AND status = 'pending'",
            )
            .bind(&run.id)
            .bind(step_id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
        }
        let applied = apply_result(&mut tx, &run, step, result, planner, now).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn complete_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: i64,
        completion_hash: &str,
        result: StepResult,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Completion> {
        let mut tx = self.begin().await?;
        // Locked first: a duplicate completion racing this one waits, then sees its hash.
        let run = lock_run(&mut tx, run_id).await?;
        let found: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, completion_hash FROM step_executions \
             WHERE run_id = $1 AND step_id = $2 AND attempt = $3",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, previous)) = found else {
            return Ok(Completion::NotFound);
        };
        if let Some(previous) = previous {
            return Ok(if previous == completion_hash {
                Completion::Duplicate
            } else {
                Completion::Conflict
            });
        }
        let run =
            run.ok_or_else(|| StoreError::Corrupt(format!("step of missing run {run_id}")))?;
        if run.status.is_terminal() || !matches!(status.as_str(), "scheduled" | "running") {
            return Ok(Completion::Gone);
        }
        sqlx::query("DELETE FROM jobs WHERE run_id = $1 AND step_id = $2")
            .bind(run_id)
            .bind(step_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE step_executions SET completion_hash = $1 \
             WHERE run_id = $2 AND step_id = $3 AND attempt = $4",
        )
        .bind(completion_hash)
        .bind(run_id)
        .bind(step_id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        let step = Some((step_id, attempt));
        let applied = apply_result(&mut tx, &run, step, Some(result), planner, now).await?;
        tx.commit().await?;
        Ok(Completion::Applied(applied))
    }
}
