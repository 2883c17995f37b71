//! A tiny xorshift generator: backoff jitter and the demo's sensor noise.
//! Not for anything secret.
//!
//! ```
//! use edgepush_protocol::rng::Rng;
//!
//! let mut r = Rng::new(42);
//! let x = r.next_f64();
//! assert!((0.0..1.0).contains(&x));
//! ```

/// xorshift64: jitter and noise need spread, not cryptography.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; 0 is made odd).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Seeded from the clock and the process id, for jitter that differs
    /// between processes and between instances in one process.
    pub fn from_time(salt: u64) -> Rng {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut r = Rng::new(nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // A few rounds so nearby seeds diverge.
        for _ in 0..4 {
            r.next_f64();
        }
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal, mean 0, deviation 1 (sum of uniforms).
    pub fn noise(&mut self) -> f64 {
        (0..6).map(|_| self.next_f64()).sum::<f64>() - 3.0
    }
}
