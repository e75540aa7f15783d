//! Malloc: keeps glibc's allocator from holding on to memory the proxy has freed.
//!
//! Owns the only `unsafe` in the crate: two calls into glibc (`mallopt`, `malloc_trim`), neither
//! of which has caller-side invariants. Elsewhere (musl, macOS) every function here does nothing.
//!
//! Why (issue #7, bench/RESULTS.md): glibc gives each thread that allocates under contention an
//! arena of its own, up to 8 per core. A stream's captured copy is allocated on a runtime
//! thread's arena and freed by the writer thread, which assembles and stores spans in a third
//! arena: the memory a finished stream gives back cannot serve the writer, and neither arena
//! returns its free pages to the kernel. With 256 concurrent streams of 1,000 chunks that was
//! about 30 MiB of free-but-resident memory at the peak, and RSS never came down after the run.
//! So: at start-up the arenas are limited to [`ARENA_MAX`] (each thread keeps its own small
//! cache, tcache, so the request path rarely takes an arena lock), and once the proxy is idle
//! after traffic (nothing in flight, every capture written) the free pages are handed back
//! ([`Trimmer`]).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use crate::metrics::Metrics;

/// Most malloc arenas (glibc's default is 8 per core). Measured with
/// `python3 bench/bench.py run --only memory`: 1 gave the lowest peak and no throughput loss on
/// this 2-core machine (bench/RESULTS.md).
const ARENA_MAX: i32 = 1;

/// How often the trimmer looks whether the proxy has gone idle after traffic.
const TRIM_POLL: Duration = Duration::from_secs(1);

/// Limits glibc's malloc arenas to [`ARENA_MAX`]. Call once, first thing in `main`, before any
/// other thread exists. Leaves the allocator alone when the operator tuned it already
/// (`MALLOC_ARENA_MAX`, or `GLIBC_TUNABLES` naming `arena_max`): theirs wins. Returns whether
/// the limit was set.
pub fn limit_arenas() -> bool {
    let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    !tuned && glibc::set_arena_max(ARENA_MAX)
}

/// Hands freed heap pages back to the kernel (glibc's `malloc_trim(0)`: every arena, free pages
/// in the middle too, not only the top). Costs a walk of the free lists under each arena's lock,
/// so it runs on a blocking thread and only when the proxy is idle. Returns whether anything was
/// released.
pub fn trim() -> bool {
    glibc::trim()
}

/// Watches for the end of a burst of traffic and then trims once: when no call is in flight,
/// no capture is held (all written or dropped), and calls were made since the last trim.
pub struct Trimmer {
    metrics: Arc<Metrics>,
    /// Calls seen at the last trim (`requests`).
    trimmed_at: u64,
}

impl Trimmer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let trimmed_at = metrics.requests.load(Relaxed);
        Self {
            metrics,
            trimmed_at,
        }
    }

    /// Whether now is a time to trim (idle after traffic); if so, records it as done.
    pub fn due(&mut self) -> bool {
        let m = &self.metrics;
        let calls = m.requests.load(Relaxed);
        let idle = m.in_flight.load(Relaxed) == 0 && m.capture_budget.used() == 0;
        if !idle || calls == self.trimmed_at {
            return false;
        }
        self.trimmed_at = calls;
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
                match tokio::task::spawn_blocking(trim).await {
                    Ok(released) => tracing::debug!(released, "idle: freed heap pages returned"),
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

    /// `M_ARENA_MAX` from glibc's `<malloc.h>`.
    const M_ARENA_MAX: c_int = -8;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
        fn malloc_trim(pad: usize) -> c_int;
    }

    pub fn set_arena_max(n: i32) -> bool {
        // SAFETY: mallopt takes two plain integers and only changes allocator parameters.
        unsafe { mallopt(M_ARENA_MAX, n) == 1 }
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes a plain integer and only releases free memory.
        unsafe { malloc_trim(0) != 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub const PRESENT: bool = false;

    pub fn set_arena_max(_n: i32) -> bool {
        false
    }

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
        metrics.in_flight.fetch_add(1, Relaxed);
        assert!(!t.due(), "a call in flight: not idle");
        metrics.in_flight.fetch_sub(1, Relaxed);
        assert!(metrics.capture_budget.try_charge(100));
        assert!(!t.due(), "a capture still held (not yet written): not idle");
        metrics.capture_budget.release(100);
        assert!(t.due(), "idle after traffic: trim");
        assert!(!t.due(), "once per idle period");
        metrics.requests.fetch_add(1, Relaxed);
        assert!(t.due(), "new traffic, idle again: trim again");
    }

    #[test]
    fn trim_can_be_called_at_any_time() {
        let _big = vec![1u8; 1 << 20];
        let _ = trim();
    }
}
