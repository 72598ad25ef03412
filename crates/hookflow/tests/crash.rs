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
    // The kill must land between attempts: once each first attempt is logged. A kill between an
    // attempt and its log leaves the event leased for the callback timeout + 30 s, longer than
    // this test waits.
    let deadline = std::time::Instant::now() + WAIT;
    for id in &ids {
        while api.deliveries(id).await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "run {id}: no attempt logged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

#[tokio::test]
async fn queued_runs_start_first_in_first_out_after_a_restart() {
    let mut server = Server::start_default().await;
    let api = server.api();
    let dep = api
        .deploy_with(
            &delay_workflow("limited", "1500ms"),
            json!({ "name": "limited", "concurrency_limit": 1 }),
        )
        .await;
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let (status, answer) = api
            .invoke(&json!({ "deployment": "limited", "inputs": { "n": n },
                             "async": { "enabled": true, "callback_url": receiver.callback_url() } }))
            .await;
        let expected = if n == 0 { "running" } else { "queued" };
        assert_eq!(
            (status, &answer["run_status"]),
            (202, &json!(expected)),
            "{answer}"
        );
        ids.push(str_of(&answer["request_id"]));
    }
    // Killed while the first run waits on its delay and the others are queued.
    server.kill().await;
    server.restart().await;
    let api = server.api();

    let mut runs = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let run = api.wait_run(id).await;
        assert_eq!(run["run_status"], "completed", "{run:#}");
        assert_eq!(run["output"]["result"], json!({ "n": n }), "{run:#}");
        runs.push(run);
    }
    assert_ran_one_after_another(&runs);
    let callbacks = wait_callbacks_for(&receiver, &ids).await;
    assert_one_event_per_run(&callbacks, &ids, &dep.secret);
}

#[tokio::test]
async fn open_async_steps_approvals_and_their_timers_survive_a_sigkill() {
    let mut server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    api.deploy(&async_workflow("job", &service.url("/accept"), json!({})))
        .await;
    // The second async workflow's only attempt times out while the server is down.
    api.deploy(&async_workflow(
        "short",
        &service.url("/accept/short"),
        json!({ "timeout": "1s" }),
    ))
    .await;
    api.deploy(&human_workflow("ship", json!({}))).await;
    let receiver = Receiver::start().await;
    let job = api
        .invoke_async("job", json!({}), &receiver.callback_url())
        .await;
    let short = api
        .invoke_async("short", json!({}), &receiver.callback_url())
        .await;
    let ship = api
        .invoke_async("ship", json!({ "item": "x" }), &receiver.callback_url())
        .await;
    let call = service.wait_for_path("/accept", 1, WAIT).await[0].clone();
    service.wait_for_path("/accept/short", 1, WAIT).await;
    let approval = api.wait_pending_approval(&ship).await;

    server.kill().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.restart().await;
    let api = server.api();

    // The completion URL was issued by the previous process: its path works on the new one.
    let (status, answer) = post_url(
        &format!("{}{}", server.base_url, url_path(&webhook_url(&call))),
        &json!({ "success": true, "outputs": "after restart" }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = api
        .answer(&str_of(&approval["id"]), &json!({ "decision": "approve" }))
        .await;
    assert_eq!(status, 200, "{answer}");

    let expected = [
        (&job, "completed"),
        (&short, "failed"),
        (&ship, "completed"),
    ];
    for (id, status) in expected {
        let run = api.wait_run(id).await;
        assert_eq!(run["run_status"], status, "{run:#}");
    }
    assert_eq!(
        api.run(&job).await["output"]["result"],
        json!({ "work": "after restart" })
    );
    assert!(str_of(&api.run(&short).await["error"]).contains("timed out"));
    receiver.callbacks(3).await;
}
