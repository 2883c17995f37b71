//! Lowercase hex, for token hashes (`hash-token`, `[[auth.tokens]] sha256`).

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly 64 hex digits (either case) as 32 bytes; None for anything else.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_64_digits() {
        let b: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8);
        assert_eq!(decode32(&encode(&b)), Some(b));
        assert_eq!(decode32(&encode(&b).to_uppercase()), Some(b));
        assert_eq!(decode32(&"0".repeat(63)), None);
        assert_eq!(decode32(&format!("{}g", "0".repeat(63))), None);
        assert_eq!(decode32(&"é".repeat(32)), None);
    }
}
