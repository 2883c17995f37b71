//! Reconnect timing: capped exponential backoff with full jitter, as the
//! protocol asks of clients (and as the server's own MQTT link does).
//!
//! ```
//! use std::time::Duration;
//! use edgepush_protocol::backoff::Backoff;
//! use edgepush_protocol::rng::Rng;
//!
//! let b = Backoff::default();
//! let mut rng = Rng::new(7);
//! // Attempt 0 waits up to 0.5 s, attempt 3 up to 4 s, attempt 10 up to the 30 s cap.
//! assert!(b.delay(0, &mut rng) <= Duration::from_millis(500));
//! assert!(b.delay(3, &mut rng) <= Duration::from_secs(4));
//! assert!(b.delay(10, &mut rng) <= Duration::from_secs(30));
//! ```

use std::time::Duration;

use crate::rng::Rng;

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry waits up to this.
    pub base: Duration,
    /// Retries wait up to `base × 2^attempt`, at most this.
    pub cap: Duration,
}

impl Default for Backoff {
    /// As the dashboard: 0.5 s, doubling to 30 s.
    fn default() -> Self {
        Backoff { base: Duration::from_millis(500), cap: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The longest wait before retry number `attempt` (0 for the first):
    /// `min(cap, base × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(20)).min(self.cap)
    }

    /// Full jitter: uniform in `[0, ceiling(attempt)]`, so a crowd that lost
    /// its server at the same instant does not come back at the same instant.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Duration {
        self.ceiling(attempt).mul_f64(rng.next_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_jitters_below_it() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        let mut rng = Rng::new(1);
        let delays: Vec<_> = (0..200).map(|_| b.delay(5, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)), "jitter reaches down");
        assert!(delays.iter().any(|d| *d > Duration::from_millis(900)), "jitter reaches up");
    }
}
