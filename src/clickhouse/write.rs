//! The fail-open writer: spans are held in a bounded buffer and inserted in batches by one task;
//! when ClickHouse is down or slow the batch is retried with exponential backoff, new spans
//! wait in the buffer up to its bound and beyond it are dropped and counted — `offer` never
//! blocks and never fails the caller. The healthy flag (for `/healthz` "degraded") goes false on
//! a failed insert and true again on the next success (or a successful probe when idle), so it
//! recovers by itself. Migrations run before the first insert, so the writer may start while
//! ClickHouse is still down.
//!
//! A batch that timed out may still have been written: retrying it is safe because rows keep
//! their version and `spans` is a ReplacingMergeTree read with `FINAL` (no double counting).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{encode_rows, ClickHouseStore};
use crate::span::{Span, Timestamp};

/// An insert body stops growing past this (a span row is a few KB, its captured bodies up to
/// `max_capture_bytes`): measured here, an 80 MB body made ClickHouse 18.16 drop the connection.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most spans held (buffered + in flight); more are dropped and counted.
    pub capacity: usize,
    /// Most spans per insert.
    pub batch_size: usize,
    /// First retry delay; doubles per failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            capacity: 100_000,
            batch_size: 2_000,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Counters for `/metrics` and `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterStats {
    pub healthy: bool,
    /// Spans waiting or in flight.
    pub buffered: usize,
    pub written: u64,
    /// Spans refused because the buffer was full.
    pub dropped: u64,
    /// Failed insert (or migration / probe) attempts.
    pub failures: u64,
}

struct Shared {
    queue: Mutex<VecDeque<String>>,
    in_flight: AtomicUsize,
    wake: Notify,
    closed: AtomicBool,
    healthy: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    capacity: usize,
}

/// Handle to the writer task.
pub struct ClickHouseWriter {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ClickHouseWriter {
    /// Starts the writer task (call inside a Tokio runtime).
    pub fn start(store: ClickHouseStore, opts: WriterOptions) -> ClickHouseWriter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            capacity: opts.capacity.max(1),
        });
        let task = tokio::spawn(run(store, opts, shared.clone()));
        ClickHouseWriter {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Queues spans for writing; never waits. Returns how many were accepted (the rest were
    /// dropped because the buffer is full, and counted).
    pub fn offer(&self, spans: &[Span]) -> usize {
        let rows = encode_rows(spans, Timestamp::now().micros());
        let total = rows.len();
        let mut accepted = 0;
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for row in rows {
                if queue.len() + self.shared.in_flight.load(Relaxed) >= self.shared.capacity {
                    break;
                }
                queue.push_back(row);
                accepted += 1;
            }
        }
        let dropped = total - accepted;
        if dropped > 0 {
            self.shared.dropped.fetch_add(dropped as u64, Relaxed);
            tracing::warn!(
                dropped,
                capacity = self.shared.capacity,
                "clickhouse: writer buffer full, spans dropped"
            );
        }
        self.shared.wake.notify_one();
        accepted
    }

    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Relaxed)
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            healthy: self.is_healthy(),
            buffered: self.buffered(),
            written: self.shared.written.load(Relaxed),
            dropped: self.shared.dropped.load(Relaxed),
            failures: self.shared.failures.load(Relaxed),
        }
    }

    fn buffered(&self) -> usize {
        let queued = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        queued + self.shared.in_flight.load(Relaxed)
    }

    /// Waits until everything offered so far is written, at most `timeout`; `true` if it was.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buffered() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the task after it has written what it holds (at most `timeout`); returns how many
    /// spans were left unwritten.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let _ = self.flush(timeout).await;
        self.shared.closed.store(true, Relaxed);
        self.shared.wake.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let left = self.buffered();
        if left > 0 {
            tracing::warn!(left, "clickhouse: writer stopped with spans unwritten");
        }
        left
    }
}

impl Drop for ClickHouseWriter {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

async fn run(store: ClickHouseStore, opts: WriterOptions, shared: Arc<Shared>) {
    let mut migrated = false;
    let mut backoff = opts.retry_min;
    let mut batch: Vec<String> = Vec::new();
    loop {
        if batch.is_empty() {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let mut bytes = 0usize;
            while batch.len() < opts.batch_size.max(1)
                && (batch.is_empty() || bytes < MAX_BATCH_BYTES)
            {
                let Some(row) = queue.pop_front() else { break };
                bytes += row.len();
                batch.push(row);
            }
            shared.in_flight.store(batch.len(), Relaxed);
        }
        if shared.closed.load(Relaxed) {
            return;
        }
        if batch.is_empty() {
            if shared.healthy.load(Relaxed) {
                // Idle: sleep until offered something (or a periodic look, in case a
                // notification raced the drain above).
                let _ = tokio::time::timeout(Duration::from_secs(1), shared.wake.notified()).await;
            } else {
                // Idle but unhealthy: probe, so the flag recovers without traffic.
                tokio::time::sleep(backoff).await;
                if store.ping().await {
                    mark_healthy(&shared);
                    backoff = opts.retry_min;
                } else {
                    shared.failures.fetch_add(1, Relaxed);
                    backoff = (backoff * 2).min(opts.retry_max);
                }
            }
            continue;
        }

        let attempt = async {
            if !migrated {
                store.migrate().await?;
            }
            store.insert_encoded(Bytes::from(batch.concat())).await
        };
        match attempt.await {
            Ok(()) => {
                migrated = true;
                shared.written.fetch_add(batch.len() as u64, Relaxed);
                batch.clear();
                shared.in_flight.store(0, Relaxed);
                mark_healthy(&shared);
                backoff = opts.retry_min;
            }
            Err(e) => {
                shared.failures.fetch_add(1, Relaxed);
                if shared.healthy.swap(false, Relaxed) {
                    tracing::warn!(error = %e, spans = batch.len(), "clickhouse: insert failed; retrying with backoff, spans are buffered");
                } else {
                    tracing::debug!(error = %e, "clickhouse: insert failed again");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.retry_max);
            }
        }
    }
}

fn mark_healthy(shared: &Shared) {
    if !shared.healthy.swap(true, Relaxed) {
        tracing::info!("clickhouse: writes succeed again");
    }
}
