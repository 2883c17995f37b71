//! Board profiles: what each supported board is, and the memory model that
//! sizes its limits so the worst case fits a stated share of its RAM.

use crate::config::Limits;

/// A request head in progress beside its buffer: the connection's task and
/// its share of the executor and the reactor (an estimate with room, not a
/// measurement; small next to `max-header-bytes`).
pub const PENDING_HEAD_BYTES: u64 = 1024;

/// With `[tls]`: what the listener lets rustls queue of encrypted output per
/// connection (`set_buffer_limit`; rustls' default is 64 KiB). What waits
/// beyond it waits in the outbox, counted already.
pub const TLS_SEND_BUFFER_BYTES: usize = 16 * 1024;

/// The most one TLS record takes on the wire: 16 KiB of payload, 2 KiB of
/// expansion and the 5-byte header.
pub const TLS_RECORD_BYTES: u64 = 18432 + 5;

/// With `[tls]`: the buffers rustls can hold per connection beyond its idle
/// state: one incoming record being assembled ([`TLS_RECORD_BYTES`], less the
/// 4 KiB the idle state counts), its
/// decrypted 16 KiB not yet read, and [`TLS_SEND_BUFFER_BYTES`] of output.
pub const TLS_BUFFER_BYTES: u64 = (TLS_RECORD_BYTES - 4096) + 16 * 1024 + TLS_SEND_BUFFER_BYTES as u64;

/// The memory model, per board file, from measurements on a running server
/// (`examples/idle_connections.rs`, `examples/memory_model.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryModel {
    /// RSS of a running server with no connections.
    pub base_kib: u64,
    /// One idle connection subscribed to `#`.
    pub connection_idle_bytes: u64,
    /// Frame buffers a busy connection can hold at once (ours and tungstenite's).
    pub frame_bytes: u64,
    /// One queued message in an outbox (the bytes are shared with the hub).
    pub outbox_entry_bytes: u64,
    /// One subscription filter held by a connection (index + its own list).
    pub filter_bytes: u64,
    /// One topic: name, declaration, table entries, latest event (200-byte payload).
    pub topic_bytes: u64,
    /// One history entry with its event (200-byte payload).
    pub history_entry_bytes: u64,
    /// What an idle TLS connection costs beyond a plain one (rustls' state,
    /// keys and its 4 KiB record buffer), with `[tls]`.
    pub tls_connection_bytes: u64,
}

/// The `[board]` table of a profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Rust target triple of the board's usual OS.
    pub target: String,
    pub ram_mb: u64,
    /// Share of RAM edgepush may use at its worst case, in percent.
    pub budget_percent: u64,
    /// `max-connections` when the config has `[tls]` and does not set it:
    /// TLS connections cost more (see [`TLS_BUFFER_BYTES`]), so fewer fit the budget.
    pub tls_max_connections: usize,
    pub model: MemoryModel,
}

impl Board {
    /// The most one connection can cost with these limits: idle state, a read
    /// buffer grown to the largest client message, frame buffers, a full
    /// outbox (plus answers in flight, counted as a second outbox) and every filter.
    /// With `tls`, rustls' idle state and [`TLS_BUFFER_BYTES`] on top.
    pub fn connection_worst_bytes(&self, l: &Limits, tls: bool) -> u64 {
        let m = &self.model;
        m.connection_idle_bytes
            + l.max_message_bytes as u64
            + m.frame_bytes
            + 2 * l.outbox_messages as u64 * m.outbox_entry_bytes
            + u64::from(l.max_filters) * m.filter_bytes
            + if tls { m.tls_connection_bytes + TLS_BUFFER_BYTES } else { 0 }
    }

    /// The most one request head in progress can cost: its buffer grown to
    /// `max-header-bytes` and [`PENDING_HEAD_BYTES`] for its task and socket;
    /// with `tls`, a handshake's rustls state and one record being assembled.
    pub fn pending_head_worst_bytes(&self, l: &Limits, tls: bool) -> u64 {
        let handshake = if tls { self.model.tls_connection_bytes + TLS_RECORD_BYTES } else { 0 };
        l.max_header_bytes as u64 + PENDING_HEAD_BYTES + handshake
    }

    /// The worst case of the whole server with these limits, in bytes; with
    /// `tls` (a config with `[tls]`), every connection and head is a TLS one.
    pub fn worst_case_bytes(&self, l: &Limits, tls: bool) -> u64 {
        let m = &self.model;
        m.base_kib * 1024
            + l.max_connections as u64 * self.connection_worst_bytes(l, tls)
            + l.pending_heads() as u64 * self.pending_head_worst_bytes(l, tls)
            + l.max_topics as u64 * m.topic_bytes
            + l.history as u64 * m.history_entry_bytes
    }

    /// What the worst case may use: `budget-percent` of RAM.
    pub fn budget_bytes(&self) -> u64 {
        self.ram_mb * 1024 * 1024 * self.budget_percent / 100
    }
}
