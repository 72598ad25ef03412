//! A run's lifecycle inside a write: loading (and locking) it, recording a step's outcome,
//! planning what follows, and ending it.
//!
//! Everything that advances a run first loads it with [`Backend::FOR_UPDATE`], so on
//! PostgreSQL two nodes finishing two steps of one run plan one after the other, each seeing
//! the other's outcome: a join step is scheduled once, and a run ends once with one event
//! (lock order: see [`crate::postgres`]).
//!
//! [`Backend::FOR_UPDATE`]: crate::shared::Backend::FOR_UPDATE

/// Adds the lifecycle steps to `$store` as associated functions.
macro_rules! impl_lifecycle {
    ($store:ident) => {
        const _: () = {
            use $crate::shared::run_writes::{LeaseKey, RunWrites, StepRow};
            use $crate::shared::{Backend as _, Conn, TIMER_LEASE_MS, Tx, rows};
            use $crate::{
                Applied, Completion, Delivery, Millis, NewApproval, NewEvent, NewStep, Planner,
                Result, RunRecord, Signal, StepExecution, StepResult, Terminal, WAKE_HORIZON_MS,
            };

            impl $store {
                /// Loads a run and its executions inside a write, locking the run until the
                /// write ends (see `Backend::load_run_states`).
                async fn load_run_state(
                    conn: &mut Conn<Self>,
                    run_id: &str,
                ) -> Result<Option<(RunRecord, Vec<StepExecution>)>> {
                    Ok(Self::load_run_states(conn, &[run_id]).await?.pop())
                }

                /// Loads a run inside a write, locking it until the write ends.
                async fn load_run(
                    conn: &mut Conn<Self>,
                    run_id: &str,
                ) -> Result<Option<RunRecord>> {
                    let sql = format!(
                        "SELECT {} FROM runs r WHERE r.id = $1{}",
                        rows::RUN_COLUMNS,
                        Self::FOR_UPDATE
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(run_id)
                        .fetch_optional(&mut *conn)
                        .await?;
                    row.as_ref().map(rows::run).transpose()
                }

                /// Writes an event row of a run; `run_at` Some schedules it, None keeps it for
                /// manual delivery only.
                async fn insert_delivery(
                    conn: &mut Conn<Self>,
                    run: &RunRecord,
                    event: &NewEvent,
                    run_at: Option<Millis>,
                    now: Millis,
                ) -> Result<()> {
                    sqlx::query(
                        "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, \
                         event_type, payload, url, status, run_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $9)",
                    )
                    .bind(&event.id)
                    .bind(&run.id)
                    .bind(&run.workspace_id)
                    .bind(&run.deployment_id)
                    .bind(&event.event_type)
                    .bind(&event.payload)
                    .bind(&event.url)
                    .bind(run_at)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                }

                /// Writes the last changes of a locked run with its end (terminal state and
                /// event, the outbox row), then frees its concurrency slot. `open`: the run
                /// may have open attempts (and so jobs and pending approvals) to abandon.
                async fn end_run(
                    tx: &mut Tx<Self>,
                    writes: RunWrites<'_>,
                    terminal: &Terminal,
                    open: bool,
                ) -> Result<()> {
                    let (run, now) = (writes.run, writes.now);
                    let writes = RunWrites {
                        end: Some(terminal),
                        abandon: open,
                        ..writes
                    };
                    let promote = Self::write_run(tx, &writes).await?;
                    if terminal.event.is_some() && writes.event_lease.is_none() {
                        tx.signal(Signal::Outbox);
                    }
                    if run.delivery == Delivery::Direct {
                        // Only a sync invoke waits for a run's end (callback runs have no
                        // waiter to wake).
                        tx.signal(Signal::RunEnded(run.id.clone()));
                    }
                    if promote {
                        Self::promote(tx, &run.deployment_id, now).await?;
                    }
                    Ok(())
                }

                /// Records a step the planner resolved itself: a finished first attempt.
                async fn record_inline(
                    tx: &mut Tx<Self>,
                    run_id: &str,
                    step_id: &str,
                    result: &StepResult,
                    now: Millis,
                ) -> Result<()> {
                    let (status, output) = result.inline_row();
                    sqlx::query(
                        "INSERT INTO step_executions (run_id, step_id, attempt, status, output, \
                         created_at, started_at, finished_at) VALUES ($1, $2, 1, $3, $4, $5, $5, $5)",
                    )
                    .bind(run_id)
                    .bind(step_id)
                    .bind(status)
                    .bind(output)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                }

                /// Opens a human step's approval (and its `approval.requested` event).
                async fn open_approval(
                    tx: &mut Tx<Self>,
                    run: &RunRecord,
                    step_id: &str,
                    attempt: i64,
                    approval: &NewApproval,
                    now: Millis,
                ) -> Result<()> {
                    sqlx::query(
                        "INSERT INTO approvals (id, workspace_id, run_id, step_id, attempt, \
                         prompt, assignee, status, created_at, deadline) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9)",
                    )
                    .bind(&approval.id)
                    .bind(&run.workspace_id)
                    .bind(&run.id)
                    .bind(step_id)
                    .bind(attempt)
                    .bind(&approval.prompt)
                    .bind(&approval.assignee)
                    .bind(now)
                    .bind(approval.deadline)
                    .execute(&mut **tx)
                    .await?;
                    if let Some(event) = &approval.event {
                        Self::insert_delivery(tx, run, event, Some(now), now).await?;
                        tx.signal(Signal::Outbox);
                    }
                    Ok(())
                }

                /// Applies one attempt's result to a live, locked run whose executions (as
                /// loaded with it) are `steps`, then plans what follows. With `leases`, the
                /// first planned step that is [`NewStep::leasable`] is leased to the caller
                /// (see [`NewStep::lease`]), and added there as (run, step, attempt), and the
                /// run's end event is leased to it when the planner asks (see
                /// [`Planner::lease_event`]).
                #[allow(clippy::too_many_arguments)]
                async fn apply_result(
                    tx: &mut Tx<Self>,
                    run: &RunRecord,
                    mut steps: Vec<StepExecution>,
                    step: Option<(&str, i64)>,
                    result: Option<&StepResult>,
                    planner: &dyn Planner,
                    now: Millis,
                    leases: Option<&mut Vec<LeaseKey>>,
                ) -> Result<Applied> {
                    let mut row = None;
                    let mut timeout_soon = false;
                    if let (Some((step_id, attempt)), Some(result)) = (step, result) {
                        row = StepRow::of(step_id, attempt, result, Self::clean);
                        rows::record_in(&mut steps, step_id, attempt, result, now);
                        match result {
                            StepResult::Failed {
                                retry: Some(retry), ..
                            } => {
                                let writes = RunWrites {
                                    step: row,
                                    start: std::slice::from_ref(retry),
                                    ..RunWrites::new(run, now)
                                };
                                Self::write_run(tx, &writes).await?;
                                let work = NewStep::any_due_soon(writes.start, now);
                                if work {
                                    tx.signal(Signal::Work);
                                }
                                return Ok(Applied::Done {
                                    terminal: None,
                                    event: false,
                                    work,
                                    next: None,
                                    leased_event: None,
                                });
                            }
                            StepResult::Waiting { deadline, approval } => {
                                if let Some(deadline) = deadline {
                                    sqlx::query(
                                        "INSERT INTO jobs (run_id, step_id, attempt, run_at, \
                                         lease_ms, kind) VALUES ($1, $2, $3, $4, $5, 'timeout')",
                                    )
                                    .bind(&run.id)
                                    .bind(step_id)
                                    .bind(attempt)
                                    .bind(deadline)
                                    .bind(TIMER_LEASE_MS)
                                    .execute(&mut **tx)
                                    .await?;
                                    timeout_soon = *deadline < now + WAKE_HORIZON_MS;
                                }
                                if let Some(approval) = approval {
                                    Self::open_approval(tx, run, step_id, attempt, approval, now)
                                        .await?;
                                }
                            }
                            _ => {}
                        }
                    }
                    Self::plan(tx, run, &steps, row, planner, now, timeout_soon, leases).await
                }

                /// Applies, and commits, an attempt's result that came from outside hookflow (an
                /// async step's completion, an answer to an approval): no engine slot waits for
                /// what follows, so nothing is leased.
                async fn apply_outside_result(
                    mut tx: Tx<Self>,
                    run: &RunRecord,
                    steps: Vec<StepExecution>,
                    step: (&str, i64),
                    result: &StepResult,
                    planner: &dyn Planner,
                    now: Millis,
                ) -> Result<Completion> {
                    let (step, result) = (Some(step), Some(result));
                    let applied =
                        Self::apply_result(&mut tx, run, steps, step, result, planner, now, None)
                            .await?;
                    tx.commit().await?;
                    Ok(Completion::Applied(applied))
                }

                /// Asks the planner what follows from the run's executions, and writes it
                /// together with the applied attempt's `row`; `timeout_soon` tells that this
                /// write already scheduled a timeout due within the wake horizon; `leases` as
                /// for [`Self::apply_result`].
                #[allow(clippy::too_many_arguments)]
                async fn plan(
                    tx: &mut Tx<Self>,
                    run: &RunRecord,
                    steps: &[StepExecution],
                    row: Option<StepRow<'_>>,
                    planner: &dyn Planner,
                    now: Millis,
                    timeout_soon: bool,
                    leases: Option<&mut Vec<LeaseKey>>,
                ) -> Result<Applied> {
                    let mut plan = planner.plan(run, steps, now);
                    // Only a finished job's caller takes leases (of a step, or of the event).
                    let takes_leases = leases.is_some();
                    let leasable = plan.start.iter_mut().find(|s| s.leasable(now));
                    if let (Some(leases), Some(step), None) = (leases, leasable, &plan.terminal) {
                        step.lease(now);
                        leases.push((run.id.clone(), step.step_id.clone(), step.attempt));
                    }
                    let writes = RunWrites {
                        step: row,
                        inline: plan.inline_rows(),
                        ..RunWrites::new(run, now)
                    };
                    if let Some(terminal) = &plan.terminal {
                        let open = steps.iter().any(|e| e.status.is_open());
                        let event_lease = (terminal.event.as_ref())
                            .filter(|_| takes_leases)
                            .and_then(|_| planner.lease_event());
                        let writes = RunWrites {
                            event_lease,
                            ..writes
                        };
                        Self::end_run(tx, writes, terminal, open).await?;
                        let leased_event = (terminal.event.as_ref())
                            .filter(|_| event_lease.is_some())
                            .map(|event| Box::new(event.leased(&run.id, &run.deployment_id)));
                        return Ok(Applied::Done {
                            terminal: Some(terminal.status),
                            event: terminal.event.is_some(),
                            work: true,
                            next: None,
                            leased_event,
                        });
                    }
                    let writes = RunWrites {
                        start: &plan.start,
                        status: (plan.status != run.status).then_some(plan.status),
                        ..writes
                    };
                    Self::write_run(tx, &writes).await?;
                    let work = timeout_soon || NewStep::any_due_soon(&plan.start, now);
                    if work {
                        tx.signal(Signal::Work);
                    }
                    Ok(Applied::Done {
                        terminal: None,
                        event: false,
                        work,
                        next: None,
                        leased_event: None,
                    })
                }
            }
        };
    };
}
pub(crate) use impl_lifecycle;
