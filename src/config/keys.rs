//! Every config key, once: its field, TOML name, check and default on one
//! line of a [`section!`] table. The macro makes the section's struct, its
//! `Default`, the code that takes its keys out of the file (recording each
//! problem under `section.key`), the redacted rendering `check-config`
//! prints, and the list of its keys a test holds the annotated
//! `systemd/edgepush.toml` to.
//!
//! Adding a key: one line in its section here (the board profiles may set it
//! too), and its documented line in `systemd/edgepush.toml` (the test fails
//! until it is there) and the README's table.

use std::fmt;
use std::net::SocketAddr;

use toml::{Table, Value as Toml};

use super::jwt::{Alg, KeyFile};
use super::{AuthMode, Problem, Secret, Token};
use crate::net::Net;
use edgepush_protocol::topic;

/// The longest duration key, in ms: a day.
const MAX_MS: i64 = 24 * 3600 * 1000;

/// One section of the file: its struct and everything derived from its keys.
///
/// Each key line: `doc, field: Type = "toml-name", check(args...), default;`
/// where `check` is a [`Section`] method taking `(key, args..., &mut slot)`.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $name:ident = $table:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $key:literal, $check:ident ( $($arg:expr),* ), $default:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The section's table name (empty: the top level).
            #[allow(dead_code)] // the top level's is read by the tests alone
            pub(crate) const TABLE: &'static str = $table;
            /// Every key of the section, as written in the file.
            #[cfg(test)]
            pub(crate) const KEYS: &'static [&'static str] = &[$($key),*];

            /// Takes this section's keys out of `s`, each checked.
            pub(super) fn apply(&mut self, s: &mut Section<'_>) {
                $( s.$check($key, $($arg,)* &mut self.$field); )*
            }

            /// This section as TOML, secrets redacted; keys without a value left out.
            pub(super) fn render(&self, t: &mut Table) {
                $( if let Some(v) = Render::render(&self.$field) { t.insert($key.into(), v); } )*
            }
        }
    };
}

section! {
    /// `[mqtt]`: the broker link.
    Mqtt = "mqtt" {
        /// The broker's host.
        host: String = "host", string(), "127.0.0.1".into();
        /// The broker's port.
        port: u16 = "port", int(1, 65535), 1883;
        /// Default `edgepush-<hostname>`, so two gateways on one broker do not evict each other.
        client_id: String = "client-id", string(), format!("edgepush-{}", hostname());
        /// Filters subscribed at the broker. `$SYS/...` is never forwarded whatever they say.
        subscribe: Vec<String> = "subscribe", filters(false), vec!["#".into()];
        /// The QoS of those subscriptions.
        qos: u8 = "qos", int(0, 2), 1;
        /// MQTT user name, if the broker wants one.
        username: Option<String> = "username", opt_string(), None;
        /// MQTT password; never logged or printed.
        password: Option<Secret> = "password", secret(), None;
        /// MQTT keepalive; 30 s notices a dead broker link within about 45 s.
        keepalive_s: u16 = "keepalive-s", int(5, 3600), 30;
        /// First reconnect delay after the broker link is lost; doubles up to `reconnect-max-ms`.
        reconnect_min_ms: u64 = "reconnect-min-ms", int(10, MAX_MS), 250;
        /// The longest reconnect delay.
        reconnect_max_ms: u64 = "reconnect-max-ms", int(10, MAX_MS), 10_000;
        /// PEM file of the CA(s) that signed the broker's certificate; set, the link is TLS
        /// (TLS 1.3) trusting those alone.
        ca: Option<String> = "ca", opt_string(), None;
        /// Client certificate chain (PEM) for a broker that asks for one (mutual TLS); with `key`.
        cert: Option<String> = "cert", opt_string(), None;
        /// That certificate's private key (PEM).
        key: Option<String> = "key", opt_string(), None;
        /// The name the broker's certificate must carry; unset: `host`.
        server_name: Option<String> = "server-name", opt_string(), None;
        /// false: a persistent session under `client-id`; the broker keeps the
        /// subscriptions and queues QoS 1/2 messages while the link is down.
        clean_session: bool = "clean-session", boolean(), true;
    }
}

section! {
    /// `[limits]`: every cap that keeps memory bounded.
    Limits = "limits" {
        /// Connections at once; past it, 503.
        max_connections: usize = "max-connections", int(1, 1_000_000), 1024;
        /// Connections from one address; past it, 429.
        max_connections_per_ip: usize = "max-connections-per-ip", int(1, 1_000_000), 64;
        /// Filters one connection may hold.
        max_filters: u16 = "max-filters", int(1, 65535), 64;
        /// The largest client message (and Publish payload); past it, close 1009.
        max_message_bytes: usize = "max-message-bytes", int(64, 16 << 20), 4096;
        /// Live messages queued for one connection before it is told it lagged.
        outbox_messages: usize = "outbox-messages", int(1, 1 << 20), 256;
        /// Behind for longer than this: close 1013.
        slow_client_timeout_ms: u64 = "slow-client-timeout-ms", int(1, MAX_MS), 10_000;
        /// Topics with a latest value.
        max_topics: usize = "max-topics", int(1, 1 << 24), 4096;
        /// Events kept for resume.
        history: usize = "history", int(0, 1 << 24), 4096;
        /// The request head must arrive within this: 408, or dropped.
        handshake_timeout_ms: u64 = "handshake-timeout-ms", int(1, MAX_MS), 5000;
        /// The largest request head; past it, 431.
        max_header_bytes: usize = "max-header-bytes", int(256, 1 << 20), 8192;
        /// Token bucket on each connection's client messages: refill rate...
        messages_per_second: u32 = "messages-per-second", int(1, 1_000_000), 50;
        /// ...and size. Past it: close 1008.
        burst: u32 = "burst", int(1, 1_000_000), 200;
        /// New `/ws` connections per second from one address (a bucket holding
        /// one second's worth). Past it: 429.
        connections_per_second_per_ip: u32 = "connections-per-second-per-ip", int(1, 1_000_000), 20;
        /// Connections older than this (±10 % jitter) are closed with 1001
        /// once their pending output is sent, so that clients reconnect
        /// through the load balancer. 0: off.
        max_connection_age_ms: u64 = "max-connection-age-ms", age(), 0;
        /// SIGUSR1 closes every connection with 1001, spread evenly over this.
        drain_spread_ms: u64 = "drain-spread-ms", int(0, MAX_MS), 10_000;
        /// Reverse proxies (addresses or CIDR blocks) whose forwarding headers
        /// name the client; empty: every peer is the client.
        trusted_proxies: Vec<Net> = "trusted-proxies", nets(), vec![];
        /// From a trusted proxy, a PROXY protocol v1/v2 header comes first.
        proxy_protocol: bool = "proxy-protocol", boolean(), false;
    }
}

section! {
    /// `[heartbeat]`: WebSocket ping and the idle Heartbeat message.
    Heartbeat = "heartbeat" {
        /// Something is sent at least this often.
        interval_ms: u64 = "interval-ms", int(100, MAX_MS), 15_000;
        /// No pong within this after a ping: the connection is dropped.
        timeout_ms: u64 = "timeout-ms", int(100, MAX_MS), 10_000;
    }
}

section! {
    /// `[auth]`: who may connect, and what they may do.
    Auth = "auth" {
        /// Tokens (the default) or none.
        mode: AuthMode = "mode", auth_mode(), AuthMode::Tokens;
        /// The permissions of every connection with `mode = "none"`.
        subscribe: Vec<String> = "subscribe", filters(true), vec!["#".into()];
        /// With `mode = "none"`: where every connection may publish.
        publish: Vec<String> = "publish", filters(true), vec![];
        /// Origins a browser may connect from (`scheme://host[:port]`, or `*`).
        /// None: only an Origin whose host and port are the request's Host.
        allowed_origins: Option<Vec<String>> = "allowed-origins", origins(), None;
        /// `[[auth.tokens]]`.
        tokens: Vec<Token> = "tokens", tokens(), vec![];
        /// `[auth.jwt]`: signed, expiring tokens beside the static ones.
        jwt: Option<Jwt> = "jwt", jwt(), None;
    }
}

section! {
    /// `[auth.jwt]`: signed, expiring tokens (JWT). `key` and `algorithm` are
    /// required once the section is written.
    Jwt = "auth.jwt" {
        /// HS256: a file holding the shared secret; EdDSA or ES256: the PEM public key.
        key: KeyFile = "key", key_file(), KeyFile::default();
        /// What the token's `alg` must be: "HS256", "EdDSA" or "ES256".
        algorithm: Option<Alg> = "algorithm", jwt_alg(), None;
        /// When set, the token's `iss` must be this.
        issuer: Option<String> = "issuer", opt_string(), None;
        /// When set, the token's `aud` must be or contain this.
        audience: Option<String> = "audience", opt_string(), None;
        /// Clock skew allowed on `exp` and `nbf`: gateway clocks drift, and
        /// half a minute is the usual allowance; at most 5 minutes.
        leeway_s: u64 = "leeway-s", int(0, 300), 30;
    }
}

section! {
    /// `[log]`.
    Log = "log" {
        /// off, error, warn, info, debug or trace.
        level: log::LevelFilter = "level", level(), log::LevelFilter::Info;
    }
}

section! {
    /// The top-level keys beside `board` (which chooses the defaults, so it is
    /// read first) and the sections.
    Top = "" {
        /// Address the HTTP/WebSocket listener binds.
        listen: SocketAddr = "listen", address(), SocketAddr::from(([0, 0, 0, 0], 8080));
    }
}

/// `[tls]`'s keys (the section is optional as a whole: see `super::Tls`).
#[cfg(test)]
pub(crate) const TLS_KEYS: &[&str] = &["cert", "key"];

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

/// A value as `check-config` shows it; None: left out.
pub(super) trait Render {
    fn render(&self) -> Option<Toml>;
}

macro_rules! render_int {
    ($($t:ty),*) => {$(
        impl Render for $t {
            fn render(&self) -> Option<Toml> {
                Some(Toml::Integer(i64::try_from(*self).unwrap_or(i64::MAX)))
            }
        }
    )*};
}
render_int!(u8, u16, u32, u64, usize);

impl Render for bool {
    fn render(&self) -> Option<Toml> {
        Some(Toml::Boolean(*self))
    }
}

impl Render for String {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String(self.clone()))
    }
}

impl Render for Vec<String> {
    fn render(&self) -> Option<Toml> {
        Some(Toml::Array(self.iter().map(|s| Toml::String(s.clone())).collect()))
    }
}

impl Render for Vec<Net> {
    fn render(&self) -> Option<Toml> {
        Some(Toml::Array(self.iter().map(|n| Toml::String(n.to_string())).collect()))
    }
}

impl<T: Render> Render for Option<T> {
    fn render(&self) -> Option<Toml> {
        self.as_ref().and_then(Render::render)
    }
}

impl Render for Secret {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String("<redacted>".into()))
    }
}

impl Render for SocketAddr {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String(self.to_string()))
    }
}

impl Render for AuthMode {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String(if *self == AuthMode::None { "none" } else { "tokens" }.into()))
    }
}

impl Render for KeyFile {
    fn render(&self) -> Option<Toml> {
        let p = self.path.display().to_string();
        (!p.is_empty()).then_some(Toml::String(p))
    }
}

impl Render for Alg {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String(self.name().into()))
    }
}

impl Render for Jwt {
    fn render(&self) -> Option<Toml> {
        let mut t = Table::new();
        Jwt::render(self, &mut t);
        Some(Toml::Table(t))
    }
}

impl Render for log::LevelFilter {
    fn render(&self) -> Option<Toml> {
        Some(Toml::String(self.to_string().to_lowercase()))
    }
}

impl Render for Vec<Token> {
    fn render(&self) -> Option<Toml> {
        if self.is_empty() {
            return None;
        }
        let tokens = self.iter().map(|t| {
            let mut e = Table::new();
            e.insert("name".into(), t.name.clone().into());
            e.insert("sha256".into(), "<redacted>".into());
            e.insert("subscribe".into(), t.subscribe.render()?);
            e.insert("publish".into(), t.publish.render()?);
            if let Some(n) = t.max_connections {
                e.insert("max-connections".into(), n.render()?);
            }
            Some(Toml::Table(e))
        });
        Some(Toml::Array(tokens.collect::<Option<_>>()?))
    }
}

pub(super) fn problem(key: &str, reason: impl Into<String>) -> Problem {
    Problem { key: key.to_owned(), reason: reason.into() }
}

/// A value as a problem's reason quotes it.
pub(super) fn show(v: &Toml) -> String {
    match v {
        Toml::String(s) => format!("{s:?}"),
        Toml::Table(_) => "a table".into(),
        Toml::Array(_) => "an array".into(),
        other => other.to_string(),
    }
}

/// Takes typed values out of one table, recording problems under `section.key`.
pub(super) struct Section<'a> {
    pub(super) name: &'static str,
    pub(super) table: Table,
    pub(super) problems: &'a mut Vec<Problem>,
}

impl fmt::Debug for Section<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<'a> Section<'a> {
    fn key(&self, k: &str) -> String {
        if self.name.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.name)
        }
    }

    pub(super) fn bad(&mut self, k: &str, reason: String) {
        let key = self.key(k);
        self.problems.push(Problem { key, reason });
    }

    /// An integer in `min..=max`, stored into `slot` when valid.
    pub(super) fn int<T: TryFrom<i64>>(&mut self, k: &str, min: i64, max: i64, slot: &mut T) {
        let Some(v) = self.table.remove(k) else { return };
        match v {
            Toml::Integer(i) if (min..=max).contains(&i) => match T::try_from(i) {
                Ok(x) => *slot = x,
                Err(_) => self.bad(k, format!("{i} does not fit")),
            },
            other => self.bad(k, format!("must be an integer from {min} to {max}, got {}", show(&other))),
        }
    }

    pub(super) fn string(&mut self, k: &str, slot: &mut String) {
        let mut o = None;
        self.opt_string(k, &mut o);
        if let Some(s) = o {
            *slot = s;
        }
    }

    pub(super) fn opt_string(&mut self, k: &str, slot: &mut Option<String>) {
        match self.table.remove(k) {
            None => {}
            Some(Toml::String(s)) => *slot = Some(s),
            Some(other) => self.bad(k, format!("must be a string, got {}", show(&other))),
        }
    }

    fn boolean(&mut self, k: &str, slot: &mut bool) {
        match self.table.remove(k) {
            None => {}
            Some(Toml::Boolean(b)) => *slot = b,
            Some(other) => self.bad(k, format!("must be true or false, got {}", show(&other))),
        }
    }

    /// A list of addresses or CIDR blocks, each checked.
    fn nets(&mut self, k: &str, slot: &mut Vec<Net>) {
        let Some(v) = self.table.remove(k) else { return };
        let Toml::Array(items) = v else {
            return self.bad(k, format!("must be a list of addresses or CIDR blocks, got {}", show(&v)));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Toml::String(s) => match Net::parse(&s) {
                    Ok(n) => out.push(n),
                    Err(e) => self.bad(&format!("{k}[{i}]"), e),
                },
                other => self.bad(&format!("{k}[{i}]"), format!("must be a string, got {}", show(&other))),
            }
        }
        *slot = out;
    }

    fn secret(&mut self, k: &str, slot: &mut Option<Secret>) {
        let mut s = None;
        self.opt_string(k, &mut s);
        if let Some(s) = s {
            *slot = Some(Secret(s));
        }
    }

    fn address(&mut self, k: &str, slot: &mut SocketAddr) {
        let mut s = None;
        self.opt_string(k, &mut s);
        if let Some(s) = s {
            match s.parse() {
                Ok(a) => *slot = a,
                Err(_) => self.bad(k, format!("must be an address such as \"0.0.0.0:8080\", got {s:?}")),
            }
        }
    }

    /// A connection age: 0 (off) or at least a second, so that a typo cannot
    /// make every dashboard reconnect in a tight loop.
    fn age(&mut self, k: &str, slot: &mut u64) {
        let Some(v) = self.table.remove(k) else { return };
        match v {
            Toml::Integer(i) if i == 0 || (1000..=MAX_MS).contains(&i) => *slot = i as u64,
            other => self.bad(k, format!("must be 0 (off) or from 1000 to {MAX_MS} ms, got {}", show(&other))),
        }
    }

    fn auth_mode(&mut self, k: &str, slot: &mut AuthMode) {
        let mut mode = None;
        self.opt_string(k, &mut mode);
        match mode.as_deref() {
            None => {}
            Some("none") => *slot = AuthMode::None,
            Some("tokens") => *slot = AuthMode::Tokens,
            Some(other) => self.bad(k, format!("must be \"tokens\" or \"none\", got {other:?}")),
        }
    }

    fn level(&mut self, k: &str, slot: &mut log::LevelFilter) {
        let mut level = None;
        self.opt_string(k, &mut level);
        if let Some(l) = level {
            match l.parse::<log::LevelFilter>() {
                Ok(f) => *slot = f,
                Err(_) => self.bad(k, format!("must be one of off, error, warn, info, debug, trace; got {l:?}")),
            }
        }
    }

    /// A list of MQTT filters, each checked.
    fn filters(&mut self, k: &str, allow_empty: bool, slot: &mut Vec<String>) {
        let Some(v) = self.table.remove(k) else { return };
        let Toml::Array(items) = v else {
            return self.bad(k, format!("must be a list of MQTT filters, got {}", show(&v)));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Toml::String(f) => match topic::validate_filter(&f) {
                    Ok(()) => out.push(f),
                    Err(e) => self.bad(&format!("{k}[{i}]"), format!("bad MQTT filter {f:?}: {e}")),
                },
                other => self.bad(&format!("{k}[{i}]"), format!("must be a string, got {}", show(&other))),
            }
        }
        if out.is_empty() && !allow_empty {
            self.bad(k, "must list at least one filter".into());
        }
        *slot = out;
    }

    /// `allowed-origins`: `*`, or origins such as `https://dash.lan:8443`.
    fn origins(&mut self, k: &str, slot: &mut Option<Vec<String>>) {
        let Some(v) = self.table.remove(k) else { return };
        let Toml::Array(items) = v else {
            return self
                .bad(k, format!("must be a list of origins such as \"https://dash.lan:8443\", got {}", show(&v)));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Toml::String(o) if o == "*" => out.push(o),
                Toml::String(o) => match edgepush_protocol::origin::normalize(&o) {
                    Some(n) => out.push(n),
                    None => self.bad(
                        &format!("{k}[{i}]"),
                        format!("must be \"*\" or scheme://host[:port] with scheme http or https, got {o:?}"),
                    ),
                },
                other => self.bad(&format!("{k}[{i}]"), format!("must be a string, got {}", show(&other))),
            }
        }
        *slot = Some(out);
    }

    /// `[[auth.tokens]]`.
    fn tokens(&mut self, k: &str, slot: &mut Vec<Token>) {
        let Some(v) = self.table.remove(k) else { return };
        let Toml::Array(items) = v else {
            return self.bad(k, format!("must be an array of tables ([[auth.tokens]]), got {}", show(&v)));
        };
        // Well-formed hashes only: a malformed one is reported as such, not
        // as the same as another malformed one.
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("{}[{i}]", self.key(k));
            let Toml::Table(table) = item else {
                self.problems.push(problem(&key, format!("must be a table, got {}", show(&item))));
                continue;
            };
            let before = self.problems.len();
            let mut s = Section { name: "", table, problems: self.problems };
            let mut t = Token {
                name: String::new(),
                sha256: [0; 32],
                subscribe: vec![],
                publish: vec![],
                max_connections: None,
            };
            let mut sha = None;
            let mut hash = None;
            s.string("name", &mut t.name);
            s.opt_string("sha256", &mut sha);
            s.filters("subscribe", true, &mut t.subscribe);
            s.filters("publish", true, &mut t.publish);
            if s.table.contains_key("max-connections") {
                let mut n = 0usize;
                s.int("max-connections", 1, 1_000_000, &mut n);
                t.max_connections = (n > 0).then_some(n);
            }
            if t.name.is_empty() {
                s.bad("name", "is required: a name for logs and metrics".into());
            }
            match sha.as_deref().map(|h| (h, crate::hex::decode32(h))) {
                None => s.bad("sha256", "is required: the token's SHA-256 in hex (`edgepush hash-token`)".into()),
                Some((_, Some(h))) => {
                    t.sha256 = h;
                    hash = Some(h);
                }
                Some((h, None)) => s.bad("sha256", format!("must be 64 hex digits, got {} characters", h.len())),
            }
            s.finish();
            // The entry's own keys are named under its index.
            for p in &mut self.problems[before..] {
                p.key = format!("{key}.{}", p.key);
            }
            if slot.iter().any(|o| o.name == t.name && !t.name.is_empty()) {
                self.problems.push(problem(&format!("{key}.name"), format!("{:?} is used twice", t.name)));
            }
            if let Some(h) = hash {
                if hashes.contains(&h) {
                    self.problems.push(problem(&format!("{key}.sha256"), "is the same as another token's"));
                }
                hashes.push(h);
            }
            slot.push(t);
        }
    }

    /// `[auth.jwt]`, when written: its keys, `key` and `algorithm` required.
    fn jwt(&mut self, k: &'static str, slot: &mut Option<Jwt>) {
        match self.table.get(k) {
            None => return,
            Some(Toml::Table(_)) => {}
            // Reported as not a table, and nothing more.
            Some(_) => return self.sub(k).finish(),
        }
        let mut s = self.sub(k);
        s.name = Jwt::TABLE;
        let mut jwt = Jwt::default();
        jwt.apply(&mut s);
        if jwt.key.path.as_os_str().is_empty() {
            s.bad("key", "is required: the HS256 secret's file, or the EdDSA or ES256 public key's (PEM)".into());
        }
        if jwt.algorithm.is_none() && !s.problems.iter().any(|p| p.key == "auth.jwt.algorithm") {
            s.bad("algorithm", "is required: \"HS256\", \"EdDSA\" or \"ES256\"".into());
        }
        s.finish();
        *slot = Some(jwt);
    }

    fn key_file(&mut self, k: &str, slot: &mut KeyFile) {
        let mut path = None;
        self.opt_string(k, &mut path);
        match path {
            Some(p) if p.is_empty() => self.bad(k, "must not be empty".into()),
            Some(p) => slot.path = p.into(),
            None => {}
        }
    }

    fn jwt_alg(&mut self, k: &str, slot: &mut Option<Alg>) {
        let mut name = None;
        self.opt_string(k, &mut name);
        if let Some(n) = name {
            match Alg::ALL.into_iter().find(|a| a.name() == n) {
                Some(a) => *slot = Some(a),
                None => self.bad(k, format!("must be \"HS256\", \"EdDSA\" or \"ES256\", got {n:?}")),
            }
        }
    }

    /// The sub-table `k` (an empty one when absent; a problem when not a table).
    pub(super) fn sub(&mut self, k: &'static str) -> Section<'_> {
        let table = match self.table.remove(k) {
            None => Table::new(),
            Some(Toml::Table(t)) => t,
            Some(other) => {
                self.bad(k, format!("must be a table, got {}", show(&other)));
                Table::new()
            }
        };
        Section { name: k, table, problems: self.problems }
    }

    /// Every key not taken is unknown.
    pub(super) fn finish(self) {
        for k in self.table.keys() {
            let key = if self.name.is_empty() { k.clone() } else { format!("{}.{k}", self.name) };
            self.problems.push(Problem { key, reason: "unknown key".into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of `[section]` in the annotated file: `# key = value` lines, and
    /// `#   key = value` in the examples of keys without a default.
    fn documented(text: &str) -> Vec<(String, String)> {
        documented_values(text).into_iter().map(|(s, k, _)| (s, k)).collect()
    }

    /// (section, key, value as written) of every documented key.
    fn documented_values(text: &str) -> Vec<(String, String, String)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let l = line.trim_start_matches('#').trim();
            if let Some(name) = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                section = name.to_owned();
            } else if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((k, v)) = l.split_once(" = ") {
                if !k.contains(' ') {
                    let v = v.split("  #").next().unwrap_or(v).trim();
                    out.push((section.clone(), k.to_owned(), v.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn the_annotated_file_documents_every_key() {
        let doc = documented(include_str!("../../systemd/edgepush.toml"));
        let sections: [(&str, &[&str]); 10] = [
            (Top::TABLE, Top::KEYS),
            (Mqtt::TABLE, Mqtt::KEYS),
            (Limits::TABLE, Limits::KEYS),
            (Heartbeat::TABLE, Heartbeat::KEYS),
            (Auth::TABLE, Auth::KEYS),
            (Log::TABLE, Log::KEYS),
            ("tls", TLS_KEYS),
            (Jwt::TABLE, Jwt::KEYS),
            ("dashboard", super::super::dashboard::KEYS),
            ("dashboard.rule", super::super::dashboard::RULE_KEYS),
        ];
        let mut missing = Vec::new();
        for (table, keys) in sections {
            for key in keys {
                // `tokens`, `jwt` and `rule` are documented as their [[auth.tokens]], [auth.jwt] and [[dashboard.rule]] examples.
                let found = if (table, *key) == ("auth", "tokens")
                    || (table, *key) == ("auth", "jwt")
                    || (table, *key) == ("dashboard", "rule")
                {
                    doc.iter().any(|(s, _)| *s == format!("{table}.{key}"))
                } else {
                    doc.iter().any(|(s, k)| s == table && k == key)
                };
                if !found {
                    missing.push(if table.is_empty() { key.to_string() } else { format!("{table}.{key}") });
                }
            }
        }
        assert!(missing.is_empty(), "systemd/edgepush.toml does not document {missing:?}");
        // And the test itself sees what it should.
        assert!(doc.contains(&("limits".into(), "burst".into())));
        assert!(doc.contains(&("auth.tokens".into(), "sha256".into())));
    }

    #[test]
    fn the_annotated_file_shows_each_default() {
        let doc = documented_values(include_str!("../../systemd/edgepush.toml"));
        let cfg = super::super::Config::default();
        let mut sections: Vec<(&str, Table)> = Vec::new();
        let mut add = |name, render: &dyn Fn(&mut Table)| {
            let mut t = Table::new();
            render(&mut t);
            sections.push((name, t));
        };
        add(Top::TABLE, &|t| Top { listen: cfg.listen }.render(t));
        add(Mqtt::TABLE, &|t| cfg.mqtt.render(t));
        add(Limits::TABLE, &|t| cfg.limits.render(t));
        add(Heartbeat::TABLE, &|t| cfg.heartbeat.render(t));
        add(Auth::TABLE, &|t| cfg.auth.render(t));
        add(Log::TABLE, &|t| cfg.log.render(t));
        add(Jwt::TABLE, &|t| Jwt::default().render(t));
        let mut checked = 0;
        for (table, values) in &sections {
            for (key, default) in values {
                // The host name differs per machine; the file shows an example.
                if *table == "mqtt" && key == "client-id" {
                    continue;
                }
                let written = doc
                    .iter()
                    .find(|(s, k, _)| s == table && k == key)
                    .map(|(_, _, v)| format!("v = {v}").parse::<Table>().map(|mut t| t.remove("v").unwrap()));
                assert_eq!(written, Some(Ok(default.clone())), "{table}.{key} in systemd/edgepush.toml");
                checked += 1;
            }
        }
        assert!(checked >= 25, "only {checked} defaults checked");
    }

    #[test]
    fn a_missing_key_is_noticed() {
        let text = include_str!("../../systemd/edgepush.toml").replace("# burst = 200", "");
        assert!(!documented(&text).contains(&("limits".into(), "burst".into())));
    }
}
