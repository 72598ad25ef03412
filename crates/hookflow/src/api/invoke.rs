//! `POST /v1/workflow/invoke`: starts a run, then waits for it (sync) or answers at once (async).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hookflow_store::{
    Applied, CreatedRun, Delivery, Deployment, IdempotencyClaim, NewRun, NewStep, Plan, Planner,
    RunRecord, RunStatus, Source,
};
use serde_json::{Map, Value, json};

use super::deployments::find_cached;
use super::extract::{Auth, JsonBody};
use super::{ApiError, ApiResult};
use crate::app::{App, now_ms};
use crate::delivery;
use crate::engine::{self, RunPlanner};
use crate::ids::{body_hash, request_id};

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest accepted `user`.
const MAX_USER: usize = 256;
/// How often a sync invoke re-reads its run when no wake-up came (another node may run it).
const SYNC_POLL: Duration = Duration::from_millis(1000);

/// A validated start request, shared by invoke and webhook triggers.
pub struct StartRequest {
    pub inputs: Value,
    pub user: Option<String>,
    pub metadata: Value,
    pub callback_url: Option<String>,
}

/// Validates `metadata`: a flat object of strings, numbers, booleans or null.
pub fn metadata(value: Option<&Value>) -> ApiResult<Value> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(Value::Object(map)) if map.values().all(|v| !v.is_object() && !v.is_array()) => {
            Ok(Value::Object(map.clone()))
        }
        Some(_) => Err(ApiError::invalid(
            "metadata must be a flat object whose values are strings, numbers, booleans or null",
        )),
    }
}

/// Validates `user`: a string (or absent).
pub fn user(value: Option<&Value>) -> ApiResult<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_USER && !s.contains('\0') => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!(
            "user must be a string of at most {MAX_USER} characters, without NUL characters"
        ))),
    }
}

/// Validates a callback URL: absolute http(s).
pub fn callback_url(value: &Value) -> ApiResult<String> {
    value
        .as_str()
        .and_then(|s| url::Url::parse(s).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(String::from)
        .ok_or_else(|| ApiError::invalid("callback_url must be a valid URL"))
}

/// Reads `async`: `{"enabled": bool, "callback_url": "…"}`. A callback URL without
/// `enabled` means callback delivery; `enabled: false` means direct delivery.
fn async_config(value: Option<&Value>) -> ApiResult<Option<String>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("async must be an object"))?;
    let enabled = match object.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::invalid("async.enabled must be a boolean")),
    };
    let url = object.get("callback_url").filter(|v| !v.is_null());
    match (enabled, url) {
        (Some(false), _) | (None, None) => Ok(None),
        (Some(true), None) => Err(ApiError::invalid(
            "callback_url is required when async is enabled",
        )),
        (_, Some(url)) => callback_url(url).map(Some),
    }
}

/// The answer of a finished or still-running run, as sync invoke gives it.
fn run_answer(run: &RunRecord) -> Response {
    match run.status {
        RunStatus::Completed => Json(json!({
            "request_id": run.id, "run_status": run.status, "output": run.output,
        }))
        .into_response(),
        status if status.is_terminal() => Json(json!({
            "request_id": run.id, "run_status": status, "error": run.error,
        }))
        .into_response(),
        status => (
            StatusCode::ACCEPTED,
            Json(json!({ "request_id": run.id, "run_status": status })),
        )
            .into_response(),
    }
}

/// Waits for a run to end, up to the sync wait limit, then answers with its state.
async fn wait_for(app: &App, workspace_id: &str, run_id: &str) -> ApiResult<Response> {
    let waiter = app.waiters.register(run_id);
    let deadline = tokio::time::Instant::now() + app.settings.sync_wait_limit;
    loop {
        let run = app
            .store
            .run(workspace_id, run_id)
            .await?
            .ok_or_else(ApiError::run_not_found)?;
        let now = tokio::time::Instant::now();
        if run.status.is_terminal() || now >= deadline {
            return Ok(run_answer(&run));
        }
        let nap = (deadline - now).min(SYNC_POLL);
        let _ = tokio::time::timeout(nap, waiter.notify.notified()).await;
    }
}

/// `POST /v1/workflow/invoke`.
pub async fn invoke(
    State(app): State<Arc<App>>,
    auth: Auth,
    headers: HeaderMap,
    body: JsonBody,
) -> ApiResult<Response> {
    let object = body.object()?;
    let deployment_name = object
        .get("deployment")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid("Missing required field: deployment"))?;
    let variant_name = match object.get("variant") {
        None | Some(Value::Null) => "default",
        Some(Value::String(v)) => v.as_str(),
        Some(_) => return Err(ApiError::invalid("variant must be a string")),
    };
    let inputs = match object.get("inputs") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(ApiError::invalid("inputs must be an object")),
    };
    let start = StartRequest {
        inputs,
        user: user(object.get("user"))?,
        metadata: metadata(object.get("metadata"))?,
        callback_url: async_config(object.get("async"))?,
    };
    let idempotency = idempotency_claim(&headers, &body.raw)?;
    let deployment = find_cached(&app, &auth.workspace_id, deployment_name).await?;
    start_run(
        &app,
        &deployment,
        variant_name,
        start,
        Source::Api,
        idempotency,
    )
    .await
}

/// Reads the `Idempotency-Key` header into a claim on this request body.
pub fn idempotency_claim(headers: &HeaderMap, raw: &[u8]) -> ApiResult<Option<(String, String)>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(Some((key.to_string(), body_hash(raw))))
}

/// Validates and creates a run of a deployment variant, then answers: at once for callback
/// delivery, after waiting for the run for direct delivery. `idempotency` is (key, body hash).
pub async fn start_run(
    app: &Arc<App>,
    deployment: &Deployment,
    variant_name: &str,
    start: StartRequest,
    source: Source,
    idempotency: Option<(String, String)>,
) -> ApiResult<Response> {
    let workspace_id = &deployment.workspace_id;
    let variant = deployment
        .variants
        .get(variant_name)
        .ok_or_else(|| ApiError::not_found(format!("Variant not found: {variant_name}")))?;
    let def = app
        .definition(workspace_id, &deployment.workflow, variant.version)
        .await?
        .ok_or_else(|| ApiError::internal("deployment pins a missing workflow version"))?;
    let sync = start.callback_url.is_none();
    if sync && def.requires_callback() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "callback_required",
            "This workflow contains a human step and requires callback delivery: set async.callback_url",
        ));
    }
    def.check_inputs(&start.inputs).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_inputs",
            format!("inputs do not match the workflow's schema: {e}"),
        )
    })?;

    let now = now_ms();
    let id = request_id();
    let mut async_answer = json!({ "request_id": id, "run_status": RunStatus::Running });
    if source == Source::Api {
        // A trigger's caller already holds the secret.
        async_answer["webhook_secret"] = deployment.secret.clone().into();
    }
    let mut run = NewRun {
        id: id.clone(),
        workspace_id: workspace_id.clone(),
        deployment_id: deployment.id.clone(),
        deployment_name: deployment.name.clone(),
        variant: variant_name.to_string(),
        workflow: deployment.workflow.clone(),
        version: variant.version,
        source,
        delivery: if sync {
            Delivery::Direct
        } else {
            Delivery::Callback
        },
        callback_url: start.callback_url,
        inputs: start.inputs,
        user: start.user,
        metadata: start.metadata,
        settings: variant.settings.clone(),
        // Planned below, from the run as it starts.
        plan: Plan {
            inline: Vec::new(),
            start: Vec::new(),
            status: RunStatus::Running,
            terminal: None,
        },
        concurrency_limit: deployment.concurrency_limit,
        refuse_when_full: sync,
        idempotency: idempotency.map(|(key, body_hash)| IdempotencyClaim {
            key,
            body_hash,
            response: async_answer.clone(),
        }),
        created_at: now,
        leased: None,
        event_lease: None,
    };
    // Its first pure steps are resolved now, so a run of only transforms ends right here.
    let secrets = app.secrets(&def, workspace_id).await?;
    let planner = RunPlanner {
        def: &def,
        templates: &app.templates,
        secrets: &secrets,
    };
    run.plan = planner.plan(&run.record(), &[], now);
    // With a free engine slot here, the first step due at once is leased to this node, which
    // executes it as soon as the run is written, with no claim.
    let slot =
        (app.engine_slots.clone().try_acquire_owned().ok()).filter(|_| run.lease_first_step());
    // Likewise, with a free delivery slot, the event of a run that ends as it is created is
    // sent from here once it is written.
    let ends_with_event = (run.plan.terminal.as_ref()).is_some_and(|t| t.event.is_some());
    let event_slot =
        (app.delivery_slots.clone().try_acquire_owned().ok()).filter(|_| ends_with_event);
    if event_slot.is_some() {
        run.event_lease = Some(delivery::lease_ms(&app.settings));
    }
    let status = match app.store.create_run(&run).await? {
        CreatedRun::Created(status) => status,
        CreatedRun::Started(leased) => {
            let status = leased.run.status;
            engine::spawn_leased(app.clone(), *leased, slot);
            status
        }
        CreatedRun::Replayed {
            request_id,
            response,
        } => {
            return if sync {
                wait_for(app, workspace_id, &request_id).await
            } else {
                Ok((StatusCode::ACCEPTED, Json(response)).into_response())
            };
        }
        CreatedRun::IdempotencyConflict => {
            return Err(ApiError::conflict(
                "idempotency_conflict",
                "This Idempotency-Key was used with a different request body",
            ));
        }
        CreatedRun::ConcurrencyLimit => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_limit",
                "You've reached your concurrency limit. Try again later or use async mode.",
            ));
        }
    };
    metrics::counter!("hookflow_runs_started_total", "source" => source.as_str()).increment(1);
    let ended = run.plan.terminal.as_ref().filter(|t| t.status == status);
    let applied = Applied::Done {
        terminal: ended.map(|t| t.status),
        event: ended.is_some_and(|t| t.event.is_some()),
        work: ended.is_some() || NewStep::any_due_soon(&run.plan.start, now),
        next: None,
        leased_event: ended.and_then(|_| run.leased_event()).map(Box::new),
    };
    app.signal(&id, &applied);
    if let Applied::Done {
        leased_event: Some(event),
        ..
    } = applied
    {
        delivery::spawn_attempt(app.clone(), *event, event_slot);
    }
    if let (true, Some(terminal)) = (sync, ended) {
        // It ended as it was created: the answer needs no read.
        let mut record = run.record();
        record.status = terminal.status;
        record.output = terminal.output.clone();
        record.error = terminal.error.clone();
        Ok(run_answer(&record))
    } else if sync {
        wait_for(app, workspace_id, &id).await
    } else {
        let mut answer = async_answer;
        if status == RunStatus::Queued {
            answer["run_status"] = json!(status);
        }
        Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
    }
}
