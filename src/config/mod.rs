//! The config file (TOML) and board profiles, validated with every problem
//! reported at once, each naming its key and the reason.
//!
//! Layers, later ones win: built-in defaults, then the board profile
//! (`boards/<name>.toml`, embedded in the binary), then the config file.

pub(crate) mod board;
pub(crate) mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value as Toml};

use crate::config::board::{Board, MemoryModel};
use edgepush_protocol::topic;

/// Board profiles embedded in the binary: (name, TOML text).
pub const BOARDS: &[(&str, &str)] = &[
    ("generic", include_str!("../../boards/generic.toml")),
    ("raspberry-pi-zero-2w", include_str!("../../boards/raspberry-pi-zero-2w.toml")),
    ("raspberry-pi-3", include_str!("../../boards/raspberry-pi-3.toml")),
    ("raspberry-pi-4", include_str!("../../boards/raspberry-pi-4.toml")),
    ("beaglebone-black", include_str!("../../boards/beaglebone-black.toml")),
];

/// The default board when a config names none.
pub const DEFAULT_BOARD: &str = "generic";

/// A string that never appears in logs, `Debug` output or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The board profile the defaults came from.
    pub board: String,
    /// Address the HTTP/WebSocket listener binds.
    pub listen: SocketAddr,
    pub mqtt: Mqtt,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub auth: Auth,
    /// `[tls]`: serve HTTPS and wss instead of HTTP and ws.
    pub tls: Option<Tls>,
    pub log: Log,
}

/// `[tls]`: PEM files, read at start and on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[mqtt]`: the broker link.
#[derive(Debug, Clone, PartialEq)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    /// Default `edgepush-<hostname>`, so two gateways on one broker do not evict each other.
    pub client_id: String,
    /// Filters subscribed at the broker. `$SYS/...` is never forwarded whatever they say.
    pub subscribe: Vec<String>,
    pub qos: u8,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// MQTT keepalive; 30 s notices a dead broker link within about 45 s.
    pub keepalive_s: u16,
    /// First reconnect delay after the broker link is lost; doubles up to `reconnect-max-ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

/// `[limits]`: every cap that keeps memory bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_filters: u16,
    pub max_message_bytes: usize,
    pub outbox_messages: usize,
    pub slow_client_timeout_ms: u64,
    pub max_topics: usize,
    pub history: usize,
    pub handshake_timeout_ms: u64,
    pub max_header_bytes: usize,
    /// Token bucket on each connection's client messages: refill rate...
    pub messages_per_second: u32,
    /// ...and size. Past it: close 1008.
    pub burst: u32,
    /// New `/ws` connections per second from one address (a bucket holding
    /// one second's worth). Past it: 429.
    pub connections_per_second_per_ip: u32,
}

/// `[heartbeat]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// How connections are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A `/ws` request must present one of `[[auth.tokens]]` (401 otherwise)
    /// and gets that token's scopes. The default; it needs at least one token.
    Tokens,
    /// Every connection gets `[auth] subscribe` / `publish`; credentials are
    /// ignored. Only when set explicitly, and logged as a warning at start.
    None,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub mode: AuthMode,
    /// The permissions of every connection with `mode = "none"`.
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    pub tokens: Vec<Token>,
    /// Origins a browser may connect from (`scheme://host[:port]`, or `*`).
    /// None: only an Origin whose host and port are the request's Host.
    pub allowed_origins: Option<Vec<String>>,
}

/// One `[[auth.tokens]]` entry: the token's SHA-256, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub sha256: [u8; 32],
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("sha256", &"<redacted>")
            .field("subscribe", &self.subscribe)
            .field("publish", &self.publish)
            .finish()
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub level: log::LevelFilter,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            board: DEFAULT_BOARD.into(),
            listen: "0.0.0.0:8080".parse().unwrap(),
            mqtt: Mqtt {
                host: "127.0.0.1".into(),
                port: 1883,
                client_id: format!("edgepush-{}", hostname()),
                subscribe: vec!["#".into()],
                qos: 1,
                username: None,
                password: None,
                keepalive_s: 30,
                reconnect_min_ms: 250,
                reconnect_max_ms: 10_000,
            },
            limits: Limits {
                max_connections: 1024,
                max_connections_per_ip: 64,
                max_filters: 64,
                max_message_bytes: 4096,
                outbox_messages: 256,
                slow_client_timeout_ms: 10_000,
                max_topics: 4096,
                history: 4096,
                handshake_timeout_ms: 5000,
                max_header_bytes: 8192,
                messages_per_second: 50,
                burst: 200,
                connections_per_second_per_ip: 20,
            },
            heartbeat: Heartbeat { interval_ms: 15_000, timeout_ms: 10_000 },
            auth: Auth {
                mode: AuthMode::Tokens,
                subscribe: vec!["#".into()],
                publish: vec![],
                tokens: vec![],
                allowed_origins: None,
            },
            tls: None,
            log: Log { level: log::LevelFilter::Info },
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

/// One problem in a config: the key (dotted path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// Every problem found in a config, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `board <name>`) the problems are in.
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {n} problem{}", self.source, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}", p.reason)?;
            } else {
                write!(f, "\n  {}: {}", p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// Every problem in the file (or an unreadable file), with key and reason.
    pub fn load(path: &Path, board_override: Option<&str>) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            problems: vec![Problem { key: String::new(), reason: format!("cannot read: {e}") }],
        })?;
        Config::from_toml(&text, &source, board_override)
    }

    /// Validates config text; `source` names it in errors.
    ///
    /// # Errors
    /// Every problem found, each with its key and reason.
    pub fn from_toml(text: &str, source: &str, board_override: Option<&str>) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { source: source.to_owned(), problems };
        let mut table: Table = text.parse().map_err(|e: toml::de::Error| {
            let key = String::new();
            fail(vec![Problem { key, reason: format!("not valid TOML: {}", e.message()) }])
        })?;
        let mut problems = Vec::new();
        let board = match (board_override, table.remove("board")) {
            (Some(b), _) => Some(b.to_owned()),
            (None, Some(Toml::String(b))) => Some(b),
            (None, Some(other)) => {
                problems.push(problem("board", format!("must be a string, got {}", show(&other))));
                None
            }
            (None, None) => None,
        };
        let board = board.unwrap_or_else(|| DEFAULT_BOARD.to_owned());
        let mut cfg = if board_text(&board).is_some() {
            Config::for_board(&board)?
        } else {
            problems.push(unknown_board(&board));
            Config::default()
        };
        apply(&mut cfg, table, &mut problems);
        validate(&cfg, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(problems))
        }
    }

    /// The defaults of a board profile.
    ///
    /// # Errors
    /// An unknown board, or a profile that does not validate.
    pub fn for_board(name: &str) -> Result<Config, ConfigError> {
        board_profile(name).map(|(_, cfg)| cfg)
    }
}

/// A board profile: its `[board]` description and memory model, and its defaults.
///
/// # Errors
/// An unknown board, or a profile that does not validate.
pub fn board_profile(name: &str) -> Result<(Board, Config), ConfigError> {
    {
        let source = format!("board {name}");
        let Some(text) = board_text(name) else {
            return Err(ConfigError { source, problems: vec![unknown_board(name)] });
        };
        let mut table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            source: source.clone(),
            problems: vec![problem("", format!("not valid TOML: {}", e.message()))],
        })?;
        let mut problems = Vec::new();
        let mut board = Board { name: name.to_owned(), ..Board::default() };
        match table.remove("board") {
            Some(meta) => board_meta(meta, &mut board, &mut problems),
            None => problems.push(problem("board", "a board profile needs a [board] table")),
        }
        let mut cfg = Config { board: name.to_owned(), ..Config::default() };
        apply(&mut cfg, table, &mut problems);
        validate(&cfg, &mut problems);
        if problems.is_empty() {
            Ok((board, cfg))
        } else {
            Err(ConfigError { source, problems })
        }
    }
}

impl Config {
    /// The sections of `new` that a reload cannot apply: they take a restart.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.mqtt != new.mqtt {
            keys.push("[mqtt]");
        }
        if self.tls.is_some() != new.tls.is_some() {
            keys.push("[tls] on or off");
        }
        keys
    }

    /// `new` as it applies on a reload: everything but the parts that take a
    /// restart, which stay as they run.
    pub fn reloaded(&self, new: Config) -> Config {
        let tls = if self.tls.is_some() == new.tls.is_some() { new.tls.clone() } else { self.tls.clone() };
        Config { listen: self.listen, mqtt: self.mqtt.clone(), tls, ..new }
    }

    /// What a valid config does that an operator should know: logged as
    /// warnings at start and on reload, and printed by `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let a = &self.auth;
        match a.mode {
            AuthMode::None => w.push(format!(
                "auth.mode = \"none\": every client may subscribe to {:?} and publish to {:?} without a token",
                a.subscribe, a.publish
            )),
            AuthMode::Tokens if a.tokens.is_empty() => w.push(
                "auth: no [[auth.tokens]] configured, so every /ws request is refused with 401; add tokens \
                 (`edgepush hash-token` makes their sha256) or set [auth] mode = \"none\""
                    .into(),
            ),
            AuthMode::Tokens => {}
        }
        if a.allowed_origins.as_ref().is_some_and(|o| o.iter().any(|o| o == "*")) {
            w.push(
                "auth.allowed-origins = [\"*\"]: a web page on any site the user visits may connect \
                 (cross-site WebSocket hijacking)"
                    .into(),
            );
        }
        if self.tls.is_none() && a.mode == AuthMode::Tokens && !self.listen.ip().is_loopback() {
            w.push("no [tls]: tokens travel in clear text on the LAN".into());
        }
        w
    }

    /// The effective config as TOML, with secrets redacted.
    pub fn to_toml_redacted(&self) -> String {
        let mut root = Table::new();
        root.insert("board".into(), self.board.clone().into());
        root.insert("listen".into(), self.listen.to_string().into());
        let m = &self.mqtt;
        let mut mqtt = Table::new();
        mqtt.insert("host".into(), m.host.clone().into());
        mqtt.insert("port".into(), i64::from(m.port).into());
        mqtt.insert("client-id".into(), m.client_id.clone().into());
        mqtt.insert("subscribe".into(), strings(&m.subscribe));
        mqtt.insert("qos".into(), i64::from(m.qos).into());
        if let Some(u) = &m.username {
            mqtt.insert("username".into(), u.clone().into());
        }
        if m.password.is_some() {
            mqtt.insert("password".into(), "<redacted>".into());
        }
        mqtt.insert("keepalive-s".into(), i64::from(m.keepalive_s).into());
        mqtt.insert("reconnect-min-ms".into(), int(m.reconnect_min_ms));
        mqtt.insert("reconnect-max-ms".into(), int(m.reconnect_max_ms));
        root.insert("mqtt".into(), mqtt.into());
        let l = &self.limits;
        let mut limits = Table::new();
        for (k, v) in [
            ("max-connections", l.max_connections as u64),
            ("max-connections-per-ip", l.max_connections_per_ip as u64),
            ("max-filters", u64::from(l.max_filters)),
            ("max-message-bytes", l.max_message_bytes as u64),
            ("outbox-messages", l.outbox_messages as u64),
            ("slow-client-timeout-ms", l.slow_client_timeout_ms),
            ("max-topics", l.max_topics as u64),
            ("history", l.history as u64),
            ("handshake-timeout-ms", l.handshake_timeout_ms),
            ("max-header-bytes", l.max_header_bytes as u64),
            ("messages-per-second", u64::from(l.messages_per_second)),
            ("burst", u64::from(l.burst)),
            ("connections-per-second-per-ip", u64::from(l.connections_per_second_per_ip)),
        ] {
            limits.insert(k.into(), int(v));
        }
        root.insert("limits".into(), limits.into());
        let mut hb = Table::new();
        hb.insert("interval-ms".into(), int(self.heartbeat.interval_ms));
        hb.insert("timeout-ms".into(), int(self.heartbeat.timeout_ms));
        root.insert("heartbeat".into(), hb.into());
        let mut auth = Table::new();
        let a = &self.auth;
        auth.insert("mode".into(), if a.mode == AuthMode::None { "none" } else { "tokens" }.into());
        auth.insert("subscribe".into(), strings(&a.subscribe));
        auth.insert("publish".into(), strings(&a.publish));
        if let Some(o) = &a.allowed_origins {
            auth.insert("allowed-origins".into(), strings(o));
        }
        if !a.tokens.is_empty() {
            let tokens = a.tokens.iter().map(|t| {
                let mut e = Table::new();
                e.insert("name".into(), t.name.clone().into());
                e.insert("sha256".into(), "<redacted>".into());
                e.insert("subscribe".into(), strings(&t.subscribe));
                e.insert("publish".into(), strings(&t.publish));
                Toml::Table(e)
            });
            auth.insert("tokens".into(), Toml::Array(tokens.collect()));
        }
        root.insert("auth".into(), auth.into());
        if let Some(t) = &self.tls {
            let mut tls = Table::new();
            tls.insert("cert".into(), t.cert.display().to_string().into());
            tls.insert("key".into(), t.key.display().to_string().into());
            root.insert("tls".into(), tls.into());
        }
        let mut log = Table::new();
        log.insert("level".into(), self.log.level.to_string().to_lowercase().into());
        root.insert("log".into(), log.into());
        toml::to_string(&root).expect("a TOML table always serializes")
    }
}

/// The embedded profile of a board.
pub fn board_text(name: &str) -> Option<&'static str> {
    BOARDS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn unknown_board(name: &str) -> Problem {
    let known: Vec<&str> = BOARDS.iter().map(|(n, _)| *n).collect();
    problem("board", format!("unknown board {name:?}; known boards: {}", known.join(", ")))
}

fn int(v: u64) -> Toml {
    Toml::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strings(v: &[String]) -> Toml {
    Toml::Array(v.iter().map(|s| Toml::String(s.clone())).collect())
}

fn problem(key: &str, reason: impl Into<String>) -> Problem {
    Problem { key: key.to_owned(), reason: reason.into() }
}

fn show(v: &Toml) -> String {
    match v {
        Toml::String(s) => format!("{s:?}"),
        Toml::Table(_) => "a table".into(),
        Toml::Array(_) => "an array".into(),
        other => other.to_string(),
    }
}

/// Takes typed values out of one table, recording problems under `section.key`.
struct Section<'a> {
    name: &'static str,
    table: Table,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Section<'a> {
    fn key(&self, k: &str) -> String {
        if self.name.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", self.name)
        }
    }

    fn bad(&mut self, k: &str, reason: String) {
        let key = self.key(k);
        self.problems.push(Problem { key, reason });
    }

    /// An integer in `min..=max`, stored into `slot` when valid.
    fn int<T: TryFrom<i64>>(&mut self, k: &str, min: i64, max: i64, slot: &mut T) {
        let Some(v) = self.table.remove(k) else { return };
        match v {
            Toml::Integer(i) if (min..=max).contains(&i) => match T::try_from(i) {
                Ok(x) => *slot = x,
                Err(_) => self.bad(k, format!("{i} does not fit")),
            },
            other => self.bad(k, format!("must be an integer from {min} to {max}, got {}", show(&other))),
        }
    }

    fn string(&mut self, k: &str, slot: &mut String) {
        let mut o = None;
        self.opt_string(k, &mut o);
        if let Some(s) = o {
            *slot = s;
        }
    }

    fn opt_string(&mut self, k: &str, slot: &mut Option<String>) {
        match self.table.remove(k) {
            None => {}
            Some(Toml::String(s)) => *slot = Some(s),
            Some(other) => self.bad(k, format!("must be a string, got {}", show(&other))),
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
    fn origins(&mut self, slot: &mut Option<Vec<String>>) {
        let k = "allowed-origins";
        let Some(v) = self.table.remove(k) else { return };
        let Toml::Array(items) = v else {
            return self
                .bad(k, format!("must be a list of origins such as \"https://dash.lan:8443\", got {}", show(&v)));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Toml::String(o) if o == "*" => out.push(o),
                Toml::String(o) => match crate::listener::origin::normalize(&o) {
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
    fn tokens(&mut self, slot: &mut Vec<Token>) {
        let Some(v) = self.table.remove("tokens") else { return };
        let Toml::Array(items) = v else {
            return self.bad("tokens", format!("must be an array of tables ([[auth.tokens]]), got {}", show(&v)));
        };
        // Well-formed hashes only: a malformed one is reported as such, not
        // as the same as another malformed one.
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("{}.tokens[{i}]", self.name);
            let Toml::Table(table) = item else {
                self.problems.push(problem(&key, format!("must be a table, got {}", show(&item))));
                continue;
            };
            let before = self.problems.len();
            let mut s = Section { name: "", table, problems: self.problems };
            let mut t = Token { name: String::new(), sha256: [0; 32], subscribe: vec![], publish: vec![] };
            let mut sha = None;
            let mut hash = None;
            s.string("name", &mut t.name);
            s.opt_string("sha256", &mut sha);
            s.filters("subscribe", true, &mut t.subscribe);
            s.filters("publish", true, &mut t.publish);
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
                    self.problems.push(problem(&format!("{key}.sha256"), "is the same as another token's".to_string()));
                }
                hashes.push(h);
            }
            slot.push(t);
        }
    }

    fn sub(&mut self, k: &'static str) -> Section<'_> {
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
    fn finish(self) {
        for k in self.table.keys() {
            let key = if self.name.is_empty() { k.clone() } else { format!("{}.{k}", self.name) };
            self.problems.push(Problem { key, reason: "unknown key".into() });
        }
    }
}

const MAX_MS: i64 = 24 * 3600 * 1000;

fn apply(cfg: &mut Config, table: Table, problems: &mut Vec<Problem>) {
    let mut root = Section { name: "", table, problems };
    if let Some(v) = root.table.remove("listen") {
        match v {
            Toml::String(s) => match s.parse::<SocketAddr>() {
                Ok(a) => cfg.listen = a,
                Err(_) => root.bad("listen", format!("must be an address such as \"0.0.0.0:8080\", got {s:?}")),
            },
            other => root.bad("listen", format!("must be a string, got {}", show(&other))),
        }
    }
    {
        let mut s = root.sub("mqtt");
        let m = &mut cfg.mqtt;
        s.string("host", &mut m.host);
        s.int("port", 1, 65535, &mut m.port);
        s.string("client-id", &mut m.client_id);
        s.filters("subscribe", false, &mut m.subscribe);
        s.int("qos", 0, 2, &mut m.qos);
        s.opt_string("username", &mut m.username);
        let mut pw = None;
        s.opt_string("password", &mut pw);
        if let Some(p) = pw {
            m.password = Some(Secret(p));
        }
        s.int("keepalive-s", 5, 3600, &mut m.keepalive_s);
        s.int("reconnect-min-ms", 10, MAX_MS, &mut m.reconnect_min_ms);
        s.int("reconnect-max-ms", 10, MAX_MS, &mut m.reconnect_max_ms);
        s.finish();
    }
    {
        let mut s = root.sub("limits");
        let l = &mut cfg.limits;
        s.int("max-connections", 1, 1_000_000, &mut l.max_connections);
        s.int("max-connections-per-ip", 1, 1_000_000, &mut l.max_connections_per_ip);
        s.int("max-filters", 1, 65535, &mut l.max_filters);
        s.int("max-message-bytes", 64, 16 << 20, &mut l.max_message_bytes);
        s.int("outbox-messages", 1, 1 << 20, &mut l.outbox_messages);
        s.int("slow-client-timeout-ms", 1, MAX_MS, &mut l.slow_client_timeout_ms);
        s.int("max-topics", 1, 1 << 24, &mut l.max_topics);
        s.int("history", 0, 1 << 24, &mut l.history);
        s.int("handshake-timeout-ms", 1, MAX_MS, &mut l.handshake_timeout_ms);
        s.int("max-header-bytes", 256, 1 << 20, &mut l.max_header_bytes);
        s.int("messages-per-second", 1, 1_000_000, &mut l.messages_per_second);
        s.int("burst", 1, 1_000_000, &mut l.burst);
        s.int("connections-per-second-per-ip", 1, 1_000_000, &mut l.connections_per_second_per_ip);
        s.finish();
    }
    {
        let mut s = root.sub("heartbeat");
        s.int("interval-ms", 100, MAX_MS, &mut cfg.heartbeat.interval_ms);
        s.int("timeout-ms", 100, MAX_MS, &mut cfg.heartbeat.timeout_ms);
        s.finish();
    }
    {
        let mut s = root.sub("auth");
        let mut mode = None;
        s.opt_string("mode", &mut mode);
        match mode.as_deref() {
            None => {}
            Some("none") => cfg.auth.mode = AuthMode::None,
            Some("tokens") => cfg.auth.mode = AuthMode::Tokens,
            Some(other) => s.bad("mode", format!("must be \"tokens\" or \"none\", got {other:?}")),
        }
        s.filters("subscribe", true, &mut cfg.auth.subscribe);
        s.filters("publish", true, &mut cfg.auth.publish);
        s.origins(&mut cfg.auth.allowed_origins);
        s.tokens(&mut cfg.auth.tokens);
        s.finish();
    }
    match root.table.remove("tls") {
        None => {}
        Some(Toml::Table(table)) => {
            let mut s = Section { name: "tls", table, problems: root.problems };
            let (mut cert, mut key) = (None, None);
            s.opt_string("cert", &mut cert);
            s.opt_string("key", &mut key);
            for (k, v) in [("cert", &cert), ("key", &key)] {
                if v.is_none() {
                    s.bad(k, "is required: a PEM file".into());
                }
            }
            if let (Some(cert), Some(key)) = (cert, key) {
                let tls = Tls { cert: cert.into(), key: key.into() };
                match crate::config::tls::server_config(&tls) {
                    Ok(_) => cfg.tls = Some(tls),
                    Err((k, reason)) => s.bad(k, reason),
                }
            }
            s.finish();
        }
        // Recorded, and the rest of the file is still checked.
        Some(other) => root.bad("tls", format!("must be a table, got {}", show(&other))),
    }
    {
        let mut s = root.sub("log");
        let mut level = None;
        s.opt_string("level", &mut level);
        if let Some(l) = level {
            match l.parse::<log::LevelFilter>() {
                Ok(f) => cfg.log.level = f,
                Err(_) => s.bad("level", format!("must be one of off, error, warn, info, debug, trace; got {l:?}")),
            }
        }
        s.finish();
    }
    root.finish();
}

fn board_meta(meta: Toml, b: &mut Board, problems: &mut Vec<Problem>) {
    let Toml::Table(table) = meta else {
        problems.push(problem("board", "must be a table in a board profile"));
        return;
    };
    let mut s = Section { name: "board", table, problems };
    s.string("description", &mut b.description);
    s.string("target", &mut b.target);
    s.int("ram-mb", 64, 1 << 20, &mut b.ram_mb);
    s.int("budget-percent", 1, 90, &mut b.budget_percent);
    {
        let mut m = s.sub("memory-model");
        let model = &mut b.model;
        m.name = "board.memory-model";
        let big = 1 << 30;
        m.int("base-kib", 1, big, &mut model.base_kib);
        m.int("connection-idle-bytes", 1, big, &mut model.connection_idle_bytes);
        m.int("frame-bytes", 1, big, &mut model.frame_bytes);
        m.int("outbox-entry-bytes", 1, big, &mut model.outbox_entry_bytes);
        m.int("filter-bytes", 1, big, &mut model.filter_bytes);
        m.int("topic-bytes", 1, big, &mut model.topic_bytes);
        m.int("history-entry-bytes", 1, big, &mut model.history_entry_bytes);
        m.finish();
    }
    s.finish();
    for (key, missing) in [
        ("board.target", b.target.is_empty()),
        ("board.ram-mb", b.ram_mb == 0),
        ("board.budget-percent", b.budget_percent == 0),
        ("board.memory-model", b.model == MemoryModel::default()),
    ] {
        if missing {
            problems.push(problem(key, "is required in a board profile"));
        }
    }
}

/// Rules across keys.
fn validate(cfg: &Config, problems: &mut Vec<Problem>) {
    if cfg.mqtt.host.is_empty() {
        problems.push(problem("mqtt.host", "must not be empty"));
    }
    let id = &cfg.mqtt.client_id;
    if id.is_empty() || id.len() > 65535 {
        problems.push(problem("mqtt.client-id", "must be 1 to 65535 bytes"));
    }
    if cfg.mqtt.password.is_some() && cfg.mqtt.username.is_none() {
        problems.push(problem("mqtt.password", "is set without mqtt.username"));
    }
    if cfg.mqtt.reconnect_max_ms < cfg.mqtt.reconnect_min_ms {
        problems.push(problem("mqtt.reconnect-max-ms", "must not be below mqtt.reconnect-min-ms"));
    }
    if cfg.limits.max_connections_per_ip > cfg.limits.max_connections {
        problems.push(problem("limits.max-connections-per-ip", "must not exceed limits.max-connections"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open access said explicitly, as a config without tokens must.
    const OPEN: &str = "\n[auth]\nmode = \"none\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{text}{OPEN}"), "t.toml", None)
    }

    fn err(text: &str) -> Vec<(String, String)> {
        let e = load(text).unwrap_err();
        e.problems.into_iter().map(|p| (p.key, p.reason)).collect()
    }

    #[test]
    fn empty_file_gives_the_generic_board_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.board, "generic");
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.mqtt.subscribe, vec!["#".to_string()]);
        assert_eq!(c.mqtt.qos, 1);
        assert!(c.mqtt.client_id.starts_with("edgepush-"));
        assert_eq!(c.heartbeat.interval_ms, 15000);
    }

    #[test]
    fn file_keys_override_the_board() {
        let c = load("[limits]\nmax-connections = 10\nmax-connections-per-ip = 2\n").unwrap();
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.limits.history, 4096);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let p = err(r#"
            listen = "nowhere"
            colour = "blue"
            [mqtt]
            port = 70000
            qos = "one"
            subscribe = ["a/#/b", 3]
            [limits]
            max-connections = 0
            max-conections = 5
            [heartbeat]
            interval-ms = -1
            [log]
            level = "loud"
        "#);
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "listen",
            "colour",
            "mqtt.port",
            "mqtt.qos",
            "mqtt.subscribe[0]",
            "mqtt.subscribe[1]",
            "limits.max-connections",
            "limits.max-conections",
            "heartbeat.interval-ms",
            "log.level",
        ] {
            assert!(keys.contains(&k), "{k} missing from {p:?}");
        }
        let unknown = p.iter().find(|(k, _)| k == "limits.max-conections").unwrap();
        assert_eq!(unknown.1, "unknown key");
        let port = p.iter().find(|(k, _)| k == "mqtt.port").unwrap();
        assert!(port.1.contains("1 to 65535") && port.1.contains("70000"), "{port:?}");
    }

    #[test]
    fn unknown_board_and_bad_types_are_named() {
        let p = err("board = \"toaster\"\n[limits]\nhistory = 1.5\n");
        assert_eq!(p[0].0, "board");
        assert!(p[0].1.contains("toaster") && p[0].1.contains("generic"));
        assert_eq!(p[1].0, "limits.history");
        let p = err("mqtt = 3\n");
        assert_eq!(p, vec![("mqtt".to_string(), "must be a table, got 3".to_string())]);
    }

    #[test]
    fn cross_key_rules() {
        let p = err("[limits]\nmax-connections = 5\nmax-connections-per-ip = 6\n[mqtt]\npassword = \"x\"\n");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["mqtt.password", "limits.max-connections-per-ip"]);
    }

    #[test]
    fn tokens_by_default_open_access_only_when_said_and_tokens_are_checked() {
        let c = Config::from_toml("", "t", None).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Tokens, "no tokens and no mode: every /ws request is refused");
        assert!(c.warnings().iter().any(|w| w.contains("401")), "{:?}", c.warnings());
        let open = load("").unwrap();
        assert_eq!(open.auth.mode, AuthMode::None);
        assert!(open.warnings().iter().any(|w| w.contains("without a token")), "{:?}", open.warnings());
        let hash = crate::hex::encode(&crate::listener::auth::sha256(b"t0ken"));
        let good = format!(
            "[auth]\nallowed-origins = [\"HTTPS://Dash.lan\"]\n[[auth.tokens]]\nname = \"wall\"\nsha256 = \"{hash}\"\nsubscribe = [\"sensors/#\"]\n"
        );
        let c = Config::from_toml(&good, "t", None).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Tokens, "the default once tokens exist");
        assert_eq!(c.auth.tokens[0].subscribe, vec!["sensors/#".to_string()]);
        assert!(c.auth.tokens[0].publish.is_empty(), "publish defaults to none");
        assert_eq!(c.auth.allowed_origins, Some(vec!["https://dash.lan:443".to_string()]));
        // Neither the hash nor anything like it prints.
        assert!(!format!("{c:?}").contains(&hash[..16]));
        assert!(!c.to_toml_redacted().contains(&hash[..16]));
        let p = Config::from_toml(&format!(
            "[auth]\nmode = \"open\"\nallowed-origins = [\"evil\", 3]\n[[auth.tokens]]\nsha256 = \"abc\"\npublish = [\"a/#/b\"]\n\
             [[auth.tokens]]\nname = \"x\"\nsha256 = \"{hash}\"\ncolour = 1\n[[auth.tokens]]\nname = \"x\"\nsha256 = \"{hash}\"\n"
        ), "t", None)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| p.key)
        .collect::<Vec<_>>();
        for k in [
            "auth.mode",
            "auth.allowed-origins[0]",
            "auth.allowed-origins[1]",
            "auth.tokens[0].name",
            "auth.tokens[0].sha256",
            "auth.tokens[0].publish[0]",
            "auth.tokens[1].colour",
            "auth.tokens[2].name",
            "auth.tokens[2].sha256",
        ] {
            assert!(p.iter().any(|x| x == k), "{k} missing from {p:?}");
        }
        let p = err("[tls]\ncert = \"/nonexistent/cert.pem\"\n");
        assert_eq!(p[0].0, "tls.key");
        let p = err("[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
        assert_eq!(p[0].0, "tls.cert");
        assert!(p[0].1.contains("/nonexistent/cert.pem"), "{p:?}");
    }

    #[test]
    fn malformed_token_hashes_are_not_duplicates_of_each_other() {
        let p = Config::from_toml(
            "[[auth.tokens]]\nname = \"a\"\nsha256 = \"abc\"\n[[auth.tokens]]\nname = \"b\"\nsha256 = \"xyz\"\n",
            "t",
            None,
        )
        .unwrap_err()
        .problems;
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["auth.tokens[0].sha256", "auth.tokens[1].sha256"], "{p:?}");
        assert!(p.iter().all(|p| p.reason.contains("must be 64 hex digits")), "{p:?}");
        assert!(!p.iter().any(|p| p.reason.contains("same as another")), "{p:?}");
    }

    #[test]
    fn tls_not_a_table_does_not_hide_later_problems() {
        let p = err("bogus = 1\ntls = 5\n[log]\nlevel = \"loud\"\n");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["tls", "log.level", "bogus"] {
            assert!(keys.contains(&k), "{k} missing from {p:?}");
        }
        let tls = p.iter().find(|(k, _)| k == "tls").unwrap();
        assert_eq!(tls.1, "must be a table, got 5");
        let bogus = p.iter().find(|(k, _)| k == "bogus").unwrap();
        assert_eq!(bogus.1, "unknown key");
    }

    #[test]
    fn invalid_toml_is_one_clear_problem() {
        let e = Config::from_toml("[limits\n", "t.toml", None).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.to_string().starts_with("t.toml: 1 problem"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let c = load("[mqtt]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let out = c.to_toml_redacted();
        assert!(!out.contains("hunter2") && out.contains("<redacted>"), "{out}");
        // The printed config is itself a valid config that loads to the same thing.
        let again = Config::from_toml(&out.replace("<redacted>", "hunter2"), "t", None).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn every_board_profile_validates_and_its_worst_case_fits_its_budget() {
        for (name, _) in BOARDS {
            let (board, cfg) = board_profile(name).unwrap_or_else(|e| panic!("{e}"));
            let worst = board.worst_case_bytes(&cfg.limits);
            let budget = board.budget_bytes();
            eprintln!(
                "{name}: {} MB, target {}, {} connections, worst case {:.1} MiB of a {:.1} MiB budget",
                board.ram_mb,
                board.target,
                cfg.limits.max_connections,
                worst as f64 / 1048576.0,
                budget as f64 / 1048576.0
            );
            assert!(worst <= budget, "{name}: worst case {worst} B exceeds its budget {budget} B");
            assert!(cfg.limits.max_connections_per_ip <= cfg.limits.max_connections, "{name}");
            assert!(["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf", "x86_64-unknown-linux-gnu"]
                .contains(&board.target.as_str()));
            // A config naming the board gets its limits.
            let named = load(&format!("board = \"{name}\"")).unwrap();
            assert_eq!(named.limits, cfg.limits);
        }
    }

    #[test]
    fn the_memory_model_arithmetic() {
        let board = Board {
            name: "t".into(),
            description: String::new(),
            target: String::new(),
            ram_mb: 100,
            budget_percent: 10,
            model: MemoryModel {
                base_kib: 1,
                connection_idle_bytes: 1000,
                frame_bytes: 100,
                outbox_entry_bytes: 10,
                filter_bytes: 5,
                topic_bytes: 7,
                history_entry_bytes: 3,
            },
        };
        let mut l = Config::default().limits;
        l.max_message_bytes = 50;
        l.outbox_messages = 4;
        l.max_filters = 2;
        l.max_connections = 3;
        l.max_topics = 11;
        l.history = 13;
        assert_eq!(board.connection_worst_bytes(&l), 1000 + 50 + 100 + 2 * 4 * 10 + 2 * 5);
        assert_eq!(board.worst_case_bytes(&l), 1024 + 3 * 1240 + 11 * 7 + 13 * 3);
        assert_eq!(board.budget_bytes(), 100 * 1048576 / 10);
    }

    #[test]
    fn a_profile_without_its_board_table_is_refused() {
        let mut problems = Vec::new();
        let mut b = Board::default();
        board_meta(Toml::Table(Table::new()), &mut b, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["board.target", "board.ram-mb", "board.budget-percent", "board.memory-model"]);
    }
}
