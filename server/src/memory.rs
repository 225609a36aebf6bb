//! Giving freed heap back to the system after bursts of watch streams.
//!
//! Ten thousand watch streams held open and then closed left a Keel at 11 MB of RSS holding
//! 170-250 MB, round after round, although everything they used was freed (the hub forgets
//! closed streams at the next tick; h2 and tonic free theirs as the streams end):
//! `malloc_trim(0)` took that process from 248 MB back to 27 MB. glibc's malloc keeps freed
//! chunks inside its per-thread arenas and returns only the top of a heap; a stream's memory is
//! allocated on one runtime thread and freed on another, so the arenas fragment and stay
//! large. So, once enough streams have closed, a trim runs (off the runtime threads, one at a
//! time, once the closing has calmed down and the node has forgotten them): the memory a burst
//! of streams took goes back, at the cost of one trim per burst.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Closed watch streams that make a trim worth it (about 15 KB of heap each, held open).
pub(crate) const TRIM_AFTER_CLOSED_STREAMS: usize = 1000;
/// The trim waits until no stream has closed for this long (the node forgets a closed stream at
/// its next tick, 100 ms by default, and a burst of closes frees its memory over a while)...
const QUIET: Duration = Duration::from_secs(1);
/// ...but no longer than this, so that a steady churn of streams is trimmed too.
const TRIM_WAIT_MAX: Duration = Duration::from_secs(10);

static CLOSED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);
static TRIM_PENDING: AtomicBool = AtomicBool::new(false);

/// Counts a closed watch stream; every [`TRIM_AFTER_CLOSED_STREAMS`] schedules a trim.
pub(crate) fn watch_stream_closed() {
    if CLOSED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed) + 1 < TRIM_AFTER_CLOSED_STREAMS {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    if TRIM_PENDING.swap(true, Ordering::AcqRel) {
        return; // One at a time; it takes in these streams too.
    }
    runtime.spawn(async {
        let deadline = tokio::time::Instant::now() + TRIM_WAIT_MAX;
        loop {
            CLOSED_SINCE_TRIM.store(0, Ordering::Relaxed);
            tokio::time::sleep(QUIET).await;
            let quiet = CLOSED_SINCE_TRIM.load(Ordering::Relaxed) == 0;
            if quiet || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let _ = tokio::task::spawn_blocking(release_free_heap).await;
        TRIM_PENDING.store(false, Ordering::Release);
    });
}

/// Returns the allocator's free memory to the system where the allocator keeps it.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only walks glibc's own arenas (under their locks) and returns
        // free pages; it touches no memory the program owns.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released, elapsed_us = started.elapsed().as_micros() as u64, "trimmed the heap");
    }
}

/// Counts the stream's end when dropped (with the stream's response side).
pub(crate) struct ClosedGuard;

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        watch_stream_closed();
    }
}
