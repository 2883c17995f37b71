//! The edgepush wire protocol, version 1, without I/O: the messages
//! ([`ServerMsg`], [`ClientMsg`]) and their postcard encoding, [`Value`] and
//! how an MQTT payload becomes one, MQTT topic and filter syntax with
//! matching and permission coverage, and the client's reconnect timing.
//!
//! The normative description is `docs/PROTOCOL.md` in the edgepush
//! repository; this crate is its implementation, shared by the server, the
//! Rust client, the load tool and the fuzz targets.
//!
//! ```
//! use edgepush_protocol::{ClientMsg, ServerMsg, Value};
//!
//! // A dashboard subscribes...
//! let sub = ClientMsg::Subscribe { id: 1, filters: vec!["sensors/#".into()], resume: None };
//! assert_eq!(ClientMsg::decode(&sub.encode()), Ok(sub));
//!
//! // ...and the server answers with messages packed back to back in one frame.
//! let mut frame = ServerMsg::Topic { id: 0, name: "sensors/t1".into() }.encode();
//! ServerMsg::Event { topic: 0, seq: 1, ts_ms: 0, value: Value::Number(21.5) }.encode_into(&mut frame);
//! assert_eq!(ServerMsg::decode_all(&frame).unwrap().len(), 2);
//! ```
//!
//! A client may also ask for recent values per topic from the server's
//! history ring ([`ClientMsg::History`], answered by [`ServerMsg::Past`] and
//! [`ServerMsg::HistoryDone`]; `docs/PROTOCOL.md` §6.13).
//!
//! Modules: [`msg`] (the messages), [`value`] (payload → [`Value`]),
//! [`topic`] (syntax, matching, "within", [`Permissions`]), [`authority`]
//! (`host[:port]`), [`origin`] (the `Origin` check), [`backoff`] and [`rng`] (reconnect jitter).

#![warn(missing_docs)]

pub mod authority;
pub mod backoff;
pub mod msg;
pub mod origin;
pub mod rng;
pub mod topic;
pub mod value;

pub use msg::{ClientMsg, DecodeError, Point, Resume, ServerMsg, SyncMode, PROTOCOL_VERSION, SUBPROTOCOL};
pub use topic::Permissions;
pub use value::Value;
