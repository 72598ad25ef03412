//! Executing one attempt of a step, by kind. Nothing here writes to the store.

use hookflow_core::{HttpStep, StepDef, StepKind};
use hookflow_store::{Millis, StepResult};
use serde_json::Value;

use super::planner::step_timeout;
use crate::app::{App, now_ms};
use crate::net::describe_error;

/// Largest step response body kept as output.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How much of a failed response's body goes into the error message.
const ERROR_SNIPPET_BYTES: usize = 512;

/// Runs attempt `attempt` of `step` with the template context `ctx`.
pub async fn execute(app: &App, step: &StepDef, attempt: i64, ctx: &Value) -> StepResult {
    if let Some(when) = &step.when {
        match app.templates.truthy(when, ctx) {
            Ok(false) => return StepResult::Skipped,
            Ok(true) => {}
            Err(e) => return fail(step, attempt, format!("when: {e}")),
        }
    }
    let outcome = match &step.kind {
        StepKind::Transform { value } => app
            .templates
            .render(value, ctx)
            .map_err(|e| format!("value: {e}")),
        StepKind::Delay { .. } => Ok(Value::Null),
        StepKind::Http(http) => call(app, step, http, ctx).await,
        StepKind::AsyncHttp(_) | StepKind::Human(_) => {
            Err(format!("step kind of {:?} is not supported yet", step.id))
        }
    };
    match outcome {
        Ok(output) => StepResult::Completed(output),
        Err(error) => fail(step, attempt, error),
    }
}

/// A failed attempt, with the next attempt scheduled if the step's retry policy allows one.
fn fail(step: &StepDef, attempt: i64, error: String) -> StepResult {
    let attempt = attempt.max(1) as u32;
    let retry_at = step.retry.retries_after(attempt).then(|| {
        let delay = step.retry.delay_after(attempt, &mut rand::rng());
        now_ms() + delay.as_millis() as Millis
    });
    StepResult::Failed { error, retry_at }
}

/// One HTTP call: the rendered request, the step's timeout, the parsed response body.
async fn call(app: &App, step: &StepDef, http: &HttpStep, ctx: &Value) -> Result<Value, String> {
    let render = |s: &str, what: &str| {
        app.templates
            .render_str(s, ctx)
            .map_err(|e| format!("{what}: {e}"))
    };
    let url = render(&http.url, "request.url")?;
    let url = url::Url::parse(&url).map_err(|e| format!("request.url {url:?} is invalid: {e}"))?;
    app.policy.check_url(&url).map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(http.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", http.method))?;
    let mut request = app.http.request(method, url).timeout(step_timeout(step));
    for (name, value) in &http.headers {
        request = request.header(name, render(value, "request.headers")?);
    }
    if let Some(body) = &http.body {
        let body = app
            .templates
            .render(body, ctx)
            .map_err(|e| format!("request.body: {e}"))?;
        request = request.json(&body);
    }
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
    Ok(parse_body(&body))
}

/// A response body as JSON when it parses, else as a string (null when empty).
fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}
