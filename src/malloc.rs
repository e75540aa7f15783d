//! Malloc: the process's allocator ([`Allocator`]: glibc's, with mimalloc for the store's
//! writes), and keeping either from holding on to memory the proxy has freed.
//!
//! Owns the crate's allocator `unsafe`: the [`GlobalAlloc`](std::alloc::GlobalAlloc) that
//! routes each block to mimalloc or the system allocator, one call into glibc (`malloc_trim`)
//! and one into mimalloc (`mi_collect`), neither with caller-side invariants. Elsewhere (musl,
//! macOS) the trim does nothing.
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

/// The process's allocator: the system's (glibc's) malloc, except for what a thread allocates
/// inside a [`StoreScope`], which comes from mimalloc.
///
/// Why (issue #7, bench/RESULTS.md "Session 12"): sled clones a tree node for every key it
/// writes, so about a quarter of a store write's time was glibc's `malloc`/`free` (`_int_malloc`,
/// `unlink_chunk`, `malloc_consolidate`). mimalloc as the whole process's allocator made
/// `put_spans` 35-55 % faster but cost 5-8 % of capture-on proxy throughput (a capture is
/// allocated on a runtime thread and freed by the writer) and raised RSS after a burst of
/// streams; glibc stays for everything else, where it measured better.
///
/// Every free goes to whichever allocator owns the block: mimalloc answers that from its page map
/// (`mi_is_in_heap_region`, a few loads; false for any address it never handed out), so a block
/// allocated inside a scope may be freed on any thread, inside a scope or not (sled's flusher
/// drops the nodes the writer made).
pub struct Allocator;

thread_local! {
    /// Inside a [`StoreScope`]: allocate from mimalloc. Const-initialised, no destructor: safe to
    /// read from the allocator at any point of a thread's life.
    static IN_STORE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, the current thread allocates from mimalloc (see [`Allocator`]). Nests.
pub struct StoreScope {
    was: bool,
}

impl StoreScope {
    pub fn enter() -> StoreScope {
        StoreScope {
            was: IN_STORE.replace(true),
        }
    }
}

impl Drop for StoreScope {
    fn drop(&mut self) {
        IN_STORE.set(self.was);
    }
}

/// Hands the memory this thread's store writes have freed back to the kernel (mimalloc keeps
/// freed pages for reuse and purges them only while the thread goes on allocating). For a
/// thread about to wait with nothing to store; costs a walk of its mimalloc pages.
pub fn release_store_memory() {
    hybrid::collect();
}

#[allow(unsafe_code)]
mod hybrid {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        ffi::c_void,
        sync::atomic::{AtomicBool, Ordering::Relaxed},
    };

    use libmimalloc_sys as mi;

    /// Has mimalloc handed out a block yet? Until it has (a proxy with capture off never writes
    /// the store), frees skip the page-map lookup: the request path pays one relaxed load. A
    /// block reaches another thread only through a synchronising hand-off made after this store,
    /// so whoever frees a mimalloc block sees `true`.
    static USED: AtomicBool = AtomicBool::new(false);

    fn note_used(p: *mut c_void) -> *mut u8 {
        if !USED.load(Relaxed) {
            USED.store(true, Relaxed);
        }
        p as *mut u8
    }

    /// Inside a store scope, for a block mimalloc registers whole in its page map: alignments
    /// above 64 KiB are laid out differently, and nothing in a store write asks for them.
    fn in_store(layout: Layout) -> bool {
        layout.align() <= 4096 && super::IN_STORE.get()
    }

    pub fn collect() {
        // SAFETY: takes a plain flag; only releases memory no block is using.
        unsafe { mi::mi_collect(true) }
    }

    pub(super) fn is_mimallocs(ptr: *mut u8) -> bool {
        if !USED.load(Relaxed) {
            return false;
        }
        // SAFETY: a pure lookup in mimalloc's page map; any address may be asked about.
        unsafe { mi::mi_is_in_heap_region(ptr as *const c_void) }
    }

    // SAFETY: each block is allocated by exactly one of the two allocators and always handed back
    // to the one that owns it (`is_mimallocs`), with the layout it was allocated with; mimalloc's
    // aligned entry points honour any alignment, System's honour the layouts it is given.
    unsafe impl GlobalAlloc for super::Allocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if in_store(layout) {
                note_used(mi::mi_malloc_aligned(layout.size(), layout.align()))
            } else {
                System.alloc(layout)
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if in_store(layout) {
                note_used(mi::mi_zalloc_aligned(layout.size(), layout.align()))
            } else {
                System.alloc_zeroed(layout)
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if is_mimallocs(ptr) {
                mi::mi_free(ptr as *mut c_void);
            } else {
                System.dealloc(ptr, layout);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if is_mimallocs(ptr) {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            } else {
                System.realloc(ptr, layout, new_size)
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

    /// A fresh heap block, allocated where this point of the test allocates.
    fn heap(n: usize, byte: u8) -> Vec<u8> {
        vec![byte; n]
    }

    fn from_mimalloc(v: &[u8]) -> bool {
        hybrid::is_mimallocs(v.as_ptr().cast_mut())
    }

    #[test]
    fn store_scopes_allocate_from_mimalloc_and_any_thread_frees_either() {
        let outside = vec![1u8; 100];
        assert!(
            !from_mimalloc(&outside),
            "outside a scope: the system allocator"
        );
        let mut grown = outside.clone();
        let (inside, big) = {
            let _scope = StoreScope::enter();
            let inside = vec![2u8; 100];
            let big = vec![3u8; 8 << 20];
            // A block from before the scope stays with its owner when it grows.
            grown.resize(1 << 16, 4);
            {
                let _nested = StoreScope::enter();
            }
            assert!(
                from_mimalloc(&heap(10, 0)),
                "a nested scope's end keeps the outer one"
            );
            (inside, big)
        };
        assert!(from_mimalloc(&inside) && from_mimalloc(&big));
        assert!(!from_mimalloc(&grown));
        assert!(
            !from_mimalloc(&heap(100, 5)),
            "after the scope: the system allocator again"
        );
        // Grown and freed outside the scope, on another thread: still mimalloc's, freed by it.
        let mut moved = inside;
        std::thread::spawn(move || {
            moved.resize(1 << 20, 6);
            assert!(from_mimalloc(&moved));
            assert!(moved[..100].iter().all(|&b| b == 2) && moved[100..].iter().all(|&b| b == 6));
            drop(big);
        })
        .join()
        .expect("the freeing thread");
        assert!(grown[..100].iter().all(|&b| b == 1));
        release_store_memory();
    }

    #[test]
    fn trim_can_be_called_at_any_time() {
        let _big = vec![1u8; 1 << 20];
        let _ = trim();
    }
}
