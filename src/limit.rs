//! Token buckets: client messages per connection, and new connections per
//! address.

use std::collections::HashMap;
use std::net::IpAddr;
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

    /// Whether it is full again (nothing to remember about its owner).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// New connections per second per address: a bucket per address holding
/// one second's worth. Bounded: at `capacity` addresses, full buckets are
/// forgotten first; if none is full, the address is refused rather than the
/// table growing (a flood of spoofed-looking sources cannot exhaust memory).
pub struct PerAddress {
    rate: u32,
    capacity: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl PerAddress {
    pub fn new(rate: u32, capacity: usize) -> PerAddress {
        PerAddress { rate, capacity: capacity.max(1), buckets: HashMap::new() }
    }

    /// A new rate (config reload); existing buckets keep their level.
    pub fn set_rate(&mut self, rate: u32) {
        if rate != self.rate {
            self.rate = rate;
            self.buckets.clear();
        }
    }

    /// Takes a token for a new connection from `ip`.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.capacity {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        let rate = self.rate;
        self.buckets.entry(ip).or_insert_with(|| Bucket::new(rate, rate, now)).take(now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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

    #[test]
    fn per_address_buckets_are_separate_and_bounded() {
        let t0 = Instant::now();
        let mut p = PerAddress::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        assert_eq!((0..5).filter(|_| p.take(a, t0)).count(), 3);
        assert!(p.take(b, t0));
        // Table full, no bucket full again: the newcomer waits.
        assert!(!p.take(c, t0));
        assert_eq!(p.len(), 2);
        // A second later both are full again and can be forgotten.
        let t1 = t0 + Duration::from_secs(1);
        assert!(p.take(c, t1));
        assert!(p.len() <= 2);
        assert!(p.take(a, t1));
    }
}
