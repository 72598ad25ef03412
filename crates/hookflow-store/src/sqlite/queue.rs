//! The work queue: claiming due jobs under a lease, and applying their outcomes.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::runs::schedule_steps;
use super::{SqliteStore, rows};
use crate::{
    Applied, ClaimedJob, Completion, JobKind, Millis, NewApproval, Planner, Queue, Result,
    RunRecord, StepResult, StoreError, Terminal,
};

/// Lease of a job that starts a promoted run or times out a waiting step.
const TIMER_LEASE_MS: i64 = 30_000;

/// Marks every open attempt of a run abandoned and drops its jobs.
pub(super) async fn abandon_open_work(
    conn: &mut SqliteConnection,
    run_id: &str,
    now: Millis,
) -> Result<()> {
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

/// Writes an outbound event row, due now.
async fn insert_event(
    conn: &mut SqliteConnection,
    run: &RunRecord,
    event: &crate::NewEvent,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, event_type, payload, \
         url, status, run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8, $8)",
    )
    .bind(&event.id)
    .bind(&run.id)
    .bind(&run.workspace_id)
    .bind(&run.deployment_id)
    .bind(&event.event_type)
    .bind(&event.payload)
    .bind(&event.url)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Makes a run terminal, writes its event (the outbox row) and frees its concurrency slot.
pub(super) async fn end_run(
    conn: &mut SqliteConnection,
    run: &RunRecord,
    terminal: &Terminal,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE runs SET status = $1, output = $2, error = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(terminal.status.as_str())
    .bind(terminal.output.as_ref().map(|v| v.to_string()))
    .bind(&terminal.error)
    .bind(now)
    .bind(&run.id)
    .execute(&mut *conn)
    .await?;
    abandon_open_work(conn, &run.id, now).await?;
    if let Some(event) = &terminal.event {
        insert_event(conn, run, event, now).await?;
    }
    promote_queued(conn, &run.deployment_id, now).await
}

/// Starts the oldest queued runs of a deployment while it has free slots.
pub(super) async fn promote_queued(
    conn: &mut SqliteConnection,
    deployment_id: &str,
    now: Millis,
) -> Result<()> {
    loop {
        let promoted: Option<String> = sqlx::query_scalar(
            "UPDATE runs SET status = 'running', started_at = $2 WHERE id = ( \
               SELECT r.id FROM runs r JOIN deployments d ON d.id = r.deployment_id \
               WHERE r.deployment_id = $1 AND r.status = 'queued' AND ( \
                 d.concurrency_limit IS NULL OR d.concurrency_limit > ( \
                   SELECT COUNT(*) FROM runs a WHERE a.deployment_id = $1 \
                   AND a.status IN ('running', 'waiting'))) \
               ORDER BY r.id LIMIT 1) RETURNING id",
        )
        .bind(deployment_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(run_id) = promoted else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) VALUES ($1, NULL, 0, $2, $3)",
        )
        .bind(&run_id)
        .bind(now)
        .bind(TIMER_LEASE_MS)
        .execute(&mut *conn)
        .await?;
    }
}

/// Records one attempt's outcome on its execution row.
async fn record_step(
    conn: &mut SqliteConnection,
    run_id: &str,
    step_id: &str,
    attempt: i64,
    result: &StepResult,
    now: Millis,
) -> Result<()> {
    let (status, output, error) = match result {
        StepResult::Completed(output) => ("completed", Some(output.to_string()), None),
        StepResult::Skipped => ("skipped", None, None),
        StepResult::Failed { error, .. } => ("failed", None, Some(error.as_str())),
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
    conn: &mut SqliteConnection,
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
    .execute(&mut *conn)
    .await?;
    if let Some(event) = &approval.event {
        insert_event(conn, run, event, now).await?;
    }
    Ok(())
}

/// Loads a run inside a transaction.
pub(super) async fn load_run(
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<Option<RunRecord>> {
    let sql = format!("SELECT {} FROM runs WHERE id = $1", rows::RUN_COLUMNS);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::run).transpose()
}

/// Applies one attempt's result to a live run, then plans what follows.
pub(super) async fn apply_result(
    conn: &mut SqliteConnection,
    run: &RunRecord,
    step: Option<(&str, i64)>,
    result: Option<StepResult>,
    planner: &dyn Planner,
    now: Millis,
) -> Result<Applied> {
    if let (Some((step_id, attempt)), Some(result)) = (step, &result) {
        record_step(conn, &run.id, step_id, attempt, result, now).await?;
        match result {
            StepResult::Failed {
                retry: Some(retry), ..
            } => {
                schedule_steps(conn, &run.id, std::slice::from_ref(retry), now).await?;
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
                    .execute(&mut *conn)
                    .await?;
                }
                if let Some(approval) = approval {
                    open_approval(conn, run, step_id, attempt, approval, now).await?;
                }
            }
            _ => {}
        }
    }
    plan(conn, run, planner, now).await
}

/// Asks the planner what follows from the run's stored state, and writes it.
async fn plan(
    conn: &mut SqliteConnection,
    run: &RunRecord,
    planner: &dyn Planner,
    now: Millis,
) -> Result<Applied> {
    let rows =
        sqlx::query("SELECT * FROM step_executions WHERE run_id = $1 ORDER BY step_id, attempt")
            .bind(&run.id)
            .fetch_all(&mut *conn)
            .await?;
    let steps = rows
        .iter()
        .map(rows::step_execution)
        .collect::<Result<Vec<_>>>()?;
    let plan = planner.plan(run, &steps, now);
    if let Some(terminal) = &plan.terminal {
        end_run(conn, run, terminal, now).await?;
        return Ok(Applied::Done {
            terminal: Some(terminal.status),
            event: terminal.event.is_some(),
        });
    }
    schedule_steps(conn, &run.id, &plan.start, now).await?;
    if plan.status != run.status {
        sqlx::query("UPDATE runs SET status = $1 WHERE id = $2")
            .bind(plan.status.as_str())
            .bind(&run.id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Applied::Done {
        terminal: None,
        event: false,
    })
}

#[async_trait]
impl Queue for SqliteStore {
    async fn claim_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET run_at = $1 + lease_ms, lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE run_at <= $1 ORDER BY run_at LIMIT $2) \
             RETURNING id, run_id, step_id, attempt, lease_token, kind",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let job = ClaimedJob {
                id: row.try_get("id")?,
                lease_token: row.try_get("lease_token")?,
                run_id: row.try_get("run_id")?,
                step_id: row.try_get("step_id")?,
                attempt: row.try_get("attempt")?,
                kind: JobKind::parse(row.try_get("kind")?)
                    .ok_or_else(|| StoreError::Corrupt("unknown job kind".into()))?,
            };
            if let (Some(step_id), JobKind::Execute) = (&job.step_id, job.kind) {
                sqlx::query(
                    "UPDATE step_executions SET status = 'running', started_at = $1 \
                     WHERE run_id = $2 AND step_id = $3 AND attempt = $4 AND status = 'scheduled'",
                )
                .bind(now)
                .bind(&job.run_id)
                .bind(step_id)
                .bind(job.attempt)
                .execute(&mut *tx)
                .await?;
            }
            jobs.push(job);
        }
        tx.commit().await?;
        Ok(jobs)
    }

    async fn next_job_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar("SELECT MIN(run_at) FROM jobs")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn finish_job(
        &self,
        job: &ClaimedJob,
        result: Option<StepResult>,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Applied> {
        let mut tx = self.write().await?;
        let held = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2")
            .bind(job.id)
            .bind(job.lease_token)
            .execute(&mut *tx)
            .await?;
        if held.rows_affected() == 0 {
            return Ok(Applied::Stale);
        }
        let run = load_run(&mut tx, &job.run_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("job of missing run {}", job.run_id)))?;
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
        let mut tx = self.write().await?;
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
        let run = load_run(&mut tx, run_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("step of missing run {run_id}")))?;
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
        let applied = apply_result(
            &mut tx,
            &run,
            Some((step_id, attempt)),
            Some(result),
            planner,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Completion::Applied(applied))
    }
}
