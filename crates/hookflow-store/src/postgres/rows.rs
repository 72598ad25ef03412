//! Mapping between PostgreSQL rows and store types.

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{
    Delivery, Deployment, Result, RunRecord, RunStatus, Source, StepExecution, StepStatus,
    StoreError,
};

/// Parses a JSON text column.
pub(super) fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

/// Parses an optional JSON text column.
pub(super) fn opt_json(text: Option<String>) -> Result<Option<Value>> {
    text.as_deref().map(json).transpose()
}

/// Parses a stored enum spelling.
pub(super) fn parse<T>(text: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown value {text:?}")))
}

/// Columns of `runs`, in the order [`run`] reads them.
pub(super) const RUN_COLUMNS: &str = "id, workspace_id, deployment_id, deployment_name, variant, \
    workflow, version, status, source, delivery, callback_url, inputs, run_user, metadata, \
    settings, output, error, created_at, started_at, finished_at";

pub(super) fn run(row: &PgRow) -> Result<RunRecord> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        deployment_id: row.try_get("deployment_id")?,
        deployment_name: row.try_get("deployment_name")?,
        variant: row.try_get("variant")?,
        workflow: row.try_get("workflow")?,
        version: row.try_get("version")?,
        status: parse(row.try_get("status")?, RunStatus::parse)?,
        source: parse(row.try_get("source")?, Source::parse)?,
        delivery: parse(row.try_get("delivery")?, Delivery::parse)?,
        callback_url: row.try_get("callback_url")?,
        inputs: json(row.try_get("inputs")?)?,
        user: row.try_get("run_user")?,
        metadata: json(row.try_get("metadata")?)?,
        settings: json(row.try_get("settings")?)?,
        output: opt_json(row.try_get("output")?)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Columns of `step_executions`, in the order [`step_execution`] reads them.
pub(super) const STEP_COLUMNS: &str =
    "step_id, attempt, status, output, error, created_at, started_at, finished_at";

pub(super) fn step_execution(row: &PgRow) -> Result<StepExecution> {
    Ok(StepExecution {
        step_id: row.try_get("step_id")?,
        attempt: row.try_get("attempt")?,
        status: parse(row.try_get("status")?, StepStatus::parse)?,
        output: opt_json(row.try_get("output")?)?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

pub(super) fn deployment(row: &PgRow) -> Result<Deployment> {
    let variants: &str = row.try_get("variants")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        name: row.try_get("name")?,
        workflow: row.try_get("workflow")?,
        variants: serde_json::from_str(variants)
            .map_err(|e| StoreError::Corrupt(format!("bad variants: {e}")))?,
        concurrency_limit: row.try_get("concurrency_limit")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
