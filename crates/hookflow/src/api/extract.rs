//! Request extractors that answer with the API's error envelope: API-key auth, JSON bodies,
//! query strings and paging.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use hookflow_store::Page;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use crate::app::App;
use crate::ids::hash_key;

/// The workspace of the request's API key (`Authorization: Bearer hf_…`).
pub struct Auth {
    pub workspace_id: String,
}

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| k.starts_with("hf_"))
            .ok_or_else(ApiError::unauthorized)?;
        let hash = hash_key(key);
        if let Some(workspace_id) = app.lookups.keys.get(&hash) {
            return Ok(Self { workspace_id });
        }
        let workspace_id = app
            .store
            .workspace_for_key(&hash)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        app.lookups.keys.insert(hash, workspace_id.clone());
        Ok(Self { workspace_id })
    }
}

/// A request body: the raw bytes (for idempotency hashes) and their JSON value.
pub struct JsonBody {
    pub raw: Bytes,
    pub value: Value,
}

/// Reads the body within the configured limit, mapping the limit breach to 413.
pub async fn read_body(req: Request, app: &Arc<App>) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, app).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "Request body is too large (limit {} bytes)",
                    app.settings.body_limit
                ),
            )
        } else {
            ApiError::invalid(format!("Could not read the request body: {rejection}"))
        }
    })
}

impl FromRequest<Arc<App>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let raw = read_body(req, app).await?;
        let value = if raw.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&raw)
                .map_err(|e| ApiError::invalid(format!("Request body is not valid JSON: {e}")))?
        };
        Ok(Self { raw, value })
    }
}

impl JsonBody {
    /// The body as a JSON object, or a 400.
    pub fn object(&self) -> Result<&serde_json::Map<String, Value>, ApiError> {
        self.value
            .as_object()
            .ok_or_else(|| ApiError::invalid("Request body must be a JSON object"))
    }
}

/// The decoded query string; a parameter given twice is a 400 (which one was meant is
/// anyone's guess).
pub struct QueryMap(pub HashMap<String, String>);

impl FromRequestParts<Arc<App>> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let mut map = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
            if map.contains_key(&name) {
                return Err(ApiError::invalid(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
            map.insert(name, value);
        }
        Ok(Self(map))
    }
}

/// Default and largest page sizes of list endpoints.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

impl QueryMap {
    /// An optional parameter with a fixed set of values; any other value is a 400.
    pub fn enumerated<T>(&self, name: &str, parse: fn(&str) -> Option<T>) -> ApiResult<Option<T>> {
        self.0
            .get(name)
            .map(|v| parse(v).ok_or_else(|| ApiError::invalid(format!("invalid {name} {v:?}"))))
            .transpose()
    }

    /// `limit` and `cursor`. The store is asked for one extra row to know whether more follow.
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = match self.0.get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                })?,
        };
        Ok(Page {
            limit: limit + 1,
            cursor: self.0.get("cursor").cloned(),
        })
    }
}

/// A list answer: `{"data": [...], "next_cursor": ...}` from `limit + 1` fetched items.
pub fn page_of<T>(
    mut items: Vec<T>,
    page: &Page,
    cursor_of: impl Fn(&T) -> String,
    render: impl Fn(&T) -> Value,
) -> Value {
    let limit = (page.limit - 1) as usize;
    let next = (items.len() > limit).then(|| {
        items.truncate(limit);
        items.last().map(&cursor_of)
    });
    serde_json::json!({
        "data": items.iter().map(render).collect::<Vec<_>>(),
        "next_cursor": next.flatten(),
    })
}
