//! Bad input from a client closes that client with the code PROTOCOL.md names;
//! a well-behaved client on the same server keeps receiving every event.

mod common;

use common::*;
use edgepush_protocol::{ClientMsg, ServerMsg};

#[test]
fn each_violation_gets_its_close_code_and_others_keep_receiving() {
    let broker = Broker::start();
    let max = 4096;
    let server = Server::start_linked(&config(broker.port, ""));
    let mut publisher = Publisher::connect(broker.port);
    let (mut watcher, _) = block_on_timeout(5000, "watcher", subscribed(&server.url(), &["#"]));
    let mut published = 0u64;
    for (name, frames, want) in protocol_violations(max) {
        let mut raw = RawWs::connect(server.addr);
        for f in &frames {
            raw.write_raw(f);
        }
        let got = raw.close_code();
        assert_eq!(got, want, "{name}");
        publisher.publish("t", format!("{published}"));
        published += 1;
    }
    // The watcher saw every event, in order.
    block_on_timeout(10_000, "watcher events", async {
        let mut seqs = Vec::new();
        while seqs.len() < published as usize {
            match next(&mut watcher).await {
                ServerMsg::Event { seq, .. } => seqs.push(seq),
                ServerMsg::Topic { .. } | ServerMsg::Heartbeat { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seqs, (1..=published).collect::<Vec<_>>());
    });
    let m = server.metrics();
    assert!(m.protocol_closes.load(std::sync::atomic::Ordering::Relaxed) >= 18);
}

#[test]
fn a_message_of_exactly_the_limit_is_accepted() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[limits]\nmax-message-bytes = 4096"));
    let mut raw = RawWs::connect(server.addr);
    let _hello = raw.read_frame().unwrap();
    // Publish{req 1, topic "a", payload N, retain false}: 1+1+2+2+N+1 bytes.
    let msg = ClientMsg::Publish { req: 1, topic: "a".into(), payload: vec![7; 4089], retain: false }.encode();
    assert_eq!(msg.len(), 4096);
    raw.frame(true, OP_BINARY, &msg, true);
    let (op, body) = raw.read_frame().unwrap();
    assert_eq!(op, OP_BINARY);
    // No publish permission by default: a 403 answer, and the connection stays.
    let answer = ServerMsg::decode_all(&body).unwrap();
    assert!(matches!(answer[0], ServerMsg::Error { code: 403, req: 1, .. }), "{answer:?}");
    raw.frame(true, OP_BINARY, &ClientMsg::Ping { nonce: 5 }.encode(), true);
    let (_, body) = raw.read_frame().unwrap();
    assert_eq!(ServerMsg::decode_all(&body).unwrap(), vec![ServerMsg::Pong { nonce: 5 }]);
    // A fragmented message within the limit is one message.
    let ping = ClientMsg::Ping { nonce: 6 }.encode();
    raw.frame(false, OP_BINARY, &ping[..1], true);
    raw.frame(true, OP_CONT, &ping[1..], true);
    let (_, body) = raw.read_frame().unwrap();
    assert_eq!(ServerMsg::decode_all(&body).unwrap(), vec![ServerMsg::Pong { nonce: 6 }]);
    // Closing normally: the server answers the close.
    raw.frame(true, OP_CLOSE, &1000u16.to_be_bytes(), true);
    assert_eq!(raw.close_code(), Some(1000));
}

/// A client closed for what it sends while it is still sending (a flood of
/// Subscribes past its bucket, not reading their answers) receives its close
/// frame: the server closes lingering (half-close, discard the rest for a
/// moment), not with a reset, which would throw away the answers and the
/// close frame still queued for the client. Every time.
#[test]
fn a_flooding_client_always_receives_its_1008() {
    let broker = Broker::start();
    let server =
        Server::start_linked(&config(broker.port, "[limits]\nmessages-per-second = 10\nburst = 100\nhistory = 16"));
    // Each Subscribe's answer carries this kilobyte: a hundred answers are
    // more than the client's small receive buffer holds.
    let mut p = Publisher::connect(broker.port);
    p.publish_with("flood/t", vec![b'x'; 1024], true);
    p.flush();
    wait_until(5_000, "the server to take the event", || {
        server.metrics().events_in.load(std::sync::atomic::Ordering::Relaxed) >= 1
    });
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        let sub = ClientMsg::Subscribe { id: i + 1, filters: vec!["flood/t".into()], resume: None };
        flood.extend_from_slice(&encode_frame(true, OP_BINARY, &sub.encode(), true));
    }
    for run in 0..20 {
        let mut raw = RawWs::connect_small_buffer(server.addr);
        // A reset makes this write fail; the close frame must be readable anyway.
        let _ = std::io::Write::write_all(&mut raw.stream, &flood);
        assert_eq!(raw.close_code(), Some(1008), "run {run}: the close frame was lost");
    }
}
