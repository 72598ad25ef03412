//! Callback delivery: claims due events from the outbox, signs and sends them, logs every
//! attempt and schedules the next one.

mod send;

use std::sync::Arc;
use std::time::Duration;

use hookflow_core::retry::AttemptOutcome;
use hookflow_store::{AttemptEffect, ClaimedDelivery, Millis, Trigger};
use tokio::sync::OwnedSemaphorePermit;

use crate::app::{App, now_ms, sleep_until_due};
use crate::config::Settings;
pub use send::{Outgoing, Sent, send};

/// Attempts in flight at once on one node (the size of [`App::delivery_slots`]).
pub const MAX_IN_FLIGHT: usize = 128;
/// Events claimed per round trip.
const CLAIM_BATCH: usize = 64;
/// Longest sleep between polls.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Lease beyond the callback timeout before another node may retry an event.
const LEASE_MARGIN_MS: i64 = 30_000;

/// How long a node holds an event it sends: another node may retry it after that.
pub fn lease_ms(settings: &Settings) -> i64 {
    settings.callback_timeout.as_millis() as i64 + LEASE_MARGIN_MS
}

/// Runs the delivery loop until the process ends.
pub async fn run(app: Arc<App>) {
    let slots = app.delivery_slots.clone();
    let lease_ms = lease_ms(&app.settings);
    loop {
        let free = slots.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            drop(slots.clone().acquire_owned().await);
            continue;
        }
        let claimed = match app
            .store
            .claim_deliveries(now_ms(), free as i64, lease_ms)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(error = %e, "claiming deliveries failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let full = claimed.len() == free;
        for delivery in claimed {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            spawn_attempt(app.clone(), delivery, Some(permit));
        }
        if !full {
            sleep_until_due(&app.outbox, app.store.next_delivery_at(), POLL_INTERVAL).await;
        }
    }
}

/// Sends a leased event's scheduled attempt in its own task, holding `slot` (one of
/// [`App::delivery_slots`]) until it is logged.
pub fn spawn_attempt(app: Arc<App>, delivery: ClaimedDelivery, slot: Option<OwnedSemaphorePermit>) {
    tokio::spawn(async move {
        if let Err(e) = attempt(&app, &delivery).await {
            tracing::error!(event = %delivery.id, error = %e, "delivery attempt failed; retried after its lease");
        }
        drop(slot);
    });
}

/// The signing secrets of a deployment right now, newest first (its deployment read through
/// the node's short-lived copies; see [`crate::lookups`]).
pub async fn signing_secrets(app: &App, deployment_id: &str) -> anyhow::Result<Vec<String>> {
    let deployment = match app.lookups.signing.get(&deployment_id.to_string()) {
        Some(deployment) => deployment,
        None => {
            let deployment = app
                .store
                .deployment_by_id(deployment_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("deployment {deployment_id} not found"))?;
            app.lookups
                .signing
                .insert(deployment_id.to_string(), deployment.clone());
            deployment
        }
    };
    Ok(deployment
        .active_secrets(now_ms())
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// One scheduled attempt of a claimed event.
async fn attempt(app: &App, delivery: &ClaimedDelivery) -> anyhow::Result<()> {
    let secrets = signing_secrets(app, &delivery.deployment_id).await?;
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let out = Outgoing {
        event_id: &delivery.id,
        payload: &delivery.payload,
        url: &delivery.url,
        secrets: &secrets,
    };
    let number = delivery.attempts + 1;
    let Sent {
        mut record,
        outcome,
    } = send(app, &out, number, Trigger::Scheduled).await;
    let label = match outcome {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::Gone => "gone",
        AttemptOutcome::TooManyRequests { .. } => "throttled",
        AttemptOutcome::TimedOut => "timed_out",
        AttemptOutcome::Failed { .. } => "failed",
    };
    metrics::counter!("hookflow_delivery_attempts_total", "outcome" => label).increment(1);
    let effect = match outcome {
        AttemptOutcome::Delivered => AttemptEffect::Delivered,
        _ => match app
            .settings
            .retry
            .next_delay(number as u32, &outcome, &mut rand::rng())
        {
            Some(delay) => {
                let at = record.created_at + record.duration_ms + delay.as_millis() as Millis;
                record.next_attempt_at = Some(at);
                AttemptEffect::RetryAt(at)
            }
            None => AttemptEffect::GiveUp,
        },
    };
    app.store
        .record_attempt(
            &delivery.id,
            &delivery.run_id,
            Some(delivery.lease_token),
            &record,
            effect,
        )
        .await?;
    Ok(())
}
