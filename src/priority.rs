//! Priority: background threads give the CPU to the request path at once.
//!
//! The capture writer (span assembly and sled writes) and sled's own threads (its flusher and the
//! I/O pool it spawns) can run for seconds at a time while a burst is caught up. At a normal or
//! merely lowered priority (nice 10) the kernel lets such a thread finish its time slice before a
//! woken request thread runs, which showed up as milliseconds of added p99 at a fixed request
//! rate (issue #7, bench/RESULTS.md). Under `SCHED_IDLE` a request thread that wakes preempts
//! them immediately, and they only use CPU nothing else wants; the capture spool absorbs what
//! they cannot store while the proxy is saturated.
//!
//! Threads inherit their creator's policy, so a thread that lowers itself before it opens sled
//! also lowers the flusher sled starts, and the I/O threads it or the flusher start later.
//!
//! Owns the crate's second `unsafe`: one libc call (`sched_setscheduler`) that reads a local
//! struct. Where `SCHED_IDLE` is refused or missing the thread falls back to nice 10.

use std::sync::{Arc, Mutex};

/// The nice value used where `SCHED_IDLE` is not available.
const FALLBACK_NICE: i32 = 10;

/// What [`lower_this_thread`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lowered {
    /// `SCHED_IDLE`: preempted by any normal thread.
    Idle,
    /// Nice 10 under the normal policy.
    Nice,
    /// Nothing could be changed (not Linux, or both calls refused).
    Unchanged,
}

/// Lowers the calling thread (not the process) to `SCHED_IDLE`, else to nice 10.
pub fn lower_this_thread() -> Lowered {
    if set_idle_policy() {
        return Lowered::Idle;
    }
    #[cfg(target_os = "linux")]
    if rustix::process::setpriority_process(None, FALLBACK_NICE).is_ok() {
        return Lowered::Nice;
    }
    Lowered::Unchanged
}

/// Runs `work` on a short-lived thread lowered by [`lower_this_thread`], and returns its result.
/// Threads that `work` starts (sled's flusher, when it opens a store) inherit the lowered policy,
/// which the caller's thread (for instance one of the runtime's blocking pool, reused later for
/// queries) does not. Runs `work` on the calling thread when no thread can be started; a panic in
/// `work` is resumed on the caller's thread.
pub fn run_lowered<T, F>(name: &str, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    // `spawn` consumes its closure even when it fails, so the work waits in a slot either side
    // can take it from.
    let slot = Arc::new(Mutex::new(Some(work)));
    let for_thread = slot.clone();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_this_thread();
            let work = for_thread.lock().ok().and_then(|mut w| w.take());
            work.map(|w| w())
        });
    match spawned.map(|handle| handle.join()) {
        Ok(Ok(Some(out))) => return out,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(None)) => {}
        Err(e) => tracing::debug!(error = %e, "{name}: no thread; runs at the caller's priority"),
    }
    let work = match slot.lock() {
        Ok(mut w) => w.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    match work {
        Some(work) => work(),
        // Only the thread takes the work, and then it returns its result or panics (above).
        None => unreachable!("{name}: the lowered thread took the work and returned nothing"),
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_idle_policy() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, a valid local, for the duration of the
    // call; pid 0 is the calling thread. No memory is handed to the kernel beyond the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_idle_policy() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_idle_and_its_children_inherit_it() {
        let (mine, child) = run_lowered("priority-test", || {
            let child = std::thread::spawn(policy_of_this_thread)
                .join()
                .unwrap_or(-1);
            (policy_of_this_thread(), child)
        });
        assert_eq!(mine, libc::SCHED_IDLE);
        assert_eq!(child, libc::SCHED_IDLE);
        // The caller's own thread is untouched.
        assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
    }

    #[test]
    fn run_lowered_returns_the_work_result() {
        assert_eq!(run_lowered("priority-test", || 6 * 7), 42);
    }

    #[allow(unsafe_code)]
    fn policy_of_this_thread() -> i32 {
        // SAFETY: no arguments; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }
}
