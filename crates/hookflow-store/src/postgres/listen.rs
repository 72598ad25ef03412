//! Cross-node wake-ups over `LISTEN/NOTIFY`: transactions queue a notification that PostgreSQL
//! delivers on commit; every node listens on one channel and turns payloads into [`Signal`]s.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPool};

use super::PgStore;
use crate::{Result, Signal, SignalHandler, Signals};

/// The channel every node listens on.
const CHANNEL: &str = "hookflow";

/// Pause before listening again after an error.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

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

/// Queues `signal` for every listening node, delivered when the transaction commits (equal
/// signals within one transaction are folded into one).
pub(super) async fn notify(conn: &mut PgConnection, signal: &Signal) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(encode(signal).as_ref())
        .execute(conn)
        .await?;
    Ok(())
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
