//! Writes the test vectors that the JavaScript codec (the client package's
//! `clients/js/src/codec.mjs`, which the dashboard imports) is checked
//! against: every ServerMsg and Value variant, varint edges, odd strings and
//! floats, frames holding several messages, and bytes that must not decode;
//! then runs `node --test clients/js/test/vectors.test.mjs` on them, so
//! `cargo test` covers both. It needs no npm package.

use std::path::Path;

use edgepush_protocol::{ClientMsg, Point, Resume, ServerMsg, SyncMode, Value};
use serde_json::{json, Value as Json};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// f64 as its bit pattern, so NaN and -0 compare exactly.
fn f(x: f64) -> Json {
    json!(format!("{:016x}", x.to_bits()))
}

/// u64 as a decimal string: JSON numbers lose precision past 2^53.
fn u(x: u64) -> Json {
    json!(x.to_string())
}

fn value(v: &Value) -> Json {
    match v {
        Value::Number(n) => json!({ "Number": f(*n) }),
        Value::Fields(fs) => json!({ "Fields": fs.iter().map(|(k, x)| json!([k, f(*x)])).collect::<Vec<_>>() }),
        Value::Text(t) => json!({ "Text": t }),
        Value::Bytes(b) => json!({ "Bytes": hex(b) }),
    }
}

fn msg(m: &ServerMsg) -> Json {
    match m {
        ServerMsg::Hello { version, server, epoch, heartbeat_ms, max_filters, broker_up } => json!({
            "type": "Hello", "version": version, "server": server, "epoch": u(*epoch),
            "heartbeat_ms": heartbeat_ms, "max_filters": max_filters, "broker_up": broker_up
        }),
        ServerMsg::Topic { id, name } => json!({ "type": "Topic", "id": id, "name": name }),
        ServerMsg::Event { topic, seq, ts_ms, value: v } => {
            json!({ "type": "Event", "topic": topic, "seq": u(*seq), "ts_ms": u(*ts_ms), "value": value(v) })
        }
        ServerMsg::Synced { id, seq, mode } => json!({
            "type": "Synced", "id": id, "seq": u(*seq),
            "mode": if *mode == SyncMode::Snapshot { "Snapshot" } else { "Replay" }
        }),
        ServerMsg::Ack { req } => json!({ "type": "Ack", "req": req }),
        ServerMsg::Error { code, req, message } => {
            json!({ "type": "Error", "code": code, "req": req, "message": message })
        }
        ServerMsg::Broker { up } => json!({ "type": "Broker", "up": up }),
        ServerMsg::Pong { nonce } => json!({ "type": "Pong", "nonce": nonce }),
        ServerMsg::Heartbeat { ts_ms } => json!({ "type": "Heartbeat", "ts_ms": u(*ts_ms) }),
        ServerMsg::Lagged { skipped } => json!({ "type": "Lagged", "skipped": skipped }),
        ServerMsg::Past { topic, points } => json!({
            "type": "Past", "topic": topic,
            "points": points.iter().map(|p| json!({ "seq": u(p.seq), "ts_ms": u(p.ts_ms), "value": value(&p.value) }))
                .collect::<Vec<_>>()
        }),
        ServerMsg::HistoryDone { id, seq, truncated } => {
            json!({ "type": "HistoryDone", "id": id, "seq": u(*seq), "truncated": truncated })
        }
    }
}

fn ev(seq: u64, v: Value) -> ServerMsg {
    ServerMsg::Event { topic: 3, seq, ts_ms: 1_700_000_000_000, value: v }
}

fn server_vectors() -> Vec<(String, Vec<ServerMsg>)> {
    let mut v: Vec<(String, Vec<ServerMsg>)> = Vec::new();
    let mut one = |name: &str, m: ServerMsg| v.push((name.to_owned(), vec![m]));
    one(
        "Hello",
        ServerMsg::Hello {
            version: 1,
            server: "edgepush 0.1.0".into(),
            epoch: 3_923_307_385_038_188,
            heartbeat_ms: 15000,
            max_filters: 64,
            broker_up: true,
        },
    );
    one("Topic", ServerMsg::Topic { id: 0, name: "sensors/kitchen/temperature".into() });
    one("Topic non-ASCII", ServerMsg::Topic { id: 16384, name: "capteurs/séjour/température/🌡".into() });
    one("Topic empty name", ServerMsg::Topic { id: 127, name: String::new() });
    one("Event Number", ev(1, Value::Number(21.5)));
    one("Event negative zero", ev(2, Value::Number(-0.0)));
    one("Event NaN", ev(3, Value::Number(f64::NAN)));
    one("Event +inf", ev(4, Value::Number(f64::INFINITY)));
    one("Event -inf", ev(5, Value::Number(f64::NEG_INFINITY)));
    one("Event smallest subnormal", ev(6, Value::Number(f64::from_bits(1))));
    one("Event Fields", ev(7, Value::Fields(vec![("t".into(), 21.5), ("h".into(), 40.0), ("é".into(), -1e300)])));
    one("Event Fields empty", ev(8, Value::Fields(vec![])));
    one("Event Text", ev(9, Value::Text("open".into())));
    one("Event Text empty", ev(10, Value::Text(String::new())));
    one("Event Text non-ASCII", ev(11, Value::Text("Tür offen — 開いた ✓".into())));
    one("Event Bytes", ev(12, Value::Bytes(vec![0, 0xff, 0x80, 0x7f])));
    one("Event Bytes empty", ev(13, Value::Bytes(vec![])));
    for (name, seq) in [
        ("seq 0", 0u64),
        ("seq 127", 127),
        ("seq 128", 128),
        ("seq 16383", 16383),
        ("seq 16384", 16384),
        ("seq 2^32-1", u64::from(u32::MAX)),
        ("seq 2^53-1", (1 << 53) - 1),
        ("seq 2^53+1", (1 << 53) + 1),
        ("seq 2^64-1", u64::MAX),
    ] {
        one(&format!("Event {name}"), ev(seq, Value::Number(1.0)));
    }
    one("Topic id 2^32-1", ServerMsg::Topic { id: u32::MAX, name: "x".into() });
    one("Synced Snapshot", ServerMsg::Synced { id: 1, seq: 0, mode: SyncMode::Snapshot });
    one("Synced Replay", ServerMsg::Synced { id: u32::MAX, seq: 1 << 40, mode: SyncMode::Replay });
    one("Ack", ServerMsg::Ack { req: 42 });
    one("Error", ServerMsg::Error { code: 403, req: 7, message: "not permitted to subscribe to \"#\"".into() });
    one("Broker down", ServerMsg::Broker { up: false });
    one("Broker up", ServerMsg::Broker { up: true });
    one("Pong", ServerMsg::Pong { nonce: u32::MAX });
    one("Heartbeat", ServerMsg::Heartbeat { ts_ms: 1_764_337_000_123 });
    one("Lagged", ServerMsg::Lagged { skipped: 128 });
    let point = |seq: u64, value| Point { seq, ts_ms: 1_700_000_000_000 + (seq % 1000), value };
    one(
        "Past",
        ServerMsg::Past {
            topic: 300,
            points: vec![
                point(1, Value::Number(21.5)),
                point(128, Value::Fields(vec![("w".into(), 820.5)])),
                point((1 << 53) + 1, Value::Text("é".into())),
                point(u64::MAX, Value::Bytes(vec![0, 0xff])),
            ],
        },
    );
    one("Past empty", ServerMsg::Past { topic: 0, points: vec![] });
    one("HistoryDone", ServerMsg::HistoryDone { id: 2, seq: 16384, truncated: false });
    one("HistoryDone truncated", ServerMsg::HistoryDone { id: u32::MAX, seq: u64::MAX, truncated: true });
    v.push((
        "frame with several messages".into(),
        vec![
            ServerMsg::Topic { id: 0, name: "a".into() },
            ev(1, Value::Number(1.0)),
            ServerMsg::Topic { id: 1, name: "b".into() },
            ev(2, Value::Text("x".into())),
            ServerMsg::Synced { id: 1, seq: 2, mode: SyncMode::Snapshot },
            ServerMsg::Heartbeat { ts_ms: 5 },
        ],
    ));
    v.push((
        "frame with a history answer".into(),
        vec![
            ServerMsg::Topic { id: 4, name: "c".into() },
            ServerMsg::Past { topic: 4, points: vec![point(5, Value::Number(1.0)), point(9, Value::Number(2.0))] },
            ServerMsg::Event { topic: 4, seq: 10, ts_ms: 11, value: Value::Number(3.0) },
            ServerMsg::HistoryDone { id: 2, seq: 9, truncated: false },
        ],
    ));
    v
}

/// Bytes that are not ServerMsg values: the decoder must throw.
fn invalid_vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("unknown ServerMsg variant", vec![12]),
        ("Past cut off in a point", vec![10, 0, 1, 5]),
        ("HistoryDone bad bool", vec![11, 1, 1, 2]),
        ("Past count past the end", vec![10, 0, 0xff, 0x01, 1, 2, 0]),
        ("truncated f64", vec![2, 0, 1, 2, 0, 0, 0]),
        ("string past the end", vec![1, 0, 5, b'a']),
        ("invalid UTF-8", vec![1, 0, 2, 0xc3, 0x28]),
        ("bad bool", vec![6, 2]),
        ("u32 varint overflow", vec![7, 0xff, 0xff, 0xff, 0xff, 0x1f]),
        ("u64 varint too long", vec![8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ("unknown Value variant", vec![2, 0, 1, 2, 4]),
        ("unknown SyncMode", vec![3, 1, 1, 2]),
        ("Fields count past the end", vec![2, 0, 1, 2, 1, 0xff, 0xff, 0x03]),
    ]
}

fn client_vectors() -> Vec<(ClientMsg, Json)> {
    vec![
        (
            ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None },
            json!({ "type": "Subscribe", "id": 1, "filters": ["#"], "resume": null }),
        ),
        (
            ClientMsg::Subscribe {
                id: 300,
                filters: vec!["sensors/+/t".into(), "é/#".into()],
                resume: Some(Resume { epoch: 3_923_307_385_038_188, last_seq: 16384 }),
            },
            json!({ "type": "Subscribe", "id": 300, "filters": ["sensors/+/t", "é/#"],
                    "resume": { "epoch": "3923307385038188", "last_seq": "16384" } }),
        ),
        (ClientMsg::Unsubscribe { id: 128 }, json!({ "type": "Unsubscribe", "id": 128 })),
        (
            ClientMsg::Publish { req: 9, topic: "cmd/lamp".into(), payload: b"on".to_vec(), retain: true },
            json!({ "type": "Publish", "req": 9, "topic": "cmd/lamp", "payload": "6f6e", "retain": true }),
        ),
        (ClientMsg::Ping { nonce: u32::MAX }, json!({ "type": "Ping", "nonce": 4294967295u32 })),
        (
            ClientMsg::History { id: 2, filters: vec!["sensors/#".into(), "é/+".into()], per_topic: 60 },
            json!({ "type": "History", "id": 2, "filters": ["sensors/#", "é/+"], "per_topic": 60 }),
        ),
        (
            ClientMsg::History { id: 70000, filters: vec!["#".into()], per_topic: u16::MAX },
            json!({ "type": "History", "id": 70000, "filters": ["#"], "per_topic": 65535 }),
        ),
    ]
}

#[test]
fn the_javascript_codec_agrees_with_the_server_on_every_vector() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    std::fs::create_dir_all(&dir).unwrap();
    let server: Vec<Json> = server_vectors()
        .iter()
        .map(|(name, msgs)| {
            let mut bytes = Vec::new();
            for m in msgs {
                m.encode_into(&mut bytes);
            }
            // The Rust side agrees with itself first.
            let back = ServerMsg::decode_all(&bytes).unwrap();
            assert_eq!(back.len(), msgs.len());
            json!({ "name": name, "hex": hex(&bytes), "messages": msgs.iter().map(msg).collect::<Vec<_>>() })
        })
        .collect();
    let invalid: Vec<Json> = invalid_vectors()
        .iter()
        .map(|(name, b)| {
            assert!(ServerMsg::decode_all(b).is_err(), "{name} must not decode in Rust either");
            json!({ "name": name, "hex": hex(b) })
        })
        .collect();
    let client: Vec<Json> = client_vectors()
        .iter()
        .map(|(m, j)| {
            assert_eq!(ClientMsg::decode(&m.encode()).as_ref(), Ok(m));
            json!({ "message": j, "hex": hex(&m.encode()) })
        })
        .collect();
    let doc = json!({ "server": server, "invalid": invalid, "client": client });
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = dir.join("postcard.json");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old != text {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(server.len() >= 30);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("node")
        .args(["--test", "clients/js/test/vectors.test.mjs"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install the Debian package `nodejs`"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("# fail 0"), "{report}");
}
