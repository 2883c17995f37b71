//! The persistent MQTT session (`[mqtt] clean-session = false`): what the
//! broker accepted while edgepush's link was down reaches the dashboards once
//! the link is back, and after an edgepush restart too.

mod common;

use std::collections::BTreeSet;

use common::*;
use edgepush_protocol::ServerMsg;

const SESSION: &str = "[mqtt]\nclean-session = false\nsubscribe = [\"s/#\"]\n";

/// Events published in each phase.
const N: u64 = 30;

#[test]
fn events_published_while_the_link_is_cut_arrive_once_it_is_back() {
    let broker = Broker::start();
    let proxy = TcpProxy::start(broker.port);
    let server = Server::start_linked(&config(proxy.port, SESSION));
    let got = block_on_timeout(60_000, "events across a cut link", async {
        let (mut c, _) = subscribed(&server.url(), &["s/#"]).await;
        let mut p = Publisher::connect(broker.port);
        for i in 1..=N {
            p.publish("s/x", i.to_string());
        }
        let mut got = until(&mut c, 10_000, |m| number(m) == Some(N as f64)).await;

        // The link alone is lost: edgepush and mosquitto both stay up.
        proxy.cut();
        let down = until(&mut c, 10_000, |m| matches!(m, ServerMsg::Broker { .. })).await;
        assert_eq!(down.last(), Some(&ServerMsg::Broker { up: false }));
        // Accepted by the broker (acked) while edgepush cannot hear it.
        for i in N + 1..=2 * N {
            p.publish("s/x", i.to_string());
        }
        p.flush();
        proxy.restore();
        // Up first (the broker kept the session), then what it queued.
        let back = until(&mut c, 10_000, |m| matches!(m, ServerMsg::Broker { .. })).await;
        assert_eq!(back, vec![ServerMsg::Broker { up: true }], "nothing arrives before the link is up");
        got.extend(until(&mut c, 10_000, |m| number(m) == Some((2 * N) as f64)).await);
        got
    });
    // Every event, in order, with consecutive seqs. Those delivered just
    // before the cut whose PUBACK the cut lost come again (QoS 1 is at least
    // once; each delivery is an event of its own, PROTOCOL.md §6.3).
    let events: Vec<(u64, u64)> = got
        .iter()
        .filter_map(|m| match m {
            ServerMsg::Event { seq, .. } => Some((*seq, number(m).unwrap() as u64)),
            _ => None,
        })
        .collect();
    assert!(events.windows(2).all(|w| w[1].0 == w[0].0 + 1), "seqs not consecutive: {events:?}");
    let mut first = Vec::new();
    for &(_, v) in &events {
        if first.contains(&v) {
            assert!(v <= N, "{v} published during the cut came twice: {events:?}");
        } else {
            first.push(v);
        }
    }
    assert_eq!(first, (1..=2 * N).collect::<Vec<_>>(), "none missing, in order: {events:?}");
    assert_eq!(server.metrics().broker_reconnects.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn what_the_broker_queued_while_edgepush_was_stopped_arrives_after_its_restart() {
    let broker = Broker::start();
    let text = |subscribe: &str| {
        format!(
            "[mqtt]\nport = {}\nclient-id = \"edgepush-restart-{}\"\nclean-session = false\nsubscribe = {subscribe}\n\
             reconnect-min-ms = 50\nreconnect-max-ms = 200\n",
            broker.port,
            std::process::id()
        )
    };
    // The first run also subscribes to old/#, which the second no longer wants.
    let (mut first, addr) = run_binary(&text("[\"s/#\", \"old/#\"]"));
    wait_linked(addr, 20_000);
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(20_000).success());

    // One topic each: the new instance's dashboard sees every value, live or
    // as the latest of its topic, however the restart and its subscribe race.
    let mut p = Publisher::connect(broker.port);
    p.publish("old/1", "-1");
    for i in 1..=N {
        p.publish(&format!("s/{i}"), i.to_string());
    }
    p.flush();

    let (second, addr) = run_binary(&text("[\"s/#\"]"));
    wait_linked(addr, 20_000);
    second.wait_log("the broker kept the session", 10_000);
    let seen = block_on_timeout(30_000, "the queued events", async {
        let (mut c, got) = subscribed(&format!("ws://{addr}/ws"), &["#"]).await;
        let mut seen: BTreeSet<i64> = got.iter().filter_map(number).map(|v| v as i64).collect();
        let deadline = std::time::Instant::now() + scaled(10_000);
        while seen.len() < N as usize && std::time::Instant::now() < deadline {
            if let Some(v) = number(&next(&mut c).await) {
                seen.insert(v as i64);
            }
        }
        seen
    });
    // Every queued event, and not the one for the filter the config dropped
    // (queued before them all by the session's old subscription).
    assert_eq!(seen, (1..=N as i64).collect::<BTreeSet<_>>(), "log: {:#?}", second.lines());
}
