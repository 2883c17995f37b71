//! The wire types of protocol version 1 (`docs/PROTOCOL.md`), and their postcard encoding.
//!
//! ```
//! use edgepush_protocol::{ClientMsg, ServerMsg};
//!
//! // A client message is exactly one ClientMsg.
//! let ping = ClientMsg::Ping { nonce: 7 }.encode();
//! assert_eq!(ping, [3, 7]);
//! assert_eq!(ClientMsg::decode(&ping), Ok(ClientMsg::Ping { nonce: 7 }));
//!
//! // A server message holds one or more ServerMsg values back to back.
//! let mut body = ServerMsg::Pong { nonce: 7 }.encode();
//! ServerMsg::Broker { up: true }.encode_into(&mut body);
//! assert_eq!(ServerMsg::decode_all(&body).unwrap().len(), 2);
//! ```
//!
//! No I/O here. The variant order of every enum is its wire discriminant: never
//! reorder, only append in a new protocol version.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::value::Value;

/// The protocol version carried in [`ServerMsg::Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// The WebSocket subprotocol name a client may offer.
pub const SUBPROTOCOL: &str = "edgepush.v1";

/// Server to client. A binary WebSocket message holds one or more of these back to back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Always the first message on a connection.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The server's name (its host name unless configured).
        server: String,
        /// Random per server start; a resume is honoured only within one epoch.
        epoch: u64,
        /// The server sends something at least this often (a Heartbeat when idle).
        heartbeat_ms: u32,
        /// The most filters one connection may hold.
        max_filters: u16,
        /// Whether the server's link to its MQTT broker is up.
        broker_up: bool,
    },
    /// Declares a topic id before its first Event on this connection.
    Topic {
        /// The id Events of this topic carry on this connection.
        id: u32,
        /// The MQTT topic.
        name: String,
    },
    /// One sensor event.
    Event {
        /// A topic id declared by an earlier [`ServerMsg::Topic`].
        topic: u32,
        /// The event's number in this epoch, increasing across all topics.
        seq: u64,
        /// When the server received it, Unix milliseconds.
        ts_ms: u64,
        /// The payload.
        value: Value,
    },
    /// Subscription `id` is live; everything it needed up to `seq` was sent.
    Synced {
        /// The Subscribe's id.
        id: u32,
        /// The highest seq the answer covers: the client's new resume point.
        seq: u64,
        /// How the answer was made.
        mode: SyncMode,
    },
    /// Publish `req` was accepted and queued to the broker.
    Ack {
        /// The Publish's req.
        req: u32,
    },
    /// A request failed; the connection stays open.
    Error {
        /// An HTTP-like status: 400 bad request, 403 not permitted, 429 too many, 503 unavailable.
        code: u16,
        /// The id or req of the request it answers (0 when none).
        req: u32,
        /// For people.
        message: String,
    },
    /// The gateway's link to the MQTT broker changed.
    Broker {
        /// Whether it is up now.
        up: bool,
    },
    /// Answer to a client Ping.
    Pong {
        /// The Ping's nonce.
        nonce: u32,
    },
    /// Sent when nothing else was sent for `heartbeat_ms`.
    Heartbeat {
        /// The server's clock, Unix milliseconds.
        ts_ms: u64,
    },
    /// `skipped` matching events were never sent; the latest of each missed topic follows.
    Lagged {
        /// How many.
        skipped: u32,
    },
    /// Part of the answer to [`ClientMsg::History`]: earlier events of one
    /// topic, oldest first. Not live: never moves the resume point.
    Past {
        /// A topic id declared by an earlier [`ServerMsg::Topic`], as in Events.
        topic: u32,
        /// The topic's events from the history ring, in seq order.
        points: Vec<Point>,
    },
    /// The answer to History `id` is complete.
    HistoryDone {
        /// The History's id.
        id: u32,
        /// The server's seq when the answer was made: no Past point is newer.
        seq: u64,
        /// Some points were left out by the per-request bounds (the newest were kept).
        truncated: bool,
    },
}

/// One earlier event of a topic, in a [`ServerMsg::Past`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The event's seq (as its Event had): lets a client merge with live events.
    pub seq: u64,
    /// When the server received it, Unix milliseconds.
    pub ts_ms: u64,
    /// The payload.
    pub value: Value,
}

/// How a subscription was synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// The latest Event of every matching topic was sent; earlier ones may be missing.
    Snapshot,
    /// Every matching event after the client's `last_seq` was replayed; nothing is missing.
    Replay,
}

/// Client to server. A binary WebSocket message holds exactly one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Subscribe to MQTT topic filters.
    Subscribe {
        /// The client's name for this subscription (echoed in Synced and Error).
        id: u32,
        /// MQTT filters (`+`, `#`), each within the connection's permissions.
        #[serde(deserialize_with = "cautious_strings")]
        filters: Vec<String>,
        /// Where a reconnecting client left off, if it did.
        resume: Option<Resume>,
    },
    /// End subscription `id`.
    Unsubscribe {
        /// The Subscribe's id.
        id: u32,
    },
    /// Publish to the broker (QoS 1).
    Publish {
        /// The client's number for this request (echoed in Ack or Error).
        req: u32,
        /// An MQTT topic (no wildcards), within the connection's permissions.
        topic: String,
        /// The payload, as is.
        #[serde(with = "bytes_as_seq")]
        payload: Vec<u8>,
        /// Ask the broker to retain it.
        retain: bool,
    },
    /// Application-level round trip.
    Ping {
        /// Echoed in the Pong.
        nonce: u32,
    },
    /// Ask for up to `per_topic` recent events of every topic the filters
    /// match, from the server's history ring (answered by [`ServerMsg::Past`]
    /// values and [`ServerMsg::HistoryDone`], or an Error). Needs no subscription.
    History {
        /// The client's name for this request (echoed in HistoryDone and Error).
        id: u32,
        /// MQTT filters (`+`, `#`), each within the connection's permissions.
        #[serde(deserialize_with = "cautious_strings")]
        filters: Vec<String>,
        /// How many of the newest events per topic (the server caps it at [`HISTORY_MAX_PER_TOPIC`]).
        per_topic: u16,
    },
}

/// The most points per topic a History answer holds; more is clamped to this.
pub const HISTORY_MAX_PER_TOPIC: u16 = 64;
/// The most points one History answer holds, over all its topics.
pub const HISTORY_MAX_POINTS: usize = 1024;
/// The most bytes of encoded values one History answer holds, over all its topics.
pub const HISTORY_MAX_VALUE_BYTES: usize = 64 * 1024;

/// Where a reconnecting client left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The epoch of the server it was connected to.
    pub epoch: u64,
    /// Its resume point: the seq of the last Synced or live Event it received.
    pub last_seq: u64,
}

/// Why a client message was refused (close code 1007).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a ClientMsg.
    Malformed(String),
    /// A ClientMsg was followed by this many extra bytes.
    TrailingBytes(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "not a ClientMsg: {e}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the ClientMsg"),
        }
    }
}

impl ClientMsg {
    /// Decodes exactly one message, refusing trailing bytes.
    ///
    /// A declared length larger than the input fails before anything of that
    /// length is allocated.
    pub fn decode(bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
        match postcard::take_from_bytes::<ClientMsg>(bytes) {
            Ok((msg, [])) => Ok(msg),
            Ok((_, rest)) => Err(DecodeError::TrailingBytes(rest.len())),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        }
    }

    /// Encodes this message as one WebSocket message body.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into a Vec cannot fail")
    }
}

impl ServerMsg {
    /// Appends this message's encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(self, buf).expect("encoding into a Vec cannot fail");
    }

    /// Encodes this message alone.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    /// Encodes a [`ServerMsg::Event`] around a [`Value`] that is already
    /// encoded (`postcard::to_allocvec(&value)`), byte for byte as
    /// [`ServerMsg::encode`] would encode the whole Event. The hub encodes each
    /// value once and each event once, whatever the number of receivers.
    ///
    /// ```
    /// use edgepush_protocol::{ServerMsg, Value};
    ///
    /// let value = Value::Number(21.5);
    /// let encoded = postcard::to_allocvec(&value).unwrap();
    /// let event = ServerMsg::Event { topic: 3, seq: 300, ts_ms: 1_700_000_000_000, value };
    /// assert_eq!(ServerMsg::encode_event(3, 300, 1_700_000_000_000, &encoded), event.encode());
    /// ```
    pub fn encode_event(topic: u32, seq: u64, ts_ms: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 5 + 10 + 10 + value.len());
        out.push(EVENT_VARIANT);
        put_varint(&mut out, u64::from(topic));
        put_varint(&mut out, seq);
        put_varint(&mut out, ts_ms);
        out.extend_from_slice(value);
        out
    }

    /// Encodes a [`ServerMsg::Past`] from points whose values are already
    /// encoded, byte for byte as [`ServerMsg::encode`] would (see
    /// [`ServerMsg::encode_event`]).
    ///
    /// ```
    /// use edgepush_protocol::msg::Point;
    /// use edgepush_protocol::{ServerMsg, Value};
    ///
    /// let value = Value::Number(21.5);
    /// let encoded = postcard::to_allocvec(&value).unwrap();
    /// let past = ServerMsg::Past { topic: 3, points: vec![Point { seq: 9, ts_ms: 1000, value }] };
    /// assert_eq!(ServerMsg::encode_past(3, &[(9, 1000, &encoded[..])]), past.encode());
    /// ```
    pub fn encode_past(topic: u32, points: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let len: usize = points.iter().map(|p| 20 + p.2.len()).sum();
        let mut out = Vec::with_capacity(1 + 5 + 10 + len);
        out.push(PAST_VARIANT);
        put_varint(&mut out, u64::from(topic));
        put_varint(&mut out, points.len() as u64);
        for (seq, ts_ms, value) in points {
            put_varint(&mut out, *seq);
            put_varint(&mut out, *ts_ms);
            out.extend_from_slice(value);
        }
        out
    }

    /// The parts of an Event encoded by [`ServerMsg::encode_event`]:
    /// `(topic, seq, ts_ms, encoded value)`; None if `event` is not one.
    pub fn split_event(event: &[u8]) -> Option<(u32, u64, u64, &[u8])> {
        let (&tag, mut rest) = event.split_first()?;
        if tag != EVENT_VARIANT {
            return None;
        }
        let mut next = || {
            let (v, r) = get_varint(rest)?;
            rest = r;
            Some(v)
        };
        let topic = u32::try_from(next()?).ok()?;
        let (seq, ts_ms) = (next()?, next()?);
        Some((topic, seq, ts_ms, rest))
    }

    /// Decodes every message of one WebSocket message body.
    ///
    /// # Errors
    /// The first message that does not decode.
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<ServerMsg>, postcard::Error> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (msg, rest) = postcard::take_from_bytes::<ServerMsg>(bytes)?;
            out.push(msg);
            bytes = rest;
        }
        Ok(out)
    }
}

/// postcard's discriminant of [`ServerMsg::Event`]: its index in the enum
/// (checked against serde's encoding by a test).
const EVENT_VARIANT: u8 = 2;
/// postcard's discriminant of [`ServerMsg::Past`].
const PAST_VARIANT: u8 = 10;

/// Reads a postcard varint; None when it is cut off or longer than 10 bytes.
fn get_varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate().take(10) {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

/// postcard's unsigned varint (LEB128).
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Preallocation cap for sequences whose length comes from the peer.
const CAUTIOUS_PREALLOC: usize = 16;

/// A `Vec<String>` whose declared count never drives an allocation: postcard
/// reports the declared count as the size hint, and serde would preallocate up
/// to 1 MiB for it.
fn cautious_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(CAUTIOUS_PREALLOC));
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V)
}

/// `Vec<u8>` as postcard's length-prefixed bytes; postcard checks the length
/// against the input before it copies.
mod bytes_as_seq {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let b: &[u8] = <&[u8]>::deserialize(d)?;
        Ok(b.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_follow_the_protocol_order() {
        let hello = ServerMsg::Hello {
            version: 1,
            server: "e".into(),
            epoch: 2,
            heartbeat_ms: 3,
            max_filters: 4,
            broker_up: true,
        };
        assert_eq!(hello.encode(), [0, 1, 1, b'e', 2, 3, 4, 1]);
        assert_eq!(ServerMsg::Lagged { skipped: 5 }.encode(), [9, 5]);
        assert_eq!(ServerMsg::Heartbeat { ts_ms: 128 }.encode(), [8, 0x80, 0x01]);
        let synced = ServerMsg::Synced { id: 1, seq: 2, mode: SyncMode::Replay };
        assert_eq!(synced.encode(), [3, 1, 2, 1]);
        let ev = ServerMsg::Event { topic: 0, seq: 1, ts_ms: 2, value: Value::Number(1.0) };
        assert_eq!(ev.encode(), [2, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
        assert_eq!(ClientMsg::Ping { nonce: 7 }.encode(), [3, 7]);
        let p = ClientMsg::Publish { req: 1, topic: "a".into(), payload: vec![9], retain: true };
        assert_eq!(p.encode(), [2, 1, 1, b'a', 1, 9, 1]);
    }

    #[test]
    fn encode_event_is_postcards_encoding_of_event() {
        let values = [
            Value::Number(-0.0),
            Value::Fields(vec![("w".into(), 1.5)]),
            Value::Text("é".into()),
            Value::Bytes(vec![0, 255]),
        ];
        for (i, value) in values.into_iter().enumerate() {
            for (topic, seq, ts_ms) in [(0, 0, 0), (127, 128, 16_384), (u32::MAX, u64::MAX, 1 << 53)] {
                let encoded = postcard::to_allocvec(&value).unwrap();
                let whole = ServerMsg::Event { topic, seq, ts_ms, value: value.clone() }.encode();
                assert_eq!(ServerMsg::encode_event(topic, seq, ts_ms, &encoded), whole, "value {i}");
            }
        }
    }

    #[test]
    fn client_msg_round_trips_and_rejects_trailing_bytes() {
        let m = ClientMsg::Subscribe {
            id: 3,
            filters: vec!["a/#".into(), "b/+".into()],
            resume: Some(Resume { epoch: 9, last_seq: 10 }),
        };
        let mut b = m.encode();
        assert_eq!(ClientMsg::decode(&b), Ok(m));
        b.push(0);
        assert_eq!(ClientMsg::decode(&b), Err(DecodeError::TrailingBytes(1)));
        assert!(matches!(ClientMsg::decode(&[]), Err(DecodeError::Malformed(_))));
        assert!(matches!(ClientMsg::decode(&[4]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        // Subscribe{id 0, filters: count 2^32-1}
        let b = [0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(ClientMsg::decode(&b), Err(DecodeError::Malformed(_))));
        // Publish with a payload length of 2^32-1 in a 10-byte message.
        let b = [2, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f, 0];
        assert!(matches!(ClientMsg::decode(&b), Err(DecodeError::Malformed(_))));
        // Invalid UTF-8 in a filter.
        let b = [0, 0, 1, 1, 0xff, 0];
        assert!(matches!(ClientMsg::decode(&b), Err(DecodeError::Malformed(_))));
        // Varint overflow in the id.
        let b = [3, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(ClientMsg::decode(&b), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn history_variants_are_appended_and_round_trip() {
        let h = ClientMsg::History { id: 5, filters: vec!["a/#".into()], per_topic: 60 };
        assert_eq!(h.encode(), [4, 5, 1, 3, b'a', b'/', b'#', 60]);
        assert_eq!(ClientMsg::decode(&h.encode()), Ok(h));
        let done = ServerMsg::HistoryDone { id: 5, seq: 300, truncated: true };
        assert_eq!(done.encode(), [11, 5, 0xac, 0x02, 1]);
        let p = Point { seq: 1, ts_ms: 2, value: Value::Text("x".into()) };
        let past = ServerMsg::Past { topic: 7, points: vec![p.clone(), Point { seq: 3, ..p }] };
        assert_eq!(past.encode(), [10, 7, 2, 1, 2, 2, 1, b'x', 3, 2, 2, 1, b'x']);
        assert_eq!(ServerMsg::decode_all(&past.encode()).unwrap(), vec![past]);
    }

    #[test]
    fn encode_past_is_postcards_encoding_and_split_event_inverts_encode_event() {
        let values = [Value::Number(-0.0), Value::Fields(vec![("w".into(), 1.5)]), Value::Bytes(vec![0, 255])];
        let enc: Vec<Vec<u8>> = values.iter().map(|v| postcard::to_allocvec(v).unwrap()).collect();
        for (topic, seq, ts_ms) in [(0, 0, 0), (127, 128, 16_384), (u32::MAX, u64::MAX, 1 << 53)] {
            let ev = ServerMsg::encode_event(topic, seq, ts_ms, &enc[1]);
            assert_eq!(ServerMsg::split_event(&ev), Some((topic, seq, ts_ms, &enc[1][..])));
            let parts: Vec<(u64, u64, &[u8])> = enc.iter().map(|e| (seq, ts_ms, &e[..])).collect();
            let points = values.iter().map(|v| Point { seq, ts_ms, value: v.clone() }).collect();
            assert_eq!(ServerMsg::encode_past(topic, &parts), ServerMsg::Past { topic, points }.encode());
        }
        assert_eq!(ServerMsg::split_event(&ServerMsg::Pong { nonce: 1 }.encode()), None);
        assert_eq!(ServerMsg::split_event(&[2, 0x80]), None);
        assert_eq!(ServerMsg::encode_past(1, &[]), ServerMsg::Past { topic: 1, points: vec![] }.encode());
    }

    #[test]
    fn several_server_messages_decode_from_one_body() {
        let mut b = ServerMsg::Pong { nonce: 1 }.encode();
        ServerMsg::Broker { up: false }.encode_into(&mut b);
        let all = ServerMsg::decode_all(&b).unwrap();
        assert_eq!(all, vec![ServerMsg::Pong { nonce: 1 }, ServerMsg::Broker { up: false }]);
    }
}
