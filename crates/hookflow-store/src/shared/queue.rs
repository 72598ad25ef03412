//! The work queue: applying the outcomes of claimed jobs and of steps completed from outside
//! ([`crate::Queue`]); claims are the backend's ([`crate::shared::Backend::claim_due_jobs`]).
//!
//! Finished jobs go through the node's batch writer ([`crate::batch`]): the outcomes that
//! arrive while one batch is written are applied together in the next, in one transaction that
//! loads (and locks) their runs in one go and takes their jobs in one statement. A run with
//! several jobs in one batch is advanced once per round, each round seeing the last one's
//! writes; the writes of a round's runs are sent together
//! ([`crate::shared::Backend::flush_run_writes`]).

use std::sync::Arc;

use crate::{ClaimedJob, Millis, Planner, StepResult};

/// A claimed job's outcome (None for a start job), handed to the node's batch writer.
pub(crate) struct Finish {
    pub(crate) job: ClaimedJob,
    pub(crate) result: Option<StepResult>,
    pub(crate) planner: Arc<dyn Planner>,
    pub(crate) now: Millis,
}

/// Implements [`crate::Queue`] for `$store`.
macro_rules! impl_queue {
    ($store:ident) => {
        const _: () = {
            use std::collections::{HashMap, HashSet};
            use std::sync::Arc;

            use $crate::shared::queue::Finish;
            use $crate::shared::run_writes::LeaseKey;
            use $crate::shared::{Backend as _, Tx, rows};
            use $crate::{
                Applied, ClaimedJob, Completion, JobKind, LeasedJob, Millis, Planner, Queue,
                Result, RunRecord, StepExecution, StepResult, StoreError,
            };

            impl $store {
                /// Applies a batch of finished jobs inside one write, returning each one's
                /// outcome (see the module's documentation).
                pub(crate) async fn finish_batch(
                    tx: &mut Tx<Self>,
                    batch: &[&Finish],
                ) -> Result<Vec<Applied>> {
                    let mut applied = vec![None; batch.len()];
                    let mut left: Vec<usize> = (0..batch.len()).collect();
                    while !left.is_empty() {
                        let mut runs = HashSet::new();
                        let (round, later): (Vec<usize>, Vec<usize>) = left
                            .into_iter()
                            .partition(|&i| runs.insert(batch[i].job.run_id.as_str()));
                        let runs: Vec<&str> = runs.into_iter().collect();
                        // Runs first, then their jobs: the lock order of every write.
                        let mut states: HashMap<String, (RunRecord, Vec<StepExecution>)> =
                            Self::load_run_states(tx, &runs)
                                .await?
                                .into_iter()
                                .map(|state| (state.0.id.clone(), state))
                                .collect();
                        let jobs: Vec<(i64, i64)> = round
                            .iter()
                            .map(|&i| (batch[i].job.id, batch[i].job.lease_token))
                            .collect();
                        let held: HashSet<i64> =
                            Self::take_jobs(tx, &jobs).await?.into_iter().collect();
                        let mut leases = Vec::new();
                        for &i in &round {
                            let finish = batch[i];
                            applied[i] = Some(if held.contains(&finish.job.id) {
                                let state = states.remove(&finish.job.run_id).ok_or_else(|| {
                                    StoreError::Corrupt(format!(
                                        "job of missing run {}",
                                        finish.job.run_id
                                    ))
                                })?;
                                Self::apply_finished(tx, finish, state, &mut leases).await?
                            } else {
                                Applied::Stale
                            });
                        }
                        Self::flush_run_writes(tx).await?;
                        if !leases.is_empty() {
                            // A run has one finish per round, so at most one leased job.
                            let mut leased = Self::leased_jobs(tx, &leases).await?;
                            for i in round {
                                if let Some(Applied::Done { next, .. }) = &mut applied[i] {
                                    *next = leased.remove(&batch[i].job.run_id).map(Box::new);
                                }
                            }
                        }
                        left = later;
                    }
                    Ok(applied.into_iter().flatten().collect())
                }

                /// The jobs of steps leased by this write (see [`crate::NewStep::lease`]), at
                /// most one per run, with their runs as the write left them, by run id.
                async fn leased_jobs(
                    tx: &mut Tx<Self>,
                    leases: &[LeaseKey],
                ) -> Result<HashMap<String, LeasedJob>> {
                    let keys = serde_json::to_string(leases).expect("leases serialize");
                    let rows = sqlx::query(Self::LEASED_JOBS)
                        .bind(keys)
                        .fetch_all(&mut **tx)
                        .await?;
                    let mut jobs: HashMap<String, ClaimedJob> = rows
                        .iter()
                        .map(|row| rows::claimed_job(row).map(|job| (job.run_id.clone(), job)))
                        .collect::<Result<_>>()?;
                    let runs: Vec<&str> = leases.iter().map(|(run, _, _)| run.as_str()).collect();
                    let mut leased = HashMap::new();
                    for (run, steps) in Self::load_run_states(tx, &runs).await? {
                        if let Some(job) = jobs.remove(&run.id) {
                            leased.insert(run.id.clone(), LeasedJob { job, run, steps });
                        }
                    }
                    if leased.len() != leases.len() {
                        return Err(StoreError::Corrupt("a leased job is missing".into()));
                    }
                    Ok(leased)
                }

                /// Applies one finished job whose job was held, to its locked run, leasing the
                /// next step due at once to the caller (added to `leases`).
                async fn apply_finished(
                    tx: &mut Tx<Self>,
                    finish: &Finish,
                    (run, steps): (RunRecord, Vec<StepExecution>),
                    leases: &mut Vec<LeaseKey>,
                ) -> Result<Applied> {
                    if run.status.is_terminal() {
                        return Ok(Applied::Stale);
                    }
                    let job = &finish.job;
                    let step = job.step_id.as_deref().map(|id| (id, job.attempt));
                    if let (Some((step_id, attempt)), JobKind::Timeout) = (step, job.kind) {
                        sqlx::query(
                            "UPDATE approvals SET status = 'timed_out' WHERE run_id = $1 \
                             AND step_id = $2 AND attempt = $3 AND status = 'pending'",
                        )
                        .bind(&run.id)
                        .bind(step_id)
                        .bind(attempt)
                        .execute(&mut **tx)
                        .await?;
                    }
                    let result = finish.result.as_ref();
                    let planner = finish.planner.as_ref();
                    let now = finish.now;
                    Self::apply_result(tx, &run, steps, step, result, planner, now, Some(leases))
                        .await
                }
            }

            #[async_trait::async_trait]
            impl Queue for $store {
                async fn claim_jobs(&self, now: Millis, limit: i64) -> Result<Vec<ClaimedJob>> {
                    self.claim_due_jobs(now, limit).await
                }

                async fn next_job_at(&self) -> Result<Option<Millis>> {
                    Ok(sqlx::query_scalar("SELECT MIN(run_at) FROM jobs")
                        .fetch_one(self.reader())
                        .await?)
                }

                async fn finish_job(
                    &self,
                    job: &ClaimedJob,
                    result: Option<StepResult>,
                    planner: Arc<dyn Planner>,
                    now: Millis,
                ) -> Result<Applied> {
                    let finish = Finish {
                        job: job.clone(),
                        result,
                        planner,
                        now,
                    };
                    self.finishes().write(finish).await
                }

                async fn complete_step(
                    &self,
                    run_id: &str,
                    step_id: &str,
                    attempt: i64,
                    completion_hash: &str,
                    result: StepResult,
                    planner: &dyn Planner,
                    now: Millis,
                ) -> Result<Completion> {
                    let mut tx = self.begin().await?;
                    // Locked first: a duplicate completion racing this one waits, then sees
                    // its hash.
                    let state = Self::load_run_state(&mut tx, run_id).await?;
                    let found: Option<(String, Option<String>)> = sqlx::query_as(
                        "SELECT status, completion_hash FROM step_executions \
                         WHERE run_id = $1 AND step_id = $2 AND attempt = $3",
                    )
                    .bind(run_id)
                    .bind(step_id)
                    .bind(attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((status, previous)) = found else {
                        return Ok(Completion::NotFound);
                    };
                    if let Some(previous) = previous {
                        return Ok(if previous == completion_hash {
                            Completion::Duplicate
                        } else {
                            Completion::Conflict
                        });
                    }
                    let (run, steps) = state.ok_or_else(|| {
                        StoreError::Corrupt(format!("step of missing run {run_id}"))
                    })?;
                    if run.status.is_terminal()
                        || !matches!(status.as_str(), "scheduled" | "running")
                    {
                        return Ok(Completion::Gone);
                    }
                    sqlx::query("DELETE FROM jobs WHERE run_id = $1 AND step_id = $2")
                        .bind(run_id)
                        .bind(step_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE step_executions SET completion_hash = $1 \
                         WHERE run_id = $2 AND step_id = $3 AND attempt = $4",
                    )
                    .bind(completion_hash)
                    .bind(run_id)
                    .bind(step_id)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                    let step = (step_id, attempt);
                    Self::apply_outside_result(tx, &run, steps, step, &result, planner, now).await
                }
            }
        };
    };
}
pub(crate) use impl_queue;
