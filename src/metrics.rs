//! Counters shared by every part of the server, and their Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 503: the global connection cap.
    Capacity,
    /// 429: the per-address cap.
    PerAddress,
    /// 408 or dropped: the request head took longer than `handshake-timeout-ms`.
    Timeout,
    /// 431: the request head exceeded `max-header-bytes`.
    HeaderTooLarge,
    /// 400, 405, 426: not a valid WebSocket request.
    BadRequest,
    /// The server is shutting down.
    ShuttingDown,
    /// 429: more new connections per second from one address than allowed.
    Rate,
    /// 401: no token, or an unknown one.
    Unauthorized,
    /// 403: an Origin that is not allowed.
    Origin,
    /// Dropped at accept: too many request heads were already pending.
    PendingHeads,
    /// 429: the token's own `max-connections`.
    PerToken,
    /// Dropped: a trusted proxy's PROXY protocol header was malformed.
    ProxyHeader,
}

impl Refusal {
    const ALL: [Refusal; 12] = [
        Refusal::Capacity,
        Refusal::PerAddress,
        Refusal::Timeout,
        Refusal::HeaderTooLarge,
        Refusal::BadRequest,
        Refusal::ShuttingDown,
        Refusal::Rate,
        Refusal::Unauthorized,
        Refusal::Origin,
        Refusal::PendingHeads,
        Refusal::PerToken,
        Refusal::ProxyHeader,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::PerAddress => "per_address",
            Refusal::Timeout => "timeout",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::BadRequest => "bad_request",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Rate => "rate",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Origin => "origin",
            Refusal::PendingHeads => "pending_heads",
            Refusal::PerToken => "per_token",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// Every counter and gauge, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_peak: AtomicU64,
    pub connections_max: AtomicU64,
    pub accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Connections closed with 1008 for sending faster than their bucket allows.
    pub rate_limited: AtomicU64,
    pub messages_sent: AtomicU64,
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub client_messages: AtomicU64,
    pub events_in: AtomicU64,
    pub events_dropped_topics: AtomicU64,
    pub topics: AtomicU64,
    pub lagged: AtomicU64,
    pub evicted: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub protocol_closes: AtomicU64,
    pub broker_up: AtomicBool,
    pub broker_reconnects: AtomicU64,
    pub publishes: AtomicU64,
    /// Connections closed with 1001 at `max-connection-age-ms`.
    pub recycled_age: AtomicU64,
    /// Connections closed with 1001 by SIGUSR1's drain.
    pub recycled_drain: AtomicU64,
    /// `accept` failed for want of a descriptor: the process's limit (EMFILE).
    pub accept_emfile: AtomicU64,
    /// `accept` failed for want of a descriptor: the system's limit (ENFILE).
    pub accept_enfile: AtomicU64,
    started: ProcessStart,
}

impl Metrics {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// A connection closed with 1001 to recycle it: by a drain, or for its age.
    pub fn recycled(&self, drain: bool) {
        Metrics::inc(if drain { &self.recycled_drain } else { &self.recycled_age });
    }

    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// One more open connection; tracks the peak.
    pub fn connection_opened(&self) {
        let now = self.connections.fetch_add(1, Relaxed) + 1;
        self.connections_peak.fetch_max(now, Relaxed);
        Self::inc(&self.accepted);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP edgepush_{name} {help}\n# TYPE edgepush_{name} {kind}\nedgepush_{name} {v}");
        };
        let g = |a: &AtomicU64| a.load(Relaxed);
        put("connections", "gauge", "Open WebSocket connections.", g(&self.connections));
        put("connections_peak", "gauge", "Most WebSocket connections open at once.", g(&self.connections_peak));
        put("connections_max", "gauge", "The configured connection cap.", g(&self.connections_max));
        put("connections_accepted_total", "counter", "WebSocket connections upgraded.", g(&self.accepted));
        put("messages_sent_total", "counter", "ServerMsg values sent.", g(&self.messages_sent));
        put("frames_sent_total", "counter", "Binary WebSocket messages sent.", g(&self.frames_sent));
        put("bytes_sent_total", "counter", "Payload bytes of binary WebSocket messages sent.", g(&self.bytes_sent));
        put("client_messages_total", "counter", "ClientMsg values received.", g(&self.client_messages));
        put("events_in_total", "counter", "Events taken from the broker.", g(&self.events_in));
        put(
            "events_dropped_total",
            "counter",
            "Events dropped because their topic was past max-topics.",
            g(&self.events_dropped_topics),
        );
        put("topics", "gauge", "Topics in the latest-value table.", g(&self.topics));
        put("lagged_total", "counter", "Times a client's outbox overflowed.", g(&self.lagged));
        put("evicted_total", "counter", "Slow clients closed with 1013.", g(&self.evicted));
        put(
            "rate_limited_total",
            "counter",
            "Connections closed with 1008 for exceeding messages-per-second and burst.",
            g(&self.rate_limited),
        );
        put(
            "heartbeat_timeouts_total",
            "counter",
            "Connections dropped for not answering a ping.",
            g(&self.heartbeat_timeouts),
        );
        put("protocol_closes_total", "counter", "Connections closed for bad input.", g(&self.protocol_closes));
        put("publishes_total", "counter", "Client publishes queued to the broker.", g(&self.publishes));
        put("broker_up", "gauge", "1 while the MQTT broker link is up.", self.broker_up.load(Relaxed) as u64);
        put("broker_reconnects_total", "counter", "Broker link re-established.", g(&self.broker_reconnects));
        let _ = writeln!(
            out,
            "# HELP edgepush_recycled_total Connections closed with 1001 so that they reconnect: at max-connection-age-ms, or by a drain (SIGUSR1)."
        );
        let _ = writeln!(out, "# TYPE edgepush_recycled_total counter");
        let _ = writeln!(out, "edgepush_recycled_total{{reason=\"age\"}} {}", g(&self.recycled_age));
        let _ = writeln!(out, "edgepush_recycled_total{{reason=\"drain\"}} {}", g(&self.recycled_drain));
        let _ = writeln!(out, "# HELP edgepush_refused_total Connections refused before the upgrade, by reason.");
        let _ = writeln!(out, "# TYPE edgepush_refused_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(out, "edgepush_refused_total{{reason=\"{}\"}} {}", r.label(), self.refused_count(r));
        }
        let _ =
            writeln!(out, "# HELP edgepush_accept_errors_total Failed accepts for want of file descriptors, by errno.");
        let _ = writeln!(out, "# TYPE edgepush_accept_errors_total counter");
        let _ = writeln!(out, "edgepush_accept_errors_total{{reason=\"emfile\"}} {}", g(&self.accept_emfile));
        let _ = writeln!(out, "edgepush_accept_errors_total{{reason=\"enfile\"}} {}", g(&self.accept_enfile));
        render_process(&mut out, self.started.0);
        out
    }
}

/// When the process started, in Unix seconds: the wall-clock time its first
/// [`Metrics`] was made (in the binary, milliseconds after exec). Taken then
/// rather than from `/proc/self/stat` (ticks since boot), as the boot time
/// is in `/proc/stat`, which the unit's `ProcSubset=pid` hides.
#[derive(Debug)]
struct ProcessStart(f64);

impl Default for ProcessStart {
    fn default() -> Self {
        static AT: OnceLock<f64> = OnceLock::new();
        ProcessStart(*AT.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())))
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
pub(crate) fn open_files_limit() -> Option<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into the valid struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    // rlim_t is 32 bits on armv7.
    #[allow(clippy::unnecessary_cast)]
    Some((r.rlim_cur as u64, r.rlim_max as u64))
}

/// The standard Prometheus process metrics (what client libraries export as
/// `process_*`), from `/proc/self` and getrlimit; a series that cannot be
/// read (no /proc, or no descriptor left to open it) is left out.
fn render_process(out: &mut String, start: f64) {
    let mut put = |name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        put("process_open_fds", "gauge", "Number of open file descriptors.", &fds.count());
    }
    if let Some((soft, _)) = open_files_limit() {
        put("process_max_fds", "gauge", "Maximum number of open file descriptors.", &soft);
    }
    // SAFETY: sysconf(3) only reads a system constant.
    let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
    let statm = std::fs::read_to_string("/proc/self/statm").ok();
    let resident = statm.as_deref().and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
    if let (Some(pages), Ok(page)) = (resident, u64::try_from(page)) {
        put("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", &(pages * page));
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    if let (Some(cpu), true) = (stat.as_deref().and_then(cpu_ticks), ticks > 0) {
        let secs = cpu as f64 / ticks as f64;
        put("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", &secs);
    }
    put("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", &start);
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat` (fields
/// 14 and 15; counted after the command name, which may hold spaces and parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut after = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    Some(after.next()?.parse::<u64>().ok()? + after.next()?.parse::<u64>().ok()?)
}

/// Resident set size of a process in KiB (`VmRSS` from `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_in_text_format() {
        let m = Metrics::default();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.refused(Refusal::PerAddress);
        let text = m.render();
        assert!(text.contains("\nedgepush_connections 1\n"));
        assert!(text.contains("\nedgepush_connections_peak 2\n"));
        assert!(text.contains("edgepush_refused_total{reason=\"per_address\"} 1\n"));
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
        assert!(text.contains("\nedgepush_accept_errors_total{reason=\"emfile\"} 0\n"));
        for name in [
            "process_open_fds",
            "process_max_fds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in\n{text}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
    }

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 1234 10000 200";
        assert_eq!(cpu_ticks(stat), Some(22));
        assert_eq!(cpu_ticks("42 (x) S 1"), None);
        assert!(cpu_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()).is_some());
    }
}
