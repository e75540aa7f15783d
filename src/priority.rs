//! Priority: background threads give the CPU to the request path at once.
//!
//! The capture writer (span assembly and sled writes) and sled's own threads (its flusher and the
//! I/O pool it spawns) can run for seconds at a time while a burst is caught up. At a normal or
//! merely lowered priority (nice 10) the kernel lets such a thread finish its time slice before a
//! woken request thread runs, which showed up as milliseconds of added p99 at a fixed request
//! rate (issue #7, bench/RESULTS.md). Under `SCHED_IDLE` a request thread that wakes preempts
//! them immediately, and they mostly use CPU nothing else wants; the capture spool absorbs what
//! they cannot store while the proxy is saturated. (Not always: when a request thread is already
//! queued, the scheduler can still pick an idle thread that waited long and let it run to the
//! next tick; bench/RESULTS.md, session 7.) And on the benchmark host a woken request thread
//! often waited for the next tick anyway, so the writer also yields on its own: [`yield_point`]s
//! in its work give the CPU away every [`YIELD_EVERY`] (bench/RESULTS.md, session 17).
//!
//! The store is opened at normal priority (an open that starves delays every capture), then
//! [`lower_store_threads`] lowers the threads it started. Threads inherit their creator's policy,
//! so the I/O threads that the lowered flusher or writer start later are idle too.
//!
//! A thread at `SCHED_IDLE` gets almost no CPU while request threads keep every core busy, so
//! whoever watches it can [`raise`] it to nice 10 (the old fixed priority) until it has caught
//! up, and then lower it again. Leaving `SCHED_IDLE` needs privilege (`CAP_SYS_NICE`, or an
//! `RLIMIT_NICE` of 10 or more); without it the thread stays idle and the spool absorbs the
//! backlog.
//!
//! Owns the crate's second `unsafe`: libc's `sched_setscheduler`, which reads a local struct.
//! Where `SCHED_IDLE` is refused or missing the thread falls back to nice 10.

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

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

/// Lowers the calling thread (not the process) to `SCHED_IDLE`, else to nice 10. At
/// `SCHED_IDLE` its [`yield_point`]s yield from now on (at nice 10 the kernel shares the CPU by
/// time slices anyway).
pub fn lower_this_thread() -> Lowered {
    if set_idle_policy() {
        YIELDS.with(|last| last.set(Some(Instant::now())));
        return Lowered::Idle;
    }
    #[cfg(target_os = "linux")]
    if rustix::process::setpriority_process(None, FALLBACK_NICE).is_ok() {
        return Lowered::Nice;
    }
    Lowered::Unchanged
}

/// A lowered thread yields at the first yield point reached at least this long (wall time)
/// after its last yield. (A long step between two points runs longer.)
pub const YIELD_EVERY: Duration = Duration::from_micros(50);

/// Set while the watchdog has raised the writer to nice 10 ([`raise_store_writer`]): yield
/// points do nothing then, since a yield would hand back the time slice the raise is for (and
/// the wait after it would count as starvation again).
static RAISED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// When a lowered or armed thread last yielded (`None`: the thread was never lowered nor
    /// armed, and its yield points do nothing).
    static YIELDS: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How many times this thread yielded at its yield points.
    static YIELDED: Cell<u64> = const { Cell::new(0) };
}

/// How many times the calling thread has yielded at [`yield_point`]s.
pub fn yields_of_this_thread() -> u64 {
    YIELDED.with(Cell::get)
}

/// A point where a lowered thread (the capture writer) or an armed one (sled's I/O threads, see
/// [`io_yield_point`]) gives the CPU to a runnable request thread, if it has run
/// [`YIELD_EVERY`] since it last did. A no-op on other threads (the admin API's, the
/// runtime's), so store code can call it on any thread.
///
/// Why (issue #7, bench/RESULTS.md session 17): on the benchmark host a request thread woken
/// while the writer computed (span assembly, a store write) often waited for the scheduler's
/// next tick (4 ms at HZ=250) before it got the CPU, `SCHED_IDLE` notwithstanding: at 2,000
/// calls a second, capture on added +3 ms to p99 while nothing was saturated. A `sched_yield`
/// once at least [`YIELD_EVERY`] has passed since the last one bounds that wait; when no other
/// thread is runnable it returns at once (about a microsecond).
pub fn yield_point() {
    if RAISED.load(Relaxed) {
        return;
    }
    YIELDS.with(|last| {
        // Threads never lowered (the admin API's, storing posted spans) stop here, before any
        // clock read.
        let Some(at) = last.get() else { return };
        if due(Some(at), Instant::now()) {
            std::thread::yield_now();
            YIELDED.with(|n| n.set(n.get() + 1));
            last.set(Some(Instant::now()));
        }
    });
}

/// Makes the calling thread's [`yield_point`]s yield from now on, at whatever priority it runs:
/// for sled's I/O threads, which are lowered by id from another thread (and run at normal
/// priority while a store opens). Whether it was armed already.
fn arm_yields() -> bool {
    YIELDS.with(|last| {
        let armed = last.get().is_some();
        if !armed {
            last.set(Some(Instant::now()));
        }
        armed
    })
}

/// The yield point sled calls between the slices of a log write, on its I/O threads
/// (`sled::set_io_yield_point`): its first call on a thread arms the thread ([`arm_yields`])
/// and returns; later calls yield as [`yield_point`] does.
pub fn io_yield_point() {
    if arm_yields() {
        yield_point();
    }
}

/// Whether a yield point at `now` yields, for a thread that last yielded at `last` (`None`:
/// never lowered nor armed).
fn due(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|at| now.saturating_duration_since(at) >= YIELD_EVERY)
}

/// The calling thread's id, for [`raise`].
pub fn this_thread() -> i32 {
    #[cfg(target_os = "linux")]
    return rustix::thread::gettid().as_raw_nonzero().get();
    #[cfg(not(target_os = "linux"))]
    0
}

/// Name prefixes of sled's own threads (its log flusher, and the I/O pool it starts), lowered
/// by name after an open ([`lower_store_threads`]).
const STORE_THREADS: [&str; 2] = ["sled-io-", "log flusher"];

/// This process's threads whose name starts with one of [`STORE_THREADS`].
pub fn store_threads() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            STORE_THREADS
                .iter()
                .any(|p| comm.starts_with(p))
                .then(|| task.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Raises the writer thread `writer` and sled's threads (see [`raise`]); whether the writer
/// was raised. sled's threads go with it: a raised writer waiting on an idle flusher would
/// still wait.
pub fn raise_store_writer(writer: i32) -> bool {
    let raised = raise(writer);
    RAISED.store(raised, Relaxed);
    if raised {
        for tid in store_threads() {
            raise(tid);
        }
    }
    raised
}

/// The writer thread `writer` and sled's threads back to `SCHED_IDLE` (always allowed).
pub fn lower_store_writer(writer: i32) {
    #[cfg(target_os = "linux")]
    set_policy(writer, libc::SCHED_IDLE);
    RAISED.store(false, Relaxed);
    #[cfg(not(target_os = "linux"))]
    let _ = writer;
    lower_store_threads();
}

/// How long thread `tid` of this process has waited, runnable, for a CPU so far (the second
/// field of `/proc/self/task/<tid>/schedstat`); `None` where the kernel does not say.
pub fn run_delay(tid: i32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

/// Gives thread `tid` (lowered by [`lower_this_thread`]) the normal policy at nice 10. Returns
/// whether it was allowed.
pub fn raise(tid: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Some(pid) = rustix::process::Pid::from_raw(tid) else {
            return false;
        };
        // Nice first (always allowed upwards), so the policy switch asks for the least.
        if rustix::process::setpriority_process(Some(pid), FALLBACK_NICE).is_err() {
            return false;
        }
        set_policy(tid, libc::SCHED_OTHER)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        false
    }
}

/// Lowers sled's threads (its log flusher and I/O pool; every store's in this process) to
/// `SCHED_IDLE`, always allowed. Called after a store is opened on a thread of normal priority:
/// the open itself (a log recovery that can take seconds) must not starve while requests keep
/// the CPUs busy, since captures wait for it, but the threads it started must not compete with
/// requests afterwards.
pub fn lower_store_threads() {
    #[cfg(target_os = "linux")]
    for tid in store_threads() {
        set_policy(tid, libc::SCHED_IDLE);
    }
}

#[cfg(target_os = "linux")]
fn set_idle_policy() -> bool {
    set_policy(0, libc::SCHED_IDLE)
}

/// `sched_setscheduler(tid, policy)` with priority 0 (the only one these policies take); tid 0
/// is the calling thread.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_policy(tid: i32, policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, a valid local, for the duration of the
    // call. No memory is handed to the kernel beyond the call.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
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
        let (mine, child) = std::thread::spawn(|| {
            assert_eq!(lower_this_thread(), Lowered::Idle);
            let child = std::thread::spawn(policy_of_this_thread)
                .join()
                .unwrap_or(-1);
            (policy_of_this_thread(), child)
        })
        .join()
        .unwrap();
        assert_eq!(mine, libc::SCHED_IDLE);
        assert_eq!(child, libc::SCHED_IDLE);
        // The caller's own thread is untouched.
        assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
    }

    #[test]
    fn a_yield_is_due_once_the_interval_has_passed_since_the_last() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let every = YIELD_EVERY.as_micros() as u64;
        assert!(
            !due(None, at(10 * every)),
            "a thread never lowered never yields"
        );
        assert!(!due(Some(t0), t0), "not straight after a yield");
        assert!(
            !due(Some(t0), at(every - 1)),
            "not before the interval has passed"
        );
        assert!(due(Some(t0), at(every)), "once it has passed");
        assert!(due(Some(t0), at(100 * every)), "and any time after");
        assert!(
            !due(Some(at(every)), t0),
            "a clock read before the last yield is not due"
        );
    }

    /// Busy for twice [`YIELD_EVERY`], so that the next yield point is due.
    fn spin_past_the_interval() {
        let t0 = Instant::now();
        while t0.elapsed() < YIELD_EVERY * 2 {
            std::hint::spin_loop();
        }
    }

    // These yield tests assume nothing raises the store writer meanwhile (`RAISED` is
    // process-wide); no test in this crate's lib does.
    #[test]
    fn only_a_lowered_thread_yields_at_its_yield_points() {
        let spin_then_yield = || {
            spin_past_the_interval();
            yield_point();
            yields_of_this_thread()
        };
        let normal = std::thread::spawn(spin_then_yield).join().unwrap();
        assert_eq!(normal, 0, "a runtime or admin thread never yields");
        let lowered = std::thread::spawn(move || {
            assert_eq!(lower_this_thread(), Lowered::Idle);
            spin_then_yield()
        })
        .join()
        .unwrap();
        assert!(
            lowered >= 1,
            "a lowered thread yields after working past the interval"
        );
    }

    #[test]
    fn an_armed_thread_yields_at_normal_priority() {
        let (policy, armed) = std::thread::spawn(move || {
            assert!(!arm_yields(), "a new thread is not armed yet");
            assert!(arm_yields(), "and then it is");
            spin_past_the_interval();
            yield_point();
            (policy_of_this_thread(), yields_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(
            policy,
            libc::SCHED_OTHER,
            "arming does not lower the thread"
        );
        assert_eq!(
            armed, 1,
            "an armed thread yields after working past the interval"
        );
        let io = std::thread::spawn(move || {
            spin_past_the_interval();
            io_yield_point(); // arms and returns; the interval starts now
            let first = yields_of_this_thread();
            spin_past_the_interval();
            io_yield_point();
            (first, yields_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(
            io,
            (0, 1),
            "sled's I/O yield point arms the thread at its first call, then yields"
        );
    }

    #[test]
    fn a_lowered_thread_can_be_raised_and_lowered_again() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            assert_eq!(lower_this_thread(), Lowered::Idle);
            let _ = tid_tx.send(this_thread());
            let _ = go_rx.recv();
            let raised = policy_of_this_thread();
            let _ = back_rx.recv();
            (raised, policy_of_this_thread())
        });
        let tid = tid_rx.recv().unwrap();
        // Raising needs privilege; without it the thread stays idle, which is what callers expect.
        let allowed = raise(tid);
        let _ = go_tx.send(());
        std::thread::sleep(std::time::Duration::from_millis(20));
        lower_store_writer(tid); // from another thread, as the watchdog does
        let _ = back_tx.send(());
        let (raised, lowered) = thread.join().unwrap();
        let expected = if allowed {
            libc::SCHED_OTHER
        } else {
            libc::SCHED_IDLE
        };
        assert_eq!(raised, expected);
        assert_eq!(lowered, libc::SCHED_IDLE);
    }

    #[test]
    fn store_threads_are_found_by_name() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let named = std::thread::Builder::new()
            .name("sled-io-test".into())
            .spawn(move || {
                let _ = tx.send(this_thread());
                let _ = stop_rx.recv();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let found = store_threads();
        let _ = stop_tx.send(());
        named.join().unwrap();
        assert!(found.contains(&tid), "{tid} in {found:?}");
        assert!(!found.contains(&this_thread()));
    }

    #[test]
    fn run_delay_is_read_for_a_thread_of_this_process() {
        let delay = run_delay(this_thread());
        assert!(delay.is_some(), "schedstat is readable here");
        assert_eq!(run_delay(-1), None);
    }

    /// A store opened on a normal thread (which is not lowered, so the open is not starved):
    /// the flusher it started is idle once `lower_store_threads` ran. (Other tests' stores
    /// come and go meanwhile: a thread gone by the time it is looked at is skipped.)
    #[test]
    fn a_store_opened_at_normal_priority_leaves_its_flusher_idle() {
        let before = store_threads();
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        let flushers: Vec<i32> = store_threads()
            .into_iter()
            .filter(|tid| !before.contains(tid) && name_of(*tid).starts_with("log flusher"))
            .collect();
        assert!(!flushers.is_empty(), "sled started its flusher");
        lower_store_threads();
        let alive: Vec<i32> = flushers
            .iter()
            .map(|&tid| policy_of(tid))
            .filter(|&p| p != -1)
            .collect();
        assert!(
            !alive.is_empty(),
            "this test's flusher is alive: its store is held"
        );
        assert!(alive.iter().all(|&p| p == libc::SCHED_IDLE), "{alive:?}");
        assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
        drop(store);
    }

    fn name_of(tid: i32) -> String {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default()
    }

    fn policy_of_this_thread() -> i32 {
        policy_of(0)
    }

    #[allow(unsafe_code)]
    fn policy_of(tid: i32) -> i32 {
        // SAFETY: no memory is passed; an unknown tid is an error return (-1), not UB.
        unsafe { libc::sched_getscheduler(tid) }
    }
}
