//! What SQLite writes in shared batches (see [`crate::batch`]): new runs and delivery attempts
//! as one multi-statement query per batch (one round trip to the writer connection for the
//! whole batch, besides its savepoint; see [`super::sets`]), and finished jobs a batch per
//! write (see [`crate::shared::queue`]).

use std::sync::Arc;

use super::SqliteStore;
use super::sets::Sets;
use super::writer::GroupWriter;
use crate::batch::BatchWrite;
use crate::shared::new_runs::{self, Row};
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::{Applied, Result};

/// The rows of `items`, each added by `push`, to write together (see [`super::sets`]).
fn sets_of<T>(items: &[&T], push: impl Fn(&mut Sets, &T)) -> Sets {
    let mut sets = Sets::default();
    for item in items {
        push(&mut sets, item);
    }
    sets
}

/// Writes batches of new runs: the run, its resolved steps, its first steps and their jobs,
/// and its event when it ended at once; answers the id of each run's leased job (see
/// [`crate::NewRun::lease_first_step`]), as the insert of the jobs returns them.
pub(super) struct NewRuns {
    pub(super) writer: Arc<GroupWriter>,
}

impl BatchWrite for NewRuns {
    type Item = Row;
    type Output = Option<i64>;

    async fn write(&self, rows: &[&Row]) -> Result<Vec<Option<i64>>> {
        let (sql, args) = sets_of(rows, Sets::push_new_run)
            .new_runs_script()
            .into_parts()?;
        let mut tx = self.writer.begin().await?;
        let jobs = sqlx::query_as_with(sql, args).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(new_runs::leased_ids(rows, jobs))
    }

    fn bytes(row: &Row) -> usize {
        row.bytes()
    }
}

/// Writes batches of delivery attempts.
pub(super) struct Attempts {
    pub(super) writer: Arc<GroupWriter>,
}

impl BatchWrite for Attempts {
    type Item = LoggedAttempt;
    type Output = ();

    async fn write(&self, attempts: &[&LoggedAttempt]) -> Result<Vec<()>> {
        let script = sets_of(attempts, Sets::push_attempt).script();
        let mut tx = self.writer.begin().await?;
        script.query()?.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(vec![(); attempts.len()])
    }

    fn bytes(logged: &LoggedAttempt) -> usize {
        logged.bytes()
    }
}

/// Applies batches of finished jobs: one write each, whose run writes are sent together once
/// per round (see [`super::writer::WriteTx::defer_run_writes`]).
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

    /// Not counted: sizing an output means serializing it. The rows of a round copy outputs
    /// the batch already holds, each bounded by its step's limits (1 MiB for an `http`
    /// response), and a batch holds at most [`crate::batch`]'s item limit.
    fn bytes(_finish: &Finish) -> usize {
        0
    }
}
