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
mod ui;
mod workflows;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
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

/// Registers routes on a router and describes each in the OpenAPI document, from one table.
macro_rules! routes {
    ($router:expr; $( $path:literal => { $( $method:ident $handler:path => $summary:literal ),+ $(,)? } )* ) => {{
        let mut router = $router;
        let mut paths = serde_json::Map::new();
        $(
            router = router.route($path, axum::routing::MethodRouter::new()$(.$method($handler))+);
            let mut operations = serde_json::Map::new();
            $( operations.insert(stringify!($method).to_string(), operation($path, $summary)); )+
            paths.insert($path.to_string(), Value::Object(operations));
        )*
        (router, paths)
    }};
}

/// One OpenAPI operation: its summary, path parameters, and the shared error envelope.
fn operation(path: &str, summary: &str) -> Value {
    let parameters: Vec<Value> = path
        .split('/')
        .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            "default": {
                "description": "JSON. Errors are {\"error\": message, \"error_code\": code}.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
            },
        },
    })
}

/// The whole API.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.settings.body_limit;
    let (router, paths) = routes! { Router::new();
        "/healthz" => { get health => "Process is up" }
        "/readyz" => { get ready => "Database is reachable" }
        "/metrics" => { get metrics => "Prometheus metrics" }
        "/v1/workflows" => {
            post workflows::create => "Save a workflow definition (a new version)",
            get workflows::list => "List workflows with their latest version",
        }
        "/v1/workflows/{name}" => { get workflows::get => "Every version of a workflow" }
        "/v1/deployments" => {
            post deployments::create => "Create a deployment",
            get deployments::list => "List deployments",
        }
        "/v1/deployments/{id}" => {
            get deployments::get => "Read a deployment (id or name)",
            patch deployments::update => "Change variants or the concurrency limit",
        }
        "/v1/deployments/{id}/secret/rotate" => {
            post deployments::rotate_secret => "Rotate the deployment secret with a grace period",
        }
        "/v1/secrets" => { get accounts::list_secrets => "List workspace secret names" }
        "/v1/secrets/{name}" => {
            put accounts::put_secret => "Create or replace a workspace secret",
            delete accounts::delete_secret => "Delete a workspace secret",
        }
        "/v1/keys" => {
            post accounts::create_key => "Create an API key (shown once)",
            get accounts::list_keys => "List API keys",
        }
        "/v1/keys/{id}" => { delete accounts::revoke_key => "Revoke an API key" }
        "/v1/workflow/invoke" => { post invoke::invoke => "Run a deployment, sync or async" }
        "/v1/workflow/webhooks/{deployment_id}/variants/{variant}" => {
            post triggers::trigger => "Start a run with the deployment secret (webhook trigger)",
        }
        "/v1/workflow/runs" => { get runs::list => "List runs with filters" }
        "/v1/workflow/runs/{id}" => { get runs::get => "A run with every step execution" }
        "/v1/workflow/runs/{id}/cancel" => { post runs::cancel => "Cancel a run" }
        "/v1/workflow/runs/{id}/deliveries" => {
            get runs::deliveries => "Every callback delivery attempt of a run",
        }
        "/v1/workflow/runs/{id}/deliveries/retry" => {
            post runs::retry_delivery => "Send the terminal event again now",
        }
        "/v1/workflow/approvals" => { get approvals::list => "List approvals" }
        "/v1/workflow/approvals/{id}" => {
            get approvals::get => "Read an approval",
            post approvals::respond => "Answer an approval",
        }
        "/v1/workflow/approvals/{id}/respond" => {
            post approvals::respond_with_token => "Answer an approval with its respond_url token",
        }
        "/webhook/{flow_id}/{step_id}/{token}" => {
            post completions::complete => "Complete an async step (StepResult)",
        }
    };
    let openapi = json!({
        "openapi": "3.1.0",
        "info": { "title": "hookflow", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": {
                "type": "object",
                "required": ["error", "error_code"],
                "properties": { "error": { "type": "string" }, "error_code": { "type": "string" } },
            } },
        },
        "security": [{ "apiKey": [] }],
    });
    ui::routes(router)
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(openapi) }),
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
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    app.metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default()
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
