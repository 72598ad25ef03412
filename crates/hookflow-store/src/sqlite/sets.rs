//! Rows of many runs written together: each kind of row is gathered into one JSON array, and
//! one statement writes them all, reading its array with `json_each`. Whatever the number of
//! runs, a batch sends a handful of statements of the same few texts, which the writer
//! connection prepares once and keeps; each statement also costs a hand-off between the
//! connection's thread and the writing task, so fewer statements mean fewer hand-offs.

use super::script::Script;
use crate::shared::new_runs::Row;
use crate::shared::outbox::LoggedAttempt;
use crate::shared::run_rows::{Rows, RunRows};
use crate::shared::run_writes::PROMOTE_CHECK;

/// New runs: (id, workspace, deployment, deployment name, variant, workflow, version, status,
/// source, delivery, callback URL, inputs, user, metadata, settings, created at, output, error,
/// finished at).
const INSERT_RUNS: &str = "INSERT INTO runs (id, workspace_id, deployment_id, \
    deployment_name, variant, workflow, version, status, source, delivery, callback_url, inputs, \
    run_user, metadata, settings, created_at, started_at, output, error, finished_at) \
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
      value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, \
      value ->> 12, value ->> 13, value ->> 14, value ->> 15, value ->> 15, value ->> 16, \
      value ->> 17, value ->> 18 \
    FROM json_each($1)";

/// Applied attempts: (run, step, attempt, status, output, error, now).
const UPDATE_OUTCOMES: &str = "UPDATE step_executions AS s SET status = v.status, \
    output = v.output, error = v.error, finished_at = v.now, \
    started_at = COALESCE(s.started_at, v.now) \
    FROM (SELECT value ->> 0 AS run_id, value ->> 1 AS step_id, value ->> 2 AS attempt, \
      value ->> 3 AS status, value ->> 4 AS output, value ->> 5 AS error, value ->> 6 AS now \
      FROM json_each($1)) AS v \
    WHERE s.run_id = v.run_id AND s.step_id = v.step_id AND s.attempt = v.attempt";

/// Steps the planner resolved, as finished first attempts: (run, step, status, output, now).
const INSERT_INLINE: &str = "INSERT INTO step_executions (run_id, step_id, attempt, status, \
    output, created_at, started_at, finished_at) \
    SELECT value ->> 0, value ->> 1, 1, value ->> 2, value ->> 3, value ->> 4, value ->> 4, \
      value ->> 4 \
    FROM json_each($1)";

/// Scheduled steps and their jobs: (run, step, attempt, status, started at, now, due at,
/// lease); `$returning` ends the jobs' insert.
macro_rules! insert_steps {
    ($returning:literal) => {
        concat!(
            "INSERT INTO step_executions (run_id, step_id, attempt, status, created_at, \
               started_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 5, \
               value ->> 4 \
             FROM json_each($1); \
             INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 6, value ->> 7 \
             FROM json_each($1)",
            $returning
        )
    };
}

/// Scheduled steps and their jobs (see [`insert_steps!`]).
const INSERT_STEPS: &str = insert_steps!("");

/// [`INSERT_STEPS`], returning each job's (run, step, attempt, id).
const INSERT_STEPS_RETURNING_JOBS: &str = insert_steps!(" RETURNING run_id, step_id, attempt, id");

/// Open work of ending runs, abandoned: (run, now). Jobs first: a claimer holds its job before
/// it touches the job's execution row.
const ABANDON_OPEN_WORK: &str = "DELETE FROM jobs \
      WHERE run_id IN (SELECT value ->> 0 FROM json_each($1)); \
    UPDATE step_executions AS s SET status = 'abandoned', finished_at = v.now \
    FROM (SELECT value ->> 0 AS run_id, value ->> 1 AS now FROM json_each($1)) AS v \
    WHERE s.run_id = v.run_id AND s.status IN ('scheduled', 'running'); \
    UPDATE approvals SET status = 'cancelled' \
    WHERE run_id IN (SELECT value ->> 0 FROM json_each($1)) AND status = 'pending'";

/// Events: (id, run, workspace, deployment, type, payload, URL, now, due at).
const INSERT_EVENTS: &str = "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, \
      event_type, payload, url, status, run_at, created_at, updated_at) \
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
      value ->> 6, 'pending', value ->> 8, value ->> 7, value ->> 7 \
    FROM json_each($1)";

/// Delivery attempts, logged, and their effect on their events: (event, run, attempt,
/// trigger, URL, status code, response body, duration, error, now, next attempt at, lease that
/// must still hold (NULL: any), the event's new status (NULL: its schedule stays as it was), its
/// next due time).
const RECORD_ATTEMPTS: &str = "INSERT INTO delivery_attempts (delivery_id, run_id, attempt, \
      trigger, url, status_code, response_body, duration_ms, error, created_at, \
      next_attempt_at) \
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
      value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 \
    FROM json_each($1); \
    UPDATE deliveries AS d SET attempts = d.attempts + 1, status = COALESCE(v.status, d.status), \
      run_at = CASE WHEN v.status IS NULL THEN d.run_at ELSE v.run_at END, updated_at = v.now \
    FROM (SELECT value ->> 0 AS id, value ->> 9 AS now, value ->> 11 AS lease, \
      value ->> 12 AS status, value ->> 13 AS run_at FROM json_each($1)) AS v \
    WHERE d.id = v.id AND (v.lease IS NULL OR d.lease_token = v.lease)";

/// Runs going on in another status: (run, status).
const UPDATE_STATUSES: &str = "UPDATE runs SET status = v.status \
    FROM (SELECT value ->> 0 AS id, value ->> 1 AS status FROM json_each($1)) AS v \
    WHERE runs.id = v.id";

/// Runs ending: (run, status, output, error, now); returns each one's deployment, end time and
/// [`PROMOTE_CHECK`].
fn end_runs_sql() -> String {
    format!(
        "UPDATE runs SET status = v.status, output = v.output, error = v.error, \
           finished_at = v.now \
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS status, value ->> 2 AS output, \
           value ->> 3 AS error, value ->> 4 AS now FROM json_each($1)) AS v \
         WHERE runs.id = v.id \
         RETURNING runs.deployment_id, runs.finished_at, {PROMOTE_CHECK} AS promote"
    )
}

/// Appends `sql`, reading `rows` as its `$1`, to `script` (nothing when no row).
fn append(script: Script, rows: Rows, sql: &str) -> Script {
    match rows.into_json() {
        Some(json) => script.numbered(sql).bind(json),
        None => script,
    }
}

/// Rows of any number of runs, to be written together (see the module's documentation).
#[derive(Default)]
pub(super) struct Sets {
    runs: Rows,
    attempts: Rows,
    /// Rows of live runs, and of new runs' steps and events.
    live: RunRows,
}

impl From<RunRows> for Sets {
    /// Rows of live runs only.
    fn from(live: RunRows) -> Self {
        Self {
            live,
            ..Self::default()
        }
    }
}

impl Sets {
    /// Adds a new run with its resolved steps, its first steps and its event.
    pub(super) fn push_new_run(&mut self, row: &Row) {
        // More fields than a tuple serializes.
        self.runs.push(serde_json::json!([
            row.id,
            row.workspace_id,
            row.deployment_id,
            row.deployment_name,
            row.variant,
            row.workflow,
            row.version,
            row.status,
            row.source,
            row.delivery,
            row.callback_url,
            row.inputs,
            row.user,
            row.metadata,
            row.settings,
            row.created_at,
            row.output,
            row.error,
            row.finished_at,
        ]));
        for (step, status, output) in &row.inline {
            self.live
                .inline
                .push((&row.id, step, status, output, row.created_at));
        }
        self.live.push_steps(&row.id, &row.start, row.created_at);
        if let Some(event) = &row.event {
            let run = [&row.id, &row.workspace_id, &row.deployment_id];
            self.live
                .push_event(run, event, row.created_at, row.event_due);
        }
    }

    /// Adds a delivery attempt and its effect on its event.
    pub(super) fn push_attempt(&mut self, logged: &LoggedAttempt) {
        let attempt = &logged.attempt;
        self.attempts.push((
            &logged.event_id,
            &logged.run_id,
            attempt.attempt,
            attempt.trigger.as_str(),
            &attempt.url,
            attempt.status_code,
            &attempt.response_body,
            attempt.duration_ms,
            &attempt.error,
            attempt.created_at,
            attempt.next_attempt_at,
            logged.lease_token,
            logged.next.map(|(status, _)| status),
            logged.next.and_then(|(_, at)| at),
        ));
    }

    /// The statements writing every row added, in an order that keeps each write's meaning
    /// (runs before their steps, an applied attempt before the abandoning of the rest), the
    /// runs' ends last: the only statement that returns rows.
    pub(super) fn script(self) -> Script {
        self.script_with(INSERT_STEPS)
    }

    /// The statements writing a batch of new runs (added by [`Sets::push_new_run`] only); the
    /// one statement that returns rows is the insert of jobs: each one's (run, step, attempt,
    /// id).
    pub(super) fn new_runs_script(self) -> Script {
        self.script_with(INSERT_STEPS_RETURNING_JOBS)
    }

    /// [`Sets::script`], its steps inserted by `insert_steps`.
    fn script_with(self, insert_steps: &str) -> Script {
        let live = self.live;
        let script = Script::new("");
        let script = append(script, self.runs, INSERT_RUNS);
        let script = append(script, live.outcomes, UPDATE_OUTCOMES);
        let script = append(script, live.inline, INSERT_INLINE);
        let script = append(script, live.steps, insert_steps);
        let script = append(script, live.abandon, ABANDON_OPEN_WORK);
        let script = append(script, live.events, INSERT_EVENTS);
        let script = append(script, live.statuses, UPDATE_STATUSES);
        let script = append(script, self.attempts, RECORD_ATTEMPTS);
        append(script, live.ends, &end_runs_sql())
    }
}
