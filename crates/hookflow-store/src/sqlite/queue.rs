//! The work queue: claiming due jobs under a lease, and applying their outcomes.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::runs::schedule_steps;
use super::{SqliteStore, rows};
use crate::{
    Applied, ClaimedJob, Millis, NewStep, Planner, Queue, Result, RunRecord, StepResult, Terminal,
};

/// Lease of a job that starts a promoted run.
const START_LEASE_MS: i64 = 30_000;

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
    }
    promote_queued(conn, &run.deployment_id, now).await
}

/// Starts the oldest queued runs of a deployment while it has free slots.
async fn promote_queued(
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
        .bind(START_LEASE_MS)
        .execute(&mut *conn)
        .await?;
    }
}

/// Records one attempt's outcome on its execution row.
async fn record_step(
    conn: &mut SqliteConnection,
    job: &ClaimedJob,
    step_id: &str,
    result: &StepResult,
    now: Millis,
) -> Result<()> {
    let (status, output, error) = match result {
        StepResult::Completed(output) => ("completed", Some(output.to_string()), None),
        StepResult::Skipped => ("skipped", None, None),
        StepResult::Failed { error, .. } => ("failed", None, Some(error.as_str())),
    };
    sqlx::query(
        "UPDATE step_executions SET status = $1, output = $2, error = $3, finished_at = $4, \
         started_at = COALESCE(started_at, $4) WHERE run_id = $5 AND step_id = $6 AND attempt = $7",
    )
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(now)
    .bind(&job.run_id)
    .bind(step_id)
    .bind(job.attempt)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Queue for SqliteStore {
    async fn claim_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET run_at = $1 + lease_ms, lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE run_at <= $1 ORDER BY run_at LIMIT $2) \
             RETURNING id, run_id, step_id, attempt, lease_token",
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
            };
            if let Some(step_id) = &job.step_id {
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
        let lease_ms: Option<i64> = sqlx::query_scalar(
            "DELETE FROM jobs WHERE id = $1 AND lease_token = $2 RETURNING lease_ms",
        )
        .bind(job.id)
        .bind(job.lease_token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(lease_ms) = lease_ms else {
            return Ok(Applied::Stale);
        };
        let sql = format!("SELECT {} FROM runs WHERE id = $1", rows::RUN_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&job.run_id)
            .fetch_one(&mut *tx)
            .await?;
        let run = rows::run(&row)?;
        if run.status.is_terminal() {
            tx.commit().await?;
            return Ok(Applied::Stale);
        }
        if let (Some(step_id), Some(result)) = (&job.step_id, &result) {
            record_step(&mut tx, job, step_id, result, now).await?;
            if let StepResult::Failed {
                retry_at: Some(at), ..
            } = result
            {
                let retry = NewStep {
                    step_id: step_id.clone(),
                    attempt: job.attempt + 1,
                    run_at: *at,
                    lease_ms,
                    timer: false,
                };
                schedule_steps(&mut tx, &run.id, &[retry], now).await?;
                tx.commit().await?;
                return Ok(Applied::Done {
                    terminal: None,
                    event: false,
                });
            }
        }
        let steps_rows = sqlx::query(
            "SELECT * FROM step_executions WHERE run_id = $1 ORDER BY step_id, attempt",
        )
        .bind(&run.id)
        .fetch_all(&mut *tx)
        .await?;
        let steps = steps_rows
            .iter()
            .map(rows::step_execution)
            .collect::<Result<Vec<_>>>()?;
        let plan = planner.plan(&run, &steps, now);
        let applied = match &plan.terminal {
            Some(terminal) => {
                end_run(&mut tx, &run, terminal, now).await?;
                Applied::Done {
                    terminal: Some(terminal.status),
                    event: terminal.event.is_some(),
                }
            }
            None => {
                schedule_steps(&mut tx, &run.id, &plan.start, now).await?;
                if plan.status != run.status {
                    sqlx::query("UPDATE runs SET status = $1 WHERE id = $2")
                        .bind(plan.status.as_str())
                        .bind(&run.id)
                        .execute(&mut *tx)
                        .await?;
                }
                Applied::Done {
                    terminal: None,
                    event: false,
                }
            }
        };
        tx.commit().await?;
        Ok(applied)
    }
}
