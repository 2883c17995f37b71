//! Starting the pipeline and stopping it: the queues between the rooms, the
//! hub's thread, the MQTT bridge, the executor threads running the listener
//! and the sessions; [`Running`] applies reloads, feeds the watchdog and
//! shuts everything down.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use log::{debug, info, warn};
use smol::future::FutureExt as _;
use smol::{Async, Executor, Timer};

use super::memory::give_back_memory;
use crate::bridge;
use crate::config::Config;
use crate::hub::{BridgeMsg, Hub, HubCmd, HubConfig, Publish};
use crate::listener::admission::Admission;
use crate::listener::health::{Liveness, PROBE_EVERY};
use crate::listener::{accept_loop, Live, Shared};
use crate::metrics::Metrics;

/// Bridge → hub queue: events waiting for the hub. Bounded so a stalled hub
/// slows the broker link rather than growing memory.
const BRIDGE_QUEUE: usize = 1024;
/// Sessions → hub queue.
const HUB_QUEUE: usize = 4096;
/// Client publishes waiting for the bridge.
const PUBLISH_QUEUE: usize = 256;

/// How long shutdown waits for connections to take their 1001 close.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The start-up and reload warnings about a config's security settings.
fn security_warnings(cfg: &Config) {
    for w in cfg.warnings() {
        warn!("{w}");
    }
}

fn hub_config(cfg: &Config) -> HubConfig {
    HubConfig {
        max_topics: cfg.limits.max_topics,
        history: cfg.limits.history,
        max_filters: cfg.limits.max_filters,
        heartbeat_ms: cfg.heartbeat.interval_ms.min(u64::from(u32::MAX)) as u32,
    }
}

/// A running server: its threads, and how to stop it.
pub struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    stop_accept: Sender<()>,
    stop_bridge: Sender<()>,
    stop_executor: Sender<()>,
    bridge_probe: Sender<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    bridge: Option<JoinHandle<()>>,
    hub_thread: Option<JoinHandle<()>>,
    hub_done: Receiver<()>,
    ex: Arc<Executor<'static>>,
}

impl Running {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies a reloaded config: connection caps, hub limits, permissions and
    /// per-connection settings. Connected clients stay; per-connection settings
    /// (heartbeat, outbox, message size, slow-client timeout) apply to
    /// connections accepted from now on. The listen address and the broker
    /// link are not changed here (the caller reports them as needing a restart).
    ///
    /// # Errors
    /// The `[tls]` files no longer load, or the hub's queue is full: nothing
    /// was changed.
    pub fn reload(&self, cfg: &Config) -> Result<(), String> {
        apply_reload(&self.shared, cfg)
    }

    /// Pings the service manager's watchdog every `period`, but only while the
    /// server really works: each ping follows a round trip through the hub's
    /// loop and the MQTT bridge's thread ([`probe_round`], the one `/healthz`
    /// relies on), run from a task on the executor. A wedged executor, hub or
    /// bridge stops the pings.
    pub fn watchdog(&self, period: Duration, ping: impl Fn() + Send + 'static) {
        let shared = self.shared.clone();
        let bridge = self.bridge_probe.clone();
        self.ex
            .spawn(async move {
                let mut quiet = false;
                loop {
                    Timer::after(period).await;
                    if probe_round(&shared, &bridge, period).await {
                        ping();
                        if std::mem::take(&mut quiet) {
                            info!("watchdog: hub and bridge answer again");
                        }
                    } else if !std::mem::replace(&mut quiet, true) {
                        warn!("watchdog: hub or MQTT bridge did not answer within {period:?}; not pinging");
                    }
                }
            })
            .detach();
    }

    /// SIGUSR1: closes every connection open now with 1001, one after
    /// another, spread evenly over `spread` (each once its queued output has
    /// gone out), while new connections are accepted as usual. Their clients
    /// reconnect (through the load balancer, perhaps to another instance) and
    /// resume.
    pub fn drain(&self, spread: Duration) {
        let hub = self.shared.hub.clone();
        self.ex
            .spawn(async move {
                let (tx, rx) = async_channel::bounded(1);
                if hub.send(HubCmd::Connections(tx)).await.is_err() {
                    return;
                }
                let Ok(all) = rx.recv().await else { return };
                let n = all.len();
                info!("drain: closing {n} connections with 1001 over {spread:?}");
                let start = Instant::now();
                for (i, outbox) in all.into_iter().enumerate() {
                    // The i-th of n at i/n of the spread: the last one just before its end.
                    Timer::at(start + spread.mul_f64(i as f64 / n as f64)).await;
                    outbox.recycle();
                }
                info!("drain: done in {:?}", start.elapsed());
            })
            .detach();
    }

    /// Stops accepting, closes every client with 1001, and stops every thread.
    /// Returns within about 2 s even when clients do not answer.
    pub fn shutdown(mut self) {
        let started = Instant::now();
        self.shared.shutting_down.store(true, Relaxed);
        self.stop_accept.close();
        let _ = self.shared.hub.try_send(HubCmd::Shutdown);
        // Wait for the hub to close every outbox, then for sessions to finish.
        let shared = self.shared.clone();
        let hub_done = self.hub_done.clone();
        smol::block_on(self.ex.run(async move {
            // Bounded even when the hub is wedged (a bug): stopping must still stop.
            let _ = async {
                let _ = hub_done.recv().await;
            }
            .or(async {
                Timer::after(SHUTDOWN_GRACE).await;
            })
            .await;
            while shared.admission.total() > 0 && started.elapsed() < SHUTDOWN_GRACE {
                Timer::after(Duration::from_millis(10)).await;
            }
        }));
        self.stop_bridge.close();
        self.stop_executor.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The hub ended when it closed the outboxes, unless it is wedged (a
        // bug): then it is left behind rather than hang the shutdown.
        if let Some(h) = self.hub_thread.take().filter(|h| h.is_finished()) {
            let _ = h.join();
        }
        // The bridge may sit in a connect attempt; it ends on its own, so only
        // wait for it briefly.
        if let Some(b) = self.bridge.take() {
            let deadline = Instant::now() + Duration::from_millis(300);
            while !b.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let left = self.shared.admission.total();
        if left > 0 {
            debug!("shutdown: {left} connections did not close in time");
        }
        info!("stopped in {:?}", started.elapsed());
    }
}

/// One probe: a round trip through the hub's loop and one through the MQTT
/// bridge's thread, each recorded in `shared.liveness` when it answers (late
/// answers too). True when both answered within `limit`.
async fn probe_round(shared: &Shared, bridge: &Sender<Sender<()>>, limit: Duration) -> bool {
    let hub_trip = async {
        let (tx, rx) = async_channel::bounded::<()>(1);
        shared.hub.send(HubCmd::Probe(tx)).await.ok()?;
        rx.recv().await.ok()?;
        shared.liveness.hub_answered();
        Some(())
    };
    let bridge_trip = async {
        let (tx, rx) = async_channel::bounded::<()>(1);
        bridge.send(tx).await.ok()?;
        rx.recv().await.ok()?;
        shared.liveness.bridge_answered();
        Some(())
    };
    let both = async {
        let (hub, bridge) = smol::future::zip(hub_trip, bridge_trip).await;
        hub.and(bridge)
    };
    both.or(async {
        Timer::after(limit).await;
        None
    })
    .await
    .is_some()
}

/// Probes the hub and the bridge every [`PROBE_EVERY`], with or without a
/// service manager's watchdog, so `/healthz` knows when they last answered;
/// logs when a part stalls and when it answers again.
async fn health_probe(shared: Arc<Shared>, bridge: Sender<Sender<()>>) {
    let mut was = (true, true);
    loop {
        Timer::after(PROBE_EVERY).await;
        // A late answer still counts when it comes: wait up to the stale bound.
        probe_round(&shared, &bridge, crate::listener::health::STALE_AFTER).await;
        let h = shared.health();
        let now = (h.hub_ok, h.bridge_ok);
        for (part, before, ok) in [("the hub", was.0, now.0), ("the MQTT bridge", was.1, now.1)] {
            if before && !ok {
                warn!(
                    "health: {part} has not answered for {:?}; /healthz answers 503",
                    crate::listener::health::STALE_AFTER
                );
            } else if !before && ok {
                info!("health: {part} answers again");
            }
        }
        was = now;
    }
}

/// [`Running::reload`]: all of it or nothing. The hub's part goes first, as
/// the one step that can fail for want of room; the rest cannot fail.
fn apply_reload(s: &Shared, cfg: &Config) -> Result<(), String> {
    let live = Live::new(cfg)?;
    if s.hub.try_send(HubCmd::Reconfigure(hub_config(cfg))).is_err() {
        return Err("the hub's queue is full (the hub is busy or stuck); try the reload again".into());
    }
    security_warnings(cfg);
    s.admission.set_caps(
        cfg.limits.max_connections,
        cfg.limits.max_connections_per_ip,
        cfg.limits.connections_per_second_per_ip,
    );
    s.metrics.connections_max.store(cfg.limits.max_connections as u64, Relaxed);
    *s.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    Ok(())
}

/// Binds `cfg.listen` and starts the server on it (see [`start_on`]).
///
/// # Errors
/// The listen address cannot be bound, or a thread cannot start.
pub fn start(cfg: &Config, threads: usize) -> io::Result<Running> {
    start_on(cfg, TcpListener::bind(cfg.listen)?, threads)
}

/// Starts the hub, the MQTT bridge and `threads` executor threads (0: one
/// per core) serving `listener` (bound by us, or passed by systemd).
///
/// # Errors
/// The listener is unusable, or a thread cannot start.
pub fn start_on(cfg: &Config, listener: TcpListener, threads: usize) -> io::Result<Running> {
    let live = Live::new(cfg).map_err(io::Error::other)?;
    security_warnings(cfg);
    let listener = Async::new(listener)?;
    let addr = listener.get_ref().local_addr()?;
    let metrics = Arc::new(Metrics::default());
    metrics.connections_max.store(cfg.limits.max_connections as u64, Relaxed);

    let (hub_tx, hub_rx) = async_channel::bounded(HUB_QUEUE);
    let (bridge_tx, bridge_rx) = async_channel::bounded::<BridgeMsg>(BRIDGE_QUEUE);
    let (publish_tx, publish_rx) = async_channel::bounded::<Publish>(PUBLISH_QUEUE);
    let (stop_bridge, stop_bridge_rx) = async_channel::bounded(1);
    let (stop_accept, stop_accept_rx) = async_channel::bounded::<()>(1);
    let (stop_executor, stop_executor_rx) = async_channel::bounded::<()>(1);
    let (hub_done_tx, hub_done) = async_channel::bounded::<()>(1);

    let (bridge_probe, bridge_probe_rx) = async_channel::bounded(1);

    let hub = Hub::new(hub_config(cfg), metrics.clone(), publish_tx);
    info!("epoch {}", hub.epoch());
    let bridge = bridge::spawn(
        cfg.mqtt.clone(),
        cfg.mqtt_tls.clone(),
        bridge_tx,
        publish_rx,
        stop_bridge_rx,
        bridge_probe_rx,
        metrics.clone(),
    )?;

    let shared = Arc::new(Shared {
        admission: Admission::new(
            cfg.limits.max_connections,
            cfg.limits.max_connections_per_ip,
            cfg.limits.connections_per_second_per_ip,
        ),
        metrics: metrics.clone(),
        hub: hub_tx,
        live: RwLock::new(Arc::new(live)),
        shutting_down: AtomicBool::new(false),
        next_conn: AtomicU64::new(1),
        handshaking: AtomicUsize::new(0),
        busy_answers: AtomicUsize::new(0),
        liveness: Liveness::new(),
    });
    wedge_hook(&shared);

    // The hub has a thread of its own: its long-lived allocations (topic
    // table, history ring, encoded events) then come from that thread's malloc
    // arena, apart from the per-connection buffers the executor threads
    // allocate and free, so memory freed when clients leave is not pinned
    // between history entries and can go back to the system.
    let hub_thread = std::thread::Builder::new().name("edgepush-hub".into()).spawn(move || {
        smol::block_on(hub.run(hub_rx, bridge_rx));
        drop(hub_done_tx);
    })?;
    let ex = Arc::new(Executor::new());
    ex.spawn(accept_loop(listener, shared.clone(), ex.clone(), stop_accept_rx)).detach();
    ex.spawn(give_back_memory(metrics.clone())).detach();
    ex.spawn(health_probe(shared.clone(), bridge_probe.clone())).detach();

    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let ex = ex.clone();
        let stop = stop_executor_rx.clone();
        handles.push(std::thread::Builder::new().name(format!("edgepush-{i}")).spawn(move || {
            smol::block_on(ex.run(async move {
                let _ = stop.recv().await;
            }))
        })?);
    }
    info!("listening on {addr}{}", if cfg.tls.is_some() { " (TLS: https and wss)" } else { "" });
    Ok(Running {
        addr,
        metrics,
        shared,
        stop_accept,
        stop_bridge,
        stop_executor,
        bridge_probe,
        threads: handles,
        bridge: Some(bridge),
        hub_thread: Some(hub_thread),
        hub_done,
        ex,
    })
}

/// Test hook: with `EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS=N` the hub blocks its
/// thread for good N ms after start, as a deadlock would. The integration
/// tests use it to show that the systemd watchdog pings stop while the rest
/// of the server still answers; nothing else sets it.
fn wedge_hook(shared: &Shared) {
    let Some(ms) = std::env::var("EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    warn!("test hook: the hub will wedge in {ms} ms");
    let hub = shared.hub.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        let _ = hub.send_blocking(HubCmd::Wedge);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(cfg: &Config, hub: Sender<HubCmd>) -> Shared {
        Shared {
            admission: Admission::new(1, 1, 1),
            metrics: Arc::new(Metrics::default()),
            hub,
            live: RwLock::new(Arc::new(Live::new(cfg).unwrap())),
            shutting_down: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            handshaking: AtomicUsize::new(0),
            busy_answers: AtomicUsize::new(0),
            liveness: Liveness::new(),
        }
    }

    #[test]
    fn a_reload_the_hub_cannot_take_is_refused_whole() {
        let cfg = Config::from_toml("", "test", None).unwrap();
        let (tx, rx) = async_channel::bounded(1);
        tx.try_send(HubCmd::Shutdown).unwrap();
        let s = shared(&cfg, tx);
        let bigger = Config::from_toml("[limits]\nmax-connections = 77\n", "test", None).unwrap();
        assert!(apply_reload(&s, &bigger).unwrap_err().contains("hub's queue is full"));
        assert_eq!(s.metrics.connections_max.load(Relaxed), 0, "nothing applied");
        // With room in the queue, it applies.
        rx.try_recv().unwrap();
        apply_reload(&s, &bigger).unwrap();
        assert_eq!(s.metrics.connections_max.load(Relaxed), 77);
        assert!(matches!(rx.try_recv(), Ok(HubCmd::Reconfigure(_))));
    }
}
