//! Token buckets: the client messages of one connection here, and (through
//! the listener's `PerAddress`) new connections per address.

use std::time::Instant;

/// A bucket holding up to `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(burst), last: now, rate: f64::from(rate), burst: f64::from(burst) }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// New limits (a reload), keeping the level: a reload neither refills a
    /// drained bucket nor drains a full one beyond the new burst.
    pub fn set_limits(&mut self, rate: u32, burst: u32, now: Instant) {
        self.refill(now);
        self.rate = f64::from(rate);
        self.burst = f64::from(burst);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Whether it is full again (nothing to remember about its owner).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5, "the burst");
        // 10/s: one token every 100 ms, never more than the burst.
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(110)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
        // A clock that goes backwards adds nothing.
        assert!(!b.take(t0));
    }
}
