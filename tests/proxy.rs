//! Behind a reverse proxy: from a peer in `[limits] trusted-proxies` the
//! client's address comes from `X-Forwarded-For` / `Forwarded` or a PROXY
//! protocol v1/v2 header, and the per-address cap applies to that client;
//! from anyone else those are ignored. Against the real binary, with
//! hand-written headers and with a real HAProxy in front.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// A `/ws` upgrade from `src` (a loopback address; 127.0.0.1 when None),
/// after `prefix` (a PROXY header, say), with extra request headers. Returns
/// the answer's status (0: closed without one) and the socket, kept open so
/// an upgraded connection holds its slot.
fn upgrade(addr: SocketAddr, src: Option<Ipv4Addr>, prefix: &[u8], headers: &str) -> (u16, TcpStream) {
    let mut s = match src {
        Some(ip) => tcp_from(ip, addr, None),
        None => TcpStream::connect(addr).unwrap(),
    };
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    let mut request = prefix.to_vec();
    request.extend(upgrade_request(addr, headers).as_bytes());
    // A peer that drops us mid-write is an answer too (0).
    let _ = s.write_all(&request);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, s)
}

/// The status of an upgrade with these extra headers, from 127.0.0.1.
fn with_headers(addr: SocketAddr, headers: &str) -> (u16, TcpStream) {
    upgrade(addr, None, b"", headers)
}

/// The address the tests' own requests (/healthz, /metrics) come from: a
/// peer no test config trusts, so it needs no PROXY header.
const OBSERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// A GET from [`OBSERVER`]: the status and the whole answer.
fn page(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tcp_from(OBSERVER, addr, None);
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}

/// One series of /metrics (without the `edgepush_` prefix).
fn count(addr: SocketAddr, series: &str) -> u64 {
    let text = page(addr, "/metrics").1;
    metric_in(&text, &format!("edgepush_{series}")).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The binary on a free port with a broker, `max-connections-per-ip = 1`
/// and the given `[limits]` lines, once linked; debug logs.
fn start(broker: &Broker, limits: &str) -> (Daemon, SocketAddr) {
    let (d, addr) = run_binary(&format!(
        "[mqtt]\nport = {}\n[limits]\nmax-connections-per-ip = 1\nconnections-per-second-per-ip = 1000\n{limits}\n\
         [log]\nlevel = \"debug\"\n",
        broker.port
    ));
    wait_until(20_000, "the server linked to the broker", || page(addr, "/healthz").0 == 200);
    (d, addr)
}

#[test]
fn forwarded_clients_are_capped_each_when_the_peer_is_trusted() {
    let broker = Broker::start();
    let (d, addr) = start(&broker, "trusted-proxies = [\"10.9.0.0/16\", \"127.0.0.1\"]");
    let mut held = Vec::new();
    let mut expect = |headers: &str, status: u16| {
        let (got, s) = with_headers(addr, headers);
        assert_eq!(got, status, "with {headers:?}");
        held.push(s);
    };
    // Two clients behind the one proxy address: each has its own slot.
    expect("X-Forwarded-For: 203.0.113.1\r\n", 101);
    expect("X-Forwarded-For: 203.0.113.2\r\n", 101);
    expect("Forwarded: for=203.0.113.1;proto=http\r\n", 429);
    expect("X-Forwarded-For: 198.51.100.7, 203.0.113.2, 10.9.1.1\r\n", 429);
    // A client's own entries sit left of the proxy's: the rightmost untrusted one counts.
    expect("X-Forwarded-For: 203.0.113.1, 203.0.113.3\r\n", 101);
    expect("Forwarded: for=\"[2001:db8::1]:4711\"\r\n", 101);
    expect("Forwarded: for=192.0.2.8, for=\"[2001:db8::1]\";by=10.9.0.1\r\n", 429);
    // An obfuscated node, or no header at all: the peer itself.
    expect("Forwarded: for=_gateway\r\n", 101);
    expect("", 429);
    let line = d.wait_log("203.0.113.2:0: upgraded as connection", 5000);
    assert!(line.contains("via proxy 127.0.0.1:"), "{line}");
    d.wait_log("203.0.113.1:0: refused (PerAddress) via proxy 127.0.0.1:", 5000);
    assert_eq!(count(addr, "refused_total{reason=\"per_address\"}"), 4);
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let broker = Broker::start();
    // The proxy is elsewhere: 127.0.0.1 is a client like any other.
    let (_d, addr) = start(&broker, "trusted-proxies = [\"192.0.2.10\"]\nproxy-protocol = true");
    let (first, _a) = with_headers(addr, "X-Forwarded-For: 203.0.113.1\r\n");
    assert_eq!(first, 101, "no PROXY header is expected from an untrusted peer");
    assert_eq!(with_headers(addr, "X-Forwarded-For: 203.0.113.2\r\n").0, 429);
    assert_eq!(with_headers(addr, "Forwarded: for=203.0.113.3\r\n").0, 429);
    // Nor is a PROXY header honoured from it: those bytes are not HTTP.
    let (status, _) = upgrade(addr, Some(Ipv4Addr::new(127, 0, 0, 2)), &v2(Some(([203, 0, 113, 4], 1000))), "");
    assert!(status == 400 || status == 0, "a PROXY header from an untrusted peer answered {status}");
    assert_eq!(count(addr, "refused_total{reason=\"proxy_header\"}"), 0);
}

/// A PROXY protocol v2 header: PROXY from `source` over TCP/IPv4, or LOCAL
/// when None; with one TLV after the addresses, which must be skipped.
fn v2(source: Option<([u8; 4], u16)>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let mut body = Vec::new();
    match source {
        Some((ip, port)) => {
            h.extend([0x21, 0x11]);
            body.extend(ip);
            body.extend([127, 0, 0, 1]);
            body.extend(port.to_be_bytes());
            body.extend(8080u16.to_be_bytes());
            body.extend([0x05, 0, 4, b'i', b'd', b'-', b'1']); // PP2_TYPE_UNIQUE_ID
        }
        None => h.extend([0x20, 0x00]),
    }
    h.extend((body.len() as u16).to_be_bytes());
    h.extend(body);
    h
}

#[test]
fn proxy_protocol_headers_from_a_trusted_peer_name_the_client() {
    let broker = Broker::start();
    let (d, addr) =
        start(&broker, "trusted-proxies = [\"127.0.0.1\"]\nproxy-protocol = true\nhandshake-timeout-ms = 2000");
    let mut held = Vec::new();
    let mut expect = |prefix: Vec<u8>, headers: &str, status: u16| {
        let (got, s) = upgrade(addr, None, &prefix, headers);
        assert_eq!(got, status, "after {:?}", String::from_utf8_lossy(&prefix));
        held.push(s);
    };
    expect(b"PROXY TCP4 203.0.113.1 127.0.0.1 40001 8080\r\n".to_vec(), "", 101);
    expect(b"PROXY TCP6 2001:db8::5 ::1 40002 8080\r\n".to_vec(), "", 101);
    expect(v2(Some(([203, 0, 113, 2], 40003))), "", 101);
    expect(v2(Some(([203, 0, 113, 1], 40004))), "", 429);
    expect(b"PROXY TCP4 203.0.113.2 127.0.0.1 40005 8080\r\n".to_vec(), "", 429);
    // The client a PROXY header names is not a proxy: its X-Forwarded-For is its own.
    expect(v2(Some(([203, 0, 113, 1], 40006))), "X-Forwarded-For: 198.51.100.1\r\n", 429);
    // LOCAL (the proxy's own health check) and UNKNOWN: the peer.
    expect(v2(None), "", 101);
    expect(b"PROXY UNKNOWN\r\n".to_vec(), "", 429);
    d.wait_log("203.0.113.1:40001: upgraded as connection", 5000);
    d.wait_log("[2001:db8::5]:40002: upgraded as connection", 5000);
    assert_eq!(count(addr, "refused_total{reason=\"per_address\"}"), 4);
    // From the trusted peer a connection without a valid header is dropped, unanswered, and counted.
    for bad in [&b"PROXY TCP4 203.0.113.9 nowhere 1 2\r\n"[..], b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b""] {
        let (status, _) = upgrade(addr, None, bad, "");
        assert_eq!(status, 0, "after {:?}", String::from_utf8_lossy(bad));
    }
    let mut truncated = v2(Some(([203, 0, 113, 3], 1)));
    truncated[15] = 4; // shorter than its IPv4 addresses
    assert_eq!(upgrade(addr, None, &truncated, "").0, 0);
    assert_eq!(count(addr, "refused_total{reason=\"proxy_header\"}"), 4);
    d.wait_log("dropped: PROXY protocol header: v1 addresses or ports", 5000);
}

#[test]
fn a_silent_trusted_peer_is_dropped_at_the_handshake_timeout() {
    let broker = Broker::start();
    let (_d, addr) =
        start(&broker, "trusted-proxies = [\"127.0.0.1\"]\nproxy-protocol = true\nhandshake-timeout-ms = 300");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.1").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    wait_until(5000, "the timeout counted", || count(addr, "refused_total{reason=\"timeout\"}") == 1);
}

/// The haproxy binary; the test fails, not skips, without it.
fn haproxy_path() -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("haproxy")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("haproxy not found: this test runs a real HAProxy in front of edgepush; install the Debian package `haproxy` (apt-get install haproxy)")
    })
}

#[test]
fn behind_a_real_haproxy_each_client_is_its_own_address() {
    let haproxy = haproxy_path();
    let broker = Broker::start();
    // Two instances: one behind HAProxy in TCP mode with PROXY v2, one behind it in HTTP mode with X-Forwarded-For.
    let (d_pp, pp) = start(&broker, "trusted-proxies = [\"127.0.0.1\"]\nproxy-protocol = true");
    let (d_xff, xff) = start(&broker, "trusted-proxies = [\"127.0.0.1\"]");
    let (tcp_port, http_port) = (free_port(), free_port());
    let dir = scratch_dir("haproxy");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 100\n\
             defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout tunnel 1h\n\
             frontend tcp_in\n    mode tcp\n    bind 127.0.0.1:{tcp_port}\n    default_backend pp\n\
             backend pp\n    mode tcp\n    server edgepush {pp} send-proxy-v2\n\
             frontend http_in\n    mode http\n    bind 127.0.0.1:{http_port}\n    option forwardfor\n    default_backend xff\n\
             backend xff\n    mode http\n    server edgepush {xff}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg);
    let proxy = Daemon::spawn(cmd);
    let (tcp_in, http_in) = (loopback(tcp_port), loopback(http_port));
    let up = poll_until(10_000, || TcpStream::connect(tcp_in).is_ok() && TcpStream::connect(http_in).is_ok());
    assert!(up, "haproxy did not listen; its output: {:#?} {:#?}", proxy.lines(), proxy.out.all());
    let (two, three) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    for (front, d) in [(tcp_in, &d_pp), (http_in, &d_xff)] {
        let (a, _a) = upgrade(front, Some(two), b"", "");
        assert_eq!(a, 101, "via {front}: haproxy {:#?}", proxy.lines());
        let (b, _b) = upgrade(front, Some(three), b"", "");
        assert_eq!(b, 101, "via {front}: a second client address has its own slot");
        let (c, _c) = upgrade(front, Some(two), b"", "");
        assert_eq!(c, 429, "via {front}: the first address is at its cap");
        let logged = poll_until(5000, || {
            d.lines()
                .iter()
                .any(|l| l.contains("127.0.0.3:") && l.contains("upgraded") && l.contains("via proxy 127.0.0.1:"))
        });
        assert!(logged, "the log names the client, not haproxy: {:#?}", d.lines());
    }
    assert_eq!(count(pp, "refused_total{reason=\"per_address\"}"), 1);
    assert_eq!(count(xff, "refused_total{reason=\"per_address\"}"), 1);
}
