//! PostgreSQL backend, built for many nodes sharing one database.
//!
//! Every method is one transaction at `READ COMMITTED`; where nodes could race, explicit locks
//! decide: claims take rows with `FOR UPDATE SKIP LOCKED`, a run being advanced is locked with
//! `FOR UPDATE`, and per-key critical sections (workflow versions, a deployment's concurrency
//! slots) take transaction-scoped advisory locks. Lock order, to stay free of deadlocks:
//! run row, then its jobs and step executions, then the deployment's advisory lock, then
//! queued run rows (taken with `SKIP LOCKED`). Commits that create work or events, or end a
//! run, then wake the other nodes (see [`listen`]). New runs that need no check (no
//! idempotency key, no concurrency limit), delivery attempts and finished jobs are written in
//! shared batches (see [`batch`]); a batch of finished jobs locks its runs in id order.
//!
//! The store traits come from the shared layer (`crate::shared`); `dialect` holds what
//! PostgreSQL does its own way.

mod batch;
mod dialect;
mod listen;
mod run_rows;
mod vacuum;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::batch::Batcher;
use crate::shared::new_runs::Row;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::queue::Finish;
use crate::shared::run_rows::RunRows;
use crate::{Applied, Result, Signal, StoreError};
use listen::Notifier;

/// Connections per node.
const POOL_SIZE: u32 = 16;

/// The PostgreSQL implementation of [`crate::Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    notifier: Notifier,
    new_runs: Batcher<Row, Option<i64>>,
    attempts: Batcher<LoggedAttempt>,
    finishes: Batcher<Finish, Applied>,
}

impl PgStore {
    /// Connects to a `postgres://` URL with a pool of 16 connections and runs migrations
    /// (sqlx serializes them with an advisory lock, so nodes may start together).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, POOL_SIZE).await
    }

    /// Like [`PgStore::connect`], with a pool of `max_connections`.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|_| StoreError::UnsupportedUrl(url.to_string()))?
            .application_name("hookflow")
            // A node that stalls inside a transaction (a frozen VM, a cut network) must not
            // hold its row locks for the hours TCP keepalive may take to notice.
            .options([("idle_in_transaction_session_timeout", "60s")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
            .fetch_one(&pool)
            .await?;
        if autovacuum == "off" {
            tracing::warn!(
                "PostgreSQL runs with autovacuum off: hookflow vacuums and analyzes the tables \
                 it churns (jobs, deliveries, step_executions, runs) itself, but no other table \
                 of the database is vacuumed"
            );
        }
        vacuum::start(pool.clone());
        let notifier = Notifier::start(pool.clone());
        let new_runs = Batcher::start(batch::NewRuns {
            pool: pool.clone(),
            notifier: notifier.clone(),
        });
        let attempts = Batcher::start(batch::Attempts { pool: pool.clone() });
        let finishes = Batcher::start(batch::Finishes {
            pool: pool.clone(),
            notifier: notifier.clone(),
        });
        Ok(Self {
            pool,
            notifier,
            new_runs,
            attempts,
            finishes,
        })
    }

    /// Closes the pool; a running [`crate::Signals::watch`] task stops with it.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

crate::shared::implement_store!(PgStore);

/// A transaction that collects the [`Signal`]s its changes call for, sent once it commits.
pub(crate) struct Tx {
    inner: Transaction<'static, Postgres>,
    signals: Vec<Signal>,
    notifier: Notifier,
    /// Run writes held back to be sent together (see [`Tx::defer_run_writes`]).
    deferred: Option<RunRows>,
}

/// Begins a write transaction that plans by key. Every statement of a write reaches its rows
/// by key, a handful per run, so index lookups are always the right plan; but a batch read
/// from a JSON array or an array is estimated at 10-100 rows, and on a young table whose
/// statistics lag its growth the planner then scans and hashes the whole table (seen in the
/// benchmark: ~1 ms per batch of outcomes with under a thousand executions, where one
/// lookup takes 0.05 ms). These settings only price scans and hash or merge joins out; a
/// statement with no index to use still scans. The statements stay prepared, and PostgreSQL
/// may settle on a generic plan for each: with scans priced out, it looks rows up by key as
/// the custom plans do (before these settings, a generic plan cached while the tables were
/// small kept scanning them as they grew: 241 runs/s against 1318 at the 3-step peak with 20k
/// waiting runs), and it spares planning every execution: the statement writing a batch of
/// outcomes was the one PostgreSQL spent most time running at half the peak; forcing custom plans
/// cost 13-15 % of the 3-step peak (benchmark, quick mode). Sent with `BEGIN`: no extra round
/// trip.
const BEGIN_KEYED: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
    SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

impl Tx {
    /// Begins a write transaction (see [`BEGIN_KEYED`]) on a connection of `pool`.
    pub(super) async fn begin(pool: &PgPool, notifier: &Notifier) -> Result<Self> {
        Ok(Self {
            inner: pool.begin_with(BEGIN_KEYED).await?,
            signals: Vec::new(),
            notifier: notifier.clone(),
            deferred: None,
        })
    }

    /// Wakes the other nodes with `signal` if this transaction commits.
    pub(crate) fn signal(&mut self, signal: Signal) {
        if !self.signals.contains(&signal) {
            self.signals.push(signal);
        }
    }

    /// From now on, `write_run` adds the run's rows to those of this transaction, sent by
    /// `flush_run_writes` (see [`crate::shared::Backend::deferred`]): a batch of outcomes then
    /// costs a few statements instead of one per run. Committing with writes left unsent fails.
    pub(super) fn defer_run_writes(&mut self) {
        self.deferred = Some(RunRows::default());
    }

    pub(crate) async fn commit(self) -> Result<()> {
        if self.deferred.as_ref().is_some_and(|rows| !rows.is_empty()) {
            // Dropping the transaction rolls it back: nothing is committed half-written.
            return Err(StoreError::Corrupt("run writes left unsent".into()));
        }
        self.inner.commit().await?;
        self.notifier.send(self.signals);
        Ok(())
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}

/// A pooled connection whose statements each commit on their own (see
/// [`crate::shared::Backend::autocommit`]).
pub(crate) struct Autocommit(PoolConnection<Postgres>);

impl Autocommit {
    /// Nothing is left to commit.
    pub(crate) async fn commit(self) -> Result<()> {
        Ok(())
    }
}

impl Deref for Autocommit {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for Autocommit {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}
