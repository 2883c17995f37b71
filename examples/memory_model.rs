//! Measures the memory model the board profiles use: server RSS per topic and
//! per history entry, with sensor-sized payloads (200 bytes).
//!
//! Run the server with `history = 0` for `topics`, and with a large `history`
//! for `history` (one topic, so only the ring grows):
//!
//! ```text
//! cargo run --release --example memory_model -- topics  SERVER_PID BROKER_PORT 4000
//! cargo run --release --example memory_model -- history SERVER_PID BROKER_PORT 4000
//! ```

use std::time::Duration;

fn rss_kib(pid: u32) -> u64 {
    edgepush::internals::rss_kib(pid).expect("the server's VmRSS in /proc")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, pid, port, n] = &args[..] else {
        eprintln!("usage: memory_model topics|history SERVER_PID BROKER_PORT N");
        std::process::exit(64);
    };
    let pid: u32 = pid.parse().expect("PID");
    let port: u16 = port.parse().expect("port");
    let n: usize = n.parse().expect("N");
    let mut opts = rumqttc::MqttOptions::new(format!("memory-model-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(opts, 1024);
    std::thread::spawn(move || for _ in conn.iter() {});
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid);
    let payload = "x".repeat(200);
    for i in 0..n {
        let topic = match mode.as_str() {
            "topics" => format!("model/sensor-{i:06}/temperature"),
            _ => "model/one/temperature".to_owned(),
        };
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.clone()).unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    let per = after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    println!("{mode} {n}: server RSS {before} KiB -> {after} KiB, {per:.0} bytes each");
}
