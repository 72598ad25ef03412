//! Deployments: stable entry points to a workflow, with variants, settings and a secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hookflow_store::{Deployment, StoreError, Variant};
use serde_json::{Map, Value, json};

use super::extract::{Auth, JsonBody, QueryMap, page_of};
use super::{ApiError, ApiResult, opt_rfc3339, rfc3339};
use crate::app::{App, now_ms};
use crate::ids::new_id;

/// Default grace period of a secret rotation.
const DEFAULT_GRACE: &str = "24h";
/// Longest grace period of a secret rotation.
const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;
/// Largest concurrency limit.
const MAX_CONCURRENCY: i64 = 1_000_000;

/// The API view of a deployment.
pub fn render(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "workflow": d.workflow,
        "secret": d.secret,
        "previous_secret_expires_at": opt_rfc3339(d.previous_secret_expires_at),
        "variants": d.variants,
        "concurrency_limit": d.concurrency_limit,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    })
}

fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Reads `concurrency_limit`: a positive integer, or null for none.
fn concurrency_limit(value: &Value) -> ApiResult<Option<i64>> {
    match value {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "concurrency_limit must be an integer from 1 to {MAX_CONCURRENCY}, or null"
                ))
            }),
    }
}

/// Resolves a `variants` object against the workflow's versions: a variant without `version`
/// pins the latest version; settings default to `{}`.
async fn variants(
    app: &App,
    workspace_id: &str,
    workflow: &str,
    value: &Value,
) -> ApiResult<BTreeMap<String, Option<Variant>>> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("variants must be an object"))?;
    let mut out = BTreeMap::new();
    for (name, spec) in object {
        if !valid_name(name) {
            return Err(ApiError::invalid(format!("invalid variant name {name:?}")));
        }
        if spec.is_null() {
            out.insert(name.clone(), None);
            continue;
        }
        let spec = spec
            .as_object()
            .ok_or_else(|| ApiError::invalid(format!("variant {name:?} must be an object")))?;
        if let Some(key) = spec.keys().find(|k| *k != "version" && *k != "settings") {
            return Err(ApiError::invalid(format!(
                "variant {name:?}: unknown field {key:?}"
            )));
        }
        let version = match spec.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|v| *v >= 1).ok_or_else(|| {
                ApiError::invalid(format!(
                    "variant {name:?}: version must be a positive integer"
                ))
            })?),
        };
        let found = app
            .store
            .workflow_version(workspace_id, workflow, version)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(match version {
                    Some(v) => {
                        format!("variant {name:?}: workflow {workflow:?} has no version {v}")
                    }
                    None => format!("workflow {workflow:?} not found"),
                })
            })?;
        let settings = match spec.get("settings") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(s @ Value::Object(_)) => s.clone(),
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "variant {name:?}: settings must be an object"
                )));
            }
        };
        out.insert(
            name.clone(),
            Some(Variant {
                version: found.version,
                settings,
            }),
        );
    }
    Ok(out)
}

fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(ApiError::invalid(format!("unknown field {key:?}"))),
        None => Ok(()),
    }
}

/// `POST /v1/deployments`.
pub async fn create(
    State(app): State<Arc<App>>,
    auth: Auth,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.object()?;
    check_fields(body, &["name", "workflow", "variants", "concurrency_limit"])?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Missing required field: name"))?;
    if !valid_name(name) || name.starts_with("dep_") {
        return Err(ApiError::invalid(
            "name must be 1-100 letters, digits, '_', '-' or '.', not starting with dep_",
        ));
    }
    let workflow = body
        .get("workflow")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Missing required field: workflow"))?;
    let spec = body
        .get("variants")
        .cloned()
        .unwrap_or_else(|| json!({ "default": {} }));
    let mut variants: BTreeMap<String, Variant> =
        variants(&app, &auth.workspace_id, workflow, &spec)
            .await?
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name, v)))
            .collect();
    if !variants.contains_key("default") {
        let (_, latest) =
            self::variants(&app, &auth.workspace_id, workflow, &json!({"default": {}}))
                .await?
                .pop_first()
                .expect("default variant");
        variants.insert("default".into(), latest.expect("default variant"));
    }
    let now = now_ms();
    let deployment = Deployment {
        id: new_id("dep"),
        workspace_id: auth.workspace_id.clone(),
        name: name.to_string(),
        workflow: workflow.to_string(),
        variants,
        concurrency_limit: concurrency_limit(
            body.get("concurrency_limit").unwrap_or(&Value::Null),
        )?,
        secret: hookflow_webhooks::generate_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: now,
        updated_at: now,
    };
    match app.store.create_deployment(&deployment).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(render(&deployment)))),
        Err(StoreError::Duplicate(_)) => Err(ApiError::conflict(
            "already_exists",
            format!("A deployment named {name:?} already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Finds a deployment of the workspace by id or name, or 404.
pub async fn find(app: &App, workspace_id: &str, id_or_name: &str) -> ApiResult<Deployment> {
    app.store
        .deployment(workspace_id, id_or_name)
        .await?
        .ok_or_else(|| ApiError::not_found("Deployment not found"))
}

/// Like [`find`], through the node's short-lived copies (invokes; see [`crate::lookups`]).
pub async fn find_cached(app: &App, workspace_id: &str, id_or_name: &str) -> ApiResult<Deployment> {
    let key = (workspace_id.to_string(), id_or_name.to_string());
    if let Some(deployment) = app.lookups.deployments.get(&key) {
        return Ok(deployment);
    }
    let deployment = find(app, workspace_id, id_or_name).await?;
    app.lookups.deployments.insert(key, deployment.clone());
    Ok(deployment)
}

/// `GET /v1/deployments`.
pub async fn list(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let deployments = app
        .store
        .list_deployments(&auth.workspace_id, &page)
        .await?;
    Ok(Json(page_of(deployments, &page, |d| d.id.clone(), render)))
}

/// `GET /v1/deployments/{id}` (id or name).
pub async fn get(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(&find(&app, &auth.workspace_id, &id).await?)))
}

/// `PATCH /v1/deployments/{id}`: `variants` are merged (a null variant is removed; `default`
/// stays), `concurrency_limit` replaced (null removes it).
pub async fn update(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let body = body.object()?;
    check_fields(body, &["variants", "concurrency_limit"])?;
    let mut deployment = find(&app, &auth.workspace_id, &id).await?;
    if let Some(spec) = body.get("variants") {
        for (name, variant) in
            variants(&app, &auth.workspace_id, &deployment.workflow, spec).await?
        {
            match variant {
                Some(v) => {
                    deployment.variants.insert(name, v);
                }
                None if name == "default" => {
                    return Err(ApiError::invalid("the default variant cannot be removed"));
                }
                None => {
                    deployment.variants.remove(&name);
                }
            }
        }
    }
    if let Some(limit) = body.get("concurrency_limit") {
        deployment.concurrency_limit = concurrency_limit(limit)?;
    }
    deployment.updated_at = now_ms();
    app.store.update_deployment(&deployment).await?;
    app.lookups.clear();
    // A raised (or removed) limit frees slots for queued runs.
    app.store
        .promote_queued(&deployment.id, deployment.updated_at)
        .await?;
    app.work.notify_one();
    Ok(Json(render(&deployment)))
}

/// `POST /v1/deployments/{id}/secret/rotate` `{"grace_period": "24h"}`: a new secret; the old
/// one still authenticates and signs until the grace period ends.
pub async fn rotate_secret(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let body = body.object()?;
    check_fields(body, &["grace_period"])?;
    let grace = body
        .get("grace_period")
        .map(|v| v.as_str().unwrap_or(""))
        .unwrap_or(DEFAULT_GRACE);
    let grace = humantime::parse_duration(grace)
        .ok()
        .filter(|d| d.as_secs() <= MAX_GRACE_SECS)
        .ok_or_else(|| {
            ApiError::invalid("grace_period must be a duration such as \"24h\", at most 30 days")
        })?;
    let mut deployment = find(&app, &auth.workspace_id, &id).await?;
    let now = now_ms();
    let old = std::mem::replace(&mut deployment.secret, hookflow_webhooks::generate_secret());
    deployment.previous_secret = Some(old);
    deployment.previous_secret_expires_at = Some(now + grace.as_millis() as i64);
    deployment.updated_at = now;
    app.store.update_deployment(&deployment).await?;
    app.lookups.clear();
    Ok(Json(json!({
        "secret": deployment.secret,
        "previous_secret_expires_at": opt_rfc3339(deployment.previous_secret_expires_at),
    })))
}
