//! `POST /v1/workflow/invoke`: sync and async modes, validation, idempotency, concurrency limits.

mod common;

use common::*;
use serde_json::{Value, json};

const INVOKE: &str = "/v1/workflow/invoke";

#[tokio::test]
async fn sync_invoke_answers_the_structured_output() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy_with(
        &echo_workflow("echo"),
        json!({ "name": "echo", "variants": { "default": { "settings": { "model": "small", "temperature": 0.2 } } } }),
    )
    .await;

    let inputs = json!({ "text": "hello", "n": 3, "tags": ["a", "b"], "nested": { "ok": true } });
    let body = api.invoke_sync("echo", inputs.clone()).await;
    let id = str_of(&body["request_id"]);
    assert!(is_request_id(&id), "{body}");
    assert_eq!(body["run_status"], "completed", "{body}");
    assert_eq!(
        body["output"],
        json!({ "result": inputs, "settings": { "model": "small", "temperature": 0.2 }, "assets": [] })
    );
    assert!(body.get("error").is_none_or(Value::is_null), "{body}");
}

#[tokio::test]
async fn async_invoke_answers_202_at_once_and_the_run_completes() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;

    let (status, body) = api
        .invoke(&json!({
            "deployment": "echo", "variant": "default", "inputs": { "x": 1 },
            "async": { "enabled": true, "callback_url": receiver.callback_url() },
        }))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = str_of(&body["request_id"]);
    assert!(is_request_id(&id), "{body}");
    assert!(
        ["running", "queued"].contains(&body["run_status"].as_str().unwrap_or("")),
        "{body}"
    );
    assert_eq!(body["webhook_secret"], dep.secret.as_str(), "{body}");
    assert!(
        body.get("output").is_none(),
        "async answers carry no output: {body}"
    );

    let run = api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run}");
    assert_eq!(run["output"]["result"], json!({ "x": 1 }));
    let callbacks = receiver.callbacks(1).await;
    assert_eq!(callbacks[0].json()["request_id"], id.as_str());
}

#[tokio::test]
async fn invalid_invoke_requests_are_rejected_with_the_documented_messages() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let v = |code: &str, msg: Option<&str>, r: &(u16, Value)| assert_error(r, 400, code, msg);

    v(
        "validation_error",
        Some("Missing required field: deployment"),
        &api.invoke(&json!({ "inputs": {} })).await,
    );
    v(
        "validation_error",
        Some("callback_url is required when async is enabled"),
        &api.invoke(&json!({ "deployment": "echo", "async": { "enabled": true } }))
            .await,
    );
    for bad in ["not a url", "ftp//nope"] {
        v(
            "validation_error",
            Some("callback_url must be a valid URL"),
            &api.invoke(
                &json!({ "deployment": "echo", "async": { "enabled": true, "callback_url": bad } }),
            )
            .await,
        );
    }
    for metadata in [
        json!({ "nested": { "a": 1 } }),
        json!({ "list": [1, 2] }),
        json!("flat-but-not-an-object"),
        json!([1]),
    ] {
        v(
            "validation_error",
            None,
            &api.invoke(&json!({ "deployment": "echo", "metadata": metadata }))
                .await,
        );
    }
    assert_eq!(
        api.list_run_ids("").await,
        Vec::<String>::new(),
        "no run may start"
    );
}

#[tokio::test]
async fn unknown_deployments_and_variants_are_refused() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    for body in [
        json!({ "deployment": "nope", "inputs": {} }),
        json!({ "deployment": "dep_0123456789", "inputs": {} }),
        json!({ "deployment": "echo", "variant": "canary", "inputs": {} }),
    ] {
        let (status, resp) = api.invoke(&body).await;
        assert!(status == 400 || status == 404, "{body} -> {status} {resp}");
        assert!(resp["error_code"].is_string(), "{resp}");
    }
    assert_eq!(api.list_run_ids("").await, Vec::<String>::new());
}

#[tokio::test]
async fn inputs_must_match_the_workflow_schema() {
    let server = Server::start_default().await;
    let api = server.api();
    let mut def = echo_workflow("typed");
    def["inputs"] = json!({
        "type": "object",
        "required": ["text"],
        "properties": { "text": { "type": "string" }, "n": { "type": "integer" } },
    });
    api.deploy(&def).await;

    for inputs in [
        json!({}),
        json!({ "text": 5 }),
        json!({ "text": "ok", "n": "three" }),
    ] {
        let resp = api
            .invoke(&json!({ "deployment": "typed", "inputs": inputs }))
            .await;
        assert_error(&resp, 400, "invalid_inputs", None);
    }
    assert_eq!(
        api.list_run_ids("").await,
        Vec::<String>::new(),
        "invalid inputs start nothing"
    );

    let body = api
        .invoke_sync("typed", json!({ "text": "ok", "n": 3 }))
        .await;
    assert_eq!(body["output"]["result"], json!({ "text": "ok", "n": 3 }));
}

#[tokio::test]
async fn user_and_flat_metadata_are_kept_on_the_run() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let metadata = json!({ "ticket": 981, "vip": true, "team": "red", "none": null, "ratio": 0.5 });
    let (status, body) = api
        .invoke(&json!({ "deployment": "echo", "inputs": {}, "user": "customer-42", "metadata": metadata }))
        .await;
    assert_eq!(status, 200, "{body}");
    let run = api.run(&str_of(&body["request_id"])).await;
    assert_eq!(run["user"], "customer-42");
    assert_eq!(run["metadata"], metadata);
}

#[tokio::test]
async fn a_failed_sync_run_answers_200_with_the_error_naming_the_step() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "failing",
        json!([
            { "id": "prepare", "kind": "transform", "value": 1 },
            { "id": "explode", "kind": "http", "needs": ["prepare"],
              "request": { "method": "GET", "url": service.url("/status/500") } },
        ]),
        "{{ steps.explode.output }}",
    );
    api.deploy(&def).await;
    let body = api.invoke_sync("failing", json!({})).await;
    assert_eq!(body["run_status"], "failed", "{body}");
    let error = body["error"].to_string();
    assert!(
        error.contains("explode"),
        "error names the failing step: {body}"
    );
    assert!(body.get("output").is_none_or(Value::is_null), "{body}");
    assert_eq!(service.requests_to("/status/500").len(), 1);
}

#[tokio::test]
async fn a_sync_run_past_the_wait_limit_answers_202_and_goes_on() {
    let server = Server::start(ServerOpts::default().set("--sync-wait-limit", "1s")).await;
    let api = server.api();
    api.deploy(&delay_workflow("slow", "3s")).await;
    let (status, body) = api
        .invoke(&json!({ "deployment": "slow", "inputs": { "k": "v" } }))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = str_of(&body["request_id"]);
    assert!(is_request_id(&id), "{body}");
    assert!(
        !TERMINAL.contains(&body["run_status"].as_str().unwrap_or("completed")),
        "the run is still going: {body}"
    );
    let run = api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run}");
    assert_eq!(run["output"]["result"], json!({ "k": "v" }));
    assert_eq!(run["delivery"], "direct");
}

#[tokio::test]
async fn a_workflow_with_a_human_step_cannot_be_invoked_sync() {
    let server = Server::start_default().await;
    let api = server.api();
    let def = workflow(
        "review",
        json!([{ "id": "approve", "kind": "human", "prompt": "Ship it?", "assignee": "ops@example.com" }]),
        "{{ steps.approve.output }}",
    );
    api.deploy(&def).await;
    let (status, body) = api
        .invoke(&json!({ "deployment": "review", "inputs": {} }))
        .await;
    assert_error(&(status, body), 400, "callback_required", None);
    assert_eq!(api.list_run_ids("").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_concurrency_limit_queues_async_runs_in_order_and_refuses_sync() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy_with(
        &delay_workflow("limited", "1s"),
        json!({ "name": "limited", "concurrency_limit": 1 }),
    )
    .await;
    let receiver = Receiver::start().await;
    let invoke_async = |n: u64| {
        json!({ "deployment": "limited", "inputs": { "n": n },
                "async": { "enabled": true, "callback_url": receiver.callback_url() } })
    };

    let mut ids = Vec::new();
    for (n, expected) in [(1, "running"), (2, "queued"), (3, "queued")] {
        let (status, body) = api.invoke(&invoke_async(n)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["run_status"], expected, "run {n}: {body}");
        ids.push(str_of(&body["request_id"]));
    }
    let resp = api
        .invoke(&json!({ "deployment": "limited", "inputs": {} }))
        .await;
    assert_error(
        &resp,
        429,
        "concurrency_limit",
        Some("You've reached your concurrency limit. Try again later or use async mode."),
    );

    let mut runs = Vec::new();
    for id in &ids {
        let run = api.wait_run(id).await;
        assert_eq!(run["run_status"], "completed", "{run}");
        runs.push(run);
    }
    assert_ran_one_after_another(&runs);
    // A slot is free again: sync works.
    let body = api.invoke_sync("limited", json!({ "again": true })).await;
    assert_eq!(body["run_status"], "completed", "{body}");
}

#[tokio::test]
async fn raising_the_concurrency_limit_starts_queued_runs() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api
        .deploy_with(
            &delay_workflow("limited", "2s"),
            json!({ "name": "limited", "concurrency_limit": 1 }),
        )
        .await;
    let receiver = Receiver::start().await;
    let first = api
        .invoke_async("limited", json!({ "n": 1 }), &receiver.callback_url())
        .await;
    let (status, body) = api
        .invoke(&json!({ "deployment": "limited", "inputs": { "n": 2 },
                         "async": { "enabled": true, "callback_url": receiver.callback_url() } }))
        .await;
    assert_eq!(
        (status, &body["run_status"]),
        (202, &json!("queued")),
        "{body}"
    );
    let second = str_of(&body["request_id"]);

    let (status, patched) = api
        .patch(
            &format!("/v1/deployments/{}", dep.id),
            &json!({ "concurrency_limit": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let started = api
        .wait_run_until(&second, |r| r["run_status"] != "queued")
        .await;
    let still_first = api.run(&first).await;
    assert_eq!(
        still_first["run_status"], "waiting",
        "the queued run started without waiting for the first: {started:#}"
    );
    for id in [&first, &second] {
        assert_eq!(api.wait_run(id).await["run_status"], "completed");
    }
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_starts_nothing() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;
    let post = |body: Value, key: &'static str| {
        let api = api.clone();
        async move {
            api.send("POST", INVOKE, Some(&body), &[("Idempotency-Key", key)])
                .await
        }
    };
    let sync_body = json!({ "deployment": "echo", "inputs": { "a": 1 } });

    let first = post(sync_body.clone(), "key-sync").await;
    assert_eq!(first.0, 200, "{}", first.1);
    let again = post(sync_body.clone(), "key-sync").await;
    assert_eq!(again, first, "same key, same body: the first answer");
    assert_eq!(api.list_run_ids("").await.len(), 1, "nothing new started");

    let conflict = post(
        json!({ "deployment": "echo", "inputs": { "a": 2 } }),
        "key-sync",
    )
    .await;
    assert_error(&conflict, 409, "idempotency_conflict", None);

    let other_key = post(sync_body.clone(), "key-other").await;
    assert_eq!(other_key.0, 200);
    assert_ne!(
        other_key.1["request_id"], first.1["request_id"],
        "another key is another run"
    );

    let async_body = json!({ "deployment": "echo", "inputs": { "b": 1 },
                             "async": { "enabled": true, "callback_url": receiver.callback_url() } });
    let first = post(async_body.clone(), "key-async").await;
    assert_eq!(first.0, 202, "{}", first.1);
    let again = post(async_body, "key-async").await;
    assert_eq!(again.0, 202);
    assert_eq!(again.1["request_id"], first.1["request_id"], "{}", again.1);
    assert_eq!(api.list_run_ids("").await.len(), 3);
    let id = str_of(&first.1["request_id"]);
    api.wait_run(&id).await;
    receiver.callbacks(1).await;
    receiver
        .assert_stays_at("/callback", 1, std::time::Duration::from_millis(800))
        .await;
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_clear_client_errors() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;

    let big = json!({ "deployment": "echo", "inputs": { "blob": "x".repeat(1024 * 1024 + 16) } });
    let (status, body) = api.invoke(&big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].is_string() && body["error_code"].is_string(),
        "{body}"
    );

    let (status, body) = api
        .raw(
            "POST",
            INVOKE,
            Some("application/json"),
            Some(b"{\"deployment\": ".to_vec()),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].is_string() && body["error_code"].is_string(),
        "{body}"
    );

    assert_eq!(api.list_run_ids("").await, Vec::<String>::new());
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, 200, "the server is still up");
}
