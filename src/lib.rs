//! edgepush: a push server for edge gateways.
//!
//! It subscribes to the gateway's MQTT broker and pushes sensor events to
//! dashboards as postcard-encoded binary WebSocket messages (the protocol:
//! `docs/PROTOCOL.md`, implemented by the `edgepush-protocol` crate). The
//! modules follow the data, from the broker to the dashboards:
//!
//! ```text
//!  broker ─MQTT─▶ bridge ──▶ hub ──▶ outbox ──▶ session ──▶ socket ─WS─▶ dashboards
//!                 (rumqttc,   (topics, latest,  (bounded,   (reader, writer,
//!                  own thread) history, index;   per conn)   heartbeat, rate)
//!                             encodes once)
//!                                             listener: accept, admission, HTTP head,
//!                                             auth, Origin, routes, the upgrade
//!  daemon: start, signals, reload, systemd, logging   config: file, boards, TLS files
//! ```
//!
//! - `bridge`: the MQTT link (the only tokio code), payloads → values.
//! - `hub`: the state owner: topic table, latest values, history ring,
//!   the filter index, subscriptions, resume, publish.
//! - `outbox`: the bounded queue from the hub to one connection.
//! - `session`: one upgraded connection: reader, writer, heartbeat, rate
//!   bucket, the shared timer wheel, the socket.
//! - `listener`: accept loop, admission, the HTTP head, auth, Origin,
//!   routes (`/`, `/healthz`, `/metrics`), the upgrade.
//! - [`daemon`]: `edgepush run`: start, serve, reload, stop; systemd; logging.
//! - `config`: the config file, board profiles, the files it names.
//! - `metrics`, `clock`, `hex`, `net` (address blocks): leaves every room uses.
//! - [`cli`]: the commands beside `run`; `demo` (feature `demo`).
//!
//! Only what the binary, the tests, the benches and the fuzz targets need is
//! public; `internals` is that set for the tests and benches, not an API.

pub mod cli;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;

pub(crate) mod bridge;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod hex;
pub(crate) mod hub;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod outbox;
pub(crate) mod session;

/// The server's insides, for its integration tests, benches and fuzz
/// targets (they are other crates). Not an API: anything here may change.
#[doc(hidden)]
pub mod internals {
    pub use crate::clock::now_ms;
    pub use crate::config::{board_profile, Config, ConfigError};
    pub use crate::daemon::{start, start_on, Running};
    /// Hex for token hashes.
    pub mod hex {
        pub use crate::hex::{decode32, encode};
    }
    pub use crate::hub::{index::FilterIndex, BridgeMsg, Hub, HubCmd, HubConfig};
    pub use crate::listener::auth::sha256;
    pub use crate::metrics::{rss_kib, Metrics, Refusal};
    pub use crate::outbox::{Bytes, Outbox, Take};
}
