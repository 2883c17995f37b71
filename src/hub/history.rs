//! `History` requests (docs/PROTOCOL.md §6.13): the newest events per topic
//! from the hub's history ring, answered as `Past` values and `HistoryDone`.
//! Pure functions over the hub's state, and the per-connection budget.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepush_protocol::msg::{HISTORY_MAX_PER_TOPIC, HISTORY_MAX_POINTS, HISTORY_MAX_VALUE_BYTES};
use edgepush_protocol::{topic, Permissions, ServerMsg};

use super::{bytes, check_filters, error, Conn, HistoryEntry, TopicEntry};
use crate::outbox::Bytes;

/// History requests a connection may make at once; one more comes back
/// every [`REFILL`]. Two: a page's first request and one after a filter change.
const BURST: f64 = 2.0;
/// How long a used History request takes to come back.
const REFILL: Duration = Duration::from_secs(10);

/// A connection's token bucket for History requests.
pub(crate) struct Budget {
    tokens: f64,
    last: Instant,
}

impl Budget {
    pub(crate) fn new(now: Instant) -> Budget {
        Budget { tokens: BURST, last: now }
    }

    /// Takes one request, or answers 429.
    pub(crate) fn take(&mut self, id: u32, now: Instant) -> Result<(), Bytes> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt / REFILL.as_secs_f64()).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(error(429, id, format!("at most {BURST} History requests, one more every {REFILL:?}")));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// The checks of a History, in the order of docs/PROTOCOL.md §6.13.
pub(crate) fn check(perms: &Permissions, max: usize, id: u32, filters: &[String]) -> Result<(), Bytes> {
    check_filters(perms, id, filters)?;
    if filters.len() > max {
        return Err(error(413, id, format!("a request may hold at most {max} filters")));
    }
    Ok(())
}

/// One point of an answer: seq, ts_ms and the encoded value (borrowed from the ring).
type RawPoint<'a> = (u64, u64, &'a [u8]);

/// What a History answers: per topic its points (seq, ts_ms, encoded value),
/// oldest first, topics ordered by the seq of their newest point.
pub(super) struct Answer<'a> {
    pub(super) topics: Vec<(u32, Vec<RawPoint<'a>>)>,
    pub(super) truncated: bool,
}

/// Collects the newest `per_topic` (at most [`HISTORY_MAX_PER_TOPIC`]) ring
/// events of every topic the filters match, newest first across topics, until
/// [`HISTORY_MAX_POINTS`] points or [`HISTORY_MAX_VALUE_BYTES`] value bytes.
/// A topic whose next point would pass the byte bound gets no older points.
pub(super) fn answer<'a>(
    topics: &[TopicEntry],
    ring: &'a VecDeque<HistoryEntry>,
    filters: &[String],
    per_topic: u16,
) -> Answer<'a> {
    let per_topic = usize::from(per_topic.min(HISTORY_MAX_PER_TOPIC));
    let matching: Vec<bool> =
        topics.iter().map(|t| per_topic > 0 && filters.iter().any(|f| topic::matches(f, &t.name))).collect();
    let open = matching.iter().filter(|m| **m).count();
    // Per topic: its points so far, and whether it takes no more.
    let mut got: HashMap<u32, (Vec<RawPoint>, bool)> = HashMap::new();
    let (mut closed, mut points, mut value_bytes, mut truncated) = (0, 0, 0, false);
    for h in ring.iter().rev() {
        if closed == open {
            break;
        }
        if !matching[h.topic as usize] {
            continue;
        }
        let (v, done) = got.entry(h.topic).or_default();
        if *done {
            continue;
        }
        let Some((_, seq, ts_ms, value)) = ServerMsg::split_event(&h.event) else { continue };
        if points == HISTORY_MAX_POINTS {
            truncated = true;
            break;
        }
        if value_bytes + value.len() > HISTORY_MAX_VALUE_BYTES {
            // This topic stops here; smaller values of others may still fit.
            truncated = true;
        } else {
            v.push((seq, ts_ms, value));
            points += 1;
            value_bytes += value.len();
            if v.len() < per_topic {
                continue;
            }
        }
        *done = true;
        closed += 1;
    }
    let mut out: Vec<(u32, Vec<RawPoint>)> = got
        .into_iter()
        .filter(|(_, (v, _))| !v.is_empty())
        .map(|(id, (mut v, _))| {
            v.reverse();
            (id, v)
        })
        .collect();
    out.sort_unstable_by_key(|(_, v)| v.last().map(|p| p.0));
    Answer { topics: out, truncated }
}

/// Queues the answer in one step: declarations before first uses, the Past
/// values, then `HistoryDone`. None of it is live, none of it moves the
/// connection's resume point.
pub(super) fn queue(c: &mut Conn, topics: &[TopicEntry], id: u32, answer: Answer<'_>, seq: u64) {
    let mut out: Vec<Bytes> = Vec::with_capacity(2 * answer.topics.len() + 1);
    for (tid, points) in &answer.topics {
        if !c.is_declared(*tid) {
            c.declare(*tid);
            out.push(topics[*tid as usize].decl.clone());
        }
        out.push(Arc::from(ServerMsg::encode_past(*tid, points)));
    }
    out.push(bytes(&ServerMsg::HistoryDone { id, seq, truncated: answer.truncated }));
    c.outbox.push_all(out);
}
