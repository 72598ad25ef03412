//! The work queue: applying the outcomes of claimed jobs and of steps completed from outside
//! ([`crate::Queue`]); claims are the backend's ([`crate::shared::Backend::claim_due_jobs`]).

/// Implements [`crate::Queue`] for `$store`.
macro_rules! impl_queue {
    ($store:ident) => {
        const _: () = {
            use $crate::shared::Backend as _;
            use $crate::{
                Applied, ClaimedJob, Completion, JobKind, Millis, Planner, Queue, Result,
                StepResult, StoreError,
            };

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
                    planner: &dyn Planner,
                    now: Millis,
                ) -> Result<Applied> {
                    let mut tx = self.begin().await?;
                    let state = Self::load_run_state(&mut tx, &job.run_id).await?;
                    let held = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lease_token = $2")
                        .bind(job.id)
                        .bind(job.lease_token)
                        .execute(&mut *tx)
                        .await?;
                    if held.rows_affected() == 0 {
                        return Ok(Applied::Stale);
                    }
                    let (run, steps) = state.ok_or_else(|| {
                        StoreError::Corrupt(format!("job of missing run {}", job.run_id))
                    })?;
                    if run.status.is_terminal() {
                        tx.commit().await?;
                        return Ok(Applied::Stale);
                    }
                    let step = job.step_id.as_deref().map(|id| (id, job.attempt));
                    if let (Some((step_id, attempt)), JobKind::Timeout) = (step, job.kind) {
                        sqlx::query(
                            "UPDATE approvals SET status = 'timed_out' WHERE run_id = $1 \
                             AND step_id = $2 AND attempt = $3 AND status = 'pending'",
                        )
                        .bind(&run.id)
                        .bind(step_id)
                        .bind(attempt)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let applied =
                        Self::apply_result(&mut tx, &run, steps, step, result, planner, now)
                            .await?;
                    tx.commit().await?;
                    Ok(applied)
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
                    let step = Some((step_id, attempt));
                    let applied =
                        Self::apply_result(&mut tx, &run, steps, step, Some(result), planner, now)
                            .await?;
                    tx.commit().await?;
                    Ok(Completion::Applied(applied))
                }
            }
        };
    };
}
pub(crate) use impl_queue;
