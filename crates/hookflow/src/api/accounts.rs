//! API keys and workspace secrets.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::extract::{Auth, JsonBody, QueryMap, page_of};
use super::{ApiError, ApiResult, rfc3339};
use crate::app::{App, now_ms};
use crate::ids::{hash_key, key_prefix, new_api_key};

/// Largest secret value.
const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Secret names are template identifiers: `secrets.NAME`.
fn valid_secret_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// `POST /v1/keys`: a new key, shown once.
pub async fn create_key(
    State(app): State<Arc<App>>,
    auth: Auth,
    body: JsonBody,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = match body.object()?.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 200 && !s.contains('\0') => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::invalid(
                "name must be a string of at most 200 characters, without NUL characters",
            ));
        }
    };
    let key = new_api_key();
    let stored = app
        .store
        .create_api_key(
            &auth.workspace_id,
            name,
            &hash_key(&key),
            &key_prefix(&key),
            now_ms(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": stored.id, "key": key, "name": stored.name, "prefix": stored.prefix,
            "created_at": rfc3339(stored.created_at),
        })),
    ))
}

/// `GET /v1/keys`: live keys, without key material.
pub async fn list_keys(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let keys = app.store.list_api_keys(&auth.workspace_id, &page).await?;
    Ok(Json(page_of(
        keys,
        &page,
        |k| k.id.clone(),
        |k| json!({ "id": k.id, "name": k.name, "prefix": k.prefix, "created_at": rfc3339(k.created_at) }),
    )))
}

/// `DELETE /v1/keys/{id}`: revokes a key at once.
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if app
        .store
        .revoke_api_key(&auth.workspace_id, &id, now_ms())
        .await?
    {
        app.lookups.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("API key not found"))
    }
}

/// `PUT /v1/secrets/{name}` `{"value": "…"}`.
pub async fn put_secret(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(name): Path<String>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    if !valid_secret_name(&name) {
        return Err(ApiError::invalid(
            "secret name must be 1-128 letters, digits or underscores, not starting with a digit",
        ));
    }
    let value = match body.object()?.get("value") {
        Some(Value::String(v)) if v.len() <= MAX_SECRET_BYTES && !v.contains('\0') => v,
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(format!(
                "value must be at most {MAX_SECRET_BYTES} bytes, without NUL characters"
            )));
        }
        _ => {
            return Err(ApiError::invalid(
                "Missing required field: value (a string)",
            ));
        }
    };
    app.store
        .put_secret(&auth.workspace_id, &name, value, now_ms())
        .await?;
    Ok(Json(json!({ "name": name })))
}

/// `DELETE /v1/secrets/{name}`.
pub async fn delete_secret(
    State(app): State<Arc<App>>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if app.store.delete_secret(&auth.workspace_id, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("Secret not found"))
    }
}

/// `GET /v1/secrets`: names only.
pub async fn list_secrets(
    State(app): State<Arc<App>>,
    auth: Auth,
    query: QueryMap,
) -> ApiResult<Json<Value>> {
    let page = query.page()?;
    let secrets = app.store.list_secrets(&auth.workspace_id, &page).await?;
    Ok(Json(page_of(
        secrets,
        &page,
        |s| s.name.clone(),
        |s| json!({ "name": s.name, "created_at": rfc3339(s.created_at), "updated_at": rfc3339(s.updated_at) }),
    )))
}
