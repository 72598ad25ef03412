//! What SQLite does its own way. Every write goes through the one writer connection, so writes
//! never race: there are no row or advisory locks to take, and no other node to signal. What
//! remains is SQL that SQLite spells differently (no data-changing CTEs, no `DISTINCT ON`, its
//! own JSON functions).

use std::collections::HashSet;

use sqlx::QueryBuilder;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};

use super::SqliteStore;
use super::script::{SCRIPT_PARAMS, Script};
use super::writer::WriteTx;
use crate::batch::{BatchWrite, Batcher};
use crate::shared::new_runs::Row;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::shared::run_writes::{ABANDON_OPEN_WORK, PROMOTE_CHECK, RunWrites};
use crate::shared::{Backend, LockSpace, TIMER_LEASE_MS, rows};
use crate::{
    Applied, ClaimedJob, JobKind, Millis, NewEvent, NewRun, NewStep, Result, RunRecord, RunStatus,
    Signal, StepExecution,
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

    /// SQLite text holds any character.
    fn clean(text: Option<&str>) -> Option<String> {
        text.map(str::to_string)
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
    async fn create_unchecked(&self, run: &NewRun) -> Result<RunStatus> {
        let (row, status) = Row::new(run, Self::clean);
        self.new_runs.write(row).await?;
        Ok(status)
    }

    /// One round trip: every change as one multi-statement query, the run's `UPDATE` last
    /// (the only statement that returns a row). In a write that defers run writes (see
    /// [`WriteTx::defer_run_writes`]) the statements join the write's script instead, and its
    /// flush promotes.
    async fn write_run(tx: &mut WriteTx, writes: &RunWrites<'_>) -> Result<bool> {
        if let Some(script) = tx.deferred.as_mut() {
            push_run_writes(script, writes);
            if script.params() >= SCRIPT_PARAMS {
                Self::flush_run_writes(tx).await?;
            }
            return Ok(false);
        }
        let mut script = Script::new("");
        push_run_writes(&mut script, writes);
        let ended = send_run_writes(tx, script).await?;
        Ok(ended.first().is_some_and(|end| end.promote == Some(true)))
    }

    /// Sends the run writes the write deferred, in one multi-statement query, then promotes
    /// the deployments of the runs it ended that call for it.
    async fn flush_run_writes(tx: &mut WriteTx) -> Result<()> {
        let Some(script) = tx.deferred.replace(Script::new("")) else {
            return Ok(());
        };
        let mut promoted = HashSet::new();
        for end in send_run_writes(tx, script).await? {
            if end.promote == Some(true) && promoted.insert(end.deployment_id.clone()) {
                Self::promote(tx, &end.deployment_id, end.finished_at).await?;
            }
        }
        Ok(())
    }

    /// One round trip for all steps: both inserts in one multi-statement query.
    async fn schedule_steps(
        tx: &mut WriteTx,
        run_id: &str,
        steps: &[NewStep],
        now: Millis,
    ) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut script = Script::new("");
        let (id, at) = (script.param(run_id), script.param(now));
        push_steps(&mut script, &id, &at, steps, now);
        script.query()?.execute(&mut **tx).await?;
        Ok(())
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

/// A run a script ended, as its `UPDATE` returns it.
#[derive(sqlx::FromRow)]
struct Ended {
    deployment_id: String,
    finished_at: Millis,
    /// The run's [`PROMOTE_CHECK`].
    promote: Option<bool>,
}

/// Appends a live run's writes (see [`RunWrites`]) to `script`, the run's `UPDATE` last.
fn push_run_writes(script: &mut Script, writes: &RunWrites<'_>) {
    let run = writes.run;
    let (id, now) = (script.param(&run.id), script.param(writes.now));
    if let Some(step) = &writes.step {
        let update = format!(
            "UPDATE step_executions SET status = {}, output = {}, error = {}, \
             finished_at = {now}, started_at = COALESCE(started_at, {now}) \
             WHERE run_id = {id} AND step_id = {} AND attempt = {}",
            script.param(step.status),
            script.param(&step.output),
            script.param(&step.error),
            script.param(step.step_id),
            script.param(step.attempt),
        );
        script.statement(&update);
    }
    push_inline(script, &id, &now, &writes.inline);
    push_steps(script, &id, &now, writes.start, writes.now);
    if writes.abandon {
        for sql in ABANDON_OPEN_WORK {
            script.statement_with(sql, &[&id, &now]);
        }
    }
    if let Some(end) = writes.end {
        if let Some(event) = &end.event {
            let (ws, deployment) = (
                script.param(&run.workspace_id),
                script.param(&run.deployment_id),
            );
            push_event(script, [&id, &ws, &deployment], &now, event);
        }
        let update = format!(
            "UPDATE runs SET status = {}, output = {}, error = {}, finished_at = {now} \
             WHERE id = {id} RETURNING deployment_id, finished_at, {PROMOTE_CHECK} AS promote",
            script.param(end.status.as_str()),
            script.param(end.output.as_ref().map(|v| v.to_string())),
            script.param(SqliteStore::clean(end.error.as_deref())),
        );
        script.statement(&update);
    } else if let Some(status) = writes.status {
        let update = format!(
            "UPDATE runs SET status = {} WHERE id = {id}",
            script.param(status.as_str())
        );
        script.statement(&update);
    }
}

/// Sends a script of run writes, returning the runs it ended.
async fn send_run_writes(tx: &mut WriteTx, script: Script) -> Result<Vec<Ended>> {
    if script.is_empty() {
        return Ok(Vec::new());
    }
    let (sql, args) = script.into_parts()?;
    Ok(sqlx::query_as_with(sql, args).fetch_all(&mut **tx).await?)
}

/// Appends the statements inserting `steps` (executions and jobs) of the run whose id is the
/// placeholder `run`, created at the placeholder `at` (worth `now`).
pub(super) fn push_steps(script: &mut Script, run: &str, at: &str, steps: &[NewStep], now: Millis) {
    if steps.is_empty() {
        return;
    }
    let mut executions = Vec::with_capacity(steps.len());
    let mut jobs = Vec::with_capacity(steps.len());
    for step in steps {
        let (id, attempt) = (script.param(&step.step_id), script.param(step.attempt));
        executions.push(format!(
            "({run}, {id}, {attempt}, {}, {at}, {})",
            script.param(if step.timer { "running" } else { "scheduled" }),
            script.param(step.timer.then_some(now)),
        ));
        jobs.push(format!(
            "({run}, {id}, {attempt}, {}, {})",
            script.param(step.run_at),
            script.param(step.lease_ms),
        ));
    }
    script.statement(&format!(
        "INSERT INTO step_executions (run_id, step_id, attempt, status, created_at, \
         started_at) VALUES {}",
        executions.join(", ")
    ));
    script.statement(&format!(
        "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) VALUES {}",
        jobs.join(", ")
    ));
}

/// Appends the statement recording `inline` (steps the planner resolved: step, status, output)
/// as finished first attempts of the run whose id is the placeholder `run`, at `at`.
pub(super) fn push_inline(
    script: &mut Script,
    run: &str,
    at: &str,
    inline: &[(&str, &'static str, Option<String>)],
) {
    if inline.is_empty() {
        return;
    }
    let mut values = Vec::with_capacity(inline.len());
    for (step_id, status, output) in inline {
        values.push(format!(
            "({run}, {}, 1, {}, {}, {at}, {at}, {at})",
            script.param(*step_id),
            script.param(*status),
            script.param(output),
        ));
    }
    script.statement(&format!(
        "INSERT INTO step_executions (run_id, step_id, attempt, status, output, created_at, \
         started_at, finished_at) VALUES {}",
        values.join(", ")
    ));
}

/// Appends the statement inserting a run's event, due at `at`; `[run, workspace, deployment]`
/// are the placeholders of the run's ids.
pub(super) fn push_event(
    script: &mut Script,
    [run, ws, deployment]: [&str; 3],
    at: &str,
    event: &NewEvent,
) {
    let insert = format!(
        "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, event_type, payload, \
         url, status, run_at, created_at, updated_at) \
         VALUES ({}, {run}, {ws}, {deployment}, {}, {}, {}, 'pending', {at}, {at}, {at})",
        script.param(&event.id),
        script.param(&event.event_type),
        script.param(&event.payload),
        script.param(&event.url),
    );
    script.statement(&insert);
}

/// A list as the JSON text `json_each` reads (SQLite binds no arrays).
fn json_list<T: serde::Serialize>(items: &[T]) -> Result<String> {
    serde_json::to_string(items).map_err(|e| crate::StoreError::Corrupt(e.to_string()))
}

impl WriteTx {
    /// Nothing to do: SQLite serves one node, and every wake-up is in-process.
    pub(crate) fn signal(&mut self, _signal: Signal) {}

    /// From now on, [`SqliteStore::write_run`] adds the run's statements to one script of
    /// this write, sent by [`SqliteStore::flush_run_writes`] (a batch of outcomes then costs
    /// one round trip to the writer connection instead of one per run). Every later write of
    /// a run it holds must come after a flush; committing with writes left unflushed fails.
    pub(super) fn defer_run_writes(&mut self) {
        self.deferred = Some(Script::new(""));
    }
}
