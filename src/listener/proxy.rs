//! Behind a reverse proxy: who the client is. Pure parsing, no I/O: the
//! `X-Forwarded-For` and `Forwarded` (RFC 7239) headers, and the PROXY
//! protocol's v1 (text) and v2 (binary) headers. The listener consults them
//! only for a peer in `[limits] trusted-proxies`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::net::{any_contains, canonical, Net};

/// The client behind a trusted peer, from the values of its
/// `X-Forwarded-For` headers (in order) or, when there is none, its
/// `Forwarded` headers.
///
/// Each proxy appends the address it received the request from, so the list
/// is read from the right: the first address that is not a trusted proxy is
/// the client. If every address is trusted, the leftmost. An entry that is not
/// an address (garbage, `unknown`, an obfuscated `_name`) ends the walk at the
/// last trusted address seen: the peer itself when it is the rightmost.
///
/// `X-Forwarded-For` comes first because nginx, HAProxy (`option
/// forwardfor`) and Traefik set it; a proxy that sets only `Forwarded` must
/// delete a client's own `X-Forwarded-For`.
pub fn client_address<'a>(
    xff: impl Iterator<Item = &'a [u8]>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    peer: IpAddr,
    trusted: &[Net],
) -> IpAddr {
    let mut nodes: Vec<Option<IpAddr>> = Vec::new();
    for v in xff {
        nodes.extend(v.split(|&b| b == b',').map(xff_entry));
    }
    if nodes.is_empty() {
        for v in forwarded {
            forwarded_for(v, &mut nodes);
        }
    }
    let mut last = peer;
    for node in nodes.iter().rev() {
        match node {
            None => return last,
            Some(ip) if !any_contains(trusted, *ip) => return *ip,
            Some(ip) => last = *ip,
        }
    }
    last
}

/// One `X-Forwarded-For` entry: an address, with a port or in brackets as
/// some proxies write it.
fn xff_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    node_address(s)
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`; a port may be
/// obfuscated (`_p`).
fn node_address(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let host = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        h.parse::<Ipv6Addr>().ok().map(IpAddr::V6)?
    } else {
        let (h, _port) = s.split_once(':')?;
        h.parse::<Ipv4Addr>().ok().map(IpAddr::V4)?
    };
    Some(canonical(host))
}

/// The `for=` node of each element of one `Forwarded` value, in order (None
/// where it is not an address, or missing).
fn forwarded_for(value: &[u8], out: &mut Vec<Option<IpAddr>>) {
    let Ok(value) = std::str::from_utf8(value) else {
        out.push(None);
        return;
    };
    for element in split_unquoted(value, ',') {
        let mut node: Option<Option<IpAddr>> = None;
        for pair in split_unquoted(element, ';') {
            let Some((name, v)) = pair.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("for") {
                continue;
            }
            let v = v.trim();
            let v = match v.strip_prefix('"') {
                Some(q) => q.strip_suffix('"').map(|q| q.replace('\\', "")),
                None => Some(v.to_owned()),
            };
            // Twice in one element is malformed: not an address.
            node = Some(if node.is_some() { None } else { v.as_deref().and_then(node_address) });
        }
        out.push(node.flatten());
    }
}

/// `s` split at `sep` outside double quotes (a backslash escapes inside them).
fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// The PROXY protocol v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// What [`parse_header`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Read exactly this many more bytes and ask again. Never more than the
    /// header still holds, so nothing after it (a TLS hello, an HTTP head)
    /// is read here.
    Need(usize),
    /// A v1 line: read through the next `\n`, at most `max` more bytes (the
    /// bytes before a line end are all the header's), and ask again.
    Line { max: usize },
    /// A complete header of `len` bytes, followed by `skip` more (v2's TLVs)
    /// to be read and discarded. `source`: the client; None for v1
    /// `UNKNOWN`, v2 `LOCAL` (the proxy's own health check) or an address
    /// family without one: the peer's address stands.
    Done { source: Option<SocketAddr>, len: usize, skip: usize },
    /// Not a PROXY header: drop the connection.
    Malformed(&'static str),
}

/// A PROXY protocol v1 or v2 header at the start of `buf`.
pub fn parse_header(buf: &[u8]) -> Header {
    // Either signature's first 12 bytes tell them apart; v1's shortest line
    // (`PROXY UNKNOWN\r\n`) is longer than that.
    if buf.len() < 12 {
        let n = buf.len();
        return if V2_SIGNATURE.starts_with(buf) || b"PROXY ".starts_with(&buf[..n.min(6)]) {
            Header::Need(12 - n)
        } else {
            Header::Malformed("no PROXY protocol signature")
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        v1(buf)
    } else {
        Header::Malformed("no PROXY protocol signature")
    }
}

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`.
fn v1(buf: &[u8]) -> Header {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Header::Malformed("v1 line too long")
        } else {
            Header::Line { max: V1_MAX - buf.len() }
        };
    };
    let done = |source| Header::Done { source, len: end + 1, skip: 0 };
    let Some(line) = buf[..end].strip_suffix(b"\r").and_then(|l| std::str::from_utf8(l).ok()) else {
        return Header::Malformed("v1 line not text ending in CRLF");
    };
    let mut f = line.split(' ');
    let _proxy = f.next();
    let fields: Vec<&str> = f.collect();
    match fields.first().copied() {
        Some("UNKNOWN") => done(None),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, src, dst, sport, dport] = fields[..] else { return Header::Malformed("v1 needs 4 fields") };
            let port = |p: &str| p.parse::<u16>().ok().filter(|_| !p.starts_with('+'));
            let (src, dst, sport) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>(), port(sport));
            match (src, dst, sport, port(dport)) {
                (Ok(s), Ok(d), Some(sp), Some(_))
                    if s.is_ipv4() == (family == "TCP4") && d.is_ipv4() == s.is_ipv4() =>
                {
                    done(Some(SocketAddr::new(canonical(s), sp)))
                }
                _ => Header::Malformed("v1 addresses or ports"),
            }
        }
        _ => Header::Malformed("v1 protocol not TCP4, TCP6 or UNKNOWN"),
    }
}

/// The signature, version and command, family and protocol, length (big
/// endian), then the addresses and TLVs.
fn v2(buf: &[u8]) -> Header {
    if buf.len() < 16 {
        return Header::Need(16 - buf.len());
    }
    let (ver_cmd, family, len) = (buf[12], buf[13], usize::from(u16::from_be_bytes([buf[14], buf[15]])));
    if ver_cmd >> 4 != 2 {
        return Header::Malformed("v2 version not 2");
    }
    let local = match ver_cmd & 0xf {
        0 => true,
        1 => false,
        _ => return Header::Malformed("v2 command neither LOCAL nor PROXY"),
    };
    // Only the address block is kept; the TLVs after it are skipped.
    let block = match family >> 4 {
        1 => 12,
        2 => 36,
        _ => 0,
    };
    if local || block == 0 {
        return Header::Done { source: None, len: 16, skip: len };
    }
    if len < block {
        return Header::Malformed("v2 length shorter than its addresses");
    }
    if buf.len() < 16 + block {
        return Header::Need(16 + block - buf.len());
    }
    let a = &buf[16..16 + block];
    let source = if block == 12 {
        let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&a[..16]);
        SocketAddr::new(canonical(IpAddr::V6(octets.into())), u16::from_be_bytes([a[32], a[33]]))
    };
    Header::Done { source: Some(source), len: 16 + block, skip: len - block }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Net> {
        list.iter().map(|s| Net::parse(s).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str], trusted: &[&str]) -> IpAddr {
        let peer = ip("127.0.0.1");
        client_address(values.iter().map(|v| v.as_bytes()), std::iter::empty(), peer, &nets(trusted))
    }

    fn fwd(values: &[&str], trusted: &[&str]) -> IpAddr {
        let peer = ip("127.0.0.1");
        client_address(std::iter::empty(), values.iter().map(|v| v.as_bytes()), peer, &nets(trusted))
    }

    #[test]
    fn x_forwarded_for_rightmost_untrusted() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(xff(&["203.0.113.7"], &t), ip("203.0.113.7"));
        // A client's own (spoofed) entries sit left of what the proxies appended.
        assert_eq!(xff(&["1.1.1.1, 203.0.113.7, 10.0.0.2"], &t), ip("203.0.113.7"));
        assert_eq!(xff(&["1.1.1.1", "203.0.113.7,10.0.0.2"], &t), ip("203.0.113.7"), "headers joined in order");
        assert_eq!(xff(&["10.0.0.3, 10.0.0.2"], &t), ip("10.0.0.3"), "all trusted: the leftmost");
        assert_eq!(xff(&["203.0.113.7:4711"], &t), ip("203.0.113.7"));
        assert_eq!(xff(&["[2001:db8::1]:80"], &t), ip("2001:db8::1"));
        assert_eq!(xff(&["2001:db8::1"], &t), ip("2001:db8::1"));
        assert_eq!(xff(&["::ffff:203.0.113.7"], &t), ip("203.0.113.7"));
        assert_eq!(xff(&["1.1.1.1, garbage"], &t), ip("127.0.0.1"), "not an address: the peer");
        assert_eq!(xff(&["garbage, 10.0.0.9"], &t), ip("10.0.0.9"), "stops at the last trusted hop");
        assert_eq!(xff(&[""], &t), ip("127.0.0.1"));
        assert_eq!(xff(&[], &t), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_for_nodes() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"], &t), ip("192.0.2.60"));
        assert_eq!(fwd(&["For=\"[2001:db8:cafe::17]:4711\""], &t), ip("2001:db8:cafe::17"));
        assert_eq!(fwd(&["for=\"192.0.2.43:47011\""], &t), ip("192.0.2.43"));
        assert_eq!(fwd(&["for=192.0.2.43, for=198.51.100.17;by=x"], &t), ip("198.51.100.17"));
        assert_eq!(fwd(&["for=192.0.2.43", "for=10.0.0.5"], &t), ip("192.0.2.43"));
        assert_eq!(fwd(&["for=_hidden"], &t), ip("127.0.0.1"), "obfuscated: the peer");
        assert_eq!(fwd(&["for=unknown"], &t), ip("127.0.0.1"));
        assert_eq!(fwd(&["for=192.0.2.43, for=_x"], &t), ip("127.0.0.1"));
        assert_eq!(fwd(&["proto=https"], &t), ip("127.0.0.1"), "no for=: the peer");
        assert_eq!(fwd(&["for=1.2.3.4;for=5.6.7.8"], &t), ip("127.0.0.1"), "two for= in one element");
        assert_eq!(fwd(&["for=\"[::1]\";by=\"a,b;c\", for=192.0.2.1"], &t), ip("192.0.2.1"), "quoted separators");
        assert_eq!(fwd(&["for=\"192.0.2.43:_p\""], &t), ip("192.0.2.43"), "an obfuscated port");
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let trusted = nets(&["127.0.0.1"]);
        let got = client_address(
            [&b"203.0.113.7"[..]].into_iter(),
            [&b"for=192.0.2.1"[..]].into_iter(),
            ip("127.0.0.1"),
            &trusted,
        );
        assert_eq!(got, ip("203.0.113.7"));
    }

    fn done(source: Option<&str>, len: usize, skip: usize) -> Header {
        Header::Done { source: source.map(|s| s.parse().unwrap()), len, skip }
    }

    /// Feeds `bytes` as the I/O would: exactly what each `Need` asks for.
    fn feed(bytes: &[u8]) -> (Header, usize) {
        let mut n = 0;
        loop {
            match parse_header(&bytes[..n]) {
                Header::Need(more) => {
                    assert!(more > 0);
                    if n + more > bytes.len() {
                        return (Header::Need(more), n);
                    }
                    n += more;
                }
                Header::Line { max } => {
                    let window = &bytes[n..bytes.len().min(n + max)];
                    assert!(!window.is_empty(), "ran out of input");
                    n += window.iter().position(|&b| b == b'\n').map_or(window.len(), |i| i + 1);
                }
                other => return (other, n),
            }
        }
    }

    #[test]
    fn v1_headers() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, read) = feed(line);
        assert_eq!(h, done(Some("192.0.2.1:56324"), 45, 0));
        assert_eq!(read, 45, "nothing past the header is read");
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(feed(v6).0, done(Some("[2001:db8::1]:1"), v6.len(), 0));
        assert_eq!(feed(b"PROXY UNKNOWN\r\n").0, done(None, 15, 0));
        assert_eq!(feed(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0, done(None, 35, 0));
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROXY\r\n\r\n\r\n\r\n",
        ] {
            assert!(matches!(feed(bad).0, Header::Malformed(_)), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(feed(&long), (Header::Malformed("v1 line too long"), V1_MAX));
    }

    fn v2_header(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | cmd, family]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    #[test]
    fn v2_headers() {
        let mut inet = vec![192, 0, 2, 1, 198, 51, 100, 2];
        inet.extend(56324u16.to_be_bytes());
        inet.extend(443u16.to_be_bytes());
        let h = v2_header(1, 0x11, &inet);
        assert_eq!(feed(&h).0, done(Some("192.0.2.1:56324"), 28, 0));
        // TLVs after the addresses are skipped, not parsed.
        let mut with_tlv = inet.clone();
        with_tlv.extend([0x04, 0, 3, 1, 2, 3]);
        assert_eq!(feed(&v2_header(1, 0x11, &with_tlv)).0, done(Some("192.0.2.1:56324"), 28, 6));
        let mut inet6 = Vec::new();
        inet6.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        inet6.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        inet6.extend([0, 80, 1, 187]);
        assert_eq!(feed(&v2_header(1, 0x21, &inet6)).0, done(Some("[2001:db8::1]:80"), 52, 0));
        // LOCAL (a health check by the proxy itself) and UNSPEC: the peer stands.
        assert_eq!(feed(&v2_header(0, 0x00, &[])).0, done(None, 16, 0));
        assert_eq!(feed(&v2_header(0, 0x11, &inet)).0, done(None, 16, 12));
        assert_eq!(feed(&v2_header(1, 0x00, &[1, 2])).0, done(None, 16, 2));
        assert_eq!(feed(&v2_header(1, 0x31, &[0; 216])).0, done(None, 16, 216), "AF_UNIX: no address");
        assert!(matches!(feed(&v2_header(1, 0x11, &inet[..8])).0, Header::Malformed(_)), "short block");
        assert!(matches!(feed(&v2_header(2, 0x11, &inet)).0, Header::Malformed(_)), "unknown command");
        let mut v1ver = v2_header(1, 0x11, &inet);
        v1ver[12] = 0x11;
        assert!(matches!(feed(&v1ver).0, Header::Malformed(_)), "version 1 in a v2 header");
        let mut badsig = v2_header(1, 0x11, &inet);
        badsig[5] = b'x';
        assert!(matches!(feed(&badsig).0, Header::Malformed(_)));
        assert_eq!(parse_header(&h[..20]), Header::Need(8));
    }
}
