//! What SQLite does its own way. Every write goes through the one writer connection, so writes
//! never race: there are no row or advisory locks to take, and no other node to signal. What
//! remains is SQL that SQLite spells differently (no data-changing CTEs, no `DISTINCT ON`, its
//! own JSON functions).

use sqlx::QueryBuilder;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};

use super::SqliteStore;
use super::sets::Sets;
use super::writer::WriteTx;
use crate::batch::{BatchWrite, Batcher};
use crate::shared::new_runs::{self, Row};
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::shared::run_rows::{Ended, RunRows};
use crate::shared::{Backend, LockSpace, TIMER_LEASE_MS, rows};
use crate::{
    Applied, ClaimedJob, CreatedRun, JobKind, Millis, NewRun, NewStep, Result, RunRecord, Signal,
    StepExecution,
};

impl Backend for SqliteStore {
    type Db = Sqlite;
    type Tx = WriteTx;
    type Autocommit = WriteTx;

    /// Nothing: a write holds the whole database until it commits.
    const FOR_UPDATE: &str = "";

    const LIST_WORKFLOWS: &str = "SELECT w.name, w.version, w.definition, w.created_at \
        FROM workflows w WHERE w.workspace_id = $1 AND w.name < $2 AND w.version = ( \
          SELECT MAX(version) FROM workflows v \
          WHERE v.workspace_id = w.workspace_id AND v.name = w.name) \
        ORDER BY w.name DESC LIMIT $3";

    const CLAIM_DELIVERIES: &str = "UPDATE deliveries \
        SET run_at = $1 + $3, lease_token = lease_token + 1 \
        WHERE id IN (SELECT id FROM deliveries WHERE run_at <= $1 ORDER BY run_at LIMIT $2) \
        RETURNING id, lease_token, run_id, deployment_id, event_type, payload, url, attempts";

    const LEASED_JOBS: &str = "SELECT j.id, j.run_id, j.step_id, j.attempt, j.lease_token, \
          j.kind \
        FROM json_each($1) AS v JOIN jobs j ON j.run_id = v.value ->> 0 \
          AND j.step_id = v.value ->> 1 AND j.attempt = v.value ->> 2";

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// One savepoint of a group-committed transaction (see [`super::writer`]).
    async fn begin(&self) -> Result<WriteTx> {
        self.writer.begin().await
    }

    fn attempts(&self) -> &Batcher<LoggedAttempt> {
        &self.attempts
    }

    async fn log_attempts(&self, attempts: &[&LoggedAttempt]) -> Result<()> {
        let writer = super::batch::Attempts {
            writer: self.writer.clone(),
        };
        writer.write(attempts).await.map(drop)
    }

    async fn autocommit(&self) -> Result<WriteTx> {
        self.writer.begin().await
    }

    /// Nothing to take: a write excludes every other.
    async fn lock(_conn: &mut SqliteConnection, _space: LockSpace, _key: &str) -> Result<()> {
        Ok(())
    }

    /// One query: a write excludes every other, so the join reads settled runs.
    async fn load_run_states(
        conn: &mut SqliteConnection,
        run_ids: &[&str],
    ) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
        let filter = "r.id IN (SELECT value FROM json_each($1))";
        let rows = sqlx::query(sqlx::AssertSqlSafe(rows::run_states_sql(filter)))
            .bind(json_list(run_ids)?)
            .fetch_all(conn)
            .await?;
        rows::run_states(&rows)
    }

    /// The query of [`Self::load_run_states`] on a reader connection.
    async fn read_run_states(
        &self,
        run_ids: &[&str],
    ) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
        Self::load_run_states(&mut *self.reader().acquire().await?, run_ids).await
    }

    async fn take_jobs(conn: &mut SqliteConnection, jobs: &[(i64, i64)]) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "DELETE FROM jobs WHERE (id, lease_token) IN \
               (SELECT value ->> 0, value ->> 1 FROM json_each($1)) RETURNING id",
        )
        .bind(json_list(jobs)?)
        .fetch_all(conn)
        .await?)
    }

    fn finishes(&self) -> &Batcher<Finish, Applied> {
        &self.finishes
    }

    /// Joins the node's next batch of new runs (see [`super::batch`]).
    async fn create_unchecked(&self, run: &NewRun) -> Result<CreatedRun> {
        let (row, status) = Row::new(run, Self::clean);
        Ok(new_runs::created(
            run,
            status,
            self.new_runs.write(row).await?,
        ))
    }

    fn deferred(tx: &mut WriteTx) -> &mut Option<RunRows> {
        &mut tx.deferred
    }

    /// One round trip: every change as one multi-statement query (see [`super::sets`]).
    async fn send_run_rows(tx: &mut WriteTx, rows: RunRows) -> Result<Vec<Ended>> {
        send_sets(tx, rows.into()).await
    }

    /// One round trip for all steps: both inserts in one multi-statement query.
    async fn schedule_steps(
        tx: &mut WriteTx,
        run_id: &str,
        steps: &[NewStep],
        now: Millis,
    ) -> Result<()> {
        let mut rows = RunRows::default();
        rows.push_steps(run_id, steps, now);
        Self::send_run_rows(tx, rows).await.map(drop)
    }

    async fn promote(tx: &mut WriteTx, deployment_id: &str, now: Millis) -> Result<()> {
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
            .fetch_optional(&mut **tx)
            .await?;
            let Some(run_id) = promoted else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) \
                 VALUES ($1, NULL, 0, $2, $3)",
            )
            .bind(&run_id)
            .bind(now)
            .bind(TIMER_LEASE_MS)
            .execute(&mut **tx)
            .await?;
        }
    }

    /// Leases the jobs, then marks the steps they execute running, in one write of two
    /// statements.
    async fn claim_due_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET run_at = $1 + lease_ms, lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM jobs WHERE run_at <= $1 ORDER BY run_at LIMIT $2) \
             RETURNING id, run_id, step_id, attempt, lease_token, kind",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let jobs = rows
            .iter()
            .map(rows::claimed_job)
            .collect::<Result<Vec<_>>>()?;
        let executing: Vec<i64> = jobs
            .iter()
            .filter(|j| j.step_id.is_some() && j.kind == JobKind::Execute)
            .map(|j| j.id)
            .collect();
        if !executing.is_empty() {
            sqlx::query(
                "UPDATE step_executions AS s SET status = 'running', started_at = $1 \
                 FROM jobs j WHERE j.id IN (SELECT value FROM json_each($2)) \
                 AND s.run_id = j.run_id AND s.step_id = j.step_id AND s.attempt = j.attempt \
                 AND s.status = 'scheduled'",
            )
            .bind(now)
            .bind(serde_json::to_string(&executing).expect("ids serialize"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(jobs)
    }

    fn push_metadata_filter(query: &mut QueryBuilder<Sqlite>, key: &str, value: &str) {
        let path = format!("$.\"{}\"", key.replace('"', ""));
        query
            .push(" AND (CASE json_type(metadata, ")
            .push_bind(path.clone())
            .push(") WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null' ")
            .push("ELSE CAST(json_extract(metadata, ")
            .push_bind(path)
            .push(") AS TEXT) END) = ")
            .push_bind(value);
    }
}

/// Sends rows of runs, returning the runs they ended.
async fn send_sets(tx: &mut WriteTx, sets: Sets) -> Result<Vec<Ended>> {
    let script = sets.script();
    if script.is_empty() {
        return Ok(Vec::new());
    }
    let (sql, args) = script.into_parts()?;
    Ok(sqlx::query_as_with(sql, args).fetch_all(&mut **tx).await?)
}

/// A list as the JSON text `json_each` reads (SQLite binds no arrays).
fn json_list<T: serde::Serialize>(items: &[T]) -> Result<String> {
    serde_json::to_string(items).map_err(|e| crate::StoreError::Corrupt(e.to_string()))
}

impl WriteTx {
    /// Nothing to do: SQLite serves one node, and every wake-up is in-process.
    pub(crate) fn signal(&mut self, _signal: Signal) {}

    /// From now on, `write_run` adds the run's rows to those of this write, sent by
    /// `flush_run_writes` (see [`Backend::deferred`]) (a batch of outcomes then costs
    /// one round trip to the writer connection instead of one per run). Every later write of
    /// a run it holds must come after a flush; committing with writes left unflushed fails.
    pub(super) fn defer_run_writes(&mut self) {
        self.deferred = Some(RunRows::default());
    }
}
