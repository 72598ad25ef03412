//! The backend-neutral layer: every query and rule both backends share, written once.
//!
//! - [`rows`] maps result rows of either backend to store types (plain generic code).
//! - One module per store trait ([`accounts`], [`definitions`], [`runs`], [`queue`],
//!   [`approvals`], [`outbox`]) holds a macro with that trait's implementation; [`lifecycle`]
//!   holds one with the steps that advance a run inside a write, and [`paging`] one that reads
//!   a workspace's rows a page at a time.
//! - A backend invokes [`implement_store!`] once for its store type. The expansion is ordinary
//!   code over that backend's concrete sqlx types, so sqlx sees exactly the calls a hand-written
//!   copy would make (sqlx's traits are too unwieldy to write this code generically over a
//!   database).
//! - [`Backend`] is what that code asks of a backend: its reader pool, how a write starts, and
//!   the few steps whose SQL or locking the two databases force apart.

pub(crate) mod accounts;
pub(crate) mod approvals;
pub(crate) mod definitions;
pub(crate) mod lifecycle;
pub(crate) mod new_runs;
pub(crate) mod outbox;
pub(crate) mod paging;
pub(crate) mod queue;
pub(crate) mod rows;
pub(crate) mod run_rows;
pub(crate) mod run_writes;
pub(crate) mod runs;

use std::future::Future;
use std::ops::DerefMut;

use sqlx::{Database, Pool, QueryBuilder};

use crate::batch::Batcher;
use crate::{
    Applied, ClaimedJob, CreatedRun, Millis, NewRun, NewStep, Page, Result, RunRecord,
    StepExecution,
};

/// Lease of a job that starts a promoted run or times out a waiting step.
pub(crate) const TIMER_LEASE_MS: i64 = 30_000;

/// How long an `Idempotency-Key` is remembered.
pub(crate) const IDEMPOTENCY_WINDOW_MS: Millis = 24 * 60 * 60 * 1000;

/// A backend's connection.
pub(crate) type Conn<B> = <<B as Backend>::Db as Database>::Connection;

/// A backend's write transaction.
pub(crate) type Tx<B> = <B as Backend>::Tx;

/// Critical sections that two nodes must not run side by side (see [`Backend::lock`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum LockSpace {
    /// Creating the next version of one workflow (key: workspace id and name).
    WorkflowVersion,
    /// Counting and filling one deployment's concurrency slots (key: deployment id).
    DeploymentSlots,
}

/// What the shared code needs from a backend: its connections, and the steps whose SQL or
/// locking differs between the databases.
pub(crate) trait Backend: Sized + Send + Sync + 'static {
    /// The sqlx driver.
    type Db: Database;
    /// A write transaction. Besides its connection it has `commit(self)`, and
    /// `signal(&mut self, Signal)` to wake the other nodes once the commit is done.
    type Tx: DerefMut<Target = Conn<Self>> + Send;
    /// A write whose statements need not be atomic together (see [`Backend::autocommit`]);
    /// it has `commit(self)`.
    type Autocommit: DerefMut<Target = Conn<Self>> + Send;

    /// Appended to a SELECT of `runs r` inside a write so the run rows it reads stay as read
    /// until the write ends: PostgreSQL's `FOR UPDATE OF r`.
    const FOR_UPDATE: &'static str;
    /// The newest version of each workflow of a workspace, names descending: `$1` workspace,
    /// `$2` name cursor, `$3` limit.
    const LIST_WORKFLOWS: &'static str;
    /// Leases due deliveries and returns them: `$1` now, `$2` limit, `$3` lease.
    const CLAIM_DELIVERIES: &'static str;
    /// The jobs of steps, `$1` a JSON array of (run, step, attempt) rows, with the columns
    /// of a claimed job.
    const LEASED_JOBS: &'static str;

    /// The pool that reads go to.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;

    /// The node's batch writer of delivery attempts that hold a lease.
    fn attempts(&self) -> &Batcher<outbox::LoggedAttempt>;

    /// Logs delivery attempts (events all different, or all holding a lease) and applies their
    /// effects, in one transaction.
    fn log_attempts(
        &self,
        attempts: &[&outbox::LoggedAttempt],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Starts a write whose statements are each safe on their own: PostgreSQL runs them one by
    /// one, sparing a transaction's round trips; SQLite's only way to write is its
    /// group-committed transaction.
    fn autocommit(&self) -> impl Future<Output = Result<Self::Autocommit>> + Send;

    /// Free text from outside (errors, response bodies) as the database can store it, U+0000
    /// replaced by U+FFFD: PostgreSQL text cannot hold U+0000, and SQLite's JSON functions, which
    /// carry its batched writes (see [`crate::sqlite`]), end a text there.
    fn clean(text: Option<&str>) -> Option<String> {
        text.map(|t| t.replace('\0', "\u{FFFD}"))
    }

    /// Keeps other nodes out of `space` for `key` until the transaction ends.
    fn lock(
        conn: &mut Conn<Self>,
        space: LockSpace,
        key: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Loads runs and every execution of their steps inside a write, locking the runs (in id
    /// order, so that two writes locking several runs cannot deadlock) until the write ends.
    /// The executions must be read once the locks are held, so that they include what a write
    /// that held one before committed. Runs that do not exist are left out.
    fn load_run_states(
        conn: &mut Conn<Self>,
        run_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<(RunRecord, Vec<StepExecution>)>>> + Send;

    /// Reads runs and every execution of their steps, outside any write, in run id order; runs
    /// that do not exist are left out.
    fn read_run_states(
        &self,
        run_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<(RunRecord, Vec<StepExecution>)>>> + Send;

    /// Deletes the jobs (id, lease token) whose lease still holds, returning their ids.
    fn take_jobs(
        conn: &mut Conn<Self>,
        jobs: &[(i64, i64)],
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// The node's batch writer of finished jobs (see [`queue::Finish`]).
    fn finishes(&self) -> &Batcher<queue::Finish, Applied>;

    /// Creates a run that needs no check first (no idempotency key, no concurrency limit) in
    /// the backend's cheapest way (see [`crate::Runs::create_run`]).
    fn create_unchecked(&self, run: &NewRun) -> impl Future<Output = Result<CreatedRun>> + Send;

    /// The rows of live runs that `tx` holds back to send together (see
    /// [`Backend::write_run`]); None when it sends each run's at once.
    fn deferred(tx: &mut Self::Tx) -> &mut Option<run_rows::RunRows>;

    /// Writes rows of live runs (see [`run_rows`]), returning the runs they ended.
    fn send_run_rows(
        tx: &mut Self::Tx,
        rows: run_rows::RunRows,
    ) -> impl Future<Output = Result<Vec<run_rows::Ended>>> + Send;

    /// Writes the changes of a live, locked run; returns, when it ends the run, the run's
    /// [`run_writes::PROMOTE_CHECK`] (false otherwise). A write that defers run writes (see
    /// [`Backend::deferred`]) holds them back until [`Backend::flush_run_writes`] (and returns
    /// false).
    fn write_run(
        tx: &mut Self::Tx,
        writes: &run_writes::RunWrites<'_>,
    ) -> impl Future<Output = Result<bool>> + Send {
        async move {
            if let Some(rows) = Self::deferred(tx) {
                rows.push_run_writes(writes, Self::clean);
                return Ok(false);
            }
            let mut rows = run_rows::RunRows::default();
            rows.push_run_writes(writes, Self::clean);
            let ended = Self::send_run_rows(tx, rows).await?;
            Ok(ended.first().is_some_and(|end| end.promote == Some(true)))
        }
    }

    /// Sends the run writes held back by [`Backend::write_run`], then promotes the
    /// deployments of the runs they ended that call for it.
    fn flush_run_writes(tx: &mut Self::Tx) -> impl Future<Output = Result<()>> + Send {
        async move {
            let Some(rows) = Self::deferred(tx).replace(run_rows::RunRows::default()) else {
                return Ok(());
            };
            let mut promoted = std::collections::HashSet::new();
            for end in Self::send_run_rows(tx, rows).await? {
                if end.promote == Some(true) && promoted.insert(end.deployment_id.clone()) {
                    Self::promote(tx, &end.deployment_id, end.finished_at).await?;
                }
            }
            Ok(())
        }
    }

    /// Inserts step executions and their jobs.
    fn schedule_steps(
        tx: &mut Self::Tx,
        run_id: &str,
        steps: &[NewStep],
        now: Millis,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Starts the oldest queued runs of a deployment while it has free slots.
    fn promote(
        tx: &mut Self::Tx,
        deployment_id: &str,
        now: Millis,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Claims up to `limit` due jobs (see [`crate::Queue::claim_jobs`]).
    fn claim_due_jobs(
        &self,
        now: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ClaimedJob>>> + Send;

    /// Adds to a query on `runs` the condition that metadata `key` holds `value` in its text
    /// form (`"abc"`, `981`, `true`, `null`).
    fn push_metadata_filter(query: &mut QueryBuilder<Self::Db>, key: &str, value: &str);
}

/// The upper bound used when a page has no cursor (sorts after every id and name, bytewise).
pub(crate) fn cursor(page: &Page) -> &str {
    page.cursor.as_deref().unwrap_or("\u{10FFFF}")
}

/// The current time for rows whose time the caller does not pass.
pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or_default()
}

/// Implements every store trait but [`crate::Signals`] for `$store`, which implements
/// [`Backend`].
macro_rules! implement_store {
    ($store:ident) => {
        $crate::shared::lifecycle::impl_lifecycle!($store);
        $crate::shared::paging::impl_paging!($store);
        $crate::shared::accounts::impl_accounts!($store);
        $crate::shared::definitions::impl_definitions!($store);
        $crate::shared::runs::impl_runs!($store);
        $crate::shared::queue::impl_queue!($store);
        $crate::shared::approvals::impl_approvals!($store);
        $crate::shared::outbox::impl_outbox!($store);
    };
}
pub(crate) use implement_store;
