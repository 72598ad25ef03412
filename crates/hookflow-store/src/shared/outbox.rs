//! The outbox: claiming due events and logging delivery attempts ([`crate::Outbox`]).

use crate::{AttemptRecord, Millis};

/// A delivery attempt to log, with its effect on its event.
pub(crate) struct LoggedAttempt {
    pub event_id: String,
    pub run_id: String,
    /// The lease that must still hold (None: any).
    pub lease_token: Option<i64>,
    /// The event's status and due time after the attempt; None keeps its schedule.
    pub next: Option<(&'static str, Option<Millis>)>,
    /// The attempt, its texts as the database can store them.
    pub attempt: AttemptRecord,
}

impl LoggedAttempt {
    /// The size of its larger texts.
    pub(crate) fn bytes(&self) -> usize {
        self.attempt.response_body.as_ref().map_or(0, String::len)
            + self.attempt.error.as_ref().map_or(0, String::len)
    }
}

/// Implements [`crate::Outbox`] for `$store`.
macro_rules! impl_outbox {
    ($store:ident) => {
        const _: () = {
            use $crate::shared::outbox::LoggedAttempt;
            use $crate::shared::{Backend as _, rows};
            use $crate::{
                AttemptEffect, AttemptRecord, ClaimedDelivery, DeliveryStatus, EventRecord,
                Millis, NewEvent, Outbox, Page, Result, RunRecord,
            };

            #[async_trait::async_trait]
            impl Outbox for $store {
                async fn claim_deliveries(
                    &self,
                    now: Millis,
                    limit: i64,
                    lease_ms: i64,
                ) -> Result<Vec<ClaimedDelivery>> {
                    let mut tx = self.autocommit().await?;
                    let rows = sqlx::query(Self::CLAIM_DELIVERIES)
                        .bind(now)
                        .bind(limit)
                        .bind(lease_ms)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.iter().map(rows::claimed_delivery).collect()
                }

                async fn next_delivery_at(&self) -> Result<Option<Millis>> {
                    Ok(sqlx::query_scalar(
                        "SELECT MIN(run_at) FROM deliveries WHERE run_at IS NOT NULL",
                    )
                    .fetch_one(self.reader())
                    .await?)
                }

                /// Attempts that hold a lease (scheduled ones) join the node's next batch
                /// ([`crate::batch`]); manual ones, which may repeat an event, are written alone.
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
                    let mut attempt = attempt.clone();
                    attempt.response_body = Self::clean(attempt.response_body.as_deref());
                    attempt.error = Self::clean(attempt.error.as_deref());
                    let logged = LoggedAttempt {
                        event_id: event_id.to_string(),
                        run_id: run_id.to_string(),
                        lease_token,
                        next: next.map(|(status, at)| (status.as_str(), at)),
                        attempt,
                    };
                    match lease_token {
                        Some(_) => self.attempts().write(logged).await,
                        None => self.log_attempts(&[&logged]).await,
                    }
                }

                async fn run_event(&self, run_id: &str) -> Result<Option<EventRecord>> {
                    let row = sqlx::query(
                        "SELECT id, run_id, deployment_id, payload, url, status, attempts \
                         FROM deliveries WHERE run_id = $1 AND event_type LIKE 'workflow.%' \
                         ORDER BY created_at LIMIT 1",
                    )
                    .bind(run_id)
                    .fetch_optional(self.reader())
                    .await?;
                    row.as_ref().map(rows::event).transpose()
                }

                async fn insert_event(
                    &self,
                    run: &RunRecord,
                    event: &NewEvent,
                    now: Millis,
                ) -> Result<()> {
                    let mut tx = self.autocommit().await?;
                    Self::insert_delivery(&mut tx, run, event, None, now).await?;
                    tx.commit().await
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
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter().map(rows::attempt).collect()
                }
            }
        };
    };
}
pub(crate) use impl_outbox;
