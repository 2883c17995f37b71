//! Half-open connections: clients in a network namespace this test creates
//! (`ip netns add`, a veth pair; needs root and iproute2) lose their link
//! without a FIN or RST. The server must free their connections within
//! heartbeat interval + timeout, and the clients must notice the dead server
//! within 2.5 × `heartbeat_ms`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Backoff, Follower, Update};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (Debian package iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: IpAddr,
}

impl Netns {
    fn create() -> Netns {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root for `ip netns` (CI runs as root)");
        let id = std::process::id() % 100_000;
        let net = 16 + (std::process::id() % 200) as u8;
        let n = Netns {
            name: format!("edgepush-ho-{id}"),
            host_if: format!("epho{id}a"),
            ns_if: format!("epho{id}b"),
            host_ip: IpAddr::from([10, 213, net, 1]),
        };
        let _ = Command::new("ip").args(["netns", "del", &n.name]).output();
        ip(&["netns", "add", &n.name]);
        ip(&["link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if]);
        ip(&["link", "set", &n.ns_if, "netns", &n.name]);
        ip(&["addr", "add", &format!("10.213.{net}.1/30"), "dev", &n.host_if]);
        ip(&["link", "set", &n.host_if, "up"]);
        ip(&["netns", "exec", &n.name, "ip", "addr", "add", &format!("10.213.{net}.2/30"), "dev", &n.ns_if]);
        ip(&["netns", "exec", &n.name, "ip", "link", "set", &n.ns_if, "up"]);
        ip(&["netns", "exec", &n.name, "ip", "link", "set", "lo", "up"]);
        n
    }

    /// Moves the calling thread into the namespace (sockets it opens live there).
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on a namespace file this process opened; affects this thread only.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Takes the namespace's side of the link down: packets vanish, no FIN, no RST.
    fn cut(&self) {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.ns_if, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

#[test]
fn half_open_connections_are_freed_by_the_server_and_noticed_by_the_clients() {
    const CLIENTS: usize = 5;
    let (interval_ms, timeout_ms) = (500u64, 500u64);
    let ns = Netns::create();
    let broker = Broker::start();
    let mut cfg = config(
        broker.port,
        &format!(
            "[heartbeat]\ninterval-ms = {}\ntimeout-ms = {}\n",
            scaled(interval_ms).as_millis(),
            scaled(timeout_ms).as_millis()
        ),
    );
    cfg.listen = SocketAddr::new(ns.host_ip, 0);
    let server = Server::start_linked(&cfg);
    let url = server.url();
    let heartbeat_ms = scaled(interval_ms).as_millis() as u64;

    // The clients live in the namespace: a thread that joined it opens their sockets.
    let (synced_tx, synced_rx) = mpsc::channel();
    let (cut_tx, cut_rx) = mpsc::channel::<Instant>();
    let name = ns.name.clone();
    let clients = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: as in Netns::enter.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        smol::block_on(async {
            let mut followers: Vec<Follower> = (0..CLIENTS)
                .map(|_| {
                    Follower::new(&url, &["#"], Backoff { base: Duration::from_secs(5), cap: Duration::from_secs(5) })
                })
                .collect();
            timeout(20_000, "the clients to sync from the namespace", async {
                for f in &mut followers {
                    loop {
                        match f.next().await {
                            Update::Synced { .. } => break,
                            Update::Lost { why, .. } => panic!("could not connect from the namespace: {why}"),
                            _ => {}
                        }
                    }
                }
            })
            .await;
            synced_tx.send(()).unwrap();
            // Keep reading on every client at once while the test cuts the link.
            let ex = smol::LocalExecutor::new();
            let tasks: Vec<_> = followers
                .into_iter()
                .map(|mut f| {
                    ex.spawn(async move {
                        loop {
                            if let Update::Lost { why, .. } = f.next().await {
                                return (Instant::now(), why);
                            }
                        }
                    })
                })
                .collect();
            ex.run(async {
                let cut_at = smol::unblock(move || cut_rx.recv_timeout(scaled(30_000)).expect("the cut")).await;
                // Far past the bound checked below: a client that never notices fails, not hangs.
                timeout(30_000, "every client to notice the dead link", async {
                    let mut noticed = Vec::new();
                    for t in tasks {
                        let (at, why) = t.await;
                        noticed.push((at.saturating_duration_since(cut_at), why));
                    }
                    noticed
                })
                .await
            })
            .await
        })
    });
    synced_rx.recv_timeout(scaled(20_000)).expect("clients connected from the namespace");
    let m = server.metrics();
    assert_eq!(m.connections.load(Relaxed), CLIENTS as u64);
    // One heartbeat round (a Heartbeat message to every client, sent with
    // the first ping) so the link is known good, then cut it.
    let sent = m.messages_sent.load(Relaxed);
    wait_until(10_000, "a heartbeat round", || m.messages_sent.load(Relaxed) >= sent + CLIENTS as u64);
    ns.cut();
    let cut_at = Instant::now();
    cut_tx.send(cut_at).unwrap();

    wait_until(10_000, "the server to free the half-open connections", || m.connections.load(Relaxed) == 0);
    let freed = cut_at.elapsed();
    let noticed = clients.join().unwrap();
    let server_bound = scaled(interval_ms + timeout_ms + 300);
    let client_bound = Duration::from_millis(heartbeat_ms * 5 / 2) + scaled(300);
    println!("half-open: server freed {CLIENTS} connections {freed:?} after the cut (bound {server_bound:?}); clients noticed after {:?} (bound {client_bound:?})", noticed.iter().map(|n| n.0).collect::<Vec<_>>());
    assert!(freed <= server_bound, "server freed them after {freed:?}");
    assert_eq!(m.heartbeat_timeouts.load(Relaxed), CLIENTS as u64, "dropped by the heartbeat, not by an error");
    for (after, why) in &noticed {
        assert!(why.contains("nothing from the server"), "{why}");
        assert!(*after <= client_bound, "a client noticed after {after:?}");
    }
    // Sanity: an enter() of the namespace works on a fresh thread too (used above inline).
    std::thread::spawn(move || ns.enter()).join().unwrap();
}
