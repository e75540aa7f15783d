//! Metrics: atomic counters, two histograms (call duration, and the time the proxy itself adds)
//! and the capture byte budget, rendered as Prometheus text. Counting is lock-free and cheap
//! enough for the hot path.

use std::fmt::Write as _;
use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    Arc,
};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds (seconds) of the proxy-overhead histogram: 1 µs to 100 ms.
const OVERHEAD_BUCKETS: [f64; 16] = [
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Captured bytes held in memory by all calls together, by default (see [`CaptureBudget`]).
/// The `capture_budget_bytes` config key sets it ([`Metrics::with_capture_budget`]).
pub const DEFAULT_CAPTURE_BUDGET_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    /// Failures the proxy saw talking to upstreams (connect, TLS, timeout, body error).
    pub upstream_errors: AtomicU64,
    /// Upstream answers with status ≥ 400 (passed through).
    pub upstream_error_responses: AtomicU64,
    pub spans_captured: AtomicU64,
    pub spans_ingested: AtomicU64,
    pub captures_dropped_queue_full: AtomicU64,
    pub captures_dropped_shutdown: AtomicU64,
    /// Spans lost because a batch could not be written.
    pub captures_dropped_store_error: AtomicU64,
    /// Spooled calls that could not be read back (a crash cut an append).
    pub captures_dropped_spool_corrupt: AtomicU64,
    /// Bytes of calls waiting in the disk spool (a gauge; see `spool`).
    pub spool_bytes: AtomicU64,
    /// Calls that went through the disk spool because the writer was busy.
    pub spooled_calls: AtomicU64,
    /// Appends to the spool that failed (the calls were then handed to the writer directly).
    pub spool_errors: AtomicU64,
    /// Appends the spool refused (full, or an I/O error); those calls waited in memory.
    pub spool_refusals: AtomicU64,
    pub store_errors: AtomicU64,
    /// Batch writes retried after a store error.
    pub store_write_retries: AtomicU64,
    /// Batch writes that had not finished after the stall limit (e.g. sled blocked on a full disk).
    pub store_stalls: AtomicU64,
    /// sled reopened by the writer after a write error (a full disk), and reopens that failed.
    pub store_reopens: AtomicU64,
    pub store_reopen_failures: AtomicU64,
    /// Proxy-made errors seen (drives rate-limited logging).
    pub proxy_errors_logged: AtomicU64,
    /// False while the last store write failed: `/healthz` says degraded.
    pub store_ok: AtomicBool,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Time the proxy itself added to calls the upstream answered.
    overhead: Histogram<{ OVERHEAD_BUCKETS.len() }>,
    /// The global bound on captured bytes held in memory.
    pub capture_budget: Arc<CaptureBudget>,
    /// `llm_tracer_otlp_*`: export and ingest.
    pub otlp: crate::otlp::OtlpMetrics,
    /// Times freed heap pages were handed back to the kernel (`malloc_trim`, see `malloc`).
    pub malloc_trims: AtomicU64,
    /// Times the idle-priority writer was given a normal priority because it made no progress
    /// (see `queue::watch_writer`).
    pub writer_raises: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_error_responses: AtomicU64::new(0),
            spans_captured: AtomicU64::new(0),
            spans_ingested: AtomicU64::new(0),
            captures_dropped_queue_full: AtomicU64::new(0),
            captures_dropped_shutdown: AtomicU64::new(0),
            captures_dropped_store_error: AtomicU64::new(0),
            captures_dropped_spool_corrupt: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            spooled_calls: AtomicU64::new(0),
            spool_errors: AtomicU64::new(0),
            spool_refusals: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            store_write_retries: AtomicU64::new(0),
            store_stalls: AtomicU64::new(0),
            store_reopens: AtomicU64::new(0),
            store_reopen_failures: AtomicU64::new(0),
            proxy_errors_logged: AtomicU64::new(0),
            store_ok: AtomicBool::new(true),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            overhead: Histogram::new(&OVERHEAD_BUCKETS),
            capture_budget: Arc::new(CaptureBudget::new(DEFAULT_CAPTURE_BUDGET_BYTES)),
            otlp: crate::otlp::OtlpMetrics::default(),
            malloc_trims: AtomicU64::new(0),
            writer_raises: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Metrics whose capture budget holds at most `bytes` (the `capture_budget_bytes` key).
    pub fn with_capture_budget(bytes: usize) -> Self {
        Self {
            capture_budget: Arc::new(CaptureBudget::new(bytes)),
            ..Self::default()
        }
    }

    /// Records one proxied call's total duration.
    pub fn observe_latency(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
                break;
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Records the time the proxy itself added to one call: from the request's arrival to its
    /// hand-off to the upstream client, plus from the response head's arrival to its return to
    /// the app. Waiting for the upstream is not counted.
    pub fn observe_overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    pub fn captures_dropped(&self) -> u64 {
        self.captures_dropped_queue_full.load(Relaxed)
            + self.captures_dropped_shutdown.load(Relaxed)
            + self.captures_dropped_store_error.load(Relaxed)
            + self.captures_dropped_spool_corrupt.load(Relaxed)
    }

    /// Prometheus text exposition format (0.0.4).
    pub fn render(&self, store_size_bytes: u64, queue_len: usize) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "llm_tracer_requests_total",
            "Requests received on the proxy listener.",
            self.requests.load(Relaxed),
        );
        counter(
            "llm_tracer_upstream_errors_total",
            "Calls that failed talking to the upstream (connect, TLS, timeout, body error).",
            self.upstream_errors.load(Relaxed),
        );
        counter(
            "llm_tracer_upstream_error_responses_total",
            "Upstream responses with status >= 400 (passed through unchanged).",
            self.upstream_error_responses.load(Relaxed),
        );
        counter(
            "llm_tracer_spans_captured_total",
            "Proxy spans written to the store.",
            self.spans_captured.load(Relaxed),
        );
        counter(
            "llm_tracer_spans_ingested_total",
            "App spans accepted by POST /api/spans and POST /v1/traces.",
            self.spans_ingested.load(Relaxed),
        );
        counter(
            "llm_tracer_store_errors_total",
            "Failed store writes.",
            self.store_errors.load(Relaxed),
        );
        counter(
            "llm_tracer_store_write_retries_total",
            "Span batch writes retried after a store error.",
            self.store_write_retries.load(Relaxed),
        );
        counter(
            "llm_tracer_store_stalls_total",
            "Span batch writes still unfinished after 5 s (store unhealthy meanwhile).",
            self.store_stalls.load(Relaxed),
        );
        counter(
            "llm_tracer_malloc_trims_total",
            "Times freed heap memory was handed back to the kernel (glibc malloc_trim): after bursts of long streams and when idle.",
            self.malloc_trims.load(Relaxed),
        );
        counter(
            "llm_tracer_writer_raises_total",
            "Times the capture writer (normally idle priority) was raised to nice 10 after a second without progress while captures waited: the CPU is saturated.",
            self.writer_raises.load(Relaxed),
        );
        counter(
            "llm_tracer_store_reopens_total",
            "Times the writer reopened the sled store after a write error (e.g. a disk that was full).",
            self.store_reopens.load(Relaxed),
        );
        counter(
            "llm_tracer_store_reopen_failures_total",
            "Reopens of the sled store that failed (reads answer 503 until one succeeds).",
            self.store_reopen_failures.load(Relaxed),
        );
        counter(
            "llm_tracer_spooled_calls_total",
            "Captured calls that waited in the disk spool because the writer was busy.",
            self.spooled_calls.load(Relaxed),
        );
        counter(
            "llm_tracer_spool_refusals_total",
            "Batches the disk spool refused (full, or an I/O error); they waited for the writer in memory.",
            self.spool_refusals.load(Relaxed),
        );
        counter(
            "llm_tracer_spool_errors_total",
            "Failed appends to the disk spool (those calls went to the writer directly).",
            self.spool_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_spool_bytes Captured calls waiting in the disk spool, bytes.\n\
             # TYPE llm_tracer_spool_bytes gauge\n\
             llm_tracer_spool_bytes {}",
            self.spool_bytes.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_captures_dropped_total Captures dropped; traffic was unaffected.\n\
             # TYPE llm_tracer_captures_dropped_total counter\n\
             llm_tracer_captures_dropped_total{{reason=\"queue_full\"}} {}\n\
             llm_tracer_captures_dropped_total{{reason=\"shutting_down\"}} {}\n\
             llm_tracer_captures_dropped_total{{reason=\"store_error\"}} {}\n\
             llm_tracer_captures_dropped_total{{reason=\"spool_corrupt\"}} {}",
            self.captures_dropped_queue_full.load(Relaxed),
            self.captures_dropped_shutdown.load(Relaxed),
            self.captures_dropped_store_error.load(Relaxed),
            self.captures_dropped_spool_corrupt.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_in_flight_requests Proxied calls in progress.\n# TYPE llm_tracer_in_flight_requests gauge\nllm_tracer_in_flight_requests {}",
            self.in_flight.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_queue_length Captures waiting for the writer.\n# TYPE llm_tracer_queue_length gauge\nllm_tracer_queue_length {queue_len}"
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_store_size_bytes Size of the store on disk.\n# TYPE llm_tracer_store_size_bytes gauge\nllm_tracer_store_size_bytes {store_size_bytes}"
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_store_healthy 1 when the last store write succeeded.\n# TYPE llm_tracer_store_healthy gauge\nllm_tracer_store_healthy {}",
            u8::from(self.store_ok.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_request_duration_seconds Proxied call duration, request start to response end.\n# TYPE llm_tracer_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "llm_tracer_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "llm_tracer_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "llm_tracer_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "llm_tracer_request_duration_seconds_count {count}");
        self.overhead.render(
            &mut out,
            "llm_tracer_proxy_overhead_seconds",
            "Time the proxy itself added to a call the upstream answered: request arrival to upstream send, plus response head arrival to its return to the app (waiting on the upstream excluded).",
        );
        let budget = &self.capture_budget;
        let _ = writeln!(
            out,
            "# HELP llm_tracer_capture_bytes_in_use Captured body bytes held in memory, waiting to become spans.\n# TYPE llm_tracer_capture_bytes_in_use gauge\nllm_tracer_capture_bytes_in_use {}\n\
             # HELP llm_tracer_capture_budget_bytes The bound on captured bytes held in memory; over it, copies are truncated.\n# TYPE llm_tracer_capture_budget_bytes gauge\nllm_tracer_capture_budget_bytes {}\n\
             # HELP llm_tracer_capture_budget_refused_frames_total Body frames forwarded but not kept because the capture budget was spent.\n# TYPE llm_tracer_capture_budget_refused_frames_total counter\nllm_tracer_capture_budget_refused_frames_total {}",
            budget.used(),
            budget.limit(),
            budget.refused(),
        );
        self.otlp.render(&mut out);
        out
    }
}

// === Histogram ===

/// A Prometheus histogram with fixed bounds, lock-free: one relaxed add per bucket hit plus
/// count and sum. Bounds are compared as integer nanoseconds.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    bounds_ns: [u64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            bounds_ns: std::array::from_fn(|i| (bounds[i] * 1e9).round() as u64),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = self.bounds_ns.iter().position(|b| ns <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

// === CaptureBudget ===

/// A process-wide bound on captured bytes held in memory (the kept chunks of every body whose
/// span is not assembled yet). Charged as the tap keeps frames, given back when the capture is
/// dropped (after its span is assembled, or when it is dropped for any other reason). Over
/// budget, bodies are still forwarded whole; only their copies stop growing (and say truncated).
#[derive(Debug)]
pub struct CaptureBudget {
    used: AtomicUsize,
    limit: usize,
    refused: AtomicU64,
}

impl CaptureBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            refused: AtomicU64::new(0),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Frames refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Charges `n` bytes if they fit.
    pub fn try_charge(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Relaxed);
        if before.saturating_add(n) > self.limit {
            self.used.fetch_sub(n, Relaxed);
            self.refused.fetch_add(1, Relaxed);
            return false;
        }
        true
    }

    /// Charges `n` bytes even over the limit (bookkeeping that cannot be refused).
    pub fn force_charge(&self, n: usize) {
        self.used.fetch_add(n, Relaxed);
    }

    /// Gives back `n` bytes charged earlier.
    pub fn release(&self, n: usize) {
        self.used.fetch_sub(n, Relaxed);
    }
}

/// The retention counter's lines (its value lives in the store), appended to [`Metrics::render`]'s
/// text.
pub fn render_retention(out: &mut String, deleted_traces: u64) {
    let _ = writeln!(
        out,
        "# HELP llm_tracer_retention_deleted_traces_total Traces deleted by retention since start-up.\n\
         # TYPE llm_tracer_retention_deleted_traces_total counter\n\
         llm_tracer_retention_deleted_traces_total {deleted_traces}"
    );
}

/// The ClickHouse writer's counters (only with `[store] backend = "clickhouse"`).
pub fn render_clickhouse_writer(out: &mut String, w: &crate::clickhouse::WriterStats) {
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "llm_tracer_clickhouse_healthy",
        "gauge",
        "1 while the ClickHouse writer's inserts succeed, 0 while it retries.",
        u64::from(w.healthy),
    );
    metric(
        "llm_tracer_clickhouse_buffered_spans",
        "gauge",
        "Spans waiting in the ClickHouse writer's bounded buffer (or in flight).",
        w.buffered as u64,
    );
    metric(
        "llm_tracer_clickhouse_spans_inserted_total",
        "counter",
        "Spans inserted into ClickHouse by the writer.",
        w.written,
    );
    metric(
        "llm_tracer_clickhouse_spans_dropped_total",
        "counter",
        "Spans dropped because the ClickHouse writer's buffer was full (traffic unaffected).",
        w.dropped,
    );
    metric(
        "llm_tracer_clickhouse_insert_failures_total",
        "counter",
        "Failed ClickHouse insert, migration or probe attempts (each retried with backoff).",
        w.failures,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.observe_latency(std::time::Duration::from_micros(500));
        m.observe_latency(std::time::Duration::from_millis(30));
        m.observe_latency(std::time::Duration::from_secs(500));
        let text = m.render(0, 0);
        assert!(text.contains("llm_tracer_request_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(
            text.contains("llm_tracer_request_duration_seconds_bucket{le=\"0.05\"} 2"),
            "buckets are cumulative"
        );
        assert!(
            text.contains("llm_tracer_request_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "+Inf counts everything"
        );
        assert!(text.contains("llm_tracer_request_duration_seconds_count 3"));
    }

    #[test]
    fn the_overhead_histogram_counts_calls_in_microsecond_buckets() {
        let m = Metrics::default();
        m.observe_overhead(std::time::Duration::from_micros(7));
        m.observe_overhead(std::time::Duration::from_micros(40));
        m.observe_overhead(std::time::Duration::from_secs(1));
        let text = m.render(0, 0);
        assert!(text.contains("# TYPE llm_tracer_proxy_overhead_seconds histogram"));
        assert!(text.contains("llm_tracer_proxy_overhead_seconds_bucket{le=\"0.000005\"} 0"));
        assert!(text.contains("llm_tracer_proxy_overhead_seconds_bucket{le=\"0.00001\"} 1"));
        assert!(
            text.contains("llm_tracer_proxy_overhead_seconds_bucket{le=\"0.00005\"} 2"),
            "overhead buckets are cumulative"
        );
        assert!(
            text.contains("llm_tracer_proxy_overhead_seconds_bucket{le=\"+Inf\"} 3"),
            "a slow outlier still counts in +Inf"
        );
        assert!(text.contains("llm_tracer_proxy_overhead_seconds_count 3"));
    }

    #[test]
    fn the_capture_budget_refuses_what_does_not_fit_and_takes_back_releases() {
        let b = CaptureBudget::new(100);
        assert!(b.try_charge(60));
        assert!(!b.try_charge(50), "a charge over the limit is refused");
        assert_eq!(b.used(), 60, "a refused charge leaves nothing behind");
        assert_eq!(b.refused(), 1);
        b.release(60);
        assert!(b.try_charge(100));
    }
}
