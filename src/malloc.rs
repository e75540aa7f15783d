//! Malloc: keeps glibc's allocator from holding on to memory the proxy has freed.
//!
//! Owns the only `unsafe` in the crate: one call into glibc (`malloc_trim`), which has no
//! caller-side invariants. Elsewhere (musl, macOS) every function here does nothing.
//!
//! Why (issue #7, bench/RESULTS.md): glibc gives each thread that allocates under contention an
//! arena of its own (up to 8 per core) and keeps freed memory in that arena, resident. A stream's
//! captured copy is allocated on a runtime thread's arena and freed by the writer thread, which
//! assembles and stores spans in an arena of its own: the pages a finished stream gives back do
//! not serve the writer, and neither arena returns them to the kernel. With 256 concurrent
//! streams of 1,000 chunks that was about 30 MiB of free-but-resident memory at the peak, and RSS
//! never came down after the run. So the [`Trimmer`] hands free pages back (`malloc_trim`) when
//! captures worth [`RELEASED_TRIM_BYTES`] have been freed since the last trim (the writer is
//! storing a burst of long streams), and once more when the proxy is idle after traffic.
//! (Fewer arenas, `mallopt(M_ARENA_MAX)`, also lowered the peak but cost 12-17% of capture-on
//! throughput in `bench/ab.py`: threads then wait on each other's arena lock.)

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use crate::metrics::Metrics;

/// How often the trimmer looks at the capture budget and the calls in flight.
const TRIM_POLL: Duration = Duration::from_millis(100);

/// Captured bytes freed (written as spans, or dropped) since the last trim that make the next
/// one due while traffic goes on. Small calls never add up to it between two idle moments in a
/// way that matters: 2 MiB is about a thousand chat calls. A trim runs on a blocking thread, at most
/// once per [`TRIM_POLL`]; it took 1.7-2.4 ms here during a burst of 256 long streams (debug
/// log `micros`).
const RELEASED_TRIM_BYTES: usize = 2 << 20;

/// Hands freed heap pages back to the kernel (glibc's `malloc_trim(0)`: every arena, free pages
/// in the middle too, not only the top). Costs a walk of the free lists under each arena's lock,
/// so it runs on a blocking thread and only when the proxy is idle. Returns whether anything was
/// released.
pub fn trim() -> bool {
    glibc::trim()
}

/// Decides when to trim: (a) captures worth [`RELEASED_TRIM_BYTES`] were freed since the last
/// trim (the capture budget's use fell that far below its high-water mark since then), or (b)
/// the proxy is idle after traffic: no call in flight, no capture held, no call started since
/// the previous poll, and calls made since the last trim. (A moment with nothing in flight is
/// not idleness: at a few thousand calls a second it comes at every poll, and a trim then holds
/// the allocator's locks the request path needs.)
pub struct Trimmer {
    metrics: Arc<Metrics>,
    /// Calls seen at the last trim (`requests`).
    trimmed_at: u64,
    /// Calls seen at the previous poll.
    polled_at: u64,
    /// Highest capture-budget use seen since the last trim.
    high_water: usize,
}

impl Trimmer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let trimmed_at = metrics.requests.load(Relaxed);
        Self {
            metrics,
            trimmed_at,
            polled_at: trimmed_at,
            high_water: 0,
        }
    }

    /// Whether now is a time to trim; if so, records it as done.
    pub fn due(&mut self) -> bool {
        let m = &self.metrics;
        let calls = m.requests.load(Relaxed);
        let used = m.capture_budget.used();
        self.high_water = self.high_water.max(used);
        let released = self.high_water - used >= RELEASED_TRIM_BYTES;
        let quiet = calls == std::mem::replace(&mut self.polled_at, calls);
        let idle = quiet && m.in_flight.load(Relaxed) == 0 && used == 0 && calls != self.trimmed_at;
        if !released && !idle {
            return false;
        }
        self.trimmed_at = calls;
        self.high_water = used;
        true
    }

    /// Polls until `stop` turns true. Only where glibc's allocator is in use.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if !glibc::PRESENT {
            return;
        }
        let mut tick = tokio::time::interval(TRIM_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if self.due() {
                let started = std::time::Instant::now();
                match tokio::task::spawn_blocking(trim).await {
                    Ok(released) => {
                        self.metrics.malloc_trims.fetch_add(1, Relaxed);
                        tracing::debug!(
                            released,
                            micros = started.elapsed().as_micros() as u64,
                            "freed heap pages returned"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "malloc_trim task failed"),
                }
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use std::ffi::c_int;

    pub const PRESENT: bool = true;

    extern "C" {
        fn malloc_trim(pad: usize) -> c_int;
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes a plain integer and only releases free memory.
        unsafe { malloc_trim(0) != 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub const PRESENT: bool = false;

    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_idle_period_after_traffic() {
        let metrics = Arc::new(Metrics::default());
        let mut t = Trimmer::new(metrics.clone());
        assert!(!t.due(), "no traffic yet: nothing to trim");
        metrics.requests.fetch_add(1, Relaxed);
        assert!(!t.due(), "a call started since the last poll: not idle yet");
        metrics.in_flight.fetch_add(1, Relaxed);
        assert!(!t.due(), "a call in flight: not idle");
        metrics.in_flight.fetch_sub(1, Relaxed);
        assert!(metrics.capture_budget.try_charge(100));
        assert!(!t.due(), "a capture still held (not yet written): not idle");
        metrics.capture_budget.release(100);
        assert!(t.due(), "idle after traffic: trim");
        assert!(!t.due(), "once per idle period");
        metrics.requests.fetch_add(1, Relaxed);
        assert!(
            !t.due(),
            "new traffic: nothing in flight at this poll, but not quiet since the last"
        );
        assert!(t.due(), "new traffic, then a quiet poll: trim again");
    }

    #[test]
    fn trims_while_busy_once_enough_captures_were_freed() {
        let metrics = Arc::new(Metrics::with_capture_budget(64 << 20));
        let mut t = Trimmer::new(metrics.clone());
        metrics.requests.fetch_add(1, Relaxed);
        metrics.in_flight.fetch_add(1, Relaxed); // busy throughout
        let budget = &metrics.capture_budget;
        assert!(budget.try_charge(RELEASED_TRIM_BYTES + 4096));
        assert!(!t.due(), "captures held, nothing freed");
        budget.release(RELEASED_TRIM_BYTES - 1);
        assert!(!t.due(), "less than the threshold freed");
        budget.release(1);
        assert!(t.due(), "the threshold freed: trim while busy");
        assert!(!t.due(), "counted from the last trim");
        budget.release(4096);
    }

    #[test]
    fn trim_can_be_called_at_any_time() {
        let _big = vec![1u8; 1 << 20];
        let _ = trim();
    }
}
