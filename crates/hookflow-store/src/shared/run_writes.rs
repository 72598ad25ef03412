//! The writes that advance a live run, gathered while it is planned so that a backend sends
//! them together ([`crate::shared::Backend::write_run`]).

use crate::{Millis, NewStep, RunRecord, RunStatus, StepResult, Terminal};

/// Returned by the `UPDATE runs` that ends a run: whether its deployment may have queued runs
/// to start (it has a concurrency limit, or runs queued). Deployments without either (the
/// common case) skip promotion and its slot lock, so their runs end without waiting for each
/// other.
pub(crate) const PROMOTE_CHECK: &str = "(SELECT d.concurrency_limit IS NOT NULL OR EXISTS ( \
    SELECT 1 FROM runs q WHERE q.deployment_id = d.id AND q.status = 'queued') \
    FROM deployments d WHERE d.id = runs.deployment_id)";

/// A step a write leased to its caller (see [`crate::NewStep::lease`]): (run, step, attempt).
pub(crate) type LeaseKey = (String, String, i64);

/// One attempt's outcome as its execution row stores it.
pub(crate) struct StepRow<'a> {
    pub step_id: &'a str,
    pub attempt: i64,
    pub status: &'static str,
    pub output: Option<String>,
    pub error: Option<String>,
}

impl<'a> StepRow<'a> {
    /// The row of a finished attempt; None for one that waits (its row stays running).
    /// `clean` is the backend's.
    pub(crate) fn of(
        step_id: &'a str,
        attempt: i64,
        result: &StepResult,
        clean: fn(Option<&str>) -> Option<String>,
    ) -> Option<Self> {
        let (status, output, error) = match result {
            StepResult::Completed(output) => ("completed", Some(output.to_string()), None),
            StepResult::Skipped => ("skipped", None, None),
            StepResult::Failed { error, .. } => ("failed", None, clean(Some(error))),
            StepResult::Waiting { .. } => return None,
        };
        Some(Self {
            step_id,
            attempt,
            status,
            output,
            error,
        })
    }
}

/// What changes in one write of a live run (the run row is locked by the write).
pub(crate) struct RunWrites<'a> {
    pub run: &'a RunRecord,
    pub now: Millis,
    /// The outcome of the attempt that was applied.
    pub step: Option<StepRow<'a>>,
    /// Steps the planner resolved itself, recorded as finished first attempts: (step, status,
    /// output).
    pub inline: Vec<(&'a str, &'static str, Option<String>)>,
    /// Steps to schedule (with their jobs).
    pub start: &'a [NewStep],
    /// The run's status when it goes on in another one.
    pub status: Option<RunStatus>,
    /// How the run ends (its event written with it).
    pub end: Option<&'a Terminal>,
    /// The lease (ms) under which the end's event goes to the write's caller to send; None
    /// makes it due at once.
    pub event_lease: Option<i64>,
    /// The run ends with open attempts: abandon them, drop its jobs and cancel its pending
    /// approvals, after the applied attempt's outcome is written.
    pub abandon: bool,
}

impl<'a> RunWrites<'a> {
    /// No change yet.
    pub(crate) fn new(run: &'a RunRecord, now: Millis) -> Self {
        Self {
            run,
            now,
            step: None,
            inline: Vec::new(),
            start: &[],
            status: None,
            end: None,
            event_lease: None,
            abandon: false,
        }
    }
}
