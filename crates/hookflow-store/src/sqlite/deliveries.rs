//! The outbox: claiming due events and logging delivery attempts.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::{
    AttemptEffect, AttemptRecord, ClaimedDelivery, DeliveryStatus, EventRecord, Millis, NewEvent,
    Outbox, Page, Result, RunRecord, StoreError, Trigger,
};

fn attempt(row: &SqliteRow) -> Result<(i64, AttemptRecord)> {
    let trigger: String = row.try_get("trigger")?;
    Ok((
        row.try_get("id")?,
        AttemptRecord {
            attempt: row.try_get("attempt")?,
            trigger: Trigger::parse(&trigger)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown trigger {trigger:?}")))?,
            url: row.try_get("url")?,
            status_code: row.try_get("status_code")?,
            response_body: row.try_get("response_body")?,
            duration_ms: row.try_get("duration_ms")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
        },
    ))
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "UPDATE deliveries SET run_at = $1 + $3, lease_token = lease_token + 1 \
             WHERE id IN (SELECT id FROM deliveries WHERE run_at <= $1 ORDER BY run_at LIMIT $2) \
             RETURNING id, lease_token, run_id, deployment_id, event_type, payload, url, attempts",
        )
        .bind(now)
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    id: r.try_get("id")?,
                    lease_token: r.try_get("lease_token")?,
                    run_id: r.try_get("run_id")?,
                    deployment_id: r.try_get("deployment_id")?,
                    event_type: r.try_get("event_type")?,
                    payload: r.try_get("payload")?,
                    url: r.try_get("url")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    async fn next_delivery_at(&self) -> Result<Option<Millis>> {
        Ok(
            sqlx::query_scalar("SELECT MIN(run_at) FROM deliveries WHERE run_at IS NOT NULL")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn record_attempt(
        &self,
        event_id: &str,
        run_id: &str,
        lease_token: Option<i64>,
        attempt: &AttemptRecord,
        effect: AttemptEffect,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, run_id, attempt, trigger, url, status_code, \
             response_body, duration_ms, error, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(event_id)
        .bind(run_id)
        .bind(attempt.attempt)
        .bind(attempt.trigger.as_str())
        .bind(&attempt.url)
        .bind(attempt.status_code)
        .bind(&attempt.response_body)
        .bind(attempt.duration_ms)
        .bind(&attempt.error)
        .bind(attempt.created_at)
        .bind(attempt.next_attempt_at)
        .execute(&mut *tx)
        .await?;
        // (status, run_at) after the attempt; None keeps the schedule as it was.
        let next = match effect {
            AttemptEffect::Delivered => Some((DeliveryStatus::Delivered, None)),
            AttemptEffect::RetryAt(at) => Some((DeliveryStatus::Pending, Some(at))),
            AttemptEffect::GiveUp => Some((DeliveryStatus::Failed, None)),
            AttemptEffect::Unchanged => None,
        };
        let sql = match next {
            Some(_) => {
                "UPDATE deliveries SET attempts = attempts + 1, status = $3, run_at = $4, \
                 updated_at = $5 WHERE id = $1 AND ($2 IS NULL OR lease_token = $2)"
            }
            None => {
                "UPDATE deliveries SET attempts = attempts + 1, updated_at = $5 \
                 WHERE id = $1 AND ($2 IS NULL OR lease_token = $2) AND $3 IS NULL AND $4 IS NULL"
            }
        };
        sqlx::query(sql)
            .bind(event_id)
            .bind(lease_token)
            .bind(next.map(|(status, _)| status.as_str()))
            .bind(next.and_then(|(_, at)| at))
            .bind(attempt.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn run_event(&self, run_id: &str) -> Result<Option<EventRecord>> {
        let row = sqlx::query(
            "SELECT id, run_id, deployment_id, payload, url, status, attempts FROM deliveries \
             WHERE run_id = $1 AND event_type LIKE 'workflow.%' ORDER BY created_at LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            let status: String = r.try_get("status")?;
            Ok(EventRecord {
                id: r.try_get("id")?,
                run_id: r.try_get("run_id")?,
                deployment_id: r.try_get("deployment_id")?,
                payload: r.try_get("payload")?,
                url: r.try_get("url")?,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
                attempts: r.try_get("attempts")?,
            })
        })
        .transpose()
    }

    async fn insert_event(&self, run: &RunRecord, event: &NewEvent, now: Millis) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, event_type, payload, \
             url, status, run_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', NULL, $8, $8)",
        )
        .bind(&event.id)
        .bind(&run.id)
        .bind(&run.workspace_id)
        .bind(&run.deployment_id)
        .bind(&event.event_type)
        .bind(&event.payload)
        .bind(&event.url)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delivery_attempts(
        &self,
        run_id: &str,
        page: &Page,
    ) -> Result<Vec<(i64, AttemptRecord)>> {
        let before = page
            .cursor
            .as_deref()
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT * FROM delivery_attempts WHERE run_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(run_id)
        .bind(before)
        .bind(page.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(attempt).collect()
    }
}
