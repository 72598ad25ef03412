//! The command-line client (`workflows`, `deployments`, `invoke`, `runs`, `approvals`): the
//! real binary against a real server, asserting on what it prints and how it exits.

mod common;

use common::*;
use serde_json::{Value, json};

/// Runs `hookflow ARGS… --url URL --api-key KEY` (the connection flags go after the
/// subcommand: they are global).
async fn hf(server: &Server, args: &[&str]) -> CliOutput {
    let mut all = args.to_vec();
    all.extend(["--url", &server.base_url, "--api-key", &server.key]);
    cli(&all).await
}

/// Runs a client command that must succeed; returns the JSON it printed.
async fn ok(server: &Server, args: &[&str]) -> Value {
    let out = hf(server, args).await;
    assert_eq!(
        out.code,
        Some(0),
        "hookflow {args:?} failed:\n{}{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("hookflow {args:?} printed no JSON ({e}): {}", out.stdout))
}

/// Asserts a failed command: a non-zero exit, nothing on stdout, and `needles` on stderr.
fn assert_fails(out: &CliOutput, needles: &[&str]) {
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "must fail: {:?}\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.is_empty(), "stdout of a failure: {}", out.stdout);
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            out.stderr
        );
    }
}

/// Runs a client command that must fail with `needles` on stderr.
async fn fails(server: &Server, args: &[&str], needles: &[&str]) {
    assert_fails(&hf(server, args).await, needles);
}

/// Writes a scratch file of the server's and returns its path.
fn scratch(server: &Server, name: &str, text: &str) -> String {
    let path = server.dir().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const GREET_YAML: &str = r#"
name: greet
description: Say hello
inputs: { type: object, required: [name] }
steps:
  - id: hello
    kind: transform
    value: { greeting: "Hello, {{ inputs.name }}!", model: "{{ settings.model }}" }
output: "{{ steps.hello.output }}"
"#;

#[tokio::test]
async fn workflows_and_deployments_are_managed_from_the_command_line() {
    let server = Server::start_default().await;
    let yaml = scratch(&server, "greet.yaml", GREET_YAML);
    let saved = ok(&server, &["workflows", "create", "--file", &yaml]).await;
    assert_eq!(saved, json!({ "name": "greet", "version": 1 }));

    // JSON from standard input makes the next version.
    let mut child = command()
        .args([
            "workflows",
            "create",
            "--file",
            "-",
            "--url",
            &server.base_url,
        ])
        .args(["--api-key", &server.key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let definition = json!({
        "name": "greet",
        "steps": [{ "id": "hello", "kind": "transform", "value": "{{ inputs }}" }],
    });
    tokio::io::AsyncWriteExt::write_all(
        child.stdin.as_mut().unwrap(),
        definition.to_string().as_bytes(),
    )
    .await
    .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved, json!({ "name": "greet", "version": 2 }));

    let listed = ok(&server, &["workflows", "list"]).await;
    assert_eq!(listed["data"][0]["name"], "greet", "{listed}");
    assert_eq!(listed["data"][0]["latest_version"], 2, "{listed}");
    assert_eq!(listed["next_cursor"], Value::Null, "{listed}");
    let got = ok(&server, &["workflows", "get", "greet"]).await;
    let versions = got["versions"].as_array().unwrap();
    let first = versions
        .iter()
        .find(|v| v["version"] == 1)
        .expect("version 1");
    assert_eq!(versions.len(), 2, "{got}");
    assert_eq!(first["definition"]["description"], "Say hello", "{got}");

    let created = ok(
        &server,
        &[
            "deployments",
            "create",
            "--name",
            "greet",
            "--workflow",
            "greet",
            "--version",
            "1",
            "--settings",
            r#"{"model": "small"}"#,
            "--concurrency-limit",
            "5",
        ],
    )
    .await;
    let id = str_of(&created["id"]);
    assert!(id.starts_with("dep_"), "{created}");
    assert!(
        str_of(&created["secret"]).starts_with("whsec_"),
        "{created}"
    );
    assert_eq!(
        created["variants"]["default"],
        json!({ "version": 1, "settings": { "model": "small" } })
    );
    assert_eq!(created["concurrency_limit"], 5);

    // Deployments are named by name or id; the listing has them.
    assert_eq!(
        ok(&server, &["deployments", "get", "greet"]).await["id"],
        id
    );
    assert_eq!(
        ok(&server, &["deployments", "get", &id]).await["name"],
        "greet"
    );
    let listed = ok(&server, &["deployments", "list"]).await;
    assert_eq!(listed["data"][0]["id"], id, "{listed}");

    // The new variant pins the latest version; the limit goes.
    let updated = ok(
        &server,
        &[
            "deployments",
            "update",
            "greet",
            "--variant",
            "beta",
            "--settings",
            r#"{"model": "large"}"#,
            "--no-concurrency-limit",
        ],
    )
    .await;
    assert_eq!(
        updated["variants"]["beta"],
        json!({ "version": 2, "settings": { "model": "large" } })
    );
    assert_eq!(updated["variants"]["default"]["version"], 1, "{updated}");
    assert_eq!(updated["concurrency_limit"], Value::Null, "{updated}");
    fails(
        &server,
        &["deployments", "update", "greet"],
        &["nothing to change"],
    )
    .await;

    let rotated = ok(
        &server,
        &["deployments", "rotate-secret", &id, "--grace-period", "1h"],
    )
    .await;
    assert_ne!(rotated["secret"], created["secret"], "{rotated}");
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );

    // The API's errors reach stderr with their status, code and message.
    fails(
        &server,
        &["workflows", "get", "nope"],
        &["404", "not_found", "Workflow not found"],
    )
    .await;
    let cyclic = scratch(
        &server,
        "cyclic.yaml",
        "name: loop\nsteps:\n  - { id: a, kind: transform, value: 1, needs: [b] }\n  - { id: b, kind: transform, value: 2, needs: [a] }\n",
    );
    fails(
        &server,
        &["workflows", "create", "--file", &cyclic],
        &["400", "invalid_definition"],
    )
    .await;
    fails(
        &server,
        &[
            "deployments",
            "create",
            "--name",
            "greet",
            "--workflow",
            "greet",
        ],
        &["409", "already_exists"],
    )
    .await;
}

#[tokio::test]
async fn invoke_sync_and_async_then_list_read_and_replay_the_runs() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&echo_workflow("echo")).await;
    let receiver = Receiver::start().await;

    // Sync: the answer is the result.
    let sync = ok(
        &server,
        &[
            "invoke",
            "echo",
            "--inputs",
            r#"{"name": "Ada"}"#,
            "--user",
            "customer-42",
            "--metadata",
            r#"{"ticket": 981, "vip": true}"#,
        ],
    )
    .await;
    assert_eq!(sync["run_status"], "completed", "{sync}");
    assert_eq!(sync["output"]["result"], json!({ "name": "Ada" }), "{sync}");
    let sync_id = str_of(&sync["request_id"]);

    // Async: 202 at once, the result arrives as a callback.
    let inputs = scratch(&server, "inputs.json", r#"{"name": "Grace"}"#);
    let callback = receiver.callback_url();
    let queued = ok(
        &server,
        &[
            "invoke",
            "echo",
            "--input-file",
            &inputs,
            "--callback-url",
            &callback,
        ],
    )
    .await;
    let async_id = str_of(&queued["request_id"]);
    assert!(is_request_id(&async_id), "{queued}");
    assert!(str_of(&queued["webhook_secret"]).starts_with("whsec_"));
    let delivered = receiver.callbacks(1).await.remove(0).json();
    assert_eq!(delivered["request_id"], async_id.as_str());
    assert_eq!(
        delivered["data"]["output"]["result"],
        json!({ "name": "Grace" })
    );
    api.wait_run(&async_id).await;

    let run = ok(&server, &["runs", "get", &async_id]).await;
    assert_eq!(run["run_status"], "completed", "{run}");
    assert_eq!(run["delivery"], "callback", "{run}");
    assert_eq!(run["inputs"], json!({ "name": "Grace" }), "{run}");
    assert_eq!(run["steps"][0]["step_id"], "echo", "{run}");

    // Listing with the API's filters and paging.
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| str_of(&r["request_id"]))
            .collect()
    };
    let all = ok(
        &server,
        &[
            "runs",
            "list",
            "--deployment",
            "echo",
            "--status",
            "completed",
        ],
    )
    .await;
    assert_eq!(ids(&all), [async_id.as_str(), sync_id.as_str()], "{all}");
    let vip = ok(
        &server,
        &[
            "runs",
            "list",
            "--metadata",
            "vip=true",
            "--user",
            "customer-42",
        ],
    )
    .await;
    assert_eq!(ids(&vip), [sync_id.as_str()], "{vip}");
    let first = ok(&server, &["runs", "list", "--limit", "1"]).await;
    assert_eq!(ids(&first), [async_id.as_str()], "{first}");
    let cursor = str_of(&first["next_cursor"]);
    let second = ok(
        &server,
        &["runs", "list", "--limit", "1", "--cursor", &cursor],
    )
    .await;
    assert_eq!(ids(&second), [sync_id.as_str()], "{second}");
    let every = ok(&server, &["runs", "list", "--limit", "1", "--all"]).await;
    assert_eq!(
        ids(&every),
        [async_id.as_str(), sync_id.as_str()],
        "{every}"
    );
    assert_eq!(every["next_cursor"], Value::Null);

    // The delivery log, and a replay recorded as a manual attempt.
    let log = ok(&server, &["runs", "deliveries", &async_id]).await;
    assert_eq!(log["data"][0]["status_code"], 200, "{log}");
    assert_eq!(log["data"][0]["trigger"], "scheduled", "{log}");
    let replay = ok(&server, &["runs", "retry", &async_id]).await;
    assert_eq!(replay["trigger"], "manual", "{replay}");
    assert_eq!(replay["status_code"], 200, "{replay}");
    assert_eq!(receiver.callbacks(2).await.len(), 2);
    let log = ok(&server, &["runs", "deliveries", &async_id]).await;
    assert_eq!(log["data"].as_array().unwrap().len(), 2, "{log}");

    // A sync run has no callback URL: the replay needs one.
    fails(
        &server,
        &["runs", "retry", &sync_id],
        &["400", "callback_url is required"],
    )
    .await;
    let sent = ok(
        &server,
        &["runs", "retry", &sync_id, "--callback-url", &callback],
    )
    .await;
    assert_eq!(sent["status_code"], 200, "{sent}");

    // The same idempotency key starts nothing new.
    let args = [
        "invoke",
        "echo",
        "--inputs",
        r#"{"n": 1}"#,
        "--idempotency-key",
        "order-7",
    ];
    let once = ok(&server, &args).await;
    let again = ok(&server, &args).await;
    assert_eq!(once["request_id"], again["request_id"]);
}

#[tokio::test]
async fn runs_are_cancelled_from_the_command_line() {
    let server = Server::start_default().await;
    server.api().deploy(&delay_workflow("slow", "1h")).await;
    let receiver = Receiver::start().await;
    let started = ok(
        &server,
        &["invoke", "slow", "--callback-url", &receiver.callback_url()],
    )
    .await;
    let id = str_of(&started["request_id"]);

    let cancelled = ok(&server, &["runs", "cancel", &id, "--reason", "not needed"]).await;
    assert_eq!(cancelled["run_status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["error"], "Workflow cancelled: not needed");
    let event = receiver.callbacks(1).await.remove(0).json();
    assert_eq!(event["event_type"], "workflow.cancelled", "{event}");

    fails(&server, &["runs", "cancel", &id], &["409", "run_finished"]).await;
}

#[tokio::test]
async fn approvals_are_answered_from_the_command_line() {
    let server = Server::start_default().await;
    let api = server.api();
    api.deploy(&human_workflow("ship", json!({}))).await;
    let receiver = Receiver::start().await;
    let callback = receiver.callback_url();
    let mut runs = Vec::new();
    for item in ["v1", "v2"] {
        let inputs = json!({ "item": item }).to_string();
        let args = [
            "invoke",
            "ship",
            "--inputs",
            &inputs,
            "--callback-url",
            &callback,
        ];
        runs.push(str_of(&ok(&server, &args).await["request_id"]));
    }
    let first = str_of(&api.wait_pending_approval(&runs[0]).await["id"]);
    let second = str_of(&api.wait_pending_approval(&runs[1]).await["id"]);

    let pending = ok(&server, &["approvals", "list", "--status", "pending"]).await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 2, "{pending}");
    let got = ok(&server, &["approvals", "get", &first]).await;
    assert_eq!(got["prompt"], "Ship v1?", "{got}");

    let approved = ok(
        &server,
        &[
            "approvals",
            "approve",
            &first,
            "--responder",
            "ed@example.com",
            "--comment",
            "ship it",
            "--data",
            r#"{"channel": "stable"}"#,
        ],
    )
    .await;
    assert_eq!(approved["status"], "approved", "{approved}");
    let run = api.wait_run(&runs[0]).await;
    assert_eq!(run["run_status"], "completed", "{run}");
    assert_eq!(run["output"]["result"]["responder"], "ed@example.com");
    assert_eq!(
        run["output"]["result"]["data"],
        json!({ "channel": "stable" })
    );

    let rejected = ok(
        &server,
        &["approvals", "reject", &second, "--comment", "no"],
    )
    .await;
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_eq!(api.wait_run(&runs[1]).await["run_status"], "failed");

    fails(
        &server,
        &["approvals", "approve", &second],
        &["409", "already_answered"],
    )
    .await;
}

#[tokio::test]
async fn failures_are_reported_on_stderr_with_a_non_zero_status() {
    let server = Server::start_default().await;
    let base = server.base_url.as_str();

    // A wrong key: the API's 401.
    let out = cli(&["runs", "list", "--url", base, "--api-key", "hf_wrong"]).await;
    assert_fails(&out, &["401", "unauthorized", "Invalid access."]);
    // No key at all: said before anything is sent.
    let out = cli(&["workflows", "list", "--url", base]).await;
    assert_fails(&out, &["no API key", "--api-key", "HOOKFLOW_API_KEY"]);

    // Unknown runs: the SPEC's 404.
    for id in ["req_0123456789abcdef0123456789abcdef", "not-a-run"] {
        fails(&server, &["runs", "get", id], &["404", "Request not found"]).await;
        fails(
            &server,
            &["runs", "deliveries", id],
            &["404", "Request not found"],
        )
        .await;
    }
    fails(&server, &["invoke", "nope"], &["404", "not_found"]).await;

    // Arguments that are checked before any request.
    let out = hf(&server, &["invoke", "echo", "--inputs", "{not json"]).await;
    assert_fails(&out, &["--inputs", "not valid JSON"]);
    let out = hf(&server, &["invoke", "echo", "--metadata", "[1]"]).await;
    assert_fails(&out, &["--metadata", "JSON object"]);
    let out = hf(&server, &["runs", "list", "--status", "done"]).await;
    assert_fails(&out, &["--status", "completed"]);

    // A server that is not there.
    let out = cli(&[
        "runs",
        "list",
        "--url",
        "http://127.0.0.1:9",
        "--api-key",
        &server.key,
    ])
    .await;
    assert_fails(&out, &["http://127.0.0.1:9/", "cannot reach"]);
}

#[tokio::test]
async fn the_connection_comes_from_the_environment_and_help_hides_the_key() {
    let server = Server::start_default().await;
    let out = command()
        .args(["workflows", "list"])
        .env("HOOKFLOW_URL", &server.base_url)
        .env("HOOKFLOW_API_KEY", &server.key)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, json!({ "data": [], "next_cursor": null }));

    let out = command()
        .args(["runs", "list", "--help"])
        .env("HOOKFLOW_API_KEY", &server.key)
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for flag in [
        "--url",
        "--api-key",
        "HOOKFLOW_API_KEY",
        "--status",
        "--all",
    ] {
        assert!(help.contains(flag), "runs list --help lacks {flag}: {help}");
    }
    assert!(!help.contains(&server.key), "--help shows the key: {help}");

    let out = cli(&["--help"]).await;
    for command in ["workflows", "deployments", "invoke", "runs", "approvals"] {
        assert!(
            out.stdout.contains(command),
            "--help lacks {command}: {}",
            out.stdout
        );
    }
}
