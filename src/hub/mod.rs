//! The hub: the one owner of topic ids, latest values, the history ring, the
//! subscription index and every connection's subscriptions. Sessions and the
//! MQTT bridge talk to it over channels; it never waits on a connection.

pub(crate) mod history;
pub(crate) mod index;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use async_channel::{Receiver, Sender, TryRecvError};
use log::debug;
use std::sync::atomic::Ordering::Relaxed;

use crate::metrics::Metrics;
use crate::outbox::{Bytes, Outbox};
use edgepush_protocol::topic;
use edgepush_protocol::{ClientMsg, Resume, ServerMsg, SyncMode, PROTOCOL_VERSION};

use crate::clock::random_epoch;
use edgepush_protocol::Permissions;
use index::FilterIndex;

/// What the MQTT bridge hands the hub, in broker order.
#[derive(Debug)]
pub enum BridgeMsg {
    /// One message from the broker; `value` is the encoded [`edgepush_protocol::Value`].
    Event { topic: String, value: Vec<u8>, ts_ms: u64 },
    /// The broker link went up or down.
    Link { up: bool },
}

/// A client's Publish, for the bridge to send to the broker at QoS 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What sessions tell the hub.
pub enum HubCmd {
    /// A connection upgraded; the hub sends its Hello.
    Connect { conn: u64, outbox: Arc<Outbox>, perms: Arc<Permissions> },
    /// The connection ended.
    Disconnect { conn: u64 },
    /// One decoded client message; answered in order through the outbox.
    Request { conn: u64, msg: ClientMsg },
    /// A behind connection emptied its outbox.
    Drained { conn: u64 },
    /// Close every connection with 1001.
    Shutdown,
    /// The outboxes of every connection, oldest first (SIGUSR1's drain).
    Connections(Sender<Vec<Arc<Outbox>>>),
    /// The watchdog asks whether the hub's loop still turns; answered at once.
    Probe(Sender<()>),
    /// New limits from a config reload.
    Reconfigure(HubConfig),
    /// Test hook (`EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS`): block the hub's thread
    /// for good, as a deadlock would, so tests can see the watchdog go quiet.
    Wedge,
}

/// Hub settings from the config.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_topics: usize,
    pub history: usize,
    pub max_filters: u16,
    pub heartbeat_ms: u32,
}

struct TopicEntry {
    name: Box<str>,
    /// The encoded `Topic{id, name}` declaration.
    decl: Bytes,
    /// Seq and encoded Event of the latest value.
    latest: Option<(u64, Bytes)>,
}

struct HistoryEntry {
    seq: u64,
    topic: u32,
    event: Bytes,
}

struct Lag {
    missed: HashSet<u32>,
    events: u64,
}

struct Conn {
    outbox: Arc<Outbox>,
    perms: Arc<Permissions>,
    subs: HashMap<u32, Vec<Box<str>>>,
    filters: usize,
    /// Bit per topic id already declared on this connection.
    declared: Vec<u64>,
    /// The seq of the last live event delivered, to deliver once per connection.
    last_seq: u64,
    lag: Option<Lag>,
    /// The connection's History budget (docs/PROTOCOL.md §6.13).
    history: history::Budget,
}

impl Conn {
    fn is_declared(&self, id: u32) -> bool {
        self.declared.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn declare(&mut self, id: u32) {
        let i = id as usize / 64;
        if self.declared.len() <= i {
            self.declared.resize(i + 1, 0);
        }
        self.declared[i] |= 1 << (id % 64);
    }

    /// Adds an event to an answer being built, with the topic's declaration
    /// first if this connection has not seen it.
    fn answer_event(&mut self, answer: &mut Vec<Bytes>, id: u32, t: &TopicEntry, event: &Bytes) {
        if !self.is_declared(id) {
            self.declare(id);
            answer.push(t.decl.clone());
        }
        answer.push(event.clone());
    }
}

/// The hub actor's state.
pub struct Hub {
    cfg: HubConfig,
    server: String,
    epoch: u64,
    seq: u64,
    topics: Vec<TopicEntry>,
    by_name: HashMap<Box<str>, u32>,
    history: VecDeque<HistoryEntry>,
    index: FilterIndex,
    conns: HashMap<u64, Conn>,
    broker_up: bool,
    metrics: Arc<Metrics>,
    publish_tx: Sender<Publish>,
    scratch: Vec<u64>,
}

fn bytes(msg: &ServerMsg) -> Bytes {
    Arc::from(msg.encode())
}

fn error(code: u16, req: u32, message: impl Into<String>) -> Bytes {
    bytes(&ServerMsg::Error { code, req, message: message.into() })
}

impl Hub {
    pub fn new(cfg: HubConfig, metrics: Arc<Metrics>, publish_tx: Sender<Publish>) -> Hub {
        Hub {
            cfg,
            server: format!("edgepush {}", env!("CARGO_PKG_VERSION")),
            epoch: random_epoch(),
            seq: 0,
            topics: Vec::new(),
            by_name: HashMap::new(),
            history: VecDeque::new(),
            index: FilterIndex::default(),
            conns: HashMap::new(),
            broker_up: false,
            metrics,
            publish_tx,
            scratch: Vec::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs until a Shutdown command arrives or every command sender is gone.
    pub async fn run(mut self, cmds: Receiver<HubCmd>, bridge: Receiver<BridgeMsg>) {
        const BATCH: usize = 256;
        enum Wake {
            Cmd(HubCmd),
            Bridge(BridgeMsg),
            Closed,
        }
        loop {
            let woke = smol::future::race(async { cmds.recv().await.map_or(Wake::Closed, Wake::Cmd) }, async {
                match bridge.recv().await {
                    Ok(m) => Wake::Bridge(m),
                    // The bridge is gone: keep serving sessions.
                    Err(_) => std::future::pending().await,
                }
            })
            .await;
            match woke {
                Wake::Closed => return,
                Wake::Cmd(c) => {
                    if !self.command(c) {
                        return;
                    }
                }
                Wake::Bridge(m) => self.bridge(m),
            }
            // Take what else is ready, a bounded batch from each side.
            for _ in 0..BATCH {
                match cmds.try_recv() {
                    Ok(c) => {
                        if !self.command(c) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return,
                }
            }
            for _ in 0..BATCH {
                match bridge.try_recv() {
                    Ok(m) => self.bridge(m),
                    Err(_) => break,
                }
            }
        }
    }

    /// Handles one session command; false on Shutdown.
    pub fn command(&mut self, cmd: HubCmd) -> bool {
        match cmd {
            HubCmd::Connect { conn, outbox, perms } => {
                outbox.push(bytes(&ServerMsg::Hello {
                    version: PROTOCOL_VERSION,
                    server: self.server.clone(),
                    epoch: self.epoch,
                    heartbeat_ms: self.cfg.heartbeat_ms,
                    max_filters: self.cfg.max_filters,
                    broker_up: self.broker_up,
                }));
                let c = Conn {
                    outbox,
                    perms,
                    subs: HashMap::new(),
                    filters: 0,
                    declared: Vec::new(),
                    last_seq: 0,
                    lag: None,
                    history: history::Budget::new(Instant::now()),
                };
                self.conns.insert(conn, c);
            }
            HubCmd::Disconnect { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    for (id, filters) in c.subs {
                        for f in filters.iter() {
                            self.index.remove(f, (conn, id));
                        }
                    }
                }
            }
            HubCmd::Request { conn, msg } => {
                self.request(conn, msg);
                if let Some(c) = self.conns.get(&conn) {
                    c.outbox.request_answered();
                }
            }
            HubCmd::Drained { conn } => self.catch_up(conn),
            HubCmd::Shutdown => {
                for c in self.conns.values() {
                    c.outbox.close(1001);
                }
                return false;
            }
            HubCmd::Probe(reply) => {
                let _ = reply.try_send(());
            }
            HubCmd::Connections(reply) => {
                let mut all: Vec<_> = self.conns.iter().map(|(id, c)| (*id, c.outbox.clone())).collect();
                all.sort_unstable_by_key(|(id, _)| *id);
                let _ = reply.try_send(all.into_iter().map(|(_, o)| o).collect());
            }
            HubCmd::Reconfigure(cfg) => {
                self.cfg = cfg;
                while self.history.len() > self.cfg.history {
                    self.history.pop_front();
                }
                self.history.shrink_to(self.cfg.history);
                log::info!(
                    "hub: max-topics {}, history {}, max-filters {}",
                    self.cfg.max_topics,
                    self.cfg.history,
                    self.cfg.max_filters
                );
            }
            HubCmd::Wedge => {
                log::warn!("hub: wedged by the test hook");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
        true
    }

    /// Handles one message from the MQTT bridge.
    pub fn bridge(&mut self, msg: BridgeMsg) {
        match msg {
            BridgeMsg::Link { up } => {
                if up == self.broker_up {
                    return;
                }
                self.broker_up = up;
                let notice = bytes(&ServerMsg::Broker { up });
                for c in self.conns.values() {
                    c.outbox.push(notice.clone());
                }
            }
            BridgeMsg::Event { topic, value, ts_ms } => self.event(topic, &value, ts_ms),
        }
    }

    fn event(&mut self, name: String, value: &[u8], ts_ms: u64) {
        Metrics::inc(&self.metrics.events_in);
        let id = match self.by_name.get(name.as_str()) {
            Some(&id) => id,
            None if self.topics.len() < self.cfg.max_topics => {
                let id = self.topics.len() as u32;
                let decl = bytes(&ServerMsg::Topic { id, name: name.clone() });
                let name: Box<str> = name.into();
                self.by_name.insert(name.clone(), id);
                self.topics.push(TopicEntry { name, decl, latest: None });
                self.metrics.topics.store(self.topics.len() as u64, Relaxed);
                id
            }
            None => {
                Metrics::inc(&self.metrics.events_dropped_topics);
                debug!("dropped an event for {name:?}: max-topics reached");
                return;
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let event: Bytes = Arc::from(ServerMsg::encode_event(id, seq, ts_ms, value));
        self.topics[id as usize].latest = Some((seq, event.clone()));
        if self.cfg.history > 0 {
            while self.history.len() >= self.cfg.history {
                self.history.pop_front();
            }
            self.history.push_back(HistoryEntry { seq, topic: id, event: event.clone() });
        }
        // Fan out: each matching connection once, however many of its filters match.
        let mut targets = std::mem::take(&mut self.scratch);
        let topic = &self.topics[id as usize];
        self.index.for_each_match(&topic.name, |(conn, _)| targets.push(conn));
        let now = Instant::now();
        for conn in targets.drain(..) {
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            if c.last_seq == seq {
                continue;
            }
            c.last_seq = seq;
            if let Some(lag) = &mut c.lag {
                lag.missed.insert(id);
                lag.events += 1;
                continue;
            }
            let declared = c.is_declared(id);
            let queued =
                if declared { c.outbox.push_live(&[&event]) } else { c.outbox.push_live(&[&topic.decl, &event]) };
            if queued {
                if !declared {
                    c.declare(id);
                }
            } else {
                // Full: collapse to the latest value per topic from here on.
                c.lag = Some(Lag { missed: HashSet::from([id]), events: 1 });
                c.outbox.mark_behind(now);
                Metrics::inc(&self.metrics.lagged);
                debug!("connection {conn} fell behind");
            }
        }
        self.scratch = targets;
    }

    /// A behind connection drained its outbox: send Lagged (when some events
    /// were never sent) and the latest event of every topic it missed, in seq
    /// order. It stays behind (its slow-client clock running since the first
    /// overflow) until a drain finds nothing collapsed since the last
    /// catch-up: a client that keeps overflowing is evicted in time, however
    /// many catch-ups it was sent.
    fn catch_up(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(lag) = c.lag.take() else {
            // Caught up.
            c.outbox.clear_behind();
            return;
        };
        let latest = latest_in_seq_order(&self.topics, lag.missed.iter().copied());
        let skipped = lag.events.saturating_sub(latest.len() as u64);
        let mut answer = Vec::with_capacity(1 + 2 * latest.len());
        // Lagged counts events never sent: when every missed event is a
        // latest one, all of them follow and there is nothing to announce.
        if skipped > 0 {
            answer.push(bytes(&ServerMsg::Lagged { skipped: skipped.min(u64::from(u32::MAX)) as u32 }));
        }
        for id in latest {
            let t = &self.topics[id as usize];
            c.answer_event(&mut answer, id, t, &t.latest.as_ref().expect("has a latest").1);
        }
        c.outbox.push_all(answer);
        c.outbox.catching_up();
    }

    fn request(&mut self, conn: u64, msg: ClientMsg) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        match msg {
            ClientMsg::Ping { nonce } => c.outbox.push(bytes(&ServerMsg::Pong { nonce })),
            ClientMsg::Unsubscribe { id } => match c.subs.remove(&id) {
                Some(filters) => {
                    c.filters -= filters.len();
                    for f in filters.iter() {
                        self.index.remove(f, (conn, id));
                    }
                }
                None => c.outbox.push(error(404, id, format!("no live subscription {id}"))),
            },
            ClientMsg::Publish { req, topic, payload, retain } => {
                let refusal = if let Err(e) = topic::validate_topic(&topic) {
                    Some(error(400, req, format!("bad topic: {e}")))
                } else if !c.perms.may_publish(&topic) {
                    Some(error(403, req, format!("not permitted to publish to {topic:?}")))
                } else if !self.broker_up {
                    Some(error(503, req, "broker unavailable"))
                } else {
                    match self.publish_tx.try_send(Publish { topic, payload, retain }) {
                        Ok(()) => {
                            Metrics::inc(&self.metrics.publishes);
                            None
                        }
                        Err(_) => Some(error(503, req, "broker link busy")),
                    }
                };
                c.outbox.push(refusal.unwrap_or_else(|| bytes(&ServerMsg::Ack { req })));
            }
            ClientMsg::Subscribe { id, filters, resume } => {
                match check_subscribe(c, usize::from(self.cfg.max_filters), id, &filters) {
                    Err(e) => c.outbox.push(e),
                    Ok(()) => self.subscribe(conn, id, filters, resume),
                }
            }
            ClientMsg::History { id, filters, per_topic } => {
                let max = usize::from(self.cfg.max_filters);
                match history::check(&c.perms, max, id, &filters).and_then(|()| c.history.take(id, Instant::now())) {
                    Err(e) => c.outbox.push(e),
                    Ok(()) => {
                        let answer = history::answer(&self.topics, &self.history, &filters, per_topic);
                        history::queue(c, &self.topics, id, answer, self.seq);
                    }
                }
            }
        }
    }
}

/// The checks a Subscribe (§6.5) and a History (§6.13) make of their filter
/// list, in their order: not empty (400), each a valid filter (400), each
/// within the connection's subscribe permissions (403).
fn check_filters(perms: &Permissions, id: u32, filters: &[String]) -> Result<(), Bytes> {
    if filters.is_empty() {
        return Err(error(400, id, "empty filter list"));
    }
    for f in filters {
        if let Err(e) = topic::validate_filter(f) {
            let shown: String = f.chars().take(64).collect();
            return Err(error(400, id, format!("bad filter {shown:?}: {e}")));
        }
    }
    for f in filters {
        if !perms.may_subscribe(f) {
            return Err(error(403, id, format!("not permitted to subscribe to {f:?}")));
        }
    }
    Ok(())
}

/// The checks of docs/PROTOCOL.md §6.5 for a Subscribe, in their order.
fn check_subscribe(c: &Conn, max: usize, id: u32, filters: &[String]) -> Result<(), Bytes> {
    if c.subs.contains_key(&id) {
        return Err(error(409, id, format!("subscription {id} is already live")));
    }
    check_filters(&c.perms, id, filters)?;
    if c.filters + filters.len() > max {
        return Err(error(413, id, format!("a connection may hold at most {max} filters")));
    }
    Ok(())
}

impl Hub {
    /// Whether a resume can be answered by replay (docs/PROTOCOL.md §6.5).
    fn resume_usable(&self, r: &Resume) -> bool {
        r.epoch == self.epoch
            && r.last_seq <= self.seq
            && (r.last_seq == self.seq || self.history.front().is_some_and(|h| h.seq <= r.last_seq + 1))
    }

    fn subscribe(&mut self, conn: u64, id: u32, filters: Vec<String>, resume: Option<Resume>) {
        let filters: Vec<Box<str>> = filters.into_iter().map(Into::into).collect();
        for f in &filters {
            self.index.insert(f, (conn, id));
        }
        let matching = |name: &str| filters.iter().any(|f| topic::matches(f, name));
        let replay_from = resume.filter(|r| self.resume_usable(r)).map(|r| r.last_seq);
        let c = self.conns.get_mut(&conn).expect("checked by the caller");
        // The whole answer goes to the outbox at once, so the writer packs it together.
        let mut answer = Vec::new();
        let mode = match replay_from {
            Some(last_seq) => {
                let skip = self.history.front().map_or(0, |h| (last_seq + 1).saturating_sub(h.seq) as usize);
                for h in self.history.iter().skip(skip) {
                    let t = &self.topics[h.topic as usize];
                    if matching(&t.name) {
                        c.answer_event(&mut answer, h.topic, t, &h.event);
                    }
                }
                SyncMode::Replay
            }
            None => {
                let ids = (0..self.topics.len() as u32).filter(|&i| matching(&self.topics[i as usize].name));
                for tid in latest_in_seq_order(&self.topics, ids) {
                    let t = &self.topics[tid as usize];
                    c.answer_event(&mut answer, tid, t, &t.latest.as_ref().expect("has a latest").1);
                }
                SyncMode::Snapshot
            }
        };
        answer.push(bytes(&ServerMsg::Synced { id, seq: self.seq, mode }));
        c.outbox.push_all(answer);
        c.filters += filters.len();
        c.subs.insert(id, filters);
    }
}

/// The given topics that have a value, ordered by the seq of their latest event.
fn latest_in_seq_order(topics: &[TopicEntry], ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut v: Vec<(u64, u32)> =
        ids.filter_map(|id| topics[id as usize].latest.as_ref().map(|(seq, _)| (*seq, id))).collect();
    v.sort_unstable();
    v.into_iter().map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepush_protocol::Value;
    use std::task::{Context, Poll, Waker};

    fn hub(outbox: usize) -> (Hub, Arc<Outbox>, Receiver<Publish>) {
        let (tx, rx) = async_channel::bounded(4);
        let cfg = HubConfig { max_topics: 3, history: 4, max_filters: 4, heartbeat_ms: 1000 };
        let mut h = Hub::new(cfg, Arc::new(Metrics::default()), tx);
        let ob = Outbox::new(outbox);
        let perms = Arc::new(Permissions { subscribe: vec!["#".into()], publish: vec!["cmd/#".into()] });
        h.command(HubCmd::Connect { conn: 1, outbox: ob.clone(), perms });
        (h, ob, rx)
    }

    fn drain(ob: &Outbox) -> Vec<ServerMsg> {
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::new();
        while let Poll::Ready(Take::Messages(_)) = ob.poll_take(&cx, &mut frame, usize::MAX) {}
        ServerMsg::decode_all(&frame).unwrap()
    }

    fn publish(h: &mut Hub, topic: &str, n: f64) {
        let value = postcard::to_allocvec(&Value::Number(n)).unwrap();
        h.bridge(BridgeMsg::Event { topic: topic.into(), value, ts_ms: 7 });
    }

    fn req(h: &mut Hub, msg: ClientMsg) {
        h.command(HubCmd::Request { conn: 1, msg });
    }

    use crate::outbox::Take;

    #[test]
    fn event_bytes_are_what_postcard_encodes() {
        let v = Value::Fields(vec![("t".into(), 21.5)]);
        let enc = ServerMsg::encode_event(300, 1 << 40, 1_700_000_000_000, &postcard::to_allocvec(&v).unwrap());
        let want = ServerMsg::Event { topic: 300, seq: 1 << 40, ts_ms: 1_700_000_000_000, value: v };
        assert_eq!(&*enc, &want.encode()[..]);
    }

    #[test]
    fn snapshot_then_live_once_per_connection() {
        let (mut h, ob, _) = hub(16);
        publish(&mut h, "a/t", 1.0);
        publish(&mut h, "a/t", 2.0);
        publish(&mut h, "b/t", 3.0);
        req(&mut h, ClientMsg::Subscribe { id: 1, filters: vec!["a/#".into(), "+/t".into()], resume: None });
        let got = drain(&ob);
        assert!(matches!(got[0], ServerMsg::Hello { .. }));
        assert_eq!(got[1], ServerMsg::Topic { id: 0, name: "a/t".into() });
        assert!(matches!(got[2], ServerMsg::Event { topic: 0, seq: 2, .. }));
        assert_eq!(got[3], ServerMsg::Topic { id: 1, name: "b/t".into() });
        assert!(matches!(got[4], ServerMsg::Event { topic: 1, seq: 3, .. }));
        assert_eq!(got[5], ServerMsg::Synced { id: 1, seq: 3, mode: SyncMode::Snapshot });
        publish(&mut h, "a/t", 4.0);
        let got = drain(&ob);
        assert_eq!(got.len(), 1, "two matching filters, one delivery: {got:?}");
    }

    #[test]
    fn replay_within_the_ring_and_snapshot_past_it() {
        let (mut h, ob, _) = hub(16);
        for i in 0..6 {
            publish(&mut h, "a", f64::from(i));
        }
        let epoch = h.epoch();
        // The ring holds seqs 3..=6: resuming after 2 replays 3..=6.
        req(
            &mut h,
            ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: Some(Resume { epoch, last_seq: 2 }) },
        );
        let got = drain(&ob);
        let seqs: Vec<u64> =
            got.iter().filter_map(|m| if let ServerMsg::Event { seq, .. } = m { Some(*seq) } else { None }).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6]);
        assert_eq!(got.last(), Some(&ServerMsg::Synced { id: 1, seq: 6, mode: SyncMode::Replay }));
        // Resuming after 1 needs seq 2, which is gone: snapshot.
        req(
            &mut h,
            ClientMsg::Subscribe { id: 2, filters: vec!["#".into()], resume: Some(Resume { epoch, last_seq: 1 }) },
        );
        assert_eq!(drain(&ob).last(), Some(&ServerMsg::Synced { id: 2, seq: 6, mode: SyncMode::Snapshot }));
        // Another epoch, or a seq from the future: snapshot.
        req(
            &mut h,
            ClientMsg::Subscribe {
                id: 3,
                filters: vec!["#".into()],
                resume: Some(Resume { epoch: epoch + 1, last_seq: 5 }),
            },
        );
        assert_eq!(drain(&ob).last(), Some(&ServerMsg::Synced { id: 3, seq: 6, mode: SyncMode::Snapshot }));
        req(
            &mut h,
            ClientMsg::Subscribe { id: 4, filters: vec!["#".into()], resume: Some(Resume { epoch, last_seq: 7 }) },
        );
        assert_eq!(drain(&ob).last(), Some(&ServerMsg::Synced { id: 4, seq: 6, mode: SyncMode::Snapshot }));
    }

    #[test]
    fn topics_past_the_cap_are_dropped_before_a_seq() {
        let (mut h, _, _) = hub(16);
        for t in ["a", "b", "c", "d", "a"] {
            publish(&mut h, t, 1.0);
        }
        assert_eq!(h.seq, 4);
        assert_eq!(h.metrics.events_dropped_topics.load(Relaxed), 1);
    }

    #[test]
    fn a_full_outbox_collapses_to_latest_per_topic_with_lagged() {
        let (mut h, ob, _) = hub(4);
        req(&mut h, ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None });
        drain(&ob);
        publish(&mut h, "a", 1.0); // Topic + Event: 2 live
        publish(&mut h, "a", 2.0); // 3
        publish(&mut h, "a", 3.0); // 4: full
        publish(&mut h, "a", 4.0); // missed
        publish(&mut h, "b", 5.0); // missed
        publish(&mut h, "a", 6.0); // missed
        assert!(ob.behind_since().is_some());
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::new();
        assert_eq!(ob.poll_take(&cx, &mut frame, usize::MAX), Poll::Ready(Take::Messages(4)));
        assert_eq!(ob.poll_take(&cx, &mut frame, usize::MAX), Poll::Ready(Take::Drained));
        h.command(HubCmd::Drained { conn: 1 });
        let got = drain(&ob);
        assert_eq!(got[0], ServerMsg::Lagged { skipped: 1 });
        assert!(matches!(got[1], ServerMsg::Topic { id: 1, .. }));
        assert!(matches!(got[2], ServerMsg::Event { topic: 1, seq: 5, .. }));
        assert!(matches!(got[3], ServerMsg::Event { topic: 0, seq: 6, .. }));
        // Behind until the catch-up itself has drained (`drain` took it, and
        // the outbox's report of it) with nothing collapsed since.
        assert!(ob.behind_since().is_some());
        h.command(HubCmd::Drained { conn: 1 });
        assert_eq!(ob.behind_since(), None);
    }

    #[test]
    fn a_client_that_keeps_overflowing_stays_behind_from_its_first_overflow() {
        let (mut h, ob, _) = hub(2);
        req(&mut h, ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None });
        drain(&ob);
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::new();
        publish(&mut h, "a", 1.0); // Topic + Event: full
        publish(&mut h, "a", 2.0); // overflow: behind
        let since = ob.behind_since().expect("behind");
        for round in 0..3 {
            // The client drains what it had; the hub queues a catch-up...
            while let Poll::Ready(Take::Messages(_)) = ob.poll_take(&cx, &mut frame, usize::MAX) {}
            h.command(HubCmd::Drained { conn: 1 });
            // ...and before that has drained, more than fits arrives again.
            for v in 0..4 {
                publish(&mut h, "a", f64::from(10 * round + v));
            }
            assert_eq!(ob.behind_since(), Some(since), "round {round}: the slow-client clock was reset");
        }
        // Once a drain finds nothing new collapsed, it has caught up.
        while let Poll::Ready(Take::Messages(_)) = ob.poll_take(&cx, &mut frame, usize::MAX) {}
        h.command(HubCmd::Drained { conn: 1 });
        while let Poll::Ready(Take::Messages(_)) = ob.poll_take(&cx, &mut frame, usize::MAX) {}
        h.command(HubCmd::Drained { conn: 1 });
        assert_eq!(ob.behind_since(), None);
    }

    #[test]
    fn no_lagged_when_every_missed_event_follows() {
        let (mut h, ob, _) = hub(4);
        req(&mut h, ClientMsg::Subscribe { id: 1, filters: vec!["#".into()], resume: None });
        drain(&ob);
        publish(&mut h, "a", 1.0); // Topic + Event: 2 live
        publish(&mut h, "a", 2.0); // 3
        publish(&mut h, "a", 3.0); // 4: full
        publish(&mut h, "a", 4.0); // missed, the latest of a
        publish(&mut h, "b", 5.0); // missed, the latest of b
        assert!(ob.behind_since().is_some());
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::new();
        assert_eq!(ob.poll_take(&cx, &mut frame, usize::MAX), Poll::Ready(Take::Messages(4)));
        assert_eq!(ob.poll_take(&cx, &mut frame, usize::MAX), Poll::Ready(Take::Drained));
        h.command(HubCmd::Drained { conn: 1 });
        let got = drain(&ob);
        assert!(!got.iter().any(|m| matches!(m, ServerMsg::Lagged { .. })), "nothing was skipped: {got:?}");
        assert!(matches!(got[0], ServerMsg::Event { topic: 0, seq: 4, .. }), "{got:?}");
        assert!(matches!(got[1], ServerMsg::Topic { id: 1, .. }));
        assert!(matches!(got[2], ServerMsg::Event { topic: 1, seq: 5, .. }));
        h.command(HubCmd::Drained { conn: 1 });
        assert_eq!(ob.behind_since(), None);
    }

    #[test]
    fn request_errors_in_protocol_order() {
        let (mut h, ob, publishes) = hub(16);
        drain(&ob);
        let sub = |id, f: &[&str]| ClientMsg::Subscribe {
            id,
            filters: f.iter().map(|s| s.to_string()).collect(),
            resume: None,
        };
        req(&mut h, sub(1, &["a"]));
        req(&mut h, sub(1, &["a/#/b"]));
        req(&mut h, sub(2, &[]));
        req(&mut h, sub(2, &["a", "b/#/c"]));
        req(&mut h, sub(2, &["a", "b", "c", "d"]));
        req(&mut h, ClientMsg::Unsubscribe { id: 9 });
        req(&mut h, ClientMsg::Unsubscribe { id: 1 });
        req(&mut h, sub(1, &["a", "b", "c", "d"]));
        req(&mut h, ClientMsg::Publish { req: 5, topic: "x/+".into(), payload: vec![], retain: false });
        req(&mut h, ClientMsg::Publish { req: 6, topic: "x".into(), payload: vec![], retain: false });
        req(&mut h, ClientMsg::Publish { req: 7, topic: "cmd/x".into(), payload: vec![], retain: false });
        h.bridge(BridgeMsg::Link { up: true });
        req(&mut h, ClientMsg::Publish { req: 8, topic: "cmd/x".into(), payload: vec![1], retain: true });
        req(&mut h, ClientMsg::Ping { nonce: 42 });
        let codes: Vec<(u16, u32)> = drain(&ob)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Error { code, req, .. } => Some((code, req)),
                ServerMsg::Ack { req } => Some((200, req)),
                ServerMsg::Pong { nonce } => Some((0, nonce)),
                _ => None,
            })
            .collect();
        assert_eq!(
            codes,
            vec![(409, 1), (400, 2), (400, 2), (413, 2), (404, 9), (400, 5), (403, 6), (503, 7), (200, 8), (0, 42)]
        );
        assert_eq!(publishes.try_recv().unwrap(), Publish { topic: "cmd/x".into(), payload: vec![1], retain: true });
    }

    fn past(got: &[ServerMsg]) -> Vec<(u32, Vec<u64>)> {
        got.iter()
            .filter_map(|m| match m {
                ServerMsg::Past { topic, points } => Some((*topic, points.iter().map(|p| p.seq).collect())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn history_answers_the_newest_per_topic_oldest_first_and_moves_nothing() {
        let (mut h, ob, _) = hub(16);
        drain(&ob);
        for (t, v) in [("a", 1.0), ("b", 2.0), ("a", 3.0), ("c", 4.0), ("a", 5.0)] {
            publish(&mut h, t, v);
        }
        // The ring (4) holds seqs 2..=5.
        req(&mut h, ClientMsg::History { id: 7, filters: vec!["a".into(), "b".into()], per_topic: 1 });
        let got = drain(&ob);
        assert_eq!(past(&got), vec![(1, vec![2]), (0, vec![5])], "{got:?}");
        assert_eq!(got[0], ServerMsg::Topic { id: 1, name: "b".into() });
        assert_eq!(got.last(), Some(&ServerMsg::HistoryDone { id: 7, seq: 5, truncated: false }));
        assert_eq!(h.conns[&1].last_seq, 0, "no live delivery was recorded");
        assert!(h.conns[&1].subs.is_empty());
        req(&mut h, ClientMsg::History { id: 8, filters: vec!["#".into()], per_topic: u16::MAX });
        let got = drain(&ob);
        assert_eq!(past(&got), vec![(1, vec![2]), (2, vec![4]), (0, vec![3, 5])], "{got:?}");
        // Declared once per connection: only c is new.
        assert_eq!(got.iter().filter(|m| matches!(m, ServerMsg::Topic { .. })).count(), 1);
        // The budget (2) is used up: 429, and it comes back with time.
        req(&mut h, ClientMsg::History { id: 9, filters: vec!["#".into()], per_topic: 1 });
        assert!(matches!(drain(&ob)[..], [ServerMsg::Error { code: 429, req: 9, .. }]));
        h.conns.get_mut(&1).unwrap().history = history::Budget::new(Instant::now());
        req(&mut h, ClientMsg::History { id: 10, filters: vec!["#".into()], per_topic: 0 });
        assert_eq!(drain(&ob), vec![ServerMsg::HistoryDone { id: 10, seq: 5, truncated: false }]);
    }

    #[test]
    fn history_refusals_and_byte_bound() {
        let (mut h, ob, _) = hub(16);
        h.conns.get_mut(&1).unwrap().perms = Arc::new(Permissions { subscribe: vec!["a/#".into()], publish: vec![] });
        drain(&ob);
        let hist = |id, f: &[&str]| ClientMsg::History {
            id,
            filters: f.iter().map(|s| s.to_string()).collect(),
            per_topic: 4,
        };
        req(&mut h, hist(1, &[]));
        req(&mut h, hist(2, &["a/#/b"]));
        req(&mut h, hist(3, &["b"]));
        req(&mut h, hist(4, &["a/1", "a/2", "a/3", "a/4", "a/5"]));
        let codes: Vec<(u16, u32)> = drain(&ob)
            .into_iter()
            .filter_map(|m| if let ServerMsg::Error { code, req, .. } = m { Some((code, req)) } else { None })
            .collect();
        assert_eq!(codes, vec![(400, 1), (400, 2), (403, 3), (413, 4)]);
        // Values of 40 KiB: the newest fits the 64 KiB bound, the next does not.
        for _ in 0..3 {
            let value = postcard::to_allocvec(&Value::Text("x".repeat(40 << 10))).unwrap();
            h.bridge(BridgeMsg::Event { topic: "a/big".into(), value, ts_ms: 1 });
        }
        publish(&mut h, "a/small", 1.0);
        req(&mut h, hist(5, &["a/#"]));
        let got = drain(&ob);
        assert_eq!(past(&got), vec![(0, vec![3]), (1, vec![4])], "{got:?}");
        assert_eq!(got.last(), Some(&ServerMsg::HistoryDone { id: 5, seq: 4, truncated: true }));
    }
}
