//! The `edgepush` binary: parses the command line and calls the library
//! (`edgepush::daemon::run` serves; the rest are in `edgepush::cli`).

use std::process::ExitCode;

use edgepush::cli::{self, EXIT_USAGE};
use edgepush::daemon::{self, RunOptions};

const HELP: &str = "\
edgepush: push MQTT sensor events to WebSocket dashboards

USAGE:
    edgepush run [--config FILE] [--board NAME]
    edgepush check-config [--config FILE] [--board NAME]
    edgepush hash-token < TOKEN
    edgepush watch URL [FILTER...]   (URL: ws://HOST:PORT/ws or wss://...)
    edgepush probe URL [FILTER] [--warn-ms N] [--crit-ms N] [--timeout-ms N]
    edgepush demo [--listen ADDR] [--broker HOST:PORT]
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
    probe         A monitoring check (Nagios, Icinga, monit, HEALTHCHECK): connect
                  to URL, subscribe to FILTER (default '#') until Synced, and a
                  Ping/Pong round trip through the hub. Prints one line with each
                  step's time and perfdata. Exits 0 OK, 1 WARNING (total over
                  --warn-ms), 2 CRITICAL (a step failed, the server's broker link
                  is down, total over --crit-ms, or past --timeout-ms, default
                  10000), 3 UNKNOWN (bad arguments). EDGEPUSH_TOKEN and
                  EDGEPUSH_CA as for watch.
    demo          The whole pipeline on one machine: an embedded MQTT broker (or
                  --broker), a simulated sensor fleet, and the server with its
                  dashboard on 127.0.0.1:8080 (or --listen). Not in gateway builds.

EXIT CODES:
    0 success, 1 runtime failure, 3 watch refused (the HTTP status is printed),
    64 bad arguments, 78 bad config; probe: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
";

fn run_options(args: &[String]) -> Result<RunOptions, String> {
    let mut o = RunOptions::default();
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{HELP}");
        return ExitCode::from(EXIT_USAGE);
    };
    let result = match cmd.as_str() {
        "--help" | "-h" | "help" => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        "--version" | "-V" => {
            println!("edgepush {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        "run" => run_options(rest).map(|o| daemon::run(&o)),
        "check-config" => run_options(rest).map(|o| cli::check_config(&o)),
        "watch" => return cli::watch(rest),
        "probe" => return cli::probe(rest),
        "hash-token" => return cli::hash_token(rest),
        #[cfg(feature = "demo")]
        "demo" => edgepush::demo::run(rest),
        other => Err(format!("unknown command {other:?}")),
    };
    result.unwrap_or_else(|e| {
        eprintln!("edgepush: {e}\n\n{HELP}");
        ExitCode::from(EXIT_USAGE)
    })
}
