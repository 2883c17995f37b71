//! Networks: one address or a CIDR block (`10.0.0.0/8`, `fd00::/8`,
//! `127.0.0.1`), as `[limits] trusted-proxies` lists them. A leaf: the config
//! parses them, the listener matches peers against them.

use std::fmt;
use std::net::IpAddr;

/// An address block: `prefix` leading bits of `addr` (the rest are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, how a dual-stack listener
/// sees IPv4 peers) are their IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The top `prefix` bits of a `width`-bit number.
fn masked(n: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        n & (u128::MAX << (width - prefix)) & (u128::MAX >> (128 - width))
    }
}

impl Net {
    /// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6. Bits past the prefix are
    /// ignored (`10.1.2.3/8` is `10.0.0.0/8`).
    ///
    /// # Errors
    /// Not an address, or a prefix longer than the address.
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let Ok(ip) = a.trim().parse::<IpAddr>() else {
            return Err(format!(
                "must be an address or a CIDR block such as \"10.0.0.0/8\" or \"fd00::/8\", got {s:?}"
            ));
        };
        let ip = canonical(ip);
        let (n, width) = bits(ip);
        let prefix = match p.map(|p| p.trim().parse::<u8>()) {
            None => width,
            Some(Ok(p)) if p <= width => p,
            Some(_) => return Err(format!("{s:?}: the prefix length must be from 0 to {width}")),
        };
        let n = masked(n, prefix, width);
        let addr = match ip {
            IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(n.into()),
        };
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped address as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (n, width) = bits(canonical(ip));
        let (own, own_width) = bits(self.addr);
        width == own_width && masked(n, self.prefix, width) == own
    }
}

/// Whether any of `nets` contains `ip`.
pub fn any_contains(nets: &[Net], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_blocks_v4_and_v6() {
        let one = Net::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!(one.contains(ip("::ffff:127.0.0.1")), "an IPv4-mapped peer is its IPv4 address");
        let ten = Net::parse("10.1.2.3/8").unwrap();
        assert_eq!(ten.to_string(), "10.0.0.0/8");
        assert!(ten.contains(ip("10.255.0.1")) && !ten.contains(ip("11.0.0.1")));
        let ula = Net::parse("fd00::/8").unwrap();
        assert!(ula.contains(ip("fd12::1")) && !ula.contains(ip("fe80::1")) && !ula.contains(ip("10.0.0.1")));
        let all4 = Net::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("8.8.8.8")) && !all4.contains(ip("::1")));
        let v6 = Net::parse("2001:db8::1/128").unwrap();
        assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("2001:db8::2")));
        assert!(Net::parse("::/0").unwrap().contains(ip("2001:db8::2")));
        assert_eq!(
            Net::parse("::ffff:10.0.0.0/104"),
            Err("\"::ffff:10.0.0.0/104\": the prefix length must be from 0 to 32".into())
        );
    }

    #[test]
    fn mistakes_are_named() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/x", "example.com", "10.0.0.0/-1"] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
        assert!(Net::parse("proxy").unwrap_err().contains("\"proxy\""));
    }
}
