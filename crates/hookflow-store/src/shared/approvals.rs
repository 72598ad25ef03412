//! Human approvals: reading them, and answering one, which resolves its step
//! ([`crate::Approvals`]).

/// Implements [`crate::Approvals`] for `$store`.
macro_rules! impl_approvals {
    ($store:ident) => {
        const _: () = {
            use $crate::shared::{Backend as _, Conn, cursor, rows};
            use $crate::{
                Answer, Approval, ApprovalStatus, Approvals, Completion, Millis, Page, Planner,
                Result, StepResult, StoreError,
            };

            impl $store {
                /// An approval by id.
                async fn find_approval(
                    conn: &mut Conn<Self>,
                    id: &str,
                ) -> Result<Option<Approval>> {
                    let row = sqlx::query("SELECT * FROM approvals WHERE id = $1")
                        .bind(id)
                        .fetch_optional(conn)
                        .await?;
                    row.as_ref().map(rows::approval).transpose()
                }
            }

            #[async_trait::async_trait]
            impl Approvals for $store {
                async fn approval(&self, id: &str) -> Result<Option<Approval>> {
                    let mut conn = self.reader().acquire().await?;
                    Self::find_approval(&mut conn, id).await
                }

                async fn list_approvals(
                    &self,
                    workspace_id: &str,
                    status: Option<ApprovalStatus>,
                    page: &Page,
                ) -> Result<Vec<Approval>> {
                    let rows = sqlx::query(
                        "SELECT * FROM approvals WHERE workspace_id = $1 \
                         AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
                         AND id < $3 ORDER BY id DESC LIMIT $4",
                    )
                    .bind(workspace_id)
                    .bind(status.map(|s| s.as_str()))
                    .bind(cursor(page))
                    .bind(page.limit)
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter().map(rows::approval).collect()
                }

                async fn answer_approval(
                    &self,
                    id: &str,
                    answer: &Answer,
                    result: StepResult,
                    planner: &dyn Planner,
                    now: Millis,
                ) -> Result<Completion> {
                    let mut tx = self.begin().await?;
                    let Some(found) = Self::find_approval(&mut tx, id).await? else {
                        return Ok(Completion::NotFound);
                    };
                    // The run's lock comes first (as everywhere); the approval is read again
                    // under it, so of two answers racing, the second sees the first.
                    let (run, steps) = Self::load_run_state(&mut tx, &found.run_id)
                        .await?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("approval of missing run {}", found.run_id))
                        })?;
                    let found = Self::find_approval(&mut tx, id)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt(format!("approval {id} vanished")))?;
                    match found.status {
                        ApprovalStatus::Pending => {}
                        ApprovalStatus::Cancelled | ApprovalStatus::TimedOut => {
                            return Ok(Completion::Gone);
                        }
                        ApprovalStatus::Approved | ApprovalStatus::Rejected => {
                            return Ok(Completion::Conflict);
                        }
                    }
                    if run.status.is_terminal() {
                        return Ok(Completion::Gone);
                    }
                    sqlx::query(
                        "UPDATE approvals SET status = $1, decision = $2, comment = $3, \
                         data = $4, responder = $5, answered_at = $6 WHERE id = $7",
                    )
                    .bind(answer.status.as_str())
                    .bind(match answer.status {
                        ApprovalStatus::Approved => "approve",
                        _ => "reject",
                    })
                    .bind(&answer.comment)
                    .bind(answer.data.to_string())
                    .bind(&answer.responder)
                    .bind(answer.answered_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM jobs WHERE run_id = $1 AND step_id = $2")
                        .bind(&run.id)
                        .bind(&found.step_id)
                        .execute(&mut *tx)
                        .await?;
                    let step = (found.step_id.as_str(), found.attempt);
                    Self::apply_outside_result(tx, &run, steps, step, &result, planner, now).await
                }
            }
        };
    };
}
pub(crate) use impl_approvals;
