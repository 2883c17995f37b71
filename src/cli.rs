//! The commands beside `run`: `check-config`, `hash-token`, `watch` and `probe`.
//! (`run` is [`crate::daemon::run`], `demo` is `demo::run`, feature `demo`.)

use std::process::ExitCode;
use std::time::Duration;

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

/// `edgepush probe`'s exit codes: the monitoring-plugins convention.
pub const PROBE_OK: u8 = 0;
pub const PROBE_WARNING: u8 = 1;
pub const PROBE_CRITICAL: u8 = 2;
pub const PROBE_UNKNOWN: u8 = 3;

/// The probe's whole run, when `--timeout-ms` is not given.
const PROBE_TIMEOUT_MS: u64 = 10_000;

/// What `edgepush probe` was given.
#[derive(Debug, PartialEq, Eq)]
struct ProbeArgs {
    url: String,
    filter: String,
    warn: Option<Duration>,
    crit: Option<Duration>,
    timeout: Duration,
}

fn probe_args(args: &[String]) -> Result<ProbeArgs, String> {
    let mut positional = Vec::new();
    let (mut warn, mut crit, mut timeout) = (None, None, Duration::from_millis(PROBE_TIMEOUT_MS));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let mut ms = |name: &str| -> Result<Duration, String> {
            let v = match &inline {
                Some(v) => v.clone(),
                None => it.next().ok_or(format!("{name} needs a number of milliseconds"))?.clone(),
            };
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name}: {v:?} is not a number of milliseconds"))
        };
        match name {
            "--warn-ms" => warn = Some(ms(name)?),
            "--crit-ms" => crit = Some(ms(name)?),
            "--timeout-ms" => {
                timeout = ms(name)?;
                if timeout.is_zero() {
                    return Err("--timeout-ms: must be above 0".into());
                }
            }
            other if other.starts_with('-') && other.len() > 1 => return Err(format!("unknown option {other:?}")),
            _ => positional.push(a.clone()),
        }
    }
    let mut positional = positional.into_iter();
    let url = positional.next().ok_or("needs a URL such as ws://127.0.0.1:8080/ws")?;
    let filter = positional.next().unwrap_or_else(|| "#".to_owned());
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra:?} (one URL and at most one FILTER)"));
    }
    check_ws_url(&url)?;
    edgepush_protocol::topic::validate_filter(&filter).map_err(|e| format!("FILTER {filter:?}: {e}"))?;
    Ok(ProbeArgs { url, filter, warn, crit, timeout })
}

/// A `ws://` or `wss://` URL with a host and a valid form.
fn check_ws_url(url: &str) -> Result<(), String> {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    let rest = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://"));
    let host = rest.map(|r| &r[..r.find(['/', '?']).unwrap_or(r.len())]);
    match host {
        Some(h) if !h.is_empty() && url.into_client_request().is_ok() => Ok(()),
        _ => Err(format!("bad URL {url:?}: expected ws://HOST:PORT/ws or wss://HOST:PORT/ws")),
    }
}

/// Milliseconds with one decimal, rounded down (integer arithmetic: float
/// formatting with a precision would cost the binary kilobytes).
fn ms(d: Duration) -> String {
    let tenths = d.as_micros() / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// The probe's one line and its exit code.
fn probe_verdict(r: &edgepush_client::ProbeReport, warn: Option<Duration>, crit: Option<Duration>) -> (u8, String) {
    let times: Vec<String> = r.steps.iter().map(|(step, d)| format!("{step} {} ms", ms(*d))).collect();
    let times = times.join(", ");
    let threshold = |t: Option<Duration>| t.map(ms).unwrap_or_default();
    let mut perf: Vec<String> = r.steps.iter().map(|(step, d)| format!("{step}={}ms;;;0", ms(*d))).collect();
    let total = r.total();
    if r.failure.is_none() {
        perf.push(format!("total={}ms;{};{};0", ms(total), threshold(warn), threshold(crit)));
    }
    let (code, text) = if let Some((step, why)) = &r.failure {
        let after = if times.is_empty() { String::new() } else { format!(" (after {times})") };
        (PROBE_CRITICAL, format!("CRITICAL - {step} failed: {why}{after}"))
    } else if r.broker_up == Some(false) {
        (PROBE_CRITICAL, format!("CRITICAL - the server's broker link is down; {times}"))
    } else if let Some(c) = crit.filter(|c| total > *c) {
        (PROBE_CRITICAL, format!("CRITICAL - {times}: total {} ms over --crit-ms {}", ms(total), c.as_millis()))
    } else if let Some(w) = warn.filter(|w| total > *w) {
        (PROBE_WARNING, format!("WARNING - {times}: total {} ms over --warn-ms {}", ms(total), w.as_millis()))
    } else {
        (PROBE_OK, format!("OK - {times}"))
    };
    if perf.is_empty() {
        (code, text)
    } else {
        (code, format!("{text} | {}", perf.join(" ")))
    }
}

/// `edgepush probe URL [FILTER]`: one end-to-end check (connect, subscribe
/// until Synced, a Ping/Pong through the hub), one line on stdout, exit 0 OK,
/// 1 WARNING, 2 CRITICAL, 3 UNKNOWN: a Nagios/Icinga/monit check.
pub fn probe(args: &[String]) -> ExitCode {
    let unknown = |why: String| {
        println!("UNKNOWN - {why}");
        eprintln!("usage: edgepush probe URL [FILTER] [--warn-ms N] [--crit-ms N] [--timeout-ms N] (edgepush --help)");
        ExitCode::from(PROBE_UNKNOWN)
    };
    let a = match probe_args(args) {
        Ok(a) => a,
        Err(why) => return unknown(why),
    };
    logging::init(log::LevelFilter::Error);
    let mut opts = edgepush_client::ConnectOptions::default();
    match std::env::var_os("EDGEPUSH_CA") {
        Some(ca) => match edgepush_client::trusting(std::path::Path::new(&ca)) {
            Ok(tls) => opts.tls = Some(tls),
            Err(e) => return unknown(format!("EDGEPUSH_CA: {e}")),
        },
        None if a.url.starts_with("wss://") => {
            return unknown("wss:// needs EDGEPUSH_CA naming the PEM certificate to trust".into())
        }
        None => {}
    }
    let url = match std::env::var("EDGEPUSH_TOKEN") {
        Ok(token) if !token.is_empty() => edgepush_client::with_token(&a.url, &token),
        _ => a.url.clone(),
    };
    let report = smol::block_on(edgepush_client::probe(&url, &a.filter, &opts, a.timeout));
    let (code, line) = probe_verdict(&report, a.warn, a.crit);
    println!("{line}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepush_client::{ProbeReport, Step};

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn probe_arguments() {
        let a = probe_args(&args("ws://gw:8080/ws")).unwrap();
        assert_eq!((a.filter.as_str(), a.warn, a.crit, a.timeout), ("#", None, None, Duration::from_secs(10)));
        let a = probe_args(&args("--warn-ms 200 wss://gw/ws sensors/# --crit-ms=900 --timeout-ms 3000")).unwrap();
        assert_eq!(a.url, "wss://gw/ws");
        assert_eq!(a.filter, "sensors/#");
        assert_eq!(a.warn, Some(Duration::from_millis(200)));
        assert_eq!(a.crit, Some(Duration::from_millis(900)));
        assert_eq!(a.timeout, Duration::from_secs(3));
        for bad in [
            "",
            "http://gw/ws",
            "ws:///ws",
            "ws://gw/ws a b",
            "ws://gw/ws --warn-ms",
            "ws://gw/ws --warn-ms soon",
            "ws://gw/ws --timeout-ms 0",
            "ws://gw/ws --verbose",
            "ws://gw/ws a/#/b",
        ] {
            assert!(probe_args(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    fn report(steps: &[(Step, u64)], broker_up: bool, failure: Option<(Step, &str)>) -> ProbeReport {
        ProbeReport {
            steps: steps.iter().map(|(s, us)| (*s, Duration::from_micros(*us))).collect(),
            broker_up: Some(broker_up),
            failure: failure.map(|(s, w)| (s, w.to_owned())),
        }
    }

    #[test]
    fn probe_lines_and_exit_codes() {
        let all = [(Step::Connect, 3100), (Step::Synced, 1200), (Step::Ping, 400)];
        let (code, line) = probe_verdict(&report(&all, true, None), None, None);
        assert_eq!(code, PROBE_OK);
        assert_eq!(
            line,
            "OK - connect 3.1 ms, synced 1.2 ms, ping 0.4 ms | connect=3.1ms;;;0 synced=1.2ms;;;0 ping=0.4ms;;;0 total=4.7ms;;;0"
        );
        let (code, line) = probe_verdict(&report(&all, true, None), Some(Duration::ZERO), Some(Duration::from_secs(1)));
        assert_eq!(code, PROBE_WARNING);
        assert!(
            line.starts_with("WARNING - connect 3.1 ms, synced 1.2 ms, ping 0.4 ms: total 4.7 ms over --warn-ms 0 | ")
        );
        assert!(line.ends_with(" total=4.7ms;0.0;1000.0;0"), "{line}");
        let (code, line) =
            probe_verdict(&report(&all, true, None), Some(Duration::ZERO), Some(Duration::from_millis(4)));
        assert_eq!(code, PROBE_CRITICAL);
        assert!(line.starts_with("CRITICAL - ") && line.contains("over --crit-ms 4"), "{line}");
        let (code, line) = probe_verdict(&report(&all, false, None), None, None);
        assert_eq!(code, PROBE_CRITICAL);
        assert!(line.starts_with("CRITICAL - the server's broker link is down; connect 3.1 ms"), "{line}");
        let (code, line) = probe_verdict(&report(&[], false, Some((Step::Connect, "refused"))), None, None);
        assert_eq!((code, line.as_str()), (PROBE_CRITICAL, "CRITICAL - connect failed: refused"));
        let failed = report(&all[..1], true, Some((Step::Synced, "timed out")));
        let (code, line) = probe_verdict(&failed, None, None);
        assert_eq!(code, PROBE_CRITICAL);
        assert_eq!(line, "CRITICAL - synced failed: timed out (after connect 3.1 ms) | connect=3.1ms;;;0");
    }
}
