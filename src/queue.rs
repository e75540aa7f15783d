//! Queue: the bounded hand-off from request tasks to the one writer task, and the writer.
//!
//! `offer` never waits: a full queue costs one capture (counted and logged), never the app's
//! latency. The writer batches by count or time (whichever first), assembles spans, stores them
//! on a blocking thread, and drains everything queued before it exits.

use std::{sync::Arc, time::Duration};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};

use crate::{
    metrics::Metrics,
    span::{self, AssembleOptions, Span},
    store::Store,
    tap::CallRecord,
};

use std::sync::atomic::Ordering::Relaxed;

/// The sending side, held by the proxy. Cheap to clone.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<CallRecord>,
    metrics: Arc<Metrics>,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub assemble: AssembleOptions,
}

impl SpanQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<CallRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, metrics }, rx)
    }

    /// Never awaits: a full queue costs one span, never the app's latency.
    pub fn offer(&self, record: CallRecord) {
        let (reason, counter) = match self.tx.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => ("queue_full", &self.metrics.captures_dropped_queue_full),
            Err(TrySendError::Closed(_)) => {
                ("shutting_down", &self.metrics.captures_dropped_shutdown)
            }
        };
        let dropped = counter.fetch_add(1, Relaxed) + 1;
        if dropped.is_power_of_two() {
            // 1, 2, 4, 8, …: visible in logs without flooding them.
            tracing::warn!(reason, dropped, "capture dropped; traffic unaffected");
        }
    }

    /// Captures waiting for the writer.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs until the channel is closed *and* empty, so shutdown loses nothing queued.
///
/// When `stop` turns true the channel is closed (later offers count as `shutting_down`) and
/// everything already queued is still written, then the store is flushed.
pub async fn run_writer(
    mut rx: mpsc::Receiver<CallRecord>,
    store: Store,
    metrics: Arc<Metrics>,
    opts: WriterOptions,
    mut stop: watch::Receiver<bool>,
) {
    let max = opts.batch_size.max(1);
    let mut batch: Vec<CallRecord> = Vec::with_capacity(max);
    let mut closing = false;
    loop {
        // recv_many waits for at least one record, then takes whatever else is already queued.
        let received = if closing {
            rx.recv_many(&mut batch, max).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, max) => n,
                _ = stop.wait_for(|s| *s) => {
                    rx.close();
                    closing = true;
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
        // Wait up to batch_interval for the batch to fill (recv_many is cancellation-safe).
        let deadline = tokio::time::Instant::now() + opts.batch_interval;
        while batch.len() < max {
            let want = max - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, want)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let records = std::mem::replace(&mut batch, Vec::with_capacity(max));
        let assemble_opts = opts.assemble.clone();
        let store = store.clone();
        let count = records.len() as u64;
        let written = tokio::task::spawn_blocking(move || {
            let spans: Vec<Span> = records
                .into_iter()
                .map(|r| span::assemble(r, &assemble_opts))
                .collect();
            store.put_spans(&spans)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                metrics.spans_captured.fetch_add(count, Relaxed);
                metrics.store_ok.store(true, Relaxed);
            }
            Ok(Err(e)) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                metrics
                    .captures_dropped_store_error
                    .fetch_add(count, Relaxed);
                metrics.store_ok.store(false, Relaxed);
                tracing::error!(error = %e, spans = count, "span batch not stored; traffic unaffected");
            }
            Err(e) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                metrics
                    .captures_dropped_store_error
                    .fetch_add(count, Relaxed);
                tracing::error!(error = %e, spans = count, "span assembly or store task panicked");
            }
        }
    }
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.flush()).await {
        Ok(Ok(())) => tracing::debug!("store flushed"),
        Ok(Err(e)) => tracing::error!(error = %e, "store flush failed at shutdown"),
        Err(e) => tracing::error!(error = %e, "store flush task failed"),
    }
}
