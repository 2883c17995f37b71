//! The hostile-input matrix: one server (the real binary, so its RSS is its
//! own), a well-behaved dashboard client receiving a steady stream, and a
//! table of attacks run one after another, each from its own loopback
//! address. Every case asserts the HTTP status or close code PROTOCOL.md
//! names; after each, the loop checks that the good client is still
//! receiving and that the server's RSS stays within `RSS_HEADROOM_KIB` of
//! where it started (one table row per case with `-- --nocapture`).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edgepush::internals::hex::encode as hex;
use edgepush::internals::sha256;
use edgepush_client::{with_token, Client, ConnectOptions};
use edgepush_protocol::{ClientMsg, ServerMsg};

/// The most the server's RSS may grow over its level with the good client
/// connected, at any point in the matrix.
const RSS_HEADROOM_KIB: u64 = 16 * 1024;
const WALL: &str = "wall-token-2b7e151628aed2a6";
const VIEWER: &str = "viewer-token-3243f6a8885a308d";
/// Big enough that a 64 KiB filter reaches the filter check.
const MAX_MESSAGE: usize = 70_000;

/// One attack: its row in the RSS table, and what it does with the
/// assertions on what the server answers.
struct Case {
    name: &'static str,
    attack: fn(&mut Env),
}

/// Every case, in the order they run. The good client's events and the
/// server's RSS are checked after each by the loop, not by the cases.
const CASES: &[Case] = &[
    Case { name: "401 and 403 before the upgrade", attack: credentials_and_origin },
    Case { name: "connection rate from one address -> 429", attack: connection_rate },
    Case { name: "slowloris -> 408 at the handshake timeout", attack: slowloris },
    Case { name: "every protocol violation (1002/1003/1007/1009)", attack: protocol_violations_each },
    Case { name: "bad filters -> Error 400", attack: bad_filters },
    Case { name: "scopes -> Error 403, Publish within -> Ack", attack: scopes },
    Case { name: "10,000 Subscribes -> 1008", attack: subscribe_flood },
    Case { name: "a million tiny data frames -> 1008", attack: tiny_frame_flood },
    Case { name: "a million ping frames: answered, connection kept", attack: ping_flood },
    Case { name: "a client that never reads -> evicted (1013)", attack: never_reads },
];

/// What every case works against: the server, its broker, and the good
/// client's event count.
struct Env {
    addr: SocketAddr,
    broker_port: u16,
    pid: u32,
    received: Arc<AtomicU64>,
    baseline_kib: u64,
    next_src: u8,
}

impl Env {
    /// A fresh loopback source address for the next attack.
    fn src(&mut self) -> Ipv4Addr {
        self.next_src += 1;
        Ipv4Addr::new(127, 0, 1, self.next_src)
    }

    /// An upgrade request for this server with extra `headers`.
    fn upgrade(&self, headers: &str) -> String {
        upgrade_request(self.addr, headers)
    }

    /// An upgraded connection from a fresh address.
    fn ws(&mut self, headers: &str) -> RawWs {
        let s = tcp_from(self.src(), self.addr, None);
        RawWs::upgrade(s, self.addr, headers)
    }

    /// The status of a raw request from a fresh address.
    fn status(&mut self, request: &str) -> u16 {
        let mut s = tcp_from(self.src(), self.addr, None);
        s.set_read_timeout(Some(scaled(5000))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        status_of(&mut s)
    }

    /// The good client keeps receiving, and the server's memory is bounded.
    fn still_serving(&self, case: &str) {
        let before = self.received.load(Relaxed);
        wait_until(10_000, &format!("{case}: the good client receiving"), || self.received.load(Relaxed) >= before + 5);
        let rss = rss_kib(self.pid);
        println!("{case:<48} ok; server RSS {rss} KiB (baseline {} KiB)", self.baseline_kib);
        assert!(rss <= self.baseline_kib + RSS_HEADROOM_KIB, "{case}: server RSS {rss} KiB");
    }
}

/// The status code of an HTTP answer (the socket has a read timeout).
fn status_of(s: &mut std::net::TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&head).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn bin(msg: &ClientMsg) -> Vec<u8> {
    encode_frame(true, OP_BINARY, &msg.encode(), true)
}

/// The next ServerMsg values from a raw connection, skipping heartbeats and topics.
fn answers(raw: &mut RawWs) -> Vec<ServerMsg> {
    loop {
        let (op, body) = raw.read_frame().expect("a frame");
        if op != OP_BINARY {
            continue;
        }
        let msgs: Vec<ServerMsg> = ServerMsg::decode_all(&body)
            .unwrap()
            .into_iter()
            .filter(|m| {
                !matches!(
                    m,
                    ServerMsg::Hello { .. }
                        | ServerMsg::Heartbeat { .. }
                        | ServerMsg::Topic { .. }
                        | ServerMsg::Event { .. }
                )
            })
            .collect();
        if !msgs.is_empty() {
            return msgs;
        }
    }
}

fn error_code(raw: &mut RawWs) -> u16 {
    match &answers(raw)[0] {
        ServerMsg::Error { code, .. } => *code,
        other => panic!("expected an Error, got {other:?}"),
    }
}

fn subscribe(id: u32, filter: &str) -> ClientMsg {
    ClientMsg::Subscribe { id, filters: vec![filter.into()], resume: None }
}

/// "A million" frames: a tenth of that under emulation, where the server
/// runs ~10x slower.
fn million() -> usize {
    if time_scale() > 1.0 {
        100_000
    } else {
        1_000_000
    }
}

/// Credentials and Origin: refused before the upgrade.
fn credentials_and_origin(env: &mut Env) {
    assert_eq!(env.status(&env.upgrade("")), 401, "no token");
    assert_eq!(env.status(&env.upgrade(&bearer("guess"))), 401, "unknown token");
    assert_eq!(env.status(&env.upgrade("Cookie: edgepush_token=nope\r\n")), 401, "unknown cookie token");
    let foreign = format!("{}Origin: http://evil.example\r\n", bearer(WALL));
    assert_eq!(env.status(&env.upgrade(&foreign)), 403, "a foreign Origin with a good token");
    let own = format!("Cookie: a=1; edgepush_token={WALL}\r\nOrigin: http://{}\r\n", env.addr);
    assert_eq!(env.status(&env.upgrade(&own)), 101, "the cookie and our own Origin");
}

/// New connections per second from one address: past 10, 429.
fn connection_rate(env: &mut Env) {
    // All requests are sent before any answer is read, so the server sees
    // them within moments even on a slow (emulated) machine.
    let (src, addr, request) = (env.src(), env.addr, env.upgrade(&bearer(WALL)));
    let mut socks: Vec<_> = (0..30)
        .map(|_| {
            let mut s = tcp_from(src, addr, None);
            s.set_read_timeout(Some(scaled(5000))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    let codes: Vec<u16> = socks.iter_mut().map(status_of).collect();
    drop(socks);
    // A bucket of 10 refilled at 10/s: the first 10 pass, then 429 (a slow
    // machine may refill a few in between).
    assert!(codes.iter().filter(|c| **c == 101).count() >= 10, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 101 || *c == 429) && codes.contains(&429), "{codes:?}");
}

/// Slowloris: a head trickled byte by byte is cut at handshake-timeout-ms.
fn slowloris(env: &mut Env) {
    let mut s = tcp_from(env.src(), env.addr, None);
    // Short, so that each read between two bytes returns at once if nothing came.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    let mut status = 0;
    // The request line at once (so the answer is 408, not a silent drop), then the headers byte by byte.
    let head = env.upgrade(&bearer(WALL));
    let (line, headers) = head.split_at(head.find('\n').unwrap() + 1);
    s.write_all(line.as_bytes()).unwrap();
    for byte in headers.bytes() {
        if s.write_all(&[byte]).is_err() {
            break;
        }
        // The trickle's pace is the attack itself, not a wait for an event.
        std::thread::sleep(Duration::from_millis(30));
        let mut b = [0u8; 64];
        if let Ok(n) = s.read(&mut b) {
            status = String::from_utf8_lossy(&b[..n]).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            break;
        }
    }
    assert_eq!(status, 408, "slowloris");
    assert!(started.elapsed() < scaled(3000), "cut after {:?}", started.elapsed());
}

/// Protocol violations (the same list as tests/bad_input.rs).
fn protocol_violations_each(env: &mut Env) {
    for (name, frames, want) in protocol_violations(MAX_MESSAGE) {
        let mut raw = env.ws(&bearer(WALL));
        for f in &frames {
            raw.write_raw(f);
        }
        assert_eq!(raw.close_code(), want, "{name}");
    }
}

/// Bad filters: 400 each, the connection stays.
fn bad_filters(env: &mut Env) {
    let mut raw = env.ws(&bearer(WALL));
    for (i, f) in ["sensors/#/x", "", "sensors/\0/x", "sensors/+x", &"a".repeat(64 * 1024)].iter().enumerate() {
        raw.write_raw(&bin(&subscribe(i as u32 + 1, f)));
        assert_eq!(error_code(&mut raw), 400, "filter {:?}", &f[..f.len().min(20)]);
    }
    // Empty levels are valid MQTT: within the token's scope, subscribed.
    raw.write_raw(&bin(&subscribe(9, "sensors//x")));
    assert!(matches!(answers(&mut raw)[0], ServerMsg::Synced { id: 9, .. }));
}

/// Scopes: outside the token's filters 403; a Publish within reaches the broker.
fn scopes(env: &mut Env) {
    let mut viewer = env.ws(&bearer(VIEWER));
    viewer.write_raw(&bin(&subscribe(1, "sensors/#")));
    assert_eq!(error_code(&mut viewer), 403, "subscribe wider than the token");
    viewer.write_raw(&bin(&subscribe(2, "cmd/#")));
    assert_eq!(error_code(&mut viewer), 403, "subscribe outside the token");
    let publish =
        |req, topic: &str| ClientMsg::Publish { req, topic: topic.into(), payload: b"1".to_vec(), retain: false };
    viewer.write_raw(&bin(&publish(3, "cmd/lamp")));
    assert_eq!(error_code(&mut viewer), 403, "a token without publish scopes");
    let mut wall = env.ws(&bearer(WALL));
    wall.write_raw(&bin(&subscribe(1, "cmd/#")));
    assert!(matches!(answers(&mut wall)[0], ServerMsg::Synced { id: 1, .. }));
    wall.write_raw(&bin(&publish(2, "sensors/room1/t")));
    assert_eq!(error_code(&mut wall), 403, "publish outside the token's publish filters");
    wall.write_raw(&bin(&publish(3, "cmd/lamp")));
    assert_eq!(answers(&mut wall)[0], ServerMsg::Ack { req: 3 });
    // Through the broker and back: the event arrives on the subscription.
    let deadline = Instant::now() + scaled(5000);
    let mut echoed = false;
    while !echoed && Instant::now() < deadline {
        let (_, body) = wall.read_frame().expect("a frame");
        echoed = ServerMsg::decode_all(&body).unwrap().iter().any(|m| matches!(m, ServerMsg::Event { .. }));
    }
    assert!(echoed, "the Publish went through the broker (QoS 1) and came back");
}

/// 10,000 Subscribes in one write: the bucket (burst 100) closes it with 1008.
fn subscribe_flood(env: &mut Env) {
    let mut raw = env.ws(&bearer(WALL));
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        burst.extend_from_slice(&bin(&subscribe(i + 1, "sensors/room1/t")));
    }
    raw.write_raw(&burst);
    assert_eq!(raw.close_code(), Some(1008), "10,000 Subscribes");
}

/// A million tiny data frames, written while another thread reads: 1008.
fn tiny_frame_flood(env: &mut Env) {
    let million = million();
    let mut raw = env.ws(&bearer(WALL));
    let mut writer = raw.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let frame = bin(&ClientMsg::Ping { nonce: 1 });
        let chunk: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 1000).collect();
        let mut sent = 0;
        while sent < million && writer.write_all(&chunk).is_ok() {
            sent += 1000;
        }
        sent
    });
    assert_eq!(raw.close_code(), Some(1008), "a million tiny data frames");
    drop(raw);
    let sent = flood.join().unwrap();
    println!("  tiny data frames written before the close: {sent}");
}

/// A million ping control frames (no token each, per PROTOCOL.md), read
/// back as they come: the connection stays and memory does not grow.
/// (The server's own pings go unanswered while the writer floods: the
/// heartbeat interval is long so that an emulated run, where this takes
/// half a minute, is not dropped as dead.)
fn ping_flood(env: &mut Env) {
    let million = million();
    let mut raw = env.ws(&bearer(WALL));
    let mut writer = raw.stream.try_clone().unwrap();
    let pings = std::thread::spawn(move || {
        let frame = encode_frame(true, OP_PING, b"", true);
        let chunk: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 1000).collect();
        for _ in 0..million / 1000 {
            writer.write_all(&chunk).expect("the server keeps reading pings");
        }
        writer.write_all(&bin(&ClientMsg::Ping { nonce: 77 })).unwrap();
    });
    let (mut pongs, mut answered) = (0u64, false);
    while !answered {
        let (op, body) = raw.read_frame().expect("the connection stays open");
        if op == OP_PONG {
            pongs += 1;
        } else if op == OP_BINARY {
            answered = ServerMsg::decode_all(&body).unwrap().contains(&ServerMsg::Pong { nonce: 77 });
        }
    }
    pings.join().unwrap();
    println!("  WebSocket pongs for {million} pings: {pongs}");
}

/// A client that never reads, its window full: evicted with 1013 and its
/// memory given back.
fn never_reads(env: &mut Env) {
    let addr = env.addr;
    let mut stuck = RawWs::upgrade(tcp_from(env.src(), addr, Some(4096)), addr, &bearer(WALL));
    stuck.write_raw(&bin(&subscribe(1, "sensors/#")));
    // Publish until it is evicted: the kernel's send buffer on loopback can
    // take megabytes before the outbox overflows (bounded: 30 MiB at most).
    let mut p = Publisher::connect(env.broker_port);
    let evicted = || metric(addr, "evicted_total") == 1;
    for batch in 0..60 {
        if evicted() {
            break;
        }
        for i in 0..500 {
            p.publish(&format!("sensors/bulk/{}", (batch * 500 + i) % 50), vec![b'x'; 1024]);
        }
        p.flush();
    }
    wait_until(15_000, "the stuck client evicted", evicted);
    // Its 1013 close frame was offered behind the data its window holds; the
    // socket ends either way (read it to the end, bounded).
    let mut frames = 0;
    while let Some((op, body)) = stuck.read_frame() {
        if op == OP_CLOSE {
            assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1013);
        }
        frames += 1;
        assert!(frames < 100_000);
    }
}

#[test]
fn hostile_peers_get_their_status_or_close_code_and_the_good_client_keeps_receiving() {
    let broker = Broker::start();
    let port = free_port();
    let token = |name: &str, secret: &str, sub: &str, publish: &str| {
        format!(
            "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nsubscribe = {sub}\npublish = {publish}\n",
            hex(&sha256(secret.as_bytes()))
        )
    };
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[limits]\nmax-message-bytes = {MAX_MESSAGE}\nhandshake-timeout-ms = 1000\n\
         slow-client-timeout-ms = 1000\noutbox-messages = 64\nmessages-per-second = 50\nburst = 100\n\
         connections-per-second-per-ip = 10\n[heartbeat]\ninterval-ms = 300000\n[mqtt]\nport = {}\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n{}{}",
        broker.port,
        token("wall", WALL, "[\"sensors/#\", \"cmd/#\"]", "[\"cmd/#\"]"),
        token("viewer", VIEWER, "[\"sensors/room1/#\"]", "[]"),
    );
    let addr = loopback(port);
    let server = Daemon::run(&write_config(&scratch_dir("hostile"), &text), addr);
    wait_linked(addr, 10_000);

    // The steady stream, and the good client (its token in the query, as the dashboard sends it).
    // The good client stops first (it wakes on the next event), then the publisher.
    let (stop, stop_good) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let publisher = {
        let (stop, port) = (stop.clone(), broker.port);
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Relaxed) && Instant::now() < deadline {
                p.publish("sensors/room1/t", format!("{n}"));
                n += 1;
                // The stream's pace (50 events/s), not a wait for anything.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let received = Arc::new(AtomicU64::new(0));
    let good = {
        let (stop, received) = (stop_good.clone(), received.clone());
        let url = with_token(&format!("ws://{addr}/ws"), VIEWER);
        std::thread::spawn(move || {
            smol::block_on(async {
                let mut c = timeout(10_000, "the good client's connect", Client::connect(&url))
                    .await
                    .expect("the good client connects");
                subscribe_synced(&mut c, 1, &["sensors/room1/#"], None).await;
                while !stop.load(Relaxed) {
                    // Events come every 20 ms: a long silence is a failure, not a hang.
                    match timeout(30_000, "an event for the good client", c.next()).await {
                        Ok(ServerMsg::Event { .. }) => {
                            received.fetch_add(1, Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => panic!("the good client lost its connection: {e}"),
                    }
                }
            })
        })
    };
    wait_until(10_000, "the good client's first events", || received.load(Relaxed) >= 5);
    let pid = server.child.id();
    let mut env = Env { addr, broker_port: broker.port, pid, received, baseline_kib: rss_kib(pid), next_src: 0 };

    for case in CASES {
        (case.attack)(&mut env);
        env.still_serving(case.name);
    }

    stop_good.store(true, Relaxed);
    good.join().expect("the good client never lost its connection");
    stop.store(true, Relaxed);
    publisher.join().unwrap();
    // Totals over the table: the credentials case refuses three tokens and
    // one Origin, the connection-rate case some (at least one) by rate, and
    // the two floods are closed for their message rate.
    let m = metrics_text(addr);
    for line in [
        "edgepush_refused_total{reason=\"unauthorized\"} 3",
        "edgepush_refused_total{reason=\"origin\"} 1",
        "edgepush_refused_total{reason=\"rate\"} ",
        "edgepush_rate_limited_total 2",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
}

#[test]
fn a_token_client_reaches_the_server_with_each_way_of_presenting_it() {
    let broker = Broker::start();
    let hash = hex(&sha256(WALL.as_bytes()));
    let cfg =
        config(broker.port, &format!("[[auth.tokens]]\nname = \"wall\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\n"));
    let server = Server::start_linked(&cfg);
    let url = server.url();
    block_on_timeout(10_000, "connects", async {
        let refused = Client::connect(&url).await.err().expect("no token: refused");
        assert!(refused.to_string().contains("401"), "{refused}");
        Client::connect(&with_token(&url, WALL)).await.expect("?token=");
        let header =
            ConnectOptions { headers: vec![("Authorization".into(), format!("Bearer {WALL}"))], ..Default::default() };
        Client::connect_with(&url, &header).await.expect("Authorization: Bearer");
        let cookie =
            ConnectOptions { headers: vec![("Cookie".into(), format!("edgepush_token={WALL}"))], ..Default::default() };
        Client::connect_with(&url, &cookie).await.expect("the edgepush_token cookie");
    });
}
