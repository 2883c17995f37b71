//! A full outbox never blocks the hub or other clients: a client that stops
//! reading collapses to latest-per-topic with `Lagged`, and one that stays
//! behind is evicted with 1013 while a fast client receives every event.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use edgepush_protocol::ServerMsg;

/// Big payloads fill socket buffers quickly.
const PAYLOAD: usize = 32 * 1024;

#[test]
fn a_client_that_never_reads_is_evicted_while_a_fast_one_gets_everything() {
    let broker = Broker::start();
    let cfg = config(broker.port, "[limits]\noutbox-messages = 64\nslow-client-timeout-ms = 500\nhistory = 16");
    let server = Server::start_linked(&cfg);
    let (mut fast, _) = block_on_timeout(5000, "fast client", subscribed(&server.url(), &["#"]));
    let mut slow = RawWs::connect_small_buffer(server.addr);
    slow.write_raw(&encode_frame(
        true,
        OP_BINARY,
        &edgepush_protocol::ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None }.encode(),
        true,
    ));
    let total = 600u64;
    let port = broker.port;
    // What the fast client has received so far: the publisher stays at most
    // `AHEAD` events in front of it (a closed loop, so "fast" means keeping
    // up, whatever the machine's speed; under qemu-user a fixed publishing
    // rate outran the emulated client). AHEAD is well under the outbox.
    const AHEAD: u64 = 16;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishing = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            for i in 0..total {
                // Bounded: 60 s (scaled) in all, as the reader's own limit.
                assert!(
                    poll_until(60_000, || received.load(Relaxed) + AHEAD > i),
                    "the fast client stopped receiving at {} of {total}",
                    received.load(Relaxed)
                );
                p.publish(&format!("big/{}", i % 4), vec![b'a' + (i % 10) as u8; PAYLOAD]);
            }
            p.flush();
        })
    };
    block_on_timeout(60_000, "fast client events", async {
        let mut seqs = Vec::new();
        while seqs.len() < total as usize {
            match next(&mut fast).await {
                ServerMsg::Event { seq, .. } => {
                    seqs.push(seq);
                    received.store(seqs.len() as u64, Relaxed);
                }
                ServerMsg::Lagged { .. } => panic!("the fast client lagged"),
                _ => {}
            }
        }
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    });
    publishing.join().unwrap();
    let m = server.metrics();
    wait_until(10_000, "the slow client to be evicted", || m.evicted.load(Relaxed) == 1);
    wait_until(5000, "its connection to end", || m.connections.load(Relaxed) == 1);
    assert!(m.lagged.load(Relaxed) >= 1);
    // Its socket ends (after whatever was buffered in the kernel).
    let mut frames = 0;
    while slow.read_frame().is_some() {
        frames += 1;
        assert!(frames < 100_000);
    }
}

#[test]
fn a_client_that_pauses_gets_lagged_then_the_latest_of_each_topic() {
    let broker = Broker::start();
    // The paused client answers no pings while paused: keep heartbeats out of it.
    let cfg = config(
        broker.port,
        "[limits]\noutbox-messages = 8\nslow-client-timeout-ms = 600000\nhistory = 16\n[heartbeat]\ninterval-ms = 600000",
    );
    let server = Server::start_linked(&cfg);
    let total = 600u64;
    let topics = 3u64;
    block_on_timeout(90_000, "pause and resume", async {
        let mut c = timeout(5000, "connect", small_buffer_client(server.addr)).await;
        subscribe_synced(&mut c, 1, &["#"], None).await;
        // Not reading now: publish everything and wait until the server has it all.
        let mut p = Publisher::connect(broker.port);
        for i in 0..total {
            p.publish(&format!("pause/{}", i % topics), format!("{i:x>width$}", width = PAYLOAD));
        }
        p.flush();
        let m = server.metrics();
        wait_until_async(30_000, "events in", || m.events_in.load(Relaxed) >= total).await;
        assert!(m.lagged.load(Relaxed) >= 1, "the outbox must have overflowed");
        // Resume reading: every event is received or counted as skipped.
        let mut received = 0u64;
        let mut skipped = 0u64;
        let mut lagged_notices = 0;
        let mut last_per_topic = std::collections::HashMap::new();
        let mut after_lag = Vec::new();
        while received + skipped < total {
            match next(&mut c).await {
                ServerMsg::Event { topic, seq, .. } => {
                    received += 1;
                    last_per_topic.insert(topic, seq);
                    if lagged_notices > 0 {
                        after_lag.push(seq);
                    }
                }
                ServerMsg::Lagged { skipped: n } => {
                    lagged_notices += 1;
                    skipped += u64::from(n);
                }
                _ => {}
            }
        }
        assert_eq!(received + skipped, total, "nothing missing without notice, nothing doubled");
        assert!(lagged_notices >= 1 && skipped > 0);
        // The latest event of every topic arrived.
        let mut latest: Vec<u64> = last_per_topic.values().copied().collect();
        latest.sort();
        assert_eq!(latest, vec![total - 2, total - 1, total]);
        // After the notice, seqs still grow.
        assert!(after_lag.windows(2).all(|w| w[0] < w[1]), "{after_lag:?}");
        assert_eq!(m.evicted.load(Relaxed), 0);
    });
}

/// A client that reads, but slower than events arrive, is still closed with
/// 1013: its slow-client clock runs from the first overflow until it has
/// caught up (the hub's unit test holds the clock across catch-ups; this is
/// the whole path, with a client that keeps reading).
#[test]
fn a_client_that_keeps_falling_behind_is_evicted_despite_reading() {
    let broker = Broker::start();
    let cfg = config(broker.port, "[limits]\noutbox-messages = 8\nslow-client-timeout-ms = 1000\nhistory = 16");
    let server = Server::start_linked(&cfg);
    let mut slow = RawWs::connect_small_buffer(server.addr);
    slow.write_raw(&encode_frame(
        true,
        OP_BINARY,
        &edgepush_protocol::ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None }.encode(),
        true,
    ));
    let port = broker.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            // At most 20 s of events, 400 a second on 8 topics (a publishing rate).
            for i in 0..8_000u64 {
                if stop.load(Relaxed) {
                    break;
                }
                p.publish(&format!("fast/{}", i % 8), vec![b'x'; 4096]);
                std::thread::sleep(std::time::Duration::from_micros(2500));
            }
        })
    };
    let m = server.metrics();
    let started = std::time::Instant::now();
    // The client reads a frame every 20 ms: it drains, but never keeps up.
    // (Its close frame would sit behind what the kernel buffered for it, so
    // the server's count says when it was evicted.)
    while started.elapsed() < scaled(15_000) && m.evicted.load(Relaxed) == 0 {
        if slow.read_frame().is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let took = started.elapsed();
    stop.store(true, Relaxed);
    publishing.join().unwrap();
    assert!(m.lagged.load(Relaxed) >= 1, "it never fell behind");
    assert_eq!(m.evicted.load(Relaxed), 1, "not evicted in {took:?}");
    assert!(m.render().contains("edgepush_evicted_total 1"), "{}", m.render());
}
