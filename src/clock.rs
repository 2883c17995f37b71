//! The wall clock and the start-up randomness the server reads.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (an event's `ts_ms`, a Heartbeat's).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random 53-bit number (exact in a JavaScript number), different on every
/// start: the hub's epoch.
pub fn random_epoch() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return u64::from_le_bytes(b) >> 11;
        }
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish() >> 11
}
