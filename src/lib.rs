//! edgepush: a push server for edge gateways.
//!
//! It subscribes to the gateway's MQTT broker and pushes sensor events to
//! dashboards as postcard-encoded binary WebSocket messages (`PROTOCOL.md`).
//!
//! ```text
//!  broker ──MQTT──▶ mqtt (rumqttc, own thread, tokio) ── bounded channel ──▶ hub (smol task)
//!                                                                          │ topic table, latest values,
//!                                                                          │ history ring, filter index
//!                                                                          ▼ encode once, share bytes
//!  dashboards ◀── binary WS frames ── session tasks ◀── bounded outbox per connection
//!  accept loop ── admission (caps) ── HTTP head ── /ws upgrade | / | /healthz | /metrics
//! ```
//!
//! Modules: [`config`] (file and board profiles), [`protocol`] (wire types),
//! [`value`] (payload → Value), [`topic`] (filters, matching, the index),
//! [`mqtt`] (the bridge, the only tokio code), [`hub`] (the state owner),
//! [`outbox`] and [`heartbeat`] (per-connection logic without I/O),
//! [`server`] (listener, HTTP, sessions), [`metrics`], [`client`] (a Rust
//! client of the protocol), [`systemd`] (sd_notify, watchdog, socket
//! activation) and [`logging`] (journald priorities); `bench` (feature
//! `bench`) is the load tool behind `edgepush bench`.

pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod board;
pub mod client;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod heartbeat;
pub mod hub;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod origin;
pub mod outbox;
pub mod protocol;
pub mod rng;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod topic;
pub mod value;
