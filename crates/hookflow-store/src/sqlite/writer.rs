//! Group commit for SQLite's single writer connection.
//!
//! Every write is a savepoint inside one shared transaction. When a writer commits and nobody
//! else is queued for the connection (or the batch is full), the transaction commits once for
//! everybody in it: one fsync for many writes. Each writer's `commit` returns only after the
//! transaction holding its writes is durable, so callers keep the one-transaction semantics.
//!
//! Keeping a write runs no statement: its savepoint is released by the statement that opens
//! the next one (`RELEASE hf; SAVEPOINT hf`) or that commits (`RELEASE hf; COMMIT`), so each
//! write costs the connection one round trip less.
//!
//! The flush to disk happens after the connection is free again. The connection commits with
//! `synchronous = NORMAL` (in WAL mode: written to the WAL file, not yet flushed), and a
//! blocking thread then flushes the WAL file (`fdatasync`) before the batch's writers hear
//! that they committed: the next batch is written while this one is flushed, and flushes in
//! flight overlap. A write is acknowledged only once it is on disk, as with `synchronous =
//! FULL`; what differs is that reading connections may see it a few milliseconds before that,
//! which matters only if the machine loses power meanwhile, and no one was told it was
//! accepted. A failed flush ends the process (as PostgreSQL does): the kernel may have dropped
//! the pages it could not write, so what readers saw could be gone, and a restart recovers
//! from what the disk holds.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use crate::shared::run_rows::RunRows;
use crate::{Result, StoreError};

/// Writes that may share one commit.
const MAX_BATCH: usize = 256;

/// The single writer connection and the batch it is building.
pub struct GroupWriter {
    state: Arc<Mutex<State>>,
    queued: AtomicUsize,
    /// The WAL file this writer flushes after each commit; `None` when the connection
    /// flushes at commit itself (a database not in WAL mode).
    wal: Option<Arc<Wal>>,
}

/// The WAL file, open for flushing for as long as the writer lives (SQLite keeps the file
/// while a connection has the database open).
struct Wal {
    path: PathBuf,
    file: std::fs::File,
}

/// The savepoint of the last write, still open after the write ended.
#[derive(Clone, Copy)]
enum Left {
    /// The write was kept: release it.
    Kept,
    /// The writer was dropped without committing: roll it back.
    Abandoned,
}

struct State {
    conn: SqliteConnection,
    /// `BEGIN IMMEDIATE` was issued and not yet committed.
    open: bool,
    /// The last write's savepoint, when it ended without releasing it.
    left: Option<Left>,
    /// Writers waiting for the batch's commit.
    pending: Vec<oneshot::Sender<Result<(), String>>>,
}

impl GroupWriter {
    /// Wraps a dedicated connection, which leaves flushing `wal` (if any) to the writer.
    fn new(conn: SqliteConnection, wal: Option<Wal>) -> Arc<Self> {
        Arc::new(Self {
            state: Arc::new(Mutex::new(State {
                conn,
                open: false,
                left: None,
                pending: Vec::new(),
            })),
            queued: AtomicUsize::new(0),
            wal: wal.map(Arc::new),
        })
    }

    /// Starts a write: waits for the connection, then opens a savepoint in the shared
    /// transaction (beginning one if needed).
    pub async fn begin(self: &Arc<Self>) -> Result<WriteTx> {
        let queued = Queued::enter(self);
        let mut state = self.state.clone().lock_owned().await;
        queued.acquired();
        if !state.open {
            if let Err(e) = run(&mut state.conn, "BEGIN IMMEDIATE; SAVEPOINT hf").await {
                let _ = run(&mut state.conn, "ROLLBACK").await;
                return Err(e);
            }
            state.open = true;
        } else {
            let sql = match state.left.take() {
                None => "SAVEPOINT hf",
                Some(Left::Kept) => "RELEASE hf; SAVEPOINT hf",
                Some(Left::Abandoned) => "ROLLBACK TO hf; RELEASE hf; SAVEPOINT hf",
            };
            if let Err(e) = run(&mut state.conn, sql).await {
                fail_batch(&mut state, &e).await;
                return Err(e);
            }
        }
        Ok(WriteTx {
            writer: self.clone(),
            state: Some(state),
            deferred: None,
        })
    }
}

/// Counts a writer waiting for the connection. Writers ahead of it leave their commit to it;
/// if it goes away before getting the connection, it makes an empty write so they commit.
struct Queued<'a> {
    writer: &'a Arc<GroupWriter>,
    waiting: bool,
}

impl<'a> Queued<'a> {
    fn enter(writer: &'a Arc<GroupWriter>) -> Self {
        writer.queued.fetch_add(1, Ordering::SeqCst);
        Self {
            writer,
            waiting: true,
        }
    }

    fn acquired(mut self) {
        self.waiting = false;
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.writer.queued.fetch_sub(1, Ordering::SeqCst);
        if self.waiting {
            flush_later(self.writer.clone());
        }
    }
}

/// Makes an empty write in the background, so that pending writes get their commit.
fn flush_later(writer: Arc<GroupWriter>) {
    tokio::spawn(async move {
        if let Ok(tx) = writer.begin().await {
            let _ = tx.commit().await;
        }
    });
}

async fn run(conn: &mut SqliteConnection, sql: &'static str) -> Result<()> {
    sqlx::raw_sql(sql).execute(conn).await?;
    Ok(())
}

/// The shared transaction failed: everyone waiting on it learns so, and it is rolled back.
async fn fail_batch(state: &mut State, error: &StoreError) {
    let _ = run(&mut state.conn, "ROLLBACK").await;
    state.open = false;
    state.left = None;
    for waiter in state.pending.drain(..) {
        let _ = waiter.send(Err(error.to_string()));
    }
}

/// One write: a savepoint in the shared transaction. Dropping it without `commit` undoes it.
pub struct WriteTx {
    writer: Arc<GroupWriter>,
    state: Option<OwnedMutexGuard<State>>,
    /// Run writes held back to be sent together, when the write defers them (see
    /// [`WriteTx::defer_run_writes`]).
    pub(super) deferred: Option<RunRows>,
}

impl WriteTx {
    /// Keeps this write and returns once the transaction holding it is committed. The
    /// finishing work runs in its own task, so a caller that goes away cannot interrupt it.
    pub async fn commit(mut self) -> Result<()> {
        if self.deferred.as_ref().is_some_and(|rows| !rows.is_empty()) {
            // Dropping the write undoes it: nothing is committed half-written.
            return Err(StoreError::Corrupt("run writes left unsent".into()));
        }
        let mut state = self.state.take().expect("live write");
        let writer = self.writer.clone();
        let (done, committed) = oneshot::channel();
        tokio::spawn(async move {
            // The last writer in line commits the batch; the others leave their savepoint
            // for the next write to release.
            state.pending.push(done);
            if writer.queued.load(Ordering::SeqCst) == 0 || state.pending.len() >= MAX_BATCH {
                let started = Instant::now();
                match run(&mut state.conn, "RELEASE hf; COMMIT").await {
                    Ok(()) => {
                        metrics::histogram!(COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                        state.open = false;
                        let waiters = std::mem::take(&mut state.pending);
                        // The next batch may start while this one is flushed.
                        drop(state);
                        if let Some(wal) = &writer.wal {
                            flush(wal.clone()).await;
                        }
                        for waiter in waiters {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                    Err(e) => fail_batch(&mut state, &e).await,
                }
            } else {
                state.left = Some(Left::Kept);
            }
        });
        committed
            .await
            .map_err(|_| StoreError::Commit("writer went away".into()))?
            .map_err(StoreError::Commit)
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.state.as_ref().expect("live write").conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.state.as_mut().expect("live write").conn
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut state) = self.state.take() else {
            return;
        };
        state.left = Some(Left::Abandoned);
        let has_pending = !state.pending.is_empty();
        drop(state);
        // Others' writes may wait on a commit that only a next writer would make: make one.
        if has_pending && self.writer.queued.load(Ordering::SeqCst) == 0 {
            flush_later(self.writer.clone());
        }
    }
}

/// The histogram of commit durations, in seconds: the `COMMIT` statement of a batch, which
/// writes its pages to the WAL and, when the WAL has grown past SQLite's threshold, copies it
/// back into the database (a checkpoint), holding the writer meanwhile (outside WAL mode, the
/// commit also flushes).
pub const COMMIT_SECONDS: &str = "hookflow_sqlite_commit_seconds";

/// The histogram of WAL flush durations, in seconds (see [`flush`]).
pub const WAL_FLUSH_SECONDS: &str = "hookflow_sqlite_wal_flush_seconds";

/// Flushes the WAL file to disk: everything committed before the call is then durable. Its
/// duration goes to [`WAL_FLUSH_SECONDS`] (what a batch of writers waits for the disk).
/// Ends the process when the flush fails (see the module's documentation).
async fn flush(wal: Arc<Wal>) {
    let flushed = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let flushed = wal.file.sync_data();
        metrics::histogram!(WAL_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
        flushed.map_err(|e| format!("{}: {e}", wal.path.display()))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(error) = flushed {
        tracing::error!(%error, "flushing the SQLite WAL failed; stopping");
        std::process::abort();
    }
}

/// Opens the writer's dedicated connection. In WAL mode, it commits without flushing and the
/// writer flushes the WAL file itself (see the module's documentation); otherwise, or when the
/// WAL file is not where SQLite keeps it for the database's real path, the connection keeps
/// flushing at each commit as `options` say.
pub async fn connect(options: &SqliteConnectOptions) -> Result<Arc<GroupWriter>> {
    let mut conn = SqliteConnection::connect_with(options).await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await?;
    // A read opens the WAL file of a database in WAL mode (creating it if missing).
    sqlx::query("SELECT count(*) FROM sqlite_master")
        .execute(&mut conn)
        .await?;
    let wal = std::fs::canonicalize(options.get_filename())
        .ok()
        .map(|file| {
            let mut wal = file.into_os_string();
            wal.push("-wal");
            PathBuf::from(wal)
        })
        .filter(|_| mode.eq_ignore_ascii_case("wal"))
        .and_then(|path| {
            Some(Wal {
                file: std::fs::File::open(&path).ok()?,
                path,
            })
        });
    match &wal {
        Some(wal) => {
            run(&mut conn, "PRAGMA synchronous = NORMAL").await?;
            let path = wal.path.display();
            tracing::debug!(wal = %path, "the writer flushes the WAL after each commit");
        }
        None => tracing::debug!(mode, "the writer connection flushes at each commit"),
    }
    Ok(GroupWriter::new(conn, wal))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};

    use super::*;

    /// A writer on a database whose table `t` was created first, as migrations do.
    async fn writer_at(path: &Path, mode: SqliteJournalMode) -> Arc<GroupWriter> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(mode)
            .synchronous(SqliteSynchronous::Full);
        let mut migrator = SqliteConnection::connect_with(&options).await.unwrap();
        run(&mut migrator, "CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        migrator.close().await.unwrap();
        connect(&options).await.unwrap()
    }

    async fn writer() -> (tempfile::TempDir, Arc<GroupWriter>) {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_at(&dir.path().join("w.db"), SqliteJournalMode::Wal).await;
        (dir, writer)
    }

    /// The writer connection's `synchronous` level (1 = NORMAL, 2 = FULL).
    async fn synchronous(writer: &Arc<GroupWriter>) -> i64 {
        let mut tx = writer.begin().await.unwrap();
        let level = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        level
    }

    #[tokio::test]
    async fn in_wal_mode_the_writer_flushes_the_wal_file_of_the_real_path_itself() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let writer = writer_at(&link.join("w.db"), SqliteJournalMode::Wal).await;
        let wal = real.canonicalize().unwrap().join("w.db-wal");
        assert_eq!(writer.wal.as_ref().map(|w| &w.path), Some(&wal));
        assert_eq!(synchronous(&writer).await, 1);
    }

    #[tokio::test]
    async fn outside_wal_mode_the_connection_flushes_at_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_at(&dir.path().join("w.db"), SqliteJournalMode::Delete).await;
        assert!(writer.wal.is_none());
        assert_eq!(synchronous(&writer).await, 2);
    }

    #[tokio::test]
    async fn concurrent_kept_and_dropped_writes_each_do_what_they_said() {
        let (_dir, writer) = writer().await;
        let tasks: Vec<_> = (0..300)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut tx = writer.begin().await?;
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    if n % 3 == 0 {
                        drop(tx);
                        Ok(())
                    } else {
                        tx.commit().await
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let mut tx = writer.begin().await.unwrap();
        let kept: Vec<i64> = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(kept, (0..300).filter(|n| n % 3 != 0).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn a_dropped_write_is_undone_and_others_still_commit() {
        let (_dir, writer) = writer().await;
        let mut kept = writer.begin().await.unwrap();
        sqlx::query("INSERT INTO t (n) VALUES (1)")
            .execute(&mut *kept)
            .await
            .unwrap();
        let waiting = {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut dropped = writer.begin().await.unwrap();
                sqlx::query("INSERT INTO t (n) VALUES (2)")
                    .execute(&mut *dropped)
                    .await
                    .unwrap();
                // dropped here without commit
            })
        };
        tokio::task::yield_now().await;
        // `kept` sees a queued writer, so it leaves the commit to later writers.
        let committed = tokio::spawn(kept.commit());
        waiting.await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), committed)
            .await
            .expect("the kept write commits even though the next writer went away")
            .unwrap()
            .unwrap();
        let rows: Vec<i64> = {
            let mut tx = writer.begin().await.unwrap();
            let rows = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            rows
        };
        assert_eq!(rows, vec![1]);
    }
}
