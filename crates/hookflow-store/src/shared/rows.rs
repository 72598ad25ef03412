//! Mapping between result rows (of either backend) and store types.

use serde_json::Value;
use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, Type};

use crate::{
    ApiKey, Approval, ApprovalStatus, AttemptRecord, ClaimedDelivery, ClaimedJob, Delivery,
    DeliveryStatus, Deployment, EventRecord, JobKind, Millis, Result, RunRecord, RunStatus,
    SecretMeta, Source, StepExecution, StepResult, StepStatus, StoreError, Trigger,
    WorkflowVersion,
};

/// A column type that both backends decode.
pub(crate) trait Column:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A result row of either backend.
pub(crate) trait Columns {
    /// The value of the column `name`.
    fn get<T: Column>(&self, name: &str) -> Result<T>;
}

impl Columns for SqliteRow {
    fn get<T: Column>(&self, name: &str) -> Result<T> {
        Ok(self.try_get(name)?)
    }
}

impl Columns for PgRow {
    fn get<T: Column>(&self, name: &str) -> Result<T> {
        Ok(self.try_get(name)?)
    }
}

/// Parses a JSON text column.
pub(crate) fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

/// Parses an optional JSON text column.
fn opt_json(text: Option<String>) -> Result<Option<Value>> {
    text.as_deref().map(json).transpose()
}

/// Parses the stored spelling of an enum.
fn parse<T>(row: &impl Columns, column: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = row.get(column)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("unknown value {text:?}")))
}

/// Columns of `runs`, in the order [`run`] reads them.
pub(crate) const RUN_COLUMNS: &str = "id, workspace_id, deployment_id, deployment_name, variant, \
    workflow, version, status, source, delivery, callback_url, inputs, run_user, metadata, \
    settings, output, error, created_at, started_at, finished_at";

/// Columns of `step_executions`, in the order [`step_execution`] reads them.
pub(crate) const STEP_COLUMNS: &str =
    "step_id, attempt, status, output, error, created_at, started_at, finished_at";

pub(crate) fn run(row: &impl Columns) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.get("id")?,
        workspace_id: row.get("workspace_id")?,
        deployment_id: row.get("deployment_id")?,
        deployment_name: row.get("deployment_name")?,
        variant: row.get("variant")?,
        workflow: row.get("workflow")?,
        version: row.get("version")?,
        status: parse(row, "status", RunStatus::parse)?,
        source: parse(row, "source", Source::parse)?,
        delivery: parse(row, "delivery", Delivery::parse)?,
        callback_url: row.get("callback_url")?,
        inputs: json(&row.get::<String>("inputs")?)?,
        user: row.get("run_user")?,
        metadata: json(&row.get::<String>("metadata")?)?,
        settings: json(&row.get::<String>("settings")?)?,
        output: opt_json(row.get("output")?)?,
        error: row.get("error")?,
        created_at: row.get("created_at")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
    })
}

pub(crate) fn step_execution(row: &impl Columns) -> Result<StepExecution> {
    step_execution_as(row, "")
}

/// Reads a step execution whose columns carry `prefix` (`s_status`…).
fn step_execution_as(row: &impl Columns, prefix: &str) -> Result<StepExecution> {
    let col = |name: &str| format!("{prefix}{name}");
    Ok(StepExecution {
        step_id: row.get(&col("step_id"))?,
        attempt: row.get(&col("attempt"))?,
        status: parse(row, &col("status"), StepStatus::parse)?,
        output: opt_json(row.get(&col("output"))?)?,
        error: row.get(&col("error"))?,
        created_at: row.get(&col("created_at"))?,
        started_at: row.get(&col("started_at"))?,
        finished_at: row.get(&col("finished_at"))?,
    })
}

/// Applies what an attempt's [`crate::shared::run_writes::StepRow`] writes to the loaded
/// executions of a run.
pub(crate) fn record_in(
    steps: &mut [StepExecution],
    step_id: &str,
    attempt: i64,
    result: &StepResult,
    now: Millis,
) {
    let (status, output, error) = match result {
        StepResult::Completed(output) => (StepStatus::Completed, Some(output.clone()), None),
        StepResult::Skipped => (StepStatus::Skipped, None, None),
        StepResult::Failed { error, .. } => (StepStatus::Failed, None, Some(error.clone())),
        StepResult::Waiting { .. } => return,
    };
    if let Some(e) = steps
        .iter_mut()
        .find(|e| e.step_id == step_id && e.attempt == attempt)
    {
        e.status = status;
        e.output = output;
        e.error = error;
        e.finished_at = Some(now);
        e.started_at = e.started_at.or(Some(now));
    }
}

/// Runs and every execution of their steps in one query: `runs r` left-joined with
/// `step_executions s`, the runs chosen by `filter` (on `r`), in id order, each run's
/// executions in (step, attempt) order. Read with [`run_states`].
pub(crate) fn run_states_sql(filter: &str) -> String {
    let run = RUN_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let steps = STEP_COLUMNS
        .split(", ")
        .map(|c| format!("s.{c} AS s_{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {run}, {steps} FROM runs r LEFT JOIN step_executions s ON s.run_id = r.id \
         WHERE {filter} ORDER BY r.id, s.step_id, s.attempt"
    )
}

/// Reads the rows of [`run_states_sql`]: each run with its executions.
pub(crate) fn run_states<R: Columns>(rows: &[R]) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
    let mut states: Vec<(RunRecord, Vec<StepExecution>)> = Vec::new();
    for row in rows {
        let id: String = row.get("id")?;
        let step = match row.get::<Option<String>>("s_step_id")? {
            Some(_) => Some(step_execution_as(row, "s_")?),
            None => None,
        };
        match states.last_mut() {
            Some((last, steps)) if last.id == id => steps.extend(step),
            _ => states.push((run(row)?, step.into_iter().collect())),
        }
    }
    Ok(states)
}

pub(crate) fn deployment(row: &impl Columns) -> Result<Deployment> {
    let variants: String = row.get("variants")?;
    Ok(Deployment {
        id: row.get("id")?,
        workspace_id: row.get("workspace_id")?,
        name: row.get("name")?,
        workflow: row.get("workflow")?,
        variants: serde_json::from_str(&variants)
            .map_err(|e| StoreError::Corrupt(format!("bad variants: {e}")))?,
        concurrency_limit: row.get("concurrency_limit")?,
        secret: row.get("secret")?,
        previous_secret: row.get("previous_secret")?,
        previous_secret_expires_at: row.get("previous_secret_expires_at")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

pub(crate) fn workflow_version(row: &impl Columns) -> Result<WorkflowVersion> {
    Ok(WorkflowVersion {
        name: row.get("name")?,
        version: row.get("version")?,
        definition: json(&row.get::<String>("definition")?)?,
        created_at: row.get("created_at")?,
    })
}

pub(crate) fn api_key(row: &impl Columns) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.get("id")?,
        name: row.get("name")?,
        prefix: row.get("prefix")?,
        created_at: row.get("created_at")?,
    })
}

pub(crate) fn secret_meta(row: &impl Columns) -> Result<SecretMeta> {
    Ok(SecretMeta {
        name: row.get("name")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

pub(crate) fn claimed_job(row: &impl Columns) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: row.get("id")?,
        lease_token: row.get("lease_token")?,
        run_id: row.get("run_id")?,
        step_id: row.get("step_id")?,
        attempt: row.get("attempt")?,
        kind: parse(row, "kind", JobKind::parse)?,
    })
}

pub(crate) fn approval(row: &impl Columns) -> Result<Approval> {
    Ok(Approval {
        id: row.get("id")?,
        workspace_id: row.get("workspace_id")?,
        run_id: row.get("run_id")?,
        step_id: row.get("step_id")?,
        attempt: row.get("attempt")?,
        prompt: row.get("prompt")?,
        assignee: row.get("assignee")?,
        status: parse(row, "status", ApprovalStatus::parse)?,
        decision: row.get("decision")?,
        comment: row.get("comment")?,
        data: opt_json(row.get("data")?)?,
        responder: row.get("responder")?,
        created_at: row.get("created_at")?,
        deadline: row.get("deadline")?,
        answered_at: row.get("answered_at")?,
    })
}

pub(crate) fn claimed_delivery(row: &impl Columns) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        id: row.get("id")?,
        lease_token: row.get("lease_token")?,
        run_id: row.get("run_id")?,
        deployment_id: row.get("deployment_id")?,
        event_type: row.get("event_type")?,
        payload: row.get("payload")?,
        url: row.get("url")?,
        attempts: row.get("attempts")?,
    })
}

pub(crate) fn event(row: &impl Columns) -> Result<EventRecord> {
    Ok(EventRecord {
        id: row.get("id")?,
        run_id: row.get("run_id")?,
        deployment_id: row.get("deployment_id")?,
        payload: row.get("payload")?,
        url: row.get("url")?,
        status: parse(row, "status", DeliveryStatus::parse)?,
        attempts: row.get("attempts")?,
    })
}

/// A logged delivery attempt with its log id.
pub(crate) fn attempt(row: &impl Columns) -> Result<(i64, AttemptRecord)> {
    Ok((
        row.get("id")?,
        AttemptRecord {
            attempt: row.get("attempt")?,
            trigger: parse(row, "trigger", Trigger::parse)?,
            url: row.get("url")?,
            status_code: row.get("status_code")?,
            response_body: row.get("response_body")?,
            duration_ms: row.get("duration_ms")?,
            error: row.get("error")?,
            created_at: row.get("created_at")?,
            next_attempt_at: row.get("next_attempt_at")?,
        },
    ))
}
