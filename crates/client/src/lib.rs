//! A Rust client of the edgepush protocol (version 1, `docs/PROTOCOL.md`):
//! the `watch` and `probe` commands ([`probe()`]), tests and the load tool use it. [`Client`] is one connection; [`Follower`] keeps a
//! subscription across reconnects (backoff with full jitter, resume, a dead
//! server noticed within 2.5 × `heartbeat_ms`) and accounts for every event in
//! a [`Ledger`].
//!
//! # Example
//!
//! Connect, subscribe and print the answer until it is complete:
//!
//! ```no_run
//! use edgepush_client::{format_value, Client, ClientError, ConnectOptions};
//! use edgepush_protocol::ServerMsg;
//!
//! smol::block_on(async {
//!     let mut c = Client::connect_with("ws://127.0.0.1:8080/ws", &ConnectOptions::default()).await?;
//!     println!("connected to {} (epoch {})", c.hello().server, c.hello().epoch);
//!     c.subscribe(1, &["sensors/#"], None).await?;
//!     loop {
//!         match c.next().await? {
//!             ServerMsg::Event { topic, seq, value, .. } => {
//!                 let name = c.topic_name(topic).unwrap_or("?");
//!                 println!("{name} {seq} {}", format_value(&value));
//!             }
//!             ServerMsg::Synced { seq, .. } => {
//!                 println!("synced at seq {seq}");
//!                 break;
//!             }
//!             _ => {}
//!         }
//!     }
//!     c.close().await;
//!     Ok::<(), ClientError>(())
//! })?;
//! # Ok::<(), ClientError>(())
//! ```
//!
//! To stay subscribed across reconnects, use a [`Follower`] and its
//! [`Follower::next`] instead, which yields [`Update`]s.

#![warn(missing_docs)]

pub mod follow;
pub mod ledger;
pub mod probe;
pub mod stream;

pub use edgepush_protocol::backoff::Backoff;
pub use follow::{FollowStats, Follower, Update};
pub use ledger::{Fate, Ledger};
pub use probe::{probe, ProbeReport, Step};
pub use stream::{trusting, ClientStream, MaybeTls};

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::TcpStream;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use smol::stream::StreamExt;
use smol::Async;

use edgepush_protocol::{ClientMsg, Resume, ServerMsg, SyncMode, Value, SUBPROTOCOL};

/// Why the client stopped.
#[derive(Debug)]
pub enum ClientError {
    /// The URL is not `ws://` or `wss://host:port/path` (or wss without a trusted certificate).
    BadUrl(String),
    /// The server answered the handshake with this HTTP status.
    Refused {
        /// The HTTP status code, e.g. 401, 403 or 503.
        status: u16,
        /// The status's canonical reason phrase (empty if it has none).
        reason: String,
    },
    /// The server closed the connection, with its close frame if any.
    Closed(Option<(u16, String)>),
    /// The server sent bytes that are not ServerMsg values.
    Protocol(String),
    /// The socket failed.
    Io(std::io::Error),
    /// Any other WebSocket error.
    WebSocket(WsError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadUrl(u) => write!(f, "bad URL: {u}"),
            ClientError::Refused { status, reason } => write!(f, "refused with HTTP {status} {reason}"),
            ClientError::Closed(Some((code, reason))) => write!(f, "closed by the server: {code} {reason}"),
            ClientError::Closed(None) => write!(f, "connection closed"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::WebSocket(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<WsError> for ClientError {
    fn from(e: WsError) -> Self {
        match e {
            WsError::Http(resp) => ClientError::Refused {
                status: resp.status().as_u16(),
                reason: resp.status().canonical_reason().unwrap_or("").to_owned(),
            },
            WsError::Io(io) => ClientError::Io(io),
            WsError::ConnectionClosed | WsError::AlreadyClosed => ClientError::Closed(None),
            other => ClientError::WebSocket(other),
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Offer the `edgepush.v1` subprotocol (default true).
    pub subprotocol: bool,
    /// Extra request headers, e.g. `Authorization` or `Origin`.
    pub headers: Vec<(String, String)>,
    /// For `wss://`: the certificates to trust ([`trusting`]).
    pub tls: Option<std::sync::Arc<futures_rustls::rustls::ClientConfig>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { subprotocol: true, headers: Vec::new(), tls: None }
    }
}

/// The server's Hello.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The protocol version the server speaks (1).
    pub version: u16,
    /// The server's name and version, e.g. `"edgepush 0.1.0"`.
    pub server: String,
    /// Random number drawn at each server start; seqs count within it.
    pub epoch: u64,
    /// The server's heartbeat interval in milliseconds; silence for 2.5 times
    /// this means the connection is dead.
    pub heartbeat_ms: u32,
    /// The most filters this connection may hold over all its subscriptions.
    pub max_filters: u16,
    /// Whether the server's broker link is up (kept current by `Broker`
    /// messages seen by [`Client::next`]).
    pub broker_up: bool,
}

/// One connection to an edgepush server.
pub struct Client {
    ws: WebSocketStream<ClientStream>,
    hello: Hello,
    topics: HashMap<u32, String>,
    pending: VecDeque<ServerMsg>,
    last_seq: u64,
}

/// The host[:port] of a ws:// or wss:// URL, and whether it is wss.
fn authority(url: &str) -> Result<(&str, bool), ClientError> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(ClientError::BadUrl(format!("{url} (not ws:// or wss://)"))),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..end];
    if auth.is_empty() {
        return Err(ClientError::BadUrl(url.to_owned()));
    }
    Ok((auth, tls))
}

impl Client {
    /// Connects, offering `edgepush.v1`, and waits for the Hello.
    ///
    /// # Errors
    /// A refused handshake gives [`ClientError::Refused`] with the HTTP status.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(url: &str, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let (auth, tls) = authority(url)?;
        let has_port = auth.rfind(':').is_some_and(|i| !auth[i..].contains(']'));
        let host_port = if has_port { auth.to_owned() } else { format!("{auth}:{}", if tls { 443 } else { 80 }) };
        let addrs = smol::net::resolve(host_port.as_str()).await.map_err(ClientError::Io)?;
        let addr = addrs.first().ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        let stream = Async::<TcpStream>::connect(*addr).await.map_err(ClientError::Io)?;
        Client::handshake(url, stream, opts).await
    }

    /// Runs the handshake over a socket the caller connected (to set its
    /// buffer sizes, say).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn handshake(url: &str, stream: Async<TcpStream>, opts: &ConnectOptions) -> Result<Client, ClientError> {
        let (auth, tls) = authority(url)?;
        if tls && opts.tls.is_none() {
            return Err(ClientError::BadUrl(format!(
                "{url}: wss needs the server's certificate (or its CA) to trust (EDGEPUSH_CA=cert.pem for watch)"
            )));
        }
        let stream = stream::open(stream, auth, if tls { opts.tls.as_ref() } else { None }).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                ClientError::BadUrl(format!("{url}: {e}"))
            } else {
                ClientError::Io(e)
            }
        })?;
        let mut req = url.into_client_request()?;
        if opts.subprotocol {
            req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        }
        for (k, v) in &opts.headers {
            let name: async_tungstenite::tungstenite::http::HeaderName =
                k.parse().map_err(|_| ClientError::BadUrl(format!("bad header name {k}")))?;
            let value = HeaderValue::from_str(v).map_err(|_| ClientError::BadUrl(format!("bad header value {v}")))?;
            req.headers_mut().append(name, value);
        }
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (ws, _) = async_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
        let mut c = Client {
            ws,
            hello: Hello {
                version: 0,
                server: String::new(),
                epoch: 0,
                heartbeat_ms: 0,
                max_filters: 0,
                broker_up: false,
            },
            topics: HashMap::new(),
            pending: VecDeque::new(),
            last_seq: 0,
        };
        match c.next().await? {
            ServerMsg::Hello { version, server, epoch, heartbeat_ms, max_filters, broker_up } => {
                c.hello = Hello { version, server, epoch, heartbeat_ms, max_filters, broker_up };
                Ok(c)
            }
            other => Err(ClientError::Protocol(format!("expected Hello first, got {other:?}"))),
        }
    }

    /// The server's Hello.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The name of a declared topic id.
    pub fn topic_name(&self, id: u32) -> Option<&str> {
        self.topics.get(&id).map(String::as_str)
    }

    /// Where to resume after a reconnect: this epoch and the highest seq seen.
    pub fn resume_point(&self) -> Resume {
        Resume { epoch: self.hello.epoch, last_seq: self.last_seq }
    }

    /// Sends one client message.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        self.send_raw(Message::Binary(msg.encode().into())).await
    }

    /// Sends any WebSocket message (tests use it for bad input).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        Ok(self.ws.send(msg).await?)
    }

    /// Subscribes to `filters` as subscription `id`.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn subscribe(&mut self, id: u32, filters: &[&str], resume: Option<Resume>) -> Result<(), ClientError> {
        let filters = filters.iter().map(|f| f.to_string()).collect();
        self.send(&ClientMsg::Subscribe { id, filters, resume }).await
    }

    /// Asks for up to `per_topic` recent events of every topic `filters`
    /// match (`ClientMsg::History`, docs/PROTOCOL.md §6.13). The answer comes
    /// as `ServerMsg::Past` values and `HistoryDone{id}` through
    /// [`Client::next`]; it never moves [`Client::resume_point`].
    ///
    /// # Errors
    /// The connection failed.
    pub async fn history(&mut self, id: u32, filters: &[&str], per_topic: u16) -> Result<(), ClientError> {
        let filters = filters.iter().map(|f| f.to_string()).collect();
        self.send(&ClientMsg::History { id, filters, per_topic }).await
    }

    /// The next message from the server. Topic declarations are recorded (and
    /// still returned); the highest seq seen is tracked for [`Client::resume_point`].
    ///
    /// # Errors
    /// The server closed the connection ([`ClientError::Closed`] with its code) or it failed.
    pub async fn next(&mut self) -> Result<ServerMsg, ClientError> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                match &m {
                    ServerMsg::Topic { id, name } => {
                        self.topics.insert(*id, name.clone());
                    }
                    ServerMsg::Event { seq, .. } | ServerMsg::Synced { seq, .. } => {
                        self.last_seq = self.last_seq.max(*seq);
                    }
                    ServerMsg::Broker { up } => self.hello.broker_up = *up,
                    _ => {}
                }
                return Ok(m);
            }
            match self.ws.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Binary(b))) => {
                    let msgs = ServerMsg::decode_all(&b).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    self.pending.extend(msgs);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(
                        frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                    ));
                }
                Some(Ok(Message::Text(_))) => return Err(ClientError::Protocol("text message".into())),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes with 1000.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A value as one line of `watch` output.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Fields(f) => f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        Value::Text(t) => format!("{t:?}"),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// `url` with `token` added as its `?token=` query parameter, percent-encoded.
pub fn with_token(url: &str, token: &str) -> String {
    let mut out = String::from(url);
    out.push(if url.contains('?') { '&' } else { '?' });
    out.push_str("token=");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `edgepush watch`: prints `topic seq value` per event on stdout and
/// notices on stderr; reconnects (and resumes) until stopped. A refusal before
/// the first connection ends it, so a wrong URL or token is reported at once.
///
/// # Errors
/// The first connection failed.
pub async fn watch(url: &str, filters: &[&str], opts: &ConnectOptions) -> Result<(), ClientError> {
    use std::io::Write;
    // Fail fast on a bad first connection; then follow.
    let first = Client::connect_with(url, opts).await?;
    first.close().await;
    let mut f = Follower::with_options(url, filters, Backoff::default(), opts.clone());
    let stdout = std::io::stdout();
    loop {
        match f.next().await {
            Update::Event { topic, seq, value, .. } => {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{topic} {seq} {}", format_value(&value));
                let _ = out.flush();
            }
            Update::Connected { epoch, resumed, broker_up } => {
                let how = if resumed { ", resuming" } else { "" };
                let broker = if broker_up { "up" } else { "down" };
                eprintln!("# connected to edgepush (epoch {epoch}, broker {broker}{how})");
            }
            Update::Synced { seq, mode } => {
                let how = if mode == SyncMode::Replay { "replay" } else { "snapshot" };
                eprintln!("# synced at seq {seq} ({how})");
            }
            Update::Broker { up } => eprintln!("# broker {}", if up { "up" } else { "down" }),
            Update::Lagged { skipped } => eprintln!("# lagged: {skipped} events skipped"),
            Update::Error { code, message } => eprintln!("# error {code}: {message}"),
            // `watch` asks for no history.
            Update::Past { .. } | Update::HistoryDone { .. } => {}
            Update::Lost { why, retry_in, .. } => eprintln!("# connection lost: {why}; reconnecting in {retry_in:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(authority("ws://127.0.0.1:8080/ws").unwrap(), ("127.0.0.1:8080", false));
        assert_eq!(authority("ws://gw?token=x").unwrap(), ("gw", false));
        assert_eq!(authority("wss://gw.lan:8443/ws").unwrap(), ("gw.lan:8443", true));
        assert_eq!(edgepush_protocol::authority::bare_host("gw.lan:8443"), "gw.lan");
        assert_eq!(edgepush_protocol::authority::bare_host("[fe80::1]:8443"), "fe80::1");
        assert_eq!(edgepush_protocol::authority::bare_host("[fe80::1]"), "fe80::1");
        assert_eq!(edgepush_protocol::authority::bare_host("gw"), "gw");
        assert!(authority("http://x/ws").is_err());
        assert!(authority("ws:///ws").is_err());
    }

    #[test]
    fn values_print_on_one_line() {
        assert_eq!(format_value(&Value::Number(21.5)), "21.5");
        assert_eq!(format_value(&Value::Fields(vec![("t".into(), 1.0), ("h".into(), 40.5)])), "t=1 h=40.5");
        assert_eq!(format_value(&Value::Text("a\nb".into())), "\"a\\nb\"");
        assert_eq!(format_value(&Value::Bytes(vec![0xff, 1])), "0xff01");
    }
}
