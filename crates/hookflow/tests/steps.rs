//! Step kinds (`transform`, `http`, `delay`), templates, secrets, `when`, `on_error`, retries,
//! timeouts, and concurrency of independent steps.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Deploys `definition` under its own name and invokes it synchronously with `inputs`.
async fn run_sync(api: &Api, definition: &Value, inputs: Value) -> Value {
    let name = str_of(&definition["name"]);
    api.deploy(definition).await;
    api.invoke_sync(&name, inputs).await
}

/// The full run record of a sync answer.
async fn record(api: &Api, answer: &Value) -> Value {
    api.run(&str_of(&answer["request_id"])).await
}

#[tokio::test]
async fn templates_yield_json_values_whole_and_interpolate_inside_strings() {
    let server = Server::start_default().await;
    let api = server.api();
    let def = workflow(
        "shapes",
        json!([{ "id": "t", "kind": "transform", "value": {
            "n": "{{ inputs.n }}",
            "flag": "{{ inputs.flag }}",
            "list": "{{ inputs.list }}",
            "obj": "{{ inputs.obj }}",
            "sum": "{{ inputs.n + 1 }}",
            "text": "n={{ inputs.n }} for {{ inputs.name }}",
            "constant": 42,
            "nested": { "deep": ["{{ inputs.name }}", 7, null] },
        } }]),
        "{{ steps.t.output }}",
    );
    let inputs =
        json!({ "n": 3, "flag": true, "list": [1, 2], "obj": { "k": "v" }, "name": "Ada" });
    let answer = run_sync(&api, &def, inputs).await;
    assert_eq!(answer["run_status"], "completed", "{answer}");
    assert_eq!(
        answer["output"]["result"],
        json!({
            "n": 3, "flag": true, "list": [1, 2], "obj": { "k": "v" }, "sum": 4,
            "text": "n=3 for Ada", "constant": 42, "nested": { "deep": ["Ada", 7, null] },
        })
    );
}

#[tokio::test]
async fn templates_see_run_settings_and_earlier_steps() {
    let server = Server::start_default().await;
    let api = server.api();
    let def = workflow(
        "context",
        json!([
            { "id": "first", "kind": "transform", "value": { "label": "urgent", "score": 0.5 } },
            { "id": "second", "kind": "transform", "needs": ["first"], "value": {
                "label": "{{ steps.first.output.label }}",
                "score": "{{ steps.first.output.score }}",
                "model": "{{ settings.model }}",
                "id": "{{ run.request_id }}",
                "user": "{{ run.user }}",
                "ticket": "{{ run.metadata.ticket }}",
            } },
        ]),
        "{{ steps.second.output }}",
    );
    api.deploy_with(
        &def,
        json!({ "name": "context", "variants": { "default": { "settings": { "model": "small" } } } }),
    )
    .await;
    let (status, answer) = api
        .invoke(
            &json!({ "deployment": "context", "inputs": {}, "user": "customer-42",
                         "metadata": { "ticket": 981 } }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["output"]["result"],
        json!({ "label": "urgent", "score": 0.5, "model": "small",
                "id": answer["request_id"], "user": "customer-42", "ticket": 981 })
    );
}

#[tokio::test]
async fn an_http_step_sends_the_rendered_request_and_outputs_the_parsed_response() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let token = "tok-3f9a7c1d-never-show-me";
    let (status, _) = api
        .put("/v1/secrets/SERVICE_TOKEN", &json!({ "value": token }))
        .await;
    assert_eq!(status, 200);
    let def = workflow(
        "caller",
        json!([{
            "id": "classify",
            "kind": "http",
            "request": {
                "method": "POST",
                "url": format!("{}?who={{{{ inputs.who }}}}", service.url("/echo/classify")),
                "headers": { "Authorization": "Bearer {{ secrets.SERVICE_TOKEN }}", "X-Ticket": "{{ inputs.ticket }}" },
                "body": { "text": "{{ inputs.text }}", "n": "{{ inputs.n }}" },
            },
        }]),
        "{{ steps.classify.output }}",
    );
    let answer = run_sync(
        &api,
        &def,
        json!({ "who": "ada", "ticket": 981, "text": "hello", "n": 2 }),
    )
    .await;
    assert_eq!(answer["run_status"], "completed", "{answer}");

    let calls = service.requests_to("/echo/classify");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.query.as_deref(), Some("who=ada"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(call.header("x-ticket"), Some("981"));
    assert_eq!(call.json(), json!({ "text": "hello", "n": 2 }));

    assert_eq!(
        answer["output"]["result"],
        json!({ "method": "POST", "path": "/echo/classify", "query": "who=ada",
                "body": { "text": "hello", "n": 2 } })
    );
    let run = record(&api, &answer).await;
    assert_eq!(step_statuses(&run, "classify"), ["completed"], "{run:#}");
    assert!(
        !run.to_string().contains(token),
        "a secret leaked into the run record"
    );
    assert!(!server.log_text().contains(token), "a secret was logged");
}

#[tokio::test]
async fn a_failing_http_step_fails_the_run_once_and_its_dependants_never_run() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "fragile",
        json!([
            { "id": "single_shot", "kind": "http", "request": { "method": "POST", "url": service.url("/fail-times/1/single_shot") } },
            { "id": "next", "kind": "http", "needs": ["single_shot"],
              "request": { "method": "POST", "url": service.url("/echo/next") } },
        ]),
        "{{ steps.next.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "failed", "{answer}");
    assert!(
        answer["error"].to_string().contains("single_shot"),
        "{answer}"
    );

    service
        .assert_stays_at("/fail-times/1/single_shot", 1, Duration::from_millis(500))
        .await;
    assert!(
        service.requests_to("/echo/next").is_empty(),
        "a dependant of a failed step ran"
    );
    let run = record(&api, &answer).await;
    assert_eq!(
        step_statuses(&run, "single_shot"),
        ["failed"],
        "http steps default to one attempt: {run:#}"
    );
    let next = step_statuses(&run, "next");
    assert!(
        next.iter().all(|s| s != "completed" && s != "running"),
        "dependant must not run: {run:#}"
    );
    let failed = &step_attempts(&run, "single_shot")[0];
    assert!(
        failed["error"].is_string() || failed["error"].is_object(),
        "{failed}"
    );
}

#[tokio::test]
async fn chained_http_steps_start_without_claims() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "chained",
        json!([
            { "id": "first", "kind": "http", "request": { "method": "POST", "url": service.url("/echo/first"), "body": { "n": "{{ inputs.n }}" } } },
            { "id": "second", "kind": "http", "needs": ["first"],
              "request": { "method": "POST", "url": service.url("/echo/second"), "body": "{{ steps.first.output.body }}" } },
        ]),
        "{{ steps.second.output.body }}",
    );
    let answer = run_sync(&api, &def, json!({ "n": 7 })).await;
    assert_eq!(answer["run_status"], "completed", "{answer}");
    assert_eq!(answer["output"]["result"], json!({ "n": 7 }), "{answer}");
    // The write that created the run leased `first` to the node that took the invoke, and the
    // write that ended `first` leased `second` to the node that ran it: each started running in
    // that write, with no claim in between.
    let run = record(&api, &answer).await;
    let (first, second) = (
        &step_attempts(&run, "first")[0],
        &step_attempts(&run, "second")[0],
    );
    assert!(run["created_at"].is_string(), "{run:#}");
    assert_eq!(run["created_at"], first["started_at"], "{run:#}");
    assert!(first["finished_at"].is_string(), "{run:#}");
    assert_eq!(first["finished_at"], second["started_at"], "{run:#}");
    assert_eq!(service.requests_to("/echo/second").len(), 1);
}

#[tokio::test]
async fn a_retried_http_step_succeeds_on_a_later_attempt() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "retrying",
        json!([{
            "id": "flaky", "kind": "http",
            "request": { "method": "POST", "url": service.url("/fail-times/2/flaky") },
            "retry": { "max_attempts": 3, "initial_interval": "100ms", "backoff": 2.0, "max_interval": "1s" },
        }]),
        "{{ steps.flaky.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "completed", "{answer}");
    assert_eq!(answer["output"]["result"], json!({ "calls": 3 }));
    assert_eq!(service.requests_to("/fail-times/2/flaky").len(), 3);

    let run = record(&api, &answer).await;
    assert_eq!(
        step_statuses(&run, "flaky"),
        ["failed", "failed", "completed"],
        "{run:#}"
    );
    let attempts: Vec<u64> = step_attempts(&run, "flaky")
        .iter()
        .map(|s| s["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "exhausted",
        json!([{
            "id": "doomed", "kind": "http",
            "request": { "method": "GET", "url": service.url("/fail-times/9/doomed") },
            "retry": { "max_attempts": 2, "initial_interval": "50ms", "backoff": 2.0, "max_interval": "200ms" },
        }]),
        "{{ steps.doomed.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "failed", "{answer}");
    assert!(answer["error"].to_string().contains("doomed"), "{answer}");
    service
        .assert_stays_at("/fail-times/9/doomed", 2, Duration::from_millis(600))
        .await;
    let run = record(&api, &answer).await;
    assert_eq!(
        step_statuses(&run, "doomed"),
        ["failed", "failed"],
        "{run:#}"
    );
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "impatient",
        json!([{
            "id": "sluggish", "kind": "http", "timeout": "300ms",
            "request": { "method": "GET", "url": service.url("/slow/3000/sluggish") },
        }]),
        "{{ steps.sluggish.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "failed", "{answer}");
    assert!(answer["error"].to_string().contains("sluggish"), "{answer}");
    assert_eq!(service.requests_to("/slow/3000/sluggish").len(), 1);
    let run = record(&api, &answer).await;
    let attempt = &step_attempts(&run, "sluggish")[0];
    assert_eq!(attempt["status"], "failed", "{run:#}");
    assert!(
        attempt["error"].to_string().to_lowercase().contains("time"),
        "the error says the attempt timed out: {attempt}"
    );
}

#[tokio::test]
async fn on_error_continue_hands_the_error_to_dependants() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "tolerant",
        json!([
            { "id": "shaky", "kind": "http", "on_error": "continue",
              "request": { "method": "GET", "url": service.url("/status/503") } },
            { "id": "report", "kind": "transform", "needs": ["shaky"],
              "value": { "seen": "{{ steps.shaky.output }}" } },
        ]),
        "{{ steps.report.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "completed", "{answer}");
    let seen = &answer["output"]["result"]["seen"];
    let error = seen["error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty(),
        "the failed step's output is {{\"error\": …}}: {answer}"
    );
    let run = record(&api, &answer).await;
    assert_eq!(step_statuses(&run, "report"), ["completed"], "{run:#}");
}

#[tokio::test]
async fn steps_whose_when_is_false_are_skipped() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let def = workflow(
        "conditional",
        json!([
            { "id": "go", "kind": "http", "when": "{{ inputs.go }}",
              "request": { "method": "POST", "url": service.url("/echo/go") } },
            { "id": "review", "kind": "http", "when": "{{ inputs.score < 0.8 }}",
              "request": { "method": "POST", "url": service.url("/echo/review") } },
            { "id": "summary", "kind": "transform", "value": "done" },
        ]),
        "{{ steps.summary.output }}",
    );
    api.deploy(&def).await;

    let first = api
        .invoke_sync("conditional", json!({ "go": true, "score": 0.9 }))
        .await;
    assert_eq!(first["run_status"], "completed", "{first}");
    assert_eq!(first["output"]["result"], "done");
    let run = record(&api, &first).await;
    assert_eq!(step_statuses(&run, "go"), ["completed"], "{run:#}");
    assert_eq!(step_statuses(&run, "review"), ["skipped"], "{run:#}");
    assert_eq!(service.requests_to("/echo/go").len(), 1);
    assert_eq!(service.requests_to("/echo/review").len(), 0);

    let second = api
        .invoke_sync("conditional", json!({ "go": false, "score": 0.5 }))
        .await;
    assert_eq!(second["run_status"], "completed", "{second}");
    let run = record(&api, &second).await;
    assert_eq!(step_statuses(&run, "go"), ["skipped"], "{run:#}");
    assert_eq!(step_statuses(&run, "review"), ["completed"], "{run:#}");
    assert_eq!(service.requests_to("/echo/go").len(), 1);
    assert_eq!(service.requests_to("/echo/review").len(), 1);
}

#[tokio::test]
async fn a_delay_puts_the_run_in_waiting_and_then_goes_on() {
    let server = Server::start_default().await;
    let api = server.api();
    let receiver = Receiver::start().await;
    api.deploy(&delay_workflow("pause", "2s")).await;
    let id = api
        .invoke_async("pause", json!({ "p": 1 }), &receiver.callback_url())
        .await;

    let waiting = api
        .wait_run_until(&id, |r| {
            r["run_status"] != "queued" && r["run_status"] != "running"
        })
        .await;
    assert_eq!(
        waiting["run_status"], "waiting",
        "only a delay is open: {waiting:#}"
    );

    let run = api.wait_run(&id).await;
    assert_eq!(run["run_status"], "completed", "{run:#}");
    assert_eq!(run["output"]["result"], json!({ "p": 1 }));
    let delay = &step_attempts(&run, "wait")[0];
    assert_eq!(delay["status"], "completed");
    let waited = ts(&delay["finished_at"])
        .duration_since(ts(&delay["started_at"]))
        .unwrap();
    assert!(
        waited >= Duration::from_millis(1900),
        "a 2s delay lasted {waited:?}: {delay}"
    );
    let done = &step_attempts(&run, "done")[0];
    assert!(
        ts(&done["started_at"]) >= ts(&delay["finished_at"]),
        "{run:#}"
    );
}

#[tokio::test]
async fn independent_steps_run_concurrently_and_join() {
    let server = Server::start_default().await;
    let api = server.api();
    let service = Service::start().await;
    let slow = |id: &str| {
        json!({ "id": id, "kind": "http",
                "request": { "method": "GET", "url": service.url(&format!("/slow/800/{id}")) } })
    };
    let def = workflow(
        "fanout",
        json!([
            slow("left"),
            slow("right"),
            { "id": "join", "kind": "transform", "needs": ["left", "right"],
              "value": { "left": "{{ steps.left.output.slept_ms }}", "right": "{{ steps.right.output.slept_ms }}" } },
        ]),
        "{{ steps.join.output }}",
    );
    let answer = run_sync(&api, &def, json!({})).await;
    assert_eq!(answer["run_status"], "completed", "{answer}");
    assert_eq!(
        answer["output"]["result"],
        json!({ "left": 800, "right": 800 })
    );

    let left = &service.requests_to("/slow/800/left")[0];
    let right = &service.requests_to("/slow/800/right")[0];
    let (left_done, right_done) = (left.done.unwrap(), right.done.unwrap());
    assert!(
        left.at < right_done && right.at < left_done,
        "independent steps must overlap: left {:?}..{:?}, right {:?}..{:?}",
        left.at,
        left_done,
        right.at,
        right_done
    );
}

#[tokio::test]
async fn http_steps_to_non_allowed_addresses_are_refused() {
    let server = Server::start(ServerOpts::default().without("--allow-network")).await;
    let api = server.api();
    let service = Service::start().await;
    let answer = run_sync(
        &api,
        &http_workflow("local", &service.url("/echo/private")),
        json!({}),
    )
    .await;
    assert_eq!(answer["run_status"], "failed", "{answer}");
    assert!(
        answer["error"].to_string().contains("remote_call"),
        "{answer}"
    );
    assert!(
        service.requests().is_empty(),
        "hookflow reached a loopback address"
    );
}
