//! Human-in-the-loop: `human` steps open approvals that are listed, read and answered; approve
//! continues the run, reject fails it; timeouts with `on_timeout`; `notify_url` sends a signed
//! `approval.requested` event whose `respond_url` takes the answer without an API key.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A server with `human_workflow("ship", extra)` deployed and a callback receiver.
struct Env {
    server: Server,
    api: Api,
    dep: Deployment,
    receiver: Receiver,
}

impl Env {
    async fn new(extra: Value) -> Env {
        let server = Server::start_default().await;
        let api = server.api();
        let dep = api.deploy(&human_workflow("ship", extra)).await;
        let receiver = Receiver::start().await;
        Env {
            server,
            api,
            dep,
            receiver,
        }
    }

    /// Invokes async with `{"item": "widget"}`, user and metadata; answers the request id and
    /// the pending approval it opened.
    async fn invoke(&self) -> (String, Value) {
        let (status, answer) = self
            .api
            .invoke(&json!({
                "deployment": "ship", "inputs": { "item": "widget" },
                "user": "u-9", "metadata": { "ticket": 77 },
                "async": { "enabled": true, "callback_url": self.receiver.callback_url() },
            }))
            .await;
        assert_eq!(status, 202, "{answer}");
        let id = str_of(&answer["request_id"]);
        let approval = self.api.wait_pending_approval(&id).await;
        (id, approval)
    }

    /// The one callback at `/callback`, verified; answers its body.
    async fn callback(&self, event_type: &str) -> Value {
        let callback = &self.receiver.callbacks(1).await[0];
        verify_callback(callback, &self.dep.secret, &[&self.dep.secret]);
        let event = callback.json();
        assert_eq!(event["event_type"], event_type, "{event}");
        event
    }
}

fn approval_path(id: &str) -> String {
    format!("/v1/workflow/approvals/{id}")
}

#[tokio::test]
async fn an_open_approval_is_listed_and_readable() {
    let env = Env::new(json!({ "timeout": "1h" })).await;
    let (id, approval) = env.invoke().await;

    let approval_id = str_of(&approval["id"]);
    assert!(approval_id.starts_with("apr_"), "{approval}");
    assert_eq!(approval["request_id"], id.as_str(), "{approval}");
    assert_eq!(approval["step_id"], "review", "{approval}");
    assert_eq!(
        approval["prompt"], "Ship widget?",
        "the prompt is rendered: {approval}"
    );
    assert_eq!(approval["assignee"], "ops@example.com", "{approval}");
    assert_eq!(approval["status"], "pending", "{approval}");
    let (created, deadline) = (ts(&approval["created_at"]), ts(&approval["deadline"]));
    let ahead = deadline
        .duration_since(created)
        .expect("deadline after creation");
    assert!(
        ahead > Duration::from_secs(3500) && ahead <= Duration::from_secs(3600),
        "deadline = created + timeout (1h): {approval}"
    );

    let (status, read) = env.api.get(&approval_path(&approval_id)).await;
    assert_eq!(
        (status, &read),
        (200, &approval),
        "GET answers the listed approval"
    );
    let run = env.api.run(&id).await;
    assert_eq!(run["run_status"], "waiting", "{run:#}");

    assert_error(
        &env.api.get(&approval_path("apr_nope")).await,
        404,
        "not_found",
        None,
    );
    assert_error(
        &env.api.get("/v1/workflow/approvals?status=bogus").await,
        400,
        "validation_error",
        None,
    );
    // Another workspace sees nothing of it.
    let other_key = create_key(&env.server.db_url, Some("other")).await;
    let other = env.api.with_key(Some(&other_key));
    assert!(other.approvals("status=pending").await.is_empty());
    assert_eq!(other.get(&approval_path(&approval_id)).await.0, 404);
    assert_eq!(
        other
            .answer(&approval_id, &json!({ "decision": "approve" }))
            .await
            .0,
        404
    );
    assert_eq!(
        env.api
            .with_key(None)
            .get(&approval_path(&approval_id))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn approving_continues_the_run_with_the_answer_as_the_step_output() {
    let env = Env::new(json!({})).await;
    let (id, approval) = env.invoke().await;
    let approval_id = str_of(&approval["id"]);
    assert!(
        approval["deadline"].is_null(),
        "no timeout, no deadline: {approval}"
    );

    for bad in [
        json!({}),
        json!({ "decision": "maybe" }),
        json!({ "decision": "approve", "data": [1] }),
    ] {
        let resp = env.api.answer(&approval_id, &bad).await;
        assert_error(&resp, 400, "validation_error", None);
    }

    let answer = json!({ "decision": "approve", "comment": "lgtm", "data": { "n": 1 },
                         "responder": "alice" });
    let (status, answered) = env.api.answer(&approval_id, &answer).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["status"], "approved", "{answered}");
    assert_eq!(answered["responder"], "alice", "{answered}");

    let expected = json!({ "decision": "approve", "comment": "lgtm", "data": { "n": 1 },
                           "responder": "alice" });
    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(
        step_attempts(&run, "review")[0]["output"],
        expected,
        "{run:#}"
    );
    assert_eq!(run["output"]["result"], expected, "{run:#}");
    let event = env.callback("workflow.completed").await;
    assert_eq!(event["data"]["output"]["result"], expected, "{event}");
    assert_eq!(event["data"]["user"], "u-9", "{event}");

    let again = env
        .api
        .answer(&approval_id, &json!({ "decision": "reject" }))
        .await;
    assert_error(&again, 409, "already_answered", None);
    assert!(env.api.approvals("status=pending").await.is_empty());
    let approved = env.api.approvals("status=approved").await;
    assert_eq!(approved.len(), 1, "{approved:#?}");
    assert_eq!(approved[0]["id"], approval_id.as_str());
    assert_eq!(
        env.api.run(&id).await,
        run,
        "the second answer changed nothing"
    );
}

#[tokio::test]
async fn rejecting_fails_the_run() {
    let env = Env::new(json!({})).await;
    let (id, approval) = env.invoke().await;
    let approval_id = str_of(&approval["id"]);
    let (status, answered) = env
        .api
        .answer(
            &approval_id,
            &json!({ "decision": "reject", "comment": "not today", "responder": "bob" }),
        )
        .await;
    assert_eq!(
        (status, &answered["status"]),
        (200, &json!("rejected")),
        "{answered}"
    );

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "failed", "{run:#}");
    assert!(
        str_of(&run["error"]).contains("rejected by bob: not today"),
        "{run:#}"
    );
    assert_eq!(
        step_statuses(&run, "review"),
        ["failed"],
        "no retry: {run:#}"
    );
    assert!(step_attempts(&run, "after").is_empty(), "{run:#}");
    let event = env.callback("workflow.failed").await;
    assert_eq!(event["data"]["error"], run["error"], "{event}");

    let again = env
        .api
        .answer(&approval_id, &json!({ "decision": "approve" }))
        .await;
    assert_error(&again, 409, "already_answered", None);
}

#[tokio::test]
async fn a_timeout_with_on_timeout_fail_fails_the_run() {
    let env = Env::new(json!({ "timeout": "1s", "on_timeout": "fail" })).await;
    let (id, approval) = env.invoke().await;
    let approval_id = str_of(&approval["id"]);

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "failed", "{run:#}");
    assert!(str_of(&run["error"]).contains("timed out"), "{run:#}");
    env.callback("workflow.failed").await;
    let (_, read) = env.api.get(&approval_path(&approval_id)).await;
    assert_eq!(read["status"], "timed_out", "{read}");
    let late = env
        .api
        .answer(&approval_id, &json!({ "decision": "approve" }))
        .await;
    assert_eq!(late.0, 410, "an answer after the timeout: {}", late.1);
}

#[tokio::test]
async fn a_timeout_with_on_timeout_approve_continues_with_default_data() {
    let env = Env::new(json!({
        "timeout": "1s", "on_timeout": "approve", "default_data": { "tier": "standard" },
    }))
    .await;
    let (id, _) = env.invoke().await;

    let expected = json!({ "decision": "approve", "comment": null, "data": { "tier": "standard" },
                           "responder": null, "timed_out": true });
    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(run["output"]["result"], expected, "{run:#}");
    let event = env.callback("workflow.completed").await;
    assert_eq!(event["data"]["output"]["result"], expected, "{event}");
}

#[tokio::test]
async fn notify_url_gets_a_signed_event_whose_respond_url_answers_without_a_key() {
    let notify = Receiver::start().await;
    let env = Env::new(json!({ "timeout": "1h", "notify_url": notify.url("/notify") })).await;
    let (id, approval) = env.invoke().await;
    let approval_id = str_of(&approval["id"]);

    let request = &notify.wait_for_path("/notify", 1, WAIT).await[0];
    verify_callback(request, &env.dep.secret, &[&env.dep.secret]);
    let event = request.json();
    assert_eq!(event["event_type"], "approval.requested", "{event}");
    assert_eq!(event["request_id"], id.as_str(), "{event}");
    let data = &event["data"];
    for (field, value) in [
        ("approval_id", json!(approval_id)),
        ("step_id", json!("review")),
        ("prompt", json!("Ship widget?")),
        ("assignee", json!("ops@example.com")),
        ("deadline", approval["deadline"].clone()),
        ("user", json!("u-9")),
        ("metadata", json!({ "ticket": 77 })),
    ] {
        assert_eq!(data[field], value, "data.{field} of {event}");
    }
    let respond_url = str_of(&data["respond_url"]);
    let prefix = format!(
        "{}/v1/workflow/approvals/{approval_id}/respond?token=",
        env.server.base_url
    );
    let token = respond_url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("respond_url {respond_url} is not {prefix}…"));
    let log = env.api.wait_deliveries(&id, 1).await;
    assert!(
        log.iter()
            .any(|a| a["url"] == notify.url("/notify").as_str()),
        "the notification is in the run's delivery log: {log:#?}"
    );

    // Tampered or missing tokens, or a token of another approval, are refused.
    let (expires, mac) = token.split_once('.').expect("<expires>.<mac>");
    let flipped_mac = format!(
        "{}{}",
        &mac[..mac.len() - 1],
        if mac.ends_with('0') { '1' } else { '0' }
    );
    let respond_path = format!("/v1/workflow/approvals/{approval_id}/respond");
    let base = &env.server.base_url;
    let other = env.invoke().await.1;
    for bad in [
        format!("{base}{respond_path}?token={expires}.{flipped_mac}"),
        format!(
            "{base}{respond_path}?token={}.{mac}",
            expires.parse::<u64>().unwrap() + 1000
        ),
        format!("{base}{respond_path}?token="),
        format!("{base}{respond_path}"),
        format!(
            "{base}/v1/workflow/approvals/{}/respond?token={token}",
            str_of(&other["id"])
        ),
    ] {
        let resp = post_url(&bad, &json!({ "decision": "approve" })).await;
        assert_error(&resp, 401, "unauthorized", None);
    }
    let (_, still) = env.api.get(&approval_path(&approval_id)).await;
    assert_eq!(still["status"], "pending", "{still}");

    let (status, answered) = post_url(
        &respond_url,
        &json!({ "decision": "approve", "comment": "from chat", "responder": "carol" }),
    )
    .await;
    assert_eq!(
        (status, &answered["status"]),
        (200, &json!("approved")),
        "{answered}"
    );
    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(run["output"]["result"]["responder"], "carol", "{run:#}");
    let again = post_url(&respond_url, &json!({ "decision": "reject" })).await;
    assert_error(&again, 409, "already_answered", None);
    let completed = env
        .receiver
        .wait_for_path("/callback", 1, WAIT)
        .await
        .into_iter()
        .map(|c| c.json())
        .find(|c| c["request_id"] == id.as_str())
        .expect("the run's callback");
    assert_eq!(completed["event_type"], "workflow.completed", "{completed}");
}

#[tokio::test]
async fn racing_answers_have_one_winner() {
    let env = Env::new(json!({})).await;
    let (id, approval) = env.invoke().await;
    let approval_id = str_of(&approval["id"]);
    let sends = (0..8).map(|n| {
        let (api, approval_id) = (env.api.clone(), approval_id.clone());
        let decision = if n % 2 == 0 { "approve" } else { "reject" };
        tokio::spawn(async move {
            let answer = json!({ "decision": decision, "responder": format!("r{n}") });
            (n, api.answer(&approval_id, &answer).await)
        })
    });
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("answer"));
    }
    let winners: Vec<_> = answers.iter().filter(|(_, (s, _))| *s == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one answer wins: {answers:?}");
    for (_, resp) in answers.iter().filter(|(_, (s, _))| *s != 200) {
        assert_error(resp, 409, "already_answered", None);
    }
    let (winner, _) = winners[0];
    let run = env.api.wait_run(&id).await;
    let expected = if winner % 2 == 0 {
        "completed"
    } else {
        "failed"
    };
    assert_eq!(run["run_status"], expected, "winner r{winner}: {run:#}");
    let (_, read) = env.api.get(&approval_path(&approval_id)).await;
    assert_eq!(read["responder"], format!("r{winner}"), "{read}");
    env.receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn approvals_page_newest_first_and_filter_by_status() {
    let env = Env::new(json!({})).await;
    let mut approval_ids = Vec::new();
    for _ in 0..3 {
        approval_ids.push(str_of(&env.invoke().await.1["id"]));
    }
    let (status, answered) = env
        .api
        .answer(&approval_ids[0], &json!({ "decision": "approve" }))
        .await;
    assert_eq!(status, 200, "{answered}");

    let mut pages = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let (status, page) = env
            .api
            .get(&format!("/v1/workflow/approvals?{query}"))
            .await;
        assert_eq!(status, 200, "{page}");
        pages.push(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| str_of(&a["id"]))
                .collect::<Vec<_>>(),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={}", enc(cursor)),
            None => break,
        }
        assert!(pages.len() < 5, "paging does not end: {pages:?}");
    }
    let newest_first: Vec<String> = approval_ids.iter().rev().cloned().collect();
    assert_eq!(pages, [&newest_first[0..2], &newest_first[2..3]]);
    let pending: Vec<String> = env
        .api
        .approvals("status=pending")
        .await
        .iter()
        .map(|a| str_of(&a["id"]))
        .collect();
    assert_eq!(pending, &newest_first[0..2]);
    assert_error(
        &env.api.get("/v1/workflow/approvals?limit=1001").await,
        400,
        "validation_error",
        None,
    );
}

#[tokio::test]
async fn a_failed_notification_is_retried_with_the_same_event_id() {
    let notify = Receiver::scripted([Reply::Status(503), Reply::Status(500)]).await;
    let env = Env::new(json!({ "notify_url": notify.url("/notify") })).await;
    let (id, _) = env.invoke().await;
    let attempts = notify.wait_for_path("/notify", 3, WAIT).await;
    let event_id = attempts[0].header("webhook-id").unwrap();
    for attempt in &attempts {
        verify_callback(attempt, &env.dep.secret, &[&env.dep.secret]);
        assert_eq!(attempt.header("webhook-id"), Some(event_id));
        assert_eq!(attempt.body, attempts[0].body, "the same event each time");
    }
    notify
        .assert_stays_at("/notify", 3, Duration::from_millis(500))
        .await;
    let log = env.api.wait_deliveries(&id, 3).await;
    let codes: Vec<&Value> = log.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(200), &json!(500), &json!(503)], "{log:#?}");
}
