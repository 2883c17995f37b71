//! The load tool's moving parts: the latency recorder, the two kinds of client
//! (edgepush protocol, MQTT over WebSocket), the paced publisher and readings
//! from `/proc`.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use futures_sink::Sink;
use smol::stream::StreamExt;
use smol::Async;

use super::mqtt;
use edgepush_client::{Client, ClientStream, ConnectOptions};
use edgepush_protocol::{ServerMsg, Value};
use futures_rustls::rustls::ClientConfig;

/// Microseconds since the tool started: the publisher writes it into each
/// payload and the receiving client subtracts it from its own reading.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Log-linear histogram buckets: exact below 32 µs, then 32 per power of two (3 %).
const SUB: u32 = 32;
const BUCKETS: usize = 2048;

fn bucket(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - 5)) & u64::from(SUB - 1);
    (SUB + (e - 5) * SUB) as usize + sub as usize
}

fn bucket_value(i: usize) -> u64 {
    if i < SUB as usize {
        return i as u64;
    }
    let e = (i as u32 - SUB) / SUB + 5;
    let sub = u64::from((i as u32 - SUB) % SUB);
    let width = 1u64 << (e - 5);
    ((u64::from(SUB) + sub) << (e - 5)) + width / 2
}

/// Counts deliveries and their latencies for the current phase; events
/// published before the phase began are ignored.
pub struct Recorder {
    since_us: AtomicU64,
    delivered: AtomicU64,
    max_us: AtomicU64,
    hist: Box<[AtomicU64]>,
}

/// A phase's latencies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            since_us: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Starts a phase: counts reset, events stamped from now on count.
    pub fn begin(&self) {
        self.since_us.store(u64::MAX, Relaxed);
        self.delivered.store(0, Relaxed);
        self.max_us.store(0, Relaxed);
        for b in self.hist.iter() {
            b.store(0, Relaxed);
        }
        self.since_us.store(now_us(), Relaxed);
    }

    /// One event stamped `sent_us` arrived.
    pub fn record(&self, sent_us: u64) {
        if sent_us < self.since_us.load(Relaxed) {
            return;
        }
        let lat = now_us().saturating_sub(sent_us);
        self.delivered.fetch_add(1, Relaxed);
        self.max_us.fetch_max(lat, Relaxed);
        self.hist[bucket(lat).min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    pub fn latency(&self) -> Latency {
        let counts: Vec<u64> = self.hist.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let pct = |p: f64| {
            let rank = ((p * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_value(i) as f64 / 1000.0;
                }
            }
            0.0
        };
        Latency {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: self.max_us.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// Which protocol the tool's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// edgepush's own protocol (docs/PROTOCOL.md).
    Edgepush,
    /// MQTT 3.1.1 over WebSocket, to mosquitto's `protocol websockets` listener.
    MqttWs,
}

/// Clients that are connected and subscribed, and those that failed.
#[derive(Default)]
pub struct Census {
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Census {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some(e);
    }
}

/// A counting semaphore: connecting clients hold a slot, so a crowd connects
/// a bounded number at a time.
pub type Gate = (async_channel::Sender<()>, async_channel::Receiver<()>);

/// The filter every client subscribes to, and the topics the publisher uses.
pub const FILTER: &str = "bench/#";
pub const TOPICS: usize = 8;

/// Where a client connects: the URL (`ws://` or `wss://`) and, for `wss://`,
/// the TLS config that trusts the server's certificate.
#[derive(Clone)]
pub struct Dial {
    pub url: String,
    pub tls: Option<Arc<ClientConfig>>,
}

/// One client: connects (holding a slot of `gate` while it does), subscribes,
/// then records every event until the task is dropped.
pub async fn client(kind: Kind, dial: Dial, n: usize, gate: Gate, census: Arc<Census>, rec: Arc<Recorder>) {
    let _ = gate.0.send(()).await;
    let connected = match kind {
        Kind::Edgepush => edgepush_connect(&dial).await.map(Conn::Edgepush),
        Kind::MqttWs => mqtt_connect(&dial, n).await.map(Conn::Mqtt),
    };
    let _ = gate.1.try_recv();
    let conn = match connected {
        Ok(c) => c,
        Err(e) => return census.fail(e),
    };
    let ready = Ready::new(&census);
    let result = match conn {
        Conn::Edgepush(c) => edgepush_loop(c, &rec).await,
        Conn::Mqtt(ws) => mqtt_loop(ws, &rec).await,
    };
    drop(ready);
    census.fail(result.err().unwrap_or_else(|| "closed".into()));
}

/// Counts a client as ready until it ends or its task is dropped.
struct Ready<'a>(&'a Census);

impl<'a> Ready<'a> {
    fn new(c: &'a Census) -> Ready<'a> {
        c.ready.fetch_add(1, Relaxed);
        Ready(c)
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        self.0.ready.fetch_sub(1, Relaxed);
    }
}

enum Conn {
    Edgepush(Client),
    Mqtt(WsStream),
}

type WsStream = async_tungstenite::WebSocketStream<ClientStream>;

async fn edgepush_connect(dial: &Dial) -> Result<Client, String> {
    let opts = ConnectOptions { tls: dial.tls.clone(), ..ConnectOptions::default() };
    let mut c = Client::connect_with(&dial.url, &opts).await.map_err(|e| e.to_string())?;
    c.subscribe(1, &[FILTER], None).await.map_err(|e| e.to_string())?;
    loop {
        match c.next().await.map_err(|e| e.to_string())? {
            ServerMsg::Synced { .. } => return Ok(c),
            ServerMsg::Error { code, message, .. } => return Err(format!("subscribe refused: {code} {message}")),
            _ => {}
        }
    }
}

async fn edgepush_loop(mut c: Client, rec: &Recorder) -> Result<(), String> {
    loop {
        if let ServerMsg::Event { value: Value::Number(n), .. } = c.next().await.map_err(|e| e.to_string())? {
            rec.record(n as u64);
        }
    }
}

async fn send_ws(ws: &mut WsStream, bytes: Vec<u8>) -> Result<(), String> {
    use std::pin::Pin;
    let mut ws = Pin::new(ws);
    std::future::poll_fn(|cx| ws.as_mut().poll_ready(cx)).await.map_err(|e| e.to_string())?;
    ws.as_mut().start_send(Message::Binary(bytes.into())).map_err(|e| e.to_string())?;
    std::future::poll_fn(|cx| ws.as_mut().poll_flush(cx)).await.map_err(|e| e.to_string())
}

async fn mqtt_connect(dial: &Dial, n: usize) -> Result<WsStream, String> {
    let url = dial.url.as_str();
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://"), &dial.tls) {
        (Some(r), _, _) => (r, None),
        (_, Some(r), Some(tls)) => (r, Some(tls)),
        _ => return Err(format!("not a ws:// URL (or wss:// without a certificate to trust): {url}")),
    };
    let host_port = &rest[..rest.find('/').unwrap_or(rest.len())];
    let addr = smol::net::resolve(host_port).await.map_err(|e| e.to_string())?;
    let addr = addr.first().ok_or_else(|| format!("{host_port} resolves to nothing"))?;
    let stream = Async::<TcpStream>::connect(*addr).await.map_err(|e| e.to_string())?;
    let stream = edgepush_client::stream::open(stream, host_port, tls)
        .await
        .map_err(|e| format!("TLS handshake with {url}: {e}"))?;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (mut ws, _) =
        async_tungstenite::client_async_with_config(req, stream, Some(config)).await.map_err(|e| e.to_string())?;
    send_ws(&mut ws, mqtt::connect(&format!("bench-{}-{n}", std::process::id()))).await?;
    send_ws(&mut ws, mqtt::subscribe(1, FILTER)).await?;
    let mut buf = Vec::new();
    let mut acked = false;
    while !acked {
        read_mqtt(&mut ws, &mut buf, |p| match p {
            mqtt::Packet::ConnAck { code } if code != 0 => Err(format!("CONNACK {code}")),
            mqtt::Packet::SubAck => {
                acked = true;
                Ok(())
            }
            _ => Ok(()),
        })
        .await?;
    }
    Ok(ws)
}

/// Reads one WebSocket message and hands every whole MQTT packet in the
/// buffer to `f`; a partial packet stays in `buf`.
async fn read_mqtt(
    ws: &mut WsStream,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(mqtt::Packet<'_>) -> Result<(), String>,
) -> Result<(), String> {
    match ws.next().await {
        None => return Err("closed".into()),
        Some(Err(e)) => return Err(e.to_string()),
        Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
        Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
        Some(Ok(_)) => {}
    }
    let mut at = 0;
    while let Some((p, n)) = mqtt::parse(&buf[at..])? {
        f(p)?;
        at += n;
    }
    buf.drain(..at);
    Ok(())
}

async fn mqtt_loop(mut ws: WsStream, rec: &Recorder) -> Result<(), String> {
    let mut buf = Vec::new();
    loop {
        read_mqtt(&mut ws, &mut buf, |p| {
            if let mqtt::Packet::Publish { payload, .. } = p {
                if let Some(us) = std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok()) {
                    rec.record(us);
                }
            }
            Ok(())
        })
        .await?;
    }
}

/// Publishes `rate` messages per second for `secs` over MQTT (QoS 0), each
/// payload the time it was due (so a stalled publisher shows as latency, not
/// as a lighter load). Returns how many it published.
///
/// # Errors
/// The broker connection failed.
pub fn publish(broker: &str, rate: f64, secs: f64) -> std::io::Result<u64> {
    let mut p = mqtt::Publisher::connect(broker, &format!("bench-pub-{}", std::process::id()))?;
    let total = (rate * secs).round() as u64;
    let start = now_us();
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("bench/{i}")).collect();
    while sent < total {
        let elapsed = now_us() - start;
        let due = ((elapsed as f64 * rate / 1e6) as u64 + 1).min(total);
        buf.clear();
        while sent < due {
            let stamp = start + (sent as f64 * 1e6 / rate) as u64;
            let topic = &topics[sent as usize % TOPICS];
            mqtt::publish_into(&mut buf, topic, stamp.to_string().as_bytes());
            sent += 1;
        }
        p.write(&buf)?;
        if sent < total {
            let next = start + (sent as f64 * 1e6 / rate) as u64;
            let wait = next.saturating_sub(now_us());
            if wait > 0 {
                std::thread::sleep(Duration::from_micros(wait.min(2000)));
            }
        }
    }
    p.disconnect();
    Ok(sent)
}

/// CPU seconds a process has used in user and in kernel mode, from `/proc/PID/stat`.
/// Resident set size of a process in KiB (`VmRSS` from `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

pub fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc_pid_stat(5); `after` starts at field 3.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let sys: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((user as f64 / hz, sys as f64 / hz))
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_split(pid).map(|(u, s)| u + s)
}

/// CPU seconds of several processes together.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// Kernel CPU seconds of several processes together.
pub fn sys_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_split(*p)).map(|(_, s)| s).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_within_three_percent() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(997).chain([u64::MAX / 2]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS, "{v}");
            last = b;
            let back = bucket_value(b) as f64;
            assert!((back - v as f64).abs() <= (v as f64 * 0.032).max(0.5), "{v} -> {back}");
        }
    }

    #[test]
    fn percentiles_and_the_phase_filter() {
        let r = Recorder::new();
        now_us();
        std::thread::sleep(Duration::from_millis(5));
        r.record(1);
        r.begin();
        assert_eq!(r.delivered(), 0);
        r.record(1); // stamped before the phase: ignored
        let now = now_us();
        for _ in 0..1000 {
            r.record(now);
        }
        assert_eq!(r.delivered(), 1000);
        let l = r.latency();
        assert!(l.p50_ms < 50.0 && l.p99_ms >= l.p50_ms && l.max_ms >= l.p999_ms * 0.97, "{l:?}");
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
