//! What PostgreSQL does its own way: locks and claims that keep racing nodes apart, signals
//! to the other nodes after commit, one-statement batches, and its own SQL (`DISTINCT ON`,
//! JSON operators, text that cannot hold U+0000).

use sqlx::postgres::{PgArguments, PgConnection, PgPool, Postgres};
use sqlx::query::Query;
use sqlx::{QueryBuilder, Row};

use super::{Autocommit, PgStore, Tx};
use crate::batch::{BatchWrite, Batcher};
use crate::shared::new_runs;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::shared::run_rows::{Ended, RunRows};
use crate::shared::{Backend, LockSpace, TIMER_LEASE_MS, rows};
use crate::{
    Applied, ClaimedJob, CreatedRun, Millis, NewRun, NewStep, Result, RunRecord, Signal,
    StepExecution,
};

impl Backend for PgStore {
    type Db = Postgres;
    type Tx = Tx;
    type Autocommit = Autocommit;

    const FOR_UPDATE: &str = " FOR UPDATE OF r";

    /// DISTINCT ON walks the primary key (workspace, name, version) backwards: the newest
    /// version of each name, names descending.
    const LIST_WORKFLOWS: &str = "SELECT DISTINCT ON (name) \
        name, version, definition, created_at FROM workflows \
        WHERE workspace_id = $1 AND name < $2 ORDER BY name DESC, version DESC LIMIT $3";

    /// One statement, `SKIP LOCKED` as for jobs, along the partial index of pending events.
    const CLAIM_DELIVERIES: &str = "UPDATE deliveries \
        SET run_at = $1 + $3, lease_token = lease_token + 1 \
        WHERE id = ANY(ARRAY( \
          SELECT id FROM deliveries WHERE run_at <= $1 ORDER BY run_at LIMIT $2 \
          FOR UPDATE SKIP LOCKED)) \
        RETURNING id, lease_token, run_id, deployment_id, event_type, payload, url, attempts";

    const LEASED_JOBS: &str = "SELECT j.id, j.run_id, j.step_id, j.attempt, j.lease_token, \
          j.kind \
        FROM json_array_elements($1::json) AS t (v) JOIN jobs j ON j.run_id = v ->> 0 \
          AND j.step_id = v ->> 1 AND j.attempt = (v ->> 2)::bigint";

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Tx> {
        Tx::begin(&self.pool, &self.notifier).await
    }

    fn attempts(&self) -> &Batcher<LoggedAttempt> {
        &self.attempts
    }

    async fn log_attempts(&self, attempts: &[&LoggedAttempt]) -> Result<()> {
        let writer = super::batch::Attempts {
            pool: self.pool.clone(),
        };
        writer.write(attempts).await.map(drop)
    }

    async fn autocommit(&self) -> Result<Autocommit> {
        Ok(Autocommit(self.pool.acquire().await?))
    }

    /// A transaction-scoped advisory lock, keyed by the space and a hash of `key` (a collision
    /// only serializes two unrelated keys). The space is the first key of
    /// `pg_advisory_xact_lock(int4, int4)`, a key space apart from sqlx's single-bigint
    /// migration lock.
    async fn lock(conn: &mut PgConnection, space: LockSpace, key: &str) -> Result<()> {
        let space: i32 = match space {
            LockSpace::WorkflowVersion => 1,
            LockSpace::DeploymentSlots => 2,
        };
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(space)
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Two queries: the runs, locked in id order, then their executions (see [`run_states`]).
    async fn load_run_states(
        conn: &mut PgConnection,
        run_ids: &[&str],
    ) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
        run_states(conn, run_ids, Self::FOR_UPDATE).await
    }

    /// The queries of [`Self::load_run_states`], without locks, on a pooled connection.
    async fn read_run_states(
        &self,
        run_ids: &[&str],
    ) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
        run_states(&mut *self.pool.acquire().await?, run_ids, "").await
    }

    async fn take_jobs(conn: &mut PgConnection, jobs: &[(i64, i64)]) -> Result<Vec<i64>> {
        let (ids, tokens): (Vec<i64>, Vec<i64>) = jobs.iter().copied().unzip();
        Ok(sqlx::query_scalar(
            "DELETE FROM jobs j USING unnest($1::bigint[], $2::bigint[]) AS t (id, token) \
             WHERE j.id = t.id AND j.lease_token = t.token RETURNING j.id",
        )
        .bind(ids)
        .bind(tokens)
        .fetch_all(conn)
        .await?)
    }

    fn finishes(&self) -> &Batcher<Finish, Applied> {
        &self.finishes
    }

    /// Joins the node's next batch of new runs (see [`super::batch`]): one statement and
    /// one commit for the run, its resolved steps, its first steps and their jobs, and its
    /// event when it ended at once, shared with whatever runs were created alongside.
    async fn create_unchecked(&self, run: &NewRun) -> Result<CreatedRun> {
        let (row, status) = new_runs::Row::new(run, Self::clean);
        Ok(new_runs::created(
            run,
            status,
            self.new_runs.write(row).await?,
        ))
    }

    fn deferred(tx: &mut Tx) -> &mut Option<RunRows> {
        &mut tx.deferred
    }

    /// One statement, then three more for runs that end with open work (see
    /// [`super::run_rows`]).
    async fn send_run_rows(tx: &mut Tx, rows: RunRows) -> Result<Vec<Ended>> {
        super::run_rows::send(tx, rows).await
    }

    /// One statement for all steps; wakes the other nodes for those due soon.
    async fn schedule_steps(
        tx: &mut Tx,
        run_id: &str,
        steps: &[NewStep],
        now: Millis,
    ) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let sql = format!("WITH {} SELECT 1", steps_ctes(1));
        let insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        bind_steps(insert, steps.iter().map(|s| (run_id, now, s)))
            .execute(&mut **tx)
            .await?;
        if NewStep::any_due_soon(steps, now) {
            tx.signal(Signal::Work);
        }
        Ok(())
    }

    /// Under the deployment's slot lock (which `create_run` takes to count and queue).
    async fn promote(tx: &mut Tx, deployment_id: &str, now: Millis) -> Result<()> {
        Self::lock(tx, LockSpace::DeploymentSlots, deployment_id).await?;
        // Free slots: unlimited without a limit (LIMIT NULL), none without the deployment. A
        // queued run locked by a concurrent cancel is skipped rather than waited for.
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

    /// One statement: `SKIP LOCKED` lets nodes claim side by side without waiting for or
    /// double-claiming each other's rows; the walk along `jobs_due` stops after `limit` rows,
    /// and `id = ANY(ARRAY(…))` keeps the update on the primary key whatever the planner
    /// guesses for the batch size (a join may turn into a scan of the whole backlog).
    async fn claim_due_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
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
        rows.iter().map(rows::claimed_job).collect()
    }

    /// `->>` gives SQL NULL for a JSON null, so that one is spelled out.
    fn push_metadata_filter(query: &mut QueryBuilder<Postgres>, key: &str, value: &str) {
        query
            .push(" AND (CASE json_typeof(metadata::json -> ")
            .push_bind(key)
            .push(") WHEN 'null' THEN 'null' ELSE metadata::json ->> ")
            .push_bind(key)
            .push(" END) = ")
            .push_bind(value);
    }
}

/// The CTEs inserting new steps (executions and jobs, `jobs` returning each one's run, step,
/// attempt and id), from seven arrays bound by [`bind_steps`] as `$first`…`$first+6`.
pub(super) fn steps_ctes(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "new AS ( \
           SELECT * FROM unnest({}::text[], {}::bigint[], {}::text[], {}::bigint[], \
             {}::bigint[], {}::bigint[], {}::bool[]) \
           AS t (run_id, at, step_id, attempt, run_at, lease_ms, running)), \
         executions AS ( \
           INSERT INTO step_executions (run_id, step_id, attempt, status, created_at, \
             started_at) \
           SELECT run_id, step_id, attempt, \
             CASE WHEN running THEN 'running' ELSE 'scheduled' END, \
             at, CASE WHEN running THEN at END FROM new), \
         jobs AS ( \
           INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) \
           SELECT run_id, step_id, attempt, run_at, lease_ms FROM new \
           RETURNING run_id, step_id, attempt, id)",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    )
}

/// Binds the seven arrays of [`steps_ctes`]: each step with its run and the time it was
/// scheduled at.
pub(super) fn bind_steps<'q, 's>(
    query: Query<'q, Postgres, PgArguments>,
    steps: impl Iterator<Item = (&'q str, Millis, &'s NewStep)> + Clone,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(steps.clone().map(|s| s.0).collect::<Vec<_>>())
        .bind(steps.clone().map(|s| s.1).collect::<Vec<_>>())
        .bind(
            steps
                .clone()
                .map(|s| s.2.step_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(steps.clone().map(|s| s.2.attempt).collect::<Vec<_>>())
        .bind(steps.clone().map(|s| s.2.run_at).collect::<Vec<_>>())
        .bind(steps.clone().map(|s| s.2.lease_ms).collect::<Vec<_>>())
        .bind(steps.map(|s| s.2.running).collect::<Vec<_>>())
}

/// Runs and their executions in two queries: the runs in id order (locked with `lock`, a
/// clause such as `FOR UPDATE OF r`, or empty), then their executions; the second one's
/// snapshot is taken once the locks are held (a join would read the executions as they were
/// before waiting for a lock). Neither may scan whole tables: a locked read runs in a write
/// transaction, which prices scans out (see `BEGIN_KEYED`); an unlocked one, on a pooled
/// connection, is not prepared, so it is planned for each list (`persistent(false)`: one more
/// round trip).
async fn run_states(
    conn: &mut PgConnection,
    run_ids: &[&str],
    lock: &str,
) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
    let sql = format!(
        "SELECT {} FROM runs r WHERE r.id = ANY($1) ORDER BY r.id{lock}",
        rows::RUN_COLUMNS
    );
    let prepared = !lock.is_empty();
    let runs = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run_ids)
        .persistent(prepared)
        .fetch_all(&mut *conn)
        .await?;
    let runs = runs.iter().map(rows::run).collect::<Result<Vec<_>>>()?;
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    // One index walk per run: `run_id = ANY($1)` let the planner pick a scan of the whole
    // table whenever its statistics lagged behind the table's growth (seen in the benchmark:
    // 7-18 ms for 50-200 runs of 25k executions). `OFFSET 0` keeps the lateral subquery
    // from being merged into a join the planner could hash.
    let sql = format!(
        "SELECT s.* FROM unnest($1::text[]) AS t (id) CROSS JOIN LATERAL ( \
           SELECT run_id, {} FROM step_executions WHERE run_id = t.id OFFSET 0) AS s \
         ORDER BY s.run_id, s.step_id, s.attempt",
        rows::STEP_COLUMNS
    );
    // The runs found: each id once, so each run's executions come once.
    let found: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let steps = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(found)
        .persistent(prepared)
        .fetch_all(&mut *conn)
        .await?;
    let steps: Vec<(String, StepExecution)> = (steps.iter())
        .map(|row| Ok((row.try_get("run_id")?, rows::step_execution(row)?)))
        .collect::<Result<_>>()?;
    // Executions come in run id order too: each run's are the next ones.
    let mut steps = steps.into_iter().peekable();
    let mut states = Vec::with_capacity(runs.len());
    for run in runs {
        let mut own = Vec::new();
        while let Some((_, step)) = steps.next_if(|(id, _)| *id == run.id) {
            own.push(step);
        }
        states.push((run, own));
    }
    Ok(states)
}
