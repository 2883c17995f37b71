//! The server's health as `/healthz` reports it: when the hub's loop and the
//! MQTT bridge's thread last answered a probe (the daemon's probe task
//! records it, `daemon/start.rs`), the broker link, and whether the server is
//! shutting down. [`assess`] is the decision, a pure function of those.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the daemon probes the hub and the bridge (a round trip each).
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A part that has not answered a probe for this long is stalled: ten probe
/// periods, so a busy moment is not a failure but a deadlock is soon seen.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(10);

/// When the hub and the bridge last answered, in milliseconds since `since`.
pub(crate) struct Liveness {
    since: Instant,
    hub_ms: AtomicU64,
    bridge_ms: AtomicU64,
}

impl Liveness {
    /// Both count as just answered: a server that starts is given
    /// [`STALE_AFTER`] before its first answers are due.
    pub(crate) fn new() -> Liveness {
        Liveness { since: Instant::now(), hub_ms: AtomicU64::new(0), bridge_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    pub(crate) fn hub_answered(&self) {
        self.hub_ms.fetch_max(self.now_ms(), Relaxed);
    }

    pub(crate) fn bridge_answered(&self) {
        self.bridge_ms.fetch_max(self.now_ms(), Relaxed);
    }

    /// How long ago the hub and the bridge last answered.
    pub(crate) fn ages(&self) -> (Duration, Duration) {
        let now = self.now_ms();
        let age = |at: &AtomicU64| Duration::from_millis(now.saturating_sub(at.load(Relaxed)));
        (age(&self.hub_ms), age(&self.bridge_ms))
    }
}

/// What `/healthz` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub hub_ok: bool,
    pub bridge_ok: bool,
    pub broker_up: bool,
    pub shutting_down: bool,
    pub connections: u64,
}

/// The decision: each part is good when it answered within [`STALE_AFTER`].
pub(crate) fn assess(
    hub_age: Duration,
    bridge_age: Duration,
    broker_up: bool,
    shutting_down: bool,
    connections: u64,
) -> Report {
    Report {
        hub_ok: hub_age <= STALE_AFTER,
        bridge_ok: bridge_age <= STALE_AFTER,
        broker_up,
        shutting_down,
        connections,
    }
}

impl Report {
    /// Healthy: every part answers, the broker link is up, not shutting down.
    pub(crate) fn healthy(&self) -> bool {
        self.hub_ok && self.bridge_ok && self.broker_up && !self.shutting_down
    }

    /// The JSON body (docs/PROTOCOL.md §2.1), one line.
    pub(crate) fn json(&self) -> String {
        let part = |ok| if ok { "ok" } else { "stalled" };
        format!(
            "{{\"status\":\"{}\",\"hub\":\"{}\",\"bridge\":\"{}\",\"broker\":\"{}\",\"shutting_down\":{},\"broker_up\":{},\"connections\":{}}}\n",
            if self.healthy() { "ok" } else { "fail" },
            part(self.hub_ok),
            part(self.bridge_ok),
            if self.broker_up { "up" } else { "down" },
            self.shutting_down,
            self.broker_up,
            self.connections,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_millis(300);

    #[test]
    fn healthy_only_when_every_part_answered_recently() {
        let good = assess(FRESH, FRESH, true, false, 3);
        assert!(good.healthy());
        assert_eq!(
            good.json(),
            "{\"status\":\"ok\",\"hub\":\"ok\",\"bridge\":\"ok\",\"broker\":\"up\",\"shutting_down\":false,\"broker_up\":true,\"connections\":3}\n"
        );
        // At the bound still good; past it, stalled.
        assert!(assess(STALE_AFTER, STALE_AFTER, true, false, 0).healthy());
        let late = STALE_AFTER + Duration::from_millis(1);
        let hub = assess(late, FRESH, true, false, 0);
        assert!(!hub.healthy() && !hub.hub_ok && hub.bridge_ok);
        assert!(
            hub.json().starts_with("{\"status\":\"fail\",\"hub\":\"stalled\",\"bridge\":\"ok\","),
            "{}",
            hub.json()
        );
        let bridge = assess(FRESH, late, true, false, 0);
        assert!(!bridge.healthy());
        assert!(bridge.json().contains("\"hub\":\"ok\",\"bridge\":\"stalled\""));
        let broker = assess(FRESH, FRESH, false, false, 0);
        assert!(!broker.healthy());
        assert!(broker.json().contains("\"broker\":\"down\"") && broker.json().contains("\"broker_up\":false"));
        let stopping = assess(FRESH, FRESH, true, true, 0);
        assert!(!stopping.healthy());
        assert!(stopping.json().contains("\"status\":\"fail\"") && stopping.json().contains("\"shutting_down\":true"));
    }

    #[test]
    fn answers_reset_the_ages() {
        let l = Liveness::new();
        let (hub, bridge) = l.ages();
        assert!(hub < STALE_AFTER && bridge < STALE_AFTER, "a new server is given time");
        // Pretend the last answers were long ago.
        l.hub_ms.store(0, Relaxed);
        let l = Liveness { since: Instant::now() - Duration::from_secs(60), ..l };
        let (hub, bridge) = l.ages();
        assert!(hub >= Duration::from_secs(60) && bridge >= Duration::from_secs(60));
        l.hub_answered();
        let (hub, bridge) = l.ages();
        assert!(hub < Duration::from_secs(1), "{hub:?}");
        assert!(bridge >= Duration::from_secs(60));
        l.bridge_answered();
        assert!(l.ages().1 < Duration::from_secs(1));
    }
}
