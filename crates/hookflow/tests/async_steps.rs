//! `async_http` steps: the call with `arguments` and `metadata.webhook_url`, completions at
//! `POST /webhook/{flow_id}/{step_id}/{token}` with every status rule, refusals in the initial
//! answer, timeouts, retries with new tokens, and a completion that beats the initial answer.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A server with `async_workflow("job", service.url(path), extra)` deployed, a step service and
/// a callback receiver.
struct Env {
    server: Server,
    api: Api,
    dep: Deployment,
    service: Service,
    receiver: Receiver,
}

impl Env {
    async fn new(opts: ServerOpts, path: &str, extra: Value) -> Env {
        let server = Server::start(opts).await;
        let api = server.api();
        let service = Service::start().await;
        let dep = api
            .deploy(&async_workflow("job", &service.url(path), extra))
            .await;
        let receiver = Receiver::start().await;
        Env {
            server,
            api,
            dep,
            service,
            receiver,
        }
    }

    async fn invoke(&self, inputs: Value) -> String {
        self.api
            .invoke_async("job", inputs, &self.receiver.callback_url())
            .await
    }

    /// Waits for the `n`th call to the step endpoint at `path`; returns it.
    async fn call(&self, path: &str, n: usize) -> Recorded {
        self.service.wait_for_path(path, n, WAIT).await[n - 1].clone()
    }

    /// The one callback of the run, verified against the deployment secret.
    async fn callback(&self) -> Value {
        let callback = &self.receiver.callbacks(1).await[0];
        verify_callback(callback, &self.dep.secret, &[&self.dep.secret]);
        callback.json()
    }
}

fn success(outputs: Value) -> Value {
    json!({ "success": true, "outputs": outputs })
}

fn failure(error: &str) -> Value {
    json!({ "success": false, "error": error })
}

/// `webhook_url` with its token replaced by `token`.
fn with_token(webhook_url: &str, token: &str) -> String {
    let (base, _) = webhook_url.rsplit_once('/').expect("a token segment");
    format!("{base}/{token}")
}

#[tokio::test]
async fn the_step_gets_its_arguments_and_a_completion_continues_the_run() {
    let env = Env::new(ServerOpts::default(), "/accept", json!({})).await;
    let id = env.invoke(json!({ "text": "hi" })).await;

    let call = env.call("/accept", 1).await;
    assert_eq!(call.method, "POST");
    let body = call.json();
    assert_eq!(
        body["arguments"],
        json!({ "input": { "text": "hi" } }),
        "{body}"
    );
    let metadata = &body["metadata"];
    assert_eq!(metadata["flow_id"], id.as_str(), "{body}");
    assert_eq!(metadata["step_id"], "work", "{body}");
    assert_eq!(metadata["attempt"], 1, "{body}");
    let url = webhook_url(&call);
    let prefix = format!("{}/webhook/{id}/work/", env.server.base_url);
    let token = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("webhook_url {url} is not under {prefix}"));
    assert!(
        token.len() >= 32 && !token.contains('/'),
        "an unguessable token: {url}"
    );

    let waiting = env.api.run(&id).await;
    assert_eq!(waiting["run_status"], "waiting", "{waiting:#}");
    assert!(step_attempts(&waiting, "after").is_empty(), "{waiting:#}");

    let outputs = json!({ "label": "spam", "score": 0.9 });
    let (status, answer) = post_url(&url, &success(outputs.clone())).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(
        run["output"]["result"],
        json!({ "work": outputs }),
        "{run:#}"
    );
    assert_eq!(step_statuses(&run, "work"), ["completed"], "{run:#}");
    assert_eq!(step_attempts(&run, "work")[0]["output"], outputs);
    let event = env.callback().await;
    assert_eq!(event["event_type"], "workflow.completed", "{event}");
    assert_eq!(
        event["data"]["output"]["result"],
        json!({ "work": outputs })
    );
    assert_eq!(env.service.requests_to("/accept").len(), 1, "one call");

    // The same completion again (other key order and spacing: the same StepResult): 200, and
    // nothing changes.
    let resent = br#"{ "outputs": {"score": 0.9, "label": "spam"},   "success": true }"#;
    let (status, answer) = env
        .api
        .with_key(None)
        .raw(
            "POST",
            &url_path(&url),
            Some("application/json"),
            Some(resent.to_vec()),
            &[],
        )
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("duplicate")),
        "{answer}"
    );

    // A different completion for the used token: 409, nothing changes either.
    for different in [
        success(json!({ "label": "ham" })),
        failure("changed my mind"),
    ] {
        let resp = post_url(&url, &different).await;
        assert_eq!(resp.0, 409, "{different} -> {}", resp.1);
        assert!(resp.1["error_code"].is_string(), "{}", resp.1);
    }
    assert_eq!(env.api.run(&id).await, run, "the run did not change");
    env.receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn unknown_forged_and_malformed_tokens_are_404_and_the_body_must_be_a_step_result() {
    let env = Env::new(ServerOpts::default(), "/accept", json!({})).await;
    let id = env.invoke(json!({})).await;
    let url = webhook_url(&env.call("/accept", 1).await);
    let token = url.rsplit('/').next().unwrap().to_string();
    let (attempt, mac) = token.split_once('.').unwrap_or(("", &token));

    let flipped = {
        let mut chars: Vec<char> = token.chars().collect();
        let last = chars.last_mut().unwrap();
        *last = if *last == '0' { '1' } else { '0' };
        chars.into_iter().collect::<String>()
    };
    let other_run = "req_0123456789abcdef0123456789abcdef";
    let base = &env.server.base_url;
    let unknown = [
        with_token(&url, &flipped),
        with_token(&url, "garbage"),
        with_token(
            &url,
            &format!("{}.{mac}", attempt.parse::<u64>().unwrap_or(1) + 1),
        ),
        format!("{base}/webhook/{other_run}/work/{token}"),
        format!("{base}/webhook/req_nope/work/{token}"),
        format!("{base}/webhook/{id}/after/{token}"),
        format!("{base}/webhook/{id}/nope/{token}"),
    ];
    for bad in &unknown {
        let resp = post_url(bad, &success(json!("forged"))).await;
        assert_error(&resp, 404, "not_found", None);
    }

    for not_a_result in [
        json!({ "outputs": 1 }),
        json!({ "success": "yes" }),
        json!([true]),
    ] {
        let resp = post_url(&url, &not_a_result).await;
        assert_eq!(resp.0, 400, "{not_a_result} -> {}", resp.1);
        assert!(resp.1["error_code"].is_string(), "{}", resp.1);
    }
    assert_eq!(
        env.api.run(&id).await["run_status"],
        "waiting",
        "refused completions change nothing"
    );

    let (status, answer) = post_url(&url, &success(json!("genuine"))).await;
    assert_eq!(status, 200, "{answer}");
    let run = env.api.wait_run(&id).await;
    assert_eq!(
        run["output"]["result"],
        json!({ "work": "genuine" }),
        "{run:#}"
    );
}

#[tokio::test]
async fn a_failed_completion_without_retry_fails_the_run() {
    let env = Env::new(ServerOpts::default(), "/accept", json!({})).await;
    let id = env.invoke(json!({})).await;
    let url = webhook_url(&env.call("/accept", 1).await);
    let (status, answer) = post_url(&url, &failure("worker broke")).await;
    assert_eq!(status, 200, "{answer}");

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "failed", "{run:#}");
    let error = str_of(&run["error"]);
    assert!(
        error.contains("work") && error.contains("worker broke"),
        "the error names the step and the worker's message: {run:#}"
    );
    assert_eq!(step_statuses(&run, "work"), ["failed"], "{run:#}");
    assert!(step_attempts(&run, "after").is_empty(), "{run:#}");
    let event = env.callback().await;
    assert_eq!(event["event_type"], "workflow.failed", "{event}");
    assert_eq!(event["data"]["error"], run["error"], "{event}");
    assert_eq!(env.service.requests_to("/accept").len(), 1, "no retry");
}

#[tokio::test]
async fn a_failed_completion_with_retry_makes_a_new_attempt_with_a_new_token() {
    let retry = json!({ "retry": { "max_attempts": 3, "initial_interval": "100ms" } });
    let env = Env::new(ServerOpts::default(), "/accept", retry).await;
    let id = env.invoke(json!({ "n": 1 })).await;

    let first = env.call("/accept", 1).await;
    let first_url = webhook_url(&first);
    let (status, answer) = post_url(&first_url, &failure("worker broke")).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );

    let second = env.call("/accept", 2).await;
    assert_eq!(
        second.json()["metadata"]["attempt"],
        2,
        "{:?}",
        second.json()
    );
    assert_eq!(second.json()["arguments"], first.json()["arguments"]);
    let second_url = webhook_url(&second);
    assert_ne!(second_url, first_url, "a new attempt has a new token");

    // The first token is used up: the same failure again is a harmless duplicate, anything else
    // is refused, and neither makes another attempt.
    let (status, answer) = post_url(&first_url, &failure("worker broke")).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("duplicate")),
        "{answer}"
    );
    let resp = post_url(&first_url, &success(json!("late"))).await;
    assert_eq!(resp.0, 409, "{}", resp.1);

    let (status, answer) = post_url(&second_url, &success(json!("second"))).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );
    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(
        run["output"]["result"],
        json!({ "work": "second" }),
        "{run:#}"
    );
    assert_eq!(
        step_statuses(&run, "work"),
        ["failed", "completed"],
        "{run:#}"
    );
    let attempts = step_attempts(&run, "work");
    assert!(
        str_of(&attempts[0]["error"]).contains("worker broke"),
        "{run:#}"
    );
    assert_eq!(env.callback().await["event_type"], "workflow.completed");
    env.service
        .assert_stays_at("/accept", 2, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_refusal_in_the_initial_answer_fails_the_attempt_at_once() {
    // An hour of timeout: only the refusal can end these attempts within the test.
    let extra =
        json!({ "timeout": "1h", "retry": { "max_attempts": 2, "initial_interval": "100ms" } });
    let env = Env::new(ServerOpts::default(), "/refuse", extra).await;
    let id = env.invoke(json!({})).await;

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "failed", "{run:#}");
    assert_eq!(step_statuses(&run, "work"), ["failed", "failed"], "{run:#}");
    for attempt in step_attempts(&run, "work") {
        assert!(
            str_of(&attempt["error"]).contains("refused by the service"),
            "the service's error is the attempt's: {attempt}"
        );
    }
    assert!(
        str_of(&run["error"]).contains("refused by the service"),
        "{run:#}"
    );
    let event = env.callback().await;
    assert_eq!(event["event_type"], "workflow.failed", "{event}");

    // Both tokens belong to failed (abandoned) attempts of an ended run.
    let calls = env.service.requests_to("/refuse");
    assert_eq!(calls.len(), 2);
    for call in &calls {
        let resp = post_url(&webhook_url(call), &success(json!("too late"))).await;
        assert_error(&resp, 410, "attempt_abandoned", None);
    }
    assert_eq!(env.api.run(&id).await, run, "nothing changed");
}

#[tokio::test]
async fn an_attempt_without_a_completion_times_out_and_is_retried() {
    let extra = json!({
        "timeout": "1s",
        "retry": { "max_attempts": 2, "initial_interval": "200ms", "backoff": 2.0 },
    });
    let env = Env::new(ServerOpts::default(), "/accept", extra).await;
    let id = env.invoke(json!({})).await;

    let first = env.call("/accept", 1).await;
    let second = env.call("/accept", 2).await;
    assert!(
        second.at.duration_since(first.at) >= Duration::from_secs(1),
        "the retry comes after the first attempt's timeout"
    );
    assert_eq!(second.json()["metadata"]["attempt"], 2);

    // The timed-out attempt's token is abandoned: a completion for it is refused, changing nothing.
    let resp = post_url(&webhook_url(&first), &success(json!("late"))).await;
    assert_error(&resp, 410, "attempt_abandoned", None);
    let run = env.api.run(&id).await;
    assert_eq!(run["run_status"], "waiting", "{run:#}");
    let attempts = step_attempts(&run, "work");
    assert_eq!(attempts[0]["status"], "failed", "{run:#}");
    assert!(
        str_of(&attempts[0]["error"]).contains("timed out"),
        "{run:#}"
    );

    let (status, answer) = post_url(&webhook_url(&second), &success(json!("in time"))).await;
    assert_eq!(status, 200, "{answer}");
    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(run["output"]["result"], json!({ "work": "in time" }));
    assert_eq!(step_statuses(&run, "work"), ["failed", "completed"]);
}

#[tokio::test]
async fn the_last_attempt_timing_out_fails_the_run() {
    let env = Env::new(ServerOpts::default(), "/accept", json!({ "timeout": "1s" })).await;
    let id = env.invoke(json!({})).await;
    let call = env.call("/accept", 1).await;

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "failed", "{run:#}");
    assert!(str_of(&run["error"]).contains("timed out"), "{run:#}");
    assert_eq!(env.callback().await["event_type"], "workflow.failed");
    let resp = post_url(&webhook_url(&call), &success(json!("late"))).await;
    assert_error(&resp, 410, "attempt_abandoned", None);
}

#[tokio::test]
async fn a_completion_that_beats_the_initial_answer_counts() {
    let env = Env::new(ServerOpts::default(), "/complete-first", json!({})).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(env.invoke(json!({ "n": n })).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let run = env.api.wait_run(id).await;
        assert_eq!(run["run_status"], "completed", "{run:#}");
        assert_eq!(
            run["output"]["result"],
            json!({ "work": { "early": true, "arguments": { "input": { "n": n } } } }),
            "{run:#}"
        );
        assert_eq!(step_statuses(&run, "work"), ["completed"], "{run:#}");
    }
    let completions = env.service.completions(5).await;
    assert_eq!(completions.len(), 5, "{completions:?}");
    for (status, answer) in completions {
        assert_eq!(
            (status, &answer["status"]),
            (200, &json!("accepted")),
            "{answer}"
        );
    }
    let callbacks = env.receiver.callbacks(5).await;
    for callback in &callbacks {
        assert_eq!(callback.json()["event_type"], "workflow.completed");
    }
    env.receiver
        .assert_stays_at("/callback", 5, Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn the_webhook_url_is_built_on_the_public_url() {
    let opts = ServerOpts::default().set("--public-url", "https://hooks.example.com/hf/");
    let env = Env::new(opts, "/accept", json!({})).await;
    let id = env.invoke(json!({})).await;
    let url = webhook_url(&env.call("/accept", 1).await);
    let path = url
        .strip_prefix("https://hooks.example.com/hf")
        .unwrap_or_else(|| panic!("{url} is not built on the public URL"));
    assert!(path.starts_with(&format!("/webhook/{id}/work/")), "{url}");

    // The same path on the server itself is the completion endpoint (a proxy would forward it).
    let (status, answer) = post_url(
        &format!("{}{path}", env.server.base_url),
        &success(json!("via proxy")),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(env.api.wait_run(&id).await["run_status"], "completed");
}

#[tokio::test]
async fn racing_completions_for_one_token_have_one_winner() {
    let env = Env::new(ServerOpts::default(), "/accept", json!({})).await;
    let id = env.invoke(json!({})).await;
    let url = webhook_url(&env.call("/accept", 1).await);

    // Eight different completions at once, and then each one again at once.
    let race = |round: &'static str| {
        let url = url.clone();
        async move {
            let sends = (0..8).map(|n| {
                let url = url.clone();
                tokio::spawn(async move { (n, post_url(&url, &success(json!({ "n": n }))).await) })
            });
            let mut answers = Vec::new();
            for send in sends {
                answers.push(send.await.expect(round));
            }
            answers
        }
    };
    let answers = race("first round").await;
    let winners: Vec<_> = answers.iter().filter(|(_, (s, _))| *s == 200).collect();
    assert_eq!(winners.len(), 1, "exactly one completion wins: {answers:?}");
    let (winner, (_, body)) = winners[0];
    assert_eq!(body["status"], "accepted", "{answers:?}");
    for (n, (status, body)) in &answers {
        assert!(
            n == winner || *status == 409,
            "the losers get 409: {n} -> {status} {body}"
        );
    }

    let run = env.api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(
        run["output"]["result"],
        json!({ "work": { "n": winner } }),
        "{run:#}"
    );
    assert_eq!(step_statuses(&run, "after"), ["completed"], "{run:#}");
    for (n, (status, body)) in race("second round").await {
        let expected = if n == *winner { 200 } else { 409 };
        assert_eq!(status, expected, "{n}: {body}");
    }
    env.receiver
        .assert_stays_at("/callback", 1, Duration::from_millis(300))
        .await;
    assert_eq!(env.api.run(&id).await, run);
}
