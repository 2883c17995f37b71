//! `History` (docs/PROTOCOL.md §6.13) against the real binary and a real
//! mosquitto: values published before a client connects come back per topic,
//! oldest first, with `per_topic` respected and clamped; the answer is not
//! live and leaves the resume point alone (a later Replay has no gap and no
//! repeat); a filter outside the token gets 403, a third request at once 429;
//! a malformed History closes with 1007.

mod common;

use async_tungstenite::tungstenite::Message;
use common::*;
use edgepush_client::{with_token, Backoff, Client, ClientError, Follower, Update};
use edgepush_protocol::msg::HISTORY_MAX_PER_TOPIC;
use edgepush_protocol::{ClientMsg, Point, ServerMsg, SyncMode, Value};

const TOKEN: &str = "history-token";

/// The binary with a token that may subscribe to `h/#` only, its ring large
/// enough for every value below; its `ws://` URL with the token.
fn start(broker: &Broker) -> (Daemon, std::net::SocketAddr, String) {
    let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(TOKEN.as_bytes()));
    let (d, addr) = run_binary(&format!(
        "[limits]\nhistory = 1000\nconnections-per-second-per-ip = 1000\n[mqtt]\nport = {}\n\
         [[auth.tokens]]\nname = \"h\"\nsha256 = \"{hash}\"\nsubscribe = [\"h/#\"]\n",
        broker.port
    ));
    wait_linked(addr, 10_000);
    (d, addr, with_token(&format!("ws://{addr}/ws"), TOKEN))
}

/// Publishes `h/a` = 1..=n and `h/b` = 1000, and waits until the server has them all.
fn publish_before(broker: &Broker, addr: std::net::SocketAddr, n: u32) {
    let mut p = Publisher::connect(broker.port);
    for i in 1..=n {
        p.publish("h/a", i.to_string());
    }
    p.publish("h/b", "1000");
    p.flush();
    let want = u64::from(n) + 1;
    wait_until(10_000, "the server to take every value", || metric(addr, "events_in_total") >= want);
}

/// What a History answered: per topic name its points, and HistoryDone's
/// (seq, truncated); or the Error's code. Anything else in between is returned too.
struct Answer {
    past: Vec<(String, Vec<Point>)>,
    done: Result<(u64, bool), u16>,
    other: Vec<ServerMsg>,
}

async fn history(c: &mut Client, id: u32, filters: &[&str], per_topic: u16) -> Answer {
    c.history(id, filters, per_topic).await.unwrap();
    let (mut past, mut other) = (Vec::new(), Vec::new());
    loop {
        match c.next().await.unwrap() {
            ServerMsg::Past { topic, points } => past.push((c.topic_name(topic).expect("declared").to_owned(), points)),
            ServerMsg::HistoryDone { id: done, seq, truncated } if done == id => {
                return Answer { past, done: Ok((seq, truncated)), other };
            }
            ServerMsg::Error { code, req, .. } if req == id => return Answer { past, done: Err(code), other },
            ServerMsg::Topic { .. } => {}
            m => other.push(m),
        }
    }
}

fn numbers(points: &[Point]) -> Vec<f64> {
    points.iter().map(|p| if let Value::Number(n) = p.value { n } else { panic!("{p:?}") }).collect()
}

/// Subscribes and reads to the Synced; returns its seq and mode, and the events' seqs.
async fn subscribe(
    c: &mut Client,
    filter: &str,
    resume: Option<edgepush_protocol::Resume>,
) -> (u64, SyncMode, Vec<u64>) {
    c.subscribe(1, &[filter], resume).await.unwrap();
    let mut seqs = Vec::new();
    loop {
        match c.next().await.unwrap() {
            ServerMsg::Event { seq, .. } => seqs.push(seq),
            ServerMsg::Synced { seq, mode, .. } => return (seq, mode, seqs),
            _ => {}
        }
    }
}

#[test]
fn values_published_before_connecting_come_back_in_order_per_topic_respected_and_clamped() {
    let broker = Broker::start();
    let (_d, addr, url) = start(&broker);
    publish_before(&broker, addr, 100);
    block_on_timeout(20_000, "history", async {
        let mut c = Client::connect(&url).await.unwrap();
        // No subscription is needed.
        let a = history(&mut c, 7, &["h/#"], 5).await;
        assert_eq!(a.done, Ok((101, false)));
        assert!(a.other.is_empty(), "{:?}", a.other);
        let names: Vec<&str> = a.past.iter().map(|(n, _)| n.as_str()).collect();
        // Topics ordered by their newest point: h/a's is seq 100, h/b's 101.
        assert_eq!(names, ["h/a", "h/b"]);
        assert_eq!(numbers(&a.past[0].1), [96.0, 97.0, 98.0, 99.0, 100.0]);
        assert_eq!(a.past[0].1.iter().map(|p| p.seq).collect::<Vec<_>>(), [96, 97, 98, 99, 100]);
        assert!(a.past[0].1.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        assert_eq!(numbers(&a.past[1].1), [1000.0]);
        // More than the cap is clamped to it, not refused.
        let a = history(&mut c, 8, &["h/a"], u16::MAX).await;
        assert_eq!(a.done, Ok((101, false)));
        assert_eq!(a.past.len(), 1);
        let want: Vec<f64> = (100 - u32::from(HISTORY_MAX_PER_TOPIC) + 1..=100).map(f64::from).collect();
        assert_eq!(numbers(&a.past[0].1), want);
        assert_eq!(c.resume_point().last_seq, 0, "Past values are not events");
        c.close().await;
    });
}

#[test]
fn a_replay_after_a_history_has_no_gap_and_no_repeat() {
    let broker = Broker::start();
    let (_d, addr, url) = start(&broker);
    publish_before(&broker, addr, 10);
    let mut p = Publisher::connect(broker.port);
    let resume = block_on_timeout(20_000, "subscribe and history", async {
        let mut c = Client::connect(&url).await.unwrap();
        let (synced, mode, _) = subscribe(&mut c, "h/a", None).await;
        assert_eq!((synced, mode), (11, SyncMode::Snapshot));
        // Live events, then a History whose answer holds them and older ones.
        p.publish("h/a", "11");
        p.publish("h/a", "12");
        let mut live = Vec::new();
        while live.len() < 2 {
            if let ServerMsg::Event { seq, .. } = c.next().await.unwrap() {
                live.push(seq);
            }
        }
        assert_eq!(live, [12, 13]);
        let a = history(&mut c, 2, &["h/a"], 20).await;
        assert_eq!(a.done, Ok((13, false)));
        assert!(a.other.is_empty(), "no Event in a History answer: {:?}", a.other);
        assert_eq!(numbers(&a.past[0].1), (1..=12).map(f64::from).collect::<Vec<_>>());
        assert_eq!(c.resume_point().last_seq, 13);
        let resume = c.resume_point();
        c.close().await;
        resume
    });
    p.publish("h/a", "13");
    p.publish("h/b", "x");
    p.publish("h/a", "14");
    p.flush();
    wait_until(10_000, "the server to take them", || metric(addr, "events_in_total") >= 16);
    block_on_timeout(20_000, "resume", async {
        let mut c = Client::connect(&url).await.unwrap();
        let (synced, mode, seqs) = subscribe(&mut c, "h/a", Some(resume)).await;
        assert_eq!((synced, mode), (16, SyncMode::Replay));
        assert_eq!(seqs, [14, 16], "exactly the h/a events after 13");
        c.close().await;
    });
}

#[test]
fn out_of_scope_is_403_a_third_at_once_is_429_and_a_malformed_history_closes_1007() {
    let broker = Broker::start();
    let (_d, addr, url) = start(&broker);
    publish_before(&broker, addr, 3);
    block_on_timeout(20_000, "bounds", async {
        let mut c = Client::connect(&url).await.unwrap();
        let a = history(&mut c, 1, &["h/a", "other/#"], 5).await;
        assert_eq!(a.done, Err(403));
        assert!(a.past.is_empty());
        let a = history(&mut c, 2, &["#"], 5).await;
        assert_eq!(a.done, Err(403), "# is wider than the token's h/#");
        // Refusals before the budget cost nothing: two answered, the third refused.
        assert!(history(&mut c, 3, &["h/a"], 1).await.done.is_ok());
        assert!(history(&mut c, 4, &["h/a"], 1).await.done.is_ok());
        let a = history(&mut c, 5, &["h/a"], 1).await;
        assert_eq!(a.done, Err(429));
        assert!(a.past.is_empty());
        // The connection stays open and answers.
        c.send(&ClientMsg::Ping { nonce: 9 }).await.unwrap();
        loop {
            if let ServerMsg::Pong { nonce } = c.next().await.unwrap() {
                assert_eq!(nonce, 9);
                break;
            }
        }
        // per_topic past u16: not a ClientMsg.
        let bad = [4, 1, 1, 1, b'#', 0xff, 0xff, 0x7f];
        c.send_raw(Message::Binary(bad.to_vec().into())).await.unwrap();
        let close = loop {
            match c.next().await {
                Ok(_) => {}
                Err(ClientError::Closed(close)) => break close,
                Err(e) => panic!("expected a close, got {e}"),
            }
        };
        assert_eq!(close.map(|(code, _)| code), Some(1007));
    });
}

#[test]
fn a_follower_with_history_reports_past_values_after_its_synced() {
    let broker = Broker::start();
    let (_d, addr, url) = start(&broker);
    publish_before(&broker, addr, 4);
    let mut f = Follower::new(&url, &["h/#"], Backoff::default()).with_history(2);
    let updates = block_on_timeout(20_000, "the follower's answers", async {
        let mut out = Vec::new();
        loop {
            let u = f.next().await;
            let done = matches!(u, Update::HistoryDone { .. });
            out.push(u);
            if done {
                return out;
            }
        }
    });
    let kinds: Vec<String> = updates
        .iter()
        .map(|u| match u {
            Update::Connected { .. } => "connected".into(),
            Update::Event { topic, .. } => format!("event {topic}"),
            Update::Synced { seq, .. } => format!("synced {seq}"),
            Update::Past { topic, points } => format!("past {topic} {:?}", numbers(points)),
            Update::HistoryDone { seq, truncated } => format!("done {seq} {truncated}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["connected", "event h/a", "event h/b", "synced 5", "past h/a [3.0, 4.0]", "past h/b [1000.0]", "done 5 false"]
    );
    assert_eq!(f.resume_point().map(|r| r.last_seq), Some(5));
    assert_eq!(f.ledger().received_count(f.resume_point().unwrap().epoch), 2, "Past values are not in the ledger");
}
