//! Creating runs: idempotency, concurrency limits and queueing, cancelling, listing.

use std::sync::Arc;

use hookflow_store::{
    AttemptEffect, AttemptRecord, Cancelled, ClaimedDelivery, CreatedRun, Delivery,
    IdempotencyClaim, JobKind, LeasedJob, Page, Plan, RunFilter, RunStatus, Source, StepResult,
    StepStatus, Terminal, Trigger,
};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::{DagPlanner, LEASE, T0, TestDb, deployment, event, fixture, new_run};

fn claim(key: &str, hash: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.into(),
        body_hash: hash.into(),
        response: json!({"run_status": "running"}),
    }
}

pub async fn create_and_read(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, None).await;
    let mut run = new_run(&dep, &["a", "b"]);
    run.user = Some("ann".into());
    run.metadata = json!({"k": "v"});
    run.settings = json!({"s": true});
    assert!(matches!(
        s.create_run(&run).await.unwrap(),
        CreatedRun::Created(RunStatus::Running)
    ));
    let stored = s.run(&ws.id, &run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
    assert_eq!(stored.deployment_id, dep.id);
    assert_eq!(stored.inputs, json!({"n": 1}));
    assert_eq!(stored.metadata, json!({"k": "v"}));
    assert_eq!(stored.settings, json!({"s": true}));
    assert_eq!(stored.user.as_deref(), Some("ann"));
    assert_eq!((stored.created_at, stored.started_at), (T0, Some(T0)));
    assert_eq!((stored.output, stored.finished_at), (None, None));
    assert!(s.run("ws_other", &run.id).await.unwrap().is_none());
    assert!(s.run_by_id(&run.id).await.unwrap().is_some());

    let steps = s.step_executions(&run.id).await.unwrap();
    let summary = steps
        .iter()
        .map(|e| (e.step_id.as_str(), e.attempt, e.status))
        .collect::<Vec<_>>();
    assert_eq!(
        summary,
        [
            ("a", 1, StepStatus::Scheduled),
            ("b", 1, StepStatus::Scheduled)
        ]
    );
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0));

    // A timer starts (and counts as running) as soon as it is scheduled.
    let mut timed = new_run(&dep, &["wait"]);
    timed.plan.start[0].running = true;
    timed.plan.start[0].run_at = T0 + 5_000;
    timed.plan.status = RunStatus::Waiting;
    s.create_run(&timed).await.unwrap();
    let stored = s.run_by_id(&timed.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Waiting);
    let wait = &s.step_executions(&timed.id).await.unwrap()[0];
    assert_eq!(
        (wait.status, wait.started_at),
        (StepStatus::Running, Some(T0))
    );

    // Runs read together: in id order, each once with its own executions, unknown ids left out.
    let ids = [timed.id.as_str(), "run_missing", run.id.as_str(), &run.id];
    let states = s.run_states(&ids).await.unwrap();
    let read: Vec<(&str, Vec<&str>)> = (states.iter())
        .map(|(r, steps)| {
            (
                r.id.as_str(),
                steps.iter().map(|e| e.step_id.as_str()).collect(),
            )
        })
        .collect();
    let mut expected = vec![
        (run.id.as_str(), vec!["a", "b"]),
        (timed.id.as_str(), vec!["wait"]),
    ];
    expected.sort();
    assert_eq!(read, expected);
    assert!(s.run_states(&["run_missing"]).await.unwrap().is_empty());
}

/// A run whose plan resolves its steps itself is written finished, with its event, in the
/// creating transaction; a queued run ignores its plan.
pub async fn created_finished(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, None).await;
    let mut run = new_run(&dep, &[]);
    let record = run.record();
    run.plan = Plan {
        inline: vec![
            ("shape".into(), StepResult::Completed(json!({"x": 1}))),
            ("maybe".into(), StepResult::Skipped),
        ],
        start: Vec::new(),
        status: RunStatus::Running,
        terminal: Some(Terminal {
            status: RunStatus::Completed,
            output: Some(json!({"result": {"x": 1}})),
            error: None,
            event: Some(event(&record, "completed")),
        }),
    };
    assert!(matches!(
        s.create_run(&run).await.unwrap(),
        CreatedRun::Created(RunStatus::Completed)
    ));
    let stored = s.run(&ws.id, &run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.output, Some(json!({"result": {"x": 1}})));
    assert_eq!(
        (stored.started_at, stored.finished_at),
        (Some(T0), Some(T0))
    );
    let steps = s.step_executions(&run.id).await.unwrap();
    let summary: Vec<_> = steps
        .iter()
        .map(|e| (e.step_id.as_str(), e.attempt, e.status, e.output.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("maybe", 1, StepStatus::Skipped, None),
            ("shape", 1, StepStatus::Completed, Some(json!({"x": 1}))),
        ]
    );
    assert_eq!(
        s.next_job_at().await.unwrap(),
        None,
        "no job for a finished run"
    );
    let events = s.claim_deliveries(T0, 10, 1000).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].run_id.as_str(), events[0].event_type.as_str()),
        (run.id.as_str(), "workflow.completed")
    );

    // The same plan on a full deployment: the run queues, nothing of the plan is written.
    let (_, limited) = fixture(db, Some(1)).await;
    s.create_run(&new_run(&limited, &["a"])).await.unwrap();
    let mut queued = new_run(&limited, &[]);
    queued.plan = run.plan.clone();
    assert!(matches!(
        s.create_run(&queued).await.unwrap(),
        CreatedRun::Created(RunStatus::Queued)
    ));
    let stored = s.run_by_id(&queued.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.output), (RunStatus::Queued, None));
    assert!(s.step_executions(&queued.id).await.unwrap().is_empty());
    assert!(s.claim_deliveries(T0, 10, 1000).await.unwrap().is_empty());
}

/// Many runs created at once (a PostgreSQL node writes them in shared batches, split by size):
/// every run is stored whole with its steps, jobs and event, and a run that cannot be written
/// (its id is taken) fails alone, leaving the run that holds the id untouched.
pub async fn concurrent_creates(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, None).await;
    let taken = new_run(&dep, &["a"]);
    s.create_run(&taken).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..120 {
        let mut run = new_run(&dep, &["a", "b"]);
        match i % 4 {
            0 => {
                run.id = taken.id.clone();
                run.inputs = json!({"n": i});
            }
            1 => {
                let record = run.record();
                run.plan.start.clear();
                run.plan.inline = vec![("a".into(), StepResult::Completed(json!({"i": i})))];
                run.plan.terminal = Some(Terminal {
                    status: RunStatus::Completed,
                    output: Some(json!({"i": i})),
                    error: None,
                    event: Some(event(&record, "completed")),
                });
            }
            // Large inputs (30 × 300 kB): more than one batch's worth.
            2 => run.inputs = json!({"n": i, "pad": "x".repeat(300_000)}),
            _ => run.inputs = json!({"n": i}),
        }
        let store = s.clone();
        tasks.spawn(async move {
            let created = store.create_run(&run).await;
            (i, run.id, run.inputs, created)
        });
    }
    let mut events = 0;
    for (i, id, inputs, result) in tasks.join_all().await {
        if i % 4 == 0 {
            assert!(result.is_err(), "run {i} reused a taken id: {result:?}");
            continue;
        }
        let finished = i % 4 == 1;
        let status = if finished {
            RunStatus::Completed
        } else {
            RunStatus::Running
        };
        assert!(
            matches!(result, Ok(CreatedRun::Created(created)) if created == status),
            "run {i}: {result:?}"
        );
        let stored = s.run(&ws.id, &id).await.unwrap().unwrap();
        assert_eq!(stored.status, status);
        let steps: Vec<_> = s
            .step_executions(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.step_id, e.status, e.output))
            .collect();
        if finished {
            events += 1;
            assert_eq!(stored.output, Some(json!({"i": i})));
            assert_eq!(
                steps,
                [("a".into(), StepStatus::Completed, Some(json!({"i": i})))]
            );
        } else {
            assert_eq!(stored.inputs, inputs);
            assert_eq!(
                steps,
                [
                    ("a".into(), StepStatus::Scheduled, None),
                    ("b".into(), StepStatus::Scheduled, None)
                ]
            );
        }
    }
    let kept = s.run(&ws.id, &taken.id).await.unwrap().unwrap();
    assert_eq!(kept.inputs, json!({"n": 1}));
    assert_eq!(s.step_executions(&taken.id).await.unwrap().len(), 1);
    assert_eq!(
        s.claim_deliveries(T0, 100, 1000).await.unwrap().len(),
        events
    );
    // Jobs: one for the taken run's step, two for each running run created here.
    let jobs = s.claim_jobs(T0, 1000).await.unwrap();
    assert_eq!(jobs.len(), 1 + 2 * 60);
}

pub async fn idempotency(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, None).await;
    let mut first = new_run(&dep, &["a"]);
    first.idempotency = Some(claim("k1", "h1"));
    assert!(matches!(
        s.create_run(&first).await.unwrap(),
        CreatedRun::Created(_)
    ));

    let mut again = new_run(&dep, &["a"]);
    again.idempotency = Some(claim("k1", "h1"));
    again.created_at = T0 + 1000;
    match s.create_run(&again).await.unwrap() {
        CreatedRun::Replayed {
            request_id,
            response,
        } => {
            assert_eq!(request_id, first.id);
            assert_eq!(response, json!({"run_status": "running"}));
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    let mut different = new_run(&dep, &["a"]);
    different.idempotency = Some(claim("k1", "h2"));
    assert!(matches!(
        s.create_run(&different).await.unwrap(),
        CreatedRun::IdempotencyConflict
    ));
    assert!(s.run_by_id(&again.id).await.unwrap().is_none());
    assert!(s.run_by_id(&different.id).await.unwrap().is_none());

    // After 24 hours the key is free again.
    let mut later = new_run(&dep, &["a"]);
    later.idempotency = Some(claim("k1", "h2"));
    later.created_at = T0 + 24 * 60 * 60 * 1000;
    assert!(matches!(
        s.create_run(&later).await.unwrap(),
        CreatedRun::Created(_)
    ));

    // Nodes racing with one key: one run is created, every other request replays it.
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (node, barrier) = (db.node().await, barrier.clone());
        let mut run = new_run(&dep, &["a"]);
        run.idempotency = Some(claim("k2", "h"));
        tasks.spawn(async move {
            barrier.wait().await;
            (run.id.clone(), node.create_run(&run).await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    let created: Vec<&String> = results
        .iter()
        .filter(|(_, r)| matches!(r, CreatedRun::Created(_)))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(created.len(), 1, "{results:?}");
    for (_, result) in &results {
        if let CreatedRun::Replayed { request_id, .. } = result {
            assert_eq!(request_id, created[0]);
        } else {
            assert!(matches!(result, CreatedRun::Created(_)), "{result:?}");
        }
    }
    let runs = s
        .list_runs(
            &ws.id,
            &RunFilter::default(),
            &Page {
                limit: 100,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 3);
}

pub async fn concurrency_limit_queues(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, Some(1)).await;
    let planner = DagPlanner::parallel(&["a"]);
    let r1 = new_run(&dep, &["a"]);
    assert!(matches!(
        s.create_run(&r1).await.unwrap(),
        CreatedRun::Created(RunStatus::Running)
    ));
    let mut r2 = new_run(&dep, &["a"]);
    r2.idempotency = Some(claim("q", "h"));
    assert!(matches!(
        s.create_run(&r2).await.unwrap(),
        CreatedRun::Created(RunStatus::Queued)
    ));
    let mut replay = new_run(&dep, &["a"]);
    replay.idempotency = Some(claim("q", "h"));
    match s.create_run(&replay).await.unwrap() {
        CreatedRun::Replayed { response, .. } => {
            assert_eq!(response, json!({"run_status": "queued"}))
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    let mut sync = new_run(&dep, &["a"]);
    sync.refuse_when_full = true;
    sync.idempotency = Some(claim("sync", "h"));
    assert!(matches!(
        s.create_run(&sync).await.unwrap(),
        CreatedRun::ConcurrencyLimit
    ));
    assert!(s.run_by_id(&sync.id).await.unwrap().is_none());

    let queued = s.run_by_id(&r2.id).await.unwrap().unwrap();
    assert_eq!(
        (queued.status, queued.started_at),
        (RunStatus::Queued, None)
    );
    assert!(s.step_executions(&r2.id).await.unwrap().is_empty());

    // Only the running run has work; finishing it promotes the queued one.
    let jobs = s.claim_jobs(T0, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].run_id, r1.id);
    let done = s
        .finish_job(
            &jobs[0],
            Some(hookflow_store::StepResult::Completed(json!(1))),
            planner.shared(),
            T0 + 10,
        )
        .await
        .unwrap();
    assert!(matches!(
        done,
        hookflow_store::Applied::Done {
            terminal: Some(RunStatus::Completed),
            ..
        }
    ));
    let promoted = s.run_by_id(&r2.id).await.unwrap().unwrap();
    assert_eq!(
        (promoted.status, promoted.started_at),
        (RunStatus::Running, Some(T0 + 10))
    );

    // The promoted run starts through a start job (no step), which plans its first steps.
    let jobs = s.claim_jobs(T0 + 10, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let start = &jobs[0];
    assert_eq!(
        (
            start.run_id.as_str(),
            start.step_id.as_deref(),
            start.attempt
        ),
        (r2.id.as_str(), None, 0)
    );
    assert_eq!(start.kind, JobKind::Execute);
    // Starting the run leases its first step to the starter.
    let started = s
        .finish_job(start, None, planner.shared(), T0 + 11)
        .await
        .unwrap();
    let hookflow_store::Applied::Done { next: Some(a), .. } = started else {
        panic!("the first step is not leased: {started:?}");
    };
    let a = a.job;
    assert_eq!(
        (a.run_id.as_str(), a.step_id.as_deref()),
        (r2.id.as_str(), Some("a"))
    );
    assert!(s.claim_jobs(T0 + 11, 10).await.unwrap().is_empty());

    // While r2 holds the slot, a new run waits.
    let r3 = new_run(&dep, &["a"]);
    assert!(matches!(
        s.create_run(&r3).await.unwrap(),
        CreatedRun::Created(RunStatus::Queued)
    ));
}

/// Nodes creating runs of a limited deployment at once never exceed the limit.
pub async fn concurrency_limit_race(db: &TestDb) {
    let (_, dep) = fixture(db, Some(2)).await;
    let barrier = Arc::new(Barrier::new(10));
    let mut tasks = JoinSet::new();
    for _ in 0..10 {
        let (node, barrier, run) = (db.node().await, barrier.clone(), new_run(&dep, &["a"]));
        tasks.spawn(async move {
            barrier.wait().await;
            node.create_run(&run).await.unwrap()
        });
    }
    let results = tasks.join_all().await;
    let running = results
        .iter()
        .filter(|r| matches!(r, CreatedRun::Created(RunStatus::Running)))
        .count();
    let queued = results
        .iter()
        .filter(|r| matches!(r, CreatedRun::Created(RunStatus::Queued)))
        .count();
    assert_eq!((running, queued), (2, 8), "{results:?}");
}

pub async fn promote_after_limit_raised(db: &TestDb) {
    let s = &db.store;
    let (_, mut dep) = fixture(db, Some(1)).await;
    let runs: Vec<_> = (0..4).map(|_| new_run(&dep, &["a"])).collect();
    for run in &runs {
        s.create_run(run).await.unwrap();
    }
    dep.concurrency_limit = Some(3);
    s.update_deployment(&dep).await.unwrap();
    s.promote_queued(&dep.id, T0 + 5).await.unwrap();
    let statuses = {
        let mut out = vec![];
        for run in &runs {
            out.push(s.run_by_id(&run.id).await.unwrap().unwrap().status);
        }
        out
    };
    // First in, first out.
    assert_eq!(
        statuses,
        [
            RunStatus::Running,
            RunStatus::Running,
            RunStatus::Running,
            RunStatus::Queued
        ]
    );
    let starts = s.claim_jobs(T0 + 5, 10).await.unwrap();
    let mut started: Vec<_> = starts
        .iter()
        .filter(|j| j.step_id.is_none())
        .map(|j| j.run_id.clone())
        .collect();
    started.sort();
    assert_eq!(started, [runs[1].id.clone(), runs[2].id.clone()]);
}

pub async fn cancel(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, Some(1)).await;
    let r1 = new_run(&dep, &["a", "b"]);
    let r2 = new_run(&dep, &["a"]);
    s.create_run(&r1).await.unwrap();
    s.create_run(&r2).await.unwrap();
    let held = s.claim_jobs(T0, 1).await.unwrap();
    assert_eq!(held.len(), 1);

    let stored = s.run_by_id(&r1.id).await.unwrap().unwrap();
    let terminal = Terminal {
        status: RunStatus::Cancelled,
        output: None,
        error: Some("cancelled".into()),
        event: Some(event(&stored, "cancelled")),
    };
    assert_eq!(
        s.cancel_run("ws_other", &r1.id, &terminal, T0 + 1)
            .await
            .unwrap(),
        Cancelled::NotFound
    );
    assert_eq!(
        s.cancel_run(&ws.id, "req_nope", &terminal, T0 + 1)
            .await
            .unwrap(),
        Cancelled::NotFound
    );
    assert_eq!(
        s.cancel_run(&ws.id, &r1.id, &terminal, T0 + 1)
            .await
            .unwrap(),
        Cancelled::Done
    );
    let cancelled = s.run_by_id(&r1.id).await.unwrap().unwrap();
    assert_eq!(
        (
            cancelled.status,
            cancelled.finished_at,
            cancelled.error.as_deref()
        ),
        (RunStatus::Cancelled, Some(T0 + 1), Some("cancelled"))
    );
    let steps = s.step_executions(&r1.id).await.unwrap();
    assert!(
        steps.iter().all(|e| e.status == StepStatus::Abandoned),
        "{steps:?}"
    );
    assert!(s.run_event(&r1.id).await.unwrap().is_some());
    assert_eq!(
        s.cancel_run(&ws.id, &r1.id, &terminal, T0 + 2)
            .await
            .unwrap(),
        Cancelled::AlreadyTerminal(RunStatus::Cancelled)
    );

    // The held job is gone; the queued run took the slot.
    let planner = DagPlanner::parallel(&["a", "b"]);
    let result = Some(hookflow_store::StepResult::Completed(json!(1)));
    assert_eq!(
        s.finish_job(&held[0], result, planner.shared(), T0 + 3)
            .await
            .unwrap(),
        hookflow_store::Applied::Stale
    );
    let jobs = s.claim_jobs(T0 + 10 * 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].run_id.as_str(), jobs[0].step_id.as_deref()),
        (r2.id.as_str(), None)
    );
}

pub async fn list_runs_filters(db: &TestDb) {
    let s = &db.store;
    let (ws, d1) = fixture(db, None).await;
    let d2 = deployment(&ws, "second", None);
    s.create_deployment(&d2).await.unwrap();

    let mut r1 = new_run(&d1, &[]);
    r1.user = Some("ann".into());
    r1.metadata = json!({"s": "abc", "n": 981, "b": true, "z": null, "o": {"x": 1}});
    let mut r2 = new_run(&d1, &[]);
    r2.source = Source::Webhook;
    r2.delivery = Delivery::Direct;
    r2.user = Some("bob".into());
    r2.metadata = json!({"s": "x", "n": "981"});
    r2.created_at = T0 + 10;
    let mut r3 = new_run(&d2, &[]);
    r3.metadata = json!({"s": "abc"});
    r3.created_at = T0 + 20;
    for run in [&r1, &r2, &r3] {
        s.create_run(run).await.unwrap();
    }
    let list = |filter: RunFilter, limit: i64, cursor: Option<String>| {
        let s = s.clone();
        let ws = ws.id.clone();
        async move {
            s.list_runs(&ws, &filter, &Page { limit, cursor })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let ids =
        |runs: &[&hookflow_store::NewRun]| runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let meta = |pairs: &[(&str, &str)]| RunFilter {
        metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..RunFilter::default()
    };

    assert_eq!(
        list(RunFilter::default(), 10, None).await,
        ids(&[&r3, &r2, &r1])
    );
    let status = |status| RunFilter {
        status: Some(status),
        ..RunFilter::default()
    };
    assert_eq!(list(status(RunStatus::Running), 10, None).await.len(), 3);
    assert!(list(status(RunStatus::Queued), 10, None).await.is_empty());
    let source = RunFilter {
        source: Some(Source::Webhook),
        ..RunFilter::default()
    };
    assert_eq!(list(source, 10, None).await, ids(&[&r2]));
    let delivery = RunFilter {
        delivery: Some(Delivery::Direct),
        ..RunFilter::default()
    };
    assert_eq!(list(delivery, 10, None).await, ids(&[&r2]));
    let by_id = RunFilter {
        deployment: Some(d1.id.clone()),
        ..RunFilter::default()
    };
    assert_eq!(list(by_id, 10, None).await, ids(&[&r2, &r1]));
    let by_name = RunFilter {
        deployment: Some("second".into()),
        ..RunFilter::default()
    };
    assert_eq!(list(by_name, 10, None).await, ids(&[&r3]));
    let user = RunFilter {
        user: Some("ann".into()),
        ..RunFilter::default()
    };
    assert_eq!(list(user, 10, None).await, ids(&[&r1]));

    // Metadata values match the JSON value's text form.
    assert_eq!(
        list(meta(&[("s", "abc")]), 10, None).await,
        ids(&[&r3, &r1])
    );
    assert_eq!(
        list(meta(&[("n", "981")]), 10, None).await,
        ids(&[&r2, &r1])
    );
    assert_eq!(list(meta(&[("b", "true")]), 10, None).await, ids(&[&r1]));
    assert_eq!(list(meta(&[("z", "null")]), 10, None).await, ids(&[&r1]));
    assert!(list(meta(&[("s", "\"abc\"")]), 10, None).await.is_empty());
    assert!(
        list(meta(&[("missing", "null")]), 10, None)
            .await
            .is_empty()
    );
    assert_eq!(
        list(meta(&[("s", "abc"), ("n", "981")]), 10, None).await,
        ids(&[&r1])
    );

    let since = RunFilter {
        since: Some(T0 + 10),
        ..RunFilter::default()
    };
    assert_eq!(list(since, 10, None).await, ids(&[&r3, &r2]));
    let until = RunFilter {
        until: Some(T0 + 10),
        ..RunFilter::default()
    };
    assert_eq!(list(until, 10, None).await, ids(&[&r1]));

    assert_eq!(list(RunFilter::default(), 2, None).await, ids(&[&r3, &r2]));
    assert_eq!(
        list(RunFilter::default(), 2, Some(r2.id.clone())).await,
        ids(&[&r1])
    );
    let other = s.ensure_workspace("other").await.unwrap();
    let none = s
        .list_runs(
            &other.id,
            &RunFilter::default(),
            &Page {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// A run created with its first step leased to the caller answers that step's job, with the
/// run and its executions as stored, whichever way it is written (batched, or checked for an
/// idempotency key or a concurrency limit); nobody claims the step until the lease ends. A
/// queued run writes no step, so it leases none.
pub async fn created_run_leases_its_first_step(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let (_, limited) = fixture(db, Some(1)).await;
    let mut batched = new_run(&dep, &["a", "b"]);
    let mut keyed = new_run(&dep, &["a"]);
    keyed.idempotency = Some(claim("leasing", "h"));
    let mut limit_free = new_run(&limited, &["a"]);
    for run in [&mut batched, &mut keyed, &mut limit_free] {
        assert!(run.lease_first_step());
        assert_eq!(run.leased, Some(("a".to_string(), 1)));
        let created = s.create_run(run).await.unwrap();
        let CreatedRun::Started(leased) = created else {
            panic!("{}: not started with its job: {created:?}", run.id);
        };
        let LeasedJob {
            job,
            run: record,
            steps,
        } = *leased;
        assert_eq!(
            (
                job.run_id.as_str(),
                job.step_id.as_deref(),
                job.attempt,
                job.lease_token,
                job.kind
            ),
            (run.id.as_str(), Some("a"), 1, 0, JobKind::Execute)
        );
        assert_eq!(Some(record), s.run_by_id(&run.id).await.unwrap());
        assert_eq!(steps, s.step_executions(&run.id).await.unwrap());
        assert_eq!(
            (
                steps[0].step_id.as_str(),
                steps[0].status,
                steps[0].started_at
            ),
            ("a", StepStatus::Running, Some(T0))
        );
    }
    // Only the step that was not leased is claimable until the leases end.
    let claimed = s.claim_jobs(T0, 10).await.unwrap();
    let claimed: Vec<_> = (claimed.iter())
        .map(|j| (j.run_id.as_str(), j.step_id.as_deref()))
        .collect();
    assert_eq!(claimed, [(batched.id.as_str(), Some("b"))]);
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + LEASE));

    let mut queued = new_run(&limited, &["a"]);
    assert!(queued.lease_first_step());
    let created = s.create_run(&queued).await.unwrap();
    assert!(
        matches!(created, CreatedRun::Created(RunStatus::Queued)),
        "{created:?}"
    );
    assert!(s.step_executions(&queued.id).await.unwrap().is_empty());
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + LEASE));
}

/// A run that ends as it is created, its event leased to the caller, writes the event due only
/// when the lease ends, whichever way it is written; the caller's copy is what a claim then
/// gives, under a newer lease.
pub async fn created_run_leases_its_end_event(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let ended = |key: Option<IdempotencyClaim>| {
        let mut run = new_run(&dep, &[]);
        run.plan.terminal = Some(Terminal {
            status: RunStatus::Completed,
            output: Some(json!({"x": 1})),
            error: None,
            event: Some(event(&run.record(), "completed")),
        });
        run.idempotency = key;
        run.event_lease = Some(LEASE);
        run
    };
    for run in [ended(None), ended(Some(claim("leasing-event", "h")))] {
        let created = s.create_run(&run).await.unwrap();
        assert!(
            matches!(created, CreatedRun::Created(RunStatus::Completed)),
            "{created:?}"
        );
        let leased = run.leased_event().expect("the event, leased");
        assert_eq!(s.next_delivery_at().await.unwrap(), Some(T0 + LEASE));
        assert!(
            s.claim_deliveries(T0 + LEASE - 1, 10, 1000)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = s.claim_deliveries(T0 + LEASE, 10, 1000).await.unwrap();
        assert_eq!(
            claimed,
            [ClaimedDelivery {
                lease_token: leased.lease_token + 1,
                ..leased
            }]
        );
        // Delivered under the newer lease: nothing is due any more.
        s.record_attempt(
            &claimed[0].id,
            &run.id,
            Some(claimed[0].lease_token),
            &AttemptRecord {
                attempt: 1,
                trigger: Trigger::Scheduled,
                url: claimed[0].url.clone(),
                status_code: Some(200),
                response_body: None,
                duration_ms: 1,
                error: None,
                created_at: T0 + LEASE,
                next_attempt_at: None,
            },
            AttemptEffect::Delivered,
        )
        .await
        .unwrap();
        assert_eq!(s.next_delivery_at().await.unwrap(), None);
    }
}
