//! Rows and commands exchanged with the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Unix time in milliseconds: the store's only time type.
pub type Millis = i64;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The wire and storage spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses the wire and storage spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Lifecycle of a run; the last three are terminal.
    RunStatus {
        Queued => "queued",
        Running => "running",
        Waiting => "waiting",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl RunStatus {
    /// Whether the run can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

string_enum!(
    /// Lifecycle of one step execution (one attempt of one step).
    StepStatus {
        Scheduled => "scheduled",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Skipped => "skipped",
        Abandoned => "abandoned",
    }
);

impl StepStatus {
    /// Whether the attempt still waits for its outcome.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running)
    }
}

string_enum!(
    /// What a claimed job asks for.
    JobKind { Execute => "execute", Timeout => "timeout" }
);

string_enum!(
    /// State of a human approval.
    ApprovalStatus {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        TimedOut => "timed_out",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// How a run was started.
    Source { Api => "api", Webhook => "webhook" }
);

string_enum!(
    /// How a run's result reaches the caller.
    Delivery { Direct => "direct", Callback => "callback" }
);

string_enum!(
    /// State of one outbound event.
    DeliveryStatus { Pending => "pending", Delivered => "delivered", Failed => "failed" }
);

string_enum!(
    /// Why a delivery attempt was made.
    Trigger { Scheduled => "scheduled", Manual => "manual" }
);

/// A tenant.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: String,
    pub name: String,
}

/// An API key's public part (the key itself is only stored hashed).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: Option<String>,
    pub prefix: String,
    pub created_at: Millis,
}

/// A workspace secret without its value.
#[derive(Debug, Clone)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One immutable version of a workflow definition.
#[derive(Debug, Clone)]
pub struct WorkflowVersion {
    pub name: String,
    pub version: i64,
    pub definition: Value,
    pub created_at: Millis,
}

/// A workflow with its newest version.
#[derive(Debug, Clone)]
pub struct WorkflowSummary {
    pub name: String,
    pub latest_version: i64,
    pub definition: Value,
    pub updated_at: Millis,
}

/// A deployment variant: a pinned workflow version and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub version: i64,
    pub settings: Value,
}

/// A named, stable entry point to a workflow.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub workflow: String,
    pub variants: BTreeMap<String, Variant>,
    pub concurrency_limit: Option<i64>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Deployment {
    /// Secrets that currently authenticate triggers and sign events, newest first.
    pub fn active_secrets(&self, now: Millis) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(old), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && until > now
        {
            secrets.push(old.as_str());
        }
        secrets
    }
}

/// A page request: newest first, strictly older than `cursor`.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: i64,
    pub cursor: Option<String>,
}

/// A step to schedule: its execution row and its job.
#[derive(Debug, Clone)]
pub struct NewStep {
    pub step_id: String,
    pub attempt: i64,
    pub run_at: Millis,
    pub lease_ms: i64,
    /// It starts, and counts as running, as soon as it is scheduled: a timer (a delay, whose
    /// job fires at `run_at`), or a step leased to the write that scheduled it (see
    /// [`NewStep::lease`]).
    pub running: bool,
}

/// How soon a new job must be due for its commit to wake the engines. Engines poll at least
/// this often, so a job due later is found by a poll: a run parked on a long delay costs no
/// wake-up (and no empty claim) when it is created.
pub const WAKE_HORIZON_MS: Millis = 500;

impl NewStep {
    /// Whether any of `steps`, scheduled at `now`, is due within [`WAKE_HORIZON_MS`].
    pub fn any_due_soon(steps: &[NewStep], now: Millis) -> bool {
        steps.iter().any(|s| s.run_at < now + WAKE_HORIZON_MS)
    }

    /// Whether the step's job can be leased to its writer at `now`: it is due, and no timer.
    pub fn leasable(&self, now: Millis) -> bool {
        !self.running && self.run_at <= now
    }

    /// Schedules the step leased from `now` to whoever writes it (lease token 0, which the
    /// first claim would have raised to 1): it starts running, and its job is due again only
    /// when the lease ends, for another node to take over if the holder died.
    pub fn lease(&mut self, now: Millis) {
        self.run_at = now + self.lease_ms;
        self.running = true;
    }
}

/// What the first answer to an `Idempotency-Key` was.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    pub body_hash: String,
    pub response: Value,
}

/// A run to create, with its first steps.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub workspace_id: String,
    pub deployment_id: String,
    pub deployment_name: String,
    pub variant: String,
    pub workflow: String,
    pub version: i64,
    pub source: Source,
    pub delivery: Delivery,
    pub callback_url: Option<String>,
    pub inputs: Value,
    pub user: Option<String>,
    pub metadata: Value,
    pub settings: Value,
    /// What a run that starts at once does first (planned from no executions): its pure first
    /// steps resolved, the steps to start, its status, and its end if it needs no job at all.
    /// Ignored when the run is queued.
    pub plan: Plan,
    pub concurrency_limit: Option<i64>,
    /// Refuse instead of queueing when the concurrency limit is reached (sync invoke).
    pub refuse_when_full: bool,
    pub idempotency: Option<IdempotencyClaim>,
    pub created_at: Millis,
    /// The step of `plan.start` (step, attempt) leased to the caller by
    /// [`NewRun::lease_first_step`].
    pub leased: Option<(String, i64)>,
    /// The lease (ms) under which the caller takes the event of a run that ends as it is
    /// created, to send it at once (see [`NewRun::leased_event`]); None makes it due at once.
    pub event_lease: Option<i64>,
}

impl NewRun {
    /// Leases the run's first step that is due at once (and no timer) to the caller, as a
    /// finished job's write does (see [`NewStep::lease`]): when the run starts at once,
    /// [`crate::Runs::create_run`] answers [`CreatedRun::Started`] with its job, to execute as
    /// if claimed. Answers whether there was such a step.
    pub fn lease_first_step(&mut self) -> bool {
        let now = self.created_at;
        let Some(step) = self.plan.start.iter_mut().find(|s| s.leasable(now)) else {
            return false;
        };
        step.lease(now);
        self.leased = Some((step.step_id.clone(), step.attempt));
        true
    }

    /// The event of a run that ended as it was created, as leased to the caller by
    /// [`NewRun::event_lease`]: what a claim of it would give.
    pub fn leased_event(&self) -> Option<ClaimedDelivery> {
        self.event_lease?;
        let event = self.plan.terminal.as_ref()?.event.as_ref()?;
        Some(event.leased(&self.id, &self.deployment_id))
    }

    /// The run as it is when it starts at once: what planning its first steps reads.
    pub fn record(&self) -> RunRecord {
        RunRecord {
            id: self.id.clone(),
            workspace_id: self.workspace_id.clone(),
            deployment_id: self.deployment_id.clone(),
            deployment_name: self.deployment_name.clone(),
            variant: self.variant.clone(),
            workflow: self.workflow.clone(),
            version: self.version,
            status: RunStatus::Running,
            source: self.source,
            delivery: self.delivery,
            callback_url: self.callback_url.clone(),
            inputs: self.inputs.clone(),
            user: self.user.clone(),
            metadata: self.metadata.clone(),
            settings: self.settings.clone(),
            output: None,
            error: None,
            created_at: self.created_at,
            started_at: Some(self.created_at),
            finished_at: None,
        }
    }
}

/// Result of creating a run.
#[derive(Debug, Clone)]
pub enum CreatedRun {
    /// The run was created with this status.
    Created(RunStatus),
    /// The run started at once, and its step leased by [`NewRun::lease_first_step`] is this
    /// job, with the run and its executions as the write left them.
    Started(Box<LeasedJob>),
    /// The idempotency key was used before with the same body: the first answer.
    Replayed { request_id: String, response: Value },
    /// The idempotency key was used before with another body.
    IdempotencyConflict,
    /// `refuse_when_full` and no slot was free.
    ConcurrencyLimit,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub workspace_id: String,
    pub deployment_id: String,
    pub deployment_name: String,
    pub variant: String,
    pub workflow: String,
    pub version: i64,
    pub status: RunStatus,
    pub source: Source,
    pub delivery: Delivery,
    pub callback_url: Option<String>,
    pub inputs: Value,
    pub user: Option<String>,
    pub metadata: Value,
    pub settings: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// One attempt of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepExecution {
    pub step_id: String,
    pub attempt: i64,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// Filters of the run list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub source: Option<Source>,
    pub delivery: Option<Delivery>,
    /// A deployment's id or name.
    pub deployment: Option<String>,
    pub user: Option<String>,
    /// `metadata.<key>=<value>` pairs; a value matches the JSON value's text form.
    pub metadata: Vec<(String, String)>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

/// A claimed unit of work; `step_id` None means "start the run".
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: i64,
    pub lease_token: i64,
    pub run_id: String,
    pub step_id: Option<String>,
    pub attempt: i64,
    pub kind: JobKind,
}

/// The outcome of one step attempt, as the engine reports it.
#[derive(Debug, Clone)]
pub enum StepResult {
    Completed(Value),
    Skipped,
    /// Failed; `retry` schedules the next attempt, None makes the failure final.
    Failed {
        error: String,
        retry: Option<NewStep>,
    },
    /// Started and now waits for a completion or an answer, until `deadline` (if any).
    Waiting {
        deadline: Option<Millis>,
        approval: Option<NewApproval>,
    },
}

impl StepResult {
    /// How a step the planner resolved itself (`Completed` or `Skipped`) is stored: its status
    /// and output text.
    pub fn inline_row(&self) -> (&'static str, Option<String>) {
        match self {
            Self::Completed(output) => ("completed", Some(output.to_string())),
            _ => ("skipped", None),
        }
    }
}

/// The question a human step opens.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub id: String,
    pub prompt: String,
    pub assignee: Option<String>,
    pub deadline: Option<Millis>,
    /// The `approval.requested` event, when the step has a `notify_url`.
    pub event: Option<NewEvent>,
}

/// A human approval as stored.
#[derive(Debug, Clone)]
pub struct Approval {
    pub id: String,
    pub workspace_id: String,
    pub run_id: String,
    pub step_id: String,
    pub attempt: i64,
    pub prompt: String,
    pub assignee: Option<String>,
    pub status: ApprovalStatus,
    pub decision: Option<String>,
    pub comment: Option<String>,
    pub data: Option<Value>,
    pub responder: Option<String>,
    pub created_at: Millis,
    pub deadline: Option<Millis>,
    pub answered_at: Option<Millis>,
}

/// A person's answer to an approval.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `Approved` or `Rejected`.
    pub status: ApprovalStatus,
    pub comment: Option<String>,
    pub data: Value,
    pub responder: Option<String>,
    pub answered_at: Millis,
}

/// Result of completing an open step from outside (async completion, approval answer).
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Applied (or stale: see [`Applied`]).
    Applied(Applied),
    /// The same completion was accepted before: nothing changes.
    Duplicate,
    /// A different completion (or answer) was accepted before.
    Conflict,
    /// The attempt was abandoned: timed out, superseded by a retry, or the run ended.
    Gone,
    /// No such attempt or approval.
    NotFound,
}

/// Result of a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// The run is now cancelled.
    Done,
    /// The run had already ended with this status.
    AlreadyTerminal(RunStatus),
    NotFound,
}

/// An event to deliver, written in the transaction that creates it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub payload: String,
    pub url: String,
}

impl NewEvent {
    /// The event of run `run_id` (of deployment `deployment_id`) as the write inserting it
    /// leases it to its caller: what a claim of it would give.
    pub fn leased(&self, run_id: &str, deployment_id: &str) -> ClaimedDelivery {
        ClaimedDelivery {
            id: self.id.clone(),
            lease_token: 0,
            run_id: run_id.to_string(),
            deployment_id: deployment_id.to_string(),
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            url: self.url.clone(),
            attempts: 0,
        }
    }
}

/// How a run ends.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub event: Option<NewEvent>,
}

/// What to do after a step resolved: computed by the engine inside the store's transaction.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Steps the planner resolved itself (pure steps: `Completed` or `Skipped`), recorded as
    /// finished first attempts in the same transaction.
    pub inline: Vec<(String, StepResult)>,
    pub start: Vec<NewStep>,
    pub status: RunStatus,
    pub terminal: Option<Terminal>,
}

impl Plan {
    /// The resolved steps as their rows store them: (step, status, output).
    pub fn inline_rows(&self) -> Vec<(&str, &'static str, Option<String>)> {
        self.inline
            .iter()
            .map(|(step, result)| {
                let (status, output) = result.inline_row();
                (step.as_str(), status, output)
            })
            .collect()
    }
}

/// Decides the next state of a run from its stored state (pure; runs inside a transaction).
pub trait Planner: Send + Sync {
    /// `steps` holds every execution of the run, in (step, attempt) order.
    fn plan(&self, run: &RunRecord, steps: &[StepExecution], now: Millis) -> Plan;

    /// Asked when a finished job's write ends the run with an event: the lease (ms) under
    /// which the caller will send the event itself at once, or None to leave it to claims
    /// (see [`crate::Queue::finish_job`]).
    fn lease_event(&self) -> Option<i64> {
        None
    }
}

/// Result of applying a step outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The job's lease was lost (another worker owns it) or the run had ended: nothing changed.
    Stale,
    /// Applied; `terminal` is set when the run ended, `event` when a callback was queued, and
    /// `work` when the engines should look for jobs now: a job due within [`WAKE_HORIZON_MS`]
    /// was scheduled, or the run ended (which may start runs queued behind it). `next` is a
    /// step of the run, due at once, whose job the write leased to its caller, and
    /// `leased_event` the run's end event when the write leased it to its caller to send (only
    /// finished jobs lease either: see [`crate::Queue::finish_job`]).
    Done {
        terminal: Option<RunStatus>,
        event: bool,
        work: bool,
        next: Option<Box<LeasedJob>>,
        leased_event: Option<Box<ClaimedDelivery>>,
    },
}

/// A job that the write which scheduled it leased to its caller, with its run and every
/// execution of the run's steps as that write left them: all a claim and a read would give.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    pub job: ClaimedJob,
    pub run: RunRecord,
    pub steps: Vec<StepExecution>,
}

/// A claimed outbound event.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: String,
    pub lease_token: i64,
    pub run_id: String,
    pub deployment_id: String,
    pub event_type: String,
    pub payload: String,
    pub url: String,
    pub attempts: i64,
}

/// A stored outbound event.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: String,
    pub run_id: String,
    pub deployment_id: String,
    pub payload: String,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
}

/// One delivery attempt, as logged.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i64,
    pub trigger: Trigger,
    pub url: String,
    pub status_code: Option<i64>,
    pub response_body: Option<String>,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub created_at: Millis,
    pub next_attempt_at: Option<Millis>,
}

/// What an attempt means for its event.
#[derive(Debug, Clone, Copy)]
pub enum AttemptEffect {
    /// Delivered: stop.
    Delivered,
    /// Try again at this time.
    RetryAt(Millis),
    /// Give up (410, or the schedule is exhausted).
    GiveUp,
    /// A manual attempt that failed: the automatic schedule stays as it was.
    Unchanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run_at: Millis) -> NewStep {
        NewStep {
            step_id: "a".into(),
            attempt: 1,
            run_at,
            lease_ms: 1000,
            running: false,
        }
    }

    #[test]
    fn only_jobs_due_within_the_wake_horizon_are_due_soon() {
        let now = 10_000;
        assert!(NewStep::any_due_soon(&[step(now - 5)], now));
        assert!(NewStep::any_due_soon(
            &[step(now + 86_400_000), step(now + WAKE_HORIZON_MS - 1)],
            now
        ));
        assert!(!NewStep::any_due_soon(&[step(now + WAKE_HORIZON_MS)], now));
        assert!(!NewStep::any_due_soon(&[], now));
    }
}
