//! Logging: simple_logger's coloured, timestamped lines on a terminal; on
//! anything else (journald, a pipe) one plain line per record with a syslog
//! priority prefix (`<3>` error … `<7>` debug), which journald turns into the
//! entry's priority, so `journalctl -p warning` works. The level can change
//! at runtime (SIGHUP reload).

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Modules whose chatter is held to warnings (or silenced) whatever the level.
const QUIET: &[(&str, LevelFilter)] = &[
    ("rumqttc", LevelFilter::Warn),
    ("async_tungstenite", LevelFilter::Warn),
    ("tungstenite", LevelFilter::Warn),
    ("polling", LevelFilter::Warn),
    ("async_io", LevelFilter::Warn),
    // The demo broker logs its tracing spans through `log`, some at error level.
    ("rumqttd", LevelFilter::Off),
    ("tracing", LevelFilter::Off),
];

struct Logger {
    /// Terminal output; None means the syslog-prefixed format.
    terminal: Option<simple_logger::SimpleLogger>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// The syslog priority journald reads from a `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One record as a journald line: `<6>edgepush::daemon::start: listening on …`.
/// A message of several lines (a config error) keeps its priority on each.
pub fn journal_line(level: Level, target: &str, message: &std::fmt::Arguments<'_>) -> String {
    let p = syslog_priority(level);
    let text = message.to_string();
    let mut out = String::with_capacity(text.len() + target.len() + 8);
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            out.push_str(&format!("<{p}>{target}: {line}\n"));
        } else {
            out.push_str(&format!("<{p}>{line}\n"));
        }
    }
    if text.is_empty() {
        out.push_str(&format!("<{p}>{target}: \n"));
    }
    out
}

fn quiet_level(target: &str) -> Option<LevelFilter> {
    QUIET.iter().find(|(m, _)| target == *m || target.strip_prefix(m).is_some_and(|r| r.starts_with("::"))).map(|q| q.1)
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level() && quiet_level(m.target()).is_none_or(|q| m.level() <= q)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.terminal {
            Some(t) => t.log(record),
            None => {
                // One write per line, so lines from several threads never interleave.
                let line = journal_line(record.level(), record.target(), record.args());
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once per process; later calls only set the level).
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| {
        let terminal = std::io::stderr().is_terminal().then(|| {
            // Filtering happens above; simple_logger only formats.
            simple_logger::SimpleLogger::new().with_level(LevelFilter::Trace)
        });
        Logger { terminal }
    });
    if log::set_logger(logger).is_err() {
        log::debug!("logger already installed");
    }
    set_level(level);
}

/// Changes the level at runtime.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_syslog_priorities() {
        let line = journal_line(Level::Warn, "edgepush::bridge", &format_args!("broker down"));
        assert_eq!(line, "<4>edgepush::bridge: broker down\n");
        let two = journal_line(Level::Error, "edgepush", &format_args!("bad config\n  limits.history: too big"));
        assert_eq!(two, "<3>edgepush: bad config\n<3>  limits.history: too big\n");
        let p: Vec<u8> = [Level::Error, Level::Warn, Level::Info, Level::Debug, Level::Trace]
            .into_iter()
            .map(syslog_priority)
            .collect();
        assert_eq!(p, [3, 4, 6, 7, 7]);
    }

    #[test]
    fn noisy_modules_are_held_to_their_level() {
        assert_eq!(quiet_level("rumqttc::state"), Some(LevelFilter::Warn));
        assert_eq!(quiet_level("rumqttd"), Some(LevelFilter::Off));
        assert_eq!(quiet_level("rumqttcx"), None);
        assert_eq!(quiet_level("edgepush::hub"), None);
    }
}
