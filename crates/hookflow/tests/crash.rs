//! Crash safety: a SIGKILLed server loses no accepted run and no callback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Asserts that every id got a `workflow.completed` callback, that all callbacks of one run carry
/// one `webhook-id` (duplicates are allowed, at least once), and that every one verifies.
fn assert_one_event_per_run(callbacks: &[Recorded], ids: &[String], secret: &str) {
    let mut events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for callback in callbacks {
        verify_callback(callback, secret, &[secret]);
        let body = callback.json();
        assert_eq!(body["event_type"], "workflow.completed", "{body}");
        events
            .entry(str_of(&body["request_id"]))
            .or_default()
            .insert(callback.header("webhook-id").unwrap().to_string());
    }
    let expected: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        events.keys().collect::<BTreeSet<_>>(),
        expected,
        "one callback per run"
    );
    for (id, event_ids) in &events {
        assert_eq!(
            event_ids.len(),
            1,
            "run {id} produced several events: {event_ids:?}"
        );
    }
}

/// Waits until callbacks for all `ids` arrived at `/callback`.
async fn wait_callbacks_for(receiver: &Receiver, ids: &[String]) -> Vec<Recorded> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = receiver.requests_to("/callback");
        let seen: BTreeSet<String> = got
            .iter()
            .map(|c| str_of(&c.json()["request_id"]))
            .collect();
        if ids.iter().all(|id| seen.contains(id)) {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks missing for {:?}",
            ids.iter()
                .filter(|id| !seen.contains(*id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn runs_in_flight_survive_a_sigkill() {
    let mut server = Server::start_default().await;
    let api = server.api();
    let dep = api.deploy(&delay_workflow("sleepy", "1s")).await;
    let receiver = Receiver::start().await;

    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            api.invoke_async("sleepy", json!({ "n": n }), &receiver.callback_url())
                .await,
        );
    }
    server.kill().await;
    server.restart().await;
    let api = server.api();

    for (n, id) in ids.iter().enumerate() {
        let run = api.wait_run(id).await;
        assert_eq!(run["run_status"], "completed", "{run:#}");
        assert_eq!(run["output"]["result"], json!({ "n": n }), "{run:#}");
    }
    let mut listed = api.list_run_ids("limit=100").await;
    listed.sort();
    let mut accepted = ids.clone();
    accepted.sort();
    assert_eq!(listed, accepted, "exactly the accepted runs, none twice");

    let callbacks = wait_callbacks_for(&receiver, &ids).await;
    assert_one_event_per_run(&callbacks, &ids, &dep.secret);
}

#[tokio::test]
async fn pending_callbacks_survive_a_sigkill() {
    // Retries far enough apart that the kill lands between attempts.
    let opts = ServerOpts::default().set("--retry-schedule", "2s,2s,2s");
    let mut server = Server::start(opts).await;
    let api = server.api();
    let dep = api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::scripted([Reply::Status(503); 3]).await;

    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            api.invoke_async("echo", json!({ "n": n }), &receiver.callback_url())
                .await,
        );
    }
    wait_callbacks_for(&receiver, &ids).await;
    server.kill().await;
    server.restart().await;
    let api = server.api();

    let deadline = std::time::Instant::now() + WAIT;
    for id in &ids {
        loop {
            let log = api.deliveries(id).await;
            if log.iter().any(|a| a["status_code"] == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} never delivered: {log:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let callbacks = receiver.requests_to("/callback");
    assert!(
        callbacks.len() >= 6,
        "first attempts failed, later ones delivered: {}",
        callbacks.len()
    );
    assert_one_event_per_run(&callbacks, &ids, &dep.secret);
}
