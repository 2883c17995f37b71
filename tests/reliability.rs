//! Faults and scale-out: no silent loss while clients come and go and the
//! broker restarts; two instances on one broker; a broker that refuses us,
//! vanishes mid-stream, or is too slow to accept.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Backoff, Client, Fate, Follower, Update};
use edgepush_protocol::rng::Rng;
use edgepush_protocol::{ClientMsg, Resume, ServerMsg, SyncMode};
use smol::future::FutureExt as _;

fn quick_backoff() -> Backoff {
    Backoff { base: scaled(20), cap: scaled(200) }
}

/// Follows until told to stop churning and caught up with `target` (0: not
/// yet known); sets `synced` once its first Subscribe answer is complete.
async fn churn(
    mut f: Follower,
    seed: u64,
    churning: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
    (short, long): (Duration, Duration),
    synced: Arc<AtomicBool>,
) -> Follower {
    let mut rng = Rng::new(seed);
    let gap = |rng: &mut Rng| scaled(100 + (rng.next_f64() * 400.0) as u64);
    let mut next_cut = Instant::now() + gap(&mut rng);
    loop {
        let t = target.load(Relaxed);
        let churn_on = churning.load(Relaxed);
        let caught_up = f.is_connected() && t > 0 && f.resume_point().is_some_and(|r| r.last_seq >= t);
        if caught_up && !churn_on {
            return f;
        }
        if !f.is_connected() {
            // A connect attempt (after the outage or backoff): never cut short.
            if let Update::Synced { .. } = f.next().await {
                synced.store(true, Relaxed);
            }
            continue;
        }
        // Connected: read, waking to cut the connection or look at the flags.
        let now = Instant::now();
        let wake =
            if churn_on { next_cut.min(now + Duration::from_millis(50)) } else { now + Duration::from_millis(50) };
        let got = async { Some(f.next().await) }
            .or(async {
                smol::Timer::at(wake).await;
                None
            })
            .await;
        if let Some(Update::Synced { .. }) = got {
            synced.store(true, Relaxed);
        }
        if got.is_none() && churn_on && Instant::now() >= next_cut {
            next_cut = Instant::now() + gap(&mut rng);
            // Short outages resume by Replay, long ones by Snapshot.
            let outage = if rng.next_f64() < 0.5 { short } else { long };
            f.disconnect(outage);
        }
    }
}

#[test]
fn no_silent_loss_while_clients_churn_and_the_broker_restarts_twice() {
    let mut broker = Broker::start();
    // A small history so that long outages outlive it (Snapshot) and short ones do not (Replay).
    let server = Server::start_linked(&config(broker.port, "[limits]\nhistory = 150\n"));
    let url = server.url();
    let pool = Pool::new(2);
    let ex = &pool.ex;

    let churning = Arc::new(AtomicBool::new(true));
    let target = Arc::new(AtomicU64::new(0));
    // The reference: connected throughout, never cut, subscribed before the first event.
    let reference_synced = Arc::new(AtomicBool::new(false));
    let reference = ex.spawn(churn(
        Follower::new(&url, &["n/#"], quick_backoff()),
        1,
        Arc::new(AtomicBool::new(false)),
        target.clone(),
        (Duration::ZERO, Duration::ZERO),
        reference_synced.clone(),
    ));
    let flaky: Vec<_> = (0..6u64)
        .map(|i| {
            ex.spawn(churn(
                Follower::new(&url, &["n/#"], quick_backoff()),
                0x5eed + i,
                churning.clone(),
                target.clone(),
                (scaled(60), scaled(900)),
                Arc::new(AtomicBool::new(false)),
            ))
        })
        .collect();

    wait_until(10_000, "the reference to subscribe", || reference_synced.load(Relaxed));

    // A numbered stream over 5 topics, with two broker restarts in it.
    let mut publisher = Publisher::connect(broker.port);
    let mut log: Vec<(String, u64)> = Vec::new();
    let m = server.metrics();
    let events_in = || m.events_in.load(Relaxed);
    for phase in 0..3 {
        for _ in 0..500 {
            let k = log.len() as u64;
            let topic = format!("n/{}", k % 5);
            publisher.publish(&topic, k.to_string());
            log.push((topic, k));
            // Paced in the test's time scale, so that emulated runs see the
            // same history span relative to their reconnect times (the pace
            // is the subject, not a wait for anything).
            std::thread::sleep(scaled(3));
        }
        publisher.flush();
        let n = log.len() as u64;
        wait_until(10_000, "the server to take every event", || events_in() >= n);
        if phase < 2 {
            broker.stop();
            server.wait_broker(false);
            // The outage's length, deliberately: the churning clients live through it.
            std::thread::sleep(Duration::from_millis(200));
            broker.restart();
            server.wait_broker(true);
            publisher = Publisher::connect(broker.port);
        }
    }
    // Let the churn run a little past the last event, then settle (a
    // deliberate stretch of churn with no new events, not a wait for one).
    std::thread::sleep(scaled(500));
    target.store(log.len() as u64, Relaxed);
    churning.store(false, Relaxed);
    let reference = block_on_timeout(30_000, "the reference to catch up", reference);
    let flaky: Vec<Follower> =
        block_on_timeout(60_000, "every flaky client to catch up", async { futures_all(flaky).await });
    pool.finish();

    // The reference saw the publisher's log exactly: every event once, seqs 1..=N in order.
    let epoch = reference.resume_point().unwrap().epoch;
    let mut by_seq: BTreeMap<u64, &str> = BTreeMap::new();
    for (i, (topic, _)) in log.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(reference.ledger().fate(epoch, seq, topic), Fate::Received, "reference missed seq {seq}");
        by_seq.insert(seq, topic);
    }
    assert_eq!(reference.ledger().received_count(epoch), log.len());

    // Every flaky client: each event received once, or skipped/covered with notice.
    let mut totals: HashMap<String, usize> = HashMap::new();
    let (mut replays, mut snapshots, mut connects) = (0, 0, 0);
    for (i, f) in flaky.iter().enumerate() {
        assert!(f.ledger().duplicates().is_empty(), "client {i}: duplicates {:?}", f.ledger().duplicates());
        for (&seq, topic) in &by_seq {
            let fate = f.ledger().fate(epoch, seq, topic);
            assert!(
                matches!(fate, Fate::Received | Fate::Skipped | Fate::Covered),
                "client {i}: seq {seq} on {topic} is {fate:?} (stats {:?})",
                f.stats()
            );
            *totals.entry(format!("{fate:?}")).or_default() += 1;
        }
        replays += f.stats().replays;
        snapshots += f.stats().snapshots;
        connects += f.stats().connects;
    }
    println!(
        "no-loss: {} events, 6 clients, {connects} connections ({replays} replays, {snapshots} snapshots): {totals:?}",
        log.len()
    );
    assert!(replays >= 6, "short outages should resume by Replay: {replays}");
    assert!(snapshots >= 6 + 3, "long outages should resume by Snapshot: {snapshots}");
}

/// Awaits every task, in order.
async fn futures_all<T>(tasks: Vec<smol::Task<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

#[test]
fn two_instances_on_one_broker_each_see_every_event_and_publishes_cross_over() {
    let broker = Broker::start();
    let perms = "[auth]\npublish = [\"cmd/#\"]\n";
    let a = Server::start_linked(&config(broker.port, perms));
    let b = Server::start_linked(&config(broker.port, perms));
    block_on_timeout(30_000, "two instances", async {
        let (mut on_a, _) = subscribed(&a.url(), &["#"]).await;
        let (mut on_b, _) = subscribed(&b.url(), &["#"]).await;
        assert_ne!(on_a.hello().epoch, on_b.hello().epoch, "instances are independent");
        let mut p = Publisher::connect(broker.port);
        for k in 0..50 {
            p.publish("s/t", k.to_string());
        }
        for c in [&mut on_a, &mut on_b] {
            let mut got = Vec::new();
            while got.len() < 50 {
                if let Some(n) = number(&next(c).await) {
                    got.push(n);
                }
            }
            assert_eq!(got, (0..50).map(f64::from).collect::<Vec<_>>());
        }
        // A publish through A reaches B's client (and A's own) through the broker.
        let publish = ClientMsg::Publish { req: 9, topic: "cmd/lamp".into(), payload: b"1".to_vec(), retain: false };
        on_a.send(&publish).await.unwrap();
        let seen_a = until(&mut on_a, 5000, |m| matches!(m, ServerMsg::Event { .. })).await;
        assert!(seen_a.iter().any(|m| matches!(m, ServerMsg::Ack { req: 9 })), "{seen_a:?}");
        let seen_b = until(&mut on_b, 5000, |m| number(m) == Some(1.0)).await;
        let ServerMsg::Event { topic, .. } = seen_b.last().unwrap() else { unreachable!() };
        assert_eq!(on_b.topic_name(*topic), Some("cmd/lamp"));

        // A client moving from A to B: its resume names A's epoch, so B answers
        // with a Snapshot (the latest of every topic), never a wrong Replay.
        let from_a = on_a.resume_point();
        let mut moved = timeout(5000, "connect", Client::connect(&b.url())).await.unwrap();
        let resume = Resume { epoch: from_a.epoch, last_seq: from_a.last_seq };
        let answer = subscribe_synced(&mut moved, 1, &["#"], Some(resume)).await;
        assert!(
            matches!(answer.last(), Some(ServerMsg::Synced { mode: SyncMode::Snapshot, .. })),
            "{:?}",
            answer.last()
        );
        assert!(answer.iter().any(|m| number(m) == Some(49.0)), "the latest s/t value is in the snapshot");
    });
}

fn mqtt_section(port: u16, extra: &str) -> String {
    format!("[mqtt]\nport = {port}\nreconnect-min-ms = 50\nreconnect-max-ms = 300\n{extra}\n")
}

/// Reads until a Broker notice with `up`.
async fn broker_notice(c: &mut Client, up: bool) {
    until(c, 15_000, |m| matches!(m, ServerMsg::Broker { up: u } if *u == up)).await;
}

#[test]
fn broker_refusing_our_credentials_is_logged_reported_and_recovered_from() {
    let port = free_port();
    let passwd = scratch_dir("passwd").join("passwd");
    let set_password = |pw: &str| {
        let out = std::process::Command::new(mosquitto_passwd())
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["edgepush", pw])
            .output()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // mosquitto may run as its own user after starting as root.
        std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    };
    set_password("right");
    let broker = Broker::start_with(port, &format!("allow_anonymous false\npassword_file {}", passwd.display()));
    let (d, addr) = run_binary(&mqtt_section(port, "username = \"edgepush\"\npassword = \"wrong\""));
    let line = d.wait_log("check [mqtt] username and password", 10_000);
    assert!(line.starts_with("<4>"), "{line}");
    assert!(!d.lines().join("\n").contains("wrong"), "the password must not be logged");
    assert_eq!(healthz(addr), 503);
    let url = format!("ws://{addr}/ws");
    block_on_timeout(30_000, "recovery", async {
        let c = Client::connect(&url).await.unwrap();
        assert!(!c.hello().broker_up, "Hello says the broker is down");
        let mut c = c;
        c.subscribe(1, &["#"], None).await.unwrap();
        // The operator fixes the broker's password file; no edgepush restart.
        set_password("wrong");
        broker.reload();
        broker_notice(&mut c, true).await;
    });
    assert_eq!(healthz(addr), 200);
    d.wait_log("connected to 127.0.0.1", 5_000);
}

fn mosquitto_passwd() -> std::path::PathBuf {
    ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("mosquitto_passwd (Debian package mosquitto)")
}

#[test]
fn broker_vanishing_mid_stream_is_logged_reported_and_recovered_from() {
    let mut broker = Broker::start();
    let (d, addr) = run_binary(&mqtt_section(broker.port, ""));
    wait_until(10_000, "the link", || healthz(addr) == 200);
    let url = format!("ws://{addr}/ws");
    let mut p = Publisher::connect(broker.port);
    block_on_timeout(60_000, "vanish and return", async {
        let (mut c, _) = subscribed(&url, &["#"]).await;
        p.publish("v/t", "1");
        until(&mut c, 5000, |m| number(m) == Some(1.0)).await;
        broker.stop(); // SIGKILL: no DISCONNECT, mid-stream
        broker_notice(&mut c, false).await;
        assert_eq!(healthz(addr), 503);
        broker.restart();
        broker_notice(&mut c, true).await;
        assert_eq!(healthz(addr), 200);
        let mut p = Publisher::connect(broker.port);
        p.publish("v/t", "2");
        until(&mut c, 5000, |m| number(m) == Some(2.0)).await;
    });
    let lost = d.wait_log("lost the link", 5_000);
    assert!(lost.starts_with("<4>"), "{lost}");
    d.wait_log("link to 127.0.0.1", 5_000);
}

#[test]
fn broker_too_slow_to_accept_is_logged_reported_and_recovered_from() {
    // A "broker" that completes TCP handshakes (the kernel backlog) but never
    // answers: CONNECT goes unanswered.
    let stuck = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stuck.local_addr().unwrap().port();
    let (d, addr) = run_binary(&mqtt_section(port, ""));
    let url = format!("ws://{addr}/ws");
    let c = block_on_timeout(5000, "connect", Client::connect(&url)).unwrap();
    assert!(!c.hello().broker_up);
    assert_eq!(healthz(addr), 503);
    let line = d.wait_log("no CONNACK within 5 s", 20_000);
    assert!(line.starts_with("<4>"), "{line}");
    // The real broker takes the port; edgepush connects without a restart.
    drop(stuck);
    let _broker = Broker::start_on(port);
    let mut c = c;
    block_on_timeout(30_000, "recovery", async {
        c.subscribe(1, &["#"], None).await.unwrap();
        broker_notice(&mut c, true).await;
    });
    assert_eq!(healthz(addr), 200);
}
