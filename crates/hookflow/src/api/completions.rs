//! `POST /webhook/{flow_id}/{step_id}/{token}`: an async step's completion (StepResult). The
//! token in the URL is the only credential.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookflow_store::{Completion, StepResult};
use serde_json::{Value, json};

use super::extract::JsonBody;
use super::{ApiError, ApiResult};
use crate::app::{App, now_ms};
use crate::engine::{RunPlanner, failed_attempt};
use crate::ids::{body_hash, is_request_id};

fn unknown_token() -> ApiError {
    ApiError::not_found("Unknown or malformed token")
}

/// Reads a StepResult: `{"success": true, "outputs": …}` or `{"success": false, "error": "…"}`.
fn step_result(body: &JsonBody) -> ApiResult<Result<Value, String>> {
    let object = body.object()?;
    match object.get("success") {
        Some(Value::Bool(true)) => Ok(Ok(object.get("outputs").cloned().unwrap_or(Value::Null))),
        Some(Value::Bool(false)) => Ok(Err(object
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("step reported failure")
            .to_string())),
        _ => Err(ApiError::invalid(
            "A StepResult needs \"success\": true or false",
        )),
    }
}

/// The completion endpoint.
pub async fn complete(
    State(app): State<Arc<App>>,
    Path((run_id, step_id, token)): Path<(String, String, String)>,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !is_request_id(&run_id) {
        return Err(unknown_token());
    }
    let attempt = app
        .tokens
        .check_step_token(&run_id, &step_id, &token)
        .ok_or_else(unknown_token)?;
    let outcome = step_result(&body)?;
    let run = app
        .store
        .run_by_id(&run_id)
        .await?
        .ok_or_else(unknown_token)?;
    let def = app
        .definition(&run.workspace_id, &run.workflow, run.version)
        .await?
        .ok_or_else(|| ApiError::internal("run of a missing workflow version"))?;
    let step = def.step(&step_id).ok_or_else(unknown_token)?;
    let now = now_ms();
    let result = match outcome {
        Ok(outputs) => StepResult::Completed(outputs),
        Err(error) => failed_attempt(step, attempt, error),
    };
    let secrets = app.secrets(&def, &run.workspace_id).await?;
    let planner = RunPlanner {
        def: &def,
        templates: &app.templates,
        secrets: &secrets,
    };
    // The canonical JSON (sorted keys) identifies the completion, whatever its formatting.
    let hash = body_hash(body.value.to_string().as_bytes());
    match app
        .store
        .complete_step(&run_id, &step_id, attempt, &hash, result, &planner, now)
        .await?
    {
        Completion::Applied(applied) => {
            app.signal(&run_id, &applied);
            Ok((StatusCode::OK, Json(json!({ "status": "accepted" }))))
        }
        Completion::Duplicate => Ok((StatusCode::OK, Json(json!({ "status": "duplicate" })))),
        Completion::Conflict => Err(ApiError::conflict(
            "completion_conflict",
            "A different completion was already accepted for this token",
        )),
        Completion::Gone => Err(ApiError::new(
            StatusCode::GONE,
            "attempt_abandoned",
            "This attempt was abandoned (timed out, retried, or its run ended)",
        )),
        Completion::NotFound => Err(unknown_token()),
    }
}
