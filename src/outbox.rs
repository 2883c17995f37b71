//! A connection's bounded outbox: the hub pushes encoded messages, the
//! connection's task drains them. Shared by exactly those two, under a mutex
//! held for a few instructions; the hub never waits on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// One encoded `ServerMsg`, shared by every connection it goes to.
pub type Bytes = Arc<[u8]>;

/// How many requests of a connection may await their answer; the reader stops
/// reading while this many are in flight, which bounds what answers can queue.
pub const MAX_IN_FLIGHT: usize = 4;

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// This many messages were appended to the frame.
    Messages(usize),
    /// The queue is empty while the connection is behind: tell the hub.
    Drained,
    /// Close the connection with this code.
    Close(u16),
    /// Nothing is queued and [`Outbox::recycle`] was called: close with 1001.
    Recycle,
}

#[derive(Default)]
struct State {
    /// Messages and whether each counts as live (against the cap).
    queue: VecDeque<(Bytes, bool)>,
    live: usize,
    behind_since: Option<Instant>,
    drained_reported: bool,
    close: Option<u16>,
    /// Asked to close with 1001 once what is queued has gone out (a drain).
    recycle: bool,
    in_flight: usize,
    waker: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The bounded queue between the hub and one connection.
pub struct Outbox {
    cap: usize,
    state: Mutex<State>,
}

impl Outbox {
    /// `cap` is `outbox-messages`: the most live messages queued at once.
    pub fn new(cap: usize) -> Arc<Outbox> {
        Arc::new(Outbox { cap, state: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; with panic=abort there is none.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues live messages (an event and perhaps its topic declaration) unless
    /// that would pass the cap. Returns false, queuing nothing, when full.
    pub fn push_live(&self, msgs: &[&Bytes]) -> bool {
        let mut s = self.lock();
        if s.close.is_some() || s.live + msgs.len() > self.cap {
            return s.close.is_some();
        }
        for m in msgs {
            s.queue.push_back(((*m).clone(), true));
        }
        s.live += msgs.len();
        s.wake();
        true
    }

    /// Queues the answer to a request, or a notice; not limited by the cap
    /// (bounded by [`MAX_IN_FLIGHT`] and the topic table instead).
    pub fn push(&self, msg: Bytes) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.queue.push_back((msg, false));
            s.wake();
        }
    }

    /// Queues several answer messages under one lock and one wake-up.
    pub fn push_all(&self, msgs: Vec<Bytes>) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.queue.extend(msgs.into_iter().map(|m| (m, false)));
            s.wake();
        }
    }

    /// Marks the connection behind from `now` unless it already is.
    pub fn mark_behind(&self, now: Instant) {
        let mut s = self.lock();
        if s.behind_since.is_none() {
            s.behind_since = Some(now);
            s.drained_reported = false;
            s.wake();
        }
    }

    /// The hub queued a catch-up: the connection stays behind (since its
    /// first overflow) until that has drained too, so report the next drain.
    pub fn catching_up(&self) {
        let mut s = self.lock();
        s.drained_reported = false;
        s.wake();
    }

    /// The connection has caught up: its outbox drained with nothing
    /// collapsed since the last catch-up.
    pub fn clear_behind(&self) {
        let mut s = self.lock();
        s.behind_since = None;
        s.wake();
    }

    pub fn behind_since(&self) -> Option<Instant> {
        self.lock().behind_since
    }

    /// Asks the connection to close with `code` (first request wins).
    pub fn close(&self, code: u16) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
            s.queue.clear();
            s.live = 0;
        }
        s.wake();
    }

    /// Asks the connection to close with 1001 once its queued output has
    /// gone out (SIGUSR1's drain): [`Take::Recycle`] once the queue is empty.
    /// Unlike [`Outbox::close`], nothing queued is dropped.
    pub fn recycle(&self) {
        let mut s = self.lock();
        s.recycle = true;
        s.wake();
    }

    /// The close code asked for, if any.
    pub fn close_code(&self) -> Option<u16> {
        self.lock().close
    }

    /// Room for live messages right now.
    pub fn has_room(&self) -> bool {
        self.lock().live < self.cap
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reader forwards a request to the hub.
    pub fn request_started(&self) {
        self.lock().in_flight += 1;
    }

    /// The hub answered a request.
    pub fn request_answered(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.wake();
    }

    /// Whether the reader may forward another request: few in flight and room queued.
    pub fn accepts_requests(&self) -> bool {
        let s = self.lock();
        s.in_flight < MAX_IN_FLIGHT && s.queue.len() < self.cap
    }

    /// Registers the writer's waker for any change.
    pub fn register(&self, cx: &Context<'_>) {
        let mut s = self.lock();
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
    }

    /// Appends queued messages to `frame` until it holds `max_bytes` (at least
    /// one message is taken whatever its size).
    pub fn poll_take(&self, cx: &Context<'_>, frame: &mut Vec<u8>, max_bytes: usize) -> Poll<Take> {
        let mut s = self.lock();
        if let Some(code) = s.close {
            return Poll::Ready(Take::Close(code));
        }
        let mut n = 0;
        while let Some((m, _)) = s.queue.front() {
            if n > 0 && frame.len() + m.len() > max_bytes {
                break;
            }
            frame.extend_from_slice(m);
            let (_, live) = s.queue.pop_front().expect("front exists");
            s.live -= live as usize;
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Take::Messages(n));
        }
        if s.behind_since.is_some() && !s.drained_reported {
            s.drained_reported = true;
            return Poll::Ready(Take::Drained);
        }
        if s.recycle {
            return Poll::Ready(Take::Recycle);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn b(x: u8) -> Bytes {
        Arc::from(vec![x])
    }

    fn take(o: &Outbox, max: usize) -> (Poll<Take>, Vec<u8>) {
        let cx = Context::from_waker(Waker::noop());
        let mut frame = Vec::new();
        let p = o.poll_take(&cx, &mut frame, max);
        (p, frame)
    }

    #[test]
    fn live_messages_stop_at_the_cap_answers_do_not() {
        let o = Outbox::new(2);
        assert!(o.push_live(&[&b(1)]));
        assert!(!o.push_live(&[&b(2), &b(3)]), "the pair would pass the cap");
        assert!(o.push_live(&[&b(2)]));
        assert!(!o.push_live(&[&b(3)]));
        assert!(!o.has_room());
        o.push(b(9));
        assert_eq!(o.len(), 3);
        assert_eq!(take(&o, 1024), (Poll::Ready(Take::Messages(3)), vec![1, 2, 9]));
        assert!(o.has_room());
    }

    #[test]
    fn frames_are_packed_up_to_the_byte_limit() {
        let o = Outbox::new(10);
        for i in 0..5 {
            assert!(o.push_live(&[&b(i)]));
        }
        assert_eq!(take(&o, 2), (Poll::Ready(Take::Messages(2)), vec![0, 1]));
        assert_eq!(take(&o, 0), (Poll::Ready(Take::Messages(1)), vec![2]));
        assert_eq!(take(&o, 10), (Poll::Ready(Take::Messages(2)), vec![3, 4]));
        assert_eq!(take(&o, 10).0, Poll::Pending);
    }

    #[test]
    fn a_behind_connection_reports_drained_once() {
        let o = Outbox::new(1);
        let t = Instant::now();
        o.push_live(&[&b(1)]);
        o.mark_behind(t);
        o.mark_behind(t + std::time::Duration::from_secs(1));
        assert_eq!(o.behind_since(), Some(t), "behind starts at the first overflow");
        assert_eq!(take(&o, 10).0, Poll::Ready(Take::Messages(1)));
        assert_eq!(take(&o, 10).0, Poll::Ready(Take::Drained));
        assert_eq!(take(&o, 10).0, Poll::Pending);
        o.clear_behind();
        assert_eq!(o.behind_since(), None);
    }

    #[test]
    fn close_drops_the_queue_and_wins() {
        let o = Outbox::new(4);
        o.push_live(&[&b(1)]);
        o.close(1001);
        o.close(1013);
        o.push(b(2));
        assert!(o.push_live(&[&b(3)]), "a closed outbox swallows pushes");
        assert_eq!(take(&o, 10).0, Poll::Ready(Take::Close(1001)));
    }

    #[test]
    fn requests_pause_when_too_many_are_in_flight_or_the_queue_is_full() {
        let o = Outbox::new(2);
        for _ in 0..MAX_IN_FLIGHT {
            assert!(o.accepts_requests());
            o.request_started();
        }
        assert!(!o.accepts_requests());
        o.request_answered();
        assert!(o.accepts_requests());
        o.push(b(1));
        o.push(b(2));
        assert!(!o.accepts_requests());
    }
}
