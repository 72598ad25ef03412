//! A new run that needs no check first (no idempotency key, no concurrency limit), as the
//! backends' batch writers of new runs take it (see [`crate::shared::Backend::create_unchecked`]),
//! and what creating a run answers, whichever way it was written.

use std::collections::HashMap;

use super::rows;
use super::run_writes::LeaseKey;
use crate::{
    ClaimedJob, CreatedRun, JobKind, LeasedJob, Millis, NewEvent, NewRun, NewStep, RunStatus,
    StepExecution, StepStatus,
};

/// A new run as a batch writes it, its texts ready to bind, with its first steps and its event.
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) workspace_id: String,
    pub(crate) deployment_id: String,
    pub(crate) deployment_name: String,
    pub(crate) variant: String,
    pub(crate) workflow: String,
    pub(crate) version: i64,
    pub(crate) status: &'static str,
    pub(crate) source: &'static str,
    pub(crate) delivery: &'static str,
    pub(crate) callback_url: Option<String>,
    pub(crate) inputs: String,
    pub(crate) user: Option<String>,
    pub(crate) metadata: String,
    pub(crate) settings: String,
    pub(crate) created_at: i64,
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) finished_at: Option<i64>,
    /// Resolved pure steps: (step, status, output).
    pub(crate) inline: Vec<(String, &'static str, Option<String>)>,
    pub(crate) start: Vec<NewStep>,
    pub(crate) event: Option<NewEvent>,
    /// When `event` is due: at once, or when the caller's lease of it ends.
    pub(crate) event_due: Millis,
    /// The step of `start` leased to the caller (see [`NewRun::lease_first_step`]).
    pub(crate) leased: Option<LeaseKey>,
}

impl Row {
    /// The run as it starts (or ends) at once, its free text as the backend stores it
    /// (`clean`).
    pub(crate) fn new(
        run: &NewRun,
        clean: fn(Option<&str>) -> Option<String>,
    ) -> (Self, RunStatus) {
        let terminal = run.plan.terminal.as_ref();
        let status = terminal.map_or(run.plan.status, |t| t.status);
        let row = Self {
            id: run.id.clone(),
            workspace_id: run.workspace_id.clone(),
            deployment_id: run.deployment_id.clone(),
            deployment_name: run.deployment_name.clone(),
            variant: run.variant.clone(),
            workflow: run.workflow.clone(),
            version: run.version,
            status: status.as_str(),
            source: run.source.as_str(),
            delivery: run.delivery.as_str(),
            callback_url: run.callback_url.clone(),
            inputs: run.inputs.to_string(),
            user: run.user.clone(),
            metadata: run.metadata.to_string(),
            settings: run.settings.to_string(),
            created_at: run.created_at,
            output: terminal
                .and_then(|t| t.output.as_ref())
                .map(|v| v.to_string()),
            error: clean(terminal.and_then(|t| t.error.as_deref())),
            finished_at: terminal.map(|_| run.created_at),
            inline: (run.plan.inline_rows().into_iter())
                .map(|(step, status, output)| (step.to_string(), status, output))
                .collect(),
            start: run.plan.start.clone(),
            event: terminal.and_then(|t| t.event.clone()),
            event_due: run.created_at + run.event_lease.unwrap_or(0),
            leased: lease_key(run),
        };
        (row, status)
    }

    /// The size of its larger texts (what may make a statement large).
    pub(crate) fn bytes(&self) -> usize {
        let optional = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        self.inputs.len()
            + self.metadata.len()
            + self.settings.len()
            + optional(&self.output)
            + optional(&self.error)
            + (self.inline.iter())
                .map(|(_, _, o)| optional(o))
                .sum::<usize>()
            + self.event.as_ref().map_or(0, |e| e.payload.len())
    }
}

/// The key of the step of `run` leased to the caller, if any (see [`NewRun::lease_first_step`]).
fn lease_key(run: &NewRun) -> Option<LeaseKey> {
    (run.leased.clone()).map(|(step, attempt)| (run.id.clone(), step, attempt))
}

/// The id of each row's leased job, from the keys and ids of the jobs a batch inserted.
pub(crate) fn leased_ids(rows: &[&Row], jobs: Vec<(String, String, i64, i64)>) -> Vec<Option<i64>> {
    let mut ids: HashMap<LeaseKey, i64> = (jobs.into_iter())
        .map(|(run, step, attempt, id)| ((run, step, attempt), id))
        .collect();
    (rows.iter())
        .map(|row| row.leased.as_ref().and_then(|key| ids.remove(key)))
        .collect()
}

/// What creating `run` answers once written in `status`, given the id of the job of its
/// leased step (see [`NewRun::lease_first_step`]) when the write leased one: that job, with the
/// run and its executions as written, built from `run` as a read would return them.
pub(crate) fn created(run: &NewRun, status: RunStatus, job: Option<i64>) -> CreatedRun {
    let (Some(id), Some((step_id, attempt))) = (job, &run.leased) else {
        return CreatedRun::Created(status);
    };
    let now = run.created_at;
    let execution = |step_id: &str, attempt, running: bool| StepExecution {
        step_id: step_id.to_string(),
        attempt,
        status: match running {
            true => StepStatus::Running,
            false => StepStatus::Scheduled,
        },
        output: None,
        error: None,
        created_at: now,
        started_at: running.then_some(now),
        finished_at: None,
    };
    let mut steps: Vec<StepExecution> = (run.plan.start.iter())
        .map(|s| execution(&s.step_id, s.attempt, s.running))
        .collect();
    for (step, result) in &run.plan.inline {
        steps.push(execution(step, 1, false));
        rows::record_in(&mut steps, step, 1, result, now);
    }
    steps.sort_by(|a, b| (&a.step_id, a.attempt).cmp(&(&b.step_id, b.attempt)));
    let mut record = run.record();
    record.status = status;
    let job = ClaimedJob {
        id,
        lease_token: 0,
        run_id: run.id.clone(),
        step_id: Some(step_id.clone()),
        attempt: *attempt,
        kind: JobKind::Execute,
    };
    CreatedRun::Started(Box::new(LeasedJob {
        job,
        run: record,
        steps,
    }))
}
