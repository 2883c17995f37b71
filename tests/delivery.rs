//! Events published over MQTT reach WebSocket clients: every message type,
//! value kinds, snapshot and resume, the subscribe race, overlapping
//! subscriptions, retained messages, $SYS, and client publishes.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use edgepush_client::Client;
use edgepush_protocol::{ClientMsg, Resume, ServerMsg, SyncMode, Value};

fn events(msgs: &[ServerMsg]) -> Vec<(u32, u64, Value)> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Event { topic, seq, value, .. } => Some((*topic, *seq, value.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn hello_then_events_of_every_value_kind() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[heartbeat]\ninterval-ms = 60000"));
    let mut publisher = Publisher::connect(broker.port);
    block_on_timeout(20_000, "delivery", async {
        let mut c = timeout(5000, "connect", Client::connect(&server.url())).await.unwrap();
        let h = c.hello().clone();
        assert_eq!(h.version, 1);
        assert!(h.server.starts_with("edgepush "));
        assert_eq!((h.heartbeat_ms, h.max_filters, h.broker_up), (60000, 64, true));
        c.subscribe(7, &["sensors/#"], None).await.unwrap();
        assert_eq!(next(&mut c).await, ServerMsg::Synced { id: 7, seq: 0, mode: SyncMode::Snapshot });

        publisher.publish("sensors/t", " 21.5\n");
        publisher.publish("sensors/env", r#"{"t":21.5,"h":40,"ok":true}"#);
        publisher.publish("sensors/door", "open");
        publisher.publish("sensors/raw", vec![0xff, 0xfe]);
        publisher.publish("other/t", "1");
        publisher.publish("sensors/t", "22");
        let got = until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { seq: 6, .. })).await;
        assert_eq!(
            got.iter().filter(|m| matches!(m, ServerMsg::Topic { .. })).count(),
            4,
            "each topic declared once: {got:?}"
        );
        let names: Vec<&str> = ["sensors/t", "sensors/env", "sensors/door", "sensors/raw"].to_vec();
        for (i, name) in names.iter().enumerate() {
            assert!(got.contains(&ServerMsg::Topic { id: i as u32, name: name.to_string() }), "{got:?}");
        }
        let ev = events(&got);
        assert_eq!(
            ev,
            vec![
                (0, 1, Value::Number(21.5)),
                (1, 2, Value::Fields(vec![("t".into(), 21.5), ("h".into(), 40.0), ("ok".into(), 1.0)])),
                (2, 3, Value::Text("open".into())),
                (3, 4, Value::Bytes(vec![0xff, 0xfe])),
                (0, 6, Value::Number(22.0)),
            ]
        );
        // Ping → Pong, in order with other answers.
        c.send(&ClientMsg::Ping { nonce: 99 }).await.unwrap();
        assert_eq!(next(&mut c).await, ServerMsg::Pong { nonce: 99 });
        // ts_ms is the gateway's receive time.
        if let Some(ServerMsg::Event { ts_ms, .. }) = got.iter().find(|m| matches!(m, ServerMsg::Event { .. })) {
            let now = edgepush::internals::now_ms();
            assert!(*ts_ms <= now && now - *ts_ms < 60_000, "{ts_ms} vs {now}");
        }
    });
}

#[test]
fn retained_messages_fill_the_snapshot_and_sys_is_never_forwarded() {
    let broker = Broker::start();
    let mut publisher = Publisher::connect(broker.port);
    publisher.publish_with("home/door", "closed", true);
    publisher.flush();
    // mosquitto keeps retained $SYS/broker/... topics of its own: asking for
    // them at the broker delivers them to the bridge, which must drop them.
    let mut cfg = config(broker.port, "[auth]\nsubscribe = [\"#\", \"$SYS/#\"]");
    cfg.mqtt.subscribe = vec!["#".into(), "$SYS/#".into()];
    let server = Server::start_linked(&cfg);
    block_on_timeout(20_000, "snapshot", async {
        // The retained value arrives through the bridge; wait for it to be taken.
        let m = server.metrics();
        wait_until_async(5000, "the retained event", || m.events_in.load(Relaxed) >= 1).await;
        let (_c, got) = subscribed(&server.url(), &["#"]).await;
        assert_eq!(events(&got), vec![(0, 1, Value::Text("closed".into()))]);
        assert!(got.contains(&ServerMsg::Topic { id: 0, name: "home/door".into() }));
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 1, seq: 1, mode: SyncMode::Snapshot }));
        // Even asked for explicitly and permitted, $SYS is not there.
        let (_c, got) = subscribed(&server.url(), &["$SYS/#"]).await;
        assert_eq!(events(&got), vec![]);
    });
    assert_eq!(server.metrics().events_in.load(Relaxed), 1);
}

#[test]
fn overlapping_subscriptions_deliver_live_events_once_but_answer_each_subscribe_whole() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let mut publisher = Publisher::connect(broker.port);
    publisher.publish("a/t", "1");
    publisher.flush();
    block_on_timeout(20_000, "overlap", async {
        let (mut c, got) = subscribed(&server.url(), &["a/#"]).await;
        let wait_first = events(&got).len();
        if wait_first == 0 {
            until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { .. })).await;
        }
        // A second subscription matching the same topic gets its own snapshot.
        let got = subscribe_synced(&mut c, 2, &["+/t", "a/t"], None).await;
        assert_eq!(events(&got).len(), 1, "the answer covers a/t again: {got:?}");
        publisher.publish("a/t", "2");
        publisher.publish("b/t", "3");
        let got = until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { seq: 3, .. })).await;
        let seqs: Vec<u64> = events(&got).iter().map(|e| e.1).collect();
        assert_eq!(seqs, vec![2, 3], "one delivery per event: {got:?}");
        // Unsubscribe takes effect before the next request's answer.
        c.send(&ClientMsg::Unsubscribe { id: 2 }).await.unwrap();
        c.send(&ClientMsg::Ping { nonce: 1 }).await.unwrap();
        until(&mut c, 5000, |m| matches!(m, ServerMsg::Pong { nonce: 1 })).await;
        publisher.publish("b/t", "4");
        publisher.publish("a/t", "5");
        let got = until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { .. })).await;
        assert_eq!(events(&got).iter().map(|e| e.1).collect::<Vec<_>>(), vec![5], "{got:?}");
    });
}

#[test]
fn resume_replays_what_was_missed_and_a_stale_epoch_falls_back_to_snapshot() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[limits]\nhistory = 8"));
    let mut publisher = Publisher::connect(broker.port);
    block_on_timeout(30_000, "resume", async {
        let (mut c, _) = subscribed(&server.url(), &["s/#"]).await;
        publisher.publish("s/a", "1");
        publisher.publish("s/b", "2");
        until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { seq: 2, .. })).await;
        let resume = c.resume_point();
        assert_eq!(resume.last_seq, 2);
        c.close().await;
        // Missed while away: three events, one on a topic outside the filter.
        publisher.publish("s/a", "3");
        publisher.publish("x/y", "4");
        publisher.publish("s/c", "5");
        publisher.flush();
        let m = server.metrics();
        wait_until_async(5000, "events in", || m.events_in.load(Relaxed) >= 5).await;
        let mut c = timeout(5000, "connect", Client::connect(&server.url())).await.unwrap();
        let got = subscribe_synced(&mut c, 1, &["s/#"], Some(resume)).await;
        assert_eq!(events(&got).iter().map(|e| e.1).collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 1, seq: 5, mode: SyncMode::Replay }));
        // Topics are declared again on the new connection.
        assert!(got.iter().any(|m| matches!(m, ServerMsg::Topic { name, .. } if name == "s/a")));

        // A stale epoch gets a snapshot: the latest of each matching topic, in seq order.
        let stale = Resume { epoch: resume.epoch ^ 1, last_seq: 2 };
        let got = subscribe_synced(&mut c, 2, &["s/#"], Some(stale)).await;
        assert_eq!(events(&got).iter().map(|e| e.1).collect::<Vec<_>>(), vec![2, 3, 5]);
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 2, seq: 5, mode: SyncMode::Snapshot }));

        // Past the history ring: snapshot too.
        for i in 0..10 {
            publisher.publish("s/a", format!("{i}"));
        }
        until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { seq: 15, .. })).await;
        let got = subscribe_synced(&mut c, 3, &["s/#"], Some(Resume { epoch: resume.epoch, last_seq: 5 })).await;
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 3, seq: 15, mode: SyncMode::Snapshot }));
        // Within it: replay.
        let got = subscribe_synced(&mut c, 4, &["s/#"], Some(Resume { epoch: resume.epoch, last_seq: 9 })).await;
        assert_eq!(events(&got).iter().map(|e| e.1).collect::<Vec<_>>(), (10..=15).collect::<Vec<_>>());
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 4, seq: 15, mode: SyncMode::Replay }));
    });
}

#[test]
fn live_events_racing_a_subscribe_are_neither_lost_nor_doubled() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[limits]\noutbox-messages = 100000\nhistory = 100000"));
    let url = server.url();
    let total = 2000u64;
    // The publisher runs on its own thread while clients subscribe mid-stream.
    let port = broker.port;
    let publishing = std::thread::spawn(move || {
        let mut p = Publisher::connect(port);
        for i in 0..total {
            p.publish(&format!("race/{}", i % 7), format!("{i}"));
        }
        p.flush();
    });
    block_on_timeout(60_000, "race", async {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut c = Client::connect(&url).await.unwrap();
            c.subscribe(1, &["race/#"], None).await.unwrap();
            clients.push(c);
            // Spreads the subscribes over the stream: the race is the subject,
            // so this paces them rather than waiting for anything.
            smol::Timer::after(std::time::Duration::from_millis(5)).await;
        }
        for (n, mut c) in clients.into_iter().enumerate() {
            // Before Synced: the snapshot (latest per topic). After: every live event once.
            let mut synced_at = None;
            let mut live = Vec::new();
            // Until the last event: live, or already in the answer (a client
            // that subscribed after the last publish is synced at `total`).
            while live.last().copied() != Some(total) && synced_at.is_none_or(|s| s < total) {
                match next(&mut c).await {
                    ServerMsg::Synced { seq, .. } => synced_at = Some(seq),
                    ServerMsg::Event { seq, .. } if synced_at.is_some() => live.push(seq),
                    ServerMsg::Event { seq, .. } => assert!(seq <= total),
                    ServerMsg::Lagged { .. } => panic!("client {n} lagged"),
                    _ => {}
                }
            }
            let s = synced_at.unwrap();
            let want: Vec<u64> = (s + 1..=total).collect();
            assert_eq!(live, want, "client {n} synced at {s}");
        }
    });
    publishing.join().unwrap();
}

#[test]
fn client_publish_reaches_the_broker_within_permissions() {
    let broker = Broker::start();
    let cfg = config(
        broker.port,
        "[auth]\nmode = \"none\"\nsubscribe = [\"sensors/#\", \"cmd/#\"]\npublish = [\"cmd/+/set\"]",
    );
    let server = Server::start_linked(&cfg);
    block_on_timeout(20_000, "publish", async {
        let (mut c, _) = subscribed(&server.url(), &["cmd/#"]).await;
        c.send(&ClientMsg::Publish { req: 1, topic: "cmd/lamp/set".into(), payload: b"on".to_vec(), retain: false })
            .await
            .unwrap();
        assert_eq!(next(&mut c).await, ServerMsg::Ack { req: 1 });
        // It went to the broker and came back as an event.
        let got = until(&mut c, 5000, |m| matches!(m, ServerMsg::Event { .. })).await;
        assert_eq!(events(&got)[0].2, Value::Text("on".into()));
        // Outside the publish permissions, or malformed.
        let send = |req, topic: &str| ClientMsg::Publish { req, topic: topic.into(), payload: vec![], retain: false };
        c.send(&send(2, "cmd/lamp/get")).await.unwrap();
        c.send(&send(3, "cmd/+/set")).await.unwrap();
        // Outside the subscribe permissions.
        c.subscribe(2, &["#"], None).await.unwrap();
        c.subscribe(3, &["sensors/+/t", "other"], None).await.unwrap();
        let mut errors = Vec::new();
        while errors.len() < 4 {
            if let ServerMsg::Error { code, req, .. } = next(&mut c).await {
                errors.push((code, req));
            }
        }
        assert_eq!(errors, vec![(403, 2), (400, 3), (403, 2), (403, 3)]);
    });
}

#[test]
fn queued_messages_are_packed_into_one_frame() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let mut p = Publisher::connect(broker.port);
    for t in ["p/a", "p/b", "p/c"] {
        p.publish(t, "1");
    }
    p.flush();
    let m = server.metrics();
    wait_until(5000, "events in", || m.events_in.load(Relaxed) == 3);
    let mut raw = RawWs::connect(server.addr);
    let (_, hello) = raw.read_frame().unwrap();
    assert!(matches!(ServerMsg::decode_all(&hello).unwrap()[0], ServerMsg::Hello { .. }));
    let sub = ClientMsg::Subscribe { id: 1, filters: vec!["p/#".into()], resume: None };
    raw.frame(true, OP_BINARY, &sub.encode(), true);
    let (op, body) = raw.read_frame().unwrap();
    assert_eq!(op, OP_BINARY);
    let msgs = ServerMsg::decode_all(&body).unwrap();
    assert_eq!(msgs.len(), 7, "3 Topic + 3 Event + Synced in one WebSocket message: {msgs:?}");
    assert!(matches!(msgs[6], ServerMsg::Synced { id: 1, seq: 3, .. }));
}
