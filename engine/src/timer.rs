//! A coarse hashed timer wheel, in ticks of virtual time.
//!
//! Each loop keeps one wheel for all its connections' deadlines (handshake,
//! heartbeat, close). Advancing the wheel visits only the slots whose time
//! has come, so a loop turn costs O(expiring), not O(connections): with
//! 100 ms ticks and 1024 slots, a heartbeat 30 s out sits untouched until its
//! slot comes up.
//!
//! Cancelling is lazy, as in uSockets: an entry carries the slab key, its
//! generation and its deadline, and the owner ignores an expiry that no
//! longer matches the connection (closed, slot reused, or rescheduled).
//! Each connection has at most one live entry, so stale ones are bounded
//! by the number of reschedules, and each is dropped when its slot comes up.
//!
//! The wheel is pure: the reactor converts `Instant`s into ticks
//! ([`TICK`] each), and the connection state machine computes its
//! deadlines in ticks ([`ticks`]).

use std::time::Duration;

/// A point in a loop's virtual time: ticks of [`TICK`] since the loop
/// started.
pub(crate) type Tick = u64;

/// The timer resolution: deadlines are rounded up to a whole tick.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// How many ticks `duration` spans, rounded up, at least one.
pub(crate) fn ticks(duration: Duration) -> Tick {
    let ticks = duration.as_millis().div_ceil(TICK.as_millis()).max(1);
    Tick::try_from(ticks).unwrap_or(Tick::MAX)
}

/// One scheduled deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expiry {
    /// The slab key of the connection.
    pub(crate) key: usize,
    /// The generation of the connection that scheduled it.
    pub(crate) generation: u32,
    /// The tick it was scheduled for.
    pub(crate) deadline: u64,
}

/// A timer wheel with a power-of-two number of slots.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    slots: Box<[Vec<Expiry>]>,
    /// The last tick that has been processed.
    now: u64,
    /// Entries scheduled and not yet expired (stale ones included).
    len: usize,
}

impl TimerWheel {
    /// A wheel of `slots` slots (rounded up to a power of two) starting at
    /// tick `now`.
    pub(crate) fn new(slots: usize, now: u64) -> Self {
        let slots = slots.max(2).next_power_of_two();
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            now,
            len: 0,
        }
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    /// Schedules `key` for `deadline`; a deadline that has already passed
    /// expires on the next [`advance`](Self::advance).
    pub(crate) fn schedule(&mut self, key: usize, generation: u32, deadline: u64) {
        let deadline = deadline.max(self.now + 1);
        let slot = self.slot_of(deadline);
        self.slots[slot].push(Expiry {
            key,
            generation,
            deadline,
        });
        self.len += 1;
    }

    /// Whether nothing is scheduled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the wheel to tick `to`, appending every entry whose deadline
    /// is at most `to` to `expired`.
    ///
    /// Visits each slot between the last tick and `to` once (all of them,
    /// at most, after a long stall); entries more than a revolution away
    /// stay where they are.
    pub(crate) fn advance(&mut self, to: u64, expired: &mut Vec<Expiry>) {
        if to <= self.now {
            return;
        }
        let steps = (to - self.now).min(self.slots.len() as u64);
        for step in 1..=steps {
            let slot = self.slot_of(self.now + step);
            let entries = &mut self.slots[slot];
            let before = entries.len();
            entries.retain(|entry| {
                let due = entry.deadline <= to;
                if due {
                    expired.push(*entry);
                }
                !due
            });
            self.len -= before - entries.len();
        }
        self.now = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(expired: &[Expiry]) -> Vec<usize> {
        let mut keys: Vec<usize> = expired.iter().map(|e| e.key).collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn entries_expire_at_their_tick_and_not_before() {
        let mut wheel = TimerWheel::new(16, 0);
        wheel.schedule(1, 0, 3);
        wheel.schedule(2, 0, 5);
        let mut expired = Vec::new();
        wheel.advance(2, &mut expired);
        assert!(expired.is_empty());
        wheel.advance(3, &mut expired);
        assert_eq!(keys(&expired), [1]);
        expired.clear();
        wheel.advance(10, &mut expired);
        assert_eq!(keys(&expired), [2]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_for_their_round() {
        let mut wheel = TimerWheel::new(8, 0);
        wheel.schedule(7, 1, 21); // slot 5, two and a half revolutions out
        let mut expired = Vec::new();
        for tick in 1..21 {
            wheel.advance(tick, &mut expired);
            assert!(expired.is_empty(), "expired early at {tick}");
        }
        wheel.advance(21, &mut expired);
        assert_eq!(
            expired,
            [Expiry {
                key: 7,
                generation: 1,
                deadline: 21
            }]
        );
    }

    #[test]
    fn a_long_stall_expires_everything_due_in_one_advance() {
        let mut wheel = TimerWheel::new(8, 0);
        for key in 0..50 {
            wheel.schedule(key, 0, key as u64 + 1);
        }
        let mut expired = Vec::new();
        wheel.advance(1000, &mut expired);
        assert_eq!(keys(&expired), (0..50).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadlines_expire_on_the_next_tick() {
        let mut wheel = TimerWheel::new(8, 100);
        wheel.schedule(3, 0, 50);
        let mut expired = Vec::new();
        wheel.advance(101, &mut expired);
        assert_eq!(keys(&expired), [3]);
    }

    #[test]
    fn advancing_visits_only_the_slots_that_came_up() {
        // 10,000 entries a revolution away are not expired by a one-tick
        // advance, and only the one slot is visited.
        let mut wheel = TimerWheel::new(1024, 0);
        for key in 0..10_000 {
            wheel.schedule(key, 0, 500);
        }
        wheel.schedule(42, 0, 1);
        let mut expired = Vec::new();
        wheel.advance(1, &mut expired);
        assert_eq!(keys(&expired), [42]);
        assert_eq!(wheel.slots[1].len(), 0);
        assert_eq!(wheel.slots[500].len(), 10_000);
    }
}
