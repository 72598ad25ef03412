//! SQLite backend: one writer connection (writes serialize anyway; this avoids busy retries)
//! and a pool of readers over WAL.
//!
//! The store traits come from the shared layer (`crate::shared`); `dialect` holds what
//! SQLite does its own way, `writer` the group commit every write goes through, `batch` what is
//! written in shared batches, and `sets` how the rows of many runs are written together.

mod batch;
mod dialect;
mod script;
mod sets;
mod writer;

pub use writer::{COMMIT_SECONDS, WAL_FLUSH_SECONDS};

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use writer::GroupWriter;

use crate::batch::Batcher;
use crate::shared::new_runs::Row;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::{Applied, Result, SignalHandler, Signals, StoreError};

/// Results (rows, and one per statement) the writer connection's thread may queue before it
/// waits for the writing task to take them: with sqlx's default (50), loading the runs of a
/// batch of outcomes (a row per execution) stalled the connection until the task came back for
/// more.
const WRITER_ROW_BUFFER: usize = 4096;

/// The SQLite implementation of [`crate::Store`].
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<GroupWriter>,
    reader: SqlitePool,
    new_runs: Batcher<Row, Option<i64>>,
    attempts: Batcher<LoggedAttempt>,
    finishes: Batcher<Finish, Applied>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL and runs migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&migrator).await?;
        migrator.close().await;
        let writer = writer::connect(&options.clone().row_buffer_size(WRITER_ROW_BUFFER)).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let new_runs = Batcher::start(batch::NewRuns {
            writer: writer.clone(),
        });
        let attempts = Batcher::start(batch::Attempts {
            writer: writer.clone(),
        });
        let finishes = Batcher::start(batch::Finishes {
            writer: writer.clone(),
        });
        Ok(Self {
            writer,
            reader,
            new_runs,
            attempts,
            finishes,
        })
    }
}

crate::shared::implement_store!(SqliteStore);

#[async_trait]
impl Signals for SqliteStore {
    /// One node per SQLite file: every wake-up is in-process, so there is nothing to watch.
    async fn watch(&self, _handler: SignalHandler) -> Result<()> {
        Ok(())
    }
}
