//! The outbox: claiming due events and logging delivery attempts.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::{PgStore, clean, rows};
use crate::{
    AttemptEffect, AttemptRecord, ClaimedDelivery, DeliveryStatus, EventRecord, Millis, NewEvent,
    Outbox, Page, Result, RunRecord, Trigger,
};

/// Writes an event row of a run; `run_at` Some schedules it, None keeps it for manual delivery
/// only.
pub(super) async fn insert_delivery(
    conn: &mut PgConnection,
    run: &RunRecord,
    event: &NewEvent,
    run_at: Option<Millis>,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO deliveries (id, run_id, workspace_id, deployment_id, event_type, payload, \
         url, status, run_at, created_at, updated_at) \
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
    .execute(conn)
    .await?;
    Ok(())
}

fn attempt(row: &PgRow) -> Result<(i64, AttemptRecord)> {
    Ok((
        row.try_get("id")?,
        AttemptRecord {
            attempt: row.try_get("attempt")?,
            trigger: rows::parse(row.try_get("trigger")?, Trigger::parse)?,
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
impl Outbox for PgStore {
    /// One statement, `SKIP LOCKED` as for jobs, along the partial index of pending events.
    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let rows = sqlx::query(
            "UPDATE deliveries SET run_at = $1 + $3, lease_token = lease_token + 1 \
             WHERE id = ANY(ARRAY( \
               SELECT id FROM deliveries WHERE run_at <= $1 ORDER BY run_at LIMIT $2 \
               FOR UPDATE SKIP LOCKED)) \
             RETURNING id, lease_token, run_id, deployment_id, event_type, payload, url, attempts",
        )
        .bind(now)
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await?;
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
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The log row and the event's update are one statement.
    async fn record_attempt(
        &self,
        event_id: &str,
        run_id: &str,
        lease_token: Option<i64>,
        attempt: &AttemptRecord,
        effect: AttemptEffect,
    ) -> Result<()> {
        // (status, run_at) after the attempt; None keeps the schedule as it was.
        let next = match effect {
            AttemptEffect::Delivered => Some((DeliveryStatus::Delivered, None)),
            AttemptEffect::RetryAt(at) => Some((DeliveryStatus::Pending, Some(at))),
            AttemptEffect::GiveUp => Some((DeliveryStatus::Failed, None)),
            AttemptEffect::Unchanged => None,
        };
        sqlx::query(
            "WITH logged AS ( \
               INSERT INTO delivery_attempts (delivery_id, run_id, attempt, trigger, url, \
               status_code, response_body, duration_ms, error, created_at, next_attempt_at) \
               VALUES ($1, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)) \
             UPDATE deliveries SET attempts = attempts + 1, status = COALESCE($3, status), \
               run_at = CASE WHEN $3::text IS NULL THEN run_at ELSE $4 END, updated_at = $5 \
             WHERE id = $1 AND ($2::bigint IS NULL OR lease_token = $2)",
        )
        .bind(event_id)
        .bind(lease_token)
        .bind(next.map(|(status, _)| status.as_str()))
        .bind(next.and_then(|(_, at)| at))
        .bind(attempt.created_at)
        .bind(run_id)
        .bind(attempt.attempt)
        .bind(attempt.trigger.as_str())
        .bind(&attempt.url)
        .bind(attempt.status_code)
        .bind(clean(attempt.response_body.as_deref()))
        .bind(attempt.duration_ms)
        .bind(clean(attempt.error.as_deref()))
        .bind(attempt.created_at)
        .bind(attempt.next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn run_event(&self, run_id: &str) -> Result<Option<EventRecord>> {
        let row = sqlx::query(
            "SELECT id, run_id, deployment_id, payload, url, status, attempts FROM deliveries \
             WHERE run_id = $1 AND event_type LIKE 'workflow.%' ORDER BY created_at LIMIT 1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(EventRecord {
                id: r.try_get("id")?,
                run_id: r.try_get("run_id")?,
                deployment_id: r.try_get("deployment_id")?,
                payload: r.try_get("payload")?,
                url: r.try_get("url")?,
                status: rows::parse(r.try_get("status")?, DeliveryStatus::parse)?,
                attempts: r.try_get("attempts")?,
            })
        })
        .transpose()
    }

    async fn insert_event(&self, run: &RunRecord, event: &NewEvent, now: Millis) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_delivery(&mut conn, run, event, None, now).await
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
            "SELECT * FROM delivery_attempts WHERE run_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(run_id)
        .bind(before)
        .bind(page.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt).collect()
    }
}
