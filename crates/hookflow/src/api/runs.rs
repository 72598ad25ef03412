//! Runs and their logs: step executions and callback delivery attempts; manual replay.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use hookflow_store::{
    Applied, AttemptEffect, AttemptRecord, Cancelled, Delivery, RunFilter, RunRecord, RunStatus,
    Source, StepExecution, Terminal, Trigger,
};
use serde_json::{Value, json};

use super::extract::{Auth, JsonBody, QueryMap, page_of};
use super::invoke::callback_url;
use super::{ApiError, ApiResult, opt_rfc3339, parse_rfc3339, rfc3339};
use crate::app::{App, now_ms};
use crate::delivery::{Outgoing, send, signing_secrets};
use crate::events::terminal_event;
use crate::ids::is_request_id;

/// The API view of a run (without its steps).
fn render(run: &RunRecord) -> Value {
    let mut out = json!({
        "request_id": run.id,
        "run_status": run.status,
        "deployment": run.deployment_name,
        "deployment_id": run.deployment_id,
        "variant": run.variant,
        "workflow": run.workflow,
        "version": run.version,
        "source": run.source,
        "delivery": run.delivery,
        "async": match &run.callback_url {
            Some(url) => json!({ "enabled": true, "callback_url": url }),
            None => Value::Null,
        },
        "inputs": run.inputs,
        "user": run.user,
        "metadata": run.metadata,
        "settings": run.settings,
        "created_at": rfc3339(run.created_at),
        "started_at": opt_rfc3339(run.started_at),
        "finished_at": opt_rfc3339(run.finished_at),
    });
    if run.status == RunStatus::Completed {
        out["output"] = run.output.clone().unwrap_or(Value::Null);
    }
    if run.error.is_some() {
        out["error"] = run.error.clone().into();
    }
    out
}

fn render_step(step: &StepExecution) -> Value {
    json!({
        "step_id": step.step_id,
        "attempt": step.attempt,
        "status": step.status,
        "created_at": rfc3339(step.created_at),
        "started_at": opt_rfc3339(step.started_at),
        "finished_at": opt_rfc3339(step.finished_at),
        "output": step.output,
        "error": step.error,
    })
}

fn render_attempt(a: &AttemptRecord) -> Value {
    json!({
        "attempt": a.attempt,
        "trigger": a.trigger,
        "url": a.url,
        "status_code": a.status_code,
        "response_body": a.response_body,
        "duration_ms": a.duration_ms,
        "error": a.error,
        "created_at": rfc3339(a.created_at),
        "next_attempt_at": opt_rfc3339(a.next_attempt_at),
    })
}

/// A run of the caller's workspace, or the SPEC's 404.
async fn find(app: &App, workspace_id: &str, id: &str) -> ApiResult<RunRecord> {
    if !is_request_id(id) {
        return Err(ApiError::run_not_found());
    }
    app.store
        .run(workspace_id, id)
        .await?
        .ok_or_else(ApiError::run_not_found)
}

/// `GET /v1/workflow/runs/{id}`: the run with every step execution.
pub async fn get(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = find(&app, &auth.workspace_id, &id).await?;
    let steps = app.store.step_executions(&run.id).await?;
    let mut out = render(&run);
    out["steps"] = steps.iter().map(render_step).collect();
    Ok(Json(out))
}

/// `GET /v1/workflow/runs` with the SPEC's filters.
pub async fn list(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let mut metadata: Vec<(String, String)> = query
        .0
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    metadata.sort();
    let filter = RunFilter {
        status: query.enumerated("status", RunStatus::parse)?,
        source: query.enumerated("source", Source::parse)?,
        delivery: query.enumerated("delivery", Delivery::parse)?,
        deployment: query.0.get("deployment").cloned(),
        user: query.0.get("user").cloned(),
        metadata,
        since: query
            .0
            .get("since")
            .map(|t| parse_rfc3339("since", t))
            .transpose()?,
        until: query
            .0
            .get("until")
            .map(|t| parse_rfc3339("until", t))
            .transpose()?,
    };
    let runs = app
        .store
        .list_runs(&auth.workspace_id, &filter, &page)
        .await?;
    Ok(Json(page_of(runs, &page, |r| r.id.clone(), render)))
}

/// `GET /v1/workflow/runs/{id}/deliveries`: every attempt, newest first.
pub async fn deliveries(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let run = find(&app, &auth.workspace_id, &id).await?;
    let page = query.page()?;
    let attempts = app.store.delivery_attempts(&run.id, &page).await?;
    Ok(Json(page_of(
        attempts,
        &page,
        |(id, _)| id.to_string(),
        |(_, a)| render_attempt(a),
    )))
}

/// `POST /v1/workflow/runs/{id}/deliveries/retry` `{"callback_url"?}`: sends the terminal event
/// again now, as a `manual` attempt, and answers with that attempt.
pub async fn retry_delivery(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let run = find(&app, &auth.workspace_id, &id).await?;
    let override_url = match body.object()?.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(url) => Some(callback_url(url)?),
    };
    if !run.status.is_terminal() {
        return Err(ApiError::conflict(
            "run_not_finished",
            "The run has not finished: there is no terminal event to send yet",
        ));
    }
    let event = match app.store.run_event(&run.id).await? {
        Some(event) => event,
        None => {
            let url = override_url.clone().ok_or_else(|| {
                ApiError::invalid("callback_url is required for a run without callback delivery")
            })?;
            let new = terminal_event(
                &run,
                run.status,
                run.output.as_ref(),
                run.error.as_deref(),
                url,
            );
            app.store.insert_event(&run, &new, now_ms()).await?;
            app.store
                .run_event(&run.id)
                .await?
                .ok_or_else(|| ApiError::internal("event vanished after insert"))?
        }
    };
    let secrets = signing_secrets(&app, &event.deployment_id).await?;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let url = override_url.unwrap_or_else(|| event.url.clone());
    let out = Outgoing {
        event_id: &event.id,
        payload: &event.payload,
        url: &url,
        secrets: &secrets,
    };
    let sent = send(&app, &out, event.attempts + 1, Trigger::Manual).await;
    let effect = match sent.outcome {
        hookflow_core::retry::AttemptOutcome::Delivered => AttemptEffect::Delivered,
        _ => AttemptEffect::Unchanged,
    };
    app.store
        .record_attempt(&event.id, &run.id, None, &sent.record, effect)
        .await?;
    Ok(Json(render_attempt(&sent.record)))
}

/// `POST /v1/workflow/runs/{id}/cancel` `{"reason"?}`: the run becomes `cancelled`, its open
/// work is abandoned, and a `workflow.cancelled` event is sent for callback delivery.
pub async fn cancel(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let reason = match body.object()?.get("reason") {
        None | Some(Value::Null) => "cancelled by API request".to_string(),
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 1024 && !r.contains('\0') => {
            r.clone()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "reason must be a string of 1-1024 characters, without NUL characters",
            ));
        }
    };
    let run = find(&app, &auth.workspace_id, &id).await?;
    let error = format!("Workflow cancelled: {reason}");
    let event = (run.delivery == Delivery::Callback)
        .then(|| run.callback_url.clone())
        .flatten()
        .map(|url| terminal_event(&run, RunStatus::Cancelled, None, Some(&error), url));
    let terminal = Terminal {
        status: RunStatus::Cancelled,
        output: None,
        error: Some(error),
        event,
    };
    let has_event = terminal.event.is_some();
    match app
        .store
        .cancel_run(&auth.workspace_id, &run.id, &terminal, now_ms())
        .await?
    {
        Cancelled::Done => {
            app.signal(
                &run.id,
                &Applied::Done {
                    terminal: Some(RunStatus::Cancelled),
                    event: has_event,
                    work: true,
                    next: None,
                    leased_event: None,
                },
            );
            let run = find(&app, &auth.workspace_id, &id).await?;
            Ok(Json(render(&run)))
        }
        Cancelled::AlreadyTerminal(status) => Err(ApiError::conflict(
            "run_finished",
            format!("The run has already ended ({status})"),
        )),
        Cancelled::NotFound => Err(ApiError::run_not_found()),
    }
}
