//! `POST /v1/workflow/runs/{id}/cancel` in each non-terminal state: queued, running, waiting on
//! a delay, on an async step, on an approval. Each ends `cancelled` with exactly one
//! `workflow.cancelled` callback; open work is abandoned and late answers refused; finished steps
//! stay readable; a second cancel is 409.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A workflow `name`: transform `first` (output `"kept"`), then `step` (which needs `first`),
/// then an `http` step `after` to `after_url` (which must never be called).
fn after_first(name: &str, mut step: Value, after_url: &str) -> Value {
    merge(&mut step, json!({ "needs": ["first"] }));
    let step_id = str_of(&step["id"]);
    workflow(
        name,
        json!([
            { "id": "first", "kind": "transform", "value": "kept" },
            step,
            { "id": "after", "kind": "http", "needs": [step_id],
              "request": { "method": "POST", "url": after_url } },
        ]),
        "{{ steps.after.output }}",
    )
}

/// A server, the user's service, a callback receiver and `after_first(step)` deployed as `job`.
struct Env {
    _server: Server,
    api: Api,
    dep: Deployment,
    service: Service,
    receiver: Receiver,
}

impl Env {
    async fn new(step: impl FnOnce(&Service) -> Value) -> Env {
        let server = Server::start_default().await;
        let api = server.api();
        let service = Service::start().await;
        let def = after_first("job", step(&service), &service.url("/echo/after"));
        let dep = api.deploy(&def).await;
        let receiver = Receiver::start().await;
        Env {
            _server: server,
            api,
            dep,
            service,
            receiver,
        }
    }

    async fn invoke(&self) -> String {
        self.api
            .invoke_async("job", json!({}), &self.receiver.callback_url())
            .await
    }

    /// Cancels `id` (with `reason`, or the default one) and checks everything that follows;
    /// `open` is the step whose open attempt must end `abandoned`. Answers the cancelled run.
    async fn cancel(&self, id: &str, reason: Option<&str>, open: Option<&str>) -> Value {
        let body = reason.map_or(json!({}), |r| json!({ "reason": r }));
        let (status, answer) = self.api.cancel(id, &body).await;
        assert_eq!(status, 200, "cancel: {answer}");
        assert_eq!(answer["run_status"], "cancelled", "{answer}");

        let run = self.api.run(id).await;
        assert_eq!(run["run_status"], "cancelled", "{run:#}");
        let expected_error = format!(
            "Workflow cancelled: {}",
            reason.unwrap_or("cancelled by API request")
        );
        assert_eq!(run["error"], expected_error.as_str(), "{run:#}");
        assert!(run["finished_at"].is_string(), "{run:#}");
        if let Some(open) = open {
            assert_eq!(
                step_statuses(&run, "first"),
                ["completed"],
                "finished steps stay readable: {run:#}"
            );
            assert_eq!(step_attempts(&run, "first")[0]["output"], "kept");
            assert_eq!(step_statuses(&run, open), ["abandoned"], "{run:#}");
        }

        let callback = &self.receiver.callbacks(1).await[0];
        verify_callback(callback, &self.dep.secret, &[&self.dep.secret]);
        let event = callback.json();
        assert_eq!(event["event_type"], "workflow.cancelled", "{event}");
        assert_eq!(event["request_id"], id, "{event}");
        assert_eq!(event["data"]["reason"], "cancelled", "{event}");
        assert_eq!(event["data"]["error"], expected_error.as_str(), "{event}");

        let again = self.api.cancel(id, &json!({})).await;
        assert_error(&again, 409, "run_finished", None);
        run
    }

    /// Checks, after a quiet while, that the cancelled run is as it was: still one callback,
    /// `after` never called.
    async fn assert_settled(&self, id: &str, cancelled: &Value, quiet: Duration) {
        self.receiver.assert_stays_at("/callback", 1, quiet).await;
        assert!(
            self.service.requests_to("/echo/after").is_empty(),
            "a step of a cancelled run ran"
        );
        assert_eq!(&self.api.run(id).await, cancelled, "the run changed");
    }
}

#[tokio::test]
async fn cancelling_a_queued_run_never_starts_it_and_frees_nothing_it_did_not_hold() {
    let env = Env::new(|_| json!({ "id": "wait", "kind": "delay", "duration": "30s" })).await;
    let (status, patched) = env
        .api
        .patch(
            &format!("/v1/deployments/{}", env.dep.id),
            &json!({ "concurrency_limit": 1 }),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let ahead = Receiver::start().await;
    let running = env
        .api
        .invoke_async("job", json!({}), &ahead.callback_url())
        .await;
    let (status, answer) = env
        .api
        .invoke(&json!({ "deployment": "job", "inputs": {},
                         "async": { "enabled": true, "callback_url": env.receiver.callback_url() } }))
        .await;
    assert_eq!(
        (status, &answer["run_status"]),
        (202, &json!("queued")),
        "{answer}"
    );
    let queued = str_of(&answer["request_id"]);

    let run = env.cancel(&queued, Some("not needed any more"), None).await;
    assert!(
        run["started_at"].is_null(),
        "a queued run never started: {run:#}"
    );
    assert_eq!(run["steps"], json!([]), "{run:#}");
    assert_eq!(env.api.run(&running).await["run_status"], "waiting");

    // The slot is still held by the run ahead: a new run queues behind it.
    let (status, answer) = env
        .api
        .invoke(&json!({ "deployment": "job", "inputs": {},
                         "async": { "enabled": true, "callback_url": ahead.callback_url() } }))
        .await;
    assert_eq!(
        (status, &answer["run_status"]),
        (202, &json!("queued")),
        "{answer}"
    );
    env.assert_settled(&queued, &run, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn cancelling_a_running_run_abandons_its_http_call() {
    let env = Env::new(|service| {
        json!({ "id": "call", "kind": "http",
                "request": { "method": "POST", "url": service.url("/slow/1500") } })
    })
    .await;
    let id = env.invoke().await;
    env.service.wait_for_path("/slow/1500", 1, WAIT).await;
    assert_eq!(env.api.run(&id).await["run_status"], "running");

    let run = env.cancel(&id, None, Some("call")).await;
    // The call answers (unless hookflow dropped it) within the quiet window: that answer, coming
    // after the cancel, changes nothing.
    env.assert_settled(&id, &run, Duration::from_millis(2500))
        .await;
}

#[tokio::test]
async fn cancelling_a_run_waiting_on_a_delay_abandons_the_timer() {
    let env = Env::new(|_| json!({ "id": "wait", "kind": "delay", "duration": "2s" })).await;
    let id = env.invoke().await;
    env.api
        .wait_run_until(&id, |r| r["run_status"] == "waiting")
        .await;

    for bad in [json!({ "reason": 5 }), json!({ "reason": "" }), json!([1])] {
        let resp = env.api.cancel(&id, &bad).await;
        assert_error(&resp, 400, "validation_error", None);
    }
    let run = env.cancel(&id, None, Some("wait")).await;
    // The delay would have ended by now: nothing after it runs, nothing more is sent.
    env.assert_settled(&id, &run, Duration::from_millis(2500))
        .await;

    assert_error(
        &env.api
            .cancel("req_0123456789abcdef0123456789abcdef", &json!({}))
            .await,
        404,
        "not_found",
        Some("Request not found"),
    );
}

#[tokio::test]
async fn cancelling_a_run_waiting_on_an_async_step_refuses_its_late_completion() {
    let env = Env::new(
        |service| json!({ "id": "work", "kind": "async_http", "url": service.url("/accept") }),
    )
    .await;
    let id = env.invoke().await;
    let call = env.service.wait_for_path("/accept", 1, WAIT).await[0].clone();

    let run = env.cancel(&id, Some("user gave up"), Some("work")).await;
    let late = post_url(
        &webhook_url(&call),
        &json!({ "success": true, "outputs": "late" }),
    )
    .await;
    assert_error(&late, 410, "attempt_abandoned", None);
    env.assert_settled(&id, &run, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn cancelling_a_run_waiting_on_an_approval_closes_it() {
    let env = Env::new(
        |_| json!({ "id": "review", "kind": "human", "prompt": "Ship it?", "timeout": "1h" }),
    )
    .await;
    let id = env.invoke().await;
    let approval = env.api.wait_pending_approval(&id).await;
    let approval_id = str_of(&approval["id"]);

    let run = env.cancel(&id, None, Some("review")).await;
    let (_, read) = env
        .api
        .get(&format!("/v1/workflow/approvals/{approval_id}"))
        .await;
    assert_eq!(read["status"], "cancelled", "{read}");
    assert!(env.api.approvals("status=pending").await.is_empty());
    let late = env
        .api
        .answer(&approval_id, &json!({ "decision": "approve" }))
        .await;
    assert_error(&late, 410, "approval_closed", None);
    env.assert_settled(&id, &run, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_sync_client_waiting_on_a_cancelled_run_gets_the_cancellation() {
    let server = Server::start(ServerOpts::default().set("--sync-wait-limit", "20s")).await;
    let api = server.api();
    api.deploy(&delay_workflow("slow", "15s")).await;
    let waiting = api.clone();
    let invoke = tokio::spawn(async move {
        waiting
            .invoke(&json!({ "deployment": "slow", "inputs": {} }))
            .await
    });
    let id = loop {
        if let Some(id) = api.list_run_ids("").await.pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    api.wait_run_until(&id, |r| r["run_status"] == "waiting")
        .await;
    let (status, answer) = api.cancel(&id, &json!({ "reason": "too slow" })).await;
    assert_eq!(status, 200, "{answer}");

    let (status, body) = invoke.await.expect("sync invoke");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    assert_eq!(body["run_status"], "cancelled", "{body}");
    assert_eq!(body["error"], "Workflow cancelled: too slow", "{body}");
    assert_eq!(api.run(&id).await["delivery"], "direct");
}

#[tokio::test]
async fn a_cancel_racing_a_completion_ends_the_run_once() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let solo = workflow(
        "solo",
        json!([{ "id": "work", "kind": "async_http", "url": service.url("/accept") }]),
        "{{ steps.work.output }}",
    );
    api.deploy(&solo).await;
    let receiver = Receiver::start().await;
    const RUNS: usize = 10;
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(
            api.invoke_async("solo", json!({}), &receiver.callback_url())
                .await,
        );
    }
    let calls = service.wait_for_path("/accept", RUNS, WAIT).await;
    let mut races = Vec::new();
    for call in calls {
        let id = str_of(&call.json()["metadata"]["flow_id"]);
        let url = webhook_url(&call);
        let api = api.clone();
        races.push(tokio::spawn(async move {
            let (completion, empty) = (json!({ "success": true, "outputs": 1 }), json!({}));
            let (completed, cancelled) =
                tokio::join!(post_url(&url, &completion), api.cancel(&id, &empty));
            (id, completed, cancelled)
        }));
    }
    for race in races {
        let (id, completed, cancelled) = race.await.expect("race");
        let run = api.wait_run(&id).await;
        match str_of(&run["run_status"]).as_str() {
            "completed" => {
                assert_eq!(completed.0, 200, "{id}: {completed:?}");
                assert_error(&cancelled, 409, "run_finished", None);
            }
            "cancelled" => {
                assert_eq!(cancelled.0, 200, "{id}: {cancelled:?}");
                assert_error(&completed, 410, "attempt_abandoned", None);
            }
            other => panic!("{id} ended {other}: {run:#}"),
        }
    }
    let callbacks = receiver.callbacks(RUNS).await;
    receiver
        .assert_stays_at("/callback", RUNS, Duration::from_millis(500))
        .await;
    let mut seen: Vec<String> = callbacks
        .iter()
        .map(|c| str_of(&c.json()["request_id"]))
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "one terminal event per run");
}
