//! The daemon: `edgepush run` ([`run`]): load the config, start the pipeline
//! (`start.rs`: bridge, hub, executor threads, the listener), serve until a
//! signal, reload on SIGHUP, tell systemd (`systemd.rs`), log in journald's
//! format (`logging.rs`), give memory back after crowds (`memory.rs`), raise
//! the descriptor limit and warn when it is short (`fds.rs`), stop.

mod fds;
pub(crate) mod logging;
mod memory;
mod start;
pub(crate) mod systemd;

pub use start::{start, start_on, Running};

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, ConfigError};

/// EX_CONFIG: bad config file.
pub const EXIT_CONFIG: u8 = 78;

/// What `edgepush run` was given.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--config FILE`; none: the board's defaults.
    pub config: Option<PathBuf>,
    /// `--board NAME`.
    pub board: Option<String>,
}

/// Loads the config `edgepush run` and `check-config` were pointed at.
///
/// # Errors
/// Every problem of the file, each with its key.
pub fn load(o: &RunOptions) -> Result<Config, ConfigError> {
    match &o.config {
        Some(path) => Config::load(path, o.board.as_deref()),
        None => Config::from_toml("", "defaults", o.board.as_deref()),
    }
}

/// `edgepush run`: serves until SIGTERM or SIGINT; exit 78 on a bad config.
pub fn run(o: &RunOptions) -> ExitCode {
    // First, while the process has one thread: take the socket systemd may pass.
    let activated = systemd::activated_listener();
    let cfg = match load(o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgepush: bad config: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(cfg.log.level);
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
/// re-reads the config through `reload` (when there is one); SIGUSR1 drains
/// the connections (closes each with 1001 over `drain-spread-ms`). Tells systemd
/// (when it is the parent) about readiness, reloads and stopping, and pings
/// its watchdog. `started` runs once it listens; `stopping` before the shutdown.
pub(crate) fn serve(
    cfg: Config,
    listener: Option<std::net::TcpListener>,
    reload: Option<&dyn Fn() -> Result<Config, ConfigError>>,
    stopping: impl FnOnce(),
    started: impl FnOnce(std::net::SocketAddr),
) -> ExitCode {
    use async_signal::{Signal, Signals};
    // Take the signals before anything starts, so none is lost to the default action.
    let signals = match Signals::new([Signal::Term, Signal::Int, Signal::Hup, Signal::Usr1]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = systemd::Notifier::from_env();
    let activated = listener.is_some();
    let started_at = std::time::Instant::now();
    // Before listening: the soft descriptor limit up to the hard one, and a
    // warning when even that is short of what the config needs.
    fds::check(&cfg);
    let running = match listener {
        Some(l) => start_on(&cfg, l, 0),
        None => start(&cfg, 0),
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
    if let Some(period) = systemd::watchdog_timeout() {
        // Ping at half the period systemd allows, as sd_watchdog_enabled(3) advises.
        let notifier = systemd::Notifier::from_env();
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
            Some(Ok(Signal::Usr1)) => {
                running.drain(std::time::Duration::from_millis(cfg.limits.drain_spread_ms));
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
fn reload_config(current: Config, new: Result<Config, ConfigError>, running: &Running) -> Config {
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
            if next.limits.max_connections > current.limits.max_connections {
                fds::check(&next);
            }
            logging::set_level(next.log.level);
            log::info!(
                "reload: config applied (limits, heartbeat, auth, origins, TLS certificate, log level, dashboard)"
            );
            next
        }
    }
}
