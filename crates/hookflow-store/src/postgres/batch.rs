//! What PostgreSQL writes in shared batches (see [`crate::batch`]): new runs, which concurrent
//! [`Backend::create_unchecked`] calls on one node hand over, are written by one statement, in
//! one transaction, so PostgreSQL parses, executes and flushes its WAL once per batch instead of
//! once per run; so are delivery attempts. Finished jobs are applied a batch per transaction
//! (see [`crate::shared::queue`]), their runs' writes sent once per round (see
//! [`super::run_rows`]).
//!
//! [`Backend::create_unchecked`]: crate::shared::Backend::create_unchecked

use sqlx::FromRow;
use sqlx::postgres::PgRow;
use sqlx::postgres::{PgArguments, PgPool, Postgres};
use sqlx::query::Query;

use super::listen::Notifier;
use super::{PgStore, Tx};
use crate::batch::BatchWrite;
use crate::shared::new_runs::{self, Row};
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::{Applied, NewEvent, NewStep, Result, Signal};

/// Writes batches of delivery attempts: one statement each.
pub(super) struct Attempts {
    pub(super) pool: PgPool,
}

impl BatchWrite for Attempts {
    type Item = LoggedAttempt;
    type Output = ();

    /// The log rows and the events' updates are one statement. An event twice in one batch
    /// (attempts under two leases) is updated by the attempt whose lease still holds.
    async fn write(&self, attempts: &[&LoggedAttempt]) -> Result<Vec<()>> {
        let text = |f: fn(&LoggedAttempt) -> Option<&str>| {
            attempts.iter().map(|a| f(a)).collect::<Vec<_>>()
        };
        let number = |f: fn(&LoggedAttempt) -> Option<i64>| {
            attempts.iter().map(|a| f(a)).collect::<Vec<_>>()
        };
        sqlx::query(
            "WITH input AS ( \
               SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], \
                 $5::text[], $6::bigint[], $7::text[], $8::text[], $9::bigint[], $10::text[], \
                 $11::bigint[], $12::text[], $13::bigint[], $14::bigint[]) \
               AS t (id, lease, status, run_at, run_id, attempt, trigger, url, status_code, \
                 response_body, duration_ms, error, created_at, next_attempt_at)), \
             logged AS ( \
               INSERT INTO delivery_attempts (delivery_id, run_id, attempt, trigger, url, \
                 status_code, response_body, duration_ms, error, created_at, next_attempt_at) \
               SELECT id, run_id, attempt, trigger, url, status_code, response_body, \
                 duration_ms, error, created_at, next_attempt_at FROM input) \
             UPDATE deliveries d SET attempts = d.attempts + 1, \
               status = COALESCE(i.status, d.status), \
               run_at = CASE WHEN i.status IS NULL THEN d.run_at ELSE i.run_at END, \
               updated_at = i.created_at \
             FROM input i WHERE d.id = i.id AND (i.lease IS NULL OR d.lease_token = i.lease)",
        )
        .bind(text(|a| Some(&a.event_id)))
        .bind(number(|a| a.lease_token))
        .bind(text(|a| a.next.map(|(status, _)| status)))
        .bind(number(|a| a.next.and_then(|(_, at)| at)))
        .bind(text(|a| Some(&a.run_id)))
        .bind(number(|a| Some(a.attempt.attempt)))
        .bind(text(|a| Some(a.attempt.trigger.as_str())))
        .bind(text(|a| Some(&a.attempt.url)))
        .bind(number(|a| a.attempt.status_code))
        .bind(text(|a| a.attempt.response_body.as_deref()))
        .bind(number(|a| Some(a.attempt.duration_ms)))
        .bind(text(|a| a.attempt.error.as_deref()))
        .bind(number(|a| Some(a.attempt.created_at)))
        .bind(number(|a| a.attempt.next_attempt_at))
        .execute(&self.pool)
        .await?;
        Ok(vec![(); attempts.len()])
    }

    fn bytes(logged: &LoggedAttempt) -> usize {
        logged.bytes()
    }
}

impl Row {
    /// What the other nodes must hear once this run is committed.
    fn signals(&self, signals: &mut Vec<Signal>) {
        for (wanted, signal) in [
            (
                NewStep::any_due_soon(&self.start, self.created_at),
                Signal::Work,
            ),
            (
                self.event.is_some() && self.event_due <= self.created_at,
                Signal::Outbox,
            ),
        ] {
            if wanted && !signals.contains(&signal) {
                signals.push(signal);
            }
        }
    }
}

/// Writes batches of new runs, then wakes the other nodes; answers the id of each run's
/// leased job (see [`crate::NewRun::lease_first_step`]).
pub(super) struct NewRuns {
    pub(super) pool: PgPool,
    pub(super) notifier: Notifier,
}

impl BatchWrite for NewRuns {
    type Item = Row;
    type Output = Option<i64>;

    /// One statement for all `rows` (autocommit: one transaction), returning the keys and ids
    /// of the jobs it inserted; then wakes the other nodes.
    async fn write(&self, rows: &[&Row]) -> Result<Vec<Option<i64>>> {
        let jobs = statement(rows)
            .try_map(|row: PgRow| <(String, String, i64, i64)>::from_row(&row))
            .fetch_all(&self.pool)
            .await?;
        let mut signals = Vec::new();
        for row in rows {
            row.signals(&mut signals);
        }
        self.notifier.send(signals);
        Ok(new_runs::leased_ids(rows, jobs))
    }

    fn bytes(row: &Row) -> usize {
        row.bytes()
    }
}

/// The statement inserting `rows`: their runs, resolved steps, first steps and jobs, events;
/// it returns each job's (run, step, attempt, id).
fn statement<'q>(rows: &[&'q Row]) -> Query<'q, Postgres, PgArguments> {
    let sql = format!(
        "WITH run AS ( \
           INSERT INTO runs (id, workspace_id, deployment_id, deployment_name, variant, \
             workflow, version, status, source, delivery, callback_url, inputs, run_user, \
             metadata, settings, created_at, started_at, output, error, finished_at) \
           SELECT id, workspace_id, deployment_id, deployment_name, variant, workflow, \
             version, status, source, delivery, callback_url, inputs, run_user, metadata, \
             settings, created_at, created_at, output, error, finished_at \
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[], $17::text[], \
             $18::text[], $19::bigint[]) \
           AS t (id, workspace_id, deployment_id, deployment_name, variant, workflow, \
             version, status, source, delivery, callback_url, inputs, run_user, metadata, \
             settings, created_at, output, error, finished_at)), \
         inline AS ( \
           INSERT INTO step_executions (run_id, step_id, attempt, status, output, \
             created_at, started_at, finished_at) \
           SELECT run_id, step_id, 1, status, output, at, at, at \
           FROM unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::bigint[]) \
           AS t (run_id, step_id, status, output, at)), \
         {steps}, \
         events AS ( \
           INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, event_type, \
             payload, url, status, run_at, created_at, updated_at) \
           SELECT id, run_id, workspace_id, deployment_id, event_type, payload, url, \
             'pending', due, at, at \
           FROM unnest($32::text[], $33::text[], $34::text[], $35::text[], $36::text[], \
             $37::text[], $38::text[], $39::bigint[], $40::bigint[]) \
           AS t (id, run_id, workspace_id, deployment_id, event_type, payload, url, at, due)) \
         SELECT run_id, step_id, attempt, id FROM jobs",
        steps = super::dialect::steps_ctes(25),
    );
    let query = bind_runs(sqlx::query(sqlx::AssertSqlSafe(sql)), rows);
    let inline = rows.iter().flat_map(|r| {
        r.inline
            .iter()
            .map(move |(step, status, output)| (r, step, status, output))
    });
    let query = query
        .bind(inline.clone().map(|i| i.0.id.as_str()).collect::<Vec<_>>())
        .bind(inline.clone().map(|i| i.1.as_str()).collect::<Vec<_>>())
        .bind(inline.clone().map(|i| *i.2).collect::<Vec<_>>())
        .bind(inline.clone().map(|i| i.3.as_deref()).collect::<Vec<_>>())
        .bind(inline.map(|i| i.0.created_at).collect::<Vec<_>>());
    let steps = rows.iter().flat_map(|r| {
        r.start
            .iter()
            .map(move |s| (r.id.as_str(), r.created_at, s))
    });
    let query = super::dialect::bind_steps(query, steps);
    let events = rows.iter().filter_map(|r| r.event.as_ref().map(|e| (r, e)));
    let event_column = |f: fn(&NewEvent) -> &str| events.clone().map(|(_, e)| f(e)).collect();
    let run_column = |f: fn(&Row) -> &str| events.clone().map(|(r, _)| f(r)).collect();
    query
        .bind::<Vec<_>>(event_column(|e| &e.id))
        .bind::<Vec<_>>(run_column(|r| &r.id))
        .bind::<Vec<_>>(run_column(|r| &r.workspace_id))
        .bind::<Vec<_>>(run_column(|r| &r.deployment_id))
        .bind::<Vec<_>>(event_column(|e| &e.event_type))
        .bind::<Vec<_>>(event_column(|e| &e.payload))
        .bind::<Vec<_>>(event_column(|e| &e.url))
        .bind(
            events
                .clone()
                .map(|(r, _)| r.created_at)
                .collect::<Vec<_>>(),
        )
        .bind(events.map(|(r, _)| r.event_due).collect::<Vec<_>>())
}

/// Binds the runs' nineteen columns, `$1`…`$19`.
fn bind_runs<'q>(
    query: Query<'q, Postgres, PgArguments>,
    rows: &[&'q Row],
) -> Query<'q, Postgres, PgArguments> {
    let text = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let optional = |f: fn(&Row) -> Option<&str>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    query
        .bind(text(|r| &r.id))
        .bind(text(|r| &r.workspace_id))
        .bind(text(|r| &r.deployment_id))
        .bind(text(|r| &r.deployment_name))
        .bind(text(|r| &r.variant))
        .bind(text(|r| &r.workflow))
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(text(|r| r.status))
        .bind(text(|r| r.source))
        .bind(text(|r| r.delivery))
        .bind(optional(|r| r.callback_url.as_deref()))
        .bind(text(|r| &r.inputs))
        .bind(optional(|r| r.user.as_deref()))
        .bind(text(|r| &r.metadata))
        .bind(text(|r| &r.settings))
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(optional(|r| r.output.as_deref()))
        .bind(optional(|r| r.error.as_deref()))
        .bind(rows.iter().map(|r| r.finished_at).collect::<Vec<_>>())
}

/// Applies batches of finished jobs, one transaction each, then wakes the other nodes.
pub(super) struct Finishes {
    pub(super) pool: PgPool,
    pub(super) notifier: Notifier,
}

impl BatchWrite for Finishes {
    type Item = Finish;
    type Output = Applied;

    async fn write(&self, batch: &[&Finish]) -> Result<Vec<Applied>> {
        let mut tx = Tx::begin(&self.pool, &self.notifier).await?;
        tx.defer_run_writes();
        let applied = PgStore::finish_batch(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Not counted: sizing an output means serializing it. The rows a round writes together
    /// (see [`super::run_rows`]) copy outputs the batch already holds, each bounded by its
    /// step's limits, and a batch holds at most [`crate::batch`]'s item limit.
    fn bytes(_finish: &Finish) -> usize {
        0
    }
}
