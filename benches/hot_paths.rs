//! Micro-benchmarks of the per-event hot paths: `cargo bench`.
//!
//! No framework (criterion would add a dozen crates for four loops): each case
//! runs in batches long enough to time (about 20 ms), 15 samples, and the
//! median nanoseconds per iteration are printed with the spread. CI builds
//! these (`cargo build --benches`) and asserts no times: the machines are shared
//! and noisy. End-to-end figures come from `edgepush-bench`.

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use edgepush::internals::FilterIndex;
use edgepush::internals::{Outbox, Take};
use edgepush_protocol::topic;
use edgepush_protocol::{ServerMsg, Value};

const SAMPLES: usize = 15;

/// Times `f` (which runs `per_call` iterations) and prints the median ns per iteration.
fn bench(name: &str, per_call: u64, mut f: impl FnMut()) {
    // Calibrate: calls per sample so one sample takes about 20 ms.
    let mut calls = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed() > Duration::from_millis(20) || calls >= 1 << 30 {
            break;
        }
        calls *= 2;
    }
    let mut ns: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_nanos() as f64 / (calls * per_call) as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    let (lo, med, hi) = (ns[0], ns[SAMPLES / 2], ns[SAMPLES - 1]);
    println!("{name:<48} {med:>10.1} ns/iter  (min {lo:.1}, max {hi:.1}, {SAMPLES} samples)");
}

fn main() {
    // `cargo bench -- FILTER` runs the cases whose name contains FILTER.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let on = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    let value = Value::Number(21.5);
    let value_bytes = postcard::to_allocvec(&value).unwrap();

    if on("value") {
        bench("value::parse number payload", 1, || {
            black_box(edgepush_protocol::value::parse(black_box(b"21.5")));
        });
        bench("value::parse JSON fields payload", 1, || {
            black_box(edgepush_protocol::value::parse(black_box(br#"{"t":21.5,"rh":40}"#)));
        });
    }

    if on("encode") {
        let mut seq = 0u64;
        bench("encode_event (hub: once per event)", 1, || {
            seq += 1;
            black_box(ServerMsg::encode_event(black_box(7), seq, 1_764_000_000_000, &value_bytes));
        });
        let msg = ServerMsg::Event { topic: 7, seq: 1, ts_ms: 1_764_000_000_000, value: value.clone() };
        bench("ServerMsg::encode via serde (for comparison)", 1, || {
            black_box(black_box(&msg).encode());
        });
    }

    if on("match") {
        // 1,000 subscriptions of the shapes dashboards use.
        let mut index = FilterIndex::default();
        for i in 0..1000u64 {
            let f = match i % 4 {
                0 => format!("site/{}/+/temp", i % 50),
                1 => format!("site/{}/#", i % 50),
                2 => format!("site/{}/room{}/temp", i % 50, i % 20),
                _ => "#".to_owned(),
            };
            index.insert(&f, (i, 1));
        }
        bench("FilterIndex match, 1,000 filters", 1, || {
            let mut n = 0;
            index.for_each_match(black_box("site/7/room7/temp"), |_| n += 1);
            black_box(n);
        });
        bench("topic::matches, one filter", 1, || {
            black_box(topic::matches(black_box("site/+/room7/#"), black_box("site/7/room7/temp")));
        });
    }

    if on("fan-out") {
        let outboxes: Vec<Arc<Outbox>> = (0..1000).map(|_| Outbox::new(256)).collect();
        let event: edgepush::internals::Bytes = ServerMsg::encode_event(7, 1, 1_764_000_000_000, &value_bytes).into();
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::with_capacity(64 * 1024);
        let mut pushed = 0;
        bench("fan-out of one event to 1,000 outboxes", 1, || {
            for o in &outboxes {
                black_box(o.push_live(&[&event]));
            }
            pushed += 1;
            // Drain as the session tasks would, off the clock's main cost.
            if pushed == 128 {
                for o in &outboxes {
                    frame.clear();
                    while let Poll::Ready(Take::Messages(_)) = o.poll_take(&cx, &mut frame, 64 * 1024) {
                        frame.clear();
                    }
                }
                pushed = 0;
            }
        });
    }
}
