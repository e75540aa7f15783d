//! Queue: the bounded hand-off from request tasks to the one writer task, and the writer.
//!
//! `offer` never waits: a full queue costs one capture (counted and logged), never the app's
//! latency. The writer batches by count or time (whichever first); on its own low-priority thread
//! it turns each [`RawCall`] into a `CallRecord` (the string copies happen here, not on the
//! request path), assembles spans and stores them; it drains everything queued before it exits.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};

use crate::{
    backend::{Backend, BackendError, Reopen},
    metrics::Metrics,
    otlp::ExportSink,
    span::{self, AssembleOptions, Span},
    spool::{Spool, SpoolError},
    store::StoreError,
    tap::{CallRecord, RawCall},
};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// At shutdown, the ClickHouse writer gets this long to insert what it buffers (sled: an fsync).
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// A batch write still running after this long marks the store unhealthy (`/healthz` degraded).
const STALL_AFTER: Duration = Duration::from_secs(5);
/// How often the stall watchdog looks.
const STALL_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The period over which the watchdog judges whether the idle-priority writer is starved (and
/// then raises it), or has had nothing to do (and then lowers it again); see [`watch_writer`].
const STARVED_AFTER: Duration = Duration::from_secs(1);

/// Starved: over [`STARVED_AFTER`] with work to do, the writer waited, runnable, for a CPU more
/// than this share of the time. (At 5,000 calls a second on one core it waits about a third.)
const STARVED_SHARE: f64 = 0.75;
/// At shutdown, the writer stores spooled calls for at most this long; the rest stay on disk
/// and are stored after the next start.
const SPOOL_DRAIN_AT_SHUTDOWN: Duration = Duration::from_secs(10);

/// Most captured bytes (bodies and chunk marks) assembled and written in one store write. A
/// batch of small calls stays whole (512 chat calls of ~1 KiB are ~0.6 MiB); a batch of long
/// streams is written a few calls at a time, so the writer never holds hundreds of big spans,
/// their encodings and the store's write of them at once (256 streams of 1,000 chunks in one
/// write peaked at 357 MiB of RSS, in writes of 32 at 269 MiB).
const WRITE_MAX_BYTES: usize = 2 << 20;

/// Most bytes of spooled calls read back for one store write: smaller than a direct write, so
/// the writer's working set while it drains a backlog of long streams stays small.
const SPOOL_READ_BYTES: usize = 512 << 10;

/// A failed batch write is retried this many more times, after these pauses, before its spans
/// are counted as dropped (`captures_dropped_total{reason="store_error"}`).
const WRITE_RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// Fault injection for the store writes of the writer, for tests of the storage-failure path.
///
/// Reachable only through the library API ([`crate::app::Running::faults`]): no config key,
/// flag, env var or HTTP route can set it, so a deployed binary never fails on purpose. A real
/// full disk is not used in tests because sled, once a write to its log fails, keeps failing
/// until the store is reopened; an injected failure exercises the same code path (a batch
/// write returning an error) and lets a test prove the recovery.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// Upcoming batch writes to fail (`u64::MAX`: until [`StoreFaults::heal`]).
    fail: AtomicU64,
    /// While set, the writer waits before each write (the queue fills up behind it).
    stall: AtomicBool,
    /// The failures are I/O errors from the store (what sled returns on a full disk, and what
    /// makes the writer reopen it) rather than an opaque injected error.
    as_io: AtomicBool,
}

impl StoreFaults {
    /// Fails the next `n` batch-write attempts (`u64::MAX`: every one until `heal`).
    pub fn fail_writes(&self, n: u64) {
        self.fail.store(n, Relaxed);
    }

    /// Like [`StoreFaults::fail_writes`], each failure an I/O error as sled reports a full disk:
    /// the writer reopens the (healthy) store as it would after a full disk.
    pub fn fail_writes_with_io_errors(&self, n: u64) {
        self.as_io.store(true, Relaxed);
        self.fail.store(n, Relaxed);
    }

    /// Holds the writer before each write until [`StoreFaults::heal`].
    pub fn stall_writes(&self) {
        self.stall.store(true, Relaxed);
    }

    /// Writes work again.
    pub fn heal(&self) {
        self.fail.store(0, Relaxed);
        self.stall.store(false, Relaxed);
        self.as_io.store(false, Relaxed);
    }

    /// Called by the writer before each attempt: waits while stalled (bounded: at most 60 s,
    /// a hang guard), then says whether this attempt must fail, and how.
    fn before_write(&self) -> Option<WriteError> {
        for _ in 0..6000 {
            if !self.stall.load(Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.fail
            .fetch_update(Relaxed, Relaxed, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok()
            .then(|| {
                if self.as_io.load(Relaxed) {
                    let io = std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device (injected)",
                    );
                    WriteError::Store(StoreError::io(io).into())
                } else {
                    WriteError::Injected
                }
            })
    }
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Store(#[from] BackendError),
    #[error("store write failed (injected fault)")]
    Injected,
}

impl WriteError {
    /// See [`BackendError::is_store_state`].
    fn is_store_state(&self) -> bool {
        matches!(self, WriteError::Store(e) if e.is_store_state())
    }
}

/// The sending side, held by the proxy. Cheap to clone.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<RawCall>,
    metrics: Arc<Metrics>,
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub assemble: AssembleOptions,
    /// Stored spans go on to the OTLP exporter (a disabled sink when `[otlp]` is off).
    pub export: ExportSink,
}

impl SpanQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<RawCall>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, metrics }, rx)
    }

    /// Never awaits: a full queue costs one span, never the app's latency.
    pub fn offer(&self, record: RawCall) {
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
/// everything already queued is still handed on, then the store is flushed. With a `spool`,
/// calls that find the writer busy are appended to it instead of waiting in memory; the writer
/// stores them when it has time (see [`crate::spool`]).
pub async fn run_writer(
    mut rx: mpsc::Receiver<RawCall>,
    backend: Backend,
    metrics: Arc<Metrics>,
    opts: WriterOptions,
    mut stop: watch::Receiver<bool>,
    faults: Arc<StoreFaults>,
    spool: Option<Arc<Spool>>,
) {
    let max = opts.batch_size.max(1);
    let mut batch: Vec<RawCall> = Vec::with_capacity(max);
    let writer = Writer {
        backend: backend.clone(),
        opts: opts.assemble.clone(),
        faults,
        metrics: metrics.clone(),
        export: opts.export.clone(),
        busy: Arc::new(Busy::default()),
    };
    let watchdog = tokio::spawn(watch_writer(writer.busy.clone(), metrics.clone()));
    let worker = Worker::start(writer, spool.clone(), max);
    let appender = spool.and_then(Appender::start);
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
        let mut records = std::mem::replace(&mut batch, Vec::with_capacity(max));
        while !records.is_empty() {
            let rest = records.split_off(write_len(&records));
            worker.submit(records, appender.as_ref(), &metrics).await;
            records = rest;
        }
    }
    worker.finish().await;
    watchdog.abort();
    match backend.flush(FINAL_FLUSH).await {
        Ok(()) => tracing::debug!("store flushed"),
        Err(e) => tracing::error!(error = %e, "store flush failed at shutdown"),
    }
}

/// How many of `records` (at least one) fit in one store write of [`WRITE_MAX_BYTES`].
fn write_len(records: &[RawCall]) -> usize {
    let mut bytes = 0usize;
    for (i, r) in records.iter().enumerate() {
        let size = |c: &Option<crate::tap::Captured>| {
            c.as_ref().map_or(0, |c| {
                c.kept + c.marks.len() * std::mem::size_of::<(u64, std::time::Instant)>()
            })
        };
        bytes = bytes.saturating_add(size(&r.request) + size(&r.response));
        if bytes > WRITE_MAX_BYTES && i > 0 {
            return i;
        }
    }
    records.len()
}

/// Watches the writer thread, every [`STALL_CHECK_EVERY`]:
/// - Marks a store write as stalled once it has run for [`STALL_AFTER`]: a write that does not
///   finish (sled blocks on a full disk instead of failing) must not leave `/healthz` at "ok"
///   while nothing is stored. Reported once per write; the write's end sets health again.
/// - Raises the writer from `SCHED_IDLE` (see `priority`) when, over [`STARVED_AFTER`] while a
///   write ran or calls waited in the spool, it spent more than [`STARVED_SHARE`] of the time
///   waiting for a CPU (or, where the kernel does not report that, started no write): request
///   threads keep every CPU busy, and at idle priority the writer would get almost none of it.
///   Lowers it again once it has had no work for as long (so a raised writer is not starved
///   again between two jobs).
async fn watch_writer(busy: Arc<Busy>, metrics: Arc<Metrics>) {
    let mut reported = 0u64;
    let mut tick = tokio::time::interval(STALL_CHECK_EVERY);
    let mut starving = Starving::new(busy.writes(), Instant::now());
    loop {
        tick.tick().await;
        let running = busy.running();
        let sample = Sample {
            at: Instant::now(),
            writes: busy.writes(),
            waiting: running.is_some() || metrics.spool_bytes.load(Relaxed) > 0,
            run_delay: busy.thread().and_then(crate::priority::run_delay),
        };
        match starving.observe(sample, busy.is_raised()) {
            Verdict::Raise => {
                if busy.raise() {
                    metrics.writer_raises.fetch_add(1, Relaxed);
                    tracing::debug!("capture writer starved at idle priority: raised to nice 10");
                }
            }
            Verdict::Lower => {
                busy.lower();
                tracing::debug!("capture writer caught up: idle priority again");
            }
            Verdict::Keep => {}
        }
        let Some((write, running)) = running else {
            continue;
        };
        if running >= STALL_AFTER && write != reported {
            reported = write;
            metrics.store_ok.store(false, Relaxed);
            metrics.store_stalls.fetch_add(1, Relaxed);
            tracing::error!(
                after = ?STALL_AFTER,
                "store write has not finished (disk full or stalled?); captures wait in the \
                 spool or the queue, and are dropped when both are full; traffic unaffected"
            );
        }
    }
}

/// One look of the watchdog at the writer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Writes started so far.
    writes: u64,
    /// A write runs, or calls wait in the spool.
    waiting: bool,
    /// The writer thread's total wait for a CPU so far, where the kernel reports it.
    run_delay: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Raise,
    Lower,
    Keep,
}

/// Judges, one [`STARVED_AFTER`] period at a time, whether the idle-priority writer is starved
/// (it had work all period and waited for a CPU more than [`STARVED_SHARE`] of it; without
/// run-delay figures, it started no write all period) or, once raised, has caught up (nothing
/// waiting and no write started for a period).
struct Starving {
    /// The write count last seen, and since when it has not moved.
    last_write: (u64, Instant),
    /// The period's start and the run delay then.
    period: (Instant, Option<Duration>),
    /// Work waited at every look this period.
    busy_throughout: bool,
}

impl Starving {
    fn new(writes: u64, now: Instant) -> Self {
        Self {
            last_write: (writes, now),
            period: (now, None),
            busy_throughout: true,
        }
    }

    fn observe(&mut self, s: Sample, raised: bool) -> Verdict {
        if s.writes != self.last_write.0 {
            self.last_write = (s.writes, s.at);
        }
        self.busy_throughout &= s.waiting;
        if self.period.1.is_none() && s.run_delay.is_some() {
            // The first run-delay figure (the writer thread has started): a period starts here.
            self.period = (s.at, s.run_delay);
            self.busy_throughout = s.waiting;
            return Verdict::Keep;
        }
        let elapsed = s.at.saturating_duration_since(self.period.0);
        if elapsed < STARVED_AFTER {
            return Verdict::Keep;
        }
        let idle_writes = s.at.saturating_duration_since(self.last_write.1) >= STARVED_AFTER;
        let starved = match (self.period.1, s.run_delay) {
            (Some(then), Some(now)) => {
                now.saturating_sub(then).as_secs_f64() > STARVED_SHARE * elapsed.as_secs_f64()
            }
            _ => idle_writes,
        };
        let verdict = if !raised && self.busy_throughout && starved {
            Verdict::Raise
        } else if raised && !s.waiting && idle_writes {
            Verdict::Lower
        } else {
            Verdict::Keep
        };
        self.period = (s.at, s.run_delay);
        self.busy_throughout = s.waiting;
        verdict
    }
}

/// Which store write is running, and since when (read by the stall watchdog); the writer
/// thread's id and whether the watchdog raised it.
#[derive(Default)]
struct Busy(std::sync::Mutex<BusyState>);

#[derive(Default)]
struct BusyState {
    /// Writes started so far; the running one is this number.
    writes: u64,
    /// Start of the running write; `None` when idle.
    since: Option<Instant>,
    /// The writer thread, once it runs.
    thread: Option<i32>,
    /// Raised from `SCHED_IDLE` by the watchdog, which lowers it again when it has caught up.
    raised: bool,
}

impl Busy {
    fn state(&self) -> std::sync::MutexGuard<'_, BusyState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn start(&self) {
        let mut s = self.state();
        s.writes += 1;
        s.since = Some(Instant::now());
    }
    fn end(&self) {
        self.state().since = None;
    }
    /// The running write's number and how long it has run.
    fn running(&self) -> Option<(u64, Duration)> {
        let s = self.state();
        s.since.map(|t| (s.writes, t.elapsed()))
    }
    fn writes(&self) -> u64 {
        self.state().writes
    }
    fn thread(&self) -> Option<i32> {
        self.state().thread
    }
    fn is_raised(&self) -> bool {
        self.state().raised
    }
    /// Raises the writer thread (see [`watch_writer`]); whether it is raised now.
    fn raise(&self) -> bool {
        let mut s = self.state();
        if !s.raised {
            s.raised = s.thread.is_some_and(crate::priority::raise_store_writer);
        }
        s.raised
    }
    /// Back to idle priority, if raised.
    fn lower(&self) {
        let mut s = self.state();
        if std::mem::take(&mut s.raised) {
            if let Some(tid) = s.thread {
                crate::priority::lower_store_writer(tid);
            }
        }
    }
}

// === Worker ===

/// What the intake hands the writer thread.
enum Job {
    /// Calls straight from the queue.
    Raw(Vec<RawCall>),
    /// Calls the spool could not take.
    Records(Vec<CallRecord>),
    /// Something was spooled: look at the spool.
    Wake,
}

/// The writer's CPU work (turning records into spans, writing them) runs on one OS thread of
/// its own, at a lower scheduling priority than the runtime's threads. One long-lived thread
/// rather than a blocking-pool thread per batch: no thread churn, one allocator arena.
///
/// It takes one job at a time from a one-slot channel, fresh calls first; between them it
/// stores the spool's backlog a batch at a time, oldest first.
struct Worker {
    tx: mpsc::Sender<Job>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// What writes a batch: the store, how to assemble, the fault hook, the counters.
#[derive(Clone)]
struct Writer {
    backend: Backend,
    opts: AssembleOptions,
    faults: Arc<StoreFaults>,
    metrics: Arc<Metrics>,
    export: ExportSink,
    busy: Arc<Busy>,
}

impl Worker {
    fn start(writer: Writer, spool: Option<Arc<Spool>>, batch_size: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(1);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let work = move || {
            // A large store may still be recovering: captures wait in the queue and the spool.
            writer.backend.wait_opened();
            let lowered = crate::priority::lower_this_thread();
            writer.busy.state().thread = Some(crate::priority::this_thread());
            tracing::debug!(?lowered, "capture writer priority");
            writer.run(rx, spool.as_deref(), batch_size);
            let _ = done_tx.send(());
        };
        // If no thread can be started, the same loop runs on the blocking pool.
        let slot = Arc::new(std::sync::Mutex::new(Some(work)));
        let for_thread = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("llm-tracer-writer".into())
            .spawn(move || {
                let work = for_thread.lock().ok().and_then(|mut w| w.take());
                if let Some(work) = work {
                    work();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no writer thread; using the blocking pool");
            let work = slot.lock().ok().and_then(|mut w| w.take());
            if let Some(work) = work {
                tokio::task::spawn_blocking(work);
            }
        }
        Self { tx, done }
    }

    /// Hands one write's calls on: to the writer when it is free, else to the spool; without a spool, or when the spool cannot take them,
    /// waits for the writer (the queue fills meanwhile, and drops are counted at `offer`).
    async fn submit(&self, raws: Vec<RawCall>, spool: Option<&Appender>, metrics: &Metrics) {
        let count = raws.len() as u64;
        let job = match spool {
            None => Job::Raw(raws),
            Some(spool) => match self.tx.try_send(Job::Raw(raws)) {
                Ok(()) => return,
                Err(TrySendError::Closed(_)) => return writer_gone(metrics, count),
                Err(TrySendError::Full(Job::Raw(raws))) => match spool.append(raws).await {
                    Ok(()) => {
                        // A full slot means the writer is about to look anyway.
                        let _ = self.tx.try_send(Job::Wake);
                        return;
                    }
                    Err(Some((e, records))) => {
                        let n = metrics.spool_refusals.fetch_add(1, Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(error = %e, refusals = n, "spool refused calls; they wait for the writer in memory");
                        }
                        Job::Records(records)
                    }
                    Err(None) => return writer_gone(metrics, count),
                },
                Err(TrySendError::Full(job)) => job,
            },
        };
        if self.tx.send(job).await.is_err() {
            writer_gone(metrics, count);
        }
    }

    /// Waits for the writer thread to store what it was handed (and, bounded, what is spooled).
    async fn finish(self) {
        drop(self.tx);
        let _ = self.done.await;
    }
}

/// Appends to the spool on one long-lived thread of its own (at normal priority: it must keep
/// up with the traffic, and costs a few microseconds per call), so encoding a batch never
/// blocks a runtime thread and its allocations stay in one allocator arena. It has no
/// `priority` yield points: with them it fell behind at saturation and the queue dropped
/// captures (6,716 and 11,135 in the first 10 s of throughput; bench/RESULTS.md, session 18).
struct Appender {
    tx: std::sync::mpsc::Sender<(Vec<RawCall>, tokio::sync::oneshot::Sender<AppendResult>)>,
}

type AppendResult = Result<(), (SpoolError, Vec<CallRecord>)>;

impl Appender {
    /// `None` when no thread can be started: captures then wait in memory only.
    fn start(spool: Arc<Spool>) -> Option<Appender> {
        let (tx, rx) =
            std::sync::mpsc::channel::<(Vec<RawCall>, tokio::sync::oneshot::Sender<AppendResult>)>(
            );
        let spawned = std::thread::Builder::new()
            .name("llm-tracer-spool".into())
            .spawn(move || {
                while let Ok((raws, done)) = rx.recv() {
                    let records: Vec<CallRecord> =
                        raws.into_iter().map(RawCall::into_record).collect();
                    let _ = done.send(spool.append(records));
                }
            });
        match spawned {
            Ok(_) => Some(Appender { tx }),
            Err(e) => {
                tracing::error!(error = %e, "no spool thread; captures wait in memory only");
                None
            }
        }
    }

    /// `Err(None)`: the spool thread is gone and the calls with it.
    async fn append(
        &self,
        raws: Vec<RawCall>,
    ) -> Result<(), Option<(SpoolError, Vec<CallRecord>)>> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.tx.send((raws, done)).map_err(|_| None)?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(Some(refused)),
            Err(_) => Err(None),
        }
    }
}

/// The writer thread is gone (a bug): the calls handed to it are lost, and counted.
fn writer_gone(metrics: &Metrics, count: u64) {
    metrics.store_errors.fetch_add(1, Relaxed);
    metrics
        .captures_dropped_store_error
        .fetch_add(count, Relaxed);
    tracing::error!(spans = count, "the writer thread is gone; spans lost");
}

impl Writer {
    /// The writer thread's loop: store the spool's backlog, then wait for the next job. When
    /// the intake is done, what is still spooled gets [`SPOOL_DRAIN_AT_SHUTDOWN`]; the rest
    /// stays on disk for the next start.
    fn run(&self, mut rx: mpsc::Receiver<Job>, spool: Option<&Spool>, batch_size: usize) {
        // Stored anything since the store's memory was last given back?
        let mut stored = false;
        loop {
            // Fresh calls first, so new traffic shows up promptly while a backlog drains.
            match rx.try_recv() {
                Ok(job) => {
                    self.handle(job);
                    stored = true;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            // Then one batch of the spool's backlog, oldest first. (After a read error, the
            // spool is tried again after the next job.)
            if let Some(spool) = spool {
                if self.store_spooled(spool, batch_size) == Ok(true) {
                    stored = true;
                    continue;
                }
            }
            // Nothing left to store: give back the memory the store writes freed, then wait.
            if std::mem::take(&mut stored) {
                crate::malloc::release_store_memory();
            }
            match rx.blocking_recv() {
                Some(job) => {
                    self.handle(job);
                    stored = true;
                }
                None => break,
            }
        }
        if let Some(spool) = spool {
            let deadline = Instant::now() + SPOOL_DRAIN_AT_SHUTDOWN;
            while Instant::now() < deadline && self.store_spooled(spool, batch_size) == Ok(true) {}
            let left = spool.pending();
            if left > 0 {
                tracing::info!(
                    bytes = left,
                    "spooled calls not stored yet stay on disk; they are stored after the next start"
                );
            }
        }
    }

    fn handle(&self, job: Job) {
        match job {
            Job::Raw(raws) => self.store(raws.into_iter().map(RawCall::into_record).collect()),
            Job::Records(records) => self.store(records),
            Job::Wake => {}
        }
    }

    /// Stores the spool's oldest batch: `Ok(false)` when the spool is empty, `Err` when it
    /// cannot be read (logged and counted).
    ///
    /// While the disk is nearly full (`store_min_free_bytes`) the spool is left alone: its calls
    /// are safe on disk, and a write would only be refused and drop them.
    fn store_spooled(&self, spool: &Spool, batch_size: usize) -> Result<bool, ()> {
        if !spool.is_empty() && self.backend.write_paused() {
            return Ok(false);
        }
        match spool.take(batch_size, SPOOL_READ_BYTES) {
            Ok(Some(taken)) => {
                if taken.corrupt > 0 {
                    self.metrics
                        .captures_dropped_spool_corrupt
                        .fetch_add(taken.corrupt, Relaxed);
                }
                let (records, cursor) = taken.into_parts();
                self.store(records);
                spool.commit(cursor);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.metrics.spool_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "spool: cannot read spooled calls");
                Err(())
            }
        }
    }

    /// Assembles and stores one write's calls and counts the outcome.
    fn store(&self, records: Vec<CallRecord>) {
        let count = records.len() as u64;
        self.busy.start();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_batch(records)));
        self.busy.end();
        match result {
            Ok(Ok(accepted)) => {
                // ClickHouse: spans beyond its buffer bound are counted by its writer.
                self.metrics
                    .spans_captured
                    .fetch_add(accepted as u64, Relaxed);
                self.metrics.store_ok.store(true, Relaxed);
            }
            Ok(Err(e)) => {
                self.metrics.store_errors.fetch_add(1, Relaxed);
                self.metrics
                    .captures_dropped_store_error
                    .fetch_add(count, Relaxed);
                self.metrics.store_ok.store(false, Relaxed);
                if e.is_store_state() {
                    tracing::debug!(error = %e, spans = count, "span batch not stored; traffic unaffected");
                } else {
                    tracing::error!(error = %e, spans = count, "span batch not stored; traffic unaffected");
                }
            }
            Err(_) => {
                self.metrics.store_errors.fetch_add(1, Relaxed);
                self.metrics
                    .captures_dropped_store_error
                    .fetch_add(count, Relaxed);
                tracing::error!(spans = count, "span assembly or store write panicked");
            }
        }
    }

    /// Assembles and stores one batch; returns how many spans the store accepted. A failed write
    /// is retried (bounded, with backoff) before the error is returned and the batch counted as
    /// dropped; a write is one atomic batch, so a retry never doubles anything. (ClickHouse:
    /// the spans go into its writer's bounded buffer, which never fails; it retries itself.)
    fn write_batch(&self, records: Vec<CallRecord>) -> Result<usize, WriteError> {
        let spans: Vec<Span> = records
            .into_iter()
            .map(|r| {
                let span = span::assemble(r, &self.opts);
                crate::priority::yield_point();
                span
            })
            .collect();
        let attempt = || -> Result<usize, WriteError> {
            if let Some(fault) = self.faults.before_write() {
                return Err(fault);
            }
            Ok(self.backend.write_captured(&spans)?)
        };
        let mut result = attempt();
        for pause in WRITE_RETRY_BACKOFF {
            let Err(e) = &result else { break };
            // Degraded from the first failure on; the next stored batch clears it.
            self.metrics.store_ok.store(false, Relaxed);
            // A nearly full disk is not cured in half a second: the batch is dropped at once
            // (the backend logs the pause once, and looks at the space again every 100 ms).
            if e.is_store_state() {
                break;
            }
            self.metrics.store_write_retries.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, spans = spans.len(), ?pause, "span batch not stored; retrying");
            std::thread::sleep(pause);
            // sled stays failed after an I/O error until reopened (see `backend`).
            if matches!(e, WriteError::Store(b) if b.wants_reopen()) {
                let counter = match self.backend.reopen_after_write_error() {
                    Reopen::Reopened => Some(&self.metrics.store_reopens),
                    Reopen::Failed => Some(&self.metrics.store_reopen_failures),
                    Reopen::NotNow => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Relaxed);
                }
            }
            result = attempt();
        }
        // The one export hook: only what the store accepted; never waits on the network.
        if result.is_ok() {
            self.export.offer(&spans);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks every 250 ms from `t0`: `(writes, waiting, run delay in ms)` per look.
    fn verdicts(raised: bool, looks: &[(u64, bool, Option<u64>)]) -> Vec<Verdict> {
        let t0 = Instant::now();
        let mut starving = Starving::new(0, t0);
        looks
            .iter()
            .enumerate()
            .map(|(i, &(writes, waiting, delay))| {
                let sample = Sample {
                    at: t0 + STALL_CHECK_EVERY * (i as u32 + 1),
                    writes,
                    waiting,
                    run_delay: delay.map(Duration::from_millis),
                };
                starving.observe(sample, raised)
            })
            .collect()
    }

    #[test]
    fn a_writer_waiting_for_cpu_most_of_a_busy_second_is_raised() {
        // Run delay grows 240 ms per 250 ms look: 96% of the time waiting, work throughout.
        // The first look starts the period; the fifth closes a full second of it.
        let looks: Vec<_> = (0..8).map(|i| (i / 3, true, Some(240 * i))).collect();
        let v = verdicts(false, &looks);
        assert!(v[..4].iter().all(|v| *v == Verdict::Keep), "{v:?}");
        assert_eq!(v[4], Verdict::Raise, "after a full second: {v:?}");
    }

    #[test]
    fn a_writer_that_gets_its_share_or_has_no_work_is_left_idle() {
        // A third of the time waiting (requests at a few thousand a second): not starved.
        let shared: Vec<_> = (0..8).map(|i| (i, true, Some(80 * i))).collect();
        assert!(verdicts(false, &shared).iter().all(|v| *v == Verdict::Keep));
        // Waiting for a CPU, but with nothing to do at one look: not starved of work it has.
        let mut gaps: Vec<_> = (0..5).map(|i| (0, true, Some(240 * i))).collect();
        gaps[2].1 = false;
        assert!(verdicts(false, &gaps).iter().all(|v| *v == Verdict::Keep));
    }

    #[test]
    fn without_run_delay_no_write_started_for_a_busy_second_means_starved() {
        let stuck: Vec<_> = (0..4).map(|_| (0, true, None)).collect();
        assert_eq!(verdicts(false, &stuck)[3], Verdict::Raise);
        let moving: Vec<_> = (0..4).map(|i| (i, true, None)).collect();
        assert_eq!(verdicts(false, &moving)[3], Verdict::Keep);
    }

    #[test]
    fn a_raised_writer_is_lowered_after_a_quiet_second_only() {
        let quiet: Vec<_> = (0..5).map(|_| (0, false, Some(0))).collect();
        assert_eq!(verdicts(true, &quiet)[4], Verdict::Lower);
        // Still storing (writes move), or calls still spooled: stays raised.
        let storing: Vec<_> = (0..5).map(|i| (i, false, Some(0))).collect();
        assert_eq!(verdicts(true, &storing)[4], Verdict::Keep);
        let spooled: Vec<_> = (0..5).map(|_| (0, true, Some(0))).collect();
        assert_eq!(verdicts(true, &spooled)[4], Verdict::Keep);
    }
    use crate::tap::Captured;
    use std::time::{Instant, SystemTime};

    fn call(kept: usize) -> RawCall {
        let mut response = Captured::default();
        response.kept = kept;
        RawCall {
            ctx: Default::default(),
            method: http::Method::POST,
            path_and_query: "/v1/chat/completions".into(),
            route: None,
            request_content_type: None,
            request_content_encoding: None,
            response_content_type: None,
            response_content_encoding: None,
            status: None,
            started: SystemTime::now(),
            started_at: Instant::now(),
            head_at: None,
            ended_at: Instant::now(),
            request: None,
            response: Some(response),
            proxy_error: None,
        }
    }

    #[test]
    fn a_write_is_bounded_by_captured_bytes_but_never_empty() {
        let small: Vec<RawCall> = (0..512).map(|_| call(1200)).collect();
        assert_eq!(
            write_len(&small),
            512,
            "a batch of small calls is one write"
        );
        let big: Vec<RawCall> = (0..8).map(|_| call(600 << 10)).collect();
        assert_eq!(
            write_len(&big),
            3,
            "long streams are written a few at a time"
        );
        let huge = vec![call(10 << 20), call(10)];
        assert_eq!(
            write_len(&huge),
            1,
            "a call above the bound is written alone"
        );
        assert_eq!(write_len(&[]), 0);
    }
}
