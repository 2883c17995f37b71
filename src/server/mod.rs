//! The listener: accept loop, admission, the HTTP request head, the routes
//! beside `/ws`, the upgrade, and starting and stopping the whole server.

pub mod admission;
pub mod http;
pub mod session;
pub mod socket;
pub mod ticker;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use log::{debug, info, warn};
use smol::future::FutureExt as _;
use smol::{Async, Executor, Timer};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::{BridgeMsg, Hub, HubCmd, HubConfig, Publish};
use crate::metrics::{Metrics, Refusal};
use crate::mqtt;

use admission::Admission;
use http::{HeadError, Reject};
use session::{Session, SessionConfig};

/// The dashboard, embedded: (path, content type, body). Plain HTML, CSS and
/// JavaScript modules, no build step and no external fetch.
const DASHBOARD: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../dashboard/index.html")),
    ("/app.mjs", "text/javascript; charset=utf-8", include_str!("../dashboard/app.mjs")),
    ("/postcard.mjs", "text/javascript; charset=utf-8", include_str!("../dashboard/postcard.mjs")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
];

/// Bridge → hub queue: events waiting for the hub. Bounded so a stalled hub
/// slows the broker link rather than growing memory.
const BRIDGE_QUEUE: usize = 1024;
/// Sessions → hub queue.
const HUB_QUEUE: usize = 4096;
/// Client publishes waiting for the bridge.
const PUBLISH_QUEUE: usize = 256;

/// How long shutdown waits for connections to take their 1001 close.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// State every connection handler shares.
struct Shared {
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    hub: Sender<HubCmd>,
    /// The settings a reload can change; each connection takes the current
    /// ones when it is accepted.
    live: RwLock<Arc<Live>>,
    shutting_down: AtomicBool,
    next_conn: AtomicU64,
    /// Connections still reading their request head; capped so a flood of
    /// silent sockets cannot pile up tasks for `handshake-timeout-ms` each.
    handshaking: AtomicUsize,
}

/// The per-connection settings from the config, swapped whole on reload.
struct Live {
    session: Arc<SessionConfig>,
    auth: Authenticator,
    /// `[auth] allowed-origins`, normalized; None: the request's own Host.
    origins: Option<Vec<String>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_handshaking: usize,
    handshake_timeout: Duration,
    max_header_bytes: usize,
}

impl Live {
    /// # Errors
    /// The `[tls]` files no longer load (changed since the config was checked).
    fn new(cfg: &Config) -> Result<Live, String> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => Some(crate::tls::server_config(t).map_err(|(k, why)| format!("tls.{k}: {why}"))?),
        };
        Ok(Live {
            session: Arc::new(SessionConfig {
                heartbeat_interval: Duration::from_millis(cfg.heartbeat.interval_ms),
                heartbeat_timeout: Duration::from_millis(cfg.heartbeat.timeout_ms),
                slow_client_timeout: Duration::from_millis(cfg.limits.slow_client_timeout_ms),
                outbox_messages: cfg.limits.outbox_messages,
                max_message_bytes: cfg.limits.max_message_bytes,
                messages_per_second: cfg.limits.messages_per_second,
                burst: cfg.limits.burst,
            }),
            auth: Authenticator::new(&cfg.auth),
            origins: cfg.auth.allowed_origins.clone(),
            tls,
            max_handshaking: cfg.limits.max_connections.max(64),
            handshake_timeout: Duration::from_millis(cfg.limits.handshake_timeout_ms),
            max_header_bytes: cfg.limits.max_header_bytes,
        })
    }
}

/// The start-up and reload warnings about a config's security settings.
fn security_warnings(cfg: &Config) {
    for w in cfg.warnings() {
        warn!("{w}");
    }
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn hub_config(cfg: &Config) -> HubConfig {
    HubConfig {
        max_topics: cfg.limits.max_topics,
        history: cfg.limits.history,
        max_filters: cfg.limits.max_filters,
        heartbeat_ms: cfg.heartbeat.interval_ms.min(u64::from(u32::MAX)) as u32,
    }
}

/// A running server: its threads, and how to stop it.
pub struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    stop_accept: Sender<()>,
    stop_bridge: Sender<()>,
    stop_executor: Sender<()>,
    bridge_probe: Sender<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    bridge: Option<JoinHandle<()>>,
    hub_thread: Option<JoinHandle<()>>,
    hub_done: Receiver<()>,
    ex: Arc<Executor<'static>>,
}

impl Running {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a reloaded config: connection caps, hub limits, permissions and
    /// per-connection settings. Connected clients stay; per-connection settings
    /// (heartbeat, outbox, message size, slow-client timeout) apply to
    /// connections accepted from now on. The listen address and the broker
    /// link are not changed here (the caller reports them as needing a restart).
    ///
    /// # Errors
    /// The `[tls]` files no longer load: nothing was changed.
    pub fn reload(&self, cfg: &Config) -> Result<(), String> {
        let s = &self.shared;
        let live = Live::new(cfg)?;
        security_warnings(cfg);
        s.admission.set_caps(
            cfg.limits.max_connections,
            cfg.limits.max_connections_per_ip,
            cfg.limits.connections_per_second_per_ip,
        );
        s.metrics.connections_max.store(cfg.limits.max_connections as u64, Relaxed);
        *s.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        if s.hub.try_send(HubCmd::Reconfigure(hub_config(cfg))).is_err() {
            warn!("reload: the hub's queue is full; hub limits unchanged");
        }
        Ok(())
    }

    /// Pings the service manager's watchdog every `period`, but only while the
    /// server really works: each ping follows a round trip through the hub's
    /// loop and the MQTT bridge's thread, run from a task on the executor. A
    /// wedged executor, hub or bridge stops the pings.
    pub fn watchdog(&self, period: Duration, ping: impl Fn() + Send + 'static) {
        let hub = self.shared.hub.clone();
        let bridge = self.bridge_probe.clone();
        self.ex
            .spawn(async move {
                let mut quiet = false;
                loop {
                    Timer::after(period).await;
                    let (tx, rx) = async_channel::bounded::<()>(2);
                    let round = async {
                        hub.send(HubCmd::Probe(tx.clone())).await.ok()?;
                        bridge.send(tx).await.ok()?;
                        rx.recv().await.ok()?;
                        rx.recv().await.ok()
                    };
                    let answered = round
                        .or(async {
                            Timer::after(period).await;
                            None
                        })
                        .await
                        .is_some();
                    if answered {
                        ping();
                        if std::mem::take(&mut quiet) {
                            info!("watchdog: hub and bridge answer again");
                        }
                    } else if !std::mem::replace(&mut quiet, true) {
                        warn!("watchdog: hub or MQTT bridge did not answer within {period:?}; not pinging");
                    }
                }
            })
            .detach();
    }

    /// Stops accepting, closes every client with 1001, and stops every thread.
    /// Returns within about 2 s even when clients do not answer.
    pub fn shutdown(mut self) {
        let started = Instant::now();
        self.shared.shutting_down.store(true, Relaxed);
        self.stop_accept.close();
        let _ = self.shared.hub.try_send(HubCmd::Shutdown);
        // Wait for the hub to close every outbox, then for sessions to finish.
        let shared = self.shared.clone();
        let hub_done = self.hub_done.clone();
        smol::block_on(self.ex.run(async move {
            // Bounded even when the hub is wedged (a bug): stopping must still stop.
            let _ = async {
                let _ = hub_done.recv().await;
            }
            .or(async {
                Timer::after(SHUTDOWN_GRACE).await;
            })
            .await;
            while shared.admission.total() > 0 && started.elapsed() < SHUTDOWN_GRACE {
                Timer::after(Duration::from_millis(10)).await;
            }
        }));
        self.stop_bridge.close();
        self.stop_executor.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The hub ended when it closed the outboxes, unless it is wedged (a
        // bug): then it is left behind rather than hang the shutdown.
        if let Some(h) = self.hub_thread.take().filter(|h| h.is_finished()) {
            let _ = h.join();
        }
        // The bridge may sit in a connect attempt; it ends on its own, so only
        // wait for it briefly.
        if let Some(b) = self.bridge.take() {
            let deadline = Instant::now() + Duration::from_millis(300);
            while !b.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let left = self.shared.admission.total();
        if left > 0 {
            debug!("shutdown: {left} connections did not close in time");
        }
        info!("stopped in {:?}", started.elapsed());
    }
}

/// Binds `cfg.listen` and starts the server on it (see [`start_on`]).
///
/// # Errors
/// The listen address cannot be bound, or a thread cannot start.
pub fn start(cfg: &Config, threads: usize) -> io::Result<Running> {
    start_on(cfg, TcpListener::bind(cfg.listen)?, threads)
}

/// Starts the hub, the MQTT bridge and `threads` executor threads (0: one
/// per core) serving `listener` (bound by us, or passed by systemd).
///
/// # Errors
/// The listener is unusable, or a thread cannot start.
pub fn start_on(cfg: &Config, listener: TcpListener, threads: usize) -> io::Result<Running> {
    let live = Live::new(cfg).map_err(io::Error::other)?;
    security_warnings(cfg);
    let listener = Async::new(listener)?;
    let addr = listener.get_ref().local_addr()?;
    let metrics = Arc::new(Metrics::default());
    metrics.connections_max.store(cfg.limits.max_connections as u64, Relaxed);

    let (hub_tx, hub_rx) = async_channel::bounded(HUB_QUEUE);
    let (bridge_tx, bridge_rx) = async_channel::bounded::<BridgeMsg>(BRIDGE_QUEUE);
    let (publish_tx, publish_rx) = async_channel::bounded::<Publish>(PUBLISH_QUEUE);
    let (stop_bridge, stop_bridge_rx) = async_channel::bounded(1);
    let (stop_accept, stop_accept_rx) = async_channel::bounded::<()>(1);
    let (stop_executor, stop_executor_rx) = async_channel::bounded::<()>(1);
    let (hub_done_tx, hub_done) = async_channel::bounded::<()>(1);

    let (bridge_probe, bridge_probe_rx) = async_channel::bounded(1);

    let hub = Hub::new(hub_config(cfg), metrics.clone(), publish_tx);
    info!("epoch {}", hub.epoch());
    let bridge =
        mqtt::spawn(cfg.mqtt.clone(), bridge_tx, publish_rx, stop_bridge_rx, bridge_probe_rx, metrics.clone())?;

    let shared = Arc::new(Shared {
        admission: Admission::new(
            cfg.limits.max_connections,
            cfg.limits.max_connections_per_ip,
            cfg.limits.connections_per_second_per_ip,
        ),
        metrics: metrics.clone(),
        hub: hub_tx,
        live: RwLock::new(Arc::new(live)),
        shutting_down: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        handshaking: AtomicUsize::new(0),
    });
    wedge_hook(&shared);

    // The hub has a thread of its own: its long-lived allocations (topic
    // table, history ring, encoded events) then come from that thread's malloc
    // arena, apart from the per-connection buffers the executor threads
    // allocate and free, so memory freed when clients leave is not pinned
    // between history entries and can go back to the system.
    let hub_thread = std::thread::Builder::new().name("edgepush-hub".into()).spawn(move || {
        smol::block_on(hub.run(hub_rx, bridge_rx));
        drop(hub_done_tx);
    })?;
    let ex = Arc::new(Executor::new());
    ex.spawn(accept_loop(listener, shared.clone(), ex.clone(), stop_accept_rx)).detach();
    ex.spawn(give_back_memory(metrics.clone())).detach();

    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let ex = ex.clone();
        let stop = stop_executor_rx.clone();
        handles.push(std::thread::Builder::new().name(format!("edgepush-{i}")).spawn(move || {
            smol::block_on(ex.run(async move {
                let _ = stop.recv().await;
            }))
        })?);
    }
    info!("listening on {addr}{}", if cfg.tls.is_some() { " (TLS: https and wss)" } else { "" });
    Ok(Running {
        addr,
        metrics,
        shared,
        stop_accept,
        stop_bridge,
        stop_executor,
        bridge_probe,
        threads: handles,
        bridge: Some(bridge),
        hub_thread: Some(hub_thread),
        hub_done,
        ex,
    })
}

async fn accept_loop(
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    ex: Arc<Executor<'static>>,
    stop: Receiver<()>,
) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = stop.recv().await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                let live = shared.live();
                if shared.handshaking.load(Relaxed) >= live.max_handshaking {
                    // Too many heads in progress: closing now costs nothing.
                    shared.metrics.refused(Refusal::Timeout);
                    debug!("{peer}: dropped, {} request heads already pending", live.max_handshaking);
                    continue;
                }
                let _ = stream.get_ref().set_nodelay(true);
                ex.spawn(connection(stream, peer, shared.clone(), live)).detach();
            }
            Some(Err(e)) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One accepted TCP connection, from its first byte to its end.
async fn connection(stream: Async<TcpStream>, peer: SocketAddr, shared: Arc<Shared>, live: Arc<Live>) {
    shared.handshaking.fetch_add(1, Relaxed);
    let handshake = Handshaking(&shared.handshaking);
    // Boxed: the handshake's state (head buffers and all) is freed once it is
    // done instead of sizing the whole connection's long-lived future.
    let Some((ws, slot, who)) = Box::pin(handshake_phase(stream, peer, &shared, &live)).await else { return };
    drop(handshake);
    let session = Session {
        conn: shared.next_conn.fetch_add(1, Relaxed),
        peer,
        cfg: live.session.clone(),
        hub: shared.hub.clone(),
        perms: who.perms,
        metrics: shared.metrics.clone(),
        slot,
    };
    match &who.name {
        Some(name) => debug!("{peer}: upgraded as connection {} with token {name:?}", session.conn),
        None => debug!("{peer}: upgraded as connection {}", session.conn),
    }
    session.run(ws).await;
}

/// Counts a connection as handshaking until dropped.
struct Handshaking<'a>(&'a AtomicUsize);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Reads and answers the request head. Returns the upgraded WebSocket and the
/// admission slot; None when the request was answered (or dropped) here.
async fn handshake_phase(
    stream: Async<TcpStream>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    live: &Live,
) -> Option<(Ws, admission::Slot, Identity)> {
    // One deadline for the TLS handshake and the request head together.
    let deadline = Instant::now() + live.handshake_timeout;
    let mut stream = match &live.tls {
        None => Socket::new(stream),
        Some(tls) => {
            // Boxed: rustls' handshake state is kilobytes that plain connections need not carry.
            let accept = Box::pin(futures_rustls::TlsAcceptor::from(tls.clone()).accept(Raw::new(stream)));
            let timeout = async {
                Timer::at(deadline).await;
                Err(io::Error::from(io::ErrorKind::TimedOut))
            };
            match accept.or(timeout).await {
                Ok(s) => Socket::Tls(Box::new(s)),
                Err(e) => {
                    let why = if e.kind() == io::ErrorKind::TimedOut { Refusal::Timeout } else { Refusal::BadRequest };
                    shared.metrics.refused(why);
                    debug!("{peer}: TLS handshake failed: {e}");
                    return None;
                }
            }
        }
    };
    let line_seen = AtomicBool::new(false);
    let mut buf = Vec::with_capacity(512);
    let m = &shared.metrics;
    // Only /ws requests take a slot, from the moment their request line asks for it.
    let admit = |rl: &http::RequestLine| {
        if rl.path != "/ws" {
            return Ok(None);
        }
        if shared.shutting_down.load(Relaxed) {
            return Err(HeadError::Refused(Refusal::ShuttingDown));
        }
        shared.admission.try_admit(peer.ip()).map(Some).map_err(HeadError::Refused)
    };
    let read = http::read_head(&mut stream, &mut buf, live.max_header_bytes, &line_seen, admit);
    let timeout = async {
        Timer::at(deadline).await;
        Err(None)
    };
    let (head_len, line, slot) = match async { read.await.map_err(Some) }.or(timeout).await {
        Ok(done) => done,
        Err(failure) => {
            let (why, answer) = match failure {
                None if line_seen.load(Relaxed) => {
                    (Refusal::Timeout, Some(http::error_response(408, "request head too slow", &[])))
                }
                None => (Refusal::Timeout, None),
                Some(HeadError::TooLarge) => {
                    (Refusal::HeaderTooLarge, Some(http::error_response(431, "request head too large", &[])))
                }
                Some(HeadError::Malformed) => {
                    (Refusal::BadRequest, Some(http::error_response(400, "malformed request", &[])))
                }
                Some(HeadError::Refused(Refusal::ShuttingDown)) => {
                    (Refusal::ShuttingDown, Some(http::error_response(503, "shutting down", &[("Retry-After", "5")])))
                }
                Some(HeadError::Refused(Refusal::Capacity)) => {
                    (Refusal::Capacity, Some(http::error_response(503, "server full", &[("Retry-After", "5")])))
                }
                Some(HeadError::Refused(r)) => {
                    (r, Some(http::error_response(429, "too many connections from your address", &[])))
                }
                Some(HeadError::Closed) => return None,
            };
            m.refused(why);
            debug!("{peer}: refused ({why:?})");
            if let Some(a) = answer {
                http::send(&mut stream, &a).await;
            }
            return None;
        }
    };
    let head = &buf[..head_len];
    let parsed = http::Head::parse(head);
    let reply = |status, reason| http::error_response(status, reason, &[]);
    let page = DASHBOARD.iter().find(|(p, _, _)| *p == line.path);
    // A refused /ws request is counted under its reason (BadRequest unless said).
    let mut why = Refusal::BadRequest;
    let answer = match (&parsed, line.method.as_str(), line.path.as_str()) {
        (Err(r), _, _) => reply(r.status, r.reason),
        (_, m, _) if m != "GET" => http::error_response(405, "only GET", &[("Allow", "GET")]),
        (Ok(head), _, "/ws") => {
            let tls = live.tls.is_some();
            match http::ws_request(head, line.query.as_deref(), &live.auth, live.origins.as_deref(), tls) {
                Ok((upgrade, who)) => {
                    let (ws, slot) = upgraded(stream, buf, head_len, &upgrade, slot, live).await?;
                    return Some((ws, slot, who));
                }
                Err(Reject { status: 426, reason }) => {
                    http::error_response(426, reason, &[("Sec-WebSocket-Version", "13")])
                }
                Err(Reject { status: 401, reason }) => {
                    why = Refusal::Unauthorized;
                    debug!("{peer}: refused: {reason}");
                    http::error_response(401, reason, &[("WWW-Authenticate", "Bearer")])
                }
                Err(Reject { status: 403, reason }) => {
                    why = Refusal::Origin;
                    debug!("{peer}: refused: Origin {:?}", head.get("origin").map(String::from_utf8_lossy));
                    reply(403, reason)
                }
                Err(Reject { status, reason }) => reply(status, reason),
            }
        }
        (_, _, "/healthz") => healthz(shared),
        (_, _, "/metrics") => http::response(200, "text/plain; version=0.0.4", &[], m.render().as_bytes()),
        _ => match page {
            Some((_, kind, body)) => http::response(200, kind, &[], body.as_bytes()),
            None => reply(404, "not found"),
        },
    };
    if line.path == "/ws" {
        m.refused(why);
    }
    http::send(&mut stream, &answer).await;
    None
}

/// How often [`give_back_memory`] looks.
const TRIM_CHECK: Duration = Duration::from_secs(10);
/// Closed connections that make a trim worth it.
const TRIM_AFTER_CLOSES: u64 = 256;

/// Checks that trim again after the last close: a closed connection's task
/// memory is freed late, when the timer wheel drops its waker (up to one
/// heartbeat interval after the close), so one trim right after a crowd
/// leaves finds much of its memory still in use.
const TRIM_FOLLOW_UPS: u32 = 3;

/// Returns freed memory to the system after connections leave. glibc keeps
/// freed chunks in its per-thread arenas, so after a crowd of dashboards
/// disconnects the RSS would stay at its peak; on a small gateway that memory
/// belongs to the rest of the device. Every 10 s: if 256 connections closed
/// since the last trim, or any did and none are left, `malloc_trim(0)`; then
/// again at the next [`TRIM_FOLLOW_UPS`] checks.
async fn give_back_memory(metrics: Arc<Metrics>) {
    let closed = |m: &Metrics| m.accepted.load(Relaxed).saturating_sub(m.connections.load(Relaxed));
    let mut at_last_trim = closed(&metrics);
    let mut follow_ups = 0;
    loop {
        Timer::after(TRIM_CHECK).await;
        let now = closed(&metrics);
        let since = now - at_last_trim.min(now);
        if since >= TRIM_AFTER_CLOSES || (since > 0 && metrics.connections.load(Relaxed) == 0) {
            at_last_trim = now;
            follow_ups = TRIM_FOLLOW_UPS;
            trim();
        } else if follow_ups > 0 {
            follow_ups -= 1;
            trim();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let started = Instant::now();
    // SAFETY: mallinfo2 only reads the allocator's statistics; malloc_trim
    // only releases free memory; both are safe to call at any time.
    let (before, released) = unsafe { (libc::mallinfo2(), libc::malloc_trim(0)) };
    debug!(
        "malloc_trim: {} KiB in use, {} KiB free in the arenas; released={released} in {:?}",
        before.uordblks / 1024,
        before.fordblks / 1024,
        started.elapsed()
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

use crate::auth::Identity;
use socket::{Raw, Socket, Ws};

/// Answers 101 and wraps the socket, with any bytes the client sent after its head.
async fn upgraded(
    mut stream: Socket,
    mut buf: Vec<u8>,
    head_len: usize,
    upgrade: &http::Upgrade,
    slot: Option<admission::Slot>,
    live: &Live,
) -> Option<(Ws, admission::Slot)> {
    let slot = slot?;
    use smol::io::AsyncWriteExt;
    stream.write_all(&http::switching_protocols(upgrade)).await.ok()?;
    let rest = buf.split_off(head_len);
    drop(buf);
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(live.session.websocket())).await;
    Some((ws, slot))
}

fn healthz(shared: &Shared) -> Vec<u8> {
    let up = shared.metrics.broker_up.load(Relaxed);
    let stopping = shared.shutting_down.load(Relaxed);
    let status = if stopping {
        "shutting_down"
    } else if up {
        "ok"
    } else {
        "broker_down"
    };
    let body = format!(
        "{{\"status\":\"{status}\",\"broker_up\":{up},\"connections\":{}}}\n",
        shared.metrics.connections.load(Relaxed)
    );
    let code = if status == "ok" { 200 } else { 503 };
    http::response(code, "application/json", &[], body.as_bytes())
}

/// Test hook: with `EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS=N` the hub blocks its
/// thread for good N ms after start, as a deadlock would. The integration
/// tests use it to show that the systemd watchdog pings stop while the rest
/// of the server still answers; nothing else sets it.
fn wedge_hook(shared: &Shared) {
    let Some(ms) = std::env::var("EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    warn!("test hook: the hub will wedge in {ms} ms");
    let hub = shared.hub.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        let _ = hub.send_blocking(HubCmd::Wedge);
    });
}
