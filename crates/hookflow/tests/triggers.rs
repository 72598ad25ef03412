//! Webhook triggers: `POST /v1/workflow/webhooks/{deployment_id}/variants/{variant}`,
//! authenticated by the deployment secret instead of an API key.

mod common;

use common::*;
use serde_json::{Value, json};

fn trigger_path(dep: &Deployment) -> String {
    format!("/v1/workflow/webhooks/{}/variants/default", dep.id)
}

/// Triggers with the secret in `X-Hookflow-Webhook-Secret` and no API key.
async fn trigger(api: &Api, dep: &Deployment, secret: &str, body: &Value) -> (u16, Value) {
    api.with_key(None)
        .send(
            "POST",
            &trigger_path(dep),
            Some(body),
            &[("X-Hookflow-Webhook-Secret", secret)],
        )
        .await
}

#[tokio::test]
async fn a_trigger_with_the_secret_starts_a_webhook_run_with_callback_delivery() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;

    let (status, answer) = trigger(
        &api,
        &dep,
        &dep.secret,
        &json!({ "inputs": { "text": "a" }, "user": "u-7", "metadata": { "k": "v" },
                 "async": { "callback_url": receiver.callback_url() } }),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let id = str_of(&answer["request_id"]);
    assert!(is_request_id(&id), "{answer}");
    assert!(answer["run_status"].is_string(), "{answer}");

    let run = api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(run["source"], "webhook");
    assert_eq!(run["delivery"], "callback");
    assert_eq!(run["inputs"], json!({ "text": "a" }));
    assert_eq!(run["user"], "u-7");
    assert_eq!(run["metadata"], json!({ "k": "v" }));

    let callback = &receiver.callbacks(1).await[0];
    let body = callback.json();
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["data"]["output"]["result"], json!({ "text": "a" }));
    verify_callback(callback, &dep.secret, &[&dep.secret]);
    assert_eq!(api.list_run_ids("source=webhook").await, [id]);
}

#[tokio::test]
async fn without_an_inputs_object_the_body_is_the_inputs_and_the_query_secret_works() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;
    let path = format!("{}?secret={}", trigger_path(&dep), enc(&dep.secret));
    let (status, answer) = api
        .with_key(None)
        .post(
            &path,
            &json!({ "text": "b", "n": 2, "async": { "callback_url": receiver.callback_url() } }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let run = api.wait_run(&str_of(&answer["request_id"])).await;
    assert_eq!(run["inputs"]["text"], "b", "{run:#}");
    assert_eq!(run["inputs"]["n"], 2, "{run:#}");
    assert_eq!(run["source"], "webhook");
}

#[tokio::test]
async fn a_wrong_or_missing_secret_callback_or_metadata_starts_nothing() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let other = api.deploy(&echo_workflow("other")).await;
    let receiver = Receiver::start().await;
    let body = json!({ "inputs": {}, "async": { "callback_url": receiver.callback_url() } });

    for secret in [other.secret.as_str(), "whsec_nope", ""] {
        let (status, answer) = trigger(&api, &dep, secret, &body).await;
        assert_eq!(status, 401, "secret {secret:?}: {answer}");
    }
    let (status, answer) = api.with_key(None).post(&trigger_path(&dep), &body).await;
    assert_eq!(status, 401, "no secret: {answer}");
    // An API key is not a deployment secret.
    let (status, answer) = api.post(&trigger_path(&dep), &body).await;
    assert_eq!(status, 401, "API key instead of the secret: {answer}");

    let resp = trigger(&api, &dep, &dep.secret, &json!({ "inputs": {} })).await;
    assert_error(
        &resp,
        400,
        "validation_error",
        Some("async.callback_url is required for webhook triggers"),
    );
    let nested = json!({ "inputs": {}, "metadata": { "deep": { "a": 1 } },
                         "async": { "callback_url": receiver.callback_url() } });
    let resp = trigger(&api, &dep, &dep.secret, &nested).await;
    assert_error(&resp, 400, "validation_error", None);

    assert_eq!(api.list_run_ids("").await, Vec::<String>::new());
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn the_previous_secret_still_triggers_and_signs_during_its_grace_period() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;
    let rotated = api.rotate_secret(&dep.id, "1h").await;
    let new = str_of(&rotated["secret"]);
    let body = json!({ "inputs": {}, "async": { "callback_url": receiver.callback_url() } });
    for secret in [&dep.secret, &new] {
        let (status, answer) = trigger(&api, &dep, secret, &body).await;
        assert_eq!(status, 202, "{answer}");
    }
    // Their callbacks carry two `webhook-signature` values, one per secret; the simple signature
    // uses the newest.
    for callback in receiver.callbacks(2).await {
        verify_callback(&callback, &new, &[&new, &dep.secret]);
        let signatures = callback.header("webhook-signature").unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    }

    // Without a grace period the replaced secret stops working at once.
    let rotated = api.rotate_secret(&dep.id, "0s").await;
    let newest = str_of(&rotated["secret"]);
    let (status, answer) = trigger(&api, &dep, &new, &body).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = trigger(&api, &dep, &newest, &body).await;
    assert_eq!(status, 202, "{answer}");
    // Only the newest secret signs now.
    let callback = &receiver.callbacks(3).await[2];
    verify_callback(callback, &newest, &[&newest]);
    let signatures = callback.header("webhook-signature").unwrap();
    assert_eq!(signatures.split(' ').count(), 1, "{signatures}");
}

#[tokio::test]
async fn an_idempotency_key_on_a_trigger_starts_one_run() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;
    let send = |body: Value| {
        let api = api.with_key(None);
        let path = trigger_path(&dep);
        let secret = dep.secret.clone();
        async move {
            api.send(
                "POST",
                &path,
                Some(&body),
                &[
                    ("X-Hookflow-Webhook-Secret", &secret),
                    ("Idempotency-Key", "delivery-1"),
                ],
            )
            .await
        }
    };
    let body =
        json!({ "inputs": { "n": 1 }, "async": { "callback_url": receiver.callback_url() } });
    let first = send(body.clone()).await;
    assert_eq!(first.0, 202, "{}", first.1);
    let again = send(body).await;
    assert_eq!(again.1["request_id"], first.1["request_id"], "{}", again.1);
    let conflict =
        send(json!({ "inputs": { "n": 2 }, "async": { "callback_url": receiver.callback_url() } }))
            .await;
    assert_error(&conflict, 409, "idempotency_conflict", None);
    assert_eq!(api.list_run_ids("").await, [str_of(&first.1["request_id"])]);
}

#[tokio::test]
async fn a_trigger_at_the_concurrency_limit_queues_the_run() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api
        .deploy_with(
            &delay_workflow("limited", "1s"),
            json!({ "name": "limited", "concurrency_limit": 1 }),
        )
        .await;
    let receiver = Receiver::start().await;
    let body = json!({ "inputs": {}, "async": { "callback_url": receiver.callback_url() } });
    let mut ids = Vec::new();
    for expected in ["running", "queued"] {
        let (status, answer) = trigger(&api, &dep, &dep.secret, &body).await;
        assert_eq!(
            (status, &answer["run_status"]),
            (202, &json!(expected)),
            "{answer}"
        );
        ids.push(str_of(&answer["request_id"]));
    }
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(api.wait_run(id).await);
    }
    assert_ran_one_after_another(&runs);
}
