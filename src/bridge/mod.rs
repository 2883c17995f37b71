//! The MQTT bridge: rumqttc on its own thread with a tokio current-thread
//! runtime (the only tokio code in edgepush), handing events to the hub over a
//! bounded channel, so a busy hub slows the broker link instead of losing data.
//!
//! The link is plain TCP, or TLS with `[mqtt] ca` (the rustls client config
//! the config load made); and a clean session, or with `clean-session = false`
//! a persistent one the broker keeps under `client-id`, queueing what arrives
//! while the link is down for delivery once it is back.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use edgepush_protocol::backoff::Backoff;
use log::{debug, info, warn};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeFilter, TlsConfiguration, Transport,
};
use smol::future::FutureExt as _;

use crate::clock::now_ms;
use crate::config;
use crate::hub::{BridgeMsg, Publish};
use crate::metrics::Metrics;
use edgepush_protocol::{topic, value};

/// Largest MQTT packet accepted from the broker. A larger one makes rumqttc
/// drop the link, so this is generous; sensor payloads are far smaller.
const MAX_INCOMING_PACKET: usize = 1 << 20;
/// How long the broker gets to answer CONNECT (rumqttc's default, named for the log).
const CONNECT_TIMEOUT_S: u64 = 5;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Topics the gateway never forwards.
fn is_forwarded(topic: &str) -> bool {
    !(topic == "$SYS" || topic.starts_with("$SYS/"))
}

/// Starts the bridge thread. It ends when `stop` closes or the hub is gone.
/// `tls`: the config's `[mqtt]` TLS files as read (`Config::read_files`).
///
/// # Errors
/// The thread or its runtime could not be created, or `[mqtt] ca` is set and
/// its files were not read.
pub fn spawn(
    cfg: config::Mqtt,
    tls: Option<config::tls::Client>,
    to_hub: Sender<BridgeMsg>,
    publishes: Receiver<Publish>,
    stop: Receiver<()>,
    probes: Receiver<Sender<()>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    if cfg.ca.is_some() && tls.is_none() {
        return Err(std::io::Error::other("mqtt: the TLS files were not read (Config::read_files)"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("mqtt".into()).spawn(move || {
        // The watchdog's probe: answered from this thread's runtime, so a
        // wedged bridge goes quiet (and costs nothing when no watchdog asks).
        rt.spawn(async move {
            while let Ok(reply) = probes.recv().await {
                let _ = reply.try_send(());
            }
        });
        rt.block_on(run(cfg, tls, to_hub, publishes, stop, metrics))
    })
}

async fn run(
    cfg: config::Mqtt,
    tls: Option<config::tls::Client>,
    to_hub: Sender<BridgeMsg>,
    publishes: Receiver<Publish>,
    stop: Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(u64::from(cfg.keepalive_s)));
    opts.set_clean_session(cfg.clean_session);
    if let Some(tls) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.0)));
    }
    opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
    opts.set_request_channel_capacity(64);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts.set_credentials(u.clone(), p.0.clone());
    } else if let Some(u) = &cfg.username {
        opts.set_credentials(u.clone(), "");
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    // PUBACKs and pings go out at once, not after the broker's delayed ACK of
    // the one before (Nagle's algorithm); they also carry our ACK of what the
    // broker sent, so its own Nagle-held packets follow at once.
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let filters: Vec<SubscribeFilter> =
        cfg.subscribe.iter().map(|f| SubscribeFilter::new(f.clone(), qos(cfg.qos))).collect();

    let publisher = client.clone();
    tokio::spawn(async move {
        while let Ok(p) = publishes.recv().await {
            if let Err(e) = publisher.publish(p.topic, QoS::AtLeastOnce, p.retain, p.payload).await {
                warn!("mqtt: could not queue a client publish: {e}");
            }
        }
    });

    // The ceiling of the protocol's backoff, without jitter: one link to the
    // gateway's own broker has no crowd to spread out.
    let backoff =
        Backoff { base: Duration::from_millis(cfg.reconnect_min_ms), cap: Duration::from_millis(cfg.reconnect_max_ms) };
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let mut link = Link { up: false, ever_up: false, failures: 0 };
    // Resolves when the server asks the bridge to stop.
    let stopped = || async {
        let _ = stop.recv().await;
    };
    loop {
        let Some(polled) = async { Some(events.poll().await) }
            .or(async {
                stopped().await;
                None
            })
            .await
        else {
            debug!("mqtt: bridge stopping");
            let _ = client.try_disconnect();
            return;
        };
        let msg = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // Subscribed again even to a session the broker kept: the
                // filters may have changed since, and a SUBSCRIBE replacing
                // the same one does not interrupt the session's flow.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    warn!("mqtt: could not subscribe at {broker}: {e}");
                }
                // A kept session is subscribed already, and what the broker
                // queued for it follows at once: the link is up now.
                if !ack.session_present || !link.came_up(&broker, &cfg.subscribe, true, &metrics) {
                    continue;
                }
                BridgeMsg::Link { up: true }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode::Failure;
                if ack.return_codes.iter().any(|c| matches!(c, Failure)) {
                    warn!("mqtt: {broker} refused some of the filters {:?}", cfg.subscribe);
                }
                if !link.came_up(&broker, &cfg.subscribe, false, &metrics) {
                    continue;
                }
                BridgeMsg::Link { up: true }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // A kept session may hold subscriptions from an older
                // `subscribe`: only what the current filters name goes on.
                let wanted = cfg.clean_session || filters.iter().any(|f| topic::matches(&f.path, &p.topic));
                if !is_forwarded(&p.topic) || !wanted {
                    continue;
                }
                let v = value::parse(&p.payload);
                let value = postcard::to_allocvec(&v).expect("encoding into a Vec cannot fail");
                BridgeMsg::Event { topic: p.topic, value, ts_ms: now_ms() }
            }
            Ok(_) => continue,
            Err(e) => {
                let delay = backoff.ceiling(link.failures);
                link.failures += 1;
                let failures = link.failures;
                let why = describe(&e);
                if link.up {
                    warn!("mqtt: lost the link to {broker}: {why}; reconnecting in {delay:?}");
                } else if failures == 1 || failures.is_power_of_two() {
                    warn!("mqtt: cannot connect to {broker}: {why}; retrying in {delay:?} (attempt {failures})");
                } else {
                    debug!("mqtt: cannot connect to {broker}: {why}; retrying in {delay:?}");
                }
                let was_up = std::mem::replace(&mut link.up, false);
                metrics.broker_up.store(false, Relaxed);
                if was_up && to_hub.send(BridgeMsg::Link { up: false }).await.is_err() {
                    return;
                }
                let slept = async {
                    tokio::time::sleep(delay).await;
                    true
                };
                if !slept
                    .or(async {
                        stopped().await;
                        false
                    })
                    .await
                {
                    return;
                }
                continue;
            }
        };
        if to_hub.send(msg).await.is_err() {
            debug!("mqtt: hub gone, bridge stopping");
            return;
        }
    }
}

/// The link's state across reconnects.
struct Link {
    up: bool,
    ever_up: bool,
    /// Connection attempts failed in a row.
    failures: u32,
}

impl Link {
    /// The link is up (subscribed, or `resumed` a session the broker kept);
    /// true if it was not, logged and counted.
    fn came_up(&mut self, broker: &str, subscribe: &[String], resumed: bool, metrics: &Metrics) -> bool {
        if self.up {
            return false;
        }
        self.up = true;
        self.failures = 0;
        let session = if resumed { " (the broker kept the session)" } else { "" };
        if self.ever_up {
            Metrics::inc(&metrics.broker_reconnects);
            info!("mqtt: link to {broker} is back{session}");
        } else {
            info!("mqtt: connected to {broker}, subscribed to {subscribe:?}{session}");
        }
        self.ever_up = true;
        metrics.broker_up.store(true, Relaxed);
        true
    }
}

fn describe(e: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as Code;
    match e {
        ConnectionError::ConnectionRefused(code @ (Code::BadUserNamePassword | Code::NotAuthorized)) => {
            format!("the broker refused the connection ({code:?}): check [mqtt] username and password")
        }
        ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        ConnectionError::NetworkTimeout => {
            format!("no CONNACK within {CONNECT_TIMEOUT_S} s: the broker is slow or stuck accepting connections")
        }
        other => match rustls_error(other) {
            Some(tls) => describe_tls(tls),
            None => other.to_string(),
        },
    }
}

/// The rustls error somewhere in `e`'s chain (inside the I/O error of the TLS
/// stream, which rumqttc wraps differently in the handshake and after it).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error's source() skips the error it carries: looked at here.
        let carried = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if let Some(tls) = carried.and_then(|c| c.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        at = e.source();
    }
    None
}

/// A TLS failure and which `[mqtt]` key to check.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError as Cert, Error as E};
    let hint = match e {
        E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "; check mqtt.server-name (default: mqtt.host), the name the broker's certificate must carry"
        }
        E::InvalidCertificate(_) => "; check mqtt.ca: it must hold the CA that signed the broker's certificate",
        E::AlertReceived(_) => {
            "; the broker refused the handshake: check mqtt.cert and mqtt.key if it wants a client certificate"
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "; is mqtt.port a TLS listener of the broker (usually 8883)?"
        }
        _ => "",
    };
    format!("TLS: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_topics_are_never_forwarded() {
        assert!(!is_forwarded("$SYS/broker/uptime"));
        assert!(!is_forwarded("$SYS"));
        assert!(is_forwarded("$SYSTEM/x"));
        assert!(is_forwarded("sensors/t"));
    }
}
