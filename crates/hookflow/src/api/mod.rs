//! The HTTP API (axum). Handlers authenticate, validate and turn each request into one store
//! call; they never run steps themselves.

mod accounts;
mod approvals;
mod completions;
mod deployments;
mod error;
mod extract;
mod invoke;
mod runs;
mod triggers;
mod workflows;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use hookflow_store::Millis;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::App;
pub use error::{ApiError, ApiResult};

/// Formats unix milliseconds as RFC 3339 UTC.
pub fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// Formats an optional timestamp (null when absent).
pub fn opt_rfc3339(ms: Option<Millis>) -> Value {
    ms.map(rfc3339).map(Value::String).unwrap_or(Value::Null)
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-23T10:00:00Z`) into unix milliseconds.
pub fn parse_rfc3339(name: &str, text: &str) -> ApiResult<Millis> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as Millis)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} must be an RFC 3339 UTC timestamp such as 2026-01-31T12:00:00Z"
            ))
        })
}

/// The whole API.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.settings.body_limit;
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route(
            "/v1/workflows",
            post(workflows::create).get(workflows::list),
        )
        .route("/v1/workflows/{name}", get(workflows::get))
        .route(
            "/v1/deployments",
            post(deployments::create).get(deployments::list),
        )
        .route(
            "/v1/deployments/{id}",
            get(deployments::get).patch(deployments::update),
        )
        .route(
            "/v1/deployments/{id}/secret/rotate",
            post(deployments::rotate_secret),
        )
        .route("/v1/secrets", get(accounts::list_secrets))
        .route(
            "/v1/secrets/{name}",
            put(accounts::put_secret).delete(accounts::delete_secret),
        )
        .route(
            "/v1/keys",
            post(accounts::create_key).get(accounts::list_keys),
        )
        .route("/v1/keys/{id}", axum::routing::delete(accounts::revoke_key))
        .route("/v1/workflow/invoke", post(invoke::invoke))
        .route("/v1/workflow/runs", get(runs::list))
        .route("/v1/workflow/runs/{id}", get(runs::get))
        .route("/v1/workflow/runs/{id}/deliveries", get(runs::deliveries))
        .route(
            "/v1/workflow/runs/{id}/deliveries/retry",
            post(runs::retry_delivery),
        )
        .route("/v1/workflow/runs/{id}/cancel", post(runs::cancel))
        .route(
            "/v1/workflow/webhooks/{deployment_id}/variants/{variant}",
            post(triggers::trigger),
        )
        .route(
            "/webhook/{flow_id}/{step_id}/{token}",
            post(completions::complete),
        )
        .route("/v1/workflow/approvals", get(approvals::list))
        .route(
            "/v1/workflow/approvals/{id}",
            get(approvals::get).post(approvals::respond),
        )
        .route(
            "/v1/workflow/approvals/{id}/respond",
            post(approvals::respond_with_token),
        )
        .fallback(|| async { ApiError::not_found("Not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

async fn ready(State(app): State<Arc<App>>) -> ApiResult<axum::Json<Value>> {
    app.store.ping().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database unreachable: {e}"),
        )
    })?;
    Ok(axum::Json(json!({"status": "ready"})))
}
