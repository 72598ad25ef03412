//! The work queue: claims and leases, finishing jobs with a planner, and races between nodes.

use std::collections::HashSet;
use std::sync::Arc;

use hookflow_store::{
    Applied, ClaimedJob, Deployment, JobKind, LeasedJob, NewRun, NewStep, RunStatus, StepResult,
    StepStatus,
};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::{DagPlanner, LEASE, T0, TestDb, fixture, new_run};

fn completed() -> Option<StepResult> {
    Some(StepResult::Completed(json!({"ok": true})))
}

pub async fn claims_lease_jobs(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let planner = DagPlanner::parallel(&["a", "later"]);
    let mut run = new_run(&dep, &["a", "later"]);
    run.plan.start[1].run_at = T0 + 3 * LEASE;
    s.create_run(&run).await.unwrap();

    assert!(s.claim_jobs(T0 - 1, 10).await.unwrap().is_empty());
    let jobs = s.claim_jobs(T0, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs[0].clone();
    assert_eq!(
        (
            job.run_id.as_str(),
            job.step_id.as_deref(),
            job.attempt,
            job.kind
        ),
        (run.id.as_str(), Some("a"), 1, JobKind::Execute)
    );
    let a = &s.step_executions(&run.id).await.unwrap()[0];
    assert_eq!(
        (a.step_id.as_str(), a.status, a.started_at),
        ("a", StepStatus::Running, Some(T0))
    );

    // Leased: not claimable again until the lease passes, then with a new token.
    assert!(s.claim_jobs(T0, 10).await.unwrap().is_empty());
    assert!(s.claim_jobs(T0 + LEASE - 1, 10).await.unwrap().is_empty());
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + LEASE));
    let again = s.claim_jobs(T0 + LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, job.id);
    assert!(again[0].lease_token > job.lease_token);

    // The first holder lost its lease: its outcome is refused and changes nothing.
    assert_eq!(
        s.finish_job(&job, completed(), planner.shared(), T0 + LEASE)
            .await
            .unwrap(),
        Applied::Stale
    );
    assert_eq!(
        s.step_executions(&run.id).await.unwrap()[0].status,
        StepStatus::Running
    );
    assert_eq!(
        s.finish_job(&again[0], completed(), planner.shared(), T0 + LEASE)
            .await
            .unwrap(),
        Applied::Done {
            terminal: None,
            event: false,
            work: false,
            next: None,
            leased_event: None,
        }
    );
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + 3 * LEASE));
    let later = s.claim_jobs(T0 + 3 * LEASE, 10).await.unwrap();
    assert_eq!(later[0].step_id.as_deref(), Some("later"));
    assert_eq!(
        s.finish_job(&later[0], completed(), planner.shared(), T0 + 3 * LEASE)
            .await
            .unwrap(),
        Applied::Done {
            terminal: Some(RunStatus::Completed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        }
    );
    assert_eq!(s.next_job_at().await.unwrap(), None);
}

/// The step that a finish leased to its caller.
fn leased(applied: Applied) -> LeasedJob {
    match applied {
        Applied::Done {
            next: Some(leased), ..
        } => *leased,
        other => panic!("no step leased: {other:?}"),
    }
}

/// A step leased to the finisher of the step before it is another node's once the lease ends
/// (its holder died, say): the late holder's outcome is then refused.
pub async fn leased_step_is_taken_over_after_its_lease(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let planner = DagPlanner::chain(&["a", "b"]);
    let run = new_run(&dep, &["a"]);
    s.create_run(&run).await.unwrap();
    let a = s.claim_jobs(T0, 10).await.unwrap().remove(0);
    let applied = s.finish_job(&a, completed(), planner.shared(), T0 + 1);
    let b = leased(applied.await.unwrap()).job;
    let other = db.node().await;
    assert!(other.claim_jobs(T0 + LEASE, 10).await.unwrap().is_empty());
    let taken = other.claim_jobs(T0 + 1 + LEASE, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].id, taken[0].lease_token),
        (b.id, b.lease_token + 1)
    );
    assert_eq!(
        s.finish_job(&b, completed(), planner.shared(), T0 + 2 + LEASE)
            .await
            .unwrap(),
        Applied::Stale
    );
    let ended = other
        .finish_job(&taken[0], completed(), planner.shared(), T0 + 2 + LEASE)
        .await
        .unwrap();
    assert!(
        matches!(
            ended,
            Applied::Done {
                terminal: Some(RunStatus::Completed),
                next: None,
                ..
            }
        ),
        "{ended:?}"
    );
}

/// Claimers on several nodes share the backlog without ever getting the same job twice.
pub async fn concurrent_claimers(db: &TestDb) {
    let (_, dep) = fixture(db, None).await;
    for _ in 0..40 {
        db.store
            .create_run(&new_run(&dep, &["a", "b", "c", "d", "e"]))
            .await
            .unwrap();
    }
    let barrier = Arc::new(Barrier::new(4));
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let (node, barrier) = (db.node().await, barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut mine = vec![];
            loop {
                let batch = node.claim_jobs(T0, 7).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|j| j.id));
            }
        });
    }
    let claimed: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
    let distinct: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 200);
    assert_eq!(distinct.len(), 200);
}

pub async fn finish_job_plans_next_steps(db: &TestDb) {
    let s = &db.store;
    let (ws, dep) = fixture(db, None).await;
    let planner = DagPlanner::chain(&["a", "b"]);
    let run = new_run(&dep, &["a"]);
    s.create_run(&run).await.unwrap();

    let a = s.claim_jobs(T0, 10).await.unwrap().remove(0);
    let result = Some(StepResult::Completed(json!({"x": 1})));
    // b is due at once: the finishing write leases it to its caller, so no engine needs
    // waking for it.
    let Applied::Done {
        terminal: None,
        event: false,
        work: false,
        next: Some(next),
        leased_event: None,
    } = s
        .finish_job(&a, result, planner.shared(), T0 + 1)
        .await
        .unwrap()
    else {
        panic!("b is not leased to the caller");
    };
    // It comes with its run as stored: all that a claim and a read would give.
    let LeasedJob {
        job: b,
        run: leased_run,
        steps: leased_steps,
    } = *next;
    assert_eq!(Some(leased_run), s.run_by_id(&run.id).await.unwrap());
    assert_eq!(leased_steps, s.step_executions(&run.id).await.unwrap());
    assert_eq!(
        (b.run_id.as_str(), b.step_id.as_deref(), b.attempt),
        (run.id.as_str(), Some("b"), 1)
    );
    assert_eq!((b.lease_token, b.kind), (0, JobKind::Execute));
    let steps = s.step_executions(&run.id).await.unwrap();
    let summary = steps
        .iter()
        .map(|e| (e.step_id.as_str(), e.status, e.started_at))
        .collect::<Vec<_>>();
    assert_eq!(
        summary,
        [
            ("a", StepStatus::Completed, Some(T0)),
            ("b", StepStatus::Running, Some(T0 + 1))
        ]
    );
    assert_eq!(steps[0].output, Some(json!({"x": 1})));
    assert_eq!(steps[0].finished_at, Some(T0 + 1));
    // Nobody else can claim b until its lease ends.
    assert!(s.claim_jobs(T0 + 1, 10).await.unwrap().is_empty());
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + 1 + LEASE));

    assert_eq!(
        s.finish_job(&b, Some(StepResult::Skipped), planner.shared(), T0 + 2)
            .await
            .unwrap(),
        Applied::Done {
            terminal: None,
            event: false,
            work: false,
            next: None,
            leased_event: None,
        }
    );
    // Skipped is not completed for this planner: nothing new is ready, the run stays live.
    assert_eq!(
        s.run_by_id(&run.id).await.unwrap().unwrap().status,
        RunStatus::Running
    );

    // A fresh run goes all the way.
    let run = new_run(&dep, &["a"]);
    s.create_run(&run).await.unwrap();
    let a = s.claim_jobs(T0 + 2, 10).await.unwrap().remove(0);
    let applied = s.finish_job(&a, completed(), planner.shared(), T0 + 3);
    let b = leased(applied.await.unwrap()).job;
    assert_eq!(
        s.finish_job(&b, completed(), planner.shared(), T0 + 4)
            .await
            .unwrap(),
        Applied::Done {
            terminal: Some(RunStatus::Completed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        }
    );
    let ended = s.run(&ws.id, &run.id).await.unwrap().unwrap();
    assert_eq!(
        (ended.status, ended.finished_at),
        (RunStatus::Completed, Some(T0 + 4))
    );
    assert_eq!(
        ended.output,
        Some(json!({"a": {"ok": true}, "b": {"ok": true}}))
    );
    let event = s.run_event(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (event.attempts, event.url.as_str()),
        (0, "https://example.test/callback")
    );
    assert_eq!(event.status, hookflow_store::DeliveryStatus::Pending);
    // A job of an ended run is stale.
    assert_eq!(
        s.finish_job(&b, completed(), planner.shared(), T0 + 5)
            .await
            .unwrap(),
        Applied::Stale
    );
}

pub async fn retries_then_fails(db: &TestDb) {
    let s = &db.store;
    let (_, dep) = fixture(db, None).await;
    let planner = DagPlanner::parallel(&["a"]);
    let run = new_run(&dep, &["a"]);
    s.create_run(&run).await.unwrap();
    let first = s.claim_jobs(T0, 10).await.unwrap().remove(0);
    let retry = NewStep {
        step_id: "a".into(),
        attempt: 2,
        run_at: T0 + 100,
        lease_ms: LEASE,
        running: false,
    };
    let failed = StepResult::Failed {
        error: "boom".into(),
        retry: Some(retry),
    };
    assert_eq!(
        s.finish_job(&first, Some(failed), planner.shared(), T0 + 1)
            .await
            .unwrap(),
        Applied::Done {
            terminal: None,
            event: false,
            work: true,
            next: None,
            leased_event: None,
        }
    );
    let steps = s.step_executions(&run.id).await.unwrap();
    let summary = steps
        .iter()
        .map(|e| (e.attempt, e.status, e.error.as_deref()))
        .collect::<Vec<_>>();
    assert_eq!(
        summary,
        [
            (1, StepStatus::Failed, Some("boom")),
            (2, StepStatus::Scheduled, None)
        ]
    );
    assert!(s.claim_jobs(T0 + 99, 10).await.unwrap().is_empty());
    let second = s.claim_jobs(T0 + 100, 10).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    let failed = StepResult::Failed {
        error: "again\0".into(),
        retry: None,
    };
    assert_eq!(
        s.finish_job(&second, Some(failed), planner.shared(), T0 + 101)
            .await
            .unwrap(),
        Applied::Done {
            terminal: Some(RunStatus::Failed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        }
    );
    let ended = s.run_by_id(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (ended.status, ended.error.as_deref()),
        (RunStatus::Failed, Some("step a failed"))
    );
    // Stored whole, its U+0000 (which neither backend's writes can carry) replaced.
    let steps = s.step_executions(&run.id).await.unwrap();
    assert_eq!(steps[1].error.as_deref(), Some("again\u{FFFD}"));
}

/// Claims every job due at `now` of one run (a few claims: other runs' jobs are left leased).
async fn claim_run(db: &TestDb, run_id: &str, now: i64, count: usize) -> Vec<ClaimedJob> {
    let jobs: Vec<ClaimedJob> = db
        .store
        .claim_jobs(now, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.run_id == run_id)
        .collect();
    assert_eq!(jobs.len(), count);
    jobs
}

/// Finishes `jobs` at once, each on its own node.
async fn finish_together(
    db: &TestDb,
    jobs: Vec<ClaimedJob>,
    planner: Arc<DagPlanner>,
    now: i64,
) -> Vec<Applied> {
    let barrier = Arc::new(Barrier::new(jobs.len()));
    let mut tasks = JoinSet::new();
    for job in jobs {
        let (node, barrier, planner) = (db.node().await, barrier.clone(), planner.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            node.finish_job(&job, completed(), planner.shared(), now)
                .await
                .unwrap()
        });
    }
    tasks.join_all().await
}

/// Starts a run whose steps `a` and `b` are due at `now`, claims both and finishes them at
/// once on two nodes.
async fn race_a_and_b(
    db: &TestDb,
    dep: &Deployment,
    planner: &Arc<DagPlanner>,
    now: i64,
) -> (NewRun, Vec<Applied>) {
    let mut run = new_run(dep, &["a", "b"]);
    for step in &mut run.plan.start {
        step.run_at = now;
    }
    db.store.create_run(&run).await.unwrap();
    let jobs = claim_run(db, &run.id, now, 2).await;
    let results = finish_together(db, jobs, planner.clone(), now + 1).await;
    (run, results)
}

/// Two steps of one run finishing at once on two nodes: the run ends exactly once, with one
/// event (neither finisher may plan without seeing the other's outcome).
pub async fn racing_finishes_end_run_once(db: &TestDb) {
    let (_, dep) = fixture(db, None).await;
    let planner = Arc::new(DagPlanner::parallel(&["a", "b"]));
    for round in 0..10 {
        let now = T0 + round * 10 * LEASE;
        let (run, results) = race_a_and_b(db, &dep, &planner, now).await;
        let ended = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Applied::Done {
                        terminal: Some(RunStatus::Completed),
                        event: true,
                        work: true,
                        next: None,
                        leased_event: None,
                    }
                )
            })
            .count();
        assert_eq!(ended, 1, "round {round}: {results:?}");
        assert!(results.contains(&Applied::Done {
            terminal: None,
            event: false,
            work: false,
            next: None,
            leased_event: None,
        }));
        let stored = db.store.run_by_id(&run.id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Completed);
    }
    // One outbox row per run.
    let events = db
        .store
        .claim_deliveries(i64::MAX / 2, 1000, 1000)
        .await
        .unwrap();
    let runs: HashSet<&str> = events.iter().map(|e| e.run_id.as_str()).collect();
    assert_eq!((events.len(), runs.len()), (10, 10));
}

/// Two branches finishing at once on two nodes start their join step exactly once.
pub async fn racing_finishes_join_once(db: &TestDb) {
    let (_, dep) = fixture(db, None).await;
    let planner = Arc::new(DagPlanner {
        steps: vec![("a", vec![]), ("b", vec![]), ("join", vec!["a", "b"])],
    });
    for round in 0..10 {
        let now = T0 + round * 10 * LEASE;
        let (run, results) = race_a_and_b(db, &dep, &planner, now).await;
        // Only the finisher that scheduled the join gets it, leased; no engine needs waking.
        let leased: Vec<&ClaimedJob> = (results.iter())
            .filter_map(|r| match r {
                Applied::Done {
                    terminal: None,
                    event: false,
                    work: false,
                    next,
                    leased_event: None,
                } => next.as_ref().map(|leased| &leased.job),
                other => panic!("round {round}: {other:?}"),
            })
            .collect();
        assert_eq!(leased.len(), 1, "round {round}");
        assert_eq!(leased[0].step_id.as_deref(), Some("join"));
        let joins = db
            .store
            .step_executions(&run.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.step_id == "join")
            .count();
        assert_eq!(joins, 1, "round {round}");
        claim_run(db, &run.id, now + 1, 0).await;
    }
}

/// Many outcomes handed to one node at once share batches: both steps of a run may land in
/// one batch (the run is then advanced once per round, the second seeing the first), and an
/// outcome under a lost lease is refused without failing the others.
pub async fn concurrent_finishes_share_batches(db: &TestDb) {
    let (_, dep) = fixture(db, None).await;
    let planner = Arc::new(DagPlanner::parallel(&["a", "b"]));
    let mut runs = Vec::new();
    for _ in 0..40 {
        let run = new_run(&dep, &["a", "b"]);
        db.store.create_run(&run).await.unwrap();
        runs.push(run.id);
    }
    let jobs = db.store.claim_jobs(T0, 1000).await.unwrap();
    assert_eq!(jobs.len(), 80);
    // Ten outcomes under a lease that is no longer held.
    let stale: Vec<ClaimedJob> = (jobs.iter().take(10))
        .map(|j| ClaimedJob {
            lease_token: j.lease_token - 1,
            ..j.clone()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(jobs.len() + stale.len()));
    let mut tasks = JoinSet::new();
    for (job, held) in
        (stale.into_iter().map(|j| (j, false))).chain(jobs.into_iter().map(|j| (j, true)))
    {
        let (store, barrier, planner) = (db.store.clone(), barrier.clone(), planner.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let applied = store
                .finish_job(&job, completed(), planner.shared(), T0 + 1)
                .await;
            (job.run_id, held, applied.unwrap())
        });
    }
    let results = tasks.join_all().await;
    for (_, held, applied) in &results {
        if !held {
            assert_eq!(applied, &Applied::Stale);
        }
    }
    for id in &runs {
        let mut own: Vec<&Applied> = (results.iter())
            .filter(|(run, held, _)| run == id && *held)
            .map(|(_, _, applied)| applied)
            .collect();
        own.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            own,
            [
                &Applied::Done {
                    terminal: None,
                    event: false,
                    work: false,
                    next: None,
                    leased_event: None,
                },
                &Applied::Done {
                    terminal: Some(RunStatus::Completed),
                    event: true,
                    work: true,
                    next: None,
                    leased_event: None,
                }
            ],
            "run {id}"
        );
        let stored = db.store.run_by_id(id).await.unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Completed);
        let steps = db.store.step_executions(id).await.unwrap();
        assert!(
            steps.iter().all(|s| s.status == StepStatus::Completed),
            "{steps:?}"
        );
        assert_eq!(steps.len(), 2);
    }
    assert!(
        db.store
            .claim_jobs(i64::MAX / 2, 1000)
            .await
            .unwrap()
            .is_empty()
    );
    let events = (db.store.claim_deliveries(i64::MAX / 2, 1000, 1000).await).unwrap();
    let ended: HashSet<&str> = events.iter().map(|e| e.run_id.as_str()).collect();
    assert_eq!((events.len(), ended.len()), (40, 40));
}
