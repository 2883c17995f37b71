//! The `edgepush` binary: parse arguments, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use edgepush::config::{Config, ConfigError};

/// EX_USAGE: bad command line.
const EXIT_USAGE: u8 = 64;
/// EX_CONFIG: bad config file.
const EXIT_CONFIG: u8 = 78;
/// `watch` was refused at the handshake.
const EXIT_REFUSED: u8 = 3;

const HELP: &str = "\
edgepush: push MQTT sensor events to WebSocket dashboards

USAGE:
    edgepush run [--config FILE] [--board NAME]
    edgepush check-config [--config FILE] [--board NAME]
    edgepush hash-token < TOKEN
    edgepush watch URL [FILTER...]   (URL: ws://HOST:PORT/ws or wss://...)
    edgepush demo [--listen ADDR] [--broker HOST:PORT]
    edgepush bench [OPTIONS]   (edgepush bench --help)
    edgepush --help | --version

COMMANDS:
    run           Serve: subscribe to the MQTT broker, push events over /ws.
                  Without --config, the board's defaults are used.
    check-config  Validate the config and print the effective one (secrets redacted).
    hash-token    Read a token from stdin (one line) and print its SHA-256 in hex,
                  for the sha256 of an [[auth.tokens]] entry.
    watch         Connect to a server (ws://HOST:PORT/ws) and print one line per
                  event: `topic seq value`. Filters default to '#'. A token is
                  taken from EDGEPUSH_TOKEN; for wss://, EDGEPUSH_CA names the
                  PEM certificate (the server's, or its CA) to trust.
    demo          The whole pipeline on one machine: an embedded MQTT broker (or
                  --broker), a simulated sensor fleet, and the server with its
                  dashboard on 127.0.0.1:8080 (or --listen). Not in gateway builds.
    bench         The load tool: edgepush against mosquitto's WebSocket listener
                  (or servers you name): delivery, latency, RSS, CPU. Not in
                  gateway builds.

EXIT CODES:
    0 success, 1 runtime failure, 3 watch refused (the HTTP status is printed),
    64 bad arguments, 78 bad config.
";

struct Opts {
    config: Option<PathBuf>,
    board: Option<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts { config: None, board: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => o.config = Some(it.next().ok_or("--config needs a FILE")?.into()),
            "--board" => o.board = Some(it.next().ok_or("--board needs a NAME")?.clone()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn load(o: &Opts) -> Result<Config, ConfigError> {
    match &o.config {
        Some(path) => Config::load(path, o.board.as_deref()),
        None => Config::from_toml("", "defaults", o.board.as_deref()),
    }
}

fn run(o: &Opts) -> ExitCode {
    // First, while the process has one thread: take the socket systemd may pass.
    let activated = edgepush::systemd::activated_listener();
    let cfg = match load(o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgepush: bad config: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    edgepush::logging::init(cfg.log.level);
    let listener = match activated {
        Ok(l) => l,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    serve(cfg, listener, Some(&|| load(o)), || {}, |_| {})
}

/// Runs the server until SIGTERM or SIGINT, then shuts it down; SIGHUP
/// re-reads the config through `reload` (when there is one). Tells systemd
/// (when it is the parent) about readiness, reloads and stopping, and pings
/// its watchdog. `started` runs once it listens; `stopping` before the shutdown.
fn serve(
    cfg: Config,
    listener: Option<std::net::TcpListener>,
    reload: Option<&dyn Fn() -> Result<Config, ConfigError>>,
    stopping: impl FnOnce(),
    started: impl FnOnce(std::net::SocketAddr),
) -> ExitCode {
    use async_signal::{Signal, Signals};
    // Take the signals before anything starts, so none is lost to the default action.
    let signals = match Signals::new([Signal::Term, Signal::Int, Signal::Hup]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = edgepush::systemd::Notifier::from_env();
    let activated = listener.is_some();
    let started_at = std::time::Instant::now();
    let running = match listener {
        Some(l) => edgepush::server::start_on(&cfg, l, 0),
        None => edgepush::server::start(&cfg, 0),
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = running.local_addr();
    if activated {
        log::info!("socket activation: serving {addr} from systemd (listen = {} not bound)", cfg.listen);
    }
    log::debug!("ready in {:?}", started_at.elapsed());
    if let Some(period) = edgepush::systemd::watchdog_timeout() {
        // Ping at half the period systemd allows, as sd_watchdog_enabled(3) advises.
        let notifier = edgepush::systemd::Notifier::from_env();
        running.watchdog(period / 2, move || notifier.watchdog());
        log::info!("systemd watchdog: {period:?}");
    }
    notifier.ready(&format!("serving {addr}"));
    started(addr);
    let mut cfg = cfg;
    let mut signals = signals;
    loop {
        let sig = smol::block_on(async {
            use smol::stream::StreamExt;
            signals.next().await
        });
        match sig {
            Some(Ok(Signal::Hup)) => {
                let Some(reload) = reload else {
                    log::info!("SIGHUP: no config file to re-read");
                    continue;
                };
                notifier.reloading();
                cfg = reload_config(cfg, reload(), &running);
                notifier.ready(&format!("serving {addr}"));
            }
            Some(Ok(s)) => {
                log::info!("{s:?}: shutting down");
                break;
            }
            Some(Err(e)) => {
                log::error!("signal stream failed: {e}; shutting down");
                break;
            }
            None => break,
        }
    }
    notifier.stopping();
    stopping();
    running.shutdown();
    ExitCode::SUCCESS
}

/// Applies a re-read config, or keeps the running one when it is bad.
fn reload_config(current: Config, new: Result<Config, ConfigError>, running: &edgepush::server::Running) -> Config {
    match new {
        Err(e) => {
            log::error!("reload refused, the running config stays in force: {e}");
            current
        }
        Ok(new) => {
            let restart = current.restart_needed(&new);
            if !restart.is_empty() {
                log::warn!(
                    "reload: {} changed; that takes a restart (systemctl restart edgepush)",
                    restart.join(" and ")
                );
            }
            let next = current.reloaded(new);
            if let Err(e) = running.reload(&next) {
                log::error!("reload refused, the running config stays in force: {e}");
                return current;
            }
            edgepush::logging::set_level(next.log.level);
            log::info!("reload: config applied (limits, heartbeat, auth, origins, TLS certificate, log level)");
            next
        }
    }
}

#[cfg(feature = "demo")]
fn demo(args: &[String]) -> Result<ExitCode, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut listen: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("valid");
    let mut broker: Option<(String, u16)> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs HOST:PORT")?;
                listen = v.parse().map_err(|_| format!("--listen: not an address: {v:?}"))?;
            }
            "--broker" => {
                let v = it.next().ok_or("--broker needs HOST:PORT")?;
                let (h, p) = v.rsplit_once(':').ok_or_else(|| format!("--broker: not HOST:PORT: {v:?}"))?;
                let port = p.parse().map_err(|_| format!("--broker: bad port in {v:?}"))?;
                broker = Some((h.to_owned(), port));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    edgepush::logging::init(log::LevelFilter::Info);
    let (host, port) = match broker {
        Some(b) => b,
        None => {
            // An embedded broker on a free loopback port.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port for the embedded broker: {e}"))?
                .port();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            edgepush::demo::start_broker(addr)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::net::TcpStream::connect(addr).is_err() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("the embedded broker did not start on {addr}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            log::info!("demo: embedded MQTT broker on {addr}");
            ("127.0.0.1".to_owned(), port)
        }
    };
    let mut cfg = Config::from_toml("[auth]\nmode = \"none\"\n", "demo", None).map_err(|e| e.to_string())?;
    cfg.listen = listen;
    cfg.mqtt.host = host.clone();
    cfg.mqtt.port = port;
    cfg.mqtt.client_id = format!("edgepush-demo-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = edgepush::demo::start_fleet(host, port, stop.clone());
    let code = serve(
        cfg,
        None,
        None,
        || stop.store(true, Ordering::Relaxed),
        |addr| {
            let shown =
                if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() };
            println!("edgepush demo: dashboard at http://{shown}/  (Ctrl-C to stop)");
        },
    );
    let _ = fleet.join();
    Ok(code)
}

#[cfg(feature = "bench")]
fn bench(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", edgepush::bench::USAGE);
        return ExitCode::SUCCESS;
    }
    let o = match edgepush::bench::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("edgepush bench: {e}\n\n{}", edgepush::bench::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    edgepush::logging::init(log::LevelFilter::Warn);
    match edgepush::bench::run(&o) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgepush bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(o: &Opts) -> ExitCode {
    match load(o) {
        Ok(cfg) => {
            for w in cfg.warnings() {
                eprintln!("edgepush: warning: {w}");
            }
            print!("{}", cfg.to_toml_redacted());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgepush: bad config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn watch(args: &[String]) -> ExitCode {
    let Some(url) = args.first() else {
        eprintln!("edgepush watch: needs a URL such as ws://127.0.0.1:8080/ws\n\n{HELP}");
        return ExitCode::from(EXIT_USAGE);
    };
    let filters: Vec<&str> = if args.len() > 1 { args[1..].iter().map(String::as_str).collect() } else { vec!["#"] };
    edgepush::logging::init(log::LevelFilter::Warn);
    // From the environment, not the command line, where `ps` would show it.
    let url = match std::env::var("EDGEPUSH_TOKEN") {
        Ok(token) if !token.is_empty() => edgepush::client::with_token(url, &token),
        _ => url.clone(),
    };
    let mut opts = edgepush::client::ConnectOptions::default();
    if let Some(ca) = std::env::var_os("EDGEPUSH_CA") {
        match edgepush::client::trusting(std::path::Path::new(&ca)) {
            Ok(tls) => opts.tls = Some(tls),
            Err(e) => {
                eprintln!("edgepush watch: EDGEPUSH_CA: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    match smol::block_on(edgepush::client::watch(&url, &filters, &opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ edgepush::client::ClientError::Refused { .. }) => {
            eprintln!("edgepush watch: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
        Err(e) => {
            eprintln!("edgepush watch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `edgepush hash-token`: the token from stdin (one line; its line end is
/// not part of it), its SHA-256 in hex on stdout. The token is never echoed.
fn hash_token(args: &[String]) -> ExitCode {
    if let Some(a) = args.first() {
        eprintln!("edgepush hash-token: takes no arguments (got {a:?}); the token is read from stdin");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("edgepush hash-token: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let token = line.strip_suffix('\n').unwrap_or(&line);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.trim().is_empty() {
        eprintln!("edgepush hash-token: the token on stdin is empty");
        return ExitCode::from(EXIT_USAGE);
    }
    if token.len() < 16 {
        eprintln!("edgepush hash-token: warning: a token of {} characters is easy to guess; use 16 or more random ones (e.g. from `head -c 24 /dev/urandom | base64`)", token.len());
    }
    println!("{}", edgepush::config::hex(&edgepush::auth::sha256(token.as_bytes())));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{HELP}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = |rest: &[String]| parse_opts(rest);
    let result = match cmd {
        "--help" | "-h" | "help" => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        "--version" | "-V" => {
            println!("edgepush {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        "run" => opts(rest).map(|o| run(&o)),
        "check-config" => opts(rest).map(|o| check_config(&o)),
        "watch" => return watch(rest),
        "hash-token" => return hash_token(rest),
        #[cfg(feature = "demo")]
        "demo" => demo(rest),
        #[cfg(feature = "bench")]
        "bench" => return bench(rest),
        other => Err(format!("unknown command {other:?}")),
    };
    result.unwrap_or_else(|e| {
        eprintln!("edgepush: {e}\n\n{HELP}");
        ExitCode::from(EXIT_USAGE)
    })
}
