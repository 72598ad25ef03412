//! Human-in-the-loop approvals: list, read, answer (with an API key, or through the signed,
//! expiring `respond_url` sent in `approval.requested`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookflow_store::{Answer, Approval, ApprovalStatus, Completion, StepResult};
use serde_json::{Value, json};

use super::extract::{Auth, JsonBody, QueryMap, page_of};
use super::{ApiError, ApiResult, opt_rfc3339, rfc3339};
use crate::app::{App, now_ms};
use crate::engine::RunPlanner;

/// Longest accepted comment or responder.
const MAX_TEXT: usize = 4096;

fn render(a: &Approval) -> Value {
    json!({
        "id": a.id,
        "request_id": a.run_id,
        "step_id": a.step_id,
        "attempt": a.attempt,
        "prompt": a.prompt,
        "assignee": a.assignee,
        "status": a.status,
        "decision": a.decision,
        "comment": a.comment,
        "data": a.data,
        "responder": a.responder,
        "created_at": rfc3339(a.created_at),
        "deadline": opt_rfc3339(a.deadline),
        "answered_at": opt_rfc3339(a.answered_at),
    })
}

/// `GET /v1/workflow/approvals?status=pending`.
pub async fn list(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let status = query.enumerated("status", ApprovalStatus::parse)?;
    let approvals = app
        .store
        .list_approvals(&auth.workspace_id, status, &page)
        .await?;
    Ok(Json(page_of(approvals, &page, |a| a.id.clone(), render)))
}

/// `GET /v1/workflow/approvals/{id}`.
pub async fn get(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(
        &find(&app, Some(&auth.workspace_id), &id).await?,
    )))
}

fn optional_text(body: &serde_json::Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_TEXT && !s.contains('\0') => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!(
            "{name} must be a string of at most {MAX_TEXT} characters, without NUL characters"
        ))),
    }
}

/// Reads `{"decision": "approve"|"reject", "comment", "data", "responder"}`.
fn answer(body: &JsonBody) -> ApiResult<Answer> {
    let body = body.object()?;
    let status = match body.get("decision").and_then(Value::as_str) {
        Some("approve") => ApprovalStatus::Approved,
        Some("reject") => ApprovalStatus::Rejected,
        _ => {
            return Err(ApiError::invalid(
                "decision must be \"approve\" or \"reject\"",
            ));
        }
    };
    let data = match body.get("data") {
        None | Some(Value::Null) => json!({}),
        Some(d @ Value::Object(_)) => d.clone(),
        Some(_) => return Err(ApiError::invalid("data must be an object")),
    };
    Ok(Answer {
        status,
        comment: optional_text(body, "comment")?,
        data,
        responder: optional_text(body, "responder")?,
        answered_at: now_ms(),
    })
}

/// An approval by id, of `workspace_id` when given.
async fn find(app: &App, workspace_id: Option<&str>, id: &str) -> ApiResult<Approval> {
    app.store
        .approval(id)
        .await?
        .filter(|a| workspace_id.is_none_or(|ws| ws == a.workspace_id))
        .ok_or_else(|| ApiError::not_found("Approval not found"))
}

/// Records an answer to an approval.
async fn record(app: &App, approval: &Approval, answer: Answer) -> ApiResult<Json<Value>> {
    let workspace_id = approval.workspace_id.as_str();
    let run = app
        .store
        .run(workspace_id, &approval.run_id)
        .await?
        .ok_or_else(|| ApiError::internal("approval of a missing run"))?;
    let def = app
        .definition(workspace_id, &run.workflow, run.version)
        .await?
        .ok_or_else(|| ApiError::internal("run of a missing workflow version"))?;
    let result = match answer.status {
        ApprovalStatus::Approved => StepResult::Completed(json!({
            "decision": "approve", "comment": answer.comment, "data": answer.data,
            "responder": answer.responder,
        })),
        _ => StepResult::Failed {
            error: match (&answer.responder, &answer.comment) {
                (Some(who), Some(why)) => format!("rejected by {who}: {why}"),
                (Some(who), None) => format!("rejected by {who}"),
                (None, Some(why)) => format!("rejected: {why}"),
                (None, None) => "rejected".to_string(),
            },
            retry: None,
        },
    };
    let secrets = app.secrets(&def, workspace_id).await?;
    let planner = RunPlanner {
        def: &def,
        templates: &app.templates,
        secrets: &secrets,
    };
    match app
        .store
        .answer_approval(&approval.id, &answer, result, &planner, now_ms())
        .await?
    {
        Completion::Applied(applied) => {
            app.signal(&run.id, &applied);
            Ok(Json(render(&find(app, None, &approval.id).await?)))
        }
        Completion::Conflict | Completion::Duplicate => Err(ApiError::conflict(
            "already_answered",
            "This approval was already answered",
        )),
        Completion::Gone => Err(ApiError::new(
            StatusCode::GONE,
            "approval_closed",
            "This approval is closed: its run was cancelled or ended, or it timed out",
        )),
        Completion::NotFound => Err(ApiError::not_found("Approval not found")),
    }
}

/// `POST /v1/workflow/approvals/{id}` with an API key.
pub async fn respond(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let answer = answer(&body)?;
    let approval = find(&app, Some(&auth.workspace_id), &id).await?;
    record(&app, &approval, answer).await
}

/// `POST /v1/workflow/approvals/{id}/respond?token=…`: the same answer, authenticated by the
/// signed, expiring token of the `respond_url`.
pub async fn respond_with_token(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    query: QueryMap,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let token = query.0.get("token").ok_or_else(ApiError::unauthorized)?;
    if !app.tokens.check_respond_token(&id, token, now_ms()) {
        return Err(ApiError::unauthorized());
    }
    let answer = answer(&body)?;
    let approval = find(&app, None, &id).await?;
    record(&app, &approval, answer).await
}
