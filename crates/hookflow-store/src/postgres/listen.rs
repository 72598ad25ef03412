//! Cross-node wake-ups over `LISTEN/NOTIFY`: every node listens on one channel and turns
//! payloads into [`Signal`]s.
//!
//! Signals are sent after the commit that calls for them, by a background task that folds
//! whatever piled up into one statement. A `pg_notify` inside the writing transaction would be
//! delivered on commit too, but PostgreSQL then holds its cluster-wide notify lock through that
//! commit's WAL flush, so notifying commits cannot share a flush: measured here, creating runs
//! went from ~5,300/s to ~1,200/s. Signals are hints backed by polling, so one lost in a crash
//! between commit and send costs a poll interval, nothing more.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use super::PgStore;
use crate::{Result, Signal, SignalHandler, Signals};

/// The channel every node listens on.
const CHANNEL: &str = "hookflow";

/// Pause before listening again after an error.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Least time between two sends of one node: signals committed meanwhile go out together.
/// Each send is a transaction that PostgreSQL flushes to its WAL (a `NOTIFY` takes a
/// transaction id), and each wakes every listening node, this one included; at 1,800 runs/s a
/// node sent ~450 a second. The cost is at most this long a delay of another node's wake-up
/// (this node wakes itself without them).
const SEND_GAP: Duration = Duration::from_millis(5);

fn encode(signal: &Signal) -> Cow<'_, str> {
    match signal {
        Signal::Work => "work".into(),
        Signal::Outbox => "outbox".into(),
        Signal::RunEnded(id) => format!("run:{id}").into(),
    }
}

fn decode(payload: &str) -> Option<Signal> {
    match payload {
        "work" => Some(Signal::Work),
        "outbox" => Some(Signal::Outbox),
        _ => payload
            .strip_prefix("run:")
            .map(|id| Signal::RunEnded(id.to_string())),
    }
}

/// Sends committed transactions' signals to every listening node.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    queue: mpsc::UnboundedSender<Vec<Signal>>,
}

impl Notifier {
    /// Starts the sending task; it ends when the last `Notifier` clone is dropped.
    pub(super) fn start(pool: PgPool) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(send_all(pool, pending));
        Self { queue }
    }

    /// Queues the signals of a committed transaction.
    pub(super) fn send(&self, signals: Vec<Signal>) {
        if !signals.is_empty() {
            // Fails only once the sending task is gone, with the store.
            let _ = self.queue.send(signals);
        }
    }
}

async fn send_all(pool: PgPool, mut pending: mpsc::UnboundedReceiver<Vec<Signal>>) {
    while let Some(first) = pending.recv().await {
        let mut payloads: BTreeSet<String> = BTreeSet::new();
        let mut add = |signals: Vec<Signal>| {
            payloads.extend(signals.iter().map(|s| encode(s).into_owned()));
        };
        add(first);
        while let Ok(more) = pending.try_recv() {
            add(more);
        }
        let payloads: Vec<String> = payloads.into_iter().collect();
        let sent = sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, "could not signal the other nodes (they will poll)");
        }
        tokio::time::sleep(SEND_GAP).await;
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn deliver(handler: &SignalHandler, signal: Signal) {
    // A panicking handler must not end the subscription.
    if catch_unwind(AssertUnwindSafe(|| handler(signal))).is_err() {
        tracing::error!("signal handler panicked");
    }
}

/// Hands notifications to `handler` until the pool closes, resubscribing after errors. After a
/// gap, notifications may have been lost: the handler then gets `Work` and `Outbox` anyway.
async fn pump(pool: PgPool, mut listener: PgListener, handler: SignalHandler) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match decode(notification.payload()) {
                Some(signal) => deliver(&handler, signal),
                None => tracing::warn!(payload = notification.payload(), "unknown signal"),
            },
            Ok(None) => {
                // The connection dropped and was re-established.
                deliver(&handler, Signal::Work);
                deliver(&handler, Signal::Outbox);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "signal listener failed; listening again shortly");
                listener = loop {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    if pool.is_closed() {
                        return;
                    }
                    match subscribe(&pool).await {
                        Ok(fresh) => break fresh,
                        Err(error) => tracing::warn!(%error, "signal listener cannot reconnect"),
                    }
                };
                deliver(&handler, Signal::Work);
                deliver(&handler, Signal::Outbox);
            }
        }
    }
}

#[async_trait]
impl Signals for PgStore {
    /// Subscribes before returning (so signals committed afterwards are seen), then delivers
    /// them from a background task that lives as long as the pool.
    async fn watch(&self, handler: SignalHandler) -> Result<()> {
        let listener = subscribe(&self.pool).await?;
        tokio::spawn(pump(self.pool.clone(), listener, handler));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for signal in [
            Signal::Work,
            Signal::Outbox,
            Signal::RunEnded("req_1".into()),
        ] {
            assert_eq!(decode(&encode(&signal)), Some(signal));
        }
        assert_eq!(decode("nonsense"), None);
    }
}
