//! One WebSocket connection: a single task that reads client messages, drains
//! the outbox into packed binary frames, pings, sends heartbeats and evicts
//! itself when it stays behind. Reads and writes are driven from one poll, so
//! a slow write never stops the reader from seeing a pong or a close.

pub(crate) mod heartbeat;
pub(crate) mod rate;
pub(crate) mod socket;
pub(crate) mod ticker;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_channel::Sender;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_sink::Sink;
use log::{debug, info};
use smol::stream::Stream;
use smol::Timer;

use crate::clock::now_ms;
use crate::hub::HubCmd;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Take};
use crate::session::heartbeat::{Due, Heartbeat};
use crate::session::rate::Bucket;
use edgepush_protocol::Permissions;
use edgepush_protocol::{ClientMsg, ServerMsg};

use ticker::Ticker;

/// Most bytes packed into one outgoing WebSocket message.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

/// How long an evicted or shutting-down connection gets to take its close
/// frame (and the lingering close after it).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The most a closed peer's further input is read and discarded (within
/// `CLOSE_GRACE`) so that closing does not reset the connection.
const LINGER_BYTES: usize = 4 << 20;

/// Per-connection settings, shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub slow_client_timeout: Duration,
    pub outbox_messages: usize,
    pub max_message_bytes: usize,
    /// The token bucket on client messages: refill per second and size.
    pub messages_per_second: u32,
    pub burst: u32,
    /// `max-connection-age-ms`: recycle the connection (1001) at this age, ±10 %.
    pub max_age: Option<Duration>,
}

impl SessionConfig {
    /// tungstenite sized for small client messages: its default read buffer is
    /// 128 KiB per connection and its default message limit 64 MiB.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(256)
            // Frames started before a flush go out in one write (the idle
            // Heartbeat and the ping together); the loop flushes after each send.
            .write_buffer_size(1024)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// Everything a session needs besides its socket.
pub struct Session {
    pub conn: u64,
    pub peer: SocketAddr,
    pub cfg: Arc<SessionConfig>,
    pub hub: Sender<HubCmd>,
    pub perms: Arc<Permissions>,
    pub metrics: Arc<Metrics>,
    /// What the listener holds for this connection while it lives (its
    /// admission slot): dropped, and so given back, when the session ends.
    pub slot: Box<dyn Send + Sync>,
    /// When its credential expires (a JWT's `exp` plus the leeway): closed
    /// with 1008 then.
    pub expires: Option<Instant>,
}

enum Step {
    Read(Option<Result<Message, WsError>>),
    Written(Result<(), WsError>),
    Take(Take),
    Timer,
}

/// Why a connection is being recycled: closed with 1001 once its pending
/// output has gone out, so that its client reconnects (and resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recycle {
    /// It reached `max-connection-age-ms`.
    Age,
    /// SIGUSR1's drain asked for it.
    Drain,
}

impl Recycle {
    fn reason(self) -> &'static str {
        match self {
            Recycle::Age => "connection recycled; reconnect",
            Recycle::Drain => "server draining; reconnect",
        }
    }
}

/// The moment a connection of `age` is recycled: `age` ± 10 %, so that a
/// crowd connected at once does not leave (and come back) at once.
fn recycle_at(start: Instant, age: Duration, conn: u64) -> Instant {
    let jitter = edgepush_protocol::rng::Rng::from_time(conn).next_f64();
    start + age.mul_f64(0.9 + 0.2 * jitter)
}

/// How a session ended.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// No pong in time: drop without a close frame.
    Dead,
}

use socket::Ws;

impl Session {
    /// Runs the connection to its end.
    pub async fn run(self, mut ws: Ws) {
        let outbox = Outbox::new(self.cfg.outbox_messages);
        self.metrics.connection_opened();
        let connect = HubCmd::Connect { conn: self.conn, outbox: outbox.clone(), perms: self.perms.clone() };
        let end = if self.hub.send(connect).await.is_ok() {
            let end = self.serve(&mut ws, &outbox).await;
            let _ = self.hub.send(HubCmd::Disconnect { conn: self.conn }).await;
            end
        } else {
            End::Close(1001, "shutting down")
        };
        match end {
            End::Gone => debug!("{}: closed", self.peer),
            End::Dead => {
                Metrics::inc(&self.metrics.heartbeat_timeouts);
                info!("{}: no pong within the heartbeat timeout, dropped", self.peer);
            }
            End::Close(code, reason) => {
                debug!("{}: closing with {code} ({reason})", self.peer);
                let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                let closed = async {
                    let _ = ws.close(Some(frame)).await;
                    // A peer closed for what it sends (a flood, 1008; an
                    // oversized message, 1009) may still be sending: read
                    // and discard it for a moment, so the close frame is not
                    // lost to a reset.
                    socket::linger(ws.get_mut(), LINGER_BYTES).await;
                };
                smol::future::or(closed, async {
                    Timer::after(CLOSE_GRACE).await;
                })
                .await;
            }
        }
        self.metrics.connection_closed();
        drop(self.slot);
    }

    async fn serve(&self, ws: &mut Ws, outbox: &Arc<Outbox>) -> End {
        let cfg = &self.cfg;
        let mut hb = Heartbeat::new(Instant::now(), cfg.heartbeat_interval, cfg.heartbeat_timeout);
        let mut bucket = Bucket::new(cfg.messages_per_second, cfg.burst, Instant::now());
        let mut writing = false;
        // Hello comes first (the hub queues it): until a frame from the
        // outbox has gone out, a due Heartbeat is skipped, not sent ahead of it.
        let mut greeted = false;
        let mut frame: Vec<u8> = Vec::new();
        // When this session is due to be woken by the shared timer wheel.
        // Every send moves the heartbeat deadline later; re-arming on each
        // would cost a wheel entry per delivered event. An earlier deadline is
        // armed at once; a later one waits until the armed one fires, which is
        // early and harmless: the loop finds nothing due and arms the next.
        let ticker = Ticker::get();
        let mut armed: Option<(Instant, ticker::Entry)> = None;
        let age_limit = cfg.max_age.map(|age| recycle_at(Instant::now(), age, self.conn));
        loop {
            // What is due now, and when to wake for the next thing.
            let now = Instant::now();
            let mut wake_at = match hb.poll(now) {
                Due::Dead => return End::Dead,
                Due::Idle(at) => at,
                Due::Ping | Due::Heartbeat if writing => now + Duration::from_millis(50),
                Due::Ping => {
                    if hb.heartbeat_due(now) && greeted {
                        // Both in one write: a quiet connection wakes once per interval.
                        if let Err(e) = self.send_heartbeat(ws, &mut frame, &mut hb, now) {
                            return self.failed(e);
                        }
                    }
                    hb.ping_sent(now);
                    if let Err(e) = start_send(ws, Message::Ping(Default::default())) {
                        return self.failed(e);
                    }
                    writing = true;
                    continue;
                }
                Due::Heartbeat if !greeted => {
                    hb.sent(now);
                    continue;
                }
                Due::Heartbeat => {
                    if let Err(e) = self.send_heartbeat(ws, &mut frame, &mut hb, now) {
                        return self.failed(e);
                    }
                    writing = true;
                    continue;
                }
            };
            if let Some(at) = self.expires {
                if now >= at {
                    info!("{}: token expired", self.peer);
                    return End::Close(1008, "token expired");
                }
                wake_at = wake_at.min(at);
            }
            if let (true, Some(code)) = (writing, outbox.close_code()) {
                // Shutting down while a write is stuck: give the close its grace.
                return End::Close(code, "server shutting down");
            }
            if let Some(since) = outbox.behind_since() {
                let evict_at = since + cfg.slow_client_timeout;
                if now >= evict_at {
                    Metrics::inc(&self.metrics.evicted);
                    info!("{}: stayed behind for {:?}, evicted", self.peer, cfg.slow_client_timeout);
                    return End::Close(1013, "too slow; reconnect later");
                }
                wake_at = wake_at.min(evict_at);
            }
            if let Some(at) = age_limit {
                if now < at {
                    wake_at = wake_at.min(at);
                } else if (!writing && outbox.is_empty()) || now >= at + CLOSE_GRACE {
                    // Old enough, and what was queued has gone out (or the
                    // grace for it has passed).
                    return self.recycled(Recycle::Age);
                } else {
                    wake_at = wake_at.min(at + CLOSE_GRACE);
                }
            }

            let reading = outbox.accepts_requests();
            let behind = outbox.behind_since().is_some();
            let step = poll_fn(|cx| {
                if reading {
                    if let Poll::Ready(m) = Pin::new(&mut *ws).poll_next(cx) {
                        return Poll::Ready(Step::Read(m));
                    }
                } else {
                    outbox.register(cx);
                    if outbox.accepts_requests() {
                        return Poll::Ready(Step::Timer);
                    }
                }
                if writing {
                    if let Poll::Ready(r) = Pin::new(&mut *ws).poll_flush(cx) {
                        return Poll::Ready(Step::Written(r));
                    }
                    // A stuck write must still notice falling behind or a close.
                    outbox.register(cx);
                    if outbox.behind_since().is_some() != behind || outbox.close_code().is_some() {
                        return Poll::Ready(Step::Timer);
                    }
                } else {
                    frame.clear();
                    if let Poll::Ready(t) = outbox.poll_take(cx, &mut frame, MAX_FRAME_BYTES) {
                        return Poll::Ready(Step::Take(t));
                    }
                }
                let now = Instant::now();
                if now >= wake_at {
                    return Poll::Ready(Step::Timer);
                }
                if armed.is_some_and(|(at, _)| now >= at) {
                    // The armed slot has come (this may be its wake-up): arm the next.
                    armed = None;
                }
                if armed.is_none_or(|(at, _)| wake_at < at) {
                    armed = Some((wake_at, ticker.wake_at(wake_at, cx.waker())));
                }
                Poll::Pending
            })
            .await;

            match step {
                Step::Timer => {}
                Step::Written(Ok(())) => writing = false,
                Step::Written(Err(e)) => return self.failed(e),
                Step::Take(Take::Close(code)) => return End::Close(code, "server shutting down"),
                // SIGUSR1's drain: the queue has gone out.
                Step::Take(Take::Recycle) => return self.recycled(Recycle::Drain),
                Step::Take(Take::Drained) => {
                    let _ = self.hub.send(HubCmd::Drained { conn: self.conn }).await;
                }
                Step::Take(Take::Messages(n)) => {
                    if let Err(e) = self.send_frame(ws, &mut frame, n) {
                        return self.failed(e);
                    }
                    hb.sent(Instant::now());
                    greeted = true;
                    writing = true;
                }
                Step::Read(None) => return End::Gone,
                Step::Read(Some(Err(e))) => return self.failed(e),
                Step::Read(Some(Ok(Message::Binary(_) | Message::Text(_)))) if !bucket.take(Instant::now()) => {
                    Metrics::inc(&self.metrics.rate_limited);
                    info!(
                        "{}: more than {}/s client messages beyond a burst of {}",
                        self.peer, cfg.messages_per_second, cfg.burst
                    );
                    return End::Close(1008, "too many messages");
                }
                Step::Read(Some(Ok(msg))) => match msg {
                    Message::Binary(b) => {
                        Metrics::inc(&self.metrics.client_messages);
                        match ClientMsg::decode(&b) {
                            Ok(msg) => {
                                outbox.request_started();
                                let req = HubCmd::Request { conn: self.conn, msg };
                                if self.hub.send(req).await.is_err() {
                                    return End::Close(1001, "server shutting down");
                                }
                            }
                            Err(e) => {
                                debug!("{}: {e}", self.peer);
                                Metrics::inc(&self.metrics.protocol_closes);
                                return End::Close(1007, "not exactly one ClientMsg");
                            }
                        }
                    }
                    Message::Text(_) => {
                        Metrics::inc(&self.metrics.protocol_closes);
                        return End::Close(1003, "text messages are not accepted");
                    }
                    Message::Pong(_) => {
                        hb.pong();
                        // The armed wake-up is the ping timeout, now void: the
                        // next one (the next ping, seconds later) is armed
                        // instead, so an idle round wakes the session once.
                        if let Some((_, entry)) = armed.take() {
                            ticker.cancel(entry);
                        }
                    }
                    // tungstenite queues the pong and the close reply itself.
                    Message::Ping(_) | Message::Close(_) | Message::Frame(_) => {}
                },
            }
        }
    }

    fn send_heartbeat(
        &self,
        ws: &mut Ws,
        frame: &mut Vec<u8>,
        hb: &mut Heartbeat,
        now: Instant,
    ) -> Result<(), WsError> {
        frame.clear();
        ServerMsg::Heartbeat { ts_ms: now_ms() }.encode_into(frame);
        self.send_frame(ws, frame, 1)?;
        hb.sent(now);
        Ok(())
    }

    fn send_frame(&self, ws: &mut Ws, frame: &mut Vec<u8>, messages: usize) -> Result<(), WsError> {
        let body = std::mem::take(frame);
        let m = &self.metrics;
        m.messages_sent.fetch_add(messages as u64, std::sync::atomic::Ordering::Relaxed);
        m.bytes_sent.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Metrics::inc(&m.frames_sent);
        start_send(ws, Message::Binary(body.into()))
    }

    fn recycled(&self, why: Recycle) -> End {
        self.metrics.recycled(why == Recycle::Drain);
        debug!("{}: recycled ({why:?})", self.peer);
        End::Close(1001, why.reason())
    }

    /// Maps a WebSocket error to how the connection ends.
    fn failed(&self, e: WsError) -> End {
        use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                debug!("{}: message of {size} bytes over the {max_size} limit", self.peer);
                Metrics::inc(&self.metrics.protocol_closes);
                End::Close(1009, "message too big")
            }
            WsError::Capacity(_) => End::Close(1009, "message too big"),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
            WsError::Protocol(p) => {
                debug!("{}: WebSocket protocol error: {p}", self.peer);
                Metrics::inc(&self.metrics.protocol_closes);
                End::Close(1002, "protocol error")
            }
            WsError::Utf8(_) => {
                Metrics::inc(&self.metrics.protocol_closes);
                End::Close(1003, "text messages are not accepted")
            }
            WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => End::Gone,
            other => {
                debug!("{}: {other}", self.peer);
                End::Close(1011, "internal error")
            }
        }
    }
}

fn start_send(ws: &mut Ws, msg: Message) -> Result<(), WsError> {
    Pin::new(ws).start_send(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::Role;
    use async_tungstenite::WebSocketStream;
    use smol::Async;
    use std::net::{TcpListener, TcpStream};

    /// A session's future is allocated whole for every connection, idle or
    /// not: a buffer held across an `.await` in it costs its size per
    /// connection (a 4 KiB array in `linger` once doubled the RSS per idle
    /// connection). Large buffers belong on the heap, where they live only
    /// while used. The bound leaves room for ordinary growth, not for a buffer.
    #[test]
    fn a_sessions_future_carries_no_buffer() {
        smol::block_on(async {
            let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
            let _peer = Async::<TcpStream>::connect(l.get_ref().local_addr().unwrap()).await.unwrap();
            let (s, peer) = l.accept().await.unwrap();
            let cfg = SessionConfig {
                heartbeat_interval: Duration::from_secs(15),
                heartbeat_timeout: Duration::from_secs(10),
                slow_client_timeout: Duration::from_secs(10),
                outbox_messages: 64,
                max_message_bytes: 65536,
                messages_per_second: 50,
                burst: 100,
                max_age: None,
            };
            let ws = WebSocketStream::from_raw_socket(
                socket::Socket::Plain(socket::Raw::new(s)),
                Role::Server,
                Some(cfg.websocket()),
            )
            .await;
            let session = Session {
                conn: 1,
                peer,
                cfg: Arc::new(cfg),
                hub: async_channel::bounded(1).0,
                perms: Arc::new(Permissions::default()),
                metrics: Arc::new(Metrics::default()),
                slot: Box::new(()),
                expires: None,
            };
            let size = std::mem::size_of_val(&session.run(ws));
            println!("a session's future: {size} bytes");
            assert!(size <= 2048, "a session's future is {size} bytes: a buffer held across an await?");
        });
    }
}
