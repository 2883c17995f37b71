//! `edgepush demo`: the real pipeline on a machine with no broker. An embedded
//! MQTT broker (rumqttd) in this process, a simulated sensor fleet publishing
//! to it over real MQTT, and the server subscribed to it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use edgepush_protocol::rng::Rng;

/// Starts rumqttd on `addr` on its own threads.
///
/// # Errors
/// The broker's configuration was refused.
pub fn start_broker(addr: SocketAddr) -> Result<(), String> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1024
max_outgoing_packet_count = 200
max_segment_size = 1048576
max_segment_count = 10

[v4.1]
name = "demo"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 65536
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| format!("broker config: {e}"))?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                warn!("demo broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// What a simulated device publishes.
enum Kind {
    /// A plain number drifting around `mean`.
    Number { mean: f64, drift: f64, noise: f64, decimals: usize },
    /// A flat JSON object: a power meter.
    Meter,
    /// A door: `open` / `closed`, retained.
    Door,
}

struct Device {
    topic: String,
    kind: Kind,
    every: Duration,
    retain: bool,
    state: f64,
    next: Instant,
}

impl Device {
    fn payload(&mut self, rng: &mut Rng, t: f64) -> String {
        match self.kind {
            Kind::Number { mean, drift, noise, decimals } => {
                // Mean-reverting random walk plus a slow daily-like wave.
                self.state += (mean - self.state) * 0.05 + drift * rng.noise();
                let v = self.state + (t / 600.0).sin() * drift * 4.0 + noise * rng.noise();
                format!("{v:.decimals$}")
            }
            Kind::Meter => {
                self.state = (self.state + 15.0 * rng.noise()).clamp(80.0, 3500.0);
                let volts = 230.0 + 1.5 * rng.noise();
                format!(
                    "{{\"power_w\":{:.1},\"voltage_v\":{volts:.1},\"current_a\":{:.3},\"on\":true}}",
                    self.state,
                    self.state / volts
                )
            }
            Kind::Door => {
                if rng.next_f64() < 0.3 {
                    self.state = 1.0 - self.state;
                }
                if self.state > 0.5 { "open" } else { "closed" }.to_owned()
            }
        }
    }
}

fn fleet() -> Vec<Device> {
    let now = Instant::now();
    let num = |topic: &str, mean: f64, drift: f64, noise: f64, decimals: usize, ms: u64, retain: bool| Device {
        topic: topic.into(),
        kind: Kind::Number { mean, drift, noise, decimals },
        every: Duration::from_millis(ms),
        retain,
        state: mean,
        next: now,
    };
    vec![
        num("sensors/living-room/temperature", 21.5, 0.05, 0.03, 2, 1000, true),
        num("sensors/living-room/humidity", 45.0, 0.2, 0.1, 1, 2000, false),
        num("sensors/living-room/co2", 650.0, 8.0, 3.0, 0, 2000, false),
        num("sensors/kitchen/temperature", 23.0, 0.08, 0.05, 2, 1000, false),
        num("sensors/kitchen/humidity", 52.0, 0.3, 0.1, 1, 2000, false),
        num("sensors/bedroom/temperature", 19.5, 0.04, 0.03, 2, 1500, true),
        num("sensors/bedroom/co2", 900.0, 12.0, 4.0, 0, 2500, false),
        num("sensors/outdoor/temperature", 8.0, 0.1, 0.05, 2, 3000, true),
        num("sensors/greenhouse/soil-moisture", 35.0, 0.2, 0.2, 1, 3000, false),
        Device {
            topic: "meters/main/power".into(),
            kind: Kind::Meter,
            every: Duration::from_millis(1000),
            retain: false,
            state: 800.0,
            next: now,
        },
        Device {
            topic: "meters/heat-pump/power".into(),
            kind: Kind::Meter,
            every: Duration::from_millis(2000),
            retain: false,
            state: 1500.0,
            next: now,
        },
        Device {
            topic: "doors/front".into(),
            kind: Kind::Door,
            every: Duration::from_millis(7000),
            retain: true,
            state: 0.0,
            next: now,
        },
    ]
}

/// Runs the simulated fleet against a broker until `stop` is set.
pub fn start_fleet(host: String, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut opts = rumqttc::MqttOptions::new(format!("edgepush-demo-fleet-{}", std::process::id()), host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(opts, 256);
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if stopping.load(Relaxed) {
                    return;
                }
                if ev.is_err() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
        let started = Instant::now();
        let mut rng = Rng::new(crate::clock::random_epoch());
        let mut devices = fleet();
        info!("demo: {} simulated devices publishing", devices.len());
        while !stop.load(Relaxed) {
            let now = Instant::now();
            for d in devices.iter_mut().filter(|d| d.next <= now) {
                let payload = d.payload(&mut rng, started.elapsed().as_secs_f64());
                let _ = client.try_publish(d.topic.clone(), rumqttc::QoS::AtLeastOnce, d.retain, payload);
                // A little jitter, as real devices have.
                d.next = now + d.every.mul_f64(0.9 + 0.2 * rng.next_f64());
            }
            let wake = devices.iter().map(|d| d.next).min().unwrap_or(now + Duration::from_secs(1));
            std::thread::sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(200)));
        }
        let _ = client.disconnect();
    })
}

/// `edgepush demo [--listen ADDR] [--broker HOST:PORT]`: the embedded broker
/// (or `--broker`), the simulated fleet, and the server with its dashboard.
///
/// # Errors
/// A bad argument, named; the embedded broker did not start.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut listen: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("valid");
    let mut broker: Option<(String, u16)> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs HOST:PORT")?;
                listen = v.parse().map_err(|_| format!("--listen: not an address: {v:?}"))?;
            }
            "--broker" => {
                let v = it.next().ok_or("--broker needs HOST:PORT")?;
                let (h, p) = v.rsplit_once(':').ok_or_else(|| format!("--broker: not HOST:PORT: {v:?}"))?;
                let port = p.parse().map_err(|_| format!("--broker: bad port in {v:?}"))?;
                broker = Some((h.to_owned(), port));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    crate::daemon::logging::init(log::LevelFilter::Info);
    let (host, port) = match broker {
        Some(b) => b,
        None => {
            // An embedded broker on a free loopback port.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port for the embedded broker: {e}"))?
                .port();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            start_broker(addr)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::net::TcpStream::connect(addr).is_err() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("the embedded broker did not start on {addr}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            log::info!("demo: embedded MQTT broker on {addr}");
            ("127.0.0.1".to_owned(), port)
        }
    };
    let mut cfg =
        crate::config::Config::from_toml("[auth]\nmode = \"none\"\n", "demo", None).map_err(|e| e.to_string())?;
    cfg.listen = listen;
    cfg.mqtt.host = host.clone();
    cfg.mqtt.port = port;
    cfg.mqtt.client_id = format!("edgepush-demo-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = start_fleet(host, port, stop.clone());
    let code = crate::daemon::serve(
        cfg,
        None,
        None,
        || stop.store(true, Ordering::Relaxed),
        |addr| {
            let shown =
                if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() };
            println!("edgepush demo: dashboard at http://{shown}/  (Ctrl-C to stop)");
        },
    );
    let _ = fleet.join();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_cover_numbers_fields_and_text() {
        let mut rng = Rng::new(42);
        let mut kinds = (0, 0, 0);
        for mut d in fleet() {
            for _ in 0..20 {
                match edgepush_protocol::value::parse(d.payload(&mut rng, 1.0).as_bytes()) {
                    edgepush_protocol::Value::Number(n) => {
                        assert!(n.is_finite());
                        kinds.0 += 1;
                    }
                    edgepush_protocol::Value::Fields(f) => {
                        assert_eq!(f.len(), 4);
                        kinds.1 += 1;
                    }
                    edgepush_protocol::Value::Text(t) => {
                        assert!(t == "open" || t == "closed");
                        kinds.2 += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(kinds.0 > 0 && kinds.1 > 0 && kinds.2 > 0);
        assert!(fleet().len() >= 12);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(7);
        let mean = (0..10_000).map(|_| rng.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
