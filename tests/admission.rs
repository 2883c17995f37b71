//! Admission and HTTP: caps and their statuses, the handshake timeout, the
//! header limit, bad requests, the subprotocol, /healthz and /metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Client, ClientError, ConnectOptions};

fn refused(url: &str, opts: &ConnectOptions) -> u16 {
    match block_on_timeout(5000, "connect", Client::connect_with(url, opts)) {
        Err(ClientError::Refused { status, .. }) => status,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got a connection"),
    }
}

#[test]
fn per_address_cap_answers_429_and_frees_the_slot_on_close() {
    let broker = Broker::start();
    let server =
        Server::start_linked(&config(broker.port, "[limits]\nmax-connections = 10\nmax-connections-per-ip = 2"));
    let url = server.url();
    let a = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    let _b = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    assert_eq!(refused(&url, &ConnectOptions::default()), 429);
    // Other paths are not counted against the caps.
    assert_eq!(get(server.addr, "/healthz").0, 200);
    block_on_timeout(5000, "close", a.close());
    let m = server.metrics();
    wait_until(5000, "the slot to free", || m.connections.load(std::sync::atomic::Ordering::Relaxed) == 1);
    let _c = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    let metrics = get(server.addr, "/metrics").1;
    assert!(metrics.contains("edgepush_refused_total{reason=\"per_address\"} 1"), "{metrics}");
    assert!(metrics.contains("\nedgepush_connections 2\n"), "{metrics}");
    assert!(metrics.contains("\nedgepush_connections_accepted_total 3\n"), "{metrics}");
}

#[test]
fn global_cap_answers_503_with_retry_after_and_is_checked_first() {
    let broker = Broker::start();
    // Both caps are reached by the second connection: the global one answers.
    let server =
        Server::start_linked(&config(broker.port, "[limits]\nmax-connections = 2\nmax-connections-per-ip = 2"));
    let url = server.url();
    let _a = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    let _b = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    let (status, text) = http(server.addr, &upgrade_request(server.addr, ""));
    assert_eq!(status, 503, "{text}");
    let retry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1);
    assert_eq!(refused(&url, &ConnectOptions::default()), 503);
    // At the cap, healthz still answers 200.
    assert_eq!(get(server.addr, "/healthz").0, 200);
    let metrics = get(server.addr, "/metrics").1;
    assert!(metrics.contains("edgepush_refused_total{reason=\"capacity\"} 2"), "{metrics}");
    assert!(metrics.contains("\nedgepush_connections_max 2\n"), "{metrics}");
}

#[test]
fn slow_heads_get_408_or_are_dropped_and_big_heads_get_431() {
    let broker = Broker::start();
    let server =
        Server::start_linked(&config(broker.port, "[limits]\nhandshake-timeout-ms = 300\nmax-header-bytes = 1024"));
    // A request line, then nothing: 408 after the timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290) && took < scaled(3000), "{took:?}");
    // Connected and silent: dropped without an answer.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    let mut out = Vec::new();
    let n = s.read_to_end(&mut out).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&out));
    // Slowloris: the request line, then headers trickled a byte at a time:
    // still cut at the timeout, with 408 since a request line arrived.
    let started = Instant::now();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let req = upgrade_request(server.addr, "");
    let (line, rest) = req.split_at(req.find('\n').unwrap() + 1);
    s.write_all(line.as_bytes()).unwrap();
    let mut answer = Vec::new();
    for b in rest.as_bytes() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(n) = s.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        if started.elapsed() > scaled(5000) {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Past max-header-bytes: 431.
    let big = upgrade_request(server.addr, &format!("X-Filler: {}\r\n", "a".repeat(2000)));
    assert_eq!(http(server.addr, &big).0, 431);
    let metrics = get(server.addr, "/metrics").1;
    assert!(metrics.contains("edgepush_refused_total{reason=\"timeout\"} 3"), "{metrics}");
    assert!(metrics.contains("edgepush_refused_total{reason=\"header_too_large\"} 1"), "{metrics}");
}

#[test]
fn bad_requests_get_their_statuses() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let addr = server.addr;
    let ws = upgrade_request(addr, "");
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(http(addr, "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").0, 400, "no upgrade");
    let (status, text) = http(addr, &ws.replace("Version: 13", "Version: 8"));
    assert_eq!(status, 426);
    assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{text}");
    assert_eq!(http(addr, "\x16\x03\x01\x02\x00\x01\x00\r\n\r\n").0, 400, "TLS hello on a plain port");
    assert_eq!(http(addr, &ws.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")).0, 400);
    // Offering edgepush.v1 among others: echoed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(ws.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: mqtt, edgepush.v1\r\n\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Protocol: edgepush.v1\r\n"), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    // Without any subprotocol: accepted too.
    let plain = ConnectOptions { subprotocol: false, ..Default::default() };
    block_on_timeout(5000, "connect", Client::connect_with(&server.url(), &plain)).unwrap();
    // The page.
    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("text/html") && page.contains("edgepush"));
}

#[test]
fn healthz_follows_the_broker_link_and_metrics_are_prometheus_text() {
    let mut broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let (status, body) = get(server.addr, "/healthz");
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\"") && body.contains("application/json"), "{body}");
    broker.stop();
    server.wait_broker(false);
    let (status, body) = get(server.addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"broker_up\":false"));
    broker.restart();
    server.wait_broker(true);
    assert_eq!(get(server.addr, "/healthz").0, 200);
    let (status, text) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(text.contains("text/plain; version=0.0.4"));
    for family in [
        "connections",
        "connections_max",
        "connections_accepted_total",
        "refused_total",
        "messages_sent_total",
        "bytes_sent_total",
        "events_in_total",
        "lagged_total",
        "evicted_total",
        "heartbeat_timeouts_total",
        "broker_up",
        "broker_reconnects_total",
    ] {
        assert!(text.contains(&format!("# TYPE edgepush_{family} ")), "{family} missing");
    }
    assert!(text.contains("\nedgepush_broker_reconnects_total 1\n"), "{text}");
    assert!(text.contains("\nedgepush_broker_up 1\n"));
}

#[test]
fn past_the_pending_head_cap_a_connection_gets_503_without_sending_anything() {
    let broker = Broker::start();
    // max-connections 1: at most max(3 × 1, 64) = 64 request heads pending at once.
    let server = Server::start_linked(&config(
        broker.port,
        "[limits]\nmax-connections = 1\nmax-connections-per-ip = 1\nhandshake-timeout-ms = 10000",
    ));
    let silent: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    let m = server.metrics();
    // The accept loop has taken all of them once none waits in the kernel's queue.
    wait_until(5000, "the accept loop to take the 64", || accept_backlog(server.addr.port()) == 0);
    let started = Instant::now();
    let mut extra = TcpStream::connect(server.addr).unwrap();
    extra.set_read_timeout(Some(scaled(5000))).unwrap();
    // Nothing sent: the answer comes at once, not at the handshake timeout.
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("\r\nRetry-After: 5\r\n"), "{answer:?}");
    assert!(started.elapsed() < scaled(2000), "answered at once, not at the timeout: {:?}", started.elapsed());
    // A client that sent its request first reads the same answer (the
    // request is read and discarded before the socket closes, so no reset).
    for _ in 0..5 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(scaled(5000))).unwrap();
        s.write_all(upgrade_request(server.addr, "").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("the answer, not a reset");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    }
    // Counted under its own reason, not as a handshake timeout.
    assert_eq!(m.refused_count(edgepush::internals::Refusal::PendingHeads), 6);
    assert_eq!(m.refused_count(edgepush::internals::Refusal::Timeout), 0);
    assert!(m.render().contains("edgepush_refused_total{reason=\"pending_heads\"} 6\n"));
    drop(silent);
    // Once they are gone, requests are served again.
    wait_until(5000, "healthz again", || {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(scaled(2000))).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    });
}

#[test]
fn a_burst_of_three_times_max_connections_is_answered_every_attempt() {
    let broker = Broker::start();
    const MAX: usize = 32;
    let server = Server::start_linked(&config(
        broker.port,
        &format!(
            "[limits]\nmax-connections = {MAX}\nmax-connections-per-ip = {MAX}\n\
             connections-per-second-per-ip = 100000\nhandshake-timeout-ms = 20000"
        ),
    ));
    // Three times the cap connect at once (the accept loop takes each, and
    // each waits for its head), then all send their upgrade requests.
    let mut socks: Vec<TcpStream> = (0..3 * MAX).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    wait_until(5000, "the accept loop to take them all", || accept_backlog(server.addr.port()) == 0);
    let request = upgrade_request(server.addr, "");
    for s in &mut socks {
        s.write_all(request.as_bytes()).unwrap();
    }
    let mut statuses = std::collections::BTreeMap::new();
    for s in &mut socks {
        s.set_read_timeout(Some(scaled(10_000))).unwrap();
        let mut head = [0u8; 12];
        let status = match s.read_exact(&mut head) {
            Ok(()) => String::from_utf8_lossy(&head[9..12]).into_owned(),
            Err(e) => format!("no answer ({e})"),
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    // Every attempt answered: the cap's worth upgraded, the rest told to retry.
    let want: std::collections::BTreeMap<String, usize> = [("101".into(), MAX), ("503".into(), 2 * MAX)].into();
    assert_eq!(statuses, want);
    assert_eq!(server.metrics().refused_count(edgepush::internals::Refusal::PendingHeads), 0);
}

#[test]
fn a_token_past_its_own_cap_gets_429_and_other_tokens_do_not() {
    let broker = Broker::start();
    let entry = |name: &str, secret: &str, extra: &str| {
        let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
        format!("[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\n{extra}\n")
    };
    let (wall, other) = ("wall-screen-secret-1", "other-screen-secret-2");
    let text = format!("{}{}", entry("wall", wall, "max-connections = 2"), entry("other", other, ""));
    let server = Server::start_linked(&config(broker.port, &text));
    let url = |t: &str| edgepush_client::with_token(&format!("ws://{}/ws", server.addr), t);
    block_on_timeout(10_000, "per-token cap", async {
        let first = Client::connect(&url(wall)).await.expect("1st of 2");
        let second = Client::connect(&url(wall)).await.expect("2nd of 2");
        match Client::connect(&url(wall)).await {
            Err(ClientError::Refused { status: 429, .. }) => {}
            other => panic!("the 3rd connection with the token: {:?}", other.map(|_| "connected")),
        }
        // Another token, and the same address, are not limited by it.
        let _others: Vec<Client> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(Client::connect(&url(other)).await.expect("another token"));
            }
            v
        };
        // One leaves: once the server has seen it go, its slot is free again.
        drop(first);
        let m = server.metrics();
        wait_until_async(5_000, "the first connection gone", || {
            m.connections.load(std::sync::atomic::Ordering::Relaxed) == 4
        })
        .await;
        Client::connect(&url(wall)).await.expect("the freed slot");
        drop(second);
    });
    assert_eq!(server.metrics().refused_count(edgepush::internals::Refusal::PerToken), 1);
    assert!(server.metrics().render().contains("edgepush_refused_total{reason=\"per_token\"} 1\n"));
}
