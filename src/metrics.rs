//! Counters shared by every part of the server, and their Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

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
}

impl Refusal {
    const ALL: [Refusal; 10] = [
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
}

impl Metrics {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
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
        let _ = writeln!(out, "# HELP edgepush_refused_total Connections refused before the upgrade, by reason.");
        let _ = writeln!(out, "# TYPE edgepush_refused_total counter");
        for r in Refusal::ALL {
            let _ = writeln!(out, "edgepush_refused_total{{reason=\"{}\"}} {}", r.label(), self.refused_count(r));
        }
        out
    }
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
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
    }
}
