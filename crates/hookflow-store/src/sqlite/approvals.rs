//! Human approvals: reading them, and answering one (which resolves its step).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::queue::{apply_result, load_run};
use super::{SqliteStore, rows};
use crate::{
    Answer, Approval, ApprovalStatus, Approvals, Completion, Millis, Page, Planner, Result,
    StepResult, StoreError,
};

fn approval(row: &SqliteRow) -> Result<Approval> {
    let status: String = row.try_get("status")?;
    Ok(Approval {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        run_id: row.try_get("run_id")?,
        step_id: row.try_get("step_id")?,
        attempt: row.try_get("attempt")?,
        prompt: row.try_get("prompt")?,
        assignee: row.try_get("assignee")?,
        status: ApprovalStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown approval status {status:?}")))?,
        decision: row.try_get("decision")?,
        comment: row.try_get("comment")?,
        data: rows::opt_json(row.try_get("data")?)?,
        responder: row.try_get("responder")?,
        created_at: row.try_get("created_at")?,
        deadline: row.try_get("deadline")?,
        answered_at: row.try_get("answered_at")?,
    })
}

#[async_trait]
impl Approvals for SqliteStore {
    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let row = sqlx::query("SELECT * FROM approvals WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(approval).transpose()
    }

    async fn list_approvals(
        &self,
        workspace_id: &str,
        status: Option<ApprovalStatus>,
        page: &Page,
    ) -> Result<Vec<Approval>> {
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE workspace_id = $1 AND ($2 IS NULL OR status = $2) \
             AND id < $3 ORDER BY id DESC LIMIT $4",
        )
        .bind(workspace_id)
        .bind(status.map(|s| s.as_str()))
        .bind(super::admin::cursor(page))
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(approval).collect()
    }

    async fn answer_approval(
        &self,
        id: &str,
        answer: &Answer,
        result: StepResult,
        planner: &dyn Planner,
        now: Millis,
    ) -> Result<Completion> {
        let mut tx = self.write().await?;
        let row = sqlx::query("SELECT * FROM approvals WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(found) = row.as_ref().map(approval).transpose()? else {
            return Ok(Completion::NotFound);
        };
        match found.status {
            ApprovalStatus::Pending => {}
            ApprovalStatus::Cancelled | ApprovalStatus::TimedOut => return Ok(Completion::Gone),
            ApprovalStatus::Approved | ApprovalStatus::Rejected => return Ok(Completion::Conflict),
        }
        let run = load_run(&mut tx, &found.run_id).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("approval of missing run {}", found.run_id))
        })?;
        if run.status.is_terminal() {
            return Ok(Completion::Gone);
        }
        sqlx::query(
            "UPDATE approvals SET status = $1, decision = $2, comment = $3, data = $4, \
             responder = $5, answered_at = $6 WHERE id = $7",
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
        let step = Some((found.step_id.as_str(), found.attempt));
        let applied = apply_result(&mut tx, &run, step, Some(result), planner, now).await?;
        tx.commit().await?;
        Ok(Completion::Applied(applied))
    }
}
