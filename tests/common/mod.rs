//! Shared test fixtures: a real mosquitto on a free loopback port, the server
//! in-process on 127.0.0.1:0, an MQTT publisher, and a raw WebSocket peer for
//! bad input. Every wait has a deadline; deadlines scale with
//! `EDGEPUSH_TEST_TIME_SCALE` (set by the QEMU runner).

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use edgepush::internals::Config;
use edgepush::internals::{self as server, Running};
use edgepush_client::{Client, ClientError};
use edgepush_protocol::{Resume, ServerMsg, Value};

/// How much slower than native this run is (QEMU sets it above 1).
pub fn time_scale() -> f64 {
    std::env::var("EDGEPUSH_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

/// A deadline or allowance, scaled for emulation.
pub fn scaled(ms: u64) -> Duration {
    Duration::from_millis((ms as f64 * time_scale()) as u64)
}

/// Runs a future to completion or panics after `limit` (scaled).
pub fn block_on_timeout<T>(limit_ms: u64, what: &str, f: impl Future<Output = T>) -> T {
    let limit = scaled(limit_ms);
    smol::block_on(async {
        smol::future::or(async { Some(f.await) }, async {
            smol::Timer::after(limit).await;
            None
        })
        .await
    })
    .unwrap_or_else(|| panic!("timed out after {limit:?}: {what}"))
}

/// Awaits `f` or fails after `limit_ms` (scaled).
pub async fn timeout<T>(limit_ms: u64, what: &str, f: impl Future<Output = T>) -> T {
    let limit = scaled(limit_ms);
    smol::future::or(async { Some(f.await) }, async {
        smol::Timer::after(limit).await;
        None
    })
    .await
    .unwrap_or_else(|| panic!("timed out after {limit:?}: {what}"))
}

/// Polls `cond` every 10 ms until it holds or `limit_ms` (scaled) passes;
/// returns whether it held. For waits whose running out is not a failure.
pub fn poll_until(limit_ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(limit_ms);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until true, failing the test after `limit_ms` (scaled).
pub fn wait_until(limit_ms: u64, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(limit_ms, cond), "timed out after {:?}: {what}", scaled(limit_ms));
}

/// `wait_until` for async code: polls `cond` every 10 ms without blocking
/// the executor, failing the test after `limit_ms` (scaled).
pub async fn wait_until_async(limit_ms: u64, what: &str, mut cond: impl FnMut() -> bool) {
    timeout(limit_ms, what, async {
        while !cond() {
            smol::Timer::after(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The `edgepush` binary: cargo names it to the server's own tests; the
/// other members' tests (the load tool's) find it where the same cargo
/// invocation built it, beside their own target folder.
pub fn edgepush_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_edgepush") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("edgepush");
    assert!(bin.is_file(), "{} is missing: run the tests from the workspace root (cargo test)", bin.display());
    bin
}

/// A command running the `edgepush` binary, through `EDGEPUSH_TEST_RUNNER`
/// when set (under qemu-user the test cannot exec an ARM binary directly).
pub fn edgepush_command() -> Command {
    let bin = edgepush_bin();
    match std::env::var("EDGEPUSH_TEST_RUNNER").ok().filter(|r| !r.trim().is_empty()) {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut c = Command::new(parts.next().expect("a runner program"));
            c.args(parts).arg(&bin);
            c
        }
        None => Command::new(bin),
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A fresh scratch directory under the target dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mosquitto_path() -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("mosquitto")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("mosquitto not found: these tests need a real broker; install the Debian package `mosquitto` (apt-get install mosquitto)")
    })
}

/// A real mosquitto broker on a free loopback port.
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
    /// Extra mosquitto.conf lines (auth, say).
    extra: String,
    child: Option<Child>,
}

impl Broker {
    /// A broker on a free port.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// A broker on `port` (one a test chose, to start the server first).
    pub fn start_on(port: u16) -> Broker {
        Broker::start_with(port, "")
    }

    /// A broker whose mosquitto.conf also has `extra` (with `{dir}` replaced
    /// by its scratch directory).
    pub fn start_with(port: u16, extra: &str) -> Broker {
        let dir = scratch_dir("mosquitto");
        let extra = extra.replace("{dir}", &dir.display().to_string());
        let mut b = Broker { port, dir, extra, child: None };
        b.spawn();
        b
    }

    /// The mosquitto process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGHUP: mosquitto re-reads its config and password file.
    pub fn reload(&self) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on the broker this test started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        // No queue limit: mosquitto's default (1,000 per client) silently drops
        // QoS 1 messages past it when a subscriber falls behind during a burst.
        let text = format!(
            "listener {} 127.0.0.1\npersistence false\nmax_queued_messages 0\n{}\n",
            self.port,
            if self.extra.is_empty() { "allow_anonymous true" } else { &self.extra }
        );
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_until(5000, "mosquitto to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    /// Kills the broker (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An MQTT publisher (rumqttc's blocking client) whose publishes are QoS 1.
pub struct Publisher {
    client: rumqttc::Client,
    acked: Arc<AtomicU64>,
    sent: u64,
}

impl Publisher {
    /// Connects to the broker on `port`; publishes are queued at once.
    pub fn connect(port: u16) -> Publisher {
        static ID: AtomicU64 = AtomicU64::new(0);
        let id = format!("test-pub-{}-{}", std::process::id(), ID.fetch_add(1, Ordering::Relaxed));
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(opts, 1024);
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Publisher { client, acked, sent: 0 }
    }

    /// Publishes (QoS 1, not retained); `flush` waits for the broker's ack.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_with(topic, payload, false);
    }

    /// Publishes (QoS 1), retained if `retain`.
    pub fn publish_with(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.into()).unwrap();
        self.sent += 1;
    }

    /// Waits until the broker acknowledged every publish.
    pub fn flush(&self) {
        let (acked, sent) = (self.acked.clone(), self.sent);
        wait_until(10_000, "the broker to ack every publish", || acked.load(Ordering::Relaxed) >= sent);
    }
}

/// Config text with `[auth] mode = "none"` said explicitly (a config without
/// tokens must), unless it has its own mode or tokens.
pub fn open_auth(text: &str) -> String {
    if text.contains("mode =") || text.contains("[[auth.tokens]]") {
        text.to_owned()
    } else if text.contains("[auth]\n") {
        text.replacen("[auth]\n", "[auth]\nmode = \"none\"\n", 1)
    } else {
        format!("{text}\n[auth]\nmode = \"none\"\n")
    }
}

/// The built-in defaults with a test broker port and the given TOML on top.
/// Auth is open (`mode = "none"`) and the per-address connection rate is
/// unlimited unless `extra` says otherwise: every test client comes from 127.0.0.1.
pub fn config(broker_port: u16, extra: &str) -> Config {
    let text = open_auth(&format!("listen = \"127.0.0.1:0\"\n{extra}\n"));
    // `read_files`: the `[tls]` files, which `from_toml` leaves unread.
    let mut cfg =
        Config::from_toml(&text, "test", None).and_then(|c| c.read_files("test")).unwrap_or_else(|e| panic!("{e}"));
    if !extra.contains("connections-per-second-per-ip") {
        cfg.limits.connections_per_second_per_ip = 1_000_000;
    }
    cfg.mqtt.port = broker_port;
    cfg.mqtt.client_id = format!("edgepush-test-{}-{}", std::process::id(), free_port());
    cfg.mqtt.reconnect_min_ms = 50;
    cfg.mqtt.reconnect_max_ms = 200;
    cfg
}

/// Writes `text` (with `open_auth` applied) as `dir/edgepush.toml` and
/// returns that path; writing it again replaces it, as an operator would.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("edgepush.toml");
    std::fs::write(&path, open_auth(text)).unwrap();
    path
}

/// The binary running `config` (plus `listen` on a free loopback port) from
/// a fresh scratch directory, once it listens; returns it and its address.
///
/// A free port can be taken before the server binds it (a connection's
/// local port comes from the same range), so a server that exits saying its
/// address is in use is started again on another port, at most three times.
pub fn run_binary(config: &str) -> (Daemon, SocketAddr) {
    for attempt in 1.. {
        let port = free_port();
        let path = write_config(&scratch_dir("edgepush"), &format!("listen = \"127.0.0.1:{port}\"\n{config}"));
        let addr = loopback(port);
        match Daemon::try_run(&path, addr) {
            Ok(d) => return (d, addr),
            Err(log) if attempt < 3 && log.contains("in use") => eprintln!("port {port} was taken; another"),
            Err(log) => panic!("the server exited before listening on {addr}:\n{log}"),
        }
    }
    unreachable!()
}

/// The server, in this process, on a free port.
pub struct Server {
    pub running: Option<Running>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts it with `cfg` (as `config` makes it: listening on a free port).
    pub fn start(cfg: &Config) -> Server {
        let running = server::start(cfg, 2).expect("server starts");
        let addr = running.local_addr();
        Server { running: Some(running), addr }
    }

    /// Starts and waits until the broker link is up.
    pub fn start_linked(cfg: &Config) -> Server {
        let s = Server::start(cfg);
        s.wait_broker(true);
        s
    }

    /// Its WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits until its broker link is `up` (or down).
    pub fn wait_broker(&self, up: bool) {
        let m = self.running.as_ref().unwrap().metrics().clone();
        wait_until(10_000, "the broker link", || m.broker_up.load(Ordering::Relaxed) == up);
    }

    /// Its counters, read directly.
    pub fn metrics(&self) -> &edgepush::internals::Metrics {
        self.running.as_ref().unwrap().metrics()
    }

    /// Shuts it down as SIGTERM would (clients get 1001).
    pub fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One HTTP exchange: sends `request` verbatim, returns the status and the whole answer.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A GET of `path`: the status and the whole answer.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"))
}

/// The status of /healthz: 200 while the broker link is up, 503 while not.
pub fn healthz(addr: SocketAddr) -> u16 {
    get(addr, "/healthz").0
}

/// Waits until the server at `addr` listens and its /healthz answers 200
/// (the broker link is up), failing the test after `limit_ms` (scaled).
pub fn wait_linked(addr: SocketAddr, limit_ms: u64) {
    wait_until(limit_ms, "the server linked to the broker", || {
        TcpStream::connect(addr).is_ok() && healthz(addr) == 200
    });
}

/// The /metrics page of the server at `addr` (Prometheus text).
pub fn metrics_text(addr: SocketAddr) -> String {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of one series in Prometheus text: `series` is its full name with
/// any labels, as written (`edgepush_refused_total{reason="rate"}`).
pub fn metric_in(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One series from the server's /metrics, named without the `edgepush_`
/// prefix (labels included if it has any); fails the test if it is missing.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = metrics_text(addr);
    metric_in(&text, &format!("edgepush_{name}")).unwrap_or_else(|| panic!("no metric edgepush_{name} in\n{text}"))
}

/// The sum over every label of a labelled family from /metrics
/// (`refused_total`: refusals for any reason).
pub fn metric_sum(addr: SocketAddr, family: &str) -> u64 {
    let prefix = format!("edgepush_{family}{{");
    metrics_text(addr)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A WebSocket upgrade request for /ws.
pub fn upgrade_request(addr: SocketAddr, extra_headers: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// Next message from the client, failing the test on a deadline.
pub async fn next(c: &mut Client) -> ServerMsg {
    timeout(5000, "a server message", c.next()).await.unwrap_or_else(|e| panic!("client: {e}"))
}

/// Messages until one matches `pred` (returned last).
pub async fn until(c: &mut Client, limit_ms: u64, mut pred: impl FnMut(&ServerMsg) -> bool) -> Vec<ServerMsg> {
    timeout(limit_ms, "an expected message", async {
        let mut seen = Vec::new();
        loop {
            let m = c.next().await.unwrap_or_else(|e| panic!("client: {e}; seen {seen:?}"));
            let hit = pred(&m);
            seen.push(m);
            if hit {
                return seen;
            }
        }
    })
    .await
}

/// Sends a Subscribe and reads its whole answer: the messages up to and
/// including its Synced (every read under a deadline).
pub async fn subscribe_synced(c: &mut Client, id: u32, filters: &[&str], resume: Option<Resume>) -> Vec<ServerMsg> {
    timeout(5000, "send a Subscribe", c.subscribe(id, filters, resume)).await.unwrap();
    until(c, 5000, |m| matches!(m, ServerMsg::Synced { id: i, .. } if *i == id)).await
}

/// Connects and subscribes, returning the client after its Synced.
pub async fn subscribed(url: &str, filters: &[&str]) -> (Client, Vec<ServerMsg>) {
    let mut c = timeout(5000, "connect", Client::connect(url)).await.expect("connect");
    let got = subscribe_synced(&mut c, 1, filters, None).await;
    (c, got)
}

/// The number an Event carries, if it is an Event with a number.
pub fn number(m: &ServerMsg) -> Option<f64> {
    match m {
        ServerMsg::Event { value: Value::Number(n), .. } => Some(*n),
        _ => None,
    }
}

/// The close code the server sent, reading until the connection ends.
pub async fn close_code(c: &mut Client) -> Option<u16> {
    timeout(10_000, "the connection to close", async {
        loop {
            match c.next().await {
                Ok(_) => continue,
                Err(ClientError::Closed(frame)) => return frame.map(|(code, _)| code),
                Err(_) => return None,
            }
        }
    })
    .await
}

/// A hand-driven WebSocket peer over a blocking socket, for input a proper
/// client library refuses to send.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// WebSocket opcodes.
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CONT: u8 = 0;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// A blocking socket with a tiny receive buffer, so a peer that does not
/// read fills the path within a few kilobytes.
pub fn small_buffer_socket(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// A socket to `addr` from the loopback address `src` (any of 127.0.0.0/8),
/// so a test can be many addresses; `rcvbuf` shrinks its receive buffer.
pub fn tcp_from(src: std::net::Ipv4Addr, addr: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    s.bind(&SocketAddr::new(src.into(), 0).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

/// A protocol client over a socket with a tiny receive buffer.
pub async fn small_buffer_client(addr: SocketAddr) -> Client {
    let stream = smol::Async::new(small_buffer_socket(addr)).unwrap();
    let url = format!("ws://{addr}/ws");
    Client::handshake(&url, stream, &Default::default()).await.unwrap()
}

impl RawWs {
    /// Upgrades; panics unless the answer is 101.
    pub fn connect(addr: SocketAddr) -> RawWs {
        RawWs::upgrade(TcpStream::connect(addr).unwrap(), addr, "")
    }

    /// Upgrades over a socket with a tiny receive buffer.
    pub fn connect_small_buffer(addr: SocketAddr) -> RawWs {
        RawWs::upgrade(small_buffer_socket(addr), addr, "")
    }

    /// Upgrades over `stream` with extra request headers (each ending in CRLF);
    /// panics unless the answer is 101.
    pub fn upgrade(mut stream: TcpStream, addr: SocketAddr, headers: &str) -> RawWs {
        stream.set_read_timeout(Some(scaled(10_000))).unwrap();
        stream.write_all(upgrade_request(addr, headers).as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        RawWs { stream, buf }
    }

    /// Writes one frame; `masked` as a client must.
    pub fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let _ = self.stream.write_all(&encode_frame(fin, opcode, payload, masked));
    }

    /// Writes bytes as they are (frames made with `encode_frame`, or not frames at all).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next frame (opcode, payload), or None at EOF / reset / timeout.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, payload, used)) = decode_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until a close frame; returns its code (None: the socket
    /// ended without one).
    pub fn close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.read_frame() {
            if op == OP_CLOSE {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// One WebSocket frame; `masked` as a client must.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

fn decode_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let (len, mut at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if b[1] & 0x80 != 0 {
        at += 4;
    }
    let payload = b.get(at..at + len)?.to_vec();
    Some((op, payload, at + len))
}

/// A child process's stdout or stderr, read line by line on a thread of its
/// own, so that every wait on it has a deadline: a `read_line` on the pipe
/// itself blocks for as long as the child stays silent.
pub struct Lines {
    seen: Arc<Mutex<Vec<String>>>,
    ended: Arc<AtomicBool>,
    /// Lines taken by `next` and `until`.
    taken: AtomicUsize,
}

impl Lines {
    /// Starts reading `pipe` to its end.
    pub fn read(pipe: impl Read + Send + 'static) -> Lines {
        let (seen, ended) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (sink, end) = (seen.clone(), ended.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
            end.store(true, Ordering::SeqCst);
        });
        Lines { seen, ended, taken: AtomicUsize::new(0) }
    }

    /// Every line read so far.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The next line not yet taken, failing the test after `limit_ms` (scaled)
    /// or at the end of the stream.
    pub fn next(&self, limit_ms: u64) -> String {
        self.scan(limit_ms, "the next line", true, |_| true)
    }

    /// Takes lines until one contains `text` and returns it (lines before it
    /// are passed over, so `until` calls see an order of events).
    pub fn until(&self, text: &str, limit_ms: u64) -> String {
        self.scan(limit_ms, &format!("a line with {text:?}"), true, |l| l.contains(text))
    }

    /// The first line (since the start, whatever was taken) that contains
    /// `text`, waiting up to `limit_ms` (scaled) for it.
    pub fn find(&self, text: &str, limit_ms: u64) -> String {
        self.scan(limit_ms, &format!("a line with {text:?}"), false, |l| l.contains(text))
    }

    fn scan(&self, limit_ms: u64, what: &str, take: bool, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + scaled(limit_ms);
        loop {
            // Read before the lines: once it is set, every line is in.
            let ended = self.ended.load(Ordering::SeqCst);
            {
                let seen = self.seen.lock().unwrap();
                let from = if take { self.taken.load(Ordering::Relaxed) } else { 0 };
                if let Some(i) = (from..seen.len()).find(|&i| pred(&seen[i])) {
                    if take {
                        self.taken.store(i + 1, Ordering::Relaxed);
                    }
                    return seen[i].clone();
                }
                assert!(!ended, "{what}: the stream ended; its lines: {seen:#?}");
                assert!(Instant::now() < deadline, "timed out after {:?}: {what}; lines: {seen:#?}", scaled(limit_ms));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits up to `limit_ms` (scaled) for `child` to exit; None if it has not.
pub fn wait_child(child: &mut Child, limit_ms: u64) -> Option<ExitStatus> {
    let mut status = None;
    poll_until(limit_ms, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// Runs `cmd` to its end with `input` on its stdin, as `Command::output`
/// does, but kills it and fails the test if it has not ended, or its output
/// not closed, within `limit_ms` (scaled).
pub fn output_within(cmd: &mut Command, input: &[u8], limit_ms: u64) -> Output {
    let deadline = Instant::now() + scaled(limit_ms);
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let (mut stdin, input) = (child.stdin.take().unwrap(), input.to_vec());
    // Dropping stdin when written closes it.
    std::thread::spawn(move || stdin.write_all(&input));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = pipe.read_to_end(&mut all);
            let _ = tx.send(all);
        });
        rx
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait_child(&mut child, limit_ms) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{shown} did not end within {:?}", scaled(limit_ms));
    };
    // A process it left behind may still hold the pipes.
    let rest = |rx: mpsc::Receiver<Vec<u8>>, which: &str| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)))
            .unwrap_or_else(|_| panic!("{shown}: its {which} stayed open after it exited"))
    };
    Output { status, stdout: rest(stdout, "stdout"), stderr: rest(stderr, "stderr") }
}

/// A child process (the binary, usually) with its stdout and stderr read line
/// by line; killed on drop if it is still running.
pub struct Daemon {
    pub child: Child,
    /// Its stderr: the server's log.
    pub log: Lines,
    /// Its stdout.
    pub out: Lines,
}

impl Daemon {
    /// Spawns `cmd` with both output streams collected.
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let log = Lines::read(child.stderr.take().unwrap());
        let out = Lines::read(child.stdout.take().unwrap());
        Daemon { child, log, out }
    }

    /// `edgepush run --config <config>`, once `addr` accepts connections.
    /// Fails at once, with the server's log, if it exits first.
    pub fn run(config: &Path, addr: SocketAddr) -> Daemon {
        Daemon::try_run(config, addr)
            .unwrap_or_else(|log| panic!("the server exited before listening on {addr}:\n{log}"))
    }

    /// As [`Daemon::run`], but a server that exits before it listens gives
    /// its log instead of failing the test.
    pub fn try_run(config: &Path, addr: SocketAddr) -> Result<Daemon, String> {
        let mut cmd = edgepush_command();
        cmd.args(["run", "--config"]).arg(config);
        let mut d = Daemon::spawn(cmd);
        let mut exited = false;
        wait_until(20_000, "the server to listen", || {
            if TcpStream::connect(addr).is_ok() {
                return true;
            }
            exited = matches!(d.child.try_wait(), Ok(Some(_)));
            exited
        });
        if exited {
            // Its last lines may still be in the pipe.
            std::thread::sleep(Duration::from_millis(100));
            return Err(d.log.all().join("\n"));
        }
        Ok(d)
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the child this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }

    /// Its log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.all()
    }

    /// Waits for a log line containing `text` and returns it.
    pub fn wait_log(&self, text: &str, limit_ms: u64) -> String {
        self.log.find(text, limit_ms)
    }

    /// Waits for the process to exit, failing the test (with its log) after `limit_ms` (scaled).
    pub fn wait_exit(&mut self, limit_ms: u64) -> ExitStatus {
        wait_child(&mut self.child, limit_ms).unwrap_or_else(|| {
            panic!("the process did not exit within {:?}; log: {:#?}", scaled(limit_ms), self.lines())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A multi-threaded executor for many clients at once, on `threads` threads
/// that run until `finish`.
pub struct Pool {
    pub ex: Arc<smol::Executor<'static>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts the threads.
    pub fn new(threads: usize) -> Pool {
        let ex = Arc::new(smol::Executor::new());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (ex, stop) = (ex.clone(), stop.clone());
                std::thread::spawn(move || {
                    smol::block_on(ex.run(async {
                        while !stop.load(Ordering::Relaxed) {
                            smol::Timer::after(Duration::from_millis(20)).await;
                        }
                    }))
                })
            })
            .collect();
        Pool { ex, stop, threads }
    }

    /// Stops the threads (tasks still running are abandoned) and joins them.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    edgepush::internals::rss_kib(pid).expect("VmRSS")
}

/// Raises RLIMIT_NOFILE to its hard limit (the servers this test starts
/// inherit it) and fails the test if that is below `need`.
pub fn raise_nofile(need: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    // rlim_t is 32 bits on armv7.
    #[allow(clippy::unnecessary_cast)]
    let have = r.rlim_cur as u64;
    assert!(have >= need, "RLIMIT_NOFILE {have} is below the {need} this test needs");
}

/// The accept queue of the IPv4 listener on `port` (rx_queue of its LISTEN
/// row in /proc/net/tcp): connections the kernel completed that nobody accepted yet.
pub fn accept_backlog(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let listening = cols.get(3) == Some(&"0A") && cols.get(1).is_some_and(|a| a.ends_with(&want));
            let queues = cols.get(4)?;
            listening.then(|| u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()).flatten()
        })
        .max()
        .unwrap_or(0)
}

/// A protocol violation: its name, the frames to send, the close code expected.
pub type Violation = (&'static str, Vec<Vec<u8>>, Option<u16>);

/// Frames that break the protocol, each with the close code PROTOCOL.md
/// names, for a server whose `max-message-bytes` is `max`.
pub fn protocol_violations(max: usize) -> Vec<Violation> {
    let bin = |p: &[u8]| encode_frame(true, OP_BINARY, p, true);
    let ping = edgepush_protocol::ClientMsg::Ping { nonce: 1 }.encode();
    let mut two = ping.clone();
    two.extend_from_slice(&ping);
    let mut trailing = ping.clone();
    trailing.push(0);
    vec![
        ("text message", vec![encode_frame(true, OP_TEXT, b"hello", true)], Some(1003)),
        ("oversize text message", vec![encode_frame(true, OP_TEXT, &vec![b'a'; max + 1], true)], Some(1009)),
        ("oversize binary message", vec![bin(&vec![0; max + 1])], Some(1009)),
        (
            "fragments adding up past the limit",
            vec![
                encode_frame(false, OP_BINARY, &vec![0; max / 2 + 1], true),
                encode_frame(true, OP_CONT, &vec![0; max / 2 + 1], true),
            ],
            Some(1009),
        ),
        (
            "a declared frame length of 2^40 with no payload",
            vec![{
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 40).to_be_bytes());
                f.extend_from_slice(&[1, 2, 3, 4]);
                f
            }],
            Some(1009),
        ),
        ("empty binary message", vec![bin(&[])], Some(1007)),
        ("garbage", vec![bin(&[0xff, 0xff, 0xff])], Some(1007)),
        ("two messages in one", vec![bin(&two)], Some(1007)),
        ("trailing bytes", vec![bin(&trailing)], Some(1007)),
        ("filter count 2^32-1 in a small message", vec![bin(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f])], Some(1007)),
        ("string length 2^32-1", vec![bin(&[2, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'])], Some(1007)),
        ("invalid UTF-8 in a filter", vec![bin(&[0, 0, 1, 2, 0xc3, 0x28, 0])], Some(1007)),
        ("varint overflow", vec![bin(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])], Some(1007)),
        ("unmasked frame", vec![encode_frame(true, OP_BINARY, &ping, false)], Some(1002)),
        ("ping with a 126-byte payload", vec![encode_frame(true, OP_PING, &[0; 126], true)], Some(1002)),
        (
            "RSV1 set",
            vec![{
                let mut f = bin(&ping);
                f[0] |= 0x40;
                f
            }],
            Some(1002),
        ),
        ("unknown opcode 3", vec![encode_frame(true, 3, &ping, true)], Some(1002)),
        ("fragmented control frame", vec![encode_frame(false, OP_PING, b"x", true)], Some(1002)),
        ("continuation without a start", vec![encode_frame(true, OP_CONT, &ping, true)], Some(1002)),
    ]
}

/// A TCP proxy on a free loopback port to `127.0.0.1:target`, that a test can
/// cut (every connection closed, new ones closed at once) and restore: a lost
/// link with both ends still up. Two threads per connection and one accepting;
/// all end when it is cut or dropped.
pub struct TcpProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, stop) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(false)));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, s, c) = (open.clone(), stop.clone(), conns.clone());
        let accepting = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                // Refused while cut: closed before a byte goes either way.
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                client.set_nonblocking(false).unwrap();
                let mut held = c.lock().unwrap();
                // Cut while it connected: closed too.
                if !o.load(Ordering::SeqCst) {
                    continue;
                }
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                held.extend([client, upstream]);
            }
        });
        TcpProxy { port, open, stop, conns, accepting: Some(accepting) }
    }

    /// Closes every connection through it and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

/// base64url without padding (JWT segments in the tests).
pub fn b64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
