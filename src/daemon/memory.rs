//! Giving memory back to the system after a crowd of connections leaves.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::time::Instant;

use log::debug;
use smol::Timer;

use crate::metrics::Metrics;

/// How often [`give_back_memory`] looks.
const TRIM_CHECK: Duration = Duration::from_secs(10);
/// Closed connections that make a trim worth it.
const TRIM_AFTER_CLOSES: u64 = 256;

/// Checks that trim again after the last close: a closed connection's task
/// memory is freed late, when the timer wheel drops its waker (up to one
/// heartbeat interval after the close), so one trim right after a crowd
/// leaves finds much of its memory still in use.
const TRIM_FOLLOW_UPS: u32 = 3;

/// Returns freed memory to the system after connections leave. glibc keeps
/// freed chunks in its per-thread arenas, so after a crowd of dashboards
/// disconnects the RSS would stay at its peak; on a small gateway that memory
/// belongs to the rest of the device. Every 10 s: if 256 connections closed
/// since the last trim, or any did and none are left, `malloc_trim(0)`; then
/// again at the next [`TRIM_FOLLOW_UPS`] checks.
pub(super) async fn give_back_memory(metrics: Arc<Metrics>) {
    let closed = |m: &Metrics| m.accepted.load(Relaxed).saturating_sub(m.connections.load(Relaxed));
    let mut at_last_trim = closed(&metrics);
    let mut follow_ups = 0;
    loop {
        Timer::after(TRIM_CHECK).await;
        let now = closed(&metrics);
        let since = now - at_last_trim.min(now);
        if since >= TRIM_AFTER_CLOSES || (since > 0 && metrics.connections.load(Relaxed) == 0) {
            at_last_trim = now;
            follow_ups = TRIM_FOLLOW_UPS;
            trim();
        } else if follow_ups > 0 {
            follow_ups -= 1;
            trim();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let started = Instant::now();
    // SAFETY: mallinfo2 only reads the allocator's statistics; malloc_trim
    // only releases free memory; both are safe to call at any time.
    let (before, released) = unsafe { (libc::mallinfo2(), libc::malloc_trim(0)) };
    debug!(
        "malloc_trim: {} KiB in use, {} KiB free in the arenas; released={released} in {:?}",
        before.uordblks / 1024,
        before.fordblks / 1024,
        started.elapsed()
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
