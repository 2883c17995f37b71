//! At scale, against the real binary: a reconnect storm of 1,000 clients after
//! a server restart, and a bounded soak (1,000 clients with churn, slow
//! clients, a broker restart every 30 s, a steady publish rate) after which
//! memory and file descriptors return to where they were.
//!
//! `EDGEPUSH_TEST_SCALE_CLIENTS` (default 1000) and `EDGEPUSH_SOAK_SECS`
//! (default 120) size them; the QEMU runs use fewer clients.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Backoff, Follower, Update};
use edgepush_protocol::rng::Rng;
use edgepush_protocol::ClientMsg;
use smol::future::FutureExt as _;

fn clients() -> usize {
    std::env::var("EDGEPUSH_TEST_SCALE_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// Room for the clients' sockets and the server's (which inherits the limit).
fn nofile_needed() -> u64 {
    (clients() * 2 + 200) as u64
}

/// The config text: caps with room for every client, the broker on `broker`.
fn scale_config(port: u16, broker: u16, extra: &str) -> String {
    let n = clients() + 200;
    format!(
        "listen = \"127.0.0.1:{port}\"\n[limits]\nmax-connections = {n}\nmax-connections-per-ip = {n}\nconnections-per-second-per-ip = 1000000\n{extra}\n\
         [mqtt]\nport = {broker}\nreconnect-min-ms = 50\nreconnect-max-ms = 300\n"
    )
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn reconnect_storm_after_a_server_restart_resyncs_everyone_within_the_caps() {
    raise_nofile(nofile_needed());
    let n = clients();
    let broker = Broker::start();
    let port = free_port();
    let addr = loopback(port);
    let cfg_path = write_config(&scratch_dir("storm"), &scale_config(port, broker.port, ""));
    let cfg = edgepush::internals::Config::load(&cfg_path, None).unwrap();
    let (board, _) = edgepush::internals::board_profile(&cfg.board).unwrap();
    let bound_kib = board.worst_case_bytes(&cfg.limits, cfg.tls.is_some()) / 1024;
    let mut server = Daemon::run(&cfg_path, addr);
    // Under qemu-user the RSS is the emulator's too (its translation cache
    // alone is tens of MiB): there the bound applies to the growth from idle.
    let emulated = std::env::var("EDGEPUSH_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty());
    let rss_idle = if emulated { rss_kib(server.child.id()) } else { 0 };
    let mut p = Publisher::connect(broker.port);
    for k in 0..20 {
        p.publish(&format!("storm/{k}"), k.to_string());
    }
    p.flush();

    // Each client records the epoch of its last Synced.
    let synced: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let pool = Pool::new(2);
    let url = format!("ws://{addr}/ws");
    for i in 0..n {
        let synced = synced.clone();
        let mut f = Follower::new(&url, &["storm/#"], Backoff::default());
        pool.ex
            .spawn(async move {
                loop {
                    if let Update::Synced { .. } = f.next().await {
                        synced[i].store(f.resume_point().unwrap().epoch, Relaxed);
                    }
                }
            })
            .detach();
    }
    let all_on = |epoch: u64| synced.iter().all(|e| e.load(Relaxed) == epoch);
    wait_until(120_000, "every client to sync", || {
        let e = synced[0].load(Relaxed);
        e != 0 && all_on(e)
    });
    let old_epoch = synced[0].load(Relaxed);
    assert_eq!(metric(addr, "connections"), n as u64);

    // Sample the accept queue and the server's RSS through the storm. (The
    // sampler reads a real queue: a listener that never accepts shows two.)
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let _pending = [
        std::net::TcpStream::connect(("127.0.0.1", probe_port)).unwrap(),
        std::net::TcpStream::connect(("127.0.0.1", probe_port)).unwrap(),
    ];
    wait_until(2000, "the probe's accept queue", || accept_backlog(probe_port) == 2);
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_backlog = Arc::new(AtomicU64::new(0));
    let pid_now = Arc::new(AtomicU64::new(0));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak_backlog, pid_now, peak_rss) =
            (sampling.clone(), peak_backlog.clone(), pid_now.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while sampling.load(Relaxed) {
                peak_backlog.fetch_max(accept_backlog(port), Relaxed);
                let pid = pid_now.load(Relaxed) as u32;
                if pid != 0 {
                    if let Some(r) = edgepush::internals::rss_kib(pid) {
                        peak_rss.fetch_max(r, Relaxed);
                    }
                }
                // The sampling period (not a wait for an event).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let restart_at = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(20_000).success());
    let server = Daemon::run(&cfg_path, addr);
    pid_now.store(u64::from(server.child.id()), Relaxed);
    let listening_at = Instant::now();
    let mut new_epoch = 0;
    wait_until(120_000, "every client to re-sync with the new server", || {
        new_epoch = synced.iter().map(|e| e.load(Relaxed)).find(|&e| e != old_epoch).unwrap_or(0);
        new_epoch != 0 && all_on(new_epoch)
    });
    let resynced = restart_at.elapsed();
    let since_listening = listening_at.elapsed();
    sampling.store(false, Relaxed);
    sampler.join().unwrap();
    let peak_conns = metric(addr, "connections_peak");
    let refused = metric_sum(addr, "refused_total");
    let rss_peak = peak_rss.load(Relaxed).max(rss_kib(server.child.id()));
    println!(
        "storm: {n} clients re-synced {resynced:?} after the restart began ({since_listening:?} after the new server \
         listened); peak accept backlog {}; connections peak {peak_conns} (cap {}); refused {refused}; server RSS peak \
         {rss_peak} KiB (bound {bound_kib} KiB{})",
        peak_backlog.load(Relaxed),
        cfg.limits.max_connections,
        if emulated { format!(" on top of the emulator's {rss_idle} KiB at idle") } else { String::new() }
    );
    assert!(peak_conns <= cfg.limits.max_connections as u64);
    assert_eq!(metric(addr, "connections"), n as u64, "every client is back, once");
    assert!(
        rss_peak - rss_idle.min(rss_peak) <= bound_kib,
        "RSS {rss_peak} KiB (less {rss_idle} KiB of the emulator at idle) over the bound {bound_kib} KiB"
    );
    assert!(!server.lines().join("\n").contains("panicked"));
    pool.finish();
}

/// A client that subscribes and never reads, reconnecting every few seconds.
fn slow_client_loop(addr: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        let mut ws = RawWs::connect_small_buffer(addr);
        let sub = ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None };
        ws.frame(true, 2, &sub.encode(), true);
        // Long enough to fill its 4 KiB window and the server's send buffer,
        // overflow its outbox and stay behind for slow-client-timeout-ms.
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What a crowd of clients did while it was there.
struct Crowd {
    connects: u64,
    duplicates: usize,
    restarts: u32,
    rss_peak: u64,
    connections_at_end: u64,
}

/// `n` followers (each cutting its connection every 2 to 10 s for a short or
/// long outage) and ten clients that never read, for `secs`, restarting the
/// broker every 30 s; then they all leave, and this returns once the server
/// has seen the last of them go.
fn crowd(addr: SocketAddr, pid: u32, n: usize, secs: u64, broker: &mut Broker) -> Crowd {
    let leave = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let leave = leave.clone();
            std::thread::spawn(move || slow_client_loop(addr, leave))
        })
        .collect();
    let pool = Pool::new(2);
    let url = format!("ws://{addr}/ws");
    let followers: Arc<Mutex<HashMap<usize, (u64, usize)>>> = Arc::default();
    for i in 0..n {
        let (leave, followers) = (leave.clone(), followers.clone());
        let mut f =
            Follower::new(&url, &["soak/#"], Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(5) });
        pool.ex
            .spawn(async move {
                let mut rng = Rng::new(i as u64 * 7919 + 1);
                let mut cut_at = Instant::now() + Duration::from_millis(2000 + (rng.next_f64() * 8000.0) as u64);
                while !leave.load(Relaxed) {
                    if !f.is_connected() {
                        let _ = f.next().await;
                        continue;
                    }
                    let wake = cut_at.min(Instant::now() + Duration::from_millis(200));
                    let got = async { Some(f.next().await) }
                        .or(async {
                            smol::Timer::at(wake).await;
                            None
                        })
                        .await;
                    if got.is_none() && Instant::now() >= cut_at {
                        let outage = if rng.next_f64() < 0.5 { 100 } else { 3000 };
                        f.disconnect(Duration::from_millis(outage));
                        cut_at = Instant::now() + Duration::from_millis(2000 + (rng.next_f64() * 8000.0) as u64);
                    }
                }
                let dups = f.ledger().duplicates().len();
                followers.lock().unwrap().insert(i, (f.stats().connects, dups));
                // Dropping `f` closes its connection.
            })
            .detach();
    }

    // Broker restarts every 30 s; RSS sampled every second.
    let started = Instant::now();
    let (mut rss_peak, mut restarts) = (0, 0);
    let mut next_restart = started + Duration::from_secs(30);
    while started.elapsed() < Duration::from_secs(secs) {
        // The soak's own clock: it runs for `secs`, sampling once a second.
        std::thread::sleep(Duration::from_secs(1));
        rss_peak = rss_peak.max(rss_kib(pid));
        if Instant::now() >= next_restart && started.elapsed() + Duration::from_secs(5) < Duration::from_secs(secs) {
            broker.restart();
            restarts += 1;
            next_restart += Duration::from_secs(30);
        }
    }
    let connections_at_end = metric(addr, "connections");

    leave.store(true, Relaxed);
    for s in slow {
        s.join().unwrap();
    }
    wait_until(30_000, "every follower to finish", || followers.lock().unwrap().len() == n);
    pool.finish();
    wait_until(30_000, "the server to see every client leave", || metric(addr, "connections") == 0);
    let followers = followers.lock().unwrap();
    Crowd {
        connects: followers.values().map(|v| v.0).sum(),
        duplicates: followers.values().map(|v| v.1).sum(),
        restarts,
        rss_peak,
        connections_at_end,
    }
}

/// The first visit: long enough for one broker restart.
const WARM_UP_SECS: u64 = 40;

/// Waits (up to 25 s: the server trims every 10 s) for the RSS to come within
/// 10% of `target`, and returns it.
fn settled_rss(pid: u32, target: u64) -> u64 {
    // Not settling in time is for the caller's assertion to report.
    poll_until(25_000, || rss_kib(pid) * 100 <= target * 110);
    rss_kib(pid)
}

#[test]
fn soak_with_churn_slow_clients_and_broker_restarts_returns_memory_and_descriptors() {
    raise_nofile(nofile_needed());
    let n = clients();
    let secs: u64 = std::env::var("EDGEPUSH_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let mut broker = Broker::start();
    let port = free_port();
    let addr = loopback(port);
    let extra = "history = 1000\nslow-client-timeout-ms = 2000\n";
    let cfg_path = write_config(&scratch_dir("soak"), &scale_config(port, broker.port, extra));
    let server = Daemon::run(&cfg_path, addr);
    let pid = server.child.id();

    // A steady 100 events/s on the followers' topics, plus bulk outside
    // their filter so that the clients that never read (subscribed to '#')
    // fall behind. It runs before the clients come, while they are here and
    // after they leave, so the baseline already holds a full history ring of
    // the same mix.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let port = broker.port;
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            let mut k = 0u64;
            while !stop.load(Relaxed) {
                p.publish(&format!("soak/{}", k % 20), k.to_string());
                p.publish("bulk/x", "x".repeat(4000));
                k += 1;
                // The rate is the subject: a steady 100 events/s.
                std::thread::sleep(Duration::from_millis(10));
            }
            k
        })
    };
    wait_until(60_000, "the history ring to fill", || metric(addr, "events_in_total") >= 3000);
    // A quiet second before the cold baseline, deliberately: RSS and the
    // sockets of the /metrics polls above settle with no event to mark it.
    std::thread::sleep(Duration::from_secs(1));
    let (rss_cold, fds_before) = (rss_kib(pid), fd_count(pid));

    // A first, shorter visit of the same crowd, with one broker restart: the
    // allocator's arenas grow to their working size once (glibc keeps part of
    // that as free lists it cannot return, between live history entries). A
    // leak grows with every visit; that growth is what the soak measures.
    let warm = crowd(addr, pid, n, WARM_UP_SECS, &mut broker);
    let rss_before = settled_rss(pid, rss_cold);
    let soak = crowd(addr, pid, n, secs, &mut broker);
    let left_at = Instant::now();
    let rss_after = settled_rss(pid, rss_before);
    let returned_after = left_at.elapsed();
    // A closing connection's socket outlives its count by a moment (longer
    // under emulation); a leaked one stays.
    poll_until(5000, || fd_count(pid) <= fds_before);
    let fds_after = fd_count(pid);
    let (accepted, evicted) = (metric(addr, "connections_accepted_total"), metric(addr, "evicted_total"));
    let lagged = metric(addr, "lagged_total");
    stop.store(true, Relaxed);
    let published = publisher.join().unwrap();
    println!(
        "soak: {secs} s, {n} clients ({} connections, {accepted} accepted in all, {evicted} slow clients evicted, \
         {lagged} lagged), {} broker restarts, {published} events published; server RSS cold {rss_cold} KiB, after a \
         {WARM_UP_SECS} s warm-up visit (peak {} KiB) {rss_before} KiB, soak peak {} KiB ({} connections at the end), after \
         {rss_after} KiB ({returned_after:?} after the last client left); fds before {fds_before}, after {fds_after}",
        soak.connects, soak.restarts, warm.rss_peak, soak.rss_peak, soak.connections_at_end
    );
    assert!(soak.restarts as u64 >= (secs / 30).saturating_sub(1), "{} broker restarts", soak.restarts);
    assert!(evicted > 0, "the slow clients were evicted");
    assert_eq!(warm.duplicates + soak.duplicates, 0, "duplicates delivered");
    assert!(rss_after * 100 <= rss_before * 110, "RSS {rss_after} KiB after vs {rss_before} KiB before (> 10%)");
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    let log = server.lines().join("\n");
    assert!(!log.contains("panicked"), "a panic in the server log:\n{log}");
}
