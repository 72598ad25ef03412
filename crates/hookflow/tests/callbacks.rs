//! Callback delivery: envelope, signatures, retries (5xx, 410, 429, timeouts, redirects), the
//! delivery log, manual replay, secret rotation, and refusal of non-allowed addresses.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// A server with the `echo` workflow deployed as `echo`.
async fn echo_server(opts: ServerOpts) -> (Server, Api, Deployment) {
    let server = Server::start(opts).await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    (server, api, dep)
}

/// Gap between the arrivals of two requests.
fn gap(first: &Recorded, second: &Recorded) -> Duration {
    second.at.duration_since(first.at)
}

fn retry_path(id: &str) -> String {
    format!("/v1/workflow/runs/{id}/deliveries/retry")
}

/// A well-formed secret that is not the deployment's.
fn wrong_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    )
}

#[tokio::test]
async fn a_completed_run_sends_one_signed_envelope() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::start().await;
    let metadata = json!({ "ticket": 981, "vip": true });
    let (status, answer) = api
        .invoke(&json!({
            "deployment": "echo", "inputs": { "text": "hi" }, "user": "customer-42", "metadata": metadata,
            "async": { "enabled": true, "callback_url": receiver.callback_url() },
        }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = str_of(&answer["request_id"]);

    let callback = &receiver.callbacks(1).await[0];
    assert_eq!(callback.method, "POST");
    let body = callback.json();
    assert_eq!(body["event_type"], "workflow.completed", "{body}");
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    let data = &body["data"];
    assert_eq!(
        data["output"],
        json!({ "result": { "text": "hi" }, "settings": {}, "assets": [] }),
        "{body}"
    );
    assert_eq!(data["metadata"], metadata, "{body}");
    assert_eq!(data["user"], "customer-42", "{body}");
    assert!(data.get("error").is_none_or(Value::is_null), "{body}");
    assert!(
        callback
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{callback:?}"
    );
    assert!(
        callback
            .header("user-agent")
            .unwrap_or_default()
            .starts_with("hookflow/"),
        "{callback:?}"
    );
    assert!(!callback.header("webhook-id").unwrap_or_default().is_empty());
    verify_callback(callback, &dep.secret, &[&dep.secret]);

    // The signatures really depend on the secret and on the body.
    let wrong = wrong_secret();
    let simple = callback.header("x-hookflow-signature").unwrap();
    assert!(hookflow_webhooks::verify_simple(&[&wrong], simple, &callback.body).is_err());
    let mut tampered = callback.body.clone();
    tampered.extend_from_slice(b" ");
    assert!(hookflow_webhooks::verify_simple(&[&dep.secret], simple, &tampered).is_err());
    let (msg_id, stamp, sig) = (
        callback.header("webhook-id").unwrap(),
        callback.header("webhook-timestamp").unwrap(),
        callback.header("webhook-signature").unwrap(),
    );
    let now = unix_now();
    assert!(
        hookflow_webhooks::verify_standard(&[&wrong], msg_id, stamp, sig, &callback.body, now, 300)
            .is_err()
    );
    assert!(
        hookflow_webhooks::verify_standard(&[&dep.secret], msg_id, stamp, sig, &tampered, now, 300)
            .is_err()
    );

    let run = api.run(&id).await;
    assert_eq!(run["delivery"], "callback", "{run}");
    assert_eq!(
        run["async"],
        json!({ "enabled": true, "callback_url": receiver.callback_url() })
    );

    let log = api.wait_deliveries(&id, 1).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let attempt = &log[0];
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["trigger"], "scheduled");
    assert_eq!(attempt["url"], receiver.callback_url().as_str());
    assert_eq!(attempt["status_code"], 200);
    assert!(attempt["error"].is_null(), "{attempt}");
    assert!(attempt["next_attempt_at"].is_null(), "{attempt}");
    assert!(attempt["duration_ms"].is_u64(), "{attempt}");
    assert!(
        attempt["response_body"].to_string().contains("received"),
        "{attempt}"
    );
    ts(&attempt["created_at"]);

    receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(800))
        .await;
}

#[tokio::test]
async fn a_failed_run_sends_workflow_failed_with_the_step_in_the_error() {
    let server = Server::start_default().await;
    let api = server.api();
    let receiver = Receiver::start().await;
    let dep = api
        .deploy(&http_workflow("doomed", &receiver.url("/status/500")))
        .await;
    let id = api
        .invoke_async("doomed", json!({}), &receiver.callback_url())
        .await;

    let callback = &receiver.callbacks(1).await[0];
    let body = callback.json();
    assert_eq!(body["event_type"], "workflow.failed", "{body}");
    assert_eq!(body["request_id"], id.as_str());
    assert!(
        body["data"]["error"].to_string().contains("remote_call"),
        "names the step: {body}"
    );
    assert!(
        body["data"].get("output").is_none_or(Value::is_null),
        "{body}"
    );
    verify_callback(callback, &dep.secret, &[&dep.secret]);
    assert_eq!(api.run(&id).await["run_status"], "failed");
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_event_id() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Status(500), Reply::Status(503)]).await;
    let id = api
        .invoke_async("echo", json!({ "n": 1 }), &receiver.callback_url())
        .await;

    let calls = receiver.callbacks(3).await;
    let event_id = calls[0].header("webhook-id").unwrap();
    for call in &calls {
        assert_eq!(
            call.header("webhook-id"),
            Some(event_id),
            "webhook-id is stable across retries"
        );
        assert_eq!(
            call.json(),
            calls[0].json(),
            "every attempt sends the same event"
        );
        verify_callback(call, &dep.secret, &[&dep.secret]);
    }
    receiver
        .assert_stays_at("/callback", 3, Duration::from_millis(800))
        .await;

    let log = api.wait_deliveries(&id, 3).await;
    let attempts: Vec<&Value> = log.iter().map(|a| &a["attempt"]).collect();
    assert_eq!(attempts, [3, 2, 1], "newest first: {log:#?}");
    let codes: Vec<&Value> = log.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [200, 503, 500], "{log:#?}");
    for failed in &log[1..] {
        assert_eq!(failed["trigger"], "scheduled");
        ts(&failed["next_attempt_at"]);
    }
    assert!(log[0]["next_attempt_at"].is_null(), "{log:#?}");
}

#[tokio::test]
async fn after_the_schedule_is_exhausted_a_manual_retry_still_delivers() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Status(500); 4]).await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;

    // One attempt plus the three retries of `--retry-schedule 200ms,200ms,200ms`, then nothing.
    let calls = receiver.callbacks(4).await;
    for pair in calls.windows(2) {
        // 200 ms, less at most 20 % of jitter.
        let waited = gap(&pair[0], &pair[1]);
        assert!(
            waited >= Duration::from_millis(155),
            "retried after {waited:?}"
        );
    }
    receiver
        .assert_stays_at("/callback", 4, Duration::from_millis(1500))
        .await;
    let log = api.wait_deliveries(&id, 4).await;
    assert_eq!(log.len(), 4, "{log:#?}");
    assert!(
        log.iter()
            .all(|a| a["status_code"] == 500 && a["trigger"] == "scheduled"),
        "{log:#?}"
    );
    assert!(
        log[0]["next_attempt_at"].is_null(),
        "no attempt after the last: {log:#?}"
    );

    let (status, attempt) = api.post(&retry_path(&id), &json!({})).await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["attempt"], 5, "{attempt}");
    assert_eq!(attempt["trigger"], "manual");
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["url"], receiver.callback_url().as_str());

    let calls = receiver.callbacks(5).await;
    assert_eq!(calls[4].header("webhook-id"), calls[0].header("webhook-id"));
    verify_callback(&calls[4], &dep.secret, &[&dep.secret]);
    let log = api.deliveries(&id).await;
    assert_eq!(log.len(), 5);
    assert_eq!(log[0]["trigger"], "manual", "{log:#?}");

    // The log pages like every list.
    let path = format!("/v1/workflow/runs/{id}/deliveries");
    let (status, page) = api.get(&format!("{path}?limit=3")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 3, "{page}");
    let cursor = str_of(&page["next_cursor"]);
    let (_, rest) = api
        .get(&format!("{path}?limit=3&cursor={}", enc(&cursor)))
        .await;
    let attempts: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["data"].as_array().unwrap())
        .map(|a| &a["attempt"])
        .collect();
    assert_eq!(attempts, [5, 4, 3, 2, 1], "{page} {rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");
}

#[tokio::test]
async fn the_log_keeps_the_first_16_kib_of_a_response() {
    let (_server, api, _dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Large(64 * 1024)]).await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    receiver.callbacks(1).await;
    let log = api.wait_deliveries(&id, 1).await;
    assert_eq!(log[0]["status_code"], 200, "{log:#?}");
    let kept = log[0]["response_body"].as_str().expect("response_body");
    assert!(
        !kept.is_empty() && kept.len() <= 16 * 1024 && kept.bytes().all(|b| b == b'a'),
        "kept {} bytes",
        kept.len()
    );
}

#[tokio::test]
async fn a_410_stops_retrying() {
    let (_server, api, _dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Status(410)]).await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    receiver.callbacks(1).await;
    receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(1500))
        .await;
    let log = api.wait_deliveries(&id, 1).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status_code"], 410);
    assert!(log[0]["next_attempt_at"].is_null(), "{log:#?}");
}

#[tokio::test]
async fn a_429_waits_at_least_retry_after() {
    let (_server, api, _dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::TooMany {
        retry_after_secs: 2,
    }])
    .await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    let calls = receiver.callbacks(2).await;
    let waited = gap(&calls[0], &calls[1]);
    assert!(
        waited >= Duration::from_millis(1950),
        "Retry-After: 2 honoured, waited {waited:?}"
    );
    let log = api.wait_deliveries(&id, 2).await;
    assert_eq!(log[1]["status_code"], 429, "{log:#?}");
    assert_eq!(log[0]["status_code"], 200, "{log:#?}");
}

#[tokio::test]
async fn a_receiver_past_the_timeout_is_retried_after_the_throttle_floor() {
    let (_server, api, _dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Hang]).await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    let calls = receiver.callbacks(2).await;
    // 1 s `--callback-timeout`, then at least the 1 s `--retry-throttle-floor`.
    let waited = gap(&calls[0], &calls[1]);
    assert!(
        waited >= Duration::from_millis(1950),
        "timeout then floor, waited {waited:?}"
    );
    let log = api.wait_deliveries(&id, 2).await;
    let timed_out = &log[1];
    assert_eq!(timed_out["attempt"], 1, "{log:#?}");
    assert!(
        timed_out["status_code"].is_null(),
        "no response: {timed_out}"
    );
    assert!(timed_out["error"].is_string(), "{timed_out}");
    assert_eq!(log[0]["status_code"], 200, "{log:#?}");
}

#[tokio::test]
async fn redirects_are_failures_and_are_not_followed() {
    let (_server, api, _dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::scripted([Reply::Redirect]).await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    receiver.callbacks(2).await;
    assert!(
        receiver.requests_to("/redirected").is_empty(),
        "a redirect was followed"
    );
    let log = api.wait_deliveries(&id, 2).await;
    assert_eq!(log[1]["status_code"], 302, "{log:#?}");
    assert_eq!(log[0]["status_code"], 200, "{log:#?}");
}

#[tokio::test]
async fn a_manual_retry_can_send_the_event_elsewhere() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let id = api
        .invoke_async("echo", json!({ "x": 1 }), &receiver.callback_url())
        .await;
    let original = receiver.callbacks(1).await.remove(0);
    api.wait_deliveries(&id, 1).await;

    let (status, attempt) = api
        .post(
            &retry_path(&id),
            &json!({ "callback_url": elsewhere.url("/other") }),
        )
        .await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["trigger"], "manual");
    assert_eq!(attempt["url"], elsewhere.url("/other").as_str());
    assert_eq!(attempt["status_code"], 200);

    let replay = &elsewhere.wait_for_path("/other", 1, WAIT).await[0];
    assert_eq!(replay.header("webhook-id"), original.header("webhook-id"));
    assert_eq!(replay.json(), original.json());
    verify_callback(replay, &dep.secret, &[&dep.secret]);
    receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn manual_retry_needs_a_terminal_run_and_a_url_for_sync_runs() {
    let server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    api.deploy(&delay_workflow("pause", "3s")).await;
    let receiver = Receiver::start().await;

    let open = api
        .invoke_async("pause", json!({}), &receiver.callback_url())
        .await;
    let (status, body) = api.post(&retry_path(&open), &json!({})).await;
    assert_eq!(
        status, 409,
        "a run that is not terminal has no event yet: {body}"
    );

    let sync = str_of(&api.invoke_sync("echo", json!({ "s": 1 })).await["request_id"]);
    let (status, body) = api.post(&retry_path(&sync), &json!({})).await;
    assert_eq!(status, 400, "a direct run has no callback_url: {body}");
    let (status, attempt) = api
        .post(
            &retry_path(&sync),
            &json!({ "callback_url": receiver.url("/sync") }),
        )
        .await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["trigger"], "manual");
    let sent = &receiver.wait_for_path("/sync", 1, WAIT).await[0];
    let body = sent.json();
    assert_eq!(body["event_type"], "workflow.completed");
    assert_eq!(body["request_id"], sync.as_str());
    assert_eq!(body["data"]["output"]["result"], json!({ "s": 1 }));
    verify_callback(sent, &dep.secret, &[&dep.secret]);
    assert_eq!(api.deliveries(&sync).await.len(), 1);

    assert_error(
        &api.post(
            &retry_path("req_0123456789abcdef0123456789abcdef"),
            &json!({}),
        )
        .await,
        404,
        "not_found",
        Some("Request not found"),
    );
}

#[tokio::test]
async fn callbacks_to_non_allowed_addresses_are_refused_and_logged() {
    let (_server, api, _dep) = echo_server(ServerOpts::default().without("--allow-network")).await;
    let receiver = Receiver::start().await;
    let id = api
        .invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    assert_eq!(api.wait_run(&id).await["run_status"], "completed");

    let log = api.wait_deliveries(&id, 1).await;
    let attempt = log.last().unwrap();
    assert!(attempt["status_code"].is_null(), "{attempt}");
    assert!(
        attempt["error"].to_string().contains("127.0.0.1"),
        "the error names the address: {attempt}"
    );
    receiver
        .assert_stays_at("/callback", 0, Duration::from_millis(300))
        .await;
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn during_a_rotation_grace_period_both_secrets_sign() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let rotated = api.rotate_secret(&dep.id, "24h").await;
    let new = str_of(&rotated["secret"]);
    let receiver = Receiver::start().await;
    api.invoke_async("echo", json!({}), &receiver.callback_url())
        .await;
    let callback = &receiver.callbacks(1).await[0];
    verify_callback(callback, &new, &[&new, &dep.secret]);
}

/// Callbacks are signed from a short-lived copy of the deployment; a rotation on this node
/// clears it, so the very next callback is signed by the new secret alone (the old one's grace
/// period is over), not by the copy the first callback left behind.
#[tokio::test]
async fn the_callback_after_a_rotation_uses_the_new_secret_at_once() {
    let (_server, api, dep) = echo_server(ServerOpts::default()).await;
    let receiver = Receiver::start().await;
    api.invoke_async("echo", json!({ "n": 1 }), &receiver.callback_url())
        .await;
    let first = receiver.callbacks(1).await.remove(0);
    verify_callback(&first, &dep.secret, &[&dep.secret]);

    let rotated = api.rotate_secret(&dep.id, "0s").await;
    let new = str_of(&rotated["secret"]);
    api.invoke_async("echo", json!({ "n": 2 }), &receiver.callback_url())
        .await;
    let second = receiver.callbacks(2).await.remove(1);
    verify_callback(&second, &new, &[&new]);
    let signature = second.header("webhook-signature").unwrap();
    assert_eq!(signature.split(' ').count(), 1, "{signature}");
    let simple = second.header("x-hookflow-signature").unwrap();
    assert!(hookflow_webhooks::verify_simple(&[&dep.secret], simple, &second.body).is_err());
}
