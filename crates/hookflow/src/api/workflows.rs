//! Workflow definitions: every save makes a new immutable version.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use hookflow_core::definition::{Format, parse_definition};
use serde_json::{Value, json};

use super::extract::{Auth, QueryMap, page_of, read_body};
use super::{ApiError, ApiResult, rfc3339};
use crate::app::{App, now_ms};

/// `POST /v1/workflows`: JSON, or YAML with `Content-Type: application/yaml`.
pub async fn create(
    State(app): State<Arc<App>>,
    auth: Auth,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let yaml = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let body = read_body(req, &app).await?;
    let format = if yaml { Format::Yaml } else { Format::Json };
    let (def, stored) = parse_definition(&body, format)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", e.to_string()))?;
    let version = app
        .store
        .create_workflow_version(&auth.workspace_id, &def.name, &stored, now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": def.name, "version": version })),
    ))
}

/// `GET /v1/workflows`: each workflow with its latest version.
pub async fn list(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let workflows = app.store.list_workflows(&auth.workspace_id, &page).await?;
    Ok(Json(page_of(
        workflows,
        &page,
        |w| w.name.clone(),
        |w| {
            json!({
                "name": w.name,
                "latest_version": w.latest_version,
                "description": w.definition.get("description"),
                "updated_at": rfc3339(w.updated_at),
            })
        },
    )))
}

/// `GET /v1/workflows/{name}`: every version.
pub async fn get(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let versions = app
        .store
        .workflow_versions(&auth.workspace_id, &name)
        .await?;
    if versions.is_empty() {
        return Err(ApiError::not_found("Workflow not found"));
    }
    Ok(Json(json!({
        "name": name,
        "versions": versions.iter().map(|v| json!({
            "version": v.version,
            "definition": v.definition,
            "created_at": rfc3339(v.created_at),
        })).collect::<Vec<_>>(),
    })))
}
