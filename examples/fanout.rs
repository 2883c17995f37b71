//! Throughput of the hub's hot path, in process and without sockets: 1,000
//! connections subscribed to `#`, each event matched, encoded once and queued
//! to every outbox, outboxes drained into frames as a writer would. Used to
//! choose the release `opt-level` (README "Building for a board").
//!
//! ```text
//! cargo run --release --example fanout
//! ```

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use edgepush::internals::Metrics;
use edgepush::internals::{BridgeMsg, Hub, HubCmd, HubConfig};
use edgepush::internals::{Outbox, Take};
use edgepush_protocol::Permissions;
use edgepush_protocol::{ClientMsg, Value};

fn main() {
    let conns = 1000u64;
    let events = 20_000u64;
    let (tx, _rx) = async_channel::bounded(16);
    let cfg = HubConfig { max_topics: 4096, history: 4096, max_filters: 64, heartbeat_ms: 15000 };
    let mut hub = Hub::new(cfg, Arc::new(Metrics::default()), tx);
    let perms = Arc::new(Permissions { subscribe: vec!["#".into()], publish: vec![] });
    let mut outboxes = Vec::new();
    for c in 0..conns {
        let ob = Outbox::new(1 << 16);
        hub.command(HubCmd::Connect { conn: c, outbox: ob.clone(), perms: perms.clone() });
        let msg = ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None };
        hub.command(HubCmd::Request { conn: c, msg });
        outboxes.push(ob);
    }
    let cx = Context::from_waker(Waker::noop());
    let mut frame = Vec::with_capacity(16 * 1024);
    let mut runs = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..events {
            let v = Value::Fields(vec![("t".into(), 20.0 + (i % 50) as f64 / 10.0), ("h".into(), 40.0)]);
            let value = postcard::to_allocvec(&v).unwrap();
            hub.bridge(BridgeMsg::Event { topic: format!("sensors/room-{}/env", i % 20), value, ts_ms: i });
            if i % 16 == 15 {
                for ob in &outboxes {
                    frame.clear();
                    while let Poll::Ready(Take::Messages(_)) = ob.poll_take(&cx, &mut frame, 16 * 1024) {
                        frame.clear();
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        runs.push(events as f64 * conns as f64 / secs);
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("fanout: {conns} connections, {events} events per run, median {:.2} M deliveries/s", runs[2] / 1e6);
}
