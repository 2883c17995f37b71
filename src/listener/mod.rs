//! The listener: the accept loop, admission (caps, per-address rates), the
//! HTTP request head, authentication and Origin, the routes beside `/ws`, and
//! the upgrade that hands a connection to its [`Session`].

pub(crate) mod access;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod jwt;
pub(crate) mod proxy;
mod routes;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use log::{debug, warn};
use smol::future::FutureExt as _;
use smol::{Async, Executor, Timer};

use crate::config::{Config, Limits};
use crate::hub::HubCmd;
use crate::metrics::{open_files_limit, Metrics, Refusal};
use crate::net::{self, Net};
use crate::session::socket::{Raw, Socket, Ws};
use crate::session::{Session, SessionConfig};

use admission::Admission;
use auth::{Authenticator, Identity};
use http::{HeadError, Reject};

/// State every connection handler shares.
pub(crate) struct Shared {
    pub(crate) admission: Arc<Admission>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) hub: Sender<HubCmd>,
    /// The settings a reload can change; each connection takes the current
    /// ones when it is accepted.
    pub(crate) live: RwLock<Arc<Live>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) next_conn: AtomicU64,
    /// Connections still reading their request head; capped so a flood of
    /// silent sockets cannot pile up tasks for `handshake-timeout-ms` each.
    pub(crate) handshaking: AtomicUsize,
    /// Sockets being answered 503 past the pending-head cap (`answer_busy`).
    pub(crate) busy_answers: AtomicUsize,
    /// When the hub and the MQTT bridge last answered the daemon's probe.
    pub(crate) liveness: health::Liveness,
}

/// The per-connection settings from the config, swapped whole on reload.
pub(crate) struct Live {
    session: Arc<SessionConfig>,
    auth: Authenticator,
    /// `[auth] allowed-origins`, normalized; None: the request's own Host.
    origins: Option<Vec<String>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_handshaking: usize,
    /// [`descriptors_needed`] by these limits.
    descriptors: u64,
    handshake_timeout: Duration,
    max_header_bytes: usize,
    /// `[limits] trusted-proxies`: empty, the common case, costs one check.
    trusted: Vec<Net>,
    proxy_protocol: bool,
    /// `[dashboard]`, rendered per `GET /dashboard.json` for its token's scopes.
    dashboard: crate::config::Dashboard,
}

impl Live {
    /// # Errors
    /// `[tls]` is set but its files were not read.
    pub(crate) fn new(cfg: &Config) -> Result<Live, String> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => match &t.loaded {
                Some(loaded) => Some(loaded.0.clone()),
                None => return Err("tls: the certificate files were not read (Config::read_files)".into()),
            },
        };
        if cfg.auth.jwt.as_ref().is_some_and(|j| j.key.loaded.is_none()) {
            return Err("auth.jwt: the key file was not read (Config::read_files)".into());
        }
        Ok(Live {
            session: Arc::new(SessionConfig {
                heartbeat_interval: Duration::from_millis(cfg.heartbeat.interval_ms),
                heartbeat_timeout: Duration::from_millis(cfg.heartbeat.timeout_ms),
                slow_client_timeout: Duration::from_millis(cfg.limits.slow_client_timeout_ms),
                outbox_messages: cfg.limits.outbox_messages,
                max_message_bytes: cfg.limits.max_message_bytes,
                messages_per_second: cfg.limits.messages_per_second,
                burst: cfg.limits.burst,
                max_age: match cfg.limits.max_connection_age_ms {
                    0 => None,
                    ms => Some(Duration::from_millis(ms)),
                },
            }),
            auth: Authenticator::new(&cfg.auth),
            origins: cfg.auth.allowed_origins.clone(),
            tls,
            max_handshaking: cfg.limits.pending_heads(),
            descriptors: descriptors_needed(&cfg.limits),
            handshake_timeout: Duration::from_millis(cfg.limits.handshake_timeout_ms),
            max_header_bytes: cfg.limits.max_header_bytes,
            trusted: cfg.limits.trusted_proxies.clone(),
            proxy_protocol: cfg.limits.proxy_protocol,
            dashboard: cfg.dashboard.clone(),
        })
    }
}

impl Shared {
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The health `/healthz` reports, as of now.
    pub(crate) fn health(&self) -> health::Report {
        let (hub, bridge) = self.liveness.ages();
        let m = &self.metrics;
        health::assess(
            hub,
            bridge,
            m.broker_up.load(Relaxed),
            self.shutting_down.load(Relaxed),
            m.connections.load(Relaxed),
        )
    }
}

/// Descriptors beside the connections and the pending request heads: the
/// broker link, the listener, epoll and its wakers, the signal pipe, stdio
/// and the journal, systemd's sockets, `/proc` reads for `/metrics`.
pub(crate) const DESCRIPTOR_MARGIN: u64 = 64;

/// Sockets past the pending-head cap that may be answered 503 at once with a
/// lingering close of their own; past these too, the answer is written and
/// the socket closed at once.
const BUSY_ANSWERS: usize = 64;

/// The file descriptors `limits` need: one per connection, one per pending
/// request head, the busy answers and a margin. The start-up check
/// (`daemon/fds.rs`) and the accept loop's warning both say this.
pub(crate) fn descriptors_needed(limits: &Limits) -> u64 {
    (limits.max_connections + limits.pending_heads() + BUSY_ANSWERS) as u64 + DESCRIPTOR_MARGIN
}

pub(crate) async fn accept_loop(
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    ex: Arc<Executor<'static>>,
    stop: Receiver<()>,
) {
    let mut out_of_fds = OutOfFds::default();
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
                    // Too many heads in progress: answer without reading one more.
                    shared.metrics.refused(Refusal::PendingHeads);
                    debug!("{peer}: refused, {} request heads already pending", live.max_handshaking);
                    if live.tls.is_none() {
                        answer_busy(stream, &shared, &ex);
                    }
                    continue;
                }
                let _ = stream.get_ref().set_nodelay(true);
                ex.spawn(connection(stream, peer, shared.clone(), live)).detach();
            }
            Some(Err(e)) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                accept_failed(&e, &shared, &mut out_of_fds);
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Past the pending-head cap on a plain listener: `503` with `Retry-After`,
/// written at once without waiting for the request, then a lingering close
/// (so that the request arriving meanwhile does not reset the answer away),
/// in a task of its own while fewer than [`BUSY_ANSWERS`] are lingering.
/// Past that, the answer goes into the empty send buffer and the socket is
/// closed. (A TLS listener cannot answer before a handshake: it closes.)
fn answer_busy(stream: Async<TcpStream>, shared: &Arc<Shared>, ex: &Executor<'static>) {
    let answer = http::error_response(503, "too many connections in progress", &[("Retry-After", "5")]);
    if shared.busy_answers.fetch_add(1, Relaxed) >= BUSY_ANSWERS {
        shared.busy_answers.fetch_sub(1, Relaxed);
        use std::io::Write;
        let _ = stream.get_ref().write(&answer);
        let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
        return;
    }
    let shared = shared.clone();
    ex.spawn(async move {
        http::send(&mut Raw::new(stream), &answer).await;
        shared.busy_answers.fetch_sub(1, Relaxed);
    })
    .detach();
}

/// How often the accept loop may warn about running out of descriptors.
const OUT_OF_FDS_WARN_EVERY: Duration = Duration::from_secs(60);

/// The accept loop's record of running out of descriptors, for warning at
/// most once per [`OUT_OF_FDS_WARN_EVERY`].
#[derive(Default)]
struct OutOfFds {
    last_warned: Option<Instant>,
    /// Failures since that warning, not warned about.
    quiet: u64,
}

/// A failed accept: EMFILE and ENFILE are counted and warned about at most
/// once a minute (with the limit and the fix); anything else is warned about.
fn accept_failed(e: &io::Error, shared: &Shared, seen: &mut OutOfFds) {
    let m = &shared.metrics;
    let (counter, fix) = match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let limit = open_files_limit().map_or_else(|| "unknown".to_owned(), |(soft, _)| soft.to_string());
            let max = m.connections_max.load(Relaxed);
            let need = shared.live().descriptors;
            (
                &m.accept_emfile,
                format!(
                    "the process's file descriptor limit ({limit}) is reached (max-connections = {max} needs {need}); \
                     raise it with LimitNOFILE= (systemctl edit edgepush) or ulimit -n"
                ),
            )
        }
        Some(libc::ENFILE) => {
            (&m.accept_enfile, "the system's file table is full; raise sysctl fs.file-max".to_owned())
        }
        _ => {
            warn!("accept failed: {e}");
            return;
        }
    };
    Metrics::inc(counter);
    let now = Instant::now();
    if seen.last_warned.is_some_and(|t| now.duration_since(t) < OUT_OF_FDS_WARN_EVERY) {
        seen.quiet += 1;
        return;
    }
    let quiet = std::mem::take(&mut seen.quiet);
    let more = if quiet > 0 { format!(" ({quiet} more since the last warning)") } else { String::new() };
    seen.last_warned = Some(now);
    warn!(
        "accept failed: {e}{more}: {fix}; new connections wait in the listen backlog meanwhile \
         (warned at most once a minute)"
    );
}

/// One accepted TCP connection, from its first byte to its end.
async fn connection(stream: Async<TcpStream>, peer: SocketAddr, shared: Arc<Shared>, live: Arc<Live>) {
    shared.handshaking.fetch_add(1, Relaxed);
    let handshake = Handshaking(&shared.handshaking);
    // Boxed: the handshake's state (head buffers and all) is freed once it is
    // done instead of sizing the whole connection's long-lived future.
    let Some((ws, slot, who, client)) = Box::pin(handshake_phase(stream, peer, &shared, &live)).await else {
        return;
    };
    drop(handshake);
    let session = Session {
        conn: shared.next_conn.fetch_add(1, Relaxed),
        peer: client,
        cfg: live.session.clone(),
        hub: shared.hub.clone(),
        perms: who.perms,
        metrics: shared.metrics.clone(),
        slot,
        expires: who.expires_ms.and_then(deadline),
    };
    let via = if client == peer { String::new() } else { format!(" via proxy {peer}") };
    match &who.name {
        Some(name) => debug!("{client}: upgraded as connection {} with token {name:?}{via}", session.conn),
        None => debug!("{client}: upgraded as connection {}{via}", session.conn),
    }
    session.run(ws).await;
}

/// The instant of a Unix time in ms (now when it is past; None when too far
/// off to represent: no deadline then).
fn deadline(unix_ms: u64) -> Option<Instant> {
    let left = unix_ms.saturating_sub(crate::clock::now_ms());
    Instant::now().checked_add(Duration::from_millis(left))
}

/// Counts a connection as handshaking until dropped.
struct Handshaking<'a>(&'a AtomicUsize);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The answer to a request refused by admission (or shutdown).
fn refused_answer(why: Refusal) -> Vec<u8> {
    match why {
        Refusal::ShuttingDown => http::error_response(503, "shutting down", &[("Retry-After", "5")]),
        Refusal::Capacity => http::error_response(503, "server full", &[("Retry-After", "5")]),
        _ => http::error_response(429, "too many connections from your address", &[]),
    }
}

/// Why no PROXY protocol header was read; the connection is dropped.
enum NoProxyHeader {
    /// Closed before its first byte (a TCP health check): not counted.
    Closed,
    /// Not within `handshake-timeout-ms`.
    Timeout,
    /// Not a PROXY header, or cut short.
    Malformed(&'static str),
}

/// Reads the PROXY protocol header a trusted proxy sends first, and nothing
/// after it. Ok(None): the header names no client (v2 `LOCAL`, v1 `UNKNOWN`).
///
/// # Errors
/// Why there is no PROXY header.
async fn read_proxy_header(stream: &Async<TcpStream>) -> Result<Option<SocketAddr>, NoProxyHeader> {
    use smol::io::AsyncReadExt;
    let mut s = stream;
    let mut first = [0u8; 1];
    if s.peek(&mut first).await.unwrap_or(0) == 0 {
        return Err(NoProxyHeader::Closed);
    }
    let closed = |_| NoProxyHeader::Malformed("closed within its PROXY header");
    let mut buf = Vec::with_capacity(64);
    loop {
        match proxy::parse_header(&buf) {
            proxy::Header::Need(n) => {
                let at = buf.len();
                buf.resize(at + n, 0);
                s.read_exact(&mut buf[at..]).await.map_err(closed)?;
            }
            proxy::Header::Line { max } => {
                // Peek for the line end, then take exactly the line: a few
                // system calls instead of one per byte.
                let at = buf.len();
                buf.resize(at + max, 0);
                let seen = stream.peek(&mut buf[at..]).await.map_err(closed)?;
                if seen == 0 {
                    return Err(NoProxyHeader::Malformed("closed within its PROXY header"));
                }
                let take = buf[at..at + seen].iter().position(|&b| b == b'\n').map_or(seen, |i| i + 1);
                buf.truncate(at + take);
                s.read_exact(&mut buf[at..]).await.map_err(closed)?;
            }
            proxy::Header::Done { source, skip, .. } => {
                let mut scratch = [0u8; 256];
                let mut left = skip;
                while left > 0 {
                    let n = left.min(scratch.len());
                    s.read_exact(&mut scratch[..n]).await.map_err(closed)?;
                    left -= n;
                }
                return Ok(source);
            }
            proxy::Header::Malformed(why) => return Err(NoProxyHeader::Malformed(why)),
        }
    }
}

/// Reads and answers the request head. Returns the upgraded WebSocket, the
/// slots it holds (admission, and the token's own when capped), who it is
/// and the client's address (behind a trusted proxy, the one it names);
/// None when the request was answered (or dropped) here.
async fn handshake_phase(
    stream: Async<TcpStream>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    live: &Live,
) -> Option<(Ws, Box<dyn Send + Sync>, Identity, SocketAddr)> {
    // One deadline for the PROXY header, the TLS handshake and the request head together.
    let deadline = Instant::now() + live.handshake_timeout;
    let m = &shared.metrics;
    // Behind a reverse proxy: only a trusted peer may say who the client is.
    let from_proxy = !live.trusted.is_empty() && net::any_contains(&live.trusted, peer.ip());
    let mut client = peer;
    if from_proxy && live.proxy_protocol {
        let timeout = async {
            Timer::at(deadline).await;
            Err(NoProxyHeader::Timeout)
        };
        // Boxed: connections without a PROXY header do not carry its state.
        match Box::pin(read_proxy_header(&stream)).or(timeout).await {
            Ok(source) => client = source.unwrap_or(peer),
            Err(NoProxyHeader::Closed) => return None,
            Err(NoProxyHeader::Timeout) => {
                m.refused(Refusal::Timeout);
                debug!("{peer}: dropped: no PROXY protocol header in time");
                return None;
            }
            Err(NoProxyHeader::Malformed(why)) => {
                m.refused(Refusal::ProxyHeader);
                debug!("{peer}: dropped: PROXY protocol header: {why}");
                return None;
            }
        }
    }
    // The forwarding headers count when the client so far is a trusted proxy;
    // the per-address checks then wait for them (the end of the head).
    let forwarded = from_proxy && net::any_contains(&live.trusted, client.ip());
    let mut stream = match &live.tls {
        None => Socket::Plain(Raw::new(stream)),
        Some(tls) => {
            // Boxed: rustls' handshake state is kilobytes that plain connections need not carry.
            let accept = Box::pin(futures_rustls::TlsAcceptor::from(tls.clone()).accept(Raw::new(stream)));
            let timeout = async {
                Timer::at(deadline).await;
                Err(io::Error::from(io::ErrorKind::TimedOut))
            };
            match accept.or(timeout).await {
                Ok(mut s) => {
                    // rustls would queue 64 KiB of encrypted output; the memory model counts this much.
                    s.get_mut().1.set_buffer_limit(Some(crate::config::board::TLS_SEND_BUFFER_BYTES));
                    Socket::Tls(Box::new(s))
                }
                Err(e) => {
                    let why = if e.kind() == io::ErrorKind::TimedOut { Refusal::Timeout } else { Refusal::BadRequest };
                    m.refused(why);
                    debug!("{client}: TLS handshake failed: {e}");
                    return None;
                }
            }
        }
    };
    let line_seen = AtomicBool::new(false);
    let mut buf = Vec::with_capacity(512);
    // Only /ws requests take a slot, from the moment their request line asks for it.
    let admit = |rl: &http::RequestLine| {
        if rl.path != "/ws" {
            return Ok(None);
        }
        if shared.shutting_down.load(Relaxed) {
            return Err(HeadError::Refused(Refusal::ShuttingDown));
        }
        if forwarded {
            return Ok(None);
        }
        shared.admission.try_admit(client.ip()).map(Some).map_err(HeadError::Refused)
    };
    let read = http::read_head(&mut stream, &mut buf, live.max_header_bytes, &line_seen, admit);
    let timeout = async {
        Timer::at(deadline).await;
        Err(None)
    };
    let (head_len, line, mut slot) = match async { read.await.map_err(Some) }.or(timeout).await {
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
                Some(HeadError::Refused(r)) => (r, Some(refused_answer(r))),
                Some(HeadError::Closed) => return None,
            };
            m.refused(why);
            debug!("{client}: refused ({why:?})");
            if let Some(a) = answer {
                http::send(&mut stream, &a).await;
            }
            return None;
        }
    };
    let head = &buf[..head_len];
    let parsed = http::Head::parse(head);
    if forwarded {
        if let Ok(h) = &parsed {
            let ip = proxy::client_address(h.all("x-forwarded-for"), h.all("forwarded"), client.ip(), &live.trusted);
            if ip != client.ip() {
                client = SocketAddr::new(ip, 0);
            }
        }
        if line.path == "/ws" {
            match shared.admission.try_admit(client.ip()) {
                Ok(s) => slot = Some(s),
                Err(why) => {
                    m.refused(why);
                    debug!("{client}: refused ({why:?}) via proxy {peer}");
                    http::send(&mut stream, &refused_answer(why)).await;
                    return None;
                }
            }
        }
    }
    let reply = |status, reason| http::error_response(status, reason, &[]);
    // A refused /ws request is counted under its reason (BadRequest unless said).
    let mut why = Refusal::BadRequest;
    let answer = match (&parsed, line.method.as_str(), line.path.as_str()) {
        (Err(r), _, _) => reply(r.status, r.reason),
        (_, m, _) if m != "GET" => http::error_response(405, "only GET", &[("Allow", "GET")]),
        (Ok(head), _, "/ws") => {
            let tls = live.tls.is_some();
            match http::ws_request(head, line.query.as_deref(), &live.auth, live.origins.as_deref(), tls) {
                Ok((upgrade, who)) => match token_slot(shared, &who) {
                    Ok(token_slot) => {
                        let (ws, slot) = upgraded(stream, buf, head_len, &upgrade, slot, live).await?;
                        return Some((ws, Box::new((slot, token_slot)), who, client));
                    }
                    Err(refusal) => {
                        why = refusal;
                        debug!("{client}: refused: token {:?} holds all its connections", who.name);
                        reply(429, "too many connections with this token")
                    }
                },
                Err(Reject { status: 426, reason }) => {
                    http::error_response(426, reason, &[("Sec-WebSocket-Version", "13")])
                }
                Err(Reject { status: 401, reason }) => {
                    why = Refusal::Unauthorized;
                    debug!("{client}: refused: {reason}");
                    http::error_response(401, reason, &[("WWW-Authenticate", "Bearer")])
                }
                Err(Reject { status: 403, reason }) => {
                    why = Refusal::Origin;
                    debug!("{client}: refused: Origin {:?}", head.get("origin").map(String::from_utf8_lossy));
                    reply(403, reason)
                }
                Err(Reject { status, reason }) => reply(status, reason),
            }
        }
        (Ok(head), _, "/healthz") if head.wants_websocket() => {
            // The health upgrade: rate-limited, but no slot of any cap.
            match shared.admission.try_rate(peer.ip()) {
                Err(refusal) => {
                    m.refused(refusal);
                    debug!("{peer}: health upgrade refused ({refusal:?})");
                    reply(429, "too many connections from your address")
                }
                Ok(()) => match head.check_upgrade() {
                    Ok(upgrade) => routes::healthz_upgrade(&upgrade, shared),
                    Err(Reject { status: 426, reason }) => {
                        http::error_response(426, reason, &[("Sec-WebSocket-Version", "13")])
                    }
                    Err(Reject { status, reason }) => reply(status, reason),
                },
            }
        }
        // What /ws would decide, readable by a page; no slot (access.rs).
        (Ok(head), _, "/access") => access::check(head, line.query.as_deref(), client.ip(), shared, live).answer(),
        (Ok(head), _, "/dashboard.json") => access::dashboard(head, line.query.as_deref(), client.ip(), shared, live),
        (_, _, path) => routes::get(path, shared),
    };
    if line.path == "/ws" {
        m.refused(why);
    }
    // A refused request gives its slot back before its answer goes out, not
    // after the lingering close: a client that reads the refusal and tries
    // again (with its token, say) finds the slot free.
    drop(slot);
    http::send(&mut stream, &answer).await;
    None
}

/// The token's own connection slot, when its entry sets `max-connections`.
fn token_slot(shared: &Shared, who: &Identity) -> Result<Option<admission::TokenSlot>, Refusal> {
    match (&who.name, who.max_connections) {
        (Some(name), Some(max)) => shared.admission.try_admit_token(name, max).map(Some),
        _ => Ok(None),
    }
}

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
