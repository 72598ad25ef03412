//! How PostgreSQL writes rows of live runs (see [`crate::shared::run_rows`]): one statement
//! whose data-modifying CTEs each read one kind's JSON array (only the kinds present), the
//! runs' ends last, returning what promotion needs; then, for runs that end with open work,
//! three statements abandoning it. The CTEs of one statement share a snapshot, so the
//! abandoning, which touches the rows the outcomes update, comes after.

use sqlx::Arguments;
use sqlx::postgres::PgArguments;

use super::Tx;
use crate::Result;
use crate::shared::run_rows::{Ended, RunRows};
use crate::shared::run_writes::PROMOTE_CHECK;

/// A kind's rows as a relation `t (v)`, each `v` a JSON array; `{}` is the array's parameter.
const ROWS: &str = "json_array_elements({}::json) AS t (v)";

/// Applied attempts (see [`RunRows::outcomes`]).
const OUTCOMES: &str = "UPDATE step_executions AS s SET status = v ->> 3, output = v ->> 4, \
    error = v ->> 5, finished_at = (v ->> 6)::bigint, \
    started_at = COALESCE(s.started_at, (v ->> 6)::bigint) \
    FROM {rows} \
    WHERE s.run_id = v ->> 0 AND s.step_id = v ->> 1 AND s.attempt = (v ->> 2)::bigint";

/// Steps the planner resolved (see [`RunRows::inline`]).
const INLINE: &str = "INSERT INTO step_executions (run_id, step_id, attempt, status, output, \
      created_at, started_at, finished_at) \
    SELECT v ->> 0, v ->> 1, 1, v ->> 2, v ->> 3, (v ->> 4)::bigint, (v ->> 4)::bigint, \
      (v ->> 4)::bigint \
    FROM {rows}";

/// Scheduled steps (see [`RunRows::steps`]).
const STEPS: &str = "INSERT INTO step_executions (run_id, step_id, attempt, status, \
      created_at, started_at) \
    SELECT v ->> 0, v ->> 1, (v ->> 2)::bigint, v ->> 3, (v ->> 5)::bigint, (v ->> 4)::bigint \
    FROM {rows}";

/// The jobs of scheduled steps (the same rows as [`STEPS`]).
const JOBS: &str = "INSERT INTO jobs (run_id, step_id, attempt, run_at, lease_ms) \
    SELECT v ->> 0, v ->> 1, (v ->> 2)::bigint, (v ->> 6)::bigint, (v ->> 7)::bigint \
    FROM {rows}";

/// Events (see [`RunRows::events`]).
const EVENTS: &str = "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, \
      event_type, payload, url, status, run_at, created_at, updated_at) \
    SELECT v ->> 0, v ->> 1, v ->> 2, v ->> 3, v ->> 4, v ->> 5, v ->> 6, 'pending', \
      (v ->> 8)::bigint, (v ->> 7)::bigint, (v ->> 7)::bigint \
    FROM {rows}";

/// Status changes (see [`RunRows::statuses`]).
const STATUSES: &str = "UPDATE runs SET status = v ->> 1 FROM {rows} WHERE runs.id = v ->> 0";

/// Abandons the open work of ending runs (see [`RunRows::abandon`]), `$1` their rows: their
/// jobs first (a claimer holds its job before it touches the job's execution row), then their
/// open attempts and their pending approvals.
const ABANDON_OPEN_WORK: [&str; 3] = [
    "DELETE FROM jobs WHERE run_id IN ( \
       SELECT v ->> 0 FROM json_array_elements($1::json) AS t (v))",
    "UPDATE step_executions AS s SET status = 'abandoned', finished_at = (v ->> 1)::bigint \
     FROM json_array_elements($1::json) AS t (v) \
     WHERE s.run_id = v ->> 0 AND s.status IN ('scheduled', 'running')",
    "UPDATE approvals SET status = 'cancelled' WHERE status = 'pending' AND run_id IN ( \
       SELECT v ->> 0 FROM json_array_elements($1::json) AS t (v))",
];

/// Writes `rows`, returning the runs they ended.
pub(super) async fn send(tx: &mut Tx, rows: RunRows) -> Result<Vec<Ended>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let RunRows {
        outcomes,
        inline,
        steps,
        abandon,
        events,
        statuses,
        ends,
    } = rows;
    let mut args = PgArguments::default();
    let mut ctes = Vec::new();
    let param = |json: String, args: &mut PgArguments| -> Result<String> {
        args.add(json).map_err(sqlx::Error::Encode)?;
        Ok(ROWS.replace("{}", &format!("${}", args.len())))
    };
    for (name, kind, json) in [
        ("outcomes", OUTCOMES, outcomes.into_json()),
        ("inline", INLINE, inline.into_json()),
        ("events", EVENTS, events.into_json()),
        ("statuses", STATUSES, statuses.into_json()),
    ] {
        if let Some(json) = json {
            let rows = param(json, &mut args)?;
            ctes.push(format!("{name} AS ({})", kind.replace("{rows}", &rows)));
        }
    }
    if let Some(json) = steps.into_json() {
        let rows = param(json, &mut args)?;
        ctes.push(format!("steps AS ({})", STEPS.replace("{rows}", &rows)));
        ctes.push(format!("jobs AS ({})", JOBS.replace("{rows}", &rows)));
    }
    let ends = param(ends.into_json().unwrap_or_else(|| "[]".into()), &mut args)?;
    let with = match ctes.is_empty() {
        true => String::new(),
        false => format!("WITH {} ", ctes.join(", ")),
    };
    let sql = format!(
        "{with}UPDATE runs SET status = v ->> 1, output = v ->> 2, error = v ->> 3, \
           finished_at = (v ->> 4)::bigint \
         FROM {ends} WHERE runs.id = v ->> 0 \
         RETURNING runs.deployment_id, runs.finished_at, {PROMOTE_CHECK} AS promote"
    );
    let ended: Vec<Ended> = sqlx::query_as_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(&mut **tx)
        .await?;
    if let Some(json) = abandon.into_json() {
        for sql in ABANDON_OPEN_WORK {
            sqlx::query(sql).bind(&json).execute(&mut **tx).await?;
        }
    }
    Ok(ended)
}
