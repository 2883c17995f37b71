//! A client that stays subscribed: it reconnects with exponential backoff and
//! full jitter, resumes from the epoch and highest seq it has seen, notices a
//! silent server (nothing for 2.5 × `heartbeat_ms`), and keeps a [`Ledger`]
//! of every event. `watch`, the tests and the load tool use it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future::FutureExt as _;
use smol::Timer;

use super::ledger::Ledger;
use super::{Client, ClientError, ConnectOptions};
use edgepush_protocol::backoff::Backoff;
use edgepush_protocol::rng::Rng;
use edgepush_protocol::{Point, Resume, ServerMsg, SyncMode, Value};

/// What the follower has to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Connected (Hello received) and subscribed; `resumed` when a resume was offered.
    Connected {
        /// The server's epoch, from its Hello.
        epoch: u64,
        /// The Subscribe offered to resume from an earlier point.
        resumed: bool,
        /// Whether the server's broker link was up, from its Hello.
        broker_up: bool,
    },
    /// A new event (never one already delivered in this epoch).
    Event {
        /// The topic name (`#<id>` if the server never declared the id).
        topic: Arc<str>,
        /// The event's server-wide sequence number within the epoch.
        seq: u64,
        /// When the gateway received the message, in Unix milliseconds.
        ts_ms: u64,
        /// The payload.
        value: Value,
    },
    /// The Subscribe answer is complete.
    Synced {
        /// The server's current seq when the answer ended (0 before any event).
        seq: u64,
        /// Whether the answer was a replay of missed events or a snapshot of
        /// latest values.
        mode: SyncMode,
    },
    /// Events were skipped; the latest of each skipped topic follows.
    Lagged {
        /// How many events were skipped (saturates at `u32::MAX`).
        skipped: u32,
    },
    /// The gateway's broker link changed.
    Broker {
        /// Whether the link is now up.
        up: bool,
    },
    /// The server refused a request.
    Error {
        /// An HTTP-style status code, e.g. 400, 403, 409 or 413.
        code: u16,
        /// The server's explanation.
        message: String,
    },
    /// Earlier events of a topic from the server's history ring (asked for
    /// with [`Follower::with_history`]), oldest first. Not live, not in the ledger.
    Past {
        /// The topic name (`#<id>` if the server never declared the id).
        topic: Arc<str>,
        /// The events, in seq order.
        points: Vec<Point>,
    },
    /// The history answer of this connection is complete.
    HistoryDone {
        /// The server's seq when it was made.
        seq: u64,
        /// Some points were left out by the server's bounds.
        truncated: bool,
    },
    /// The connection ended (or could not be made); the next attempt is in `retry_in`.
    Lost {
        /// The error that ended (or prevented) the connection, as text.
        why: String,
        /// The HTTP status if the server refused the handshake.
        refused: Option<u16>,
        /// The backoff delay before the next connection attempt.
        retry_in: Duration,
    },
}

/// Counters for reports.
#[derive(Debug, Default, Clone)]
pub struct FollowStats {
    /// Connections made and subscribed.
    pub connects: u64,
    /// Subscribe answers that were replays.
    pub replays: u64,
    /// Subscribe answers that were snapshots.
    pub snapshots: u64,
    /// `Lagged` notices received.
    pub lagged: u64,
    /// Connections lost or attempts that failed.
    pub losses: u64,
    /// Values a snapshot re-sent that this client already had (not delivered again).
    pub resent: u64,
}

/// A subscription that survives reconnects.
pub struct Follower {
    url: String,
    filters: Vec<String>,
    opts: ConnectOptions,
    backoff: Backoff,
    rng: Rng,
    attempt: u32,
    retry_at: Option<Instant>,
    conn: Option<Live>,
    epoch: Option<u64>,
    /// The resume point: the highest seq of a completed Subscribe answer
    /// (its Synced) or of a live event in `epoch`. Events of an answer still
    /// in progress do not move it: a snapshot cut off half-way has sent only
    /// some topics' latest values, and resuming after them would skip the
    /// rest without notice.
    high: u64,
    /// A Subscribe answer is in progress (until its Synced).
    answering: bool,
    /// Per topic, how many recent events to ask for after each Subscribe (0: none).
    history: u16,
    ledger: Ledger,
    stats: FollowStats,
}

struct Live {
    client: Client,
    /// Silence longer than this means the server or the path is dead.
    dead_after: Duration,
    /// When the last message arrived (silence is measured from it).
    last_rx: Instant,
    names: HashMap<u32, Arc<str>>,
}

impl Follower {
    /// A follower of `filters` at `url` with default [`ConnectOptions`]. It
    /// connects on the first [`Follower::next`].
    pub fn new(url: &str, filters: &[&str], backoff: Backoff) -> Follower {
        Follower::with_options(url, filters, backoff, ConnectOptions::default())
    }

    /// As [`Follower::new`], with explicit connect options (headers, TLS).
    pub fn with_options(url: &str, filters: &[&str], backoff: Backoff, opts: ConnectOptions) -> Follower {
        static SALT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let salt = SALT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Follower {
            url: url.to_owned(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            opts,
            backoff,
            rng: Rng::from_time(salt),
            attempt: 0,
            retry_at: None,
            conn: None,
            epoch: None,
            high: 0,
            answering: false,
            history: 0,
            ledger: Ledger::new(),
            stats: FollowStats::default(),
        }
    }

    /// After each Subscribe, also asks for up to `per_topic` recent events
    /// per topic (docs/PROTOCOL.md §6.13), reported as [`Update::Past`] and
    /// [`Update::HistoryDone`] after the Subscribe's [`Update::Synced`].
    pub fn with_history(mut self, per_topic: u16) -> Follower {
        self.history = per_topic;
        self
    }

    /// The account of every event received so far.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Counters of connections, answers and notices.
    pub fn stats(&self) -> &FollowStats {
        &self.stats
    }

    /// Where a reconnect resumes from.
    pub fn resume_point(&self) -> Option<Resume> {
        self.epoch.map(|epoch| Resume { epoch, last_seq: self.high })
    }

    /// Whether a connection is currently up.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the connection now (as an outage would); `next` reconnects after
    /// `after`, or at once.
    pub fn disconnect(&mut self, after: Duration) {
        if self.conn.take().is_some() {
            self.ledger.disconnected();
        }
        self.retry_at = Some(Instant::now() + after);
    }

    /// The next update; reconnects as needed. Cancel-safe: dropping the
    /// future loses no event (state changes only after each await completes).
    pub async fn next(&mut self) -> Update {
        loop {
            if self.conn.is_none() {
                if let Some(at) = self.retry_at {
                    Timer::at(at).await;
                }
                match self.connect().await {
                    Ok(u) => return u,
                    Err(e) => return self.lost(e),
                }
            }
            let live = self.conn.as_mut().expect("connected");
            let dead_after = live.dead_after;
            let deadline = live.last_rx + dead_after;
            let msg = async { Some(live.client.next().await) }
                .or(async {
                    Timer::at(deadline).await;
                    None
                })
                .await;
            if msg.is_some() {
                live.last_rx = Instant::now();
            }
            let msg = match msg {
                None => {
                    let why = format!("nothing from the server for {dead_after:?}");
                    return self.lost(ClientError::Protocol(why));
                }
                Some(Err(e)) => return self.lost(e),
                Some(Ok(m)) => m,
            };
            if let Some(u) = self.handle(msg) {
                return u;
            }
        }
    }

    async fn connect(&mut self) -> Result<Update, ClientError> {
        let mut client = Client::connect_with(&self.url, &self.opts).await?;
        let hello = client.hello().clone();
        if self.epoch != Some(hello.epoch) {
            // A restarted server: the old stream ended where we were.
            self.ledger.hello(hello.epoch, self.high);
            self.epoch = Some(hello.epoch);
            self.high = 0;
        }
        let resume = (self.high > 0).then_some(Resume { epoch: hello.epoch, last_seq: self.high });
        let filters: Vec<&str> = self.filters.iter().map(String::as_str).collect();
        client.subscribe(1, &filters, resume).await?;
        if self.history > 0 {
            client.history(2, &filters, self.history).await?;
        }
        self.ledger.subscribing(self.high);
        self.answering = true;
        self.stats.connects += 1;
        self.retry_at = None;
        let dead_after = Duration::from_millis(u64::from(hello.heartbeat_ms.max(100))).mul_f64(2.5);
        self.conn = Some(Live { client, dead_after, last_rx: Instant::now(), names: HashMap::new() });
        Ok(Update::Connected { epoch: hello.epoch, resumed: resume.is_some(), broker_up: hello.broker_up })
    }

    fn lost(&mut self, e: ClientError) -> Update {
        if self.conn.take().is_some() {
            self.ledger.disconnected();
        }
        self.stats.losses += 1;
        let refused = match &e {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        };
        let retry_in = self.backoff.delay(self.attempt, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Some(Instant::now() + retry_in);
        Update::Lost { why: e.to_string(), refused, retry_in }
    }

    fn handle(&mut self, msg: ServerMsg) -> Option<Update> {
        let live = self.conn.as_mut()?;
        match msg {
            ServerMsg::Topic { id, name } => {
                live.names.insert(id, Arc::from(name));
                None
            }
            ServerMsg::Event { topic, seq, ts_ms, value } => {
                if !self.answering {
                    self.high = self.high.max(seq);
                }
                let name = live.names.get(&topic).cloned().unwrap_or_else(|| Arc::from(format!("#{topic}")));
                if self.ledger.event(&name, seq) {
                    Some(Update::Event { topic: name, seq, ts_ms, value })
                } else {
                    self.stats.resent += 1;
                    None
                }
            }
            ServerMsg::Synced { seq, mode, .. } => {
                self.high = self.high.max(seq);
                self.answering = false;
                self.ledger.synced(seq, mode == SyncMode::Snapshot);
                match mode {
                    SyncMode::Replay => self.stats.replays += 1,
                    SyncMode::Snapshot => self.stats.snapshots += 1,
                }
                // A full sync resets the backoff.
                self.attempt = 0;
                Some(Update::Synced { seq, mode })
            }
            ServerMsg::Lagged { skipped } => {
                self.ledger.lagged(self.high);
                self.stats.lagged += 1;
                Some(Update::Lagged { skipped })
            }
            ServerMsg::Past { topic, points } => {
                let topic = live.names.get(&topic).cloned().unwrap_or_else(|| Arc::from(format!("#{topic}")));
                Some(Update::Past { topic, points })
            }
            ServerMsg::HistoryDone { seq, truncated, .. } => Some(Update::HistoryDone { seq, truncated }),
            ServerMsg::Broker { up } => Some(Update::Broker { up }),
            ServerMsg::Error { code, message, .. } => Some(Update::Error { code, message }),
            ServerMsg::Hello { .. } | ServerMsg::Ack { .. } | ServerMsg::Pong { .. } | ServerMsg::Heartbeat { .. } => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_doubling_ceiling_and_the_cap() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        let mut rng = Rng::new(42);
        for attempt in 0..30 {
            let ceiling = Duration::from_millis(100 * (1u64 << attempt.min(20))).min(Duration::from_secs(2));
            let mut max = Duration::ZERO;
            for _ in 0..200 {
                let d = b.delay(attempt, &mut rng);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                max = max.max(d);
            }
            // Spread: the largest of 200 draws reaches well into the range.
            assert!(max > ceiling.mul_f64(0.8), "attempt {attempt}: max {max:?}");
        }
    }
}
