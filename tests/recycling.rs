//! Connection recycling behind a load balancer: `max-connection-age-ms`
//! closes old connections with 1001 (with jitter) after their pending output,
//! and SIGUSR1 drains every connection over `drain-spread-ms` while new ones
//! are accepted. Clients resume where they were.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Client, ClientError};
use edgepush_protocol::{Resume, ServerMsg, SyncMode};

/// Connects and subscribes to `filter` (resuming from `resume`), reading
/// until the Subscribe answer is complete; returns the client, the answer's
/// mode and the events it carried.
fn subscribed(url: &str, filter: &str, resume: Option<Resume>) -> (Client, SyncMode, Vec<u64>) {
    block_on_timeout(10_000, "subscribe", async {
        let mut c = Client::connect(url).await.unwrap();
        c.subscribe(1, &[filter], resume).await.unwrap();
        let mut seqs = Vec::new();
        loop {
            match c.next().await.unwrap() {
                ServerMsg::Event { seq, .. } => seqs.push(seq),
                ServerMsg::Synced { mode, .. } => return (c, mode, seqs),
                _ => {}
            }
        }
    })
}

/// Reads events until the server closes; returns their seqs and the close.
fn until_closed(c: &mut Client, limit_ms: u64) -> (Vec<u64>, Option<(u16, String)>) {
    block_on_timeout(limit_ms, "the server's close", async {
        let mut seqs = Vec::new();
        loop {
            match c.next().await {
                Ok(ServerMsg::Event { seq, .. }) => seqs.push(seq),
                Ok(_) => {}
                Err(ClientError::Closed(close)) => return (seqs, close),
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    })
}

/// Publishes `topic` = 0, 1, 2, ... every `every` until stopped.
fn publishing(
    broker_port: u16,
    topic: &'static str,
    every: Duration,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let mut p = Publisher::connect(broker_port);
        let mut n = 0u64;
        // Bounded: a minute of publishing at most.
        let end = Instant::now() + Duration::from_secs(60);
        while !s.load(Relaxed) && Instant::now() < end {
            p.publish(topic, n.to_string());
            n += 1;
            std::thread::sleep(every);
        }
        p.flush();
        n
    });
    (stop, t)
}

#[test]
fn connections_past_their_age_get_1001_with_jitter_and_resume_by_replay() {
    let broker = Broker::start();
    let age = scaled(2000);
    let server =
        Server::start_linked(&config(broker.port, &format!("[limits]\nmax-connection-age-ms = {}\n", age.as_millis())));
    let url = server.url();
    let (stop, publisher) = publishing(broker.port, "age/x", scaled(20));
    // One client followed closely, and a crowd connected at the same moment.
    let connected = Instant::now();
    let (mut c, _, mut seqs) = subscribed(&url, "age/#", None);
    let epoch = c.hello().epoch;
    let crowd: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (mut c, _, _) = subscribed(&url, "age/#", None);
                let at = Instant::now();
                let (_, close) = until_closed(&mut c, 30_000);
                (at, Instant::now(), close)
            })
        })
        .collect();
    let (live, close) = until_closed(&mut c, 30_000);
    let lived = connected.elapsed();
    seqs.extend(live);
    assert_eq!(close, Some((1001, "connection recycled; reconnect".to_owned())));
    // At its age ± 10 % (and the time it takes to send what was queued).
    assert!(lived >= age.mul_f64(0.9) && lived <= age.mul_f64(1.1) + scaled(1500), "closed after {lived:?}");
    assert!(!seqs.is_empty(), "events arrived before the close");
    // The crowd leaves spread out, not at one instant.
    let closes: Vec<_> = crowd.into_iter().map(|t| t.join().unwrap()).collect();
    let ages: Vec<Duration> = closes
        .iter()
        .map(|(at, end, close)| {
            assert_eq!(close.as_ref().map(|c| c.0), Some(1001));
            end.duration_since(*at)
        })
        .collect();
    let (first, last) = (closes.iter().map(|c| c.1).min().unwrap(), closes.iter().map(|c| c.1).max().unwrap());
    assert!(last.duration_since(first) >= age / 50, "jitter spreads the crowd: {ages:?}");

    // Reconnecting with the epoch and last seq it had: a replay on the same
    // instance, continuing exactly after the last event it had.
    let last = *seqs.last().unwrap();
    let (mut c2, mode, replayed) = subscribed(&url, "age/#", Some(Resume { epoch, last_seq: last }));
    assert_eq!(mode, SyncMode::Replay);
    stop.store(true, Relaxed);
    let published = publisher.join().unwrap();
    seqs.extend(replayed);
    // Everything published reaches it, in order, without a gap or a repeat
    // (one seq per event, from 1 in the epoch: the last is the count).
    let m = server.metrics();
    wait_until(10_000, "the server to have every event", || m.events_in.load(Relaxed) == published);
    let want = published;
    let mut have = seqs.last().copied().unwrap_or(0);
    let rest = block_on_timeout(10_000, "the rest", async {
        let mut rest = Vec::new();
        while have < want {
            if let ServerMsg::Event { seq, .. } = c2.next().await.unwrap() {
                rest.push(seq);
                have = seq;
            }
        }
        rest
    });
    seqs.extend(rest);
    let expected: Vec<u64> = (seqs[0]..=want).collect();
    assert_eq!(seqs, expected, "no gap, no repeat across the recycle");
    let m = m.render();
    assert!(m.contains("edgepush_recycled_total{reason=\"age\"} 9\n"), "{m}");
    assert!(m.contains("edgepush_recycled_total{reason=\"drain\"} 0\n"), "{m}");
}

#[test]
fn sigusr1_drains_every_connection_over_the_spread_and_new_ones_stay() {
    let broker = Broker::start();
    let spread = scaled(3000);
    let (d, addr) = run_binary(&format!(
        "[limits]\ndrain-spread-ms = {}\nconnections-per-second-per-ip = 1000\n[mqtt]\nport = {}\n",
        spread.as_millis(),
        broker.port
    ));
    wait_linked(addr, 10_000);
    let url = format!("ws://{addr}/ws");
    const N: usize = 10;
    let clients: Vec<Client> = (0..N).map(|_| subscribed(&url, "drain/#", None).0).collect();
    let (stop, publisher) = publishing(broker.port, "drain/x", scaled(50));
    let signalled = Instant::now();
    d.signal(libc::SIGUSR1);
    let closing: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let (_, close) = until_closed(&mut c, 60_000);
                (Instant::now(), close)
            })
        })
        .collect();
    // A connection made during the drain is accepted and left alone.
    std::thread::sleep(spread / 2);
    let (mut newcomer, _, _) = subscribed(&url, "drain/#", None);
    let mut closes: Vec<Instant> = closing
        .into_iter()
        .map(|t| {
            let (at, close) = t.join().unwrap();
            assert_eq!(close, Some((1001, "server draining; reconnect".to_owned())));
            at
        })
        .collect();
    closes.sort();
    let offsets: Vec<Duration> = closes.iter().map(|t| t.duration_since(signalled)).collect();
    // Spread evenly: the i-th of N at about i/N of the spread.
    let last = *offsets.last().unwrap();
    assert!(last >= spread.mul_f64(0.6) && last <= spread + scaled(1500), "{offsets:?}");
    assert!(offsets[0] <= spread.mul_f64(0.3), "{offsets:?}");
    let mid = offsets[N / 2];
    assert!(mid >= spread.mul_f64(0.2) && mid <= spread.mul_f64(0.8), "half of them by half the spread: {offsets:?}");
    // The newcomer still gets events after the drain is over.
    stop.store(true, Relaxed);
    publisher.join().unwrap();
    block_on_timeout(10_000, "an event to the newcomer", async {
        loop {
            if let ServerMsg::Event { .. } = newcomer.next().await.unwrap() {
                break;
            }
        }
    });
    assert!(d.wait_log("drain: closing 10 connections", 1000).contains("1001"));
    assert_eq!(metric_in(&metrics_text(addr), "edgepush_recycled_total{reason=\"drain\"}"), Some(N as u64));
}
