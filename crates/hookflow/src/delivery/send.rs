//! One signed POST of an event, and what its answer means.

use std::time::{Duration, Instant};

use hookflow_core::retry::{AttemptOutcome, parse_retry_after};
use hookflow_store::{AttemptRecord, Trigger};
use hookflow_webhooks as webhooks;
use reqwest::StatusCode;

use crate::app::{App, now_ms};
use crate::net::describe_error;

/// How much of a receiver's answer is kept in the log.
const MAX_LOGGED_BODY: usize = 16 * 1024;

/// An event ready to send.
pub struct Outgoing<'a> {
    pub event_id: &'a str,
    pub payload: &'a str,
    pub url: &'a str,
    /// Signing secrets, newest first (two during a rotation's grace period).
    pub secrets: &'a [&'a str],
}

/// What one attempt did: its log record (without scheduling) and its outcome.
pub struct Sent {
    pub record: AttemptRecord,
    pub outcome: AttemptOutcome,
}

/// Signs and POSTs an event once.
pub async fn send(app: &App, out: &Outgoing<'_>, attempt: i64, trigger: Trigger) -> Sent {
    let started = Instant::now();
    let created_at = now_ms();
    let result = post(app, out, created_at / 1000).await;
    let duration_ms = started.elapsed().as_millis() as i64;
    let (status_code, response_body, error, outcome) = match result {
        Ok((status, retry_after, body)) => {
            let outcome = classify(status, retry_after);
            let error = (!status.is_success()).then(|| format!("HTTP {}", status.as_u16()));
            (Some(status.as_u16() as i64), Some(body), error, outcome)
        }
        Err((error, timed_out)) => {
            let outcome = if timed_out {
                AttemptOutcome::TimedOut
            } else {
                AttemptOutcome::Failed { retry_after: None }
            };
            (None, None, Some(error), outcome)
        }
    };
    Sent {
        record: AttemptRecord {
            attempt,
            trigger,
            url: out.url.to_string(),
            status_code,
            response_body,
            duration_ms,
            error,
            created_at,
            next_attempt_at: None,
        },
        outcome,
    }
}

/// What an HTTP answer means for delivery.
fn classify(status: StatusCode, retry_after: Option<Duration>) -> AttemptOutcome {
    match status {
        s if s.is_success() => AttemptOutcome::Delivered,
        StatusCode::GONE => AttemptOutcome::Gone,
        StatusCode::TOO_MANY_REQUESTS => AttemptOutcome::TooManyRequests { retry_after },
        _ => AttemptOutcome::Failed { retry_after },
    }
}

type PostResult = Result<(StatusCode, Option<Duration>, String), (String, bool)>;

async fn post(app: &App, out: &Outgoing<'_>, timestamp: i64) -> PostResult {
    let url = url::Url::parse(out.url).map_err(|e| (format!("invalid URL: {e}"), false))?;
    app.policy
        .check_url(&url)
        .map_err(|e| (e.to_string(), false))?;
    let body = out.payload.as_bytes();
    let standard = webhooks::sign_standard_all(out.secrets, out.event_id, timestamp, body)
        .map_err(|e| (format!("signing failed: {e}"), false))?;
    let simple = webhooks::sign_simple(out.secrets[0], body);
    let mut response = app
        .http
        .post(url)
        .timeout(app.settings.callback_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(webhooks::SIGNATURE_HEADER, simple)
        .header(webhooks::WEBHOOK_ID, out.event_id)
        .header(webhooks::WEBHOOK_TIMESTAMP, timestamp.to_string())
        .header(webhooks::WEBHOOK_SIGNATURE, standard)
        .body(out.payload.to_string())
        .send()
        .await
        .map_err(|e| (describe_error(&e), e.is_timeout()))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, timestamp));
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_LOGGED_BODY.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_LOGGED_BODY {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err((describe_error(&e), true)),
            Err(_) => break,
        }
    }
    Ok((
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
