//! Creating, reading and listing runs.

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::admin::cursor;
use super::queue::{end_run, load_run, promote_queued};
use super::{SqliteStore, rows};
use crate::{
    Cancelled, CreatedRun, Millis, NewRun, NewStep, Page, Result, RunFilter, RunRecord, RunStatus,
    Runs, StepExecution, Terminal,
};

/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_WINDOW_MS: Millis = 24 * 60 * 60 * 1000;

/// Inserts step executions and their jobs.
pub(super) async fn schedule_steps(
    conn: &mut SqliteConnection,
    run_id: &str,
    steps: &[NewStep],
    now: Millis,
) -> Result<()> {
    for step in steps {
        sqlx::query(
            "INSERT INTO step_executions (run_id, step_id, attempt, status, created_at, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(run_id)
        .bind(&step.step_id)
        .bind(step.attempt)
        .bind(if step.timer { "running" } else { "scheduled" })
        .bind(now)
        .bind(step.timer.then_some(now))
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(&step.step_id)
        .bind(step.attempt)
        .bind(step.run_at)
        .bind(step.lease_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Whether a new run of the deployment must wait: the limit is reached or others wait already.
async fn must_queue(conn: &mut SqliteConnection, deployment_id: &str, limit: i64) -> Result<bool> {
    let (active, queued): (i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM runs WHERE deployment_id = $1 AND status IN ('running', 'waiting')), \
           (SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE deployment_id = $1 AND status = 'queued' LIMIT 1))",
    )
    .bind(deployment_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(active >= limit || queued > 0)
}

#[async_trait]
impl Runs for SqliteStore {
    async fn create_run(&self, run: &NewRun) -> Result<CreatedRun> {
        let mut tx = self.write().await?;
        if let Some(claim) = &run.idempotency {
            let prior: Option<(String, String, String, Millis)> = sqlx::query_as(
                "SELECT body_hash, request_id, response, created_at FROM idempotency_keys \
                 WHERE workspace_id = $1 AND key = $2",
            )
            .bind(&run.workspace_id)
            .bind(&claim.key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((hash, request_id, response, at)) = prior {
                if at + IDEMPOTENCY_WINDOW_MS > run.created_at {
                    return Ok(if hash == claim.body_hash {
                        CreatedRun::Replayed {
                            request_id,
                            response: rows::json(&response)?,
                        }
                    } else {
                        CreatedRun::IdempotencyConflict
                    });
                }
                sqlx::query("DELETE FROM idempotency_keys WHERE workspace_id = $1 AND key = $2")
                    .bind(&run.workspace_id)
                    .bind(&claim.key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let queued = match run.concurrency_limit {
            Some(limit) => must_queue(&mut tx, &run.deployment_id, limit).await?,
            None => false,
        };
        if queued && run.refuse_when_full {
            return Ok(CreatedRun::ConcurrencyLimit);
        }
        let status = if queued {
            RunStatus::Queued
        } else {
            run.start_status
        };
        sqlx::query(
            "INSERT INTO runs (id, workspace_id, deployment_id, deployment_name, variant, workflow, \
             version, status, source, delivery, callback_url, inputs, run_user, metadata, settings, \
             created_at, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&run.id)
        .bind(&run.workspace_id)
        .bind(&run.deployment_id)
        .bind(&run.deployment_name)
        .bind(&run.variant)
        .bind(&run.workflow)
        .bind(run.version)
        .bind(status.as_str())
        .bind(run.source.as_str())
        .bind(run.delivery.as_str())
        .bind(&run.callback_url)
        .bind(run.inputs.to_string())
        .bind(&run.user)
        .bind(run.metadata.to_string())
        .bind(run.settings.to_string())
        .bind(run.created_at)
        .bind((!queued).then_some(run.created_at))
        .execute(&mut *tx)
        .await?;
        if !queued {
            schedule_steps(&mut tx, &run.id, &run.first_steps, run.created_at).await?;
        }
        if let Some(claim) = &run.idempotency {
            let mut response = claim.response.clone();
            if queued {
                response["run_status"] = status.as_str().into();
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (workspace_id, key, body_hash, request_id, response, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&run.workspace_id)
            .bind(&claim.key)
            .bind(&claim.body_hash)
            .bind(&run.id)
            .bind(response.to_string())
            .bind(run.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(CreatedRun::Created(status))
    }

    async fn run(&self, workspace_id: &str, id: &str) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {} FROM runs WHERE id = $1 AND workspace_id = $2",
            rows::RUN_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(workspace_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn run_by_id(&self, id: &str) -> Result<Option<RunRecord>> {
        let sql = format!("SELECT {} FROM runs WHERE id = $1", rows::RUN_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::run).transpose()
    }

    async fn step_executions(&self, run_id: &str) -> Result<Vec<StepExecution>> {
        let rows = sqlx::query(
            "SELECT * FROM step_executions WHERE run_id = $1 ORDER BY created_at, step_id, attempt",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::step_execution).collect()
    }

    async fn cancel_run(
        &self,
        workspace_id: &str,
        id: &str,
        terminal: &Terminal,
        now: Millis,
    ) -> Result<Cancelled> {
        let mut tx = self.write().await?;
        let Some(run) = load_run(&mut tx, id)
            .await?
            .filter(|r| r.workspace_id == workspace_id)
        else {
            return Ok(Cancelled::NotFound);
        };
        if run.status.is_terminal() {
            return Ok(Cancelled::AlreadyTerminal(run.status));
        }
        end_run(&mut tx, &run, terminal, now).await?;
        tx.commit().await?;
        Ok(Cancelled::Done)
    }

    async fn promote_queued(&self, deployment_id: &str, now: Millis) -> Result<()> {
        let mut tx = self.write().await?;
        promote_queued(&mut tx, deployment_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_runs(
        &self,
        workspace_id: &str,
        filter: &RunFilter,
        page: &Page,
    ) -> Result<Vec<RunRecord>> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        q.push(rows::RUN_COLUMNS);
        q.push(" FROM runs WHERE workspace_id = ")
            .push_bind(workspace_id);
        q.push(" AND id < ").push_bind(cursor(page));
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(source) = filter.source {
            q.push(" AND source = ").push_bind(source.as_str());
        }
        if let Some(delivery) = filter.delivery {
            q.push(" AND delivery = ").push_bind(delivery.as_str());
        }
        if let Some(deployment) = &filter.deployment {
            q.push(" AND (deployment_id = ")
                .push_bind(deployment)
                .push(" OR deployment_name = ")
                .push_bind(deployment)
                .push(")");
        }
        if let Some(user) = &filter.user {
            q.push(" AND run_user = ").push_bind(user);
        }
        for (key, value) in &filter.metadata {
            // The value matches the JSON value's text form: "abc", 981, true, null.
            let path = format!("$.\"{}\"", key.replace('"', ""));
            q.push(" AND (CASE json_type(metadata, ")
                .push_bind(path.clone())
                .push(
                    ") WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null' ",
                )
                .push("ELSE CAST(json_extract(metadata, ")
                .push_bind(path)
                .push(") AS TEXT) END) = ")
                .push_bind(value);
        }
        if let Some(since) = filter.since {
            q.push(" AND created_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND created_at < ").push_bind(until);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(rows::run).collect()
    }
}
