//! One timer thread for every session's deadlines (ping, ping timeout,
//! heartbeat, slow-client eviction).
//!
//! A reactor timer per connection costs, each time it is armed, a queued
//! timer operation, an eventfd write that wakes the reactor thread, a read of
//! it, a `timerfd_settime` and another `epoll_wait`: measured with
//! `strace -c`, about ten syscalls and two context switches per connection
//! per heartbeat round, and 0.42 CPU-seconds per minute for 1,000 idle
//! connections. Here deadlines go into slots of [`TICK`] on a wheel that one
//! thread sleeps on; it wakes once per occupied slot and wakes every session
//! in it together. Arming costs a mutex and a `Vec` push; a new earliest slot
//! (rare: deadlines are seconds away) also signals the thread.
//!
//! A session wakes at its deadline or up to one tick later. Wakers of sessions
//! that ended or re-armed stay until their slot comes; waking them is harmless,
//! but not free (a task wake-up and its executor thread's syscalls), so a
//! session cancels the entry it no longer needs where that is common: the
//! ping-timeout deadline, once the pong has come, every heartbeat round.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

/// [`TICK`] in milliseconds: slot times are computed from it in 64 bits.
const TICK_MS: u64 = 20;

/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(TICK_MS);

pub struct Ticker {
    start: Instant,
    slots: Mutex<Slots>,
    earlier: Condvar,
}

/// The wheel: wakers by slot, each with the number [`Ticker::cancel`] finds it by.
#[derive(Default)]
struct Slots {
    by_slot: BTreeMap<u64, Vec<(u64, Waker)>>,
    next_id: u64,
}

/// An armed wake-up, for [`Ticker::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    slot: u64,
    id: u64,
}

impl Ticker {
    /// The process's ticker; its thread starts on first use.
    pub fn get() -> &'static Ticker {
        static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
        TICKER.get_or_init(|| {
            let t: &'static Ticker = Box::leak(Box::new(Ticker::new()));
            std::thread::Builder::new()
                .name("edgepush-timer".into())
                .spawn(move || t.run())
                .expect("spawn the timer thread");
            t
        })
    }

    fn new() -> Ticker {
        Ticker { start: Instant::now(), slots: Mutex::default(), earlier: Condvar::new() }
    }

    /// The first slot at or after `at`.
    fn slot(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_nanos();
        since.div_ceil(TICK.as_nanos()) as u64
    }

    /// When `slot` is due. 64-bit all through: a slot count past 2^32 ticks
    /// (about 994 days at 20 ms) must not wrap to a time long past.
    fn slot_time(&self, slot: u64) -> Instant {
        self.start + Duration::from_millis(TICK_MS.saturating_mul(slot))
    }

    /// Wakes `waker` at `at`, or up to one [`TICK`] later.
    pub fn wake_at(&self, at: Instant, waker: &Waker) -> Entry {
        let slot = self.slot(at);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let first = slots.by_slot.keys().next().copied();
        let id = slots.next_id;
        slots.next_id += 1;
        slots.by_slot.entry(slot).or_default().push((id, waker.clone()));
        if first.is_none_or(|f| slot < f) {
            self.earlier.notify_one();
        }
        Entry { slot, id }
    }

    /// Takes back a wake-up not yet due (one already woken: nothing). An
    /// emptied slot goes too; if the timer thread sleeps until it, it wakes
    /// there once, finds it gone and sleeps on.
    pub fn cancel(&self, e: Entry) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wakers) = slots.by_slot.get_mut(&e.slot) {
            wakers.retain(|(id, _)| *id != e.id);
            if wakers.is_empty() {
                slots.by_slot.remove(&e.slot);
            }
        }
    }

    /// Wakes every due slot; sleeps until the first one or an earlier arrival.
    fn run(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match self.due(&mut slots, Instant::now()) {
                Due::Idle => slots = self.earlier.wait(slots).unwrap_or_else(|e| e.into_inner()),
                Due::In(wait) => {
                    slots = self.earlier.wait_timeout(slots, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
                Due::Wake(due) => {
                    drop(slots);
                    for (_, w) in due.into_values().flatten() {
                        w.wake();
                    }
                    slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// What the timer thread does at `now`: takes out every due slot, or says
    /// how long to sleep.
    fn due(&self, slots: &mut Slots, now: Instant) -> Due {
        let slots = &mut slots.by_slot;
        let Some(&first) = slots.keys().next() else { return Due::Idle };
        let at = self.slot_time(first);
        if now < at {
            return Due::In(at - now);
        }
        // Due: every slot whose time has come (never one still ahead, or a
        // session would wake before its deadline and not re-arm).
        let passed = now.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos();
        let passed = u64::try_from(passed).unwrap_or(u64::MAX);
        let later = slots.split_off(&passed.saturating_add(1));
        Due::Wake(std::mem::replace(slots, later))
    }
}

/// [`Ticker::due`]'s answer.
enum Due {
    /// No slot is occupied: sleep until one is.
    Idle,
    /// The first slot is this far ahead.
    In(Duration),
    /// These slots are due.
    Wake(BTreeMap<u64, Vec<(u64, Waker)>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn slots_round_up_to_the_tick() {
        let t = Ticker::new();
        assert_eq!(t.slot(t.start), 0);
        assert_eq!(t.slot(t.start + Duration::from_nanos(1)), 1);
        assert_eq!(t.slot(t.start + TICK), 1);
        assert!(t.slot_time(t.slot(t.start + TICK * 7 / 2)) >= t.start + TICK * 7 / 2);
        assert_eq!(t.slot(t.start - Duration::from_millis(1)), 0, "the past is due at once");
    }

    #[test]
    fn a_deadline_past_two_to_the_32_ticks_is_not_due_early() {
        // The wheel has run for 2^32 + 10 ticks (about 994 days at 20 ms).
        let t = Ticker::new();
        let now = t.start + TICK * u32::MAX + TICK * 11;
        assert!(t.slot(now) > u64::from(u32::MAX));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let deadline = now + Duration::from_secs(1);
        t.wake_at(deadline, &Waker::from(count.clone()));
        let slot = t.slot(deadline);
        assert!(t.slot_time(slot) >= deadline, "slot {slot} wrapped to a time before its deadline");
        let mut slots = t.slots.lock().unwrap();
        // A second ahead: the timer thread sleeps, it neither spins nor wakes.
        match t.due(&mut slots, now) {
            Due::In(wait) => {
                assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(1) + TICK, "{wait:?}")
            }
            Due::Idle => panic!("the deadline was lost"),
            Due::Wake(due) => panic!("{} slots due a second early", due.len()),
        }
        assert!(t.due(&mut slots, deadline - Duration::from_millis(1)).is_in(), "due before its deadline");
        // At the slot's time it is due, and its waker runs.
        let Due::Wake(due) = t.due(&mut slots, t.slot_time(slot)) else { panic!("not due at its slot's time") };
        assert!(slots.by_slot.is_empty());
        due.into_values().flatten().for_each(|(_, w)| w.wake());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_cancelled_wake_up_never_comes_and_its_empty_slot_goes() {
        let t = Ticker::new();
        let (kept, gone) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let at = t.start + TICK * 5;
        let k = t.wake_at(at, &Waker::from(kept.clone()));
        let g = t.wake_at(at, &Waker::from(gone.clone()));
        let alone = t.wake_at(at + TICK * 3, &Waker::from(gone.clone()));
        assert_eq!((k.slot, g.slot), (5, 5));
        assert_ne!(k.id, g.id);
        t.cancel(g);
        t.cancel(alone);
        t.cancel(alone);
        let mut slots = t.slots.lock().unwrap();
        assert_eq!(slots.by_slot.len(), 1, "the emptied slot is gone");
        let Due::Wake(due) = t.due(&mut slots, at + TICK * 10) else { panic!("not due") };
        due.into_values().flatten().for_each(|(_, w)| w.wake());
        assert_eq!((kept.0.load(Ordering::SeqCst), gone.0.load(Ordering::SeqCst)), (1, 0));
        assert!(matches!(t.due(&mut slots, at + TICK * 10), Due::Idle));
    }

    impl Due {
        fn is_in(&self) -> bool {
            matches!(self, Due::In(_))
        }
    }

    struct Deadline {
        at: Instant,
        woke: Mutex<Option<Instant>>,
    }

    impl Wake for Deadline {
        fn wake(self: Arc<Self>) {
            *self.woke.lock().unwrap() = Some(Instant::now());
        }
    }

    #[test]
    fn never_wakes_before_the_deadline_and_at_most_a_tick_or_so_after() {
        let t = Ticker::get();
        let start = Instant::now();
        let all: Vec<Arc<Deadline>> = (0..60u32)
            .map(|k| {
                let d = Arc::new(Deadline {
                    at: start + Duration::from_micros(3_100 + 7_300 * u64::from(k)),
                    woke: Mutex::new(None),
                });
                t.wake_at(d.at, &Waker::from(d.clone()));
                d
            })
            .collect();
        for d in &all {
            let woke = loop {
                if let Some(w) = *d.woke.lock().unwrap() {
                    break w;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "never woken");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert!(woke >= d.at, "woken {:?} early", d.at - woke);
        }
    }

    #[test]
    fn wakes_at_the_deadline_not_before_and_earlier_arrivals_first() {
        let t = Ticker::get();
        let (late, early) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let start = Instant::now();
        t.wake_at(start + Duration::from_millis(400), &Waker::from(late.clone()));
        // Arrives later but is due first: the sleeping thread must notice.
        t.wake_at(start + Duration::from_millis(100), &Waker::from(early.clone()));
        while early.0.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "the earlier deadline was missed");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(late.0.load(Ordering::SeqCst), 0, "woken before its deadline");
        while late.0.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(start.elapsed() >= Duration::from_millis(400));
    }
}
