//! The HTTP/1.1 request head: reading it within the size and time limits,
//! parsing it (httparse), the WebSocket upgrade checks, and plain responses.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listener::auth::{self, Authenticator, Denied, Identity};
use crate::metrics::Refusal;
use edgepush_protocol::origin;
use edgepush_protocol::SUBPROTOCOL;

/// Most bytes read from the socket at once while reading a head.
const READ_CHUNK: usize = 1024;

/// Why no complete request head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Past `max-header-bytes`: answer 431.
    TooLarge,
    /// The peer closed or the socket failed: just drop it.
    Closed,
    /// Not HTTP: answer 400.
    Malformed,
    /// Admission refused the request line.
    Refused(Refusal),
}

/// The first line of a request, available before the rest of the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: Option<String>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `METHOD TARGET HTTP/1.x` from the bytes before the first line end.
pub fn parse_request_line(line: &[u8]) -> Option<RequestLine> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Some(RequestLine { method: method.to_owned(), path: path.to_owned(), query })
}

/// Reads a request head into `buf`, calling `on_line` once the request line is
/// complete (admission happens there). Returns the head's length; bytes after
/// it (an eager client's first frame) stay in `buf`.
///
/// `line_seen` is set when a request line arrived, so a timeout can tell 408
/// from a silent drop.
pub async fn read_head<T>(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
    line_seen: &AtomicBool,
    mut on_line: impl FnMut(&RequestLine) -> Result<T, HeadError>,
) -> Result<(usize, RequestLine, T), HeadError> {
    let mut line: Option<(RequestLine, T)> = None;
    let mut scanned: usize = 0;
    loop {
        if line.is_none() {
            if let Some(end) = find(&buf[..], b"\n") {
                let rl = parse_request_line(&buf[..end]).ok_or(HeadError::Malformed)?;
                line_seen.store(true, Relaxed);
                let t = on_line(&rl)?;
                line = Some((rl, t));
            }
        }
        if line.is_some() {
            let from = scanned.saturating_sub(3);
            if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
                let (rl, t) = line.take().expect("line is set");
                return Ok((from + i + 4, rl, t));
            }
            scanned = buf.len();
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        // Read straight into the buffer's tail: no second buffer in the future's state.
        let filled = buf.len();
        let want = (max - filled).min(READ_CHUNK);
        buf.resize(filled + want, 0);
        let read = stream.read(&mut buf[filled..]).await;
        let n = read.unwrap_or(0);
        buf.truncate(filled + n);
        if n == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// What a `/ws` request asked for, once its head checks out.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub accept_key: String,
    /// Whether to echo `edgepush.v1`.
    pub subprotocol: bool,
}

/// Why a request cannot upgrade: the status to answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

fn has_token(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value).map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
}

/// The head's headers, parsed.
pub struct Head<'a> {
    pub headers: Vec<httparse::Header<'a>>,
}

impl<'a> Head<'a> {
    /// Parses a complete head (as returned by [`read_head`]).
    pub fn parse(head: &'a [u8]) -> Result<Head<'a>, Reject> {
        let bad = Reject { status: 400, reason: "malformed request" };
        let mut storage = vec![httparse::EMPTY_HEADER; 64];
        loop {
            let mut req = httparse::Request::new(&mut storage);
            let parsed = req.parse(head);
            let n = req.headers.len();
            match parsed {
                Ok(httparse::Status::Complete(_)) => {
                    storage.truncate(n);
                    return Ok(Head { headers: storage });
                }
                Ok(httparse::Status::Partial) => return Err(bad),
                Err(httparse::Error::TooManyHeaders) if storage.len() < 1024 => {
                    storage = vec![httparse::EMPTY_HEADER; storage.len() * 4];
                }
                Err(_) => return Err(bad),
            }
        }
    }

    /// The first header of that name.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Every header of that name, joined as one list.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Whether the request asks for a WebSocket (`Upgrade: websocket`).
    pub fn wants_websocket(&self) -> bool {
        self.all("upgrade").any(|v| has_token(v, "websocket"))
    }

    /// The RFC 6455 checks, in the order docs/PROTOCOL.md §2.4 gives the statuses.
    pub fn check_upgrade(&self) -> Result<Upgrade, Reject> {
        let upgrade = self.all("upgrade").any(|v| has_token(v, "websocket"));
        let connection = self.all("connection").any(|v| has_token(v, "upgrade"));
        let key = self.get("sec-websocket-key").map(|k| k.trim_ascii());
        let Some(key) = key.filter(|k| k.len() == 24 && upgrade && connection) else {
            return Err(Reject { status: 400, reason: "not a WebSocket upgrade" });
        };
        if self.get("sec-websocket-version").map(|v| v.trim_ascii()) != Some(b"13") {
            return Err(Reject { status: 426, reason: "WebSocket version 13 required" });
        }
        let mut offered = self.all("sec-websocket-protocol").peekable();
        let subprotocol = if offered.peek().is_some() {
            if !offered.any(|v| has_token(v, SUBPROTOCOL)) {
                return Err(Reject { status: 400, reason: "subprotocol edgepush.v1 not offered" });
            }
            true
        } else {
            false
        };
        let accept_key = async_tungstenite::tungstenite::handshake::derive_accept_key(key);
        Ok(Upgrade { accept_key, subprotocol })
    }
}

/// Every check a `/ws` request passes before it upgrades, in the order
/// docs/PROTOCOL.md §2.4 gives: the request itself (400, 426), credentials (401), then
/// Origin (403). Returns the upgrade and who the connection is.
pub fn ws_request(
    head: &Head<'_>,
    query: Option<&str>,
    auth: &Authenticator,
    origins: Option<&[String]>,
    tls: bool,
) -> Result<(Upgrade, Identity), Reject> {
    let upgrade = head.check_upgrade()?;
    let cookies: Vec<&[u8]> = head.all("cookie").collect();
    let token = auth::presented(head.get("authorization"), query, &cookies);
    let identity = auth.check(token.as_deref()).map_err(|d| Reject {
        status: 401,
        reason: match d {
            Denied::Missing => "a token is required (Authorization: Bearer, ?token= or the edgepush_token cookie)",
            Denied::Unknown => "unknown token",
            Denied::Jwt(r) => r.reason(),
        },
    })?;
    if !origin::permitted(head.get("origin"), head.get("host"), origins, tls) {
        return Err(Reject { status: 403, reason: "Origin not allowed" });
    }
    Ok((upgrade, identity))
}

/// The 101 answer.
pub fn switching_protocols(u: &Upgrade) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        u.accept_key
    );
    if u.subprotocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(SUBPROTOCOL);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete response with `Connection: close`.
pub fn response(status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        reason_phrase(status),
        body.len()
    );
    for (k, v) in extra {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A plain-text error response.
pub fn error_response(status: u16, reason: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", extra, format!("{reason}\n").as_bytes())
}

/// How long a refused peer's further bytes are read and discarded after the
/// answer, so closing does not reset the connection before the peer reads it.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
/// The most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Writes a response and closes gracefully: half-close, then discard what the
/// peer still sends for a moment (a close with unread input would send a reset
/// that can destroy the answer in flight).
pub async fn send(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), bytes: &[u8]) {
    if stream.write_all(bytes).await.is_err() {
        return;
    }
    let drain = crate::session::socket::linger(stream, LINGER_BYTES);
    smol::future::or(drain, async {
        smol::Timer::after(LINGER).await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws?token=x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn check(head: &str) -> Result<Upgrade, Reject> {
        Head::parse(head.as_bytes())?.check_upgrade()
    }

    #[test]
    fn request_line() {
        let rl = parse_request_line(b"GET /ws?token=a%20b HTTP/1.1\r").unwrap();
        assert_eq!(rl.method, "GET");
        assert_eq!(rl.path, "/ws");
        assert_eq!(rl.query.as_deref(), Some("token=a%20b"));
        assert!(parse_request_line(b"GET /ws").is_none());
        assert!(parse_request_line(b"GET ws HTTP/1.1").is_none());
        assert!(parse_request_line(b"\x16\x03\x01").is_none());
        assert!(parse_request_line(b"GET / SPDY/3").is_none());
    }

    #[test]
    fn a_good_upgrade_gets_the_rfc_accept_key() {
        let u = check(GOOD).unwrap();
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!u.subprotocol);
        let r = String::from_utf8(switching_protocols(&u)).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 ") && r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn subprotocol_offers() {
        let with = |p: &str| GOOD.replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Protocol: {p}\r\n\r\n"));
        assert!(check(&with("edgepush.v1")).unwrap().subprotocol);
        assert!(check(&with("mqtt, edgepush.v1")).unwrap().subprotocol);
        assert_eq!(check(&with("mqtt")).unwrap_err().status, 400);
        let r = String::from_utf8(switching_protocols(&check(&with("edgepush.v1")).unwrap())).unwrap();
        assert!(r.contains("Sec-WebSocket-Protocol: edgepush.v1\r\n"));
    }

    #[test]
    fn bad_upgrades() {
        assert_eq!(check(&GOOD.replace("Upgrade: websocket\r\n", "")).unwrap_err().status, 400);
        assert_eq!(check(&GOOD.replace("keep-alive, Upgrade", "keep-alive")).unwrap_err().status, 400);
        assert_eq!(check(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")).unwrap_err().status, 400);
        let v8 = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(check(&v8).unwrap_err(), Reject { status: 426, reason: "WebSocket version 13 required" });
        assert_eq!(check("GET /ws HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err().status, 400);
    }

    #[test]
    fn ws_requests_check_the_request_then_the_token_then_the_origin() {
        use crate::config::{Auth, AuthMode, Token};
        let auth = Authenticator::new(&Auth {
            mode: AuthMode::Tokens,
            subscribe: vec![],
            publish: vec![],
            tokens: vec![Token {
                name: "wall".into(),
                sha256: auth::sha256(b"x"),
                subscribe: vec!["#".into()],
                publish: vec![],
                max_connections: None,
            }],
            allowed_origins: None,
            jwt: None,
        });
        let run = |head: &str, query| {
            let h = Head::parse(head.as_bytes()).unwrap();
            ws_request(&h, query, &auth, None, false).map(|(_, id)| id.name.unwrap().to_string()).map_err(|r| r.status)
        };
        assert_eq!(run(GOOD, Some("token=x")), Ok("wall".into()));
        assert_eq!(run(GOOD, None), Err(401));
        assert_eq!(run(GOOD, Some("token=y")), Err(401));
        let bearer = GOOD.replace("Host: h\r\n", "Host: h\r\nAuthorization: Bearer x\r\n");
        assert_eq!(run(&bearer, None), Ok("wall".into()));
        let cookie = GOOD.replace("Host: h\r\n", "Host: h\r\nCookie: a=1; edgepush_token=x\r\n");
        assert_eq!(run(&cookie, None), Ok("wall".into()));
        let foreign = GOOD.replace("Host: h\r\n", "Host: h\r\nOrigin: http://evil.example\r\n");
        assert_eq!(run(&foreign, Some("token=x")), Err(403));
        assert_eq!(run(&foreign, None), Err(401), "credentials are checked before Origin");
        let own = GOOD.replace("Host: h\r\n", "Host: h\r\nOrigin: http://h\r\n");
        assert_eq!(run(&own, Some("token=x")), Ok("wall".into()));
        let v8 = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(run(&v8, None), Err(426), "the request itself first");
    }

    #[test]
    fn responses_carry_length_and_headers() {
        let r = String::from_utf8(error_response(503, "full", &[("Retry-After", "5")])).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(r.contains("Retry-After: 5\r\n") && r.contains("Content-Length: 5\r\n"));
    }
}
