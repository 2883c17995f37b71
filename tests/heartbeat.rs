//! Heartbeats: idle clients get `Heartbeat` and WebSocket pings; a client that
//! never answers a ping is dropped within interval + timeout.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use edgepush_protocol::ServerMsg;

#[test]
fn an_idle_client_that_answers_pings_gets_heartbeats_and_stays() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[heartbeat]\ninterval-ms = 200\ntimeout-ms = 200"));
    block_on_timeout(10_000, "heartbeats", async {
        let (mut c, _) = subscribed(&server.url(), &["nothing/here"]).await;
        let mut beats = 0;
        let started = Instant::now();
        while beats < 5 {
            match next(&mut c).await {
                ServerMsg::Heartbeat { ts_ms } => {
                    let now = edgepush::internals::now_ms();
                    assert!(ts_ms <= now && now - ts_ms < 5000);
                    beats += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Five intervals passed with pings answered by the client library.
        assert!(started.elapsed() >= Duration::from_millis(4 * 200));
        assert_eq!(server.metrics().heartbeat_timeouts.load(Relaxed), 0);
        assert_eq!(server.metrics().connections.load(Relaxed), 1);
    });
}

#[test]
fn a_client_that_never_answers_pings_is_dropped_in_time_without_a_close_frame() {
    let broker = Broker::start();
    let (interval, timeout) = (300, 300);
    let cfg = config(broker.port, &format!("[heartbeat]\ninterval-ms = {interval}\ntimeout-ms = {timeout}"));
    let server = Server::start_linked(&cfg);
    let started = Instant::now();
    let mut raw = RawWs::connect(server.addr);
    let mut pings = 0;
    let mut heartbeats = 0;
    // Read everything, answer nothing, until the server hangs up.
    while let Some((op, payload)) = raw.read_frame() {
        match op {
            OP_PING => pings += 1,
            OP_BINARY => {
                for m in ServerMsg::decode_all(&payload).unwrap() {
                    if matches!(m, ServerMsg::Heartbeat { .. }) {
                        heartbeats += 1;
                    }
                }
            }
            OP_CLOSE => panic!("dropped connections get no close frame"),
            _ => {}
        }
    }
    let took = started.elapsed();
    assert_eq!(pings, 1, "one ping outstanding at a time");
    assert!(heartbeats >= 1);
    let bound = Duration::from_millis(interval + timeout);
    assert!(took >= bound - Duration::from_millis(20), "dropped too early: {took:?}");
    assert!(took < bound + scaled(1000), "dropped too late: {took:?}");
    let m = server.metrics();
    wait_until(2000, "the drop to be counted", || m.heartbeat_timeouts.load(Relaxed) == 1);
    assert_eq!(m.connections.load(Relaxed), 0);
}

#[test]
fn pongs_answer_pings_for_a_raw_client_that_does_answer() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, "[heartbeat]\ninterval-ms = 150\ntimeout-ms = 150"));
    let mut raw = RawWs::connect(server.addr);
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while Instant::now() < deadline {
        let (op, payload) = raw.read_frame().expect("still connected");
        if op == OP_PING {
            pings += 1;
            raw.frame(true, OP_PONG, &payload, true);
        }
    }
    assert!(pings >= 4, "{pings}");
    assert_eq!(server.metrics().heartbeat_timeouts.load(Relaxed), 0);
}

/// Hello is the first message on a connection even when the hub is slow to
/// queue it: the session's heartbeat must not go out ahead of it.
#[test]
fn hello_comes_first_even_when_the_hub_is_slow() {
    let broker = Broker::start();
    let port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[mqtt]\nport = {}\n[heartbeat]\ninterval-ms = 100\ntimeout-ms = 10000\n",
        broker.port
    );
    let cfg = write_config(&scratch_dir("hello-first"), &text);
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS", scaled(300).as_millis().to_string());
    let d = Daemon::spawn(cmd);
    d.wait_log("wedged by the test hook", 10_000);
    // The hub never answers now: a client waits for its Hello, and in the
    // meantime (several heartbeat intervals) must receive nothing else.
    let url = format!("ws://127.0.0.1:{port}/ws");
    let outcome =
        smol::block_on(smol::future::or(async { Some(edgepush_client::Client::connect(&url).await) }, async {
            smol::Timer::after(scaled(1000)).await;
            None
        }));
    match outcome {
        None => {}
        Some(Ok(_)) => panic!("a Hello from a wedged hub"),
        Some(Err(e)) => panic!("something before Hello: {e}"),
    }
}
