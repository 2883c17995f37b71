//! The client's account of every event: received, skipped with notice
//! (`Lagged`), covered by a snapshot, ended with its epoch, or missing.
//!
//! Rules (docs/PROTOCOL.md §6.5 and §6.7): a `Snapshot` answer covers the events after the
//! point the client offered to resume from, up to the answer's `Synced.seq`; a
//! `Lagged` notice covers the events after the highest seq the client had. An
//! event not received is covered only if a notice's range holds it *and* the
//! client received, after that notice, an event of the same topic at least as
//! recent (the latest value that superseded it). A new epoch ends the old one:
//! its events past what the client had are reported as [`Fate::EpochEnded`].

use std::collections::HashMap;
use std::sync::Arc;

/// What became of one event, as far as this client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered once.
    Received,
    /// Delivered more than once: a protocol violation.
    Duplicated,
    /// Not delivered, announced by `Lagged`; a later value of its topic followed.
    Skipped,
    /// Not delivered, superseded by a later value in a `Snapshot` answer.
    Covered,
    /// Not delivered before the server restarted (a new epoch was announced).
    EpochEnded,
    /// Not delivered and never announced: silent loss.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lagged,
    Snapshot,
}

#[derive(Debug, Clone)]
struct Notice {
    kind: Kind,
    /// Events with seq above this (and at most `upto`) may be covered.
    after: u64,
    upto: u64,
    /// Position in the message order from which superseding events count.
    from: u64,
}

#[derive(Debug, Default)]
struct Epoch {
    /// seq → (topic, times received, position of the first receipt).
    received: HashMap<u64, (Arc<str>, u32, u64)>,
    /// topic → (seq, position) of every receipt.
    by_topic: HashMap<Arc<str>, Vec<(u64, u64)>>,
    notices: Vec<Notice>,
    /// Highest seq the client had when the epoch ended.
    ended_at: Option<u64>,
}

/// Per-epoch records of what this client received and was told.
#[derive(Debug, Default)]
pub struct Ledger {
    epochs: HashMap<u64, Epoch>,
    current: Option<u64>,
    /// Message counter: orders receipts against notices.
    position: u64,
    /// Start of the Subscribe answer in progress: (offered last_seq, position).
    sync_start: Option<(u64, u64)>,
}

impl Ledger {
    /// An empty ledger; call [`Ledger::hello`] before recording events.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn epoch(&mut self) -> &mut Epoch {
        let e = self.current.expect("a Hello comes first");
        self.epochs.entry(e).or_default()
    }

    /// A connection's Hello. A different epoch ends the previous one at `high`.
    pub fn hello(&mut self, epoch: u64, high: u64) {
        if let Some(prev) = self.current.filter(|&p| p != epoch) {
            self.epochs.entry(prev).or_default().ended_at.get_or_insert(high);
        }
        self.current = Some(epoch);
        self.epochs.entry(epoch).or_default();
    }

    /// A Subscribe was sent offering to resume after `after` (0: no resume).
    pub fn subscribing(&mut self, after: u64) {
        self.position += 1;
        self.sync_start = Some((after, self.position));
    }

    /// An Event. Returns false when this seq was already received in this
    /// epoch; inside a Subscribe answer that is a snapshot re-sending a value
    /// the client has (not counted), outside it a duplicate (counted).
    pub fn event(&mut self, topic: &Arc<str>, seq: u64) -> bool {
        self.position += 1;
        let pos = self.position;
        let in_answer = self.sync_start.is_some();
        let e = self.epoch();
        if let Some(r) = e.received.get_mut(&seq) {
            if !in_answer {
                r.1 += 1;
            }
            return false;
        }
        e.received.insert(seq, (topic.clone(), 1, pos));
        e.by_topic.entry(topic.clone()).or_default().push((seq, pos));
        true
    }

    /// The Subscribe answer ended with `Synced`.
    pub fn synced(&mut self, seq: u64, snapshot: bool) {
        let Some((after, from)) = self.sync_start.take() else { return };
        if snapshot && seq > after {
            self.epoch().notices.push(Notice { kind: Kind::Snapshot, after, upto: seq, from });
        }
    }

    /// A `Lagged` notice; `high` is the highest seq the client had.
    pub fn lagged(&mut self, high: u64) {
        self.position += 1;
        let from = self.position;
        self.epoch().notices.push(Notice { kind: Kind::Lagged, after: high, upto: u64::MAX, from });
    }

    /// The connection ended; an unfinished Subscribe answer is void.
    pub fn disconnected(&mut self) {
        self.sync_start = None;
    }

    /// What became of event `seq` on `topic` in `epoch`.
    pub fn fate(&self, epoch: u64, seq: u64, topic: &str) -> Fate {
        let Some(e) = self.epochs.get(&epoch) else { return Fate::Missing };
        if let Some((t, n, _)) = e.received.get(&seq) {
            debug_assert_eq!(&**t, topic);
            return if *n == 1 { Fate::Received } else { Fate::Duplicated };
        }
        let superseded_after =
            |from: u64| e.by_topic.get(topic).is_some_and(|rs| rs.iter().any(|&(s, pos)| s >= seq && pos >= from));
        for n in &e.notices {
            if seq > n.after && seq <= n.upto && superseded_after(n.from) {
                return if n.kind == Kind::Lagged { Fate::Skipped } else { Fate::Covered };
            }
        }
        match e.ended_at {
            Some(h) if seq > h => Fate::EpochEnded,
            _ => Fate::Missing,
        }
    }

    /// Seqs received more than once, per epoch.
    pub fn duplicates(&self) -> Vec<(u64, u64)> {
        let mut d: Vec<(u64, u64)> = self
            .epochs
            .iter()
            .flat_map(|(ep, e)| e.received.iter().filter(|(_, r)| r.1 > 1).map(move |(s, _)| (*ep, *s)))
            .collect();
        d.sort_unstable();
        d
    }

    /// Events received in `epoch`.
    pub fn received_count(&self, epoch: u64) -> usize {
        self.epochs.get(&epoch).map_or(0, |e| e.received.len())
    }

    /// Notices (Lagged, Snapshot) recorded in `epoch`: (lagged, snapshots).
    pub fn notice_counts(&self, epoch: u64) -> (usize, usize) {
        self.epochs.get(&epoch).map_or((0, 0), |e| {
            let lagged = e.notices.iter().filter(|n| n.kind == Kind::Lagged).count();
            (lagged, e.notices.len() - lagged)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn received_once_and_duplicates_outside_answers() {
        let mut l = Ledger::new();
        l.hello(7, 0);
        l.subscribing(0);
        l.synced(0, true);
        assert!(l.event(&t("a"), 1));
        assert!(!l.event(&t("a"), 1), "second delivery");
        assert_eq!(l.fate(7, 1, "a"), Fate::Duplicated);
        assert_eq!(l.duplicates(), vec![(7, 1)]);
        assert_eq!(l.fate(7, 2, "a"), Fate::Missing);
    }

    #[test]
    fn snapshot_covers_superseded_events_in_its_range_only() {
        let mut l = Ledger::new();
        l.hello(1, 0);
        l.subscribing(0);
        l.event(&t("a"), 1);
        l.synced(1, true);
        l.event(&t("b"), 2);
        // Disconnected; meanwhile a:3, a:4, b:5 happened. Resume after 2 fails: snapshot.
        l.disconnected();
        l.hello(1, 2);
        l.subscribing(2);
        l.event(&t("a"), 4);
        l.event(&t("b"), 5);
        l.synced(5, true);
        assert_eq!(l.fate(1, 3, "a"), Fate::Covered);
        assert_eq!(l.fate(1, 4, "a"), Fate::Received);
        // A snapshot re-sending a value the client has is not a duplicate.
        l.disconnected();
        l.subscribing(5);
        l.event(&t("a"), 4);
        l.synced(5, true);
        assert_eq!(l.fate(1, 4, "a"), Fate::Received);
        assert!(l.duplicates().is_empty());
    }

    #[test]
    fn snapshot_without_the_superseding_value_is_missing() {
        let mut l = Ledger::new();
        l.hello(1, 0);
        l.subscribing(0);
        l.synced(0, true);
        l.event(&t("a"), 1);
        l.disconnected();
        l.subscribing(1);
        // a:2 and c:3 happened; the answer only had a:2: c:3 is lost silently.
        l.event(&t("a"), 2);
        l.synced(3, true);
        assert_eq!(l.fate(1, 3, "c"), Fate::Missing);
        // An event before the offered resume point is not covered either.
        assert_eq!(l.fate(1, 1, "a"), Fate::Received);
    }

    #[test]
    fn lagged_covers_events_after_the_notice_superseded_later() {
        let mut l = Ledger::new();
        l.hello(1, 0);
        l.subscribing(0);
        l.synced(0, true);
        l.event(&t("a"), 1);
        l.lagged(1);
        l.event(&t("a"), 9);
        assert_eq!(l.fate(1, 5, "a"), Fate::Skipped);
        assert_eq!(l.fate(1, 6, "b"), Fate::Missing, "no later b arrived");
        assert_eq!(l.notice_counts(1), (1, 0));
    }

    #[test]
    fn replay_covers_nothing_and_a_new_epoch_ends_the_old() {
        let mut l = Ledger::new();
        l.hello(1, 0);
        l.subscribing(0);
        l.synced(0, false);
        l.event(&t("a"), 1);
        l.disconnected();
        l.subscribing(1);
        l.synced(3, false);
        assert_eq!(l.fate(1, 2, "a"), Fate::Missing, "a replay must have sent it");
        l.hello(2, 1);
        assert_eq!(l.fate(1, 2, "a"), Fate::EpochEnded);
        assert_eq!(l.fate(1, 1, "a"), Fate::Received);
    }
}
