//! Creating, reading, cancelling and listing runs ([`crate::Runs`]).

/// Inserts a run: `$1`-`$20` bound by [`bind_new_run!`].
pub(crate) const INSERT_RUN: &str = "INSERT INTO runs (id, workspace_id, deployment_id, \
    deployment_name, variant, workflow, version, status, source, delivery, callback_url, inputs, \
    run_user, metadata, settings, created_at, started_at, output, error, finished_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
    $19, $20)";

/// Binds [`INSERT_RUN`]'s parameters for `$run` (a `NewRun`) starting in `$status`, unless
/// `$queued`, and ended at once when `$terminal` (an `Option<&Terminal>`) is set; `$clean` is
/// the backend's `clean`.
macro_rules! bind_new_run {
    ($query:expr, $run:expr, $status:expr, $queued:expr, $terminal:expr, $clean:path) => {
        $query
            .bind(&$run.id)
            .bind(&$run.workspace_id)
            .bind(&$run.deployment_id)
            .bind(&$run.deployment_name)
            .bind(&$run.variant)
            .bind(&$run.workflow)
            .bind($run.version)
            .bind($status.as_str())
            .bind($run.source.as_str())
            .bind($run.delivery.as_str())
            .bind(&$run.callback_url)
            .bind($run.inputs.to_string())
            .bind(&$run.user)
            .bind($run.metadata.to_string())
            .bind($run.settings.to_string())
            .bind($run.created_at)
            .bind((!$queued).then_some($run.created_at))
            .bind(
                $terminal
                    .and_then(|t| t.output.as_ref())
                    .map(|v| v.to_string()),
            )
            .bind($clean($terminal.and_then(|t| t.error.as_deref())))
            .bind($terminal.map(|_| $run.created_at))
    };
}
pub(crate) use bind_new_run;

/// Implements [`crate::Runs`] for `$store`.
macro_rules! impl_runs {
    ($store:ident) => {
        const _: () = {
            use sqlx::QueryBuilder;

            use $crate::shared::run_writes::RunWrites;
            use $crate::shared::new_runs;
            use $crate::shared::runs::{INSERT_RUN, bind_new_run};
            use $crate::shared::{
                Backend as _, Conn, IDEMPOTENCY_WINDOW_MS, LockSpace, cursor, rows,
            };
            use $crate::{
                Cancelled, CreatedRun, IdempotencyClaim, Millis, NewRun, Page, Result,
                RunFilter, RunRecord, RunStatus, Runs, Signal, StepExecution, Terminal,
            };

            impl $store {
                /// Takes the idempotency key for this run (replacing an expired use), or
                /// returns the answer owed to a live earlier use. A concurrent first use makes
                /// this wait for its commit.
                async fn claim_key(
                    conn: &mut Conn<Self>,
                    run: &NewRun,
                    claim: &IdempotencyClaim,
                ) -> Result<Option<CreatedRun>> {
                    let taken = sqlx::query(
                        "INSERT INTO idempotency_keys AS k (workspace_id, key, body_hash, \
                         request_id, response, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (workspace_id, key) DO UPDATE SET body_hash = $3, \
                         request_id = $4, response = $5, created_at = $6 \
                         WHERE k.created_at + $7 <= $6",
                    )
                    .bind(&run.workspace_id)
                    .bind(&claim.key)
                    .bind(&claim.body_hash)
                    .bind(&run.id)
                    .bind(claim.response.to_string())
                    .bind(run.created_at)
                    .bind(IDEMPOTENCY_WINDOW_MS)
                    .execute(&mut *conn)
                    .await?;
                    if taken.rows_affected() == 1 {
                        return Ok(None);
                    }
                    let (hash, request_id, response): (String, String, String) =
                        sqlx::query_as(
                            "SELECT body_hash, request_id, response FROM idempotency_keys \
                             WHERE workspace_id = $1 AND key = $2",
                        )
                        .bind(&run.workspace_id)
                        .bind(&claim.key)
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok(Some(if hash == claim.body_hash {
                        CreatedRun::Replayed {
                            request_id,
                            response: rows::json(&response)?,
                        }
                    } else {
                        CreatedRun::IdempotencyConflict
                    }))
                }

                /// Whether a new run of the deployment must wait: the limit is reached or
                /// others wait already. The caller holds the deployment's slot lock, so the
                /// answer holds until it commits.
                async fn must_queue(
                    conn: &mut Conn<Self>,
                    deployment_id: &str,
                    limit: i64,
                ) -> Result<bool> {
                    Ok(sqlx::query_scalar(
                        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE deployment_id = $1 \
                                 AND status IN ('running', 'waiting') LIMIT $2) AS active) >= $2 \
                             OR EXISTS (SELECT 1 FROM runs \
                                 WHERE deployment_id = $1 AND status = 'queued')",
                    )
                    .bind(deployment_id)
                    .bind(limit)
                    .fetch_one(&mut *conn)
                    .await?)
                }
            }

            #[async_trait::async_trait]
            impl Runs for $store {
                async fn create_run(&self, run: &NewRun) -> Result<CreatedRun> {
                    if run.idempotency.is_none() && run.concurrency_limit.is_none() {
                        return self.create_unchecked(run).await;
                    }
                    let mut tx = self.begin().await?;
                    if let Some(claim) = &run.idempotency
                        && let Some(earlier) = Self::claim_key(&mut tx, run, claim).await?
                    {
                        return Ok(earlier);
                    }
                    let queued = match run.concurrency_limit {
                        Some(limit) => {
                            Self::lock(&mut tx, LockSpace::DeploymentSlots, &run.deployment_id)
                                .await?;
                            Self::must_queue(&mut tx, &run.deployment_id, limit).await?
                        }
                        None => false,
                    };
                    if queued && run.refuse_when_full {
                        // Dropping the transaction also releases the idempotency key.
                        return Ok(CreatedRun::ConcurrencyLimit);
                    }
                    let terminal = run.plan.terminal.as_ref().filter(|_| !queued);
                    let status = match (queued, terminal) {
                        (true, _) => RunStatus::Queued,
                        (false, Some(terminal)) => terminal.status,
                        (false, None) => run.plan.status,
                    };
                    let insert = sqlx::query(INSERT_RUN);
                    bind_new_run!(insert, run, status, queued, terminal, Self::clean)
                        .execute(&mut *tx)
                        .await?;
                    if queued {
                        if let Some(claim) = &run.idempotency {
                            let mut response = claim.response.clone();
                            response["run_status"] = status.as_str().into();
                            sqlx::query(
                                "UPDATE idempotency_keys SET response = $3 \
                                 WHERE workspace_id = $1 AND key = $2",
                            )
                            .bind(&run.workspace_id)
                            .bind(&claim.key)
                            .bind(response.to_string())
                            .execute(&mut *tx)
                            .await?;
                        }
                    } else {
                        let now = run.created_at;
                        for (step_id, result) in &run.plan.inline {
                            Self::record_inline(&mut tx, &run.id, step_id, result, now).await?;
                        }
                        Self::schedule_steps(&mut tx, &run.id, &run.plan.start, now).await?;
                        if let Some(event) = terminal.and_then(|t| t.event.as_ref()) {
                            let due = now + run.event_lease.unwrap_or(0);
                            Self::insert_delivery(&mut tx, &run.record(), event, Some(due), now)
                                .await?;
                            if run.event_lease.is_none() {
                                tx.signal(Signal::Outbox);
                            }
                        }
                    }
                    // Only a run that starts writes its steps, and so its leased one.
                    let mut job = None;
                    if let (false, Some((step_id, attempt))) = (queued, &run.leased) {
                        job = sqlx::query_scalar(
                            "SELECT id FROM jobs WHERE run_id = $1 AND step_id = $2 \
                             AND attempt = $3",
                        )
                        .bind(&run.id)
                        .bind(step_id)
                        .bind(attempt)
                        .fetch_one(&mut *tx)
                        .await
                        .map(Some)?;
                    }
                    tx.commit().await?;
                    Ok(new_runs::created(run, status, job))
                }

                async fn run(&self, workspace_id: &str, id: &str) -> Result<Option<RunRecord>> {
                    let sql = format!(
                        "SELECT {} FROM runs WHERE id = $1 AND workspace_id = $2",
                        rows::RUN_COLUMNS
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .bind(workspace_id)
                        .fetch_optional(self.reader())
                        .await?;
                    row.as_ref().map(rows::run).transpose()
                }

                async fn run_by_id(&self, id: &str) -> Result<Option<RunRecord>> {
                    let sql = format!("SELECT {} FROM runs WHERE id = $1", rows::RUN_COLUMNS);
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?;
                    row.as_ref().map(rows::run).transpose()
                }

                async fn run_states(
                    &self,
                    ids: &[&str],
                ) -> Result<Vec<(RunRecord, Vec<StepExecution>)>> {
                    self.read_run_states(ids).await
                }

                async fn step_executions(&self, run_id: &str) -> Result<Vec<StepExecution>> {
                    let sql = format!(
                        "SELECT {} FROM step_executions WHERE run_id = $1 \
                         ORDER BY created_at, step_id, attempt",
                        rows::STEP_COLUMNS
                    );
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(run_id)
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(rows::step_execution).collect()
                }

                async fn cancel_run(
                    &self,
                    workspace_id: &str,
                    id: &str,
                    terminal: &Terminal,
                    now: Millis,
                ) -> Result<Cancelled> {
                    let mut tx = self.begin().await?;
                    let Some(run) = Self::load_run(&mut tx, id)
                        .await?
                        .filter(|r| r.workspace_id == workspace_id)
                    else {
                        return Ok(Cancelled::NotFound);
                    };
                    if run.status.is_terminal() {
                        return Ok(Cancelled::AlreadyTerminal(run.status));
                    }
                    Self::end_run(&mut tx, RunWrites::new(&run, now), terminal, true).await?;
                    tx.commit().await?;
                    Ok(Cancelled::Done)
                }

                async fn promote_queued(&self, deployment_id: &str, now: Millis) -> Result<()> {
                    let mut tx = self.begin().await?;
                    Self::promote(&mut tx, deployment_id, now).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn list_runs(
                    &self,
                    workspace_id: &str,
                    filter: &RunFilter,
                    page: &Page,
                ) -> Result<Vec<RunRecord>> {
                    let mut q = QueryBuilder::new("SELECT ");
                    q.push(rows::RUN_COLUMNS);
                    q.push(" FROM runs WHERE workspace_id = ")
                        .push_bind(workspace_id);
                    q.push(" AND id < ").push_bind(cursor(page));
                    if let Some(status) = filter.status {
                        q.push(" AND status = ").push_bind(status.as_str());
                    }
                    if let Some(source) = filter.source {
                        q.push(" AND source = ").push_bind(source.as_str());
                    }
                    if let Some(delivery) = filter.delivery {
                        q.push(" AND delivery = ").push_bind(delivery.as_str());
                    }
                    if let Some(deployment) = &filter.deployment {
                        q.push(" AND (deployment_id = ")
                            .push_bind(deployment)
                            .push(" OR deployment_name = ")
                            .push_bind(deployment)
                            .push(")");
                    }
                    if let Some(user) = &filter.user {
                        q.push(" AND run_user = ").push_bind(user);
                    }
                    for (key, value) in &filter.metadata {
                        Self::push_metadata_filter(&mut q, key, value);
                    }
                    if let Some(since) = filter.since {
                        q.push(" AND created_at >= ").push_bind(since);
                    }
                    if let Some(until) = filter.until {
                        q.push(" AND created_at < ").push_bind(until);
                    }
                    q.push(" ORDER BY id DESC LIMIT ").push_bind(page.limit);
                    let rows = q.build().fetch_all(self.reader()).await?;
                    rows.iter().map(rows::run).collect()
                }
            }
        };
    };
}
pub(crate) use impl_runs;
