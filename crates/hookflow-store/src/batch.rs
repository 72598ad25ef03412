//! Group writes: what concurrent callers hand to one [`Batcher`] is written by its one writer
//! task in batches, one transaction per batch, so the database commits (and flushes) once per
//! batch instead of once per item.
//!
//! Batches form on their own: while one batch is being written, new items queue, and the
//! writer then takes all that queued (at most [`MAX_BATCH`] items, or until [`MAX_BATCH_BYTES`]).
//! Under light load an item is written alone, at once; no timer ever holds one back. Each caller
//! is answered, with its item's output, after the commit that holds its item. When a batch
//! fails, its items are written again one by one, so one bad item cannot fail the others; a
//! batch whose writing panics fails its callers, and the writer goes on with the next.
//!
//! One writer per batcher: measured with the benchmark's accept figure on PostgreSQL (64
//! connections, quick mode), one writer accepted 15,195 runs/s, two 10,787-12,114/s, three
//! 10,189/s, four 7,167-9,361/s, eight 8,975/s: fewer, larger statements cost the database less
//! than more, concurrent ones.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Result, StoreError};

/// Most items in one batch.
const MAX_BATCH: usize = 256;

/// A batch takes no more items once its text passes this size, so that large items do not make
/// one huge statement.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Items waiting for the writer at most; callers beyond it wait to hand theirs over.
const QUEUE: usize = 4096;

/// How a batch is written.
pub(crate) trait BatchWrite: Send + Sync + 'static {
    /// What callers hand over.
    type Item: Send + Sync + 'static;
    /// What each caller gets back.
    type Output: Send + 'static;

    /// Writes `items` in one transaction, returning one output per item, in order.
    fn write(
        &self,
        items: &[&Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>>> + Send;

    /// The size of the item's larger texts (what may make a batch large).
    fn bytes(item: &Self::Item) -> usize;
}

/// An item handed to the writer, and who waits for its commit.
struct Pending<I, O> {
    item: I,
    done: oneshot::Sender<Result<O>>,
}

/// Hands items of type `I` to one writer task, which answers each with an `O`.
pub(crate) struct Batcher<I, O = ()> {
    queue: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O> fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the writer; it stops when the last `Batcher` clone is dropped.
    pub(crate) fn start<W: BatchWrite<Item = I, Output = O>>(writer: W) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(write_all(Arc::new(writer), pending));
        Self { queue }
    }

    /// Writes `item`, returning its output once it is committed.
    pub(crate) async fn write(&self, item: I) -> Result<O> {
        let (done, committed) = oneshot::channel();
        let stopped = || StoreError::Commit("the batch writer failed or has stopped".into());
        self.queue
            .send(Pending { item, done })
            .await
            .map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?
    }
}

/// Writes whatever queued while the previous batch was being written, as one batch.
async fn write_all<W: BatchWrite>(
    writer: Arc<W>,
    mut pending: mpsc::Receiver<Pending<W::Item, W::Output>>,
) {
    while let Some(first) = pending.recv().await {
        let mut bytes = W::bytes(&first.item);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = pending.try_recv() else {
                break;
            };
            bytes += W::bytes(&next.item);
            batch.push(next);
        }
        // A task of its own, so that a panic while writing (a bug) fails this batch's callers
        // (their answers are dropped) instead of stopping every later write.
        let writer = writer.clone();
        if let Err(e) = tokio::spawn(async move { write(&*writer, batch).await }).await {
            tracing::error!(error = %e, "writing a batch failed");
        }
    }
}

/// Writes a batch and answers its callers; a failed batch is written again item by item.
async fn write<W: BatchWrite>(writer: &W, batch: Vec<Pending<W::Item, W::Output>>) {
    if batch.len() > 1 {
        let items: Vec<&W::Item> = batch.iter().map(|p| &p.item).collect();
        if let Ok(outputs) = writer.write(&items).await {
            return answer(batch, outputs);
        }
    }
    for pending in batch {
        match writer.write(&[&pending.item]).await {
            Ok(outputs) => answer(vec![pending], outputs),
            Err(e) => {
                let _ = pending.done.send(Err(e));
            }
        }
    }
}

/// Answers the callers of a committed batch with their outputs.
fn answer<I, O>(batch: Vec<Pending<I, O>>, outputs: Vec<O>) {
    if outputs.len() != batch.len() {
        // A bug in the writer: reported to the callers rather than guessed at.
        for pending in batch {
            let _ = pending.done.send(Err(StoreError::Commit(
                "the batch writer answered for a different number of items".into(),
            )));
        }
        return;
    }
    for (pending, output) in batch.into_iter().zip(outputs) {
        // A caller that went away no longer needs its answer; its item stays committed.
        let _ = pending.done.send(Ok(output));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles each item; panics on a negative one.
    struct Doubler;

    impl BatchWrite for Doubler {
        type Item = i64;
        type Output = i64;

        async fn write(&self, items: &[&i64]) -> Result<Vec<i64>> {
            assert!(items.iter().all(|&&n| n >= 0), "a negative item");
            Ok(items.iter().map(|&&n| n * 2).collect())
        }

        fn bytes(_item: &i64) -> usize {
            0
        }
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_later_writes_go_on() {
        let batcher = Batcher::start(Doubler);
        assert!(batcher.write(-1).await.is_err());
        assert_eq!(batcher.write(21).await.unwrap(), 42);
    }
}
