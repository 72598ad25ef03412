//! Rows of many live runs written together: each kind of row (applied attempts, resolved
//! steps, scheduled steps, abandoned work, events, status changes, ends) is gathered into one
//! JSON array, which one statement per kind reads, whatever the number of runs. The backends
//! write their own SQL around the arrays (`json_each` on SQLite, `json_array_elements` on
//! PostgreSQL); each row is a JSON array whose positions the statements name.

use serde::Serialize;

use super::run_writes::RunWrites;
use crate::{Millis, NewEvent, NewStep};

/// A JSON array of rows, each a JSON array, built row by row.
#[derive(Default)]
pub(crate) struct Rows(String);

impl Rows {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, row: impl Serialize) {
        self.0.push(if self.0.is_empty() { '[' } else { ',' });
        // Tuples of strings, numbers and options always serialize.
        self.0
            .push_str(&serde_json::to_string(&row).expect("rows serialize"));
    }

    /// The JSON text of the rows; None when there is none.
    pub(crate) fn into_json(self) -> Option<String> {
        let mut json = self.0;
        if json.is_empty() {
            return None;
        }
        json.push(']');
        Some(json)
    }
}

/// Rows of live runs (see the module's documentation); each field's comment gives its rows'
/// positions.
#[derive(Default)]
pub(crate) struct RunRows {
    /// Applied attempts: (run, step, attempt, status, output, error, now).
    pub(crate) outcomes: Rows,
    /// Steps the planner resolved, as finished first attempts: (run, step, status, output,
    /// now).
    pub(crate) inline: Rows,
    /// Scheduled steps and their jobs: (run, step, attempt, status, started at, now, due at,
    /// lease).
    pub(crate) steps: Rows,
    /// Open work of ending runs, to abandon after the outcomes are written: (run, now).
    pub(crate) abandon: Rows,
    /// Events: (id, run, workspace, deployment, type, payload, URL, now, due at).
    pub(crate) events: Rows,
    /// Runs going on in another status: (run, status).
    pub(crate) statuses: Rows,
    /// Runs ending: (run, status, output, error, now).
    pub(crate) ends: Rows,
}

impl RunRows {
    /// Adds the writes of a live run (see [`RunWrites`]); `clean` is the backend's.
    pub(crate) fn push_run_writes(
        &mut self,
        writes: &RunWrites<'_>,
        clean: fn(Option<&str>) -> Option<String>,
    ) {
        let (run, now) = (writes.run, writes.now);
        if let Some(step) = &writes.step {
            self.outcomes.push((
                &run.id,
                step.step_id,
                step.attempt,
                step.status,
                &step.output,
                &step.error,
                now,
            ));
        }
        for (step, status, output) in &writes.inline {
            self.inline.push((&run.id, step, status, output, now));
        }
        self.push_steps(&run.id, writes.start, now);
        if writes.abandon {
            self.abandon.push((&run.id, now));
        }
        if let Some(end) = writes.end {
            if let Some(event) = &end.event {
                let ids = [&run.id, &run.workspace_id, &run.deployment_id];
                let due = now + writes.event_lease.unwrap_or(0);
                self.push_event(ids, event, now, due);
            }
            let output = end.output.as_ref().map(|v| v.to_string());
            let error = clean(end.error.as_deref());
            self.ends
                .push((&run.id, end.status.as_str(), output, error, now));
        } else if let Some(status) = writes.status {
            self.statuses.push((&run.id, status.as_str()));
        }
    }

    /// Adds steps to schedule, with their jobs, of the run `run_id`.
    pub(crate) fn push_steps(&mut self, run_id: &str, steps: &[NewStep], now: Millis) {
        for step in steps {
            let (status, started) = match step.running {
                true => ("running", Some(now)),
                false => ("scheduled", None),
            };
            self.steps.push((
                run_id,
                &step.step_id,
                step.attempt,
                status,
                started,
                now,
                step.run_at,
                step.lease_ms,
            ));
        }
    }

    /// Adds a run's event, due at `due`; `run` holds the run's id, workspace and deployment.
    pub(crate) fn push_event(
        &mut self,
        [run, ws, deployment]: [&String; 3],
        event: &NewEvent,
        now: Millis,
        due: Millis,
    ) {
        self.events.push((
            &event.id,
            run,
            ws,
            deployment,
            &event.event_type,
            &event.payload,
            &event.url,
            now,
            due,
        ));
    }

    /// Whether no row was added.
    pub(crate) fn is_empty(&self) -> bool {
        [
            &self.outcomes,
            &self.inline,
            &self.steps,
            &self.abandon,
            &self.events,
            &self.statuses,
            &self.ends,
        ]
        .iter()
        .all(|rows| rows.is_empty())
    }
}

/// A run that a write ended, as its `UPDATE` returns it.
#[derive(sqlx::FromRow)]
pub(crate) struct Ended {
    pub(crate) deployment_id: String,
    pub(crate) finished_at: Millis,
    /// The run's [`super::run_writes::PROMOTE_CHECK`].
    pub(crate) promote: Option<bool>,
}
