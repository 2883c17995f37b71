//! The broker link: lost and back without restarting edgepush, with `Broker`
//! notices to every client and events flowing again.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use edgepush_client::Client;
use edgepush_protocol::{ClientMsg, ServerMsg};

#[test]
fn broker_killed_and_restarted_clients_are_told_and_events_flow_again() {
    let mut broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[auth]\npublish = [\"cmd/#\"]"));
    block_on_timeout(60_000, "broker restart", async {
        let (mut a, _) = subscribed(&server.url(), &["s/#"]).await;
        let (mut b, _) = subscribed(&server.url(), &["#"]).await;
        let mut p = Publisher::connect(broker.port);
        p.publish("s/x", "1");
        until(&mut a, 5000, |m| matches!(m, ServerMsg::Event { seq: 1, .. })).await;

        broker.stop();
        for c in [&mut a, &mut b] {
            let got = until(c, 10_000, |m| matches!(m, ServerMsg::Broker { .. })).await;
            assert_eq!(got.last(), Some(&ServerMsg::Broker { up: false }));
        }
        // A client connecting now is told in its Hello.
        let mut late = Client::connect(&server.url()).await.unwrap();
        assert!(!late.hello().broker_up);
        // Publishing while the link is down: 503.
        late.send(&ClientMsg::Publish { req: 4, topic: "cmd/x".into(), payload: vec![], retain: false }).await.unwrap();
        assert!(matches!(next(&mut late).await, ServerMsg::Error { code: 503, req: 4, .. }));

        broker.restart();
        for c in [&mut a, &mut b, &mut late] {
            let got = until(c, 10_000, |m| matches!(m, ServerMsg::Broker { .. })).await;
            assert_eq!(got.last(), Some(&ServerMsg::Broker { up: true }));
        }
        let mut p = Publisher::connect(broker.port);
        p.publish("s/x", "2");
        let got = until(&mut a, 5000, |m| matches!(m, ServerMsg::Event { .. })).await;
        assert!(got.iter().any(|m| matches!(m, ServerMsg::Event { seq: 2, .. })), "{got:?}");
    });
    let m = server.metrics();
    assert_eq!(m.broker_reconnects.load(Relaxed), 1);
    assert!(m.broker_up.load(Relaxed));
}

#[test]
fn no_broker_at_start_is_retried_until_one_appears() {
    let port = free_port();
    let server = Server::start(&config(port, ""));
    // Deliberately some time with nothing on the port: a few connection
    // attempts (every 50 to 200 ms) fail before the checks below.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(get(server.addr, "/healthz").0, 503);
    let c = block_on_timeout(5000, "connect", Client::connect(&server.url())).unwrap();
    assert!(!c.hello().broker_up, "the server serves clients while the broker is away");
    // A broker appears on that port.
    let _broker = Broker::start_on(port);
    server.wait_broker(true);
    assert_eq!(get(server.addr, "/healthz").0, 200);
}
