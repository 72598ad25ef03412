//! Management API: authentication, API keys, deployments and their versions, workspace secrets,
//! workspace isolation, health endpoints.

mod common;

use common::*;
use serde_json::{Value, json};

fn assert_unauthorized(resp: &(u16, Value)) {
    assert_error(resp, 401, "unauthorized", Some("Invalid access."));
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("triage")).await;
    let invoke = json!({ "deployment": "triage", "inputs": {} });

    for client in [
        api.with_key(None),
        api.with_key(Some("hf_not_a_key")),
        api.with_key(Some("")),
    ] {
        assert_unauthorized(&client.get("/v1/workflows").await);
        assert_unauthorized(&client.get("/v1/deployments").await);
        assert_unauthorized(&client.invoke(&invoke).await);
        assert_unauthorized(&client.get("/v1/workflow/runs").await);
        assert_unauthorized(
            &client
                .get("/v1/workflow/runs/req_0123456789abcdef0123456789abcdef")
                .await,
        );
        assert_unauthorized(&client.create_workflow(&echo_workflow("sneaky")).await);
    }
    // A key in the wrong scheme is no key either.
    let resp = api.raw("GET", "/v1/workflows", None, None, &[]).await;
    assert_eq!(resp.0, 200, "the harness key works: {}", resp.1);
    let basic = api
        .with_key(None)
        .raw(
            "GET",
            "/v1/workflows",
            None,
            None,
            &[("authorization", &format!("Basic {}", server.key))],
        )
        .await;
    assert_unauthorized(&basic);

    // Nothing was created by the refused requests.
    let (_, list) = api.get("/v1/workflows").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(api.list_run_ids("").await, Vec::<String>::new());
}

#[tokio::test]
async fn api_keys_are_created_listed_without_material_and_revoked() {
    let server = Server::start_default().await;
    let api = server.api();

    let (status, created) = api.post("/v1/keys", &json!({ "name": "ci" })).await;
    assert_eq!(status, 201, "{created}");
    let key = str_of(&created["key"]);
    let id = str_of(&created["id"]);
    assert!(key.starts_with("hf_"), "{created}");
    assert_eq!(created["name"], "ci");
    ts(&created["created_at"]);

    let new = api.with_key(Some(&key));
    let (status, _) = new.get("/v1/workflows").await;
    assert_eq!(status, 200, "the new key works");

    let (status, list) = api.get("/v1/keys").await;
    assert_eq!(status, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains(&key),
        "key material must never be listed: {text}"
    );
    assert!(
        !text.contains(&server.key),
        "key material must never be listed: {text}"
    );
    let listed = list["data"].as_array().expect("data");
    assert!(
        listed
            .iter()
            .any(|k| k["id"] == id.as_str() && k["name"] == "ci"),
        "{list}"
    );

    let (status, body) = api.delete(&format!("/v1/keys/{id}")).await;
    assert_eq!(status, 204, "{body}");
    assert_unauthorized(&new.get("/v1/workflows").await);
    let (status, _) = api.get("/v1/workflows").await;
    assert_eq!(status, 200, "other keys keep working");
}

#[tokio::test]
async fn a_deployment_without_variants_pins_the_latest_version() {
    let server = Server::start_default().await;
    let api = server.api();
    for _ in 0..2 {
        let (status, _) = api.create_workflow(&echo_workflow("triage")).await;
        assert_eq!(status, 201);
    }
    let (status, dep) = api
        .create_deployment(&json!({ "name": "triage-prod", "workflow": "triage" }))
        .await;
    assert_eq!(status, 201, "{dep}");
    let id = str_of(&dep["id"]);
    assert!(id.starts_with("dep_"), "{dep}");
    assert_eq!(dep["name"], "triage-prod");
    assert_eq!(dep["workflow"], "triage");
    assert_eq!(dep["variants"]["default"]["version"], 2, "{dep}");
    assert_eq!(dep["variants"]["default"]["settings"], json!({}), "{dep}");
    ts(&dep["created_at"]);
    let secret = str_of(&dep["secret"]);
    let key = secret_key_bytes(&secret);
    assert!(
        (24..=64).contains(&key.len()),
        "secret of {} random bytes",
        key.len()
    );

    for path in [
        format!("/v1/deployments/{id}"),
        "/v1/deployments/triage-prod".to_string(),
    ] {
        let (status, got) = api.get(&path).await;
        assert_eq!(status, 200, "{path}: {got}");
        assert_eq!(got["id"], id.as_str(), "{got}");
        assert_eq!(got["variants"]["default"]["version"], 2, "{got}");
    }
    let (status, list) = api.get("/v1/deployments").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(list["next_cursor"].is_null(), "{list}");

    let (status, body) = api.get("/v1/deployments/dep_nope").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn variants_pin_versions_and_carry_settings_until_patched() {
    let server = Server::start_default().await;
    let api = server.api();
    let answer = |tag: &str| {
        workflow(
            "pinned",
            json!([{ "id": "t", "kind": "transform",
                     "value": { "tag": tag, "model": "{{ settings.model }}" } }]),
            "{{ steps.t.output }}",
        )
    };
    let (status, _) = api.create_workflow(&answer("v1")).await;
    assert_eq!(status, 201);
    let (status, dep) = api
        .create_deployment(&json!({
            "name": "pinned", "workflow": "pinned",
            "variants": { "default": { "settings": { "model": "small" } } },
            "concurrency_limit": 7,
        }))
        .await;
    assert_eq!(status, 201, "{dep}");
    assert_eq!(
        dep["variants"]["default"],
        json!({ "version": 1, "settings": { "model": "small" } })
    );
    assert_eq!(dep["concurrency_limit"], 7);

    // A new workflow version does not move a pinned variant.
    let (status, _) = api.create_workflow(&answer("v2")).await;
    assert_eq!(status, 201);
    let body = api.invoke_sync("pinned", json!({})).await;
    assert_eq!(
        body["output"]["result"],
        json!({ "tag": "v1", "model": "small" }),
        "{body}"
    );
    assert_eq!(
        body["output"]["settings"],
        json!({ "model": "small" }),
        "{body}"
    );
    let run = api.run(&str_of(&body["request_id"])).await;
    assert_eq!(run["version"], 1, "{run}");

    let id = str_of(&dep["id"]);
    let (status, patched) = api
        .patch(
            &format!("/v1/deployments/{id}"),
            &json!({ "variants": { "default": { "version": 2, "settings": { "model": "large" } } },
                     "concurrency_limit": 3 }),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["variants"]["default"]["version"], 2, "{patched}");
    assert_eq!(patched["concurrency_limit"], 3, "{patched}");
    let (_, got) = api.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(got["concurrency_limit"], 3, "{got}");

    // At once (the invoke by name above is not reused), by name and by id.
    for deployment in ["pinned", id.as_str()] {
        let body = api.invoke_sync(deployment, json!({})).await;
        assert_eq!(
            body["output"]["result"],
            json!({ "tag": "v2", "model": "large" }),
            "{deployment}: {body}"
        );
        assert_eq!(api.run(&str_of(&body["request_id"])).await["version"], 2);
    }
}

#[tokio::test]
async fn a_deployment_of_an_unknown_workflow_or_version_is_refused() {
    let server = Server::start_default().await;
    let api = server.api();
    let (status, body) = api
        .create_deployment(&json!({ "name": "x", "workflow": "missing" }))
        .await;
    assert!(status == 400 || status == 404, "{status} {body}");
    assert!(body["error_code"].is_string(), "{body}");

    api.create_workflow(&echo_workflow("there")).await;
    let (status, body) = api
        .create_deployment(&json!({
            "name": "y", "workflow": "there", "variants": { "default": { "version": 9 } },
        }))
        .await;
    assert!(status == 400 || status == 404, "{status} {body}");
    let (_, list) = api.get("/v1/deployments").await;
    assert_eq!(list["data"], json!([]), "{list}");
}

#[tokio::test]
async fn rotating_a_secret_returns_a_new_one_with_a_grace_period() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("rot")).await;
    let rotated = api.rotate_secret(&dep.id, "24h").await;
    let new = str_of(&rotated["secret"]);
    assert!(new.starts_with("whsec_") && new != dep.secret, "{rotated}");
    let expires = ts(&rotated["previous_secret_expires_at"]);
    let in_24h = std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
    let off = in_24h
        .duration_since(expires)
        .or_else(|_| expires.duration_since(in_24h))
        .unwrap();
    assert!(off.as_secs() < 600, "grace ends in ~24h: {rotated}");

    // Async invokes now hand out the new secret.
    let receiver = Receiver::start().await;
    let (status, body) = api
        .invoke(&json!({ "deployment": "rot", "inputs": {},
                         "async": { "enabled": true, "callback_url": receiver.callback_url() } }))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["webhook_secret"], new.as_str(), "{body}");
}

#[tokio::test]
async fn secrets_are_stored_listed_by_name_and_deleted() {
    let server = Server::start_default().await;
    let api = server.api();
    let value = "sk-live-0123456789-very-secret";

    let (status, body) = api
        .put("/v1/secrets/CLASSIFIER_KEY", &json!({ "value": value }))
        .await;
    assert_eq!((status, &body), (200, &json!({ "name": "CLASSIFIER_KEY" })));
    let (status, _) = api.put("/v1/secrets/OTHER", &json!({ "value": "x" })).await;
    assert_eq!(status, 200);
    let (status, body) = api
        .put(
            "/v1/secrets/CLASSIFIER_KEY",
            &json!({ "value": "rotated-value" }),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({ "name": "CLASSIFIER_KEY" })));

    let (status, list) = api.get("/v1/secrets").await;
    assert_eq!(status, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains(value) && !text.contains("rotated-value"),
        "values leaked: {text}"
    );
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{list}");
    let entry = data
        .iter()
        .find(|s| s["name"] == "CLASSIFIER_KEY")
        .expect("listed");
    assert!(
        ts(&entry["updated_at"]) >= ts(&entry["created_at"]),
        "{entry}"
    );
    assert!(entry.get("value").is_none(), "{entry}");

    let (status, _) = api.delete("/v1/secrets/CLASSIFIER_KEY").await;
    assert_eq!(status, 204);
    let (_, list) = api.get("/v1/secrets").await;
    let names: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| str_of(&s["name"]))
        .collect();
    assert_eq!(names, ["OTHER"]);
    assert!(
        !server.log_text().contains(value),
        "a secret value was logged"
    );
}

#[tokio::test]
async fn workspaces_never_see_each_other() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("mine")).await;
    let mine = api.invoke_sync("mine", json!({ "a": 1 })).await;
    let run_id = str_of(&mine["request_id"]);
    api.put("/v1/secrets/MINE", &json!({ "value": "v" })).await;

    let other = api.with_key(Some(&create_key(&server.db_url, Some("other")).await));
    let (status, list) = other.get("/v1/workflows").await;
    assert_eq!((status, &list["data"]), (200, &json!([])), "{list}");
    let (_, list) = other.get("/v1/deployments").await;
    assert_eq!(list["data"], json!([]), "{list}");
    let (_, list) = other.get("/v1/secrets").await;
    assert_eq!(list["data"], json!([]), "{list}");
    assert_eq!(other.list_run_ids("").await, Vec::<String>::new());
    assert_error(
        &other.get(&format!("/v1/workflow/runs/{run_id}")).await,
        404,
        "not_found",
        Some("Request not found"),
    );
    let (status, body) = other
        .invoke(&json!({ "deployment": "mine", "inputs": {} }))
        .await;
    assert!(
        status == 400 || status == 404,
        "another workspace's deployment: {status} {body}"
    );
    let (status, _) = other.get("/v1/workflows/mine").await;
    assert_eq!(status, 404);
    let run_path = format!("/v1/workflow/runs/{run_id}");
    for (method, path) in [
        ("GET", format!("{run_path}/deliveries")),
        ("POST", format!("{run_path}/deliveries/retry")),
        ("POST", format!("{run_path}/cancel")),
    ] {
        let resp = other.send(method, &path, Some(&json!({})), &[]).await;
        assert_error(&resp, 404, "not_found", Some("Request not found"));
    }

    // The same names can be used in the other workspace.
    other.deploy(&echo_workflow("mine")).await;
    let theirs = other.invoke_sync("mine", json!({ "b": 2 })).await;
    assert_eq!(theirs["output"]["result"], json!({ "b": 2 }));
    assert_eq!(api.list_run_ids("").await, [run_id]);
}

#[tokio::test]
async fn health_endpoints_answer_without_a_key() {
    let server = Server::start_default().await;
    let anonymous = server.api().with_key(None);
    for path in ["/healthz", "/readyz"] {
        let (status, body) = anonymous.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn metrics_and_openapi_are_served() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    api.invoke_sync("echo", json!({})).await;

    let (status, metrics) = api.get("/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let text = metrics.as_str().expect("Prometheus text, not JSON");
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE ")),
        "Prometheus exposition format: {text}"
    );
    // SQLite's writer times its commits and WAL flushes (buckets, so slow ones can be
    // counted); the deploy and the invoke above each committed and flushed at least once.
    for histogram in [
        "hookflow_sqlite_commit_seconds",
        "hookflow_sqlite_wal_flush_seconds",
    ] {
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{histogram}_count ")))
            .map(|n| n.parse::<u64>().expect("a count"));
        match backend() {
            Backend::Sqlite => {
                assert!(count >= Some(2), "{histogram}: {text}");
                let bucket = format!("{histogram}_bucket{{le=\"0.025\"}}");
                assert!(text.contains(&bucket), "{bucket}: {text}");
            }
            Backend::Postgres => assert_eq!(count, None, "{histogram}: {text}"),
        }
    }

    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    for path in ["/v1/workflow/invoke", "/v1/workflow/runs", "/v1/workflows"] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
}
