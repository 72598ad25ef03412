//! Parsing one step.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::fields::{Fields, is_name};
use super::refs::Uses;
use super::{AsyncHttpStep, HttpStep, HumanStep, OnError, OnTimeout, StepDef, StepKind};
use crate::retry::RetryPolicy;

/// Fields every step kind accepts.
const COMMON: &[&str] = &[
    "id", "kind", "needs", "when", "on_error", "retry", "timeout",
];
const KINDS: &[(&str, &[&str])] = &[
    ("http", &["request"]),
    ("async_http", &["url", "arguments", "headers"]),
    ("transform", &["value"]),
    ("delay", &["duration"]),
    (
        "human",
        &[
            "prompt",
            "assignee",
            "on_timeout",
            "default_data",
            "notify_url",
        ],
    ),
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
const MAX_ATTEMPTS: u64 = 100;

/// Parses step number `index` (0-based) and the templates it uses; errors name the step.
pub(super) fn parse(v: &Value, index: usize) -> Result<(StepDef, Uses), String> {
    let at = format!("step #{}", index + 1);
    let map = v.as_object().ok_or(format!("{at} must be an object"))?;
    let id = match map.get("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(format!("{at}: id must be a string")),
        None => return Err(format!("{at}: missing field \"id\"")),
    };
    if !is_name(id, 64, b"_-") {
        return Err(format!(
            "{at}: invalid id {id:?}: use 1-64 characters of A-Z, a-z, 0-9, '_', '-'"
        ));
    }
    body(map, id).map_err(|e| format!("step {id:?}: {e}"))
}

fn body(map: &Map<String, Value>, id: &str) -> Result<(StepDef, Uses), String> {
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err("kind must be a string".into()),
        None => return Err("missing field \"kind\"".into()),
    };
    let (_, extra) = KINDS.iter().find(|(k, _)| *k == kind).ok_or_else(|| {
        format!("unknown kind {kind:?} (expected http, async_http, transform, delay or human)")
    })?;
    let allowed: Vec<&str> = COMMON.iter().chain(extra.iter()).copied().collect();
    let f = Fields::new(map, "", &allowed)?;
    let mut uses = Uses::default();
    let kind = match kind {
        "http" => StepKind::Http(http(&f, &mut uses)?),
        "async_http" => StepKind::AsyncHttp(AsyncHttpStep {
            url: template(&f, "url", &mut uses)?,
            headers: headers(&f, &mut uses)?,
            arguments: json_template(&f, "arguments", &mut uses)?
                .unwrap_or_else(|| Value::Object(Map::new())),
        }),
        "transform" => StepKind::Transform {
            // Unlike other fields, an explicit null is a valid value here.
            value: match map.get("value") {
                Some(v) => uses.json("value", v).map(|()| v.clone())?,
                None => return Err("missing field \"value\"".into()),
            },
        },
        "delay" => StepKind::Delay {
            duration: f
                .duration("duration")?
                .ok_or("missing field \"duration\"")?,
        },
        _ => StepKind::Human(human(&f, &mut uses)?),
    };
    let when = f.str("when")?.map(str::to_owned);
    if let Some(w) = &when {
        uses.string("when", w)?;
    }
    let needs = f.strings("needs")?;
    for (i, n) in needs.iter().enumerate() {
        if needs[..i].contains(n) {
            return Err(format!("needs {n:?} twice"));
        }
    }
    let step = StepDef {
        id: id.to_owned(),
        needs,
        when,
        on_error: f.choice(
            "on_error",
            &[("fail", OnError::Fail), ("continue", OnError::Continue)],
        )?,
        retry: retry(&f)?,
        timeout: f.positive_duration("timeout")?,
        kind,
    };
    Ok((step, uses))
}

fn http(f: &Fields<'_>, uses: &mut Uses) -> Result<HttpStep, String> {
    let r = f
        .object("request", &["method", "url", "headers", "body"])?
        .ok_or("missing field \"request\"")?;
    let body = json_template(&r, "body", uses)?;
    let method = match r.str("method")? {
        Some(m) => {
            let upper = m.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(format!(
                    "request.method {m:?} is not one of {}",
                    METHODS.join(", ")
                ));
            }
            upper
        }
        None if body.is_some() => "POST".to_owned(),
        None => "GET".to_owned(),
    };
    Ok(HttpStep {
        method,
        url: template(&r, "url", uses)?,
        headers: headers(&r, uses)?,
        body,
    })
}

fn human(f: &Fields<'_>, uses: &mut Uses) -> Result<HumanStep, String> {
    let notify_url = f.str("notify_url")?.map(str::to_owned);
    if let Some(url) = &notify_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(format!("notify_url must be an http(s) URL, not {url:?}"));
    }
    Ok(HumanStep {
        prompt: template(f, "prompt", uses)?,
        assignee: f.str("assignee")?.map(str::to_owned),
        on_timeout: f.choice(
            "on_timeout",
            &[("fail", OnTimeout::Fail), ("approve", OnTimeout::Approve)],
        )?,
        default_data: f
            .get("default_data")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
        notify_url,
    })
}

/// `headers`: header names → string templates.
fn headers(f: &Fields<'_>, uses: &mut Uses) -> Result<BTreeMap<String, String>, String> {
    let headers = f.string_map("headers")?;
    for (name, value) in &headers {
        let path = format!("{}.{name}", f.name("headers"));
        if !is_name(name, 256, b"!#$%&'*+-.^_`|~") {
            return Err(format!("invalid header name {name:?} in {path}"));
        }
        uses.string(&path, value)?;
    }
    Ok(headers)
}

/// A required string template.
fn template(f: &Fields<'_>, key: &str, uses: &mut Uses) -> Result<String, String> {
    let s = f.req_str(key)?;
    uses.string(&f.name(key), s)?;
    Ok(s.to_owned())
}

/// An optional JSON template.
fn json_template(f: &Fields<'_>, key: &str, uses: &mut Uses) -> Result<Option<Value>, String> {
    let v = f.get(key).cloned();
    if let Some(v) = &v {
        uses.json(&f.name(key), v)?;
    }
    Ok(v)
}

/// `retry`; `max_interval` defaults to the larger of 60 s and `initial_interval`.
fn retry(f: &Fields<'_>) -> Result<RetryPolicy, String> {
    let default = RetryPolicy::default();
    let Some(r) = f.object(
        "retry",
        &[
            "max_attempts",
            "initial_interval",
            "backoff",
            "max_interval",
        ],
    )?
    else {
        return Ok(default);
    };
    let max_attempts = r.uint("max_attempts")?.unwrap_or(1);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(format!(
            "retry.max_attempts must be between 1 and {MAX_ATTEMPTS}"
        ));
    }
    let initial_interval = r
        .positive_duration("initial_interval")?
        .unwrap_or(default.initial_interval);
    let backoff = r.number("backoff")?.unwrap_or(default.backoff);
    if backoff < 1.0 {
        return Err("retry.backoff must be at least 1.0".into());
    }
    let max_interval = r
        .positive_duration("max_interval")?
        .unwrap_or(default.max_interval.max(initial_interval));
    if initial_interval > max_interval {
        return Err("retry.initial_interval must not exceed retry.max_interval".into());
    }
    Ok(RetryPolicy {
        max_attempts: u32::try_from(max_attempts).unwrap_or(1),
        initial_interval,
        backoff,
        max_interval,
    })
}
