//! The engine: claims due jobs from the store and executes them, writing each outcome back as
//! one transaction in which the planner decides what follows.

mod planner;
mod steps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookflow_store::{
    Applied, ClaimedJob, LeasedJob, RunRecord, StepExecution, StepResult, WAKE_HORIZON_MS,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::app::{App, now_ms, sleep_until_due};
use crate::delivery;
use planner::OwnedPlanner;
pub use planner::{RunPlanner, run_context, step_states};
pub use steps::fail as failed_attempt;

/// Steps executing at once on one node (the size of [`App::engine_slots`]).
pub const MAX_IN_FLIGHT: usize = 256;
/// Jobs claimed per round trip.
const CLAIM_BATCH: usize = 64;
/// Longest sleep between polls (wake-ups are hints; the poll is the safety net, and finds the
/// jobs due beyond the wake horizon, which wake no one).
const POLL_INTERVAL: Duration = Duration::from_millis(WAKE_HORIZON_MS as u64);
/// Pause after a store error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the engine loop until the process ends.
pub async fn run(app: Arc<App>) {
    let slots = app.engine_slots.clone();
    loop {
        let free = slots.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            // Wait for a slot to free up, then claim again.
            drop(slots.clone().acquire_owned().await);
            continue;
        }
        let jobs = match app.store.claim_jobs(now_ms(), free as i64).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "claiming jobs failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let full = jobs.len() == free;
        let states = match read_states(&app, &jobs).await {
            Ok(states) => states,
            Err(e) => {
                // The jobs stay leased: they run again when their leases expire.
                tracing::error!(error = %e, "reading the runs of claimed jobs failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        for job in jobs {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let state = states.get(&job.run_id).cloned();
            spawn_execute(app.clone(), job, state, Some(permit));
        }
        if full {
            continue;
        }
        sleep_until_due(&app.work, app.store.next_job_at(), POLL_INTERVAL).await;
    }
}

/// Executes a job that the write creating its run leased to this node (see
/// [`hookflow_store::NewRun::lease_first_step`]), holding `slot` (one of [`App::engine_slots`]).
pub fn spawn_leased(app: Arc<App>, leased: LeasedJob, slot: Option<OwnedSemaphorePermit>) {
    let LeasedJob { job, run, steps } = leased;
    spawn_execute(app, job, Some(Arc::new((run, steps))), slot);
}

/// Executes a job in its own task (see [`execute`]), holding `slot` until it is done.
fn spawn_execute(
    app: Arc<App>,
    job: ClaimedJob,
    state: Option<RunState>,
    slot: Option<OwnedSemaphorePermit>,
) {
    tokio::spawn(async move {
        execute(app, job, state).await;
        drop(slot);
    });
}

/// A run with every execution of its steps, as read when its job was claimed.
type RunState = Arc<(RunRecord, Vec<StepExecution>)>;

/// The runs of a batch of claimed jobs, read in one query, by run id.
async fn read_states(
    app: &App,
    jobs: &[ClaimedJob],
) -> hookflow_store::Result<HashMap<String, RunState>> {
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.run_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let states = app.store.run_states(&ids).await?;
    Ok(states
        .into_iter()
        .map(|state| (state.0.id.clone(), Arc::new(state)))
        .collect())
}

/// Executes one job and commits its outcome, then, in the same slot, each step of its run that
/// such a commit leased to this node (see [`hookflow_store::Queue::finish_job`]). Errors leave
/// the job leased: it runs again when the lease expires.
async fn execute(app: Arc<App>, job: ClaimedJob, state: Option<RunState>) {
    let mut next = Some((job, state));
    while let Some((job, state)) = next.take() {
        match try_execute(&app, &job, state).await {
            Ok(leased) => {
                next = leased.map(|leased| {
                    let LeasedJob { job, run, steps } = *leased;
                    (job, Some(Arc::new((run, steps))))
                });
            }
            Err(e) => {
                tracing::error!(run = %job.run_id, step = ?job.step_id, error = %e, "job failed; it will be retried after its lease");
            }
        }
    }
}

/// Executes one job and commits its outcome; answers the job that the commit leased to this
/// node, if any.
async fn try_execute(
    app: &Arc<App>,
    job: &ClaimedJob,
    state: Option<RunState>,
) -> anyhow::Result<Option<Box<LeasedJob>>> {
    let state = state.ok_or_else(|| anyhow::anyhow!("run {} not found", job.run_id))?;
    let (run, executions) = &*state;
    let def = app
        .definition(&run.workspace_id, &run.workflow, run.version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("workflow {} v{} not found", run.workflow, run.version))?;
    let secrets = app.secrets(&def, &run.workspace_id).await?;
    let result = match &job.step_id {
        None => None,
        Some(step_id) => {
            let step = def
                .step(step_id)
                .ok_or_else(|| anyhow::anyhow!("step {step_id} not in workflow"))?;
            let (_, outputs) = step_states(&def, executions);
            let ctx = run_context(run, &outputs, &secrets);
            Some(steps::execute(app, run, step, job, &ctx).await)
        }
    };
    if let Some(result) = &result {
        let outcome = match result {
            StepResult::Completed(_) => "completed",
            StepResult::Skipped => "skipped",
            StepResult::Failed { .. } => "failed",
            StepResult::Waiting { .. } => "waiting",
        };
        metrics::counter!("hookflow_step_attempts_total", "outcome" => outcome).increment(1);
    }
    let planner = Arc::new(OwnedPlanner {
        app: app.clone(),
        def,
        secrets,
        event_slot: Mutex::new(None),
    });
    let applied = app
        .store
        .finish_job(job, result, planner.clone(), now_ms())
        .await?;
    app.signal(&run.id, &applied);
    Ok(match applied {
        Applied::Done {
            next, leased_event, ..
        } => {
            if let Some(event) = leased_event {
                delivery::spawn_attempt(app.clone(), *event, planner.take_event_slot());
            }
            next
        }
        Applied::Stale => None,
    })
}
