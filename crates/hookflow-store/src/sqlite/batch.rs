//! What SQLite writes in shared batches (see [`crate::batch`]): new runs and delivery attempts
//! as one multi-statement query per batch (one round trip to the writer connection for the
//! whole batch, besides its savepoint), and finished jobs a batch per write (see
//! [`crate::shared::queue`]).

use std::sync::Arc;

use super::SqliteStore;
use super::dialect::{push_event, push_inline, push_steps};
use super::script::{SCRIPT_PARAMS, Script};
use super::writer::GroupWriter;
use crate::batch::BatchWrite;
use crate::shared::new_runs::Row;
use crate::shared::outbox::{LoggedAttempt, bind_attempt, log_attempt_sql, update_delivery_sql};
use crate::shared::queue::Finish;
use crate::shared::runs::INSERT_RUN;
use crate::{Applied, Result};

/// Writes `items`, each appended to a script by `push`, in one write: one multi-statement
/// query per [`SCRIPT_PARAMS`] parameters.
async fn write_scripts<T>(
    writer: &Arc<GroupWriter>,
    items: &[&T],
    push: impl Fn(Script, &T) -> Script,
) -> Result<Vec<()>> {
    let mut tx = writer.begin().await?;
    let mut script = Script::new("");
    for item in items {
        script = push(script, item);
        if script.params() >= SCRIPT_PARAMS {
            script.query()?.execute(&mut *tx).await?;
            script = Script::new("");
        }
    }
    if !script.is_empty() {
        script.query()?.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(vec![(); items.len()])
}

/// Writes batches of new runs: the run, its resolved steps, its first steps and their jobs,
/// and its event when it ended at once.
pub(super) struct NewRuns {
    pub(super) writer: Arc<GroupWriter>,
}

impl BatchWrite for NewRuns {
    type Item = Row;
    type Output = ();

    async fn write(&self, rows: &[&Row]) -> Result<Vec<()>> {
        write_scripts(&self.writer, rows, push_row).await
    }

    fn bytes(row: &Row) -> usize {
        row.bytes()
    }
}

/// Appends the statements creating the run of `row`.
fn push_row(script: Script, row: &Row) -> Script {
    let first = script.params();
    let mut script = script
        .numbered(INSERT_RUN)
        .bind(&row.id)
        .bind(&row.workspace_id)
        .bind(&row.deployment_id)
        .bind(&row.deployment_name)
        .bind(&row.variant)
        .bind(&row.workflow)
        .bind(row.version)
        .bind(row.status)
        .bind(row.source)
        .bind(row.delivery)
        .bind(&row.callback_url)
        .bind(&row.inputs)
        .bind(&row.user)
        .bind(&row.metadata)
        .bind(&row.settings)
        .bind(row.created_at)
        .bind(row.created_at)
        .bind(&row.output)
        .bind(&row.error)
        .bind(row.finished_at);
    // INSERT_RUN's $1 is the run's id, $2 its workspace, $3 its deployment, $16 its creation
    // time.
    let [id, ws, deployment, now] = [1, 2, 3, 16].map(|n| format!("${}", first + n));
    let inline: Vec<_> = (row.inline.iter())
        .map(|(step, status, output)| (step.as_str(), *status, output.clone()))
        .collect();
    push_inline(&mut script, &id, &now, &inline);
    push_steps(&mut script, &id, &now, &row.start, row.created_at);
    if let Some(event) = &row.event {
        push_event(&mut script, [&id, &ws, &deployment], &now, event);
    }
    script
}

/// Logs a delivery attempt and applies its effect to the event: two statements.
const RECORD_ATTEMPT: &str = concat!(log_attempt_sql!(), "; ", update_delivery_sql!());

/// Writes batches of delivery attempts.
pub(super) struct Attempts {
    pub(super) writer: Arc<GroupWriter>,
}

impl BatchWrite for Attempts {
    type Item = LoggedAttempt;
    type Output = ();

    async fn write(&self, attempts: &[&LoggedAttempt]) -> Result<Vec<()>> {
        write_scripts(&self.writer, attempts, |script, logged| {
            bind_attempt!(script.numbered(RECORD_ATTEMPT), logged)
        })
        .await
    }

    fn bytes(logged: &LoggedAttempt) -> usize {
        logged.bytes()
    }
}

/// Applies batches of finished jobs: one write each, whose run writes are sent together once
/// per round (see [`WriteTx::defer_run_writes`]).
pub(super) struct Finishes {
    pub(super) writer: Arc<GroupWriter>,
}

impl BatchWrite for Finishes {
    type Item = Finish;
    type Output = Applied;

    async fn write(&self, batch: &[&Finish]) -> Result<Vec<Applied>> {
        let mut tx = self.writer.begin().await?;
        tx.defer_run_writes();
        let applied = SqliteStore::finish_batch(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Each job's writes are statements of their own: no batch grows one large statement.
    fn bytes(_finish: &Finish) -> usize {
        0
    }
}
