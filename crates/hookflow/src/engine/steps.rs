//! Executing one attempt of a step, by kind. Nothing here writes to the store.

use std::time::Duration;

use hookflow_core::{AsyncHttpStep, HttpStep, HumanStep, OnTimeout, StepDef, StepKind};
use hookflow_store::{ClaimedJob, JobKind, Millis, NewApproval, RunRecord, StepResult};
use serde_json::{Value, json};

use super::planner::{DEFAULT_ASYNC_TIMEOUT, DEFAULT_STEP_TIMEOUT, new_step, step_timeout};
use crate::app::{App, now_ms};
use crate::events::approval_requested;
use crate::ids::new_id;
use crate::net::describe_error;

/// Largest step response body kept as output.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How much of a failed response's body goes into the error message.
const ERROR_SNIPPET_BYTES: usize = 512;
/// How long a respond link stays valid when its approval has no deadline.
const RESPOND_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs the claimed job of `step` (an attempt, or the timeout of a waiting attempt).
pub async fn execute(
    app: &App,
    run: &RunRecord,
    step: &StepDef,
    job: &ClaimedJob,
    ctx: &Value,
) -> StepResult {
    if job.kind == JobKind::Timeout {
        return timed_out(step, job.attempt);
    }
    if let Some(when) = &step.when {
        match app.templates.truthy(when, ctx) {
            Ok(false) => return StepResult::Skipped,
            Ok(true) => {}
            Err(e) => return fail(step, job.attempt, format!("when: {e}")),
        }
    }
    let outcome = match &step.kind {
        StepKind::Transform { value } => app
            .templates
            .render(value, ctx)
            .map(StepResult::Completed)
            .map_err(|e| format!("value: {e}")),
        StepKind::Delay { .. } => Ok(StepResult::Completed(Value::Null)),
        StepKind::Http(http) => call(app, step, http, ctx).await.map(StepResult::Completed),
        StepKind::AsyncHttp(spec) => start_async(app, run, step, spec, job.attempt, ctx).await,
        StepKind::Human(human) => open_approval(app, run, step, human, ctx),
    };
    outcome.unwrap_or_else(|error| fail(step, job.attempt, error))
}

/// A failed attempt, with the next attempt scheduled if the step's retry policy allows one.
pub fn fail(step: &StepDef, attempt: i64, error: String) -> StepResult {
    let failed = attempt.max(1) as u32;
    let retry = step.retry.retries_after(failed).then(|| {
        let delay = step.retry.delay_after(failed, &mut rand::rng());
        new_step(step, attempt + 1, now_ms() + delay.as_millis() as Millis)
    });
    StepResult::Failed { error, retry }
}

/// What a waiting attempt becomes when its deadline passes.
fn timed_out(step: &StepDef, attempt: i64) -> StepResult {
    let waited = humantime::format_duration(step.timeout.unwrap_or(DEFAULT_ASYNC_TIMEOUT));
    match &step.kind {
        StepKind::Human(human) if human.on_timeout == OnTimeout::Approve => {
            StepResult::Completed(json!({
                "decision": "approve", "comment": null, "data": human.default_data,
                "responder": null, "timed_out": true,
            }))
        }
        StepKind::Human(_) => StepResult::Failed {
            error: format!("approval timed out after {waited}"),
            retry: None,
        },
        _ => fail(
            step,
            attempt,
            format!("timed out after {waited} waiting for the step's completion"),
        ),
    }
}

/// Renders a string template, naming the field on error.
fn render(app: &App, ctx: &Value, template: &str, what: &str) -> Result<String, String> {
    app.templates
        .render_str(template, ctx)
        .map_err(|e| format!("{what}: {e}"))
}

/// Builds a POST or other request to a rendered URL, refusing non-public addresses.
fn request(
    app: &App,
    ctx: &Value,
    method: &str,
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<reqwest::RequestBuilder, String> {
    let url = render(app, ctx, url, "url")?;
    let url = url::Url::parse(&url).map_err(|e| format!("url {url:?} is invalid: {e}"))?;
    app.policy.check_url(&url).map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid method {method:?}"))?;
    let mut request = app.http.request(method, url).timeout(timeout);
    for (name, value) in headers {
        request = request.header(name, render(app, ctx, value, "headers")?);
    }
    Ok(request)
}

/// Sends a request; answers the status and the body (at most [`MAX_RESPONSE_BYTES`]).
async fn send(request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("request failed: {}", describe_error(&e)))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {}", describe_error(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "response body exceeds {MAX_RESPONSE_BYTES} bytes (HTTP {})",
                status.as_u16()
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(ERROR_SNIPPET_BYTES)]);
        return Err(format!("HTTP {}: {snippet}", status.as_u16()));
    }
    Ok((status, body))
}

/// One `http` call: the rendered request, the step's timeout, the parsed response body.
async fn call(app: &App, step: &StepDef, http: &HttpStep, ctx: &Value) -> Result<Value, String> {
    let mut request = request(
        app,
        ctx,
        &http.method,
        &http.url,
        &http.headers,
        step_timeout(step),
    )
    .map_err(|e| format!("request.{e}"))?;
    if let Some(body) = &http.body {
        let body = app
            .templates
            .render(body, ctx)
            .map_err(|e| format!("request.body: {e}"))?;
        request = request.json(&body);
    }
    let (_, body) = send(request).await?;
    Ok(parse_body(&body))
}

/// Calls an async step's endpoint with its arguments and completion URL. A 2xx answer whose
/// body is a StepResult with `success: false` fails the attempt; any other 2xx means
/// "accepted": the attempt waits for its completion until the step's timeout.
async fn start_async(
    app: &App,
    run: &RunRecord,
    step: &StepDef,
    spec: &AsyncHttpStep,
    attempt: i64,
    ctx: &Value,
) -> Result<StepResult, String> {
    let arguments = app
        .templates
        .render(&spec.arguments, ctx)
        .map_err(|e| format!("arguments: {e}"))?;
    let token = app.tokens.step_token(&run.id, &step.id, attempt);
    let webhook_url = format!("{}/webhook/{}/{}/{token}", app.public_url, run.id, step.id);
    let body = json!({
        "arguments": arguments,
        "metadata": {
            "flow_id": run.id, "step_id": step.id, "attempt": attempt, "webhook_url": webhook_url,
        },
    });
    let request = request(
        app,
        ctx,
        "POST",
        &spec.url,
        &spec.headers,
        DEFAULT_STEP_TIMEOUT,
    )?;
    let (_, answer) = send(request.json(&body)).await?;
    if let Value::Object(answer) = parse_body(&answer)
        && answer.get("success") == Some(&Value::Bool(false))
    {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("step reported failure");
        return Err(error.to_string());
    }
    let timeout = step.timeout.unwrap_or(DEFAULT_ASYNC_TIMEOUT);
    Ok(StepResult::Waiting {
        deadline: Some(now_ms() + timeout.as_millis() as Millis),
        approval: None,
    })
}

/// Opens a human step's approval; the attempt waits for an answer (or its timeout).
fn open_approval(
    app: &App,
    run: &RunRecord,
    step: &StepDef,
    human: &HumanStep,
    ctx: &Value,
) -> Result<StepResult, String> {
    let now = now_ms();
    let deadline = step.timeout.map(|t| now + t.as_millis() as Millis);
    let id = new_id("apr");
    let prompt = render(app, ctx, &human.prompt, "prompt")?;
    let assignee = human
        .assignee
        .as_deref()
        .map(|a| render(app, ctx, a, "assignee"))
        .transpose()?;
    let event = human.notify_url.as_deref().map(|url| {
        let expires = deadline.unwrap_or(now + RESPOND_LINK_TTL.as_millis() as Millis);
        let respond_url = format!(
            "{}/v1/workflow/approvals/{id}/respond?token={}",
            app.public_url,
            app.tokens.respond_token(&id, expires)
        );
        let approval = json!({
            "approval_id": id, "step_id": step.id, "prompt": prompt, "assignee": assignee,
            "deadline": deadline.map(crate::api::rfc3339), "respond_url": respond_url,
        });
        approval_requested(run, approval, url.to_string())
    });
    Ok(StepResult::Waiting {
        deadline,
        approval: Some(NewApproval {
            id,
            prompt,
            assignee,
            deadline,
            event,
        }),
    })
}

/// A response body as JSON when it parses, else as a string (null when empty).
fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}
