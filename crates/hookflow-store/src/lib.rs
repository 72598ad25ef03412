//! hookflow's durable store: the only source of truth, and the work queue.
//!
//! One [`Store`] trait, the sum of the traits below; every state change is one transaction.
//! Two backends implement it, [`sqlite`] (one node) and [`postgres`] (many nodes sharing one
//! database), in three layers:
//!
//! - This file and `model`: the traits and the types callers see.
//! - `shared`: everything both backends do alike, written once. Row mapping is generic code;
//!   the trait implementations are macros that each backend expands for its own store type,
//!   so the queries run on that backend's concrete sqlx types as hand-written code would.
//! - Each backend's `dialect` module: its implementation of `shared::Backend`, the contract the
//!   shared code relies on, holding only what the databases force apart: where reads go and how
//!   a write starts (SQLite's group-committed writer; PostgreSQL's pooled transactions that
//!   signal other nodes after commit), PostgreSQL's row locks (`FOR UPDATE`), advisory locks
//!   and `SKIP LOCKED` claims, NUL sanitising, and the SQL the two spell differently.

mod batch;
mod model;
pub mod postgres;
mod shared;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

pub use model::*;

/// Store failures. Constraint conflicts the caller can act on are reported as values, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
}

/// 256 random bits as 64 hex digits (for installation-wide keys).
pub(crate) fn random_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything hookflow keeps. Implementations must make each method one transaction.
pub trait Store:
    Accounts + Definitions + Runs + Queue + Outbox + Approvals + Health + Signals
{
}

impl<T: Accounts + Definitions + Runs + Queue + Outbox + Approvals + Health + Signals> Store for T {}

/// A wake-up hint from another node (never the only copy of anything: the poll backs it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// New jobs were committed.
    Work,
    /// New events were committed.
    Outbox,
    /// A run with direct delivery ended (wakes a sync invoke waiting on another node).
    RunEnded(String),
}

/// Receives [`Signal`]s.
pub type SignalHandler = std::sync::Arc<dyn Fn(Signal) + Send + Sync>;

/// Cross-node wake-ups. Backends that serve one node only (SQLite) send none.
#[async_trait]
pub trait Signals: Send + Sync + 'static {
    /// Starts delivering signals committed by other nodes to `handler`, in the background.
    async fn watch(&self, handler: SignalHandler) -> Result<()>;
}

/// Database reachability.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;
}

/// Workspaces, API keys and workspace secrets.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// Number of workspaces (0 on a fresh database).
    async fn workspace_count(&self) -> Result<i64>;
    /// Returns the workspace with this name, creating it if needed.
    async fn ensure_workspace(&self, name: &str) -> Result<Workspace>;

    /// Stores a new API key (hashed) for a workspace.
    async fn create_api_key(
        &self,
        workspace_id: &str,
        name: Option<&str>,
        key_hash: &str,
        prefix: &str,
        now: Millis,
    ) -> Result<ApiKey>;
    /// The workspace of a live (not revoked) key, by the key's hash.
    async fn workspace_for_key(&self, key_hash: &str) -> Result<Option<String>>;
    /// Live keys of a workspace.
    async fn list_api_keys(&self, workspace_id: &str, page: &Page) -> Result<Vec<ApiKey>>;
    /// Revokes a key; false if there was no such live key.
    async fn revoke_api_key(&self, workspace_id: &str, id: &str, now: Millis) -> Result<bool>;

    /// Creates or replaces a workspace secret.
    async fn put_secret(
        &self,
        workspace_id: &str,
        name: &str,
        value: &str,
        now: Millis,
    ) -> Result<()>;
    /// Deletes a secret; false if it did not exist.
    async fn delete_secret(&self, workspace_id: &str, name: &str) -> Result<bool>;
    /// Secret names of a workspace.
    async fn list_secrets(&self, workspace_id: &str, page: &Page) -> Result<Vec<SecretMeta>>;
    /// All secret values of a workspace, as a JSON object (for templates only).
    async fn secret_values(&self, workspace_id: &str) -> Result<Value>;
    /// An installation-wide signing key, created (random, 32 bytes, hex) on first use.
    async fn server_key(&self, name: &str) -> Result<String>;
}

/// Workflow versions and deployments.
#[async_trait]
pub trait Definitions: Send + Sync + 'static {
    /// Stores the next version of a workflow and returns its number.
    async fn create_workflow_version(
        &self,
        workspace_id: &str,
        name: &str,
        definition: &Value,
        now: Millis,
    ) -> Result<i64>;
    /// One version of a workflow, or its latest when `version` is None.
    async fn workflow_version(
        &self,
        workspace_id: &str,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<WorkflowVersion>>;
    /// Every version of a workflow, newest first.
    async fn workflow_versions(
        &self,
        workspace_id: &str,
        name: &str,
    ) -> Result<Vec<WorkflowVersion>>;
    /// Workflows of a workspace with their latest versions, by name descending.
    async fn list_workflows(&self, workspace_id: &str, page: &Page)
    -> Result<Vec<WorkflowSummary>>;

    /// Creates a deployment; `StoreError::Duplicate` if the name is taken.
    async fn create_deployment(&self, deployment: &Deployment) -> Result<()>;
    /// A deployment by id or name.
    async fn deployment(&self, workspace_id: &str, id_or_name: &str) -> Result<Option<Deployment>>;
    /// A deployment by id, in any workspace (webhook triggers, signing).
    async fn deployment_by_id(&self, id: &str) -> Result<Option<Deployment>>;
    /// Deployments of a workspace, newest first.
    async fn list_deployments(&self, workspace_id: &str, page: &Page) -> Result<Vec<Deployment>>;
    /// Saves a deployment's mutable fields (variants, limit, secrets).
    async fn update_deployment(&self, deployment: &Deployment) -> Result<()>;
}

/// Runs and their step executions.
#[async_trait]
pub trait Runs: Send + Sync + 'static {
    /// Creates a run with its first steps, honouring idempotency and the concurrency limit.
    /// Creations that arrive together without a check to make (no idempotency key, no
    /// concurrency limit) are written together, one statement per batch. A run that starts at
    /// once with a step leased to the caller (see [`NewRun::lease_first_step`]) answers
    /// [`CreatedRun::Started`]: the step's job, its id as the insert returned it, with the run
    /// and its executions built from `run`, as a read would return them. A run that ends at
    /// once writes its event under [`NewRun::event_lease`], if set.
    async fn create_run(&self, run: &NewRun) -> Result<CreatedRun>;
    /// A run of a workspace.
    async fn run(&self, workspace_id: &str, id: &str) -> Result<Option<RunRecord>>;
    /// A run by id, in any workspace (engine use).
    async fn run_by_id(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Every step execution of a run, by step then attempt.
    async fn step_executions(&self, run_id: &str) -> Result<Vec<StepExecution>>;
    /// Runs (in any workspace) with every execution of their steps, in run id order; ids of no
    /// run are left out (engine use: one read for a batch of claimed jobs).
    async fn run_states(&self, ids: &[&str]) -> Result<Vec<(RunRecord, Vec<StepExecution>)>>;
    /// Cancels a live run: abandons its open work and writes `terminal` (status cancelled).
    async fn cancel_run(
        &self,
        workspace_id: &str,
        id: &str,
        terminal: &Terminal,
        now: Millis,
    ) -> Result<Cancelled>;
    /// Starts queued runs of a deployment while it has free slots (after its limit was raised).
    async fn promote_queued(&self, deployment_id: &str, now: Millis) -> Result<()>;
    /// Runs matching a filter, newest first.
    async fn list_runs(
        &self,
        workspace_id: &str,
        filter: &RunFilter,
        page: &Page,
    ) -> Result<Vec<RunRecord>>;
}

/// The work queue of steps and run starts.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Claims up to `limit` due jobs, leasing each for its `lease_ms`.
    async fn claim_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>>;
    /// When the earliest job becomes due, if any.
    async fn next_job_at(&self) -> Result<Option<Millis>>;
    /// Applies a step's outcome (or, for a start job, starts the run) and plans what follows.
    /// Outcomes that arrive together are applied in one transaction (a batch); each caller
    /// returns once the batch holding its outcome is committed. When the plan schedules a step
    /// that is due at once (and not a timer), the first such step's job is leased to the caller
    /// in the same write and returned as [`Applied::Done`]'s `next`, to execute as if claimed:
    /// a chain of steps then costs no claim, nor a wait for one, per step. Likewise, when the
    /// write ends the run with an event and the planner's [`Planner::lease_event`] gives a
    /// lease, the event is written leased to the caller (due only when that lease ends, like a
    /// claimed one) and returned as `leased_event`, for the caller to send at once: the
    /// callback then costs no claim either.
    async fn finish_job(
        &self,
        job: &ClaimedJob,
        result: Option<StepResult>,
        planner: Arc<dyn Planner>,
        now: Millis,
    ) -> Result<Applied>;
    /// Completes an open attempt from outside (an async step's completion). `completion_hash`
    /// identifies the completion so a duplicate is recognised.
    #[allow(clippy::too_many_arguments)]
    async fn complete_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: i64,
        completion_hash: &str,
        result: StepResult,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Completion>;
}

/// Human approvals.
#[async_trait]
pub trait Approvals: Send + Sync + 'static {
    /// An approval by id (callers check its workspace).
    async fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// Approvals of a workspace, newest first, optionally of one status.
    async fn list_approvals(
        &self,
        workspace_id: &str,
        status: Option<ApprovalStatus>,
        page: &Page,
    ) -> Result<Vec<Approval>>;
    /// Records an answer and resolves the approval's step with `result`.
    async fn answer_approval(
        &self,
        id: &str,
        answer: &Answer,
        result: StepResult,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Completion>;
}

/// Outbound events (callbacks) and their delivery attempts.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claims up to `limit` due events, leasing each for `lease_ms`.
    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// When the earliest event becomes due, if any.
    async fn next_delivery_at(&self) -> Result<Option<Millis>>;
    /// Logs an attempt and applies its effect to the event. With a lease token the effect
    /// applies only while that lease holds (scheduled attempts); without, always (manual).
    async fn record_attempt(
        &self,
        event_id: &str,
        run_id: &str,
        lease_token: Option<i64>,
        attempt: &AttemptRecord,
        effect: AttemptEffect,
    ) -> Result<()>;
    /// The run's terminal event, if one was written.
    async fn run_event(&self, run_id: &str) -> Result<Option<EventRecord>>;
    /// Stores an event for a run that had none (manual replay of a direct run), not scheduled.
    async fn insert_event(&self, run: &RunRecord, event: &NewEvent, now: Millis) -> Result<()>;
    /// Delivery attempts of a run, newest first; the cursor is an attempt's log id.
    async fn delivery_attempts(
        &self,
        run_id: &str,
        page: &Page,
    ) -> Result<Vec<(i64, AttemptRecord)>>;
}
