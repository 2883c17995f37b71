//! Admission control: the global and per-address connection caps, checked
//! before the upgrade, and each token's own cap, checked once the token is
//! known. A slot is held by a guard for the whole session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Refusal;
use crate::net::canonical;
use crate::session::rate::Bucket;

struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// New connections per second per address.
    rate: PerAddress,
    /// Connections per token name (only tokens with a cap are counted).
    by_token: HashMap<Arc<str>, usize>,
}

/// Addresses whose connection rate is remembered at once.
const RATE_ADDRESSES: usize = 4096;

/// The connection caps and the current counts.
pub struct Admission {
    max: AtomicUsize,
    per_ip: AtomicUsize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it frees the slot.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// Caps on concurrent connections (all, and per address) and on new
    /// connections per second per address.
    pub fn new(max: usize, per_ip: usize, per_ip_rate: u32) -> Arc<Admission> {
        let counts = Counts {
            total: 0,
            by_ip: HashMap::new(),
            rate: PerAddress::new(per_ip_rate, RATE_ADDRESSES),
            by_token: HashMap::new(),
        };
        Arc::new(Admission { max: AtomicUsize::new(max), per_ip: AtomicUsize::new(per_ip), counts: Mutex::new(counts) })
    }

    /// New caps (config reload). Connections past a lowered cap stay; new
    /// ones are refused until enough have left.
    pub fn set_caps(&self, max: usize, per_ip: usize, per_ip_rate: u32) {
        self.max.store(max, Relaxed);
        self.per_ip.store(per_ip, Relaxed);
        self.lock().rate.set_rate(per_ip_rate, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `ip`, or says which cap refused it (global first,
    /// then the address's concurrent cap, then its connection rate).
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = canonical(ip);
        let mut c = self.lock();
        if c.total >= self.max.load(Relaxed) {
            return Err(Refusal::Capacity);
        }
        if c.by_ip.get(&ip).is_some_and(|n| *n >= self.per_ip.load(Relaxed)) {
            return Err(Refusal::PerAddress);
        }
        if !c.rate.take(ip, Instant::now()) {
            return Err(Refusal::Rate);
        }
        let n = c.by_ip.entry(ip).or_insert(0);
        *n += 1;
        c.total += 1;
        Ok(Slot { admission: self.clone(), ip })
    }

    /// Takes one of `ip`'s new connections per second without a slot: the
    /// health upgrade is rate-limited like every connection attempt but holds
    /// no cap (it closes at once).
    pub fn try_rate(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.lock().rate.take(canonical(ip), Instant::now()) {
            Ok(())
        } else {
            Err(Refusal::Rate)
        }
    }

    /// What [`Admission::try_admit`] would say about the caps (not the rate)
    /// for `ip`, taking nothing: the `/access` check.
    pub fn would_admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        let c = self.lock();
        if c.total >= self.max.load(Relaxed) {
            return Err(Refusal::Capacity);
        }
        if c.by_ip.get(&canonical(ip)).is_some_and(|n| *n >= self.per_ip.load(Relaxed)) {
            return Err(Refusal::PerAddress);
        }
        Ok(())
    }

    /// What [`Admission::try_admit_token`] would say, taking nothing.
    pub fn would_admit_token(&self, token: &str, max: usize) -> Result<(), Refusal> {
        match self.lock().by_token.get(token) {
            Some(n) if *n >= max => Err(Refusal::PerToken),
            _ => Ok(()),
        }
    }

    /// Takes one of `token`'s `max` connections, or refuses (429).
    pub fn try_admit_token(self: &Arc<Self>, token: &Arc<str>, max: usize) -> Result<TokenSlot, Refusal> {
        let mut c = self.lock();
        let n = c.by_token.entry(token.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                c.by_token.remove(token);
            }
            return Err(Refusal::PerToken);
        }
        *n += 1;
        Ok(TokenSlot { admission: self.clone(), token: token.clone() })
    }

    /// Connections holding a slot.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

/// One of a token's connections; dropping it frees it.
pub struct TokenSlot {
    admission: Arc<Admission>,
    token: Arc<str>,
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        if let Some(n) = c.by_token.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                c.by_token.remove(&self.token);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total -= 1;
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
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

    /// A new rate (config reload). Existing buckets keep their level (at
    /// most the new burst): a reload does not let a throttled address in.
    pub fn set_rate(&mut self, rate: u32, now: Instant) {
        if rate != self.rate {
            self.rate = rate;
            for b in self.buckets.values_mut() {
                b.set_limits(rate, rate, now);
            }
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[test]
    fn a_reload_keeps_each_address_at_its_level() {
        let t0 = Instant::now();
        let mut p = PerAddress::new(3, 8);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!((0..5).filter(|_| p.take(a, t0)).count(), 3);
        // Drained; a reload to a higher rate must not refill it at once.
        p.set_rate(10, t0);
        assert!(!p.take(a, t0), "a reload refilled a drained bucket");
        // It refills at the new rate: 10/s, one token per 100 ms.
        assert!(p.take(a, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn caps_global_first_then_per_address_and_slots_free_on_drop() {
        let a = Admission::new(3, 2, 100);
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let s1 = a.try_admit(ip1).unwrap();
        let _s2 = a.try_admit(ip1).unwrap();
        assert_eq!(a.try_admit(ip1).err(), Some(Refusal::PerAddress));
        let _s3 = a.try_admit(ip2).unwrap();
        assert_eq!(a.try_admit(ip2).err(), Some(Refusal::Capacity));
        assert_eq!(a.try_admit(ip1).err(), Some(Refusal::Capacity), "global cap is checked first");
        drop(s1);
        assert_eq!(a.total(), 2);
        let _s4 = a.try_admit("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(a.try_admit(ip2).err(), Some(Refusal::Capacity));
        assert_eq!(a.lock().by_ip.len(), 2);
    }

    #[test]
    fn lowered_caps_keep_existing_slots_and_refuse_new_ones() {
        let a = Admission::new(4, 4, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..3).map(|_| a.try_admit(ip).unwrap()).collect();
        a.set_caps(2, 4, 100);
        assert_eq!(a.total(), 3);
        assert_eq!(a.try_admit(ip).err(), Some(Refusal::Capacity));
        a.set_caps(8, 3, 100);
        assert_eq!(a.try_admit(ip).err(), Some(Refusal::PerAddress));
        drop(slots);
        assert!(a.try_admit(ip).is_ok());
    }

    #[test]
    fn new_connections_per_second_per_address() {
        let a = Admission::new(100, 100, 3);
        let (ip, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let slots: Vec<Slot> = (0..3).map(|_| a.try_admit(ip).unwrap()).collect();
        drop(slots);
        assert_eq!(a.try_admit(ip).err(), Some(Refusal::Rate), "closing them does not give the rate back");
        assert!(a.try_admit(other).is_ok(), "another address has its own bucket");
    }

    #[test]
    fn would_admit_says_what_admission_would_and_takes_nothing() {
        let a = Admission::new(2, 1, 100);
        let (ip, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(a.would_admit(ip), Ok(()));
        let _s = a.try_admit(ip).unwrap();
        assert_eq!(a.would_admit("::ffff:10.0.0.1".parse().unwrap()), Err(Refusal::PerAddress));
        assert_eq!(a.would_admit(other), Ok(()));
        let _t = a.try_admit(other).unwrap();
        assert_eq!(a.would_admit(other), Err(Refusal::Capacity));
        assert_eq!(a.total(), 2);
        let name: Arc<str> = "wall".into();
        assert_eq!(a.would_admit_token("wall", 1), Ok(()));
        let _w = a.try_admit_token(&name, 1).unwrap();
        assert_eq!(a.would_admit_token("wall", 1), Err(Refusal::PerToken));
        assert_eq!(a.would_admit_token("wall", 2), Ok(()));
    }

    #[test]
    fn a_rate_token_without_a_slot() {
        let a = Admission::new(1, 1, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let _held = a.try_admit(ip).unwrap();
        assert_eq!(a.try_rate(ip), Ok(()), "caps do not apply");
        assert_eq!(a.try_rate(ip), Err(Refusal::Rate), "the address's rate does");
        assert_eq!(a.total(), 1);
        assert_eq!(a.try_rate("::ffff:10.0.0.2".parse().unwrap()), Ok(()));
    }
}
