//! The commands beside `run`: `check-config`, `hash-token` and `watch`.
//! (`run` is [`crate::daemon::run`], `demo` is `demo::run`, feature `demo`.)

use std::process::ExitCode;

use crate::daemon::{load, logging, RunOptions, EXIT_CONFIG};

/// EX_USAGE: bad command line.
pub const EXIT_USAGE: u8 = 64;
/// `watch` was refused at the handshake.
pub const EXIT_REFUSED: u8 = 3;

/// `edgepush check-config`: the effective config, secrets redacted, and its
/// warnings; exit 78 naming every problem.
pub fn check_config(o: &RunOptions) -> ExitCode {
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

/// `edgepush watch URL [FILTER...]`: one line per event; the token from
/// `EDGEPUSH_TOKEN`, the certificate to trust from `EDGEPUSH_CA`.
pub fn watch(args: &[String]) -> ExitCode {
    let Some(url) = args.first() else {
        eprintln!("edgepush watch: needs a URL such as ws://127.0.0.1:8080/ws");
        return ExitCode::from(EXIT_USAGE);
    };
    let filters: Vec<&str> = if args.len() > 1 { args[1..].iter().map(String::as_str).collect() } else { vec!["#"] };
    logging::init(log::LevelFilter::Warn);
    // From the environment, not the command line, where `ps` would show it.
    let url = match std::env::var("EDGEPUSH_TOKEN") {
        Ok(token) if !token.is_empty() => edgepush_client::with_token(url, &token),
        _ => url.clone(),
    };
    let mut opts = edgepush_client::ConnectOptions::default();
    if let Some(ca) = std::env::var_os("EDGEPUSH_CA") {
        match edgepush_client::trusting(std::path::Path::new(&ca)) {
            Ok(tls) => opts.tls = Some(tls),
            Err(e) => {
                eprintln!("edgepush watch: EDGEPUSH_CA: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    match smol::block_on(edgepush_client::watch(&url, &filters, &opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ edgepush_client::ClientError::Refused { .. }) => {
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
pub fn hash_token(args: &[String]) -> ExitCode {
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
    println!("{}", crate::hex::encode(&crate::listener::auth::sha256(token.as_bytes())));
    ExitCode::SUCCESS
}
