//! Memory of a running server per idle connection.
//!
//! Opens N protocol clients against a server on this machine, each subscribed
//! to `#`, and reports the server's resident memory (VmRSS from
//! `/proc/PID/status`) before and after.
//!
//! ```text
//! cargo run --release --example idle_connections -- ws://127.0.0.1:8080/ws SERVER_PID 1000
//! ```
//! Raise `ulimit -n` for both processes above N first.

use std::time::{Duration, Instant};

use edgepush_client::Client;
use edgepush_protocol::ServerMsg;

fn rss_kib(pid: u32) -> u64 {
    edgepush::internals::rss_kib(pid).expect("the server's VmRSS in /proc")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, pid, n] = &args[..] else {
        eprintln!("usage: idle_connections URL SERVER_PID N");
        std::process::exit(64);
    };
    let pid: u32 = pid.parse().expect("PID");
    let n: usize = n.parse().expect("N");
    smol::block_on(async {
        smol::Timer::after(Duration::from_millis(500)).await;
        let before = rss_kib(pid);
        let started = Instant::now();
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = Client::connect(url).await.unwrap_or_else(|e| panic!("client {i}: {e}"));
            c.subscribe(1, &["#"], None).await.unwrap();
            loop {
                if let ServerMsg::Synced { .. } = c.next().await.unwrap() {
                    break;
                }
            }
            clients.push(c);
        }
        let connect_s = started.elapsed().as_secs_f64();
        smol::Timer::after(Duration::from_millis(1000)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!("connections {n}");
        println!("connect_seconds {connect_s:.2}");
        println!("server_rss_before_kib {before}");
        println!("server_rss_after_kib {after}");
        println!("server_rss_per_connection_bytes {per:.0}");
        drop(clients);
    });
}
