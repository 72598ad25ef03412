//! `POST /v1/workflow/webhooks/{deployment_id}/variants/{variant}`: starts a run authenticated
//! by the deployment secret instead of an API key; always callback delivery.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hookflow_store::Source;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::extract::JsonBody;
use super::invoke::{StartRequest, callback_url, idempotency_claim, metadata, start_run, user};
use super::{ApiError, ApiResult};
use crate::app::{App, now_ms};

/// Header carrying the deployment secret (`?secret=` is the fallback).
const SECRET_HEADER: &str = "x-hookflow-webhook-secret";

/// Reads a trigger body: an `inputs` object (with `user` and `metadata` beside it), or else the
/// whole object (less `async`) as the inputs. `async.callback_url` is always required.
fn start_request(body: &JsonBody) -> ApiResult<StartRequest> {
    let object = body.object()?;
    let url = object
        .get("async")
        .and_then(|a| a.get("callback_url"))
        .filter(|u| !u.is_null())
        .ok_or_else(|| ApiError::invalid("async.callback_url is required for webhook triggers"))?;
    let callback_url = Some(callback_url(url)?);
    Ok(match object.get("inputs") {
        Some(inputs @ Value::Object(_)) => StartRequest {
            inputs: inputs.clone(),
            user: user(object.get("user"))?,
            metadata: metadata(object.get("metadata"))?,
            callback_url,
        },
        _ => {
            let mut inputs = object.clone();
            inputs.remove("async");
            StartRequest {
                inputs: Value::Object(inputs),
                user: None,
                metadata: metadata(None)?,
                callback_url,
            }
        }
    })
}

/// Candidate values of `?secret=`: secrets are base64 and may hold `+`, which form decoding
/// turns into a space when the caller did not percent-encode it, so both readings count.
fn query_secret(raw_query: &Option<String>) -> Vec<String> {
    let Some(raw) = raw_query else {
        return Vec::new();
    };
    raw.split('&')
        .filter_map(|pair| pair.strip_prefix("secret="))
        .flat_map(|value| {
            let literal_plus = value.replace('+', "%2B");
            [value.to_string(), literal_plus]
        })
        .filter_map(|value| {
            url::form_urlencoded::parse(format!("s={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        })
        .collect()
}

/// The trigger endpoint.
pub async fn trigger(
    State(app): State<Arc<App>>,
    Path((deployment_id, variant)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    body: JsonBody,
) -> ApiResult<Response> {
    let given: Vec<String> = match headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) {
        Some(secret) => vec![secret.to_string()],
        None => query_secret(&raw_query),
    };
    if given.is_empty() {
        return Err(ApiError::unauthorized());
    }
    let deployment = app
        .store
        .deployment_by_id(&deployment_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let genuine = deployment.active_secrets(now_ms()).iter().any(|secret| {
        given
            .iter()
            .any(|g| bool::from(secret.as_bytes().ct_eq(g.as_bytes())))
    });
    if !genuine {
        return Err(ApiError::unauthorized());
    }
    let start = start_request(&body)?;
    let idempotency = idempotency_claim(&headers, &body.raw)?;
    start_run(
        &app,
        &deployment,
        &variant,
        start,
        Source::Webhook,
        idempotency,
    )
    .await
}
