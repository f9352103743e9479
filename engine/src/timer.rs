//! A coarse hashed timer wheel, in ticks of virtual time.
//!
//! Each loop keeps one wheel for all its connections' deadlines (handshake,
//! heartbeat, idle, close). Advancing the wheel visits only the slots whose
//! time has come, so a loop turn costs O(expiring), not O(connections): with
//! 100 ms ticks and 1024 slots, a heartbeat 30 s out sits untouched until its
//! slot comes up.
//!
//! Memory follows the connections that are open, not those ever opened:
//! the loop keeps at most ONE entry per connection (it remembers the tick
//! it armed; a deadline that moves later is re-armed when the entry fires,
//! one that moves earlier replaces the entry), cancels a connection's entry
//! when the connection goes (a scan of one slot, a few dozen entries even
//! with a hundred thousand connections), and a slot gives its memory back
//! once the entries that filled it are gone. An entry is 12 bytes.
//!
//! The wheel is pure: the reactor converts `Instant`s into ticks
//! ([`TICK`] each), and the connection state machine computes its
//! deadlines in ticks ([`ticks`]).

use std::time::Duration;

/// A point in a loop's virtual time: ticks of [`TICK`] since the loop
/// started (a `u32` of 100 ms ticks lasts 13 years).
pub(crate) type Tick = u32;

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
    pub(crate) key: u32,
    /// The generation of the connection that scheduled it.
    pub(crate) generation: u32,
    /// The tick it was scheduled for.
    pub(crate) deadline: Tick,
}

/// A slot keeps at most this many entries' worth of spare room once the
/// burst that filled it has drained.
const SPARE_ENTRIES: usize = 16;
/// The most entries a cancel scans (see [`TimerWheel::cancel`]).
const MAX_SCANNED: usize = 256;

/// A timer wheel with a power-of-two number of slots.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    slots: Box<[Vec<Expiry>]>,
    /// The last tick that has been processed.
    now: Tick,
    /// Entries scheduled and not yet expired or cancelled.
    len: usize,
}

impl TimerWheel {
    /// A wheel of `slots` slots (rounded up to a power of two) starting at
    /// tick `now`.
    pub(crate) fn new(slots: usize, now: Tick) -> Self {
        let slots = slots.max(2).next_power_of_two();
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            now,
            len: 0,
        }
    }

    fn slot_of(&self, tick: Tick) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    /// The tick an entry for `deadline` is filed under: a deadline that has
    /// already passed expires on the next [`advance`](Self::advance).
    pub(crate) fn filed_at(&self, deadline: Tick) -> Tick {
        deadline.max(self.now + 1)
    }

    /// Schedules `key` for `deadline`; returns the tick it is filed under
    /// (see [`filed_at`](Self::filed_at)), which [`cancel`](Self::cancel)
    /// needs.
    pub(crate) fn schedule(&mut self, key: usize, generation: u32, deadline: Tick) -> Tick {
        let deadline = self.filed_at(deadline);
        let slot = self.slot_of(deadline);
        self.slots[slot].push(Expiry {
            key: key as u32,
            generation,
            deadline,
        });
        self.len += 1;
        deadline
    }

    /// Removes the entry of `key` and `generation` filed under `deadline`,
    /// if it is still there. A crowded slot (every connection of a storm, or
    /// of a shutdown, filed under one tick) is left alone, so that closing
    /// N connections never costs N² comparisons: its stale entries go when
    /// the slot comes up (the loop ignores an entry that is not the one it
    /// armed).
    pub(crate) fn cancel(&mut self, key: usize, generation: u32, deadline: Tick) {
        let slot = self.slot_of(deadline);
        let entries = &mut self.slots[slot];
        if entries.len() > MAX_SCANNED {
            return;
        }
        if let Some(at) = entries.iter().position(|entry| {
            entry.key == key as u32 && entry.generation == generation && entry.deadline == deadline
        }) {
            entries.swap_remove(at);
            self.len -= 1;
            shrink(entries);
        }
    }

    /// Whether nothing is scheduled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries scheduled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Moves the wheel to tick `to`, appending every entry whose deadline
    /// is at most `to` to `expired`.
    ///
    /// Visits each slot between the last tick and `to` once (all of them,
    /// at most, after a long stall); entries more than a revolution away
    /// stay where they are.
    pub(crate) fn advance(&mut self, to: Tick, expired: &mut Vec<Expiry>) {
        if to <= self.now {
            return;
        }
        let steps = (to - self.now).min(self.slots.len() as Tick);
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
            shrink(entries);
        }
        self.now = to;
    }
}

/// Gives back a slot's memory once most of it is unused.
fn shrink(entries: &mut Vec<Expiry>) {
    if entries.capacity() > 2 * entries.len() + SPARE_ENTRIES {
        entries.shrink_to(entries.len() + SPARE_ENTRIES / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(expired: &[Expiry]) -> Vec<u32> {
        let mut keys: Vec<u32> = expired.iter().map(|e| e.key).collect();
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
            wheel.schedule(key, 0, key as Tick + 1);
        }
        let mut expired = Vec::new();
        wheel.advance(1000, &mut expired);
        assert_eq!(keys(&expired), (0..50).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadlines_expire_on_the_next_tick() {
        let mut wheel = TimerWheel::new(8, 100);
        assert_eq!(wheel.schedule(3, 0, 50), 101);
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

    #[test]
    fn cancelled_entries_are_gone_and_their_memory_comes_back() {
        let mut wheel = TimerWheel::new(64, 0);
        // Spread over the slots, as connections' deadlines are (156 a slot).
        let filed: Vec<Tick> = (0..10_000)
            .map(|key| wheel.schedule(key, 3, 40 + (key % 64) as Tick))
            .collect();
        assert_eq!(wheel.len(), 10_000);
        for (key, deadline) in filed.into_iter().enumerate() {
            wheel.cancel(key, 3, deadline);
        }
        assert!(wheel.is_empty());
        assert!(
            wheel
                .slots
                .iter()
                .all(|slot| slot.capacity() <= SPARE_ENTRIES)
        );
        // A cancel of something that is not there changes nothing.
        wheel.schedule(1, 1, 9);
        wheel.cancel(1, 2, 9);
        wheel.cancel(1, 1, 8);
        assert_eq!(wheel.len(), 1);
        let mut expired = Vec::new();
        wheel.advance(9, &mut expired);
        assert_eq!(keys(&expired), [1]);
    }

    #[test]
    fn a_crowded_slot_is_not_scanned_and_expires_as_usual() {
        let mut wheel = TimerWheel::new(16, 0);
        for key in 0..1_000 {
            wheel.schedule(key, 0, 5);
        }
        wheel.cancel(7, 0, 5);
        assert_eq!(wheel.len(), 1_000, "left for its tick");
        let mut expired = Vec::new();
        wheel.advance(5, &mut expired);
        assert_eq!(expired.len(), 1_000);
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_slot_emptied_by_expiry_gives_its_memory_back() {
        let mut wheel = TimerWheel::new(16, 0);
        for key in 0..5_000 {
            wheel.schedule(key, 0, 3);
        }
        let mut expired = Vec::new();
        wheel.advance(3, &mut expired);
        assert_eq!(expired.len(), 5_000);
        assert!(wheel.slots[3].capacity() <= SPARE_ENTRIES);
    }
}
