//! Several nodes on one PostgreSQL database (always PostgreSQL, whatever
//! `HOOKFLOW_TEST_BACKEND` says): three `hookflow serve` processes share a few thousand async
//! runs; one is SIGKILLed mid-load and restarted later; every run must complete and every run's
//! callback must arrive (duplicates only as retries of the same event, same `webhook-id`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Runs invoked in total.
const RUNS: usize = 2000;
/// Invocations in flight at once.
const PARALLEL: usize = 32;
const NODES: usize = 3;
/// Which node is killed, after a third of the runs were accepted, and restarted after two thirds.
const VICTIM: usize = 1;
/// Liveness bound for the whole load to settle (a dead node's leases expire after ~30 s).
const SETTLE: Duration = Duration::from_secs(150);

/// An `http` step to the in-test service, a short `delay`, a `transform`.
fn pipeline(service: &Service) -> Value {
    workflow(
        "pipeline",
        json!([
            { "id": "call", "kind": "http", "timeout": "5s",
              "request": { "method": "POST", "url": service.url("/echo/pipeline"),
                           "body": { "n": "{{ inputs.n }}" } } },
            { "id": "pause", "kind": "delay", "needs": ["call"], "duration": "300ms" },
            { "id": "result", "kind": "transform", "needs": ["pause"],
              "value": { "n": "{{ inputs.n }}", "echoed": "{{ steps.call.output.body.n }}" } },
        ]),
        "{{ steps.result.output }}",
    )
}

/// Invokes run `n` (with `Idempotency-Key: multi-n`) on node `n % NODES`, moving on to the next
/// node when one cannot be reached; answers the request id.
async fn invoke_somewhere(nodes: &Mutex<Vec<Api>>, n: usize, callback_url: &str) -> String {
    let body = json!({
        "deployment": "pipeline", "inputs": { "n": n },
        "async": { "enabled": true, "callback_url": callback_url },
    });
    let key = format!("multi-{n}");
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        let api = nodes.lock().unwrap()[(n + attempt) % NODES].clone();
        let outcome = api
            .try_send(
                "POST",
                "/v1/workflow/invoke",
                Some(&body),
                &[("Idempotency-Key", &key)],
            )
            .await;
        match outcome {
            Ok((202, answer)) => return str_of(&answer["request_id"]),
            // A node that dies mid-request may leave the run accepted: the same key on another
            // node answers that run instead of starting a second one.
            Ok((status, answer)) if status >= 500 => {
                eprintln!("run {n}: {} answered {status} {answer}", api.base);
            }
            Ok((status, answer)) => panic!("run {n}: invoke on {} -> {status} {answer}", api.base),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "run {n}: no node accepted it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// Waits until `done()` is at least `n`.
async fn wait_count(what: &str, n: usize, done: impl Fn() -> usize) {
    let deadline = Instant::now() + SETTLE;
    while done() < n {
        assert!(Instant::now() < deadline, "{what}: {} of {n}", done());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every run of the workspace (all pages), by request id.
async fn all_runs(api: &Api) -> BTreeMap<String, Value> {
    let mut runs = BTreeMap::new();
    let mut query = "limit=1000".to_string();
    loop {
        let (status, page) = api.get(&format!("/v1/workflow/runs?{query}")).await;
        assert_eq!(status, 200, "{page}");
        for run in page["data"].as_array().expect("data") {
            runs.insert(str_of(&run["request_id"]), run.clone());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=1000&cursor={}", enc(cursor)),
            None => return runs,
        }
    }
}

fn tally(runs: &BTreeMap<String, Value>) -> BTreeMap<String, usize> {
    let mut by_status = BTreeMap::new();
    for run in runs.values() {
        *by_status.entry(str_of(&run["run_status"])).or_insert(0) += 1;
    }
    by_status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_node_every_run_completes_and_calls_back_when_a_node_dies() {
    let db = Arc::new(TestDb::postgres().await);
    let opts = ServerOpts::default().set("--retry-schedule", "1s,2s,5s,10s,20s,30s");
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Server::start_on(db.clone(), opts.clone()).await);
    }
    let service = Service::start().await;
    let receiver = Receiver::start().await;
    let dep = nodes[0].api().deploy(&pipeline(&service)).await;
    let apis = Arc::new(Mutex::new(
        nodes.iter().map(Server::api).collect::<Vec<_>>(),
    ));

    let started = Instant::now();
    let accepted = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut invokers = tokio::task::JoinSet::new();
    for n in 0..RUNS {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (to, counter, url) = (apis.clone(), accepted.clone(), receiver.callback_url());
        invokers.spawn(async move {
            let id = invoke_somewhere(&to, n, &url).await;
            counter.fetch_add(1, Ordering::SeqCst);
            drop(permit);
            (n, id)
        });
        if n == RUNS / 3 {
            wait_count("accepted", RUNS / 3, || accepted.load(Ordering::SeqCst)).await;
            nodes[VICTIM].kill().await;
            println!(
                "SIGKILLed node {VICTIM} after {} accepted runs",
                accepted.load(Ordering::SeqCst)
            );
        }
        if n == 2 * RUNS / 3 {
            nodes[VICTIM].restart().await;
            apis.lock().unwrap()[VICTIM] = nodes[VICTIM].api();
            println!(
                "restarted node {VICTIM} after {} accepted runs",
                accepted.load(Ordering::SeqCst)
            );
        }
    }
    let mut ids = vec![String::new(); RUNS];
    while let Some(joined) = invokers.join_next().await {
        let (n, id) = joined.expect("invoker");
        ids[n] = id;
    }
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), RUNS, "each invocation is its own run");
    println!("{RUNS} runs accepted in {:?}", started.elapsed());

    // Every run completes, whichever node ran which step.
    let api = nodes[0].api();
    let deadline = Instant::now() + SETTLE;
    let runs = loop {
        let runs = all_runs(&api).await;
        let by_status = tally(&runs);
        if by_status.get("completed") == Some(&RUNS) || Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let by_status = tally(&runs);
    let listed: BTreeSet<&String> = runs.keys().collect();
    assert_eq!(listed, unique, "exactly the accepted runs exist");

    // Every run calls back; retries of one event share its webhook-id.
    wait_count("runs with a callback", RUNS, || {
        receiver
            .requests_to("/callback")
            .iter()
            .map(|c| str_of(&c.json()["request_id"]))
            .collect::<BTreeSet<_>>()
            .len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let callbacks = receiver.requests_to("/callback");
    let index: BTreeMap<&String, usize> = ids.iter().enumerate().map(|(n, id)| (id, n)).collect();
    let mut events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for callback in &callbacks {
        verify_callback(callback, &dep.secret, &[&dep.secret]);
        let body = callback.json();
        assert_eq!(body["event_type"], "workflow.completed", "{body}");
        let id = str_of(&body["request_id"]);
        let n = index[&id];
        assert_eq!(
            body["data"]["output"]["result"],
            json!({ "n": n, "echoed": n }),
            "{body}"
        );
        events
            .entry(id)
            .or_default()
            .insert(callback.header("webhook-id").unwrap().to_string());
    }
    let calls = service.count_to("/echo/pipeline");
    println!(
        "multi-node: {} runs by status {by_status:?}; {} callbacks for {} runs ({} duplicates); \
         {calls} http step calls ({} repeated); {:?} in all",
        runs.len(),
        callbacks.len(),
        events.len(),
        callbacks.len() - events.len(),
        calls.saturating_sub(RUNS),
        started.elapsed()
    );
    assert_eq!(by_status.get("completed"), Some(&RUNS), "{by_status:?}");
    assert_eq!(events.len(), RUNS, "a callback for every run");
    for (id, event_ids) in &events {
        assert_eq!(
            event_ids.len(),
            1,
            "run {id} sent several events: {event_ids:?}"
        );
    }
    assert!(calls >= RUNS, "every run called the service: {calls}");

    // Timers and transforms ran once: no step of a sample of runs completed twice.
    for id in ids.iter().step_by(10) {
        let run = api.run(id).await;
        for step in ["call", "pause", "result"] {
            let statuses = step_statuses(&run, step);
            let completed = statuses.iter().filter(|s| *s == "completed").count();
            assert_eq!(completed, 1, "step {step} of {id}: {run:#}");
        }
    }
}

#[tokio::test]
async fn multi_node_a_sync_invoke_is_answered_when_another_node_ends_the_run() {
    let db = Arc::new(TestDb::postgres().await);
    let opts = ServerOpts::default().set("--sync-wait-limit", "20s");
    let waiter = Server::start_on(db.clone(), opts.clone()).await;
    let other = Server::start_on(db, opts).await;
    let service = Service::start().await;
    // One async step and nothing after it: its completion ends the run on the node that takes it.
    let solo = workflow(
        "solo",
        json!([{ "id": "work", "kind": "async_http", "url": service.url("/accept") }]),
        "{{ steps.work.output }}",
    );
    waiter.api().deploy(&solo).await;

    let api = waiter.api();
    let invoke = tokio::spawn(async move {
        api.invoke(&json!({ "deployment": "solo", "inputs": {} }))
            .await
    });
    let call = service.wait_for_path("/accept", 1, WAIT).await[0].clone();
    // Whichever node made the call, the completion goes to the node that does not wait.
    let (status, answer) = post_url(
        &format!("{}{}", other.base_url, url_path(&webhook_url(&call))),
        &json!({ "success": true, "outputs": { "done_by": "other node" } }),
    )
    .await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );

    let (status, body) = invoke.await.expect("sync invoke");
    assert_eq!(
        status, 200,
        "the waiting node answers once the run ended elsewhere: {body}"
    );
    assert_eq!(body["run_status"], "completed", "{body}");
    assert_eq!(
        body["output"]["result"],
        json!({ "done_by": "other node" }),
        "{body}"
    );
}
