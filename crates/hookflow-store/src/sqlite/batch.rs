//! What SQLite writes in shared batches (see [`crate::batch`]): new runs and delivery attempts
//! as one multi-statement query per batch (one round trip to the writer connection for the
//! whole batch, besides its savepoint; see [`super::sets`]), and finished jobs a batch per
//! write (see [`crate::shared::queue`]).

use std::sync::Arc;

use super::SqliteStore;
use super::sets::Sets;
use super::writer::GroupWriter;
use crate::batch::BatchWrite;
use crate::shared::new_runs::Row;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::{Applied, Result};

/// Writes `items`, each added to the rows of the batch by `push`, in one write: one
/// multi-statement query (see [`super::sets`]).
async fn write_sets<T>(
    writer: &Arc<GroupWriter>,
    items: &[&T],
    push: impl Fn(&mut Sets, &T),
) -> Result<Vec<()>> {
    let mut sets = Sets::default();
    for item in items {
        push(&mut sets, item);
    }
    let mut tx = writer.begin().await?;
    sets.script().query()?.execute(&mut *tx).await?;
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
        write_sets(&self.writer, rows, Sets::push_new_run).await
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
        write_sets(&self.writer, attempts, Sets::push_attempt).await
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
