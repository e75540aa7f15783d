//! Backend: the one store interface the server uses — the embedded sled [`Store`] or the shared
//! [`ClickHouseStore`] — chosen by `[store] backend`. `api`, `queue`, `otlp::ingest` and `app`
//! (retention) talk to this and never to either store directly.
//!
//! An enum rather than a trait object: there are exactly two backends, both known here; the
//! methods are plain `async fn`s (no boxed futures, no `async-trait`), and a `match` per call
//! keeps each backend's particulars (sled blocks, so it runs on the blocking pool; ClickHouse
//! writes go through a fail-open buffered writer) visible in one place.
//!
//! sled: every access goes through [`SledBackend::sled`], which reads the current `Store` out of
//! an `Arc<RwLock<_>>`, so the store can be swapped at run time without touching any caller.
//! Calls run on the blocking pool as before. sled, once a write to its log has failed (a full
//! disk), fails every later write until it is reopened, so the capture writer calls
//! [`SledBackend::reopen_after_write_error`] when a write fails with an I/O error: at most once
//! per [`REOPEN_EVERY`], and only once the data dir's filesystem has [`REOPEN_MIN_FREE`] bytes
//! free again (while it is still full the failing store is kept, so reads keep working). The
//! old handle is dropped first (sled locks its directory) and the store opened again; if that
//! open fails, calls answer 503 until a later attempt succeeds.
//!
//! The first open may still be running when the server starts (a large store's recovery can take
//! seconds; see `app`): until it ends, calls answer 503 `store_opening` and the capture writer
//! waits ([`Backend::wait_opened`]) while captures collect in the queue and the spool.
//!
//! ClickHouse: reads are SQL queries; captured spans go to the [`ClickHouseWriter`] (bounded
//! buffer, retries with backoff, never blocks the caller); ingested spans (`POST /api/spans`,
//! `/v1/traces`) are inserted directly, so a 200 means written and a 503 means "send again". A
//! probe task pings the server and runs the migrations once it is reachable: start-up never
//! waits for ClickHouse, `/healthz` says degraded until it answers.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Condvar, Mutex, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use crate::{
    clickhouse::{
        ClickHouseError, ClickHouseOptions, ClickHouseStore, ClickHouseWriter, WriterOptions,
        WriterStats,
    },
    span::{Span, Timestamp},
    store::{
        SessionPage, SessionQuery, SessionSummary, Stats, StatsQuery, Store, StoreError,
        StoreOptions, TracePage, TraceQuery, TraceSummary,
    },
};

/// A store call made while sled's first open is running waits this long for it, then answers
/// 503 `store_opening`.
pub const OPENING_WAIT: Duration = Duration::from_secs(30);

/// At most one sled reopen per this interval (a reopen of a large store reads its snapshot).
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// A reopen is tried only when the data dir's filesystem has this much free: two of sled's
/// 512 KiB log segments.
pub const REOPEN_MIN_FREE: u64 = 1024 * 1024;
/// How long one look at the free space (`store_min_free_bytes`) serves the writes after it.
const SPACE_EVERY: Duration = Duration::from_millis(100);
/// How long a reopen waits for the failed store to close before it tries to open it again.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Probe interval while ClickHouse answers.
const PROBE_HEALTHY: Duration = Duration::from_secs(2);
/// Probe interval while it does not (how soon `/healthz` recovers without traffic).
const PROBE_UNHEALTHY: Duration = Duration::from_millis(250);
/// Per probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Asking ClickHouse for its size (for `/healthz`, `/metrics`).
const SIZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a store call failed. Mapped to HTTP once, in `error.rs` (503: the store, not the caller).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Sled(#[from] StoreError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("clickhouse: {left} spans still buffered after {waited:?} (is ClickHouse reachable?)")]
    NotDrained { left: usize, waited: Duration },
    #[error("store: closed after a write error and not yet reopened (see the log)")]
    Reopening,
    #[error("still opening (recovering its log after a restart); try again shortly")]
    Opening,
    #[error("disk nearly full: {free} bytes free for data_dir, under store_min_free_bytes ({min}); writes pause until space is freed")]
    DiskFull { free: u64, min: u64 },
}

impl BackendError {
    /// A sled write error that a reopen may cure: an I/O error (a full disk), or a store left
    /// closed by a failed reopen.
    pub fn wants_reopen(&self) -> bool {
        match self {
            BackendError::Reopening => true,
            BackendError::Sled(e) => e.is_io(),
            _ => false,
        }
    }

    /// A state the store is in rather than a failure of this call (its first open still
    /// running, or writes paused on a nearly full disk): `/healthz` reports it and the backend
    /// logs it once, so callers neither retry it nor log it per call.
    pub fn is_store_state(&self) -> bool {
        matches!(self, BackendError::Opening | BackendError::DiskFull { .. })
    }
}

/// Where the store stands, as `/healthz` reports it (`store.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Open,
    /// sled's first open is still running (a large store recovering its log).
    Opening,
    /// sled, closed after a write error until the writer's reopen succeeds.
    Closed,
    /// sled, open, but the last write was refused: less free disk than `store_min_free_bytes`.
    DiskFull,
    /// ClickHouse's last probe got no answer.
    Unreachable,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Open => "open",
            StoreState::Opening => "opening",
            StoreState::Closed => "closed",
            StoreState::DiskFull => "disk_full",
            StoreState::Unreachable => "unreachable",
        }
    }
}

/// What [`SledBackend::reopen_after_write_error`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reopen {
    /// Too soon after the last attempt, or the disk is still full: the store is kept as is.
    NotNow,
    Reopened,
    /// The store is closed; calls answer 503 until a later attempt succeeds.
    Failed,
}

/// The store the server uses; cheap to clone.
#[derive(Clone)]
pub enum Backend {
    Sled(SledBackend),
    /// Boxed: a ClickHouse handle (HTTP client, writer) is far larger than sled's pointer.
    ClickHouse(Box<ClickHouseBackend>),
}

/// The embedded store, behind one access point.
#[derive(Clone)]
pub struct SledBackend {
    /// `None` only between dropping a failed store and a successful reopen.
    store: Arc<RwLock<Option<Store>>>,
    dir: PathBuf,
    opts: StoreOptions,
    /// When the last reopen was tried.
    last_reopen: Arc<Mutex<Option<Instant>>>,
    /// Retention deletions counted by stores since replaced (each store counts from its open).
    retention_carried: Arc<AtomicU64>,
    first_open: Arc<FirstOpen>,
    /// How long a store call waits for the first open ([`OPENING_WAIT`]).
    opening_wait: Duration,
    /// `store_min_free_bytes`: writes pause below this much free disk (0 = never).
    min_free_bytes: u64,
    /// The last look at the free space ([`SledBackend::check_space`]).
    space: Arc<SpaceGuard>,
}

/// The free-space guard's last look: `statvfs` is cheap alone but not once per write batch
/// under load (it doubled `tests/crash.rs`' run time), so a look is reused for [`SPACE_EVERY`].
struct SpaceGuard {
    /// When the guard was made; `next_look` counts from it.
    base: Instant,
    /// Nanoseconds after `base` from which the next write looks again.
    next_look: AtomicU64,
    /// Bytes free at the last look (`u64::MAX` before the first); under the minimum, writes
    /// are refused.
    free: AtomicU64,
}

/// Whether the first open is still running, and a way to wait for its end.
struct FirstOpen {
    running: Mutex<bool>,
    ended: Condvar,
}

impl FirstOpen {
    fn running(&self) -> bool {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SledBackend {
    /// `store` was opened from `dir` with `opts` (what a reopen uses again).
    pub fn new(store: Store, dir: &Path, opts: &StoreOptions) -> Self {
        Self::with(Some(store), dir, opts)
    }

    /// A store whose first open of `dir` is still running: hand its outcome to
    /// [`SledBackend::opened`].
    pub fn opening(dir: &Path, opts: &StoreOptions) -> Self {
        Self::with(None, dir, opts)
    }

    fn with(store: Option<Store>, dir: &Path, opts: &StoreOptions) -> Self {
        Self {
            first_open: Arc::new(FirstOpen {
                running: Mutex::new(store.is_none()),
                ended: Condvar::new(),
            }),
            store: Arc::new(RwLock::new(store)),
            dir: dir.to_owned(),
            opts: opts.clone(),
            last_reopen: Arc::new(Mutex::new(None)),
            retention_carried: Arc::new(AtomicU64::new(0)),
            opening_wait: OPENING_WAIT,
            min_free_bytes: 0,
            space: Arc::new(SpaceGuard {
                base: Instant::now(),
                next_look: AtomicU64::new(0),
                free: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Writes pause while `dir`'s filesystem has less than `bytes` free (`store_min_free_bytes`;
    /// 0, the default here, = never).
    pub fn with_min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free_bytes = bytes;
        self
    }

    /// How long store calls wait for the first open (tests).
    pub fn with_opening_wait(mut self, wait: Duration) -> Self {
        self.opening_wait = wait;
        self
    }

    /// The first open ended: the store is in use from now on; or it failed, and the store stays
    /// closed (503) until the writer's reopen after a failed write succeeds.
    pub fn opened(&self, result: Result<Store, StoreError>) {
        match result {
            Ok(store) => {
                *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
                tracing::info!(dir = %self.dir.display(), "store: open");
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "store: open failed; queries answer 503 and captures wait in the spool until a reopen succeeds");
            }
        }
        *self
            .first_open
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.first_open.ended.notify_all();
    }

    /// Blocks until the first open has ended (at once when it has).
    pub fn wait_opened(&self) {
        self.wait_opened_for(None);
    }

    /// [`SledBackend::wait_opened`], for at most `limit`.
    fn wait_opened_for(&self, limit: Option<Duration>) {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut running = self
            .first_open
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *running {
            running = match deadline {
                None => self
                    .first_open
                    .ended
                    .wait(running)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    self.first_open
                        .ended
                        .wait_timeout(running, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    pub fn state(&self) -> StoreState {
        if self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            // Looked at again (one `statvfs`) so an idle server reports freed space too.
            if self.disk_full() && self.look_at_space().is_err() {
                StoreState::DiskFull
            } else {
                StoreState::Open
            }
        } else if self.first_open.running() {
            StoreState::Opening
        } else {
            StoreState::Closed
        }
    }

    /// Refuses a write while the data directory has less than `store_min_free_bytes` free: sled
    /// must not meet a full disk, where it can fail for good or hang (see
    /// [`Store::close_after_failure`]). Looks (one `statvfs`) at most every [`SPACE_EVERY`];
    /// in between, the last look answers.
    fn check_space(&self) -> Result<(), BackendError> {
        if self.min_free_bytes == 0 {
            return Ok(()); // the guard is off
        }
        let now = u64::try_from(self.space.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now < self.space.next_look.load(Relaxed) {
            return self.refuse_below_min(self.space.free.load(Relaxed));
        }
        let every = u64::try_from(SPACE_EVERY.as_nanos()).unwrap_or(u64::MAX);
        self.space
            .next_look
            .store(now.saturating_add(every), Relaxed);
        self.look_at_space()
    }

    /// Looks at the free space now and records it for [`SledBackend::check_space`].
    fn look_at_space(&self) -> Result<(), BackendError> {
        let min = self.min_free_bytes;
        let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        let was = self.space.free.swap(free, Relaxed);
        match (was < min, free < min) {
            (false, true) => {
                tracing::error!(free, min, dir = %self.dir.display(), "store: disk nearly full; writes pause (captures are dropped and counted) until space is freed (store_min_free_bytes)");
            }
            (true, false) => {
                tracing::info!(dir = %self.dir.display(), "store: free space is back above store_min_free_bytes; writes resume");
            }
            _ => {}
        }
        self.refuse_below_min(free)
    }

    /// `DiskFull` when `free` is under `store_min_free_bytes`.
    fn refuse_below_min(&self, free: u64) -> Result<(), BackendError> {
        let min = self.min_free_bytes;
        match free < min {
            true => Err(BackendError::DiskFull { free, min }),
            false => Ok(()),
        }
    }

    /// The last look found less than `store_min_free_bytes` free.
    fn disk_full(&self) -> bool {
        self.space.free.load(Relaxed) < self.min_free_bytes
    }

    /// The current store, for a write: also refused while the disk is nearly full.
    fn sled_for_write(&self) -> Result<Store, BackendError> {
        let store = self.sled()?;
        self.check_space()?;
        Ok(store)
    }

    /// Whether writes are paused for want of disk space ([`SledBackend::check_space`]).
    pub fn write_paused(&self) -> bool {
        self.check_space().is_err()
    }

    /// The current store. The ONLY way to reach it: keep it so (the store may be reopened).
    pub fn sled(&self) -> Result<Store, BackendError> {
        let store = self
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match store {
            Some(store) => Ok(store),
            None if self.first_open.running() => Err(BackendError::Opening),
            None => Err(BackendError::Reopening),
        }
    }

    /// After a write failed with an error that [`BackendError::wants_reopen`]: drops the store
    /// and opens it again (blocking: call from the writer thread). See the module docs.
    pub fn reopen_after_write_error(&self) -> Reopen {
        if self.first_open.running() {
            return Reopen::NotNow;
        }
        {
            let mut last = self
                .last_reopen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Reopen::NotNow;
            }
            let open = self
                .store
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some();
            if open && free_bytes(&self.dir).is_some_and(|free| free < REOPEN_MIN_FREE) {
                return Reopen::NotNow;
            }
            *last = Some(Instant::now());
        }
        let old = self
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            self.retention_carried
                .fetch_add(old.retention_deleted(), Relaxed);
            // Other clones (calls in flight) let go when they finish; `open` waits for the lock.
            if !old.close_after_failure(CLOSE_WAIT) {
                tracing::warn!("store: the failed store is still closing; the reopen may find it locked and is tried again later");
            }
        }
        tracing::warn!(dir = %self.dir.display(), "store: reopening after a write error");
        match Store::open(&self.dir, &self.opts) {
            Ok(store) => {
                *self.store.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
                tracing::info!("store: reopened; writes are tried again");
                Reopen::Reopened
            }
            Err(e) => {
                tracing::error!(error = %e, "store: reopen failed; calls answer 503 until a later try succeeds");
                Reopen::Failed
            }
        }
    }

    /// Runs a store call on a blocking thread. While the first open runs, the call waits for it
    /// (up to `opening_wait`, on the same blocking thread) rather than failing at once.
    async fn blocking<T: Send + 'static, E: Into<BackendError>>(
        &self,
        f: impl FnOnce(Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, BackendError> {
        let store = match self.sled() {
            Err(BackendError::Opening) => None,
            other => Some(other?),
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = match store {
                Some(store) => store,
                None => {
                    me.wait_opened_for(Some(me.opening_wait));
                    me.sled()?
                }
            };
            f(store).map_err(Into::into)
        })
        .await
        .map_err(|e| BackendError::Task(e.to_string()))?
    }
}

/// The shared ClickHouse store, its writer and its health.
#[derive(Clone)]
pub struct ClickHouseBackend {
    store: ClickHouseStore,
    writer: Arc<ClickHouseWriter>,
    /// Last probe answered (and the migrations have run).
    reachable: Arc<AtomicBool>,
    retention_deleted: Arc<AtomicU64>,
    database: String,
    url: String,
}

impl ClickHouseBackend {
    /// Starts the writer and the probe (call inside a Tokio runtime). Never waits for the
    /// server: an unreachable ClickHouse is a degraded start, not a failed one.
    pub fn start(
        opts: &ClickHouseOptions,
        writer: WriterOptions,
    ) -> Result<ClickHouseBackend, ClickHouseError> {
        let store = ClickHouseStore::connect(opts)?;
        let backend = ClickHouseBackend {
            writer: Arc::new(ClickHouseWriter::start(store.clone(), writer)),
            store,
            reachable: Arc::new(AtomicBool::new(false)),
            retention_deleted: Arc::new(AtomicU64::new(0)),
            database: opts.database.clone(),
            url: opts.url.clone(),
        };
        tokio::spawn(probe(
            backend.store.clone(),
            Arc::downgrade(&backend.reachable),
        ));
        Ok(backend)
    }

    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// The store, with its schema: until the probe has seen ClickHouse up and migrated, each
    /// call runs the (idempotent) migrations itself, so a request right after start-up, or
    /// right after ClickHouse came back, does not race the probe.
    async fn ready(&self) -> Result<&ClickHouseStore, ClickHouseError> {
        if !self.reachable.load(Relaxed) {
            self.store.migrate().await?;
        }
        Ok(&self.store)
    }

    pub fn store(&self) -> &ClickHouseStore {
        &self.store
    }
}

/// Pings ClickHouse until the backend is dropped; runs the migrations whenever it comes (back)
/// up, so a server started after llm-tracer, or one that lost its data, gets the schema.
async fn probe(store: ClickHouseStore, reachable: std::sync::Weak<AtomicBool>) {
    let mut migrated = false;
    loop {
        let Some(flag) = reachable.upgrade() else {
            return;
        };
        let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
            if !store.ping().await {
                return false;
            }
            if migrated {
                return true;
            }
            match store.migrate().await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "clickhouse: migrations failed; retrying");
                    false
                }
            }
        })
        .await
        .unwrap_or_default();
        migrated = ok;
        let was = flag.swap(ok, Relaxed);
        if was != ok {
            if ok {
                tracing::info!("clickhouse: reachable, schema up to date");
            } else {
                tracing::warn!(
                    "clickhouse: unreachable; traffic flows, spans are buffered (bounded)"
                );
            }
        }
        drop(flag);
        tokio::time::sleep(if ok { PROBE_HEALTHY } else { PROBE_UNHEALTHY }).await;
    }
}

impl Backend {
    /// `"sled"` or `"clickhouse"` (for `/healthz`).
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::ClickHouse(_) => "clickhouse",
        }
    }

    /// Whether the store itself can be reached (sled: its first open has ended; the writer's
    /// own health, which a closed store after a write error degrades, is in
    /// `Metrics::store_ok`). ClickHouse: the last probe answered and the writer is not failing.
    pub fn healthy(&self) -> bool {
        match self {
            Backend::Sled(s) => !matches!(s.state(), StoreState::Opening | StoreState::DiskFull),
            Backend::ClickHouse(c) => c.reachable.load(Relaxed) && c.writer.is_healthy(),
        }
    }

    /// For `/healthz`.
    pub fn state(&self) -> StoreState {
        match self {
            Backend::Sled(s) => s.state(),
            Backend::ClickHouse(c) if c.reachable.load(Relaxed) => StoreState::Open,
            Backend::ClickHouse(_) => StoreState::Unreachable,
        }
    }

    /// Blocks until sled's first open has ended (the capture writer's first step; ClickHouse:
    /// at once).
    pub fn wait_opened(&self) {
        if let Backend::Sled(s) = self {
            s.wait_opened();
        }
    }

    /// sled: [`SledBackend::reopen_after_write_error`]. ClickHouse's writer recovers by itself.
    pub fn reopen_after_write_error(&self) -> Reopen {
        match self {
            Backend::Sled(s) => s.reopen_after_write_error(),
            Backend::ClickHouse(_) => Reopen::NotNow,
        }
    }

    /// Whether store writes are paused for want of disk space (sled's `store_min_free_bytes`).
    /// The writer then leaves spooled calls on disk rather than have them refused.
    pub fn write_paused(&self) -> bool {
        match self {
            Backend::Sled(s) => s.write_paused(),
            Backend::ClickHouse(_) => false,
        }
    }

    /// The writer's counters (ClickHouse only).
    pub fn writer_stats(&self) -> Option<WriterStats> {
        match self {
            Backend::Sled(_) => None,
            Backend::ClickHouse(c) => Some(c.writer.stats()),
        }
    }

    /// Writes spans and returns once they are stored (ingest: an answer means written).
    pub async fn put_spans(&self, spans: Vec<Span>) -> Result<Vec<Span>, BackendError> {
        match self {
            Backend::Sled(s) => {
                // Checked on the blocking thread, once the first open has ended (ingest waits
                // for it like every store call).
                let me = s.clone();
                s.blocking(move |st| {
                    me.check_space()?;
                    st.put_spans(&spans)?;
                    Ok::<_, BackendError>(spans)
                })
                .await
            }
            Backend::ClickHouse(c) => {
                c.ready().await?.put_spans(&spans).await?;
                Ok(spans)
            }
        }
    }

    /// The writer task's write, on its own thread: sled writes now (blocking); ClickHouse takes
    /// the spans into its bounded buffer and never waits. Returns how many were accepted (the
    /// rest were dropped and counted by the writer).
    pub fn write_captured(&self, spans: &[Span]) -> Result<usize, BackendError> {
        match self {
            Backend::Sled(s) => {
                s.sled_for_write()?.put_spans(spans)?;
                Ok(spans.len())
            }
            Backend::ClickHouse(c) => Ok(c.writer.offer(spans)),
        }
    }

    pub async fn list_traces(&self, q: TraceQuery) -> Result<TracePage, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.list_traces(&q)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.list_traces(&q).await?),
        }
    }

    pub async fn get_trace(
        &self,
        trace_id: String,
    ) -> Result<Option<(TraceSummary, Vec<Span>)>, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.get_trace(&trace_id)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.get_trace(&trace_id).await?),
        }
    }

    pub async fn get_span(&self, span_id: String) -> Result<Option<Span>, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.get_span(&span_id)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.get_span(&span_id).await?),
        }
    }

    pub async fn delete_trace(&self, trace_id: String) -> Result<bool, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.delete_trace(&trace_id)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.delete_trace(&trace_id).await?),
        }
    }

    pub async fn stats(&self, q: StatsQuery) -> Result<Stats, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.stats(&q)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.stats(&q).await?),
        }
    }

    pub async fn call_bounds(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Option<(u64, u64)>, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.call_bounds(since, until)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.call_bounds(since, until).await?),
        }
    }

    pub async fn list_sessions(&self, q: SessionQuery) -> Result<SessionPage, BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(move |st| st.list_sessions(&q)).await,
            Backend::ClickHouse(c) => Ok(c.ready().await?.list_sessions(&q).await?),
        }
    }

    pub async fn get_session(
        &self,
        session_id: String,
        limit: usize,
    ) -> Result<Option<(SessionSummary, Vec<TraceSummary>)>, BackendError> {
        match self {
            Backend::Sled(s) => {
                s.blocking(move |st| st.get_session(&session_id, limit))
                    .await
            }
            Backend::ClickHouse(c) => Ok(c.ready().await?.get_session(&session_id, limit).await?),
        }
    }

    /// sled: fsync. ClickHouse: waits (at most `timeout`) until the writer's buffer is written.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BackendError> {
        match self {
            Backend::Sled(s) => s.blocking(|st| st.flush()).await,
            Backend::ClickHouse(c) => {
                if c.writer.flush(timeout).await {
                    Ok(())
                } else {
                    Err(BackendError::NotDrained {
                        left: c.writer.stats().buffered,
                        waited: timeout,
                    })
                }
            }
        }
    }

    /// At shutdown, after the capture writer has stopped: ClickHouse writes what it buffers (at
    /// most `timeout`) and stops its writer; what is left is logged as lost.
    pub async fn close(&self, timeout: Duration) {
        if let Backend::ClickHouse(c) = self {
            c.writer.shutdown(timeout).await;
        }
    }

    /// Bytes the store takes on disk: sled's files; ClickHouse's active parts of our database
    /// (`None` when it cannot be asked).
    pub async fn size(&self) -> Option<u64> {
        match self {
            Backend::Sled(s) => s.sled().ok().map(|st| st.size_on_disk()),
            // Bounded: /healthz and /metrics must answer while ClickHouse hangs.
            Backend::ClickHouse(c) => tokio::time::timeout(SIZE_TIMEOUT, c.store.size_on_disk())
                .await
                .ok()
                .and_then(Result::ok),
        }
    }

    /// Traces deleted by retention since start-up.
    pub fn retention_deleted(&self) -> u64 {
        match self {
            Backend::Sled(s) => {
                s.retention_carried.load(Relaxed) + s.sled().map_or(0, |st| st.retention_deleted())
            }
            Backend::ClickHouse(c) => c.retention_deleted.load(Relaxed),
        }
    }

    /// One retention pass: traces that started before `older_than`, then (sled only) the
    /// oldest until under `max_bytes`.
    pub async fn enforce_retention(
        &self,
        older_than: Option<Timestamp>,
        max_bytes: Option<u64>,
    ) -> Result<u64, BackendError> {
        match self {
            Backend::Sled(s) => {
                s.blocking(move |st| st.enforce_retention(older_than, max_bytes))
                    .await
            }
            Backend::ClickHouse(c) => {
                let Some(cutoff) = older_than else {
                    return Ok(0);
                };
                let deleted = c.ready().await?.enforce_retention(cutoff).await?;
                c.retention_deleted.fetch_add(deleted, Relaxed);
                Ok(deleted)
            }
        }
    }

    /// Where the data lives, for logs: the sled dir is known to `app`; ClickHouse: URL/db.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sled(_) => "sled".to_string(),
            Backend::ClickHouse(c) => format!("clickhouse {} database {}", c.url, c.database),
        }
    }
}

/// Bytes available to us on the filesystem holding `dir` (`None` when it cannot be asked).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_calls_wait_for_the_first_open_then_answer_store_opening() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = StoreOptions::default();
        let sled =
            SledBackend::opening(tmp.path(), &opts).with_opening_wait(Duration::from_millis(100));
        let backend = Backend::Sled(sled.clone());
        assert_eq!(backend.state(), StoreState::Opening);
        assert!(!backend.healthy());

        let started = Instant::now();
        let early = backend.get_span("0123456789abcdef".into()).await;
        assert!(
            matches!(early, Err(BackendError::Opening)),
            "after its wait, a call answers store_opening: {early:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "it waited first"
        );

        // A call made during the open is answered once the open ends (a long wait here: the
        // open below may take a while on a loaded machine).
        let patient = Backend::Sled(sled.clone().with_opening_wait(Duration::from_secs(120)));
        let waiting =
            tokio::spawn(async move { patient.get_span("0123456789abcdef".into()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let store = Store::open(tmp.path(), &opts).expect("store opens");
        sled.opened(Ok(store));
        let answered = waiting.await.expect("task");
        assert!(matches!(answered, Ok(None)), "{answered:?}");
        assert_eq!(backend.state(), StoreState::Open);
        assert!(backend.healthy());
        backend.wait_opened(); // at once
    }

    #[test]
    fn writes_pause_below_the_free_space_threshold_and_resume_above_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let free = free_bytes(tmp.path()).expect("statvfs works here");
        let open = |min_free_bytes| {
            let opts = StoreOptions::default();
            let store = Store::open(tmp.path(), &opts).expect("store opens");
            SledBackend::new(store, tmp.path(), &opts).with_min_free_bytes(min_free_bytes)
        };
        // More than the filesystem has free: every write is refused, nothing reaches sled.
        let full = Backend::Sled(open(free.saturating_mul(2)));
        let refused = full.write_captured(&[]);
        assert!(
            matches!(refused, Err(BackendError::DiskFull { min, .. }) if min == free.saturating_mul(2)),
            "{refused:?}"
        );
        assert!(
            !refused.is_err_and(|e| e.wants_reopen()),
            "no reopen for a full disk"
        );
        assert_eq!(full.state(), StoreState::DiskFull);
        assert_eq!(full.state().as_str(), "disk_full");
        assert!(!full.healthy());
        drop(full);
        // The guard off (0): the same write goes through and the state is open again.
        let sled = open(0);
        sled.space.free.store(0, Relaxed); // as a refused write left it
        let backend = Backend::Sled(sled);
        assert_eq!(backend.write_captured(&[]).expect("written"), 0);
        assert_eq!(backend.state(), StoreState::Open);
        assert!(backend.healthy());
    }
}
