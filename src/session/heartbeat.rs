//! Heartbeat state of one connection: WebSocket pings with a pong deadline, and
//! the application `Heartbeat` message when nothing else went out. No I/O.

use std::time::{Duration, Instant};

/// What the connection must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing before this instant.
    Idle(Instant),
    /// Send a WebSocket ping, then call [`Heartbeat::ping_sent`].
    Ping,
    /// Send `ServerMsg::Heartbeat`, then call [`Heartbeat::sent`].
    Heartbeat,
    /// The last ping went unanswered for the timeout, or a due ping could not
    /// even be sent for that long (a write stuck: the peer reads nothing):
    /// drop the connection.
    Dead,
}

/// Ping schedule and pong deadline; one ping outstanding at a time.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_sent: Instant,
    next_ping: Instant,
    ping_out: Option<Instant>,
}

impl Heartbeat {
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Heartbeat { interval, timeout, last_sent: now, next_ping: now + interval, ping_out: None }
    }

    /// A ServerMsg went out (pings do not count).
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    pub fn ping_sent(&mut self, now: Instant) {
        self.ping_out = Some(now);
        self.next_ping = now + self.interval;
    }

    /// Nothing was sent for an interval: a Heartbeat message is due.
    pub fn heartbeat_due(&self, now: Instant) -> bool {
        now >= self.last_sent + self.interval
    }

    /// Any pong received after the ping was sent answers it.
    pub fn pong(&mut self) {
        self.ping_out = None;
    }

    pub fn poll(&self, now: Instant) -> Due {
        if let Some(sent) = self.ping_out {
            if now >= sent + self.timeout {
                return Due::Dead;
            }
        } else if now >= self.next_ping + self.timeout {
            // The ping has been due for the timeout and is still not out: the
            // session only sends it between frames, so one frame has been
            // stuck that long. A silent peer, as if the ping had gone unanswered.
            return Due::Dead;
        } else if now >= self.next_ping {
            return Due::Ping;
        }
        let heartbeat_at = self.last_sent + self.interval;
        if self.heartbeat_due(now) {
            return Due::Heartbeat;
        }
        let ping_at = match self.ping_out {
            Some(sent) => sent + self.timeout,
            None => self.next_ping,
        };
        Due::Idle(ping_at.min(heartbeat_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn quiet_connection_gets_ping_and_heartbeat_each_interval() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(t0, 15 * S, 10 * S);
        assert_eq!(h.poll(t0), Due::Idle(t0 + 15 * S));
        assert_eq!(h.poll(t0 + 15 * S), Due::Ping);
        assert!(h.heartbeat_due(t0 + 15 * S), "sent with the ping, in one write");
        h.ping_sent(t0 + 15 * S);
        assert_eq!(h.poll(t0 + 15 * S), Due::Heartbeat);
        h.sent(t0 + 15 * S);
        assert_eq!(h.poll(t0 + 15 * S), Due::Idle(t0 + 25 * S));
        h.pong();
        assert_eq!(h.poll(t0 + 16 * S), Due::Idle(t0 + 30 * S));
    }

    #[test]
    fn traffic_postpones_the_heartbeat_message_but_not_the_ping() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(t0, 15 * S, 10 * S);
        h.sent(t0 + 14 * S);
        assert_eq!(h.poll(t0 + 15 * S), Due::Ping);
        h.ping_sent(t0 + 15 * S);
        h.pong();
        assert_eq!(h.poll(t0 + 20 * S), Due::Idle(t0 + 29 * S));
        assert_eq!(h.poll(t0 + 29 * S), Due::Heartbeat);
    }

    #[test]
    fn a_ping_that_cannot_go_out_is_dead_at_the_timeout_not_before() {
        let t0 = Instant::now();
        let h = Heartbeat::new(t0, 15 * S, 10 * S);
        // Due at 15 s, but a stuck write kept the session from sending it.
        assert_eq!(h.poll(t0 + 24 * S), Due::Ping);
        assert_eq!(h.poll(t0 + 25 * S), Due::Dead);
    }

    #[test]
    fn unanswered_ping_is_dead_at_the_timeout_not_before() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(t0, 15 * S, 10 * S);
        h.ping_sent(t0 + 15 * S);
        h.sent(t0 + 24 * S);
        assert_eq!(h.poll(t0 + 24 * S), Due::Idle(t0 + 25 * S));
        assert_eq!(h.poll(t0 + 25 * S), Due::Dead);
    }

    #[test]
    fn a_late_pong_still_answers_and_next_ping_waits_for_it() {
        let t0 = Instant::now();
        let mut h = Heartbeat::new(t0, 2 * S, 5 * S);
        h.ping_sent(t0 + 2 * S);
        h.sent(t0 + 4 * S);
        // The next ping is due at 4 s but one is outstanding: no second ping.
        assert_eq!(h.poll(t0 + 5 * S), Due::Idle(t0 + 6 * S));
        h.pong();
        assert_eq!(h.poll(t0 + 5 * S), Due::Ping);
    }
}
