//! Steps that wait: async completions from outside, human approvals, and their timeouts.

use std::sync::Arc;

use hookflow_store::{
    Answer, Applied, ApprovalStatus, ClaimedJob, Completion, JobKind, NewApproval, Page, RunStatus,
    StepResult, StepStatus,
};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::{DagPlanner, EventLeasing, T0, TestDb, event, fixture, new_run};

/// Starts a one-step run and leaves its step waiting, for a second (beyond the wake horizon, so
/// the engines are not woken for it); returns the run id.
async fn waiting_run(db: &TestDb, step: &'static str) -> String {
    let (run_id, applied) = wait_until(db, step, T0 + 1000).await;
    assert_eq!(
        applied,
        Applied::Done {
            terminal: None,
            event: false,
            work: false,
            next: None,
            leased_event: None,
        }
    );
    run_id
}

/// Starts a one-step run, leaves its step waiting until `deadline` and returns the run id with
/// what the wait applied.
async fn wait_until(db: &TestDb, step: &'static str, deadline: i64) -> (String, Applied) {
    let (_, dep) = fixture(db, None).await;
    let run = new_run(&dep, &[step]);
    db.store.create_run(&run).await.unwrap();
    let job = claim_of(db, &run.id, T0).await;
    let waiting = StepResult::Waiting {
        deadline: Some(deadline),
        approval: None,
    };
    let planner = DagPlanner::parallel(&[step]);
    let applied = db
        .store
        .finish_job(&job, Some(waiting), planner.shared(), T0 + 1)
        .await
        .unwrap();
    (run.id, applied)
}

/// A wait that times out within the wake horizon asks the engines to look for work now.
pub async fn near_timeout_wakes(db: &TestDb) {
    let (run_id, applied) = wait_until(db, "hook", T0 + 100).await;
    assert_eq!(
        applied,
        Applied::Done {
            terminal: None,
            event: false,
            work: true,
            next: None,
            leased_event: None,
        }
    );
    assert_eq!(db.store.next_job_at().await.unwrap(), Some(T0 + 100));
    let timeout = claim_of(db, &run_id, T0 + 100).await;
    assert_eq!(timeout.kind, JobKind::Timeout);
}

async fn claim_of(db: &TestDb, run_id: &str, now: i64) -> ClaimedJob {
    db.store
        .claim_jobs(now, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.run_id == run_id)
        .expect("a job of the run")
}

pub async fn async_completion(db: &TestDb) {
    let s = &db.store;
    // A completion from outside leases nothing, even to a caller that would take the event.
    let planner = EventLeasing {
        dag: DagPlanner::parallel(&["hook"]),
        lease: 1000,
    };
    let run_id = waiting_run(db, "hook").await;
    let step = &s.step_executions(&run_id).await.unwrap()[0];
    assert_eq!(step.status, StepStatus::Running);
    assert_eq!(s.next_job_at().await.unwrap(), Some(T0 + 1000));

    let done = StepResult::Completed(json!({"paid": true}));
    assert_eq!(
        s.complete_step(&run_id, "hook", 2, "h1", done.clone(), &planner, T0 + 2)
            .await
            .unwrap(),
        Completion::NotFound
    );
    assert_eq!(
        s.complete_step(&run_id, "hook", 1, "h1", done.clone(), &planner, T0 + 2)
            .await
            .unwrap(),
        Completion::Applied(Applied::Done {
            terminal: Some(RunStatus::Completed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        })
    );
    let step = &s.step_executions(&run_id).await.unwrap()[0];
    assert_eq!(
        (step.status, step.output.clone()),
        (StepStatus::Completed, Some(json!({"paid": true})))
    );
    // The timeout job went with the completion; the event is due at once, for any claimer.
    assert_eq!(s.next_job_at().await.unwrap(), None);
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(T0 + 2));
    assert_eq!(
        s.complete_step(&run_id, "hook", 1, "h1", done.clone(), &planner, T0 + 3)
            .await
            .unwrap(),
        Completion::Duplicate
    );
    assert_eq!(
        s.complete_step(&run_id, "hook", 1, "h2", done, &planner, T0 + 3)
            .await
            .unwrap(),
        Completion::Conflict
    );
}

pub async fn async_timeout(db: &TestDb) {
    let s = &db.store;
    let planner = DagPlanner::parallel(&["hook"]);
    let run_id = waiting_run(db, "hook").await;
    assert!(s.claim_jobs(T0 + 999, 10).await.unwrap().is_empty());
    let timeout = claim_of(db, &run_id, T0 + 1000).await;
    assert_eq!(
        (timeout.kind, timeout.step_id.as_deref(), timeout.attempt),
        (JobKind::Timeout, Some("hook"), 1)
    );
    let timed_out = StepResult::Failed {
        error: "timed out".into(),
        retry: None,
    };
    assert_eq!(
        s.finish_job(&timeout, Some(timed_out), planner.shared(), T0 + 1000)
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
    let late = StepResult::Completed(json!(1));
    assert_eq!(
        s.complete_step(&run_id, "hook", 1, "h1", late, &planner, T0 + 1001)
            .await
            .unwrap(),
        Completion::Gone
    );
}

/// Two nodes delivering a completion at once: it applies once; the other sees a duplicate (the
/// same completion) or a conflict (another one).
pub async fn racing_completions(db: &TestDb) {
    let planner = Arc::new(DagPlanner::parallel(&["hook"]));
    for (round, hashes) in [["same", "same"], ["one", "other"]].into_iter().enumerate() {
        let run_id = waiting_run(db, "hook").await;
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = JoinSet::new();
        for hash in hashes {
            let (node, barrier, planner, run_id) = (
                db.node().await,
                barrier.clone(),
                planner.clone(),
                run_id.clone(),
            );
            tasks.spawn(async move {
                barrier.wait().await;
                let done = StepResult::Completed(json!(hash));
                node.complete_step(&run_id, "hook", 1, hash, done, planner.as_ref(), T0 + 2)
                    .await
                    .unwrap()
            });
        }
        let results = tasks.join_all().await;
        let applied = Completion::Applied(Applied::Done {
            terminal: Some(RunStatus::Completed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        });
        let other = if round == 0 {
            Completion::Duplicate
        } else {
            Completion::Conflict
        };
        assert!(
            results.contains(&applied) && results.contains(&other),
            "{results:?}"
        );
    }
}

fn approval(id: &str, run: &hookflow_store::RunRecord) -> NewApproval {
    let mut requested = event(run, "unused");
    requested.event_type = "approval.requested".into();
    NewApproval {
        id: id.into(),
        prompt: "Ship it?".into(),
        assignee: Some("ann".into()),
        deadline: Some(T0 + 5000),
        event: Some(requested),
    }
}

fn answer(status: ApprovalStatus) -> Answer {
    Answer {
        status,
        comment: Some("fine".into()),
        data: json!({"n": 1}),
        responder: Some("ann".into()),
        answered_at: T0 + 10,
    }
}

/// A run whose single step "ask" waits on approval `id`.
async fn approval_run(db: &TestDb, id: &str) -> String {
    let (_, dep) = fixture(db, None).await;
    let run = new_run(&dep, &["ask"]);
    db.store.create_run(&run).await.unwrap();
    let stored = db.store.run_by_id(&run.id).await.unwrap().unwrap();
    let job = claim_of(db, &run.id, T0).await;
    let waiting = StepResult::Waiting {
        deadline: Some(T0 + 5000),
        approval: Some(approval(id, &stored)),
    };
    let planner = DagPlanner::parallel(&["ask"]);
    db.store
        .finish_job(&job, Some(waiting), planner.shared(), T0 + 1)
        .await
        .unwrap();
    run.id
}

pub async fn approvals(db: &TestDb) {
    let s = &db.store;
    let planner = DagPlanner::parallel(&["ask"]);
    let run_id = approval_run(db, "apr_1").await;
    let run = s.run_by_id(&run_id).await.unwrap().unwrap();
    let pending = s.approval("apr_1").await.unwrap().unwrap();
    assert_eq!(
        (
            pending.workspace_id.as_str(),
            pending.run_id.as_str(),
            pending.step_id.as_str(),
            pending.attempt
        ),
        (run.workspace_id.as_str(), run_id.as_str(), "ask", 1)
    );
    assert_eq!(
        (pending.status, pending.deadline, pending.created_at),
        (ApprovalStatus::Pending, Some(T0 + 5000), T0 + 1)
    );
    assert_eq!(pending.assignee.as_deref(), Some("ann"));
    let page = Page {
        limit: 10,
        cursor: None,
    };
    let listed = s
        .list_approvals(&run.workspace_id, Some(ApprovalStatus::Pending), &page)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        s.list_approvals(&run.workspace_id, Some(ApprovalStatus::Approved), &page)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_approvals(&run.workspace_id, None, &page)
            .await
            .unwrap()
            .len(),
        1
    );
    // The approval.requested event is due at once; it is not the run's terminal event.
    let due = s.claim_deliveries(T0 + 1, 10, 1000).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event_type, "approval.requested");
    assert!(s.run_event(&run_id).await.unwrap().is_none());

    let result = StepResult::Completed(json!({"approved": true}));
    assert_eq!(
        s.answer_approval(
            "apr_1",
            &answer(ApprovalStatus::Approved),
            result.clone(),
            &planner,
            T0 + 10
        )
        .await
        .unwrap(),
        Completion::Applied(Applied::Done {
            terminal: Some(RunStatus::Completed),
            event: true,
            work: true,
            next: None,
            leased_event: None,
        })
    );
    let answered = s.approval("apr_1").await.unwrap().unwrap();
    assert_eq!(
        (answered.status, answered.decision.as_deref()),
        (ApprovalStatus::Approved, Some("approve"))
    );
    assert_eq!(
        (answered.data, answered.answered_at),
        (Some(json!({"n": 1})), Some(T0 + 10))
    );
    assert_eq!(answered.responder.as_deref(), Some("ann"));
    assert_eq!(
        s.answer_approval(
            "apr_1",
            &answer(ApprovalStatus::Rejected),
            result.clone(),
            &planner,
            T0 + 11
        )
        .await
        .unwrap(),
        Completion::Conflict
    );
    assert_eq!(
        s.answer_approval(
            "apr_nope",
            &answer(ApprovalStatus::Approved),
            result,
            &planner,
            T0 + 11
        )
        .await
        .unwrap(),
        Completion::NotFound
    );
}

pub async fn approvals_time_out(db: &TestDb) {
    let s = &db.store;
    let planner = DagPlanner::parallel(&["ask"]);
    let run_id = approval_run(db, "apr_2").await;
    let timeout = claim_of(db, &run_id, T0 + 5000).await;
    assert_eq!(timeout.kind, JobKind::Timeout);
    let timed_out = StepResult::Failed {
        error: "no answer".into(),
        retry: None,
    };
    s.finish_job(&timeout, Some(timed_out), planner.shared(), T0 + 5000)
        .await
        .unwrap();
    assert_eq!(
        s.approval("apr_2").await.unwrap().unwrap().status,
        ApprovalStatus::TimedOut
    );
    let result = StepResult::Completed(json!({}));
    assert_eq!(
        s.answer_approval(
            "apr_2",
            &answer(ApprovalStatus::Approved),
            result,
            &planner,
            T0 + 5001
        )
        .await
        .unwrap(),
        Completion::Gone
    );

    // Cancelling a run cancels its pending approvals.
    let run_id = approval_run(db, "apr_3").await;
    let run = s.run_by_id(&run_id).await.unwrap().unwrap();
    let terminal = hookflow_store::Terminal {
        status: RunStatus::Cancelled,
        output: None,
        error: None,
        event: None,
    };
    s.cancel_run(&run.workspace_id, &run_id, &terminal, T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        s.approval("apr_3").await.unwrap().unwrap().status,
        ApprovalStatus::Cancelled
    );
    let result = StepResult::Completed(json!({}));
    assert_eq!(
        s.answer_approval(
            "apr_3",
            &answer(ApprovalStatus::Approved),
            result,
            &planner,
            T0 + 3
        )
        .await
        .unwrap(),
        Completion::Gone
    );
}

/// Two people answering at once on two nodes: one answer resolves the step, the other
/// conflicts.
pub async fn racing_answers(db: &TestDb) {
    let planner = Arc::new(DagPlanner::parallel(&["ask"]));
    let run_id = approval_run(db, "apr_race").await;
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = JoinSet::new();
    for status in [ApprovalStatus::Approved, ApprovalStatus::Rejected] {
        let (node, barrier, planner) = (db.node().await, barrier.clone(), planner.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let result = StepResult::Completed(json!(status.as_str()));
            node.answer_approval(
                "apr_race",
                &answer(status),
                result,
                planner.as_ref(),
                T0 + 10,
            )
            .await
            .unwrap()
        });
    }
    let results = tasks.join_all().await;
    let applied = Completion::Applied(Applied::Done {
        terminal: Some(RunStatus::Completed),
        event: true,
        work: true,
        next: None,
        leased_event: None,
    });
    assert!(
        results.contains(&applied) && results.contains(&Completion::Conflict),
        "{results:?}"
    );
    assert!(db.store.run_event(&run_id).await.unwrap().is_some());
}
