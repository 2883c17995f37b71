//! The config file (TOML) and board profiles, validated with every problem
//! reported at once, each naming its key and the reason.
//!
//! Layers, later ones win: built-in defaults, then the board profile
//! (`boards/<name>.toml`, embedded in the binary), then the config file.
//! Every key is declared once, in [`keys`]. Parsing ([`Config::from_toml`])
//! reads no files; [`Config::load`] reads the config file and then the files
//! it names (the TLS certificate and key, the JWT key) once, and keeps what
//! they hold.

pub(crate) mod board;
pub(crate) mod dashboard;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value as Toml};

use crate::config::board::{Board, MemoryModel};
pub use dashboard::Dashboard;
use keys::{problem, show, Section, Top};
pub use keys::{Auth, Heartbeat, Jwt, Limits, Log, Mqtt};

impl Limits {
    /// Request heads (and TLS handshakes) in progress at once: three times
    /// `max-connections`, at least 64, so that a crowd of three times the cap
    /// arriving at once (every dashboard of a site after a restart) is
    /// answered, each with 101 or 503. Past it, a plain listener answers 503
    /// at accept without reading the request; a TLS listener closes.
    pub fn pending_heads(&self) -> usize {
        self.max_connections.saturating_mul(3).max(64)
    }
}

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
    /// `[mqtt]`.
    pub mqtt: Mqtt,
    /// `[limits]`.
    pub limits: Limits,
    /// `[heartbeat]`.
    pub heartbeat: Heartbeat,
    /// `[auth]`.
    pub auth: Auth,
    /// `[tls]`: serve HTTPS and wss instead of HTTP and ws.
    pub tls: Option<Tls>,
    /// `[log]`.
    pub log: Log,
    /// `[dashboard]`: what the built-in page shows.
    pub dashboard: Dashboard,
    /// `[mqtt] ca`, `cert`, `key` as read by [`Config::read_files`].
    pub(crate) mqtt_tls: Option<tls::Client>,
    /// What the file says that an operator should hear about (see [`Config::warnings`]).
    pub(crate) notes: Vec<String>,
}

/// `[tls]`: PEM files, read by [`Config::load`] at start and on every reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// What the files held, once read ([`Config::read_files`]).
    pub(crate) loaded: Option<tls::Loaded>,
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

/// One `[[auth.tokens]]` entry: the token's SHA-256, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// For logs and metrics.
    pub name: String,
    /// The token's SHA-256.
    pub sha256: [u8; 32],
    /// Filters it may subscribe within.
    pub subscribe: Vec<String>,
    /// Topics it may publish to.
    pub publish: Vec<String>,
    /// Connections with this token at once (`max-connections`); past it, 429.
    pub max_connections: Option<usize>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("sha256", &"<redacted>")
            .field("subscribe", &self.subscribe)
            .field("publish", &self.publish)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            board: DEFAULT_BOARD.into(),
            listen: Top::default().listen,
            mqtt: Mqtt::default(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
            auth: Auth::default(),
            tls: None,
            log: Log::default(),
            dashboard: Dashboard::default(),
            mqtt_tls: None,
            notes: Vec::new(),
        }
    }
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
        Config::from_toml(&text, &source, board_override)?.read_files(&source)
    }

    /// Reads the files the config names (`[tls] cert` and `key`, `[auth.jwt]
    /// key`) and keeps what they hold, checked: the certificate parses, the
    /// key parses and fits it; the JWT key fits its algorithm.
    /// [`Config::load`] does this; a config made by [`Config::from_toml`]
    /// alone must do it before the server starts.
    ///
    /// # Errors
    /// `tls.cert`, `tls.key`, `auth.jwt.key` or `mqtt.ca`, `mqtt.cert`, `mqtt.key` with the reason, naming the path.
    pub fn read_files(mut self, source: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        if let Some(j) = &mut self.auth.jwt {
            if let Some(alg) = j.algorithm {
                match jwt::read(&j.key.path, alg) {
                    Ok(loaded) => j.key.loaded = Some(loaded),
                    Err(reason) => problems.push(problem("auth.jwt.key", reason)),
                }
            }
        }
        if let Some(t) = &mut self.tls {
            match tls::read(&t.cert, &t.key) {
                Ok(loaded) => t.loaded = Some(loaded),
                Err((k, reason)) => problems.push(problem(&format!("tls.{k}"), reason)),
            }
        }
        let m = &self.mqtt;
        if let Some(ca) = &m.ca {
            let identity = m.cert.as_deref().zip(m.key.as_deref()).map(|(c, k)| (Path::new(c), Path::new(k)));
            match tls::client(Path::new(ca), identity, m.server_name.as_deref()) {
                Ok(loaded) => self.mqtt_tls = Some(loaded),
                Err((k, reason)) => problems.push(problem(&format!("mqtt.{k}"), reason)),
            }
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError { source: source.to_owned(), problems })
        }
    }

    /// Validates config text; `source` names it in errors. Reads no files.
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
        let limits = table.get(Limits::TABLE).and_then(Toml::as_table);
        let both_caps =
            limits.is_some_and(|l| l.contains_key("max-connections") && l.contains_key("max-connections-per-ip"));
        let cap_written = limits.is_some_and(|l| l.contains_key("max-connections"));
        apply(&mut cfg, table, &mut problems);
        // With [tls] and no cap of its own, the board's TLS cap: what fits its budget over TLS.
        if let (Some(_), false, Ok((b, _))) = (&cfg.tls, cap_written, board_profile(&board)) {
            if cfg.limits.max_connections > b.tls_max_connections {
                cfg.limits.max_connections = b.tls_max_connections;
                cfg.notes.push(format!(
                    "[tls]: limits.max-connections is {} (board {board}'s cap with TLS, whose connections \
                     cost more memory); set it to choose",
                    b.tls_max_connections
                ));
            }
        }
        validate(&cfg, &mut problems);
        // The smaller cap binds first; said only when the file set both.
        if both_caps && cfg.limits.max_connections_per_ip > cfg.limits.max_connections {
            cfg.notes.push(format!(
                "limits.max-connections-per-ip ({}) is above limits.max-connections ({}): the global cap binds first",
                cfg.limits.max_connections_per_ip, cfg.limits.max_connections
            ));
        }
        if cfg.limits.proxy_protocol && cfg.limits.trusted_proxies.is_empty() {
            cfg.notes.push(
                "limits.proxy-protocol = true does nothing without limits.trusted-proxies: \
                 a PROXY header is read only from a trusted proxy"
                    .into(),
            );
        }
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
        Config { listen: self.listen, mqtt: self.mqtt.clone(), mqtt_tls: self.mqtt_tls.clone(), tls, ..new }
    }

    /// What a valid config does that an operator should know: logged as
    /// warnings at start and on reload, and printed by `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.notes.clone();
        let a = &self.auth;
        match a.mode {
            AuthMode::None => w.push(format!(
                "auth.mode = \"none\": every client may subscribe to {:?} and publish to {:?} without a token",
                a.subscribe, a.publish
            )),
            AuthMode::Tokens if a.tokens.is_empty() && a.jwt.is_none() => w.push(
                "auth: no [[auth.tokens]] configured, so every /ws request is refused with 401; add tokens \
                 (`edgepush hash-token` makes their sha256) or set [auth] mode = \"none\""
                    .into(),
            ),
            AuthMode::Tokens => {}
        }
        if a.mode == AuthMode::None && a.jwt.is_some() {
            w.push("auth.jwt is ignored with auth.mode = \"none\": credentials are not checked".into());
        }
        if a.allowed_origins.as_ref().is_some_and(|o| o.iter().any(|o| o == "*")) {
            w.push(
                "auth.allowed-origins = [\"*\"]: a web page on any site the user visits may connect \
                 (cross-site WebSocket hijacking)"
                    .into(),
            );
        }
        let m = &self.mqtt;
        let local = m.host == "localhost" || m.host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
        if m.password.is_some() && m.ca.is_none() && !local {
            w.push(format!("no mqtt.ca: the MQTT password travels in clear text to {}", m.host));
        }
        if !self.mqtt.clean_session && self.mqtt.qos == 0 {
            w.push(
                "mqtt.clean-session = false with mqtt.qos = 0: the broker queues no QoS 0 messages while \
                 the link is down"
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
        Top { listen: self.listen }.render(&mut root);
        let mut section = |name: &str, render: &dyn Fn(&mut Table)| {
            let mut t = Table::new();
            render(&mut t);
            root.insert(name.into(), t.into());
        };
        section(Mqtt::TABLE, &|t| self.mqtt.render(t));
        section(Limits::TABLE, &|t| self.limits.render(t));
        section(Heartbeat::TABLE, &|t| self.heartbeat.render(t));
        section(Auth::TABLE, &|t| self.auth.render(t));
        if let Some(tls) = &self.tls {
            section("tls", &|t| {
                t.insert("cert".into(), tls.cert.display().to_string().into());
                t.insert("key".into(), tls.key.display().to_string().into());
            });
        }
        section(Log::TABLE, &|t| self.log.render(t));
        if let Some(d) = self.dashboard.render() {
            root.insert("dashboard".into(), d);
        }
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

fn apply(cfg: &mut Config, table: Table, problems: &mut Vec<Problem>) {
    let mut root = Section { name: "", table, problems };
    let mut top = Top { listen: cfg.listen };
    top.apply(&mut root);
    cfg.listen = top.listen;
    section(&mut root, Mqtt::TABLE, |s| cfg.mqtt.apply(s));
    section(&mut root, Limits::TABLE, |s| cfg.limits.apply(s));
    section(&mut root, Heartbeat::TABLE, |s| cfg.heartbeat.apply(s));
    section(&mut root, Auth::TABLE, |s| cfg.auth.apply(s));
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
                cfg.tls = Some(Tls { cert: cert.into(), key: key.into(), loaded: None });
            }
            s.finish();
        }
        // Recorded, and the rest of the file is still checked.
        Some(other) => root.bad("tls", format!("must be a table, got {}", show(&other))),
    }
    section(&mut root, Log::TABLE, |s| cfg.log.apply(s));
    if let Some(d) = root.table.remove("dashboard") {
        cfg.dashboard = dashboard::parse(d, root.problems);
    }
    root.finish();
}

/// Applies the sub-table `name` of `root` (if any) and reports its unknown keys.
fn section(root: &mut Section<'_>, name: &'static str, apply: impl FnOnce(&mut Section<'_>)) {
    let mut s = root.sub(name);
    apply(&mut s);
    s.finish();
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
    s.int("tls-max-connections", 1, 1_000_000, &mut b.tls_max_connections);
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
        m.int("tls-connection-bytes", 1, big, &mut model.tls_connection_bytes);
        m.finish();
    }
    s.finish();
    for (key, missing) in [
        ("board.target", b.target.is_empty()),
        ("board.ram-mb", b.ram_mb == 0),
        ("board.budget-percent", b.budget_percent == 0),
        ("board.tls-max-connections", b.tls_max_connections == 0),
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
    let m = &cfg.mqtt;
    match (&m.cert, &m.key) {
        (Some(_), None) => {
            problems.push(problem("mqtt.key", "is required with mqtt.cert: the client certificate's key"))
        }
        (None, Some(_)) => {
            problems.push(problem("mqtt.cert", "is required with mqtt.key: the certificate the key belongs to"))
        }
        _ => {}
    }
    if m.ca.is_none() {
        for (k, set) in [
            ("mqtt.cert", m.cert.is_some()),
            ("mqtt.key", m.key.is_some()),
            ("mqtt.server-name", m.server_name.is_some()),
        ] {
            if set {
                problems.push(problem(
                    k,
                    "is set without mqtt.ca: TLS to the broker needs the CA that signed its certificate",
                ));
            }
        }
    }
    if let Some(n) = &m.server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            problems.push(problem("mqtt.server-name", format!("must be a DNS name or an IP address, got {n:?}")));
        }
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
        assert_eq!(keys, vec!["mqtt.password"]);
    }

    #[test]
    fn a_per_address_cap_above_the_global_one_is_no_error() {
        // Written alone, the global cap is no mistake about a key the user never wrote.
        let c = load("[limits]\nmax-connections = 16\n").unwrap();
        assert_eq!((c.limits.max_connections, c.limits.max_connections_per_ip), (16, 64));
        assert!(c.warnings().iter().all(|w| !w.contains("max-connections")), "{:?}", c.warnings());
        // Both written, the per-address one higher: valid, and said.
        let c = load("[limits]\nmax-connections = 16\nmax-connections-per-ip = 32\n").unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("limits.max-connections-per-ip (32)")), "{:?}", c.warnings());
    }

    #[test]
    fn trusted_proxies_each_mistake_named_by_index() {
        let c =
            load("[limits]\ntrusted-proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\"]\nproxy-protocol = true\n")
                .unwrap();
        let shown: Vec<String> = c.limits.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        assert!(c.limits.proxy_protocol);
        assert!(c.warnings().iter().all(|w| !w.contains("proxy-protocol")), "{:?}", c.warnings());
        let p = err("[limits]\ntrusted-proxies = [\"127.0.0.1\", \"10.0.0.0/33\", 7, \"proxy.lan\"]\nproxy-protocol = \"yes\"\n");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.trusted-proxies[1]",
                "limits.trusted-proxies[2]",
                "limits.trusted-proxies[3]",
                "limits.proxy-protocol"
            ]
        );
        assert!(p[1].1.contains("must be a string, got 7"), "{p:?}");
        assert!(p[2].1.contains("\"proxy.lan\""), "{p:?}");
        let p = err("[limits]\ntrusted-proxies = \"127.0.0.1\"\n");
        assert_eq!(p[0].0, "limits.trusted-proxies");
        // PROXY headers without a trusted proxy: valid, and said.
        let c = load("[limits]\nproxy-protocol = true\n").unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("limits.proxy-protocol")), "{:?}", c.warnings());
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
        // Parsing reads no files: the paths are checked when they are read.
        let text = "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n";
        let parsed = load(text).unwrap();
        assert!(parsed.tls.as_ref().is_some_and(|t| t.loaded.is_none()));
        let e = parsed.read_files("t.toml").unwrap_err();
        assert_eq!(e.problems[0].key, "tls.cert");
        assert!(e.problems[0].reason.contains("/nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn the_broker_link_tls_and_session_keys() {
        let c = load("").unwrap();
        assert!(c.mqtt.clean_session && c.mqtt.ca.is_none(), "a clean session, plain TCP by default");
        let c = load("[mqtt]\nclean-session = false\nca = \"/x/ca.pem\"\nserver-name = \"10.0.0.7\"\n").unwrap();
        assert!(!c.mqtt.clean_session);
        assert!(c.to_toml_redacted().contains("clean-session = false"), "{}", c.to_toml_redacted());
        // Only the keys written, each named.
        let p = err("[mqtt]\ncert = \"c.pem\"\nclean-session = \"no\"\n");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["mqtt.clean-session", "mqtt.key", "mqtt.cert"], "{p:?}");
        assert!(p[1].1.contains("mqtt.cert") && p[2].1.contains("without mqtt.ca"), "{p:?}");
        let p = err("[mqtt]\nca = \"ca.pem\"\nkey = \"k.pem\"\nserver-name = \"no such name\"\n");
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["mqtt.cert", "mqtt.server-name"], "{p:?}");
        // The files are read by read_files, their mistakes named under [mqtt].
        let e = load("[mqtt]\nca = \"/nonexistent/ca.pem\"\n").unwrap().read_files("t.toml").unwrap_err();
        assert_eq!(e.problems[0].key, "mqtt.ca");
        assert!(e.problems[0].reason.contains("/nonexistent/ca.pem"), "{e}");
        // A password in clear text over the network: said.
        let c = load("[mqtt]\nhost = \"broker.lan\"\nusername = \"u\"\npassword = \"p\"\n").unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("clear text to broker.lan")), "{:?}", c.warnings());
        let c = load("[mqtt]\nusername = \"u\"\npassword = \"p\"\n").unwrap();
        assert!(c.warnings().iter().all(|w| !w.contains("clear text to")), "{:?}", c.warnings());
        // A persistent session at QoS 0 queues nothing: said.
        let c = load("[mqtt]\nclean-session = false\nqos = 0\n").unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("queues no QoS 0")), "{:?}", c.warnings());
    }

    #[test]
    fn a_token_may_cap_its_connections() {
        let hash = crate::hex::encode(&crate::listener::auth::sha256(b"t0ken"));
        let entry = |extra: &str| format!("[[auth.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\n{extra}\n");
        let c = Config::from_toml(&entry("max-connections = 3"), "t", None).unwrap();
        assert_eq!(c.auth.tokens[0].max_connections, Some(3));
        assert!(c.to_toml_redacted().contains("max-connections = 3"));
        assert_eq!(Config::from_toml(&entry(""), "t", None).unwrap().auth.tokens[0].max_connections, None);
        let e = Config::from_toml(&entry("max-connections = 0"), "t", None).unwrap_err();
        assert_eq!(e.problems[0].key, "auth.tokens[0].max-connections", "{e}");
    }

    #[test]
    fn the_jwt_section_needs_its_key_and_algorithm_and_the_key_must_fit_it() {
        let keys = |text: &str| {
            let e = Config::from_toml(text, "t", None).unwrap_err();
            e.problems.into_iter().map(|p| format!("{}: {}", p.key, p.reason)).collect::<Vec<_>>()
        };
        let p = keys("[auth.jwt]\n");
        assert!(
            p[0].starts_with("auth.jwt.key: is required") && p[1].starts_with("auth.jwt.algorithm: is required"),
            "{p:?}"
        );
        assert_eq!(p.len(), 2);
        let p = keys("[auth.jwt]\nkey = \"/k\"\nalgorithm = \"RS256\"\nleeway-s = 9999\ncolour = 1\n");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].starts_with("auth.jwt.algorithm: must be \"HS256\", \"EdDSA\" or \"ES256\", got \"RS256\""),
            "{p:?}"
        );
        assert!(p[1].starts_with("auth.jwt.leeway-s: must be an integer from 0 to 300"), "{p:?}");
        assert_eq!(p[2], "auth.jwt.colour: unknown key");
        assert_eq!(keys("[auth]\njwt = 3\n"), vec!["auth.jwt: must be a table, got 3".to_string()]);

        let dir = std::env::temp_dir().join(format!("edgepush-config-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ed = dir.join("ed.pem");
        std::fs::write(&ed, rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().public_key_pem()).unwrap();
        let text = |alg: &str| {
            format!("[auth.jwt]\nkey = \"{}\"\nalgorithm = \"{alg}\"\naudience = \"edgepush\"\n", ed.display())
        };
        let c = Config::from_toml(&text("EdDSA"), "t", None).unwrap();
        let j = c.auth.jwt.as_ref().unwrap();
        assert_eq!((j.leeway_s, j.audience.as_deref(), j.issuer.as_deref()), (30, Some("edgepush"), None));
        // A JWT key is a way in: no warning that every request is refused.
        assert!(c.warnings().iter().all(|w| !w.contains("401")), "{:?}", c.warnings());
        // check-config shows the section, and what it shows loads again.
        let shown = c.to_toml_redacted();
        assert!(shown.contains("[auth.jwt]") && shown.contains("algorithm = \"EdDSA\""), "{shown}");
        assert_eq!(Config::from_toml(&shown, "t", None).unwrap().auth.jwt, c.auth.jwt);
        let read = c.read_files("t").unwrap();
        assert!(read.auth.jwt.as_ref().unwrap().key.loaded.is_some());
        // Read again (a reload): not equal to the first reading, so it is swapped in.
        let again = Config::from_toml(&text("EdDSA"), "t", None).unwrap().read_files("t").unwrap();
        assert_ne!(again.auth.jwt, read.auth.jwt);
        let e = Config::from_toml(&text("ES256"), "t", None).unwrap().read_files("t").unwrap_err();
        assert_eq!(e.problems[0].key, "auth.jwt.key");
        assert!(e.problems[0].reason.contains("holds an Ed25519 key; algorithm ES256 needs a P-256 key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
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
            let budget = board.budget_bytes();
            // Plain, and with [tls] (every connection and handshake a TLS one, at the TLS cap).
            for tls in [false, true] {
                let mut l = cfg.limits.clone();
                if tls {
                    assert!(board.tls_max_connections <= l.max_connections, "{name}");
                    l.max_connections = board.tls_max_connections;
                }
                let worst = board.worst_case_bytes(&l, tls);
                eprintln!(
                    "{name}: {} MB, target {}, {} connections, tls {tls}: worst case {:.1} MiB of a {:.1} MiB budget",
                    board.ram_mb,
                    board.target,
                    l.max_connections,
                    worst as f64 / 1048576.0,
                    budget as f64 / 1048576.0
                );
                assert!(worst <= budget, "{name}, tls {tls}: worst case {worst} B exceeds its budget {budget} B");
            }
            assert!(board.model.tls_connection_bytes > 0, "{name}: the TLS cost is in the model");
            assert!(cfg.limits.max_connections_per_ip <= cfg.limits.max_connections, "{name}");
            assert!(["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf", "x86_64-unknown-linux-gnu"]
                .contains(&board.target.as_str()));
            // A config naming the board gets its limits; with [tls], its TLS cap,
            // unless the config sets max-connections itself.
            let named = load(&format!("board = \"{name}\"")).unwrap();
            assert_eq!(named.limits, cfg.limits);
            let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
            let named = load(&format!("board = \"{name}\"\n{tls}")).unwrap();
            assert_eq!(named.limits.max_connections, board.tls_max_connections, "{name}");
            assert!(named.warnings().iter().any(|w| w.contains("board") && w.contains("TLS")), "{name}");
            let own = load(&format!("board = \"{name}\"\n[limits]\nmax-connections = 999\n{tls}")).unwrap();
            assert_eq!(own.limits.max_connections, 999);
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
            tls_max_connections: 2,
            model: MemoryModel {
                base_kib: 1,
                connection_idle_bytes: 1000,
                frame_bytes: 100,
                outbox_entry_bytes: 10,
                filter_bytes: 5,
                topic_bytes: 7,
                history_entry_bytes: 3,
                tls_connection_bytes: 17,
            },
        };
        let mut l = Config::default().limits;
        l.max_message_bytes = 50;
        l.outbox_messages = 4;
        l.max_filters = 2;
        l.max_connections = 3;
        l.max_topics = 11;
        l.history = 13;
        assert_eq!(board.connection_worst_bytes(&l, false), 1000 + 50 + 100 + 2 * 4 * 10 + 2 * 5);
        assert_eq!(board.connection_worst_bytes(&l, true), 1240 + 17 + board::TLS_BUFFER_BYTES);
        l.max_header_bytes = 300;
        assert_eq!(l.pending_heads(), 64);
        assert_eq!(board.worst_case_bytes(&l, false), 1024 + 3 * 1240 + 64 * (300 + 1024) + 11 * 7 + 13 * 3);
        let tls_conn = 1240 + 17 + board::TLS_BUFFER_BYTES;
        let tls_head = 300 + 1024 + 17 + 18437;
        assert_eq!(board.worst_case_bytes(&l, true), 1024 + 3 * tls_conn + 64 * tls_head + 11 * 7 + 13 * 3);
        l.max_connections = 100;
        assert_eq!(l.pending_heads(), 300);
        assert_eq!(board.budget_bytes(), 100 * 1048576 / 10);
    }

    #[test]
    fn a_profile_without_its_board_table_is_refused() {
        let mut problems = Vec::new();
        let mut b = Board::default();
        board_meta(Toml::Table(Table::new()), &mut b, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "board.target",
                "board.ram-mb",
                "board.budget-percent",
                "board.tls-max-connections",
                "board.memory-model"
            ]
        );
    }
}
