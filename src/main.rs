//! The `edgepush` binary: parse arguments, set up logging, load the config, run.

use std::io::IsTerminal;
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
    edgepush watch URL [FILTER...]
    edgepush --help | --version

COMMANDS:
    run           Serve: subscribe to the MQTT broker, push events over /ws.
                  Without --config, the board's defaults are used.
    check-config  Validate the config and print the effective one (secrets redacted).
    watch         Connect to a server (ws://HOST:PORT/ws) and print one line per
                  event: `topic seq value`. Filters default to '#'.

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

fn init_logging(level: log::LevelFilter) {
    let mut logger = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("rumqttc", log::LevelFilter::Warn)
        .with_module_level("async_tungstenite", log::LevelFilter::Warn)
        .with_module_level("tungstenite", log::LevelFilter::Warn)
        .with_module_level("polling", log::LevelFilter::Warn)
        .with_module_level("async_io", log::LevelFilter::Warn);
    if !std::io::stderr().is_terminal() {
        logger = logger.without_timestamps();
    }
    let _ = logger.init();
}

fn run(o: &Opts) -> ExitCode {
    let cfg = match load(o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgepush: bad config: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(cfg.log.level);
    // Take the signals before anything starts, so none is lost to the default action.
    let signals = match async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match edgepush::server::start(&cfg, 0) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    let sig = smol::block_on(async {
        use smol::stream::StreamExt;
        let mut signals = signals;
        signals.next().await
    });
    if let Some(Ok(s)) = sig {
        log::info!("{s:?}: shutting down");
    }
    running.shutdown();
    ExitCode::SUCCESS
}

fn check_config(o: &Opts) -> ExitCode {
    match load(o) {
        Ok(cfg) => {
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
    init_logging(log::LevelFilter::Warn);
    match smol::block_on(edgepush::client::watch(url, &filters)) {
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
        other => Err(format!("unknown command {other:?}")),
    };
    result.unwrap_or_else(|e| {
        eprintln!("edgepush: {e}\n\n{HELP}");
        ExitCode::from(EXIT_USAGE)
    })
}
