//! The fuzz targets' bodies (`fuzz/`, cargo fuzz), here so that every input
//! the fuzzer ever found to crash is replayed by `tests/fuzz_regressions.rs`
//! on every `cargo test`, on every architecture. Each function panics on a
//! broken invariant and returns quietly otherwise.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use crate::config::{Auth, AuthMode, Token};
use crate::hub::index::FilterIndex;
use crate::hub::{BridgeMsg, Hub, HubCmd, HubConfig};
use crate::listener::auth::{sha256, Authenticator};
use crate::listener::http::{self, Head, HeadError};
use crate::listener::proxy::{self, Header};
use crate::listener::{json, jwt as token};
use crate::metrics::Metrics;
use crate::net::Net;
use crate::outbox::Outbox;
use edgepush_protocol::origin;
use edgepush_protocol::topic::{covers, matches, validate_filter, validate_topic};
use edgepush_protocol::Permissions;
use edgepush_protocol::{ClientMsg, ServerMsg, Value};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and `fuzz/regressions/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("client_msg", client_msg),
    ("http_head", http_head),
    ("jwt", jwt),
    ("proxy", proxy),
    ("topic", topic),
    ("value", value),
];

/// ClientMsg decoding and the hub's handling of what decodes: the input is a
/// sequence of `[len: u8][bytes]` chunks, each one client message from one
/// connection, handled in order by a hub that holds a few topics.
pub fn client_msg(data: &[u8]) {
    let cfg = HubConfig { max_topics: 8, history: 16, max_filters: 8, heartbeat_ms: 1000 };
    let (publish_tx, publish_rx) = async_channel::bounded(64);
    let mut hub = Hub::new(cfg, Arc::new(Metrics::default()), publish_tx);
    hub.bridge(BridgeMsg::Link { up: true });
    for (i, t) in ["a/b", "a/c", "$SYS/x", "cmd/x"].iter().enumerate() {
        hub.bridge(BridgeMsg::Event { topic: (*t).into(), value: vec![1, i as u8], ts_ms: 1 });
    }
    let outbox = Outbox::new(32);
    let perms = Arc::new(Permissions { subscribe: vec!["a/#".into(), "$SYS/#".into()], publish: vec!["cmd/+".into()] });
    hub.command(HubCmd::Connect { conn: 1, outbox: outbox.clone(), perms });
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (msg, tail) = tail.split_at((len as usize).min(tail.len()));
        rest = tail;
        let Ok(decoded) = ClientMsg::decode(msg) else { continue };
        // What decodes re-encodes to something that decodes to the same.
        assert_eq!(ClientMsg::decode(&decoded.encode()).as_ref(), Ok(&decoded));
        hub.command(HubCmd::Request { conn: 1, msg: decoded });
        hub.bridge(BridgeMsg::Event { topic: "a/b".into(), value: msg.to_vec(), ts_ms: 2 });
    }
    hub.command(HubCmd::Disconnect { conn: 1 });
    drop(publish_rx);
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(&Auth {
            mode: AuthMode::Tokens,
            subscribe: vec![],
            publish: vec![],
            tokens: vec![Token {
                name: "t".into(),
                sha256: sha256(b"tok"),
                subscribe: vec!["#".into()],
                publish: vec![],
                max_connections: None,
            }],
            allowed_origins: None,
            jwt: None,
        })
    })
}

/// The HTTP request head: the incremental reader (with admission on the
/// request line), httparse, the upgrade checks, the token lookup and the
/// Origin check, in the order the server runs them.
pub fn http_head(data: &[u8]) {
    let origins = [origin::normalize("https://dash.lan:8443").unwrap_or_default()];
    let mut reader = smol::io::Cursor::new(data);
    let mut buf = Vec::new();
    let seen = AtomicBool::new(false);
    let read = smol::block_on(http::read_head(&mut reader, &mut buf, 4096, &seen, |rl| {
        if rl.path == "/full" {
            Err(HeadError::TooLarge)
        } else {
            Ok(rl.clone())
        }
    }));
    let Ok((len, line, _)) = read else { return };
    assert!(len <= buf.len() && buf[..len].ends_with(b"\r\n\r\n"));
    let Ok(head) = Head::parse(&buf[..len]) else { return };
    for tls in [false, true] {
        for allowed in [None, Some(&origins[..])] {
            if let Ok((upgrade, who)) = http::ws_request(&head, line.query.as_deref(), authenticator(), allowed, tls) {
                assert_eq!(upgrade.accept_key.len(), 28);
                assert_eq!(who.name.as_deref(), Some("t"), "only the one token gets in");
            }
        }
    }
    if let Some(o) = head.get("origin").and_then(|o| std::str::from_utf8(o).ok()) {
        if let Some(n) = origin::normalize(o) {
            assert_eq!(origin::normalize(&n).as_deref(), Some(n.as_str()), "normalizing is idempotent");
        }
    }
}

/// Behind a reverse proxy: the PROXY v1/v2 header parser fed as the
/// listener feeds it (exactly what each step asks for: it must never ask
/// for a byte past the header), then the input's lines as `X-Forwarded-For`
/// and as `Forwarded` values, and as an address block.
pub fn proxy(data: &[u8]) {
    let mut n = 0;
    loop {
        match proxy::parse_header(&data[..n]) {
            Header::Need(more) => {
                assert!(more > 0, "asked for nothing");
                if n + more > data.len() {
                    break;
                }
                n += more;
            }
            Header::Line { max } => {
                assert!(max > 0, "asked for nothing");
                let window = &data[n..data.len().min(n + max)];
                if window.is_empty() {
                    break;
                }
                n += window.iter().position(|&b| b == b'\n').map_or(window.len(), |i| i + 1);
            }
            Header::Done { len, .. } => {
                assert_eq!(len, n, "the header is exactly what was read");
                break;
            }
            Header::Malformed(_) => break,
        }
    }
    let trusted = [Net::parse("10.0.0.0/8").expect("valid"), Net::parse("::1").expect("valid")];
    let peer = std::net::IpAddr::from([10, 0, 0, 1]);
    let lines = || data.split(|&b| b == b'\n');
    let none = || std::iter::empty::<&[u8]>();
    // Any bytes give an address, without a panic.
    let _ = proxy::client_address(lines(), none(), peer, &trusted);
    let _ = proxy::client_address(none(), lines(), peer, &trusted);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(net) = Net::parse(s) {
            let shown = net.to_string();
            assert_eq!(Net::parse(&shown), Ok(net), "a block shows as itself");
            let first = shown.split('/').next().and_then(|a| a.parse().ok()).expect("an address");
            assert!(net.contains(first), "{shown} contains its first address");
        }
    }
}

/// Topic and filter syntax, matching, permission coverage and the filter
/// index, against each other: input is `filter \n topic \n permission`.
pub fn topic(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let mut parts = s.splitn(3, '\n');
    let (filter, topic, permission) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (f_ok, t_ok, p_ok) =
        (validate_filter(filter).is_ok(), validate_topic(topic).is_ok(), validate_filter(permission).is_ok());
    if t_ok {
        assert!(validate_filter(topic).is_ok(), "a valid topic is a valid filter");
    }
    if !(f_ok && t_ok) {
        return;
    }
    let m = matches(filter, topic);
    if filter == topic {
        assert!(m, "a filter without wildcards matches itself");
    }
    // The trie agrees with matches().
    let mut index = FilterIndex::default();
    index.insert(filter, (1, 1));
    let mut found = false;
    index.for_each_match(topic, |_| found = true);
    assert_eq!(found, m, "index vs matches for {filter:?} {topic:?}");
    index.remove(filter, (1, 1));
    assert!(index.is_empty());
    // Coverage is sound: a covered filter only ever matches what the permission matches.
    if p_ok && covers(permission, filter) && m {
        assert!(matches(permission, topic), "{permission:?} covers {filter:?} but not topic {topic:?}");
    }
    if p_ok {
        assert!(covers(permission, permission), "a permission covers itself: {permission:?}");
    }
}

/// MQTT payload -> Value: any bytes become a value that encodes and decodes
/// back to itself, and the event frame around it decodes.
pub fn value(data: &[u8]) {
    let v = edgepush_protocol::value::parse(data);
    let bytes = postcard::to_allocvec(&v).expect("a Value always encodes");
    let back: Value = postcard::from_bytes(&bytes).expect("and decodes");
    assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes, "{v:?}");
    let frame = edgepush_protocol::ServerMsg::encode_event(7, 9, 11, &bytes);
    let msgs = ServerMsg::decode_all(&frame).expect("an event frame decodes");
    assert_eq!(msgs.len(), 1);
}

/// JWT checks and the JSON and base64url decoders under them. Input with a
/// newline is `header JSON \n claims JSON`, signed here with the HS256 key
/// so the claim checks are reached; otherwise it is the token itself.
pub fn jwt(data: &[u8]) {
    use crate::config::jwt::{Alg, KeyFile, Material};
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000;
    let cfg = crate::config::Jwt {
        key: KeyFile::default(),
        algorithm: Some(Alg::Hs256),
        issuer: Some("portal".into()),
        audience: Some("edgepush".into()),
        leeway_s: 30,
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let _ = json::parse(data);
    let _ = token::b64url(data);
    let presented = match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let input = format!("{}.{}", b64url(&data[..i]), b64url(&data[i + 1..]));
            let sig = ring::hmac::sign(&key, input.as_bytes());
            format!("{input}.{}", b64url(sig.as_ref())).into_bytes()
        }
        None => data.to_vec(),
    };
    if let Ok(c) = token::verify(&cfg, &Material::Hmac(key), &presented, NOW) {
        assert!(c.expires_ms > NOW);
        assert!(c.perms.subscribe.iter().chain(&c.perms.publish).all(|f| validate_filter(f).is_ok()));
    }
}

/// Unpadded base64url, for the fuzz target's tokens.
fn b64url(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(b.len() / 3 * 4 + 4);
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
