//! Workflow definitions: saving (JSON and YAML), versions, listing, and validation at save time.

mod common;

use common::*;
use serde_json::{Value, json};

/// The error of a definition that must be rejected at save time.
async fn rejected(api: &Api, definition: &Value) -> String {
    let resp = api.create_workflow(definition).await;
    assert_error(&resp, 400, "invalid_definition", None);
    str_of(&resp.1["error"])
}

#[tokio::test]
async fn saving_the_same_name_again_makes_the_next_version() {
    let server = Server::start_default().await;
    let api = server.api();

    let v1 = echo_workflow("triage");
    let (status, body) = api.create_workflow(&v1).await;
    assert_eq!(
        (status, &body),
        (201, &json!({ "name": "triage", "version": 1 }))
    );

    let mut v2 = echo_workflow("triage");
    v2["description"] = json!("second take");
    let (status, body) = api.create_workflow(&v2).await;
    assert_eq!(
        (status, &body),
        (201, &json!({ "name": "triage", "version": 2 }))
    );

    let (status, list) = api.get("/v1/workflows").await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "one workflow, two versions: {list}");
    assert_eq!(data[0]["name"], "triage");
    assert_eq!(data[0]["latest_version"], 2);
    assert!(list["next_cursor"].is_null(), "{list}");

    let (status, one) = api.get("/v1/workflows/triage").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["name"], "triage");
    let versions = one["versions"].as_array().expect("versions");
    let mut numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2], "{one}");
    for v in versions {
        ts(&v["created_at"]);
        assert_eq!(v["definition"]["steps"][0]["id"], "echo", "{v}");
    }
    let second = versions.iter().find(|v| v["version"] == 2).unwrap();
    assert_eq!(second["definition"]["description"], "second take");
    let first = versions.iter().find(|v| v["version"] == 1).unwrap();
    assert!(
        first["definition"]
            .get("description")
            .is_none_or(Value::is_null),
        "{first}"
    );
}

#[tokio::test]
async fn yaml_definitions_are_accepted_and_run() {
    let server = Server::start_default().await;
    let api = server.api();
    let yaml = "\
name: greet
description: says hello
inputs:
  type: object
  required: [who]
steps:
  - id: hello
    kind: transform
    value:
      greeting: \"Hello, {{ inputs.who }}!\"
output: \"{{ steps.hello.output }}\"
";
    let resp = api
        .raw(
            "POST",
            "/v1/workflows",
            Some("application/yaml"),
            Some(yaml.into()),
            &[],
        )
        .await;
    assert_eq!(resp, (201, json!({ "name": "greet", "version": 1 })));

    let (status, one) = api.get("/v1/workflows/greet").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["versions"][0]["definition"]["steps"][0]["id"], "hello");

    let (status, _) = api
        .create_deployment(&json!({ "name": "greet", "workflow": "greet" }))
        .await;
    assert_eq!(status, 201);
    let body = api.invoke_sync("greet", json!({ "who": "Ada" })).await;
    assert_eq!(body["run_status"], "completed", "{body}");
    assert_eq!(
        body["output"]["result"],
        json!({ "greeting": "Hello, Ada!" })
    );
}

#[tokio::test]
async fn a_needs_typo_is_rejected_naming_the_step_and_saves_nothing() {
    let server = Server::start_default().await;
    let api = server.api();
    let (status, _) = api.create_workflow(&echo_workflow("triage")).await;
    assert_eq!(status, 201);

    let bad = workflow(
        "triage",
        json!([
            { "id": "classify", "kind": "transform", "value": 1 },
            { "id": "result", "kind": "transform", "needs": ["clasify"], "value": 2 },
        ]),
        "{{ steps.result.output }}",
    );
    let error = rejected(&api, &bad).await;
    assert!(
        error.contains("clasify"),
        "error should name the unknown step: {error}"
    );

    let (_, one) = api.get("/v1/workflows/triage").await;
    assert_eq!(one["versions"].as_array().map(Vec::len), Some(1), "{one}");
    let (status, body) = api.create_workflow(&echo_workflow("triage")).await;
    assert_eq!((status, &body["version"]), (201, &json!(2)), "{body}");
}

#[tokio::test]
async fn a_cycle_is_rejected_naming_a_step_in_it() {
    let server = Server::start_default().await;
    let api = server.api();
    let bad = workflow(
        "loop",
        json!([
            { "id": "start", "kind": "transform", "value": 0 },
            { "id": "alpha", "kind": "transform", "needs": ["start", "beta"], "value": 1 },
            { "id": "beta", "kind": "transform", "needs": ["alpha"], "value": 2 },
        ]),
        "{{ steps.beta.output }}",
    );
    let error = rejected(&api, &bad).await;
    assert!(error.to_lowercase().contains("cycle"), "{error}");
    assert!(error.contains("alpha") || error.contains("beta"), "{error}");

    let self_loop = workflow(
        "self",
        json!([{ "id": "ouroboros", "kind": "transform", "needs": ["ouroboros"], "value": 1 }]),
        "{{ steps.ouroboros.output }}",
    );
    let error = rejected(&api, &self_loop).await;
    assert!(error.contains("ouroboros"), "{error}");

    let (status, _) = api.get("/v1/workflows/loop").await;
    assert_eq!(status, 404, "a rejected definition must not be saved");
}

#[tokio::test]
async fn duplicate_step_ids_are_rejected_naming_the_step() {
    let server = Server::start_default().await;
    let api = server.api();
    let bad = workflow(
        "dupes",
        json!([
            { "id": "enrich", "kind": "transform", "value": 1 },
            { "id": "enrich", "kind": "transform", "value": 2 },
        ]),
        "{{ steps.enrich.output }}",
    );
    let error = rejected(&api, &bad).await;
    assert!(error.to_lowercase().contains("duplicate"), "{error}");
    assert!(error.contains("enrich"), "{error}");
}

#[tokio::test]
async fn malformed_definitions_are_rejected() {
    let server = Server::start_default().await;
    let api = server.api();

    let unknown_kind = workflow(
        "teleport",
        json!([{ "id": "beam", "kind": "teleport" }]),
        "{{ steps.beam.output }}",
    );
    let error = rejected(&api, &unknown_kind).await;
    assert!(
        error.contains("beam") || error.contains("teleport"),
        "{error}"
    );

    let http_without_request = workflow(
        "broken",
        json!([{ "id": "call", "kind": "http" }]),
        "{{ steps.call.output }}",
    );
    let error = rejected(&api, &http_without_request).await;
    assert!(error.contains("call"), "{error}");

    // No name: rejected (whatever the code), nothing saved.
    let (status, body) = api
        .create_workflow(&json!({ "steps": [{ "id": "a", "kind": "transform", "value": 1 }] }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].is_string() && body["error_code"].is_string(),
        "{body}"
    );

    let (status, body) = api
        .raw(
            "POST",
            "/v1/workflows",
            Some("application/json"),
            Some(b"{not json".to_vec()),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].is_string() && body["error_code"].is_string(),
        "{body}"
    );

    let (status, list) = api.get("/v1/workflows").await;
    assert_eq!((status, &list["data"]), (200, &json!([])), "{list}");
}

#[tokio::test]
async fn workflows_list_pages_newest_first() {
    let server = Server::start_default().await;
    let api = server.api();
    for name in ["first", "second", "third"] {
        let (status, _) = api.create_workflow(&echo_workflow(name)).await;
        assert_eq!(status, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| str_of(&w["name"]))
            .collect()
    };

    let (status, page1) = api.get("/v1/workflows?limit=2").await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(names(&page1), ["third", "second"]);
    let cursor = str_of(&page1["next_cursor"]);

    let (status, page2) = api
        .get(&format!("/v1/workflows?limit=2&cursor={}", enc(&cursor)))
        .await;
    assert_eq!(status, 200, "{page2}");
    assert_eq!(names(&page2), ["first"]);
    assert!(page2["next_cursor"].is_null(), "{page2}");
}

#[tokio::test]
async fn unknown_workflow_is_404() {
    let server = Server::start_default().await;
    let (status, body) = server.api().get("/v1/workflows/nope").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].is_string() && body["error_code"].is_string(),
        "{body}"
    );
}
