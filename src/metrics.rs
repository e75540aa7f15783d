//! Metrics: atomic counters and one latency histogram, rendered as Prometheus text.
//! Counting is lock-free and cheap enough for the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

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
    pub store_errors: AtomicU64,
    /// Proxy-made errors seen (drives rate-limited logging).
    pub proxy_errors_logged: AtomicU64,
    /// False while the last store write failed: `/healthz` says degraded.
    pub store_ok: AtomicBool,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
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
            store_errors: AtomicU64::new(0),
            proxy_errors_logged: AtomicU64::new(0),
            store_ok: AtomicBool::new(true),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
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

    pub fn captures_dropped(&self) -> u64 {
        self.captures_dropped_queue_full.load(Relaxed)
            + self.captures_dropped_shutdown.load(Relaxed)
            + self.captures_dropped_store_error.load(Relaxed)
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
            "App spans accepted by POST /api/spans.",
            self.spans_ingested.load(Relaxed),
        );
        counter(
            "llm_tracer_store_errors_total",
            "Failed store writes.",
            self.store_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP llm_tracer_captures_dropped_total Captures dropped; traffic was unaffected.\n\
             # TYPE llm_tracer_captures_dropped_total counter\n\
             llm_tracer_captures_dropped_total{{reason=\"queue_full\"}} {}\n\
             llm_tracer_captures_dropped_total{{reason=\"shutting_down\"}} {}\n\
             llm_tracer_captures_dropped_total{{reason=\"store_error\"}} {}",
            self.captures_dropped_queue_full.load(Relaxed),
            self.captures_dropped_shutdown.load(Relaxed),
            self.captures_dropped_store_error.load(Relaxed),
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
        out
    }
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
}
