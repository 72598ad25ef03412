//! The run log: one run's record, listing with filters and paging (cancelling: `cancel.rs`).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn a_run_record_shows_everything_about_the_run() {
    let server = Server::start_default().await;
    let api = server.api();
    let def = workflow(
        "record",
        json!([
            { "id": "a", "kind": "transform", "value": { "x": "{{ inputs.x }}" } },
            { "id": "b", "kind": "transform", "needs": ["a"], "value": "{{ steps.a.output.x }}" },
        ]),
        "{{ steps.b.output }}",
    );
    let dep = api
        .deploy_with(
            &def,
            json!({ "name": "rec", "variants": { "default": { "settings": { "m": "s" } } } }),
        )
        .await;
    let (status, answer) = api
        .invoke(&json!({ "deployment": "rec", "inputs": { "x": 5 }, "user": "u-1", "metadata": { "k": "v" } }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = str_of(&answer["request_id"]);

    let run = api.run(&id).await;
    let expect = [
        ("request_id", json!(id)),
        ("run_status", json!("completed")),
        ("deployment", json!("rec")),
        ("deployment_id", json!(dep.id)),
        ("variant", json!("default")),
        ("version", json!(1)),
        ("workflow", json!("record")),
        ("source", json!("api")),
        ("delivery", json!("direct")),
        ("async", Value::Null),
        ("inputs", json!({ "x": 5 })),
        ("user", json!("u-1")),
        ("metadata", json!({ "k": "v" })),
        (
            "output",
            json!({ "result": 5, "settings": { "m": "s" }, "assets": [] }),
        ),
    ];
    for (field, value) in expect {
        assert_eq!(run.get(field), Some(&value), "field {field} of {run:#}");
    }
    assert!(run.get("error").is_none_or(Value::is_null), "{run:#}");
    let (created, started, finished) = (
        ts(&run["created_at"]),
        ts(&run["started_at"]),
        ts(&run["finished_at"]),
    );
    assert!(created <= started && started <= finished, "{run:#}");

    let steps = run["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{run:#}");
    for (step_id, output) in [("a", json!({ "x": 5 })), ("b", json!(5))] {
        let attempts = step_attempts(&run, step_id);
        assert_eq!(attempts.len(), 1, "{run:#}");
        let step = &attempts[0];
        assert_eq!(step["attempt"], 1);
        assert_eq!(step["status"], "completed");
        assert_eq!(step["output"], output, "{step}");
        assert!(step.get("error").is_none_or(Value::is_null), "{step}");
        assert!(
            ts(&step["started_at"]) <= ts(&step["finished_at"]),
            "{step}"
        );
    }
    assert!(
        ts(&step_attempts(&run, "b")[0]["started_at"])
            >= ts(&step_attempts(&run, "a")[0]["finished_at"]),
        "b needs a: {run:#}"
    );
}

#[tokio::test]
async fn unknown_runs_are_404() {
    let server = Server::start_default().await;
    let api = server.api();
    for id in [
        "req_0123456789abcdef0123456789abcdef",
        "req_nope",
        "anything",
    ] {
        assert_error(
            &api.get(&format!("/v1/workflow/runs/{id}")).await,
            404,
            "not_found",
            Some("Request not found"),
        );
    }
}

#[tokio::test]
async fn the_run_list_pages_newest_first() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(str_of(
            &api.invoke_sync("echo", json!({ "n": n })).await["request_id"],
        ));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "request ids are time-ordered");

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={}", enc(c)),
            None => "limit=2".to_string(),
        };
        let (status, page) = api.get(&format!("/v1/workflow/runs?{query}")).await;
        assert_eq!(status, 200, "{page}");
        for run in page["data"].as_array().unwrap() {
            assert!(
                run.get("steps").is_none(),
                "list items carry no steps: {run}"
            );
            assert!(
                run["run_status"].is_string() && run["inputs"].is_object(),
                "{run}"
            );
        }
        pages.push(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| str_of(&r["request_id"]))
                .collect::<Vec<_>>(),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(
        pages,
        [
            &newest_first[0..2],
            &newest_first[2..4],
            &newest_first[4..5]
        ]
    );
    assert_eq!(
        api.list_run_ids("").await,
        newest_first,
        "default page holds all five"
    );
}

#[tokio::test]
async fn the_run_list_filters() {
    let server = Server::start_default().await;
    let api = server.api();
    let receiver = Receiver::start().await;
    api.deploy(&echo_workflow("alpha")).await;
    let beta = api
        .deploy(&http_workflow("beta", &receiver.url("/status/500")))
        .await;

    let invoke = |deployment: &str, user: &str, metadata: Value, callback: bool| {
        let mut body =
            json!({ "deployment": deployment, "inputs": {}, "user": user, "metadata": metadata });
        if callback {
            body["async"] = json!({ "enabled": true, "callback_url": receiver.callback_url() });
        }
        let api = api.clone();
        async move {
            let (status, answer) = api.invoke(&body).await;
            assert!(status == 200 || status == 202, "{answer}");
            let id = str_of(&answer["request_id"]);
            api.wait_run(&id).await;
            id
        }
    };
    let r1 = invoke(
        "alpha",
        "u1",
        json!({ "team": "red", "ticket": 981 }),
        false,
    )
    .await;
    let r2 = invoke(
        "alpha",
        "u2",
        json!({ "team": "blue", "ticket": 982 }),
        true,
    )
    .await;
    let r3 = invoke("beta", "u1", json!({ "team": "red" }), false).await;

    let cases: Vec<(String, Vec<&String>)> = vec![
        ("status=failed".into(), vec![&r3]),
        ("status=completed".into(), vec![&r2, &r1]),
        ("status=running".into(), vec![]),
        ("delivery=callback".into(), vec![&r2]),
        ("delivery=direct".into(), vec![&r3, &r1]),
        ("deployment=alpha".into(), vec![&r2, &r1]),
        ("deployment=beta".into(), vec![&r3]),
        (format!("deployment={}", beta.id), vec![&r3]),
        ("user=u1".into(), vec![&r3, &r1]),
        ("metadata.team=red".into(), vec![&r3, &r1]),
        ("metadata.team=blue".into(), vec![&r2]),
        ("metadata.ticket=981".into(), vec![&r1]),
        ("metadata.team=green".into(), vec![]),
        ("source=api".into(), vec![&r3, &r2, &r1]),
        ("source=webhook".into(), vec![]),
        (
            "deployment=alpha&user=u1&metadata.team=red".into(),
            vec![&r1],
        ),
    ];
    for (query, expected) in cases {
        let got = api.list_run_ids(&query).await;
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(got, expected, "?{query}");
    }
}

#[tokio::test]
async fn the_run_list_filters_by_time() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let before = str_of(&api.invoke_sync("echo", json!({})).await["request_id"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = str_of(&api.invoke_sync("echo", json!({})).await["request_id"]);

    assert_eq!(
        api.list_run_ids(&format!("since={cut}")).await,
        vec![after.clone()]
    );
    assert_eq!(
        api.list_run_ids(&format!("until={cut}")).await,
        vec![before.clone()]
    );
    assert_eq!(
        api.list_run_ids("since=2000-01-01T00:00:00Z").await,
        [after, before]
    );
}

#[tokio::test]
async fn the_run_list_limit_is_bounded() {
    let server = Server::start_default().await;
    let api = server.api();
    let (status, body) = api.get("/v1/workflow/runs?limit=1000").await;
    assert_eq!((status, &body["data"]), (200, &json!([])), "{body}");
    assert!(body["next_cursor"].is_null(), "{body}");
    let resp = api.get("/v1/workflow/runs?limit=1001").await;
    assert_error(&resp, 400, "validation_error", None);
}

#[tokio::test]
async fn a_query_parameter_given_twice_is_refused() {
    let server = Server::start_default().await;
    let api = server.api();
    let resp = api
        .get("/v1/workflow/runs?status=failed&status=completed")
        .await;
    assert_error(
        &resp,
        400,
        "validation_error",
        Some("query parameter \"status\" is given more than once"),
    );
    let resp = api.get("/v1/workflow/approvals?limit=5&limit=6").await;
    assert_error(
        &resp,
        400,
        "validation_error",
        Some("query parameter \"limit\" is given more than once"),
    );
    // The same name once, next to others, is fine.
    let (status, body) = api.get("/v1/workflow/runs?status=failed&limit=5").await;
    assert_eq!((status, &body["data"]), (200, &json!([])), "{body}");
}
