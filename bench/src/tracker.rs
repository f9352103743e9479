//! Delivery bookkeeping shared by the load generator's threads: which
//! messages are on their way, how many subscribers each still has to reach,
//! and when it was sent.
//!
//! One thread publishes ([`Tracker::sent`], [`Tracker::advance`]); every
//! thread receives ([`Tracker::received`]), recording latencies in its own
//! [`ThreadStats`] so that the only shared writes on the hot path are one
//! atomic decrement per delivery. A message's slot in the ring is reused
//! only once every subscriber has it, so a count never mixes two messages.

use std::{
    io,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Instant,
};

use hdrhistogram::Histogram;

/// One message on its way.
#[derive(Debug, Default)]
struct Slot {
    /// When it was sent, in ns since the tracker's start.
    sent_nanos: AtomicU64,
    /// Subscribers that have not received it yet.
    remaining: AtomicU32,
}

/// What one receiving thread measured.
#[derive(Debug)]
pub struct ThreadStats {
    /// Messages received within the measured window.
    pub deliveries: u64,
    /// Messages received after it, while the run drained.
    pub drained: u64,
    /// Publish to each subscriber's receipt, in µs.
    pub delivery_latency: Histogram<u64>,
    /// Publish to the last subscriber's receipt, in µs (recorded by the
    /// thread whose subscriber was last).
    pub last_latency: Histogram<u64>,
}

impl ThreadStats {
    /// Empty statistics.
    pub fn new() -> io::Result<Self> {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other);
        Ok(Self {
            deliveries: 0,
            drained: 0,
            delivery_latency: histogram()?,
            last_latency: histogram()?,
        })
    }

    /// Adds another thread's figures.
    pub fn merge(&mut self, other: &Self) -> io::Result<()> {
        self.deliveries += other.deliveries;
        self.drained += other.drained;
        self.delivery_latency
            .add(&other.delivery_latency)
            .map_err(io::Error::other)?;
        self.last_latency
            .add(&other.last_latency)
            .map_err(io::Error::other)
    }
}

/// The messages in flight to `subscribers` subscribers.
///
/// # Examples
///
/// ```
/// use herald_bench::tracker::{ThreadStats, Tracker};
///
/// let tracker = Tracker::new(16, 2);
/// let mut stats = ThreadStats::new().unwrap();
/// let seq = tracker.sent().unwrap();
/// tracker.received(seq, &mut stats).unwrap();
/// assert_eq!(tracker.completed(), 0);
/// tracker.received(seq, &mut stats).unwrap();
/// assert_eq!(tracker.completed(), 1);
/// assert!(tracker.received(seq, &mut stats).is_err(), "a third copy is a duplicate");
/// ```
#[derive(Debug)]
pub struct Tracker {
    start: Instant,
    slots: Box<[Slot]>,
    subscribers: u32,
    next_seq: AtomicU64,
    oldest_seq: AtomicU64,
    completed: AtomicU64,
    failed: AtomicBool,
}

impl Tracker {
    /// A tracker for at most `capacity` messages in flight.
    pub fn new(capacity: usize, subscribers: usize) -> Self {
        Self {
            start: Instant::now(),
            slots: (0..capacity.max(1)).map(|_| Slot::default()).collect(),
            subscribers: u32::try_from(subscribers).unwrap_or(u32::MAX),
            next_seq: AtomicU64::new(0),
            oldest_seq: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    fn slot(&self, seq: u64) -> &Slot {
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Registers the next message as sent now and returns its sequence
    /// number, or `None` when `capacity` messages are already in flight.
    /// Publisher only.
    pub fn sent(&self) -> Option<u64> {
        let seq = self.next_seq.load(Ordering::Relaxed);
        if seq - self.oldest_seq.load(Ordering::Relaxed) >= self.slots.len() as u64 {
            return None;
        }
        let slot = self.slot(seq);
        slot.sent_nanos.store(self.now_nanos(), Ordering::Relaxed);
        slot.remaining.store(self.subscribers, Ordering::Relaxed);
        // Publishes the slot's contents to the receiving threads.
        self.next_seq.store(seq + 1, Ordering::Release);
        Some(seq)
    }

    /// The clock [`received_at`](Self::received_at) takes: read it once per
    /// read from a socket, not once per message.
    pub fn now(&self) -> u64 {
        self.now_nanos()
    }

    /// Counts message `seq` as received by one subscriber.
    pub fn received(&self, seq: u64, stats: &mut ThreadStats) -> io::Result<()> {
        self.received_at(seq, self.now_nanos(), stats)
    }

    /// Counts message `seq` as received by one subscriber at `now` (from
    /// [`now`](Self::now)).
    pub fn received_at(&self, seq: u64, now: u64, stats: &mut ThreadStats) -> io::Result<()> {
        let next = self.next_seq.load(Ordering::Acquire);
        if seq >= next || seq < self.oldest_seq.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "message {seq} received twice or never sent"
            )));
        }
        let slot = self.slot(seq);
        let before = slot.remaining.fetch_sub(1, Ordering::AcqRel);
        if before == 0 {
            slot.remaining.fetch_add(1, Ordering::AcqRel);
            return Err(io::Error::other(format!(
                "message {seq} reached more subscribers than there are"
            )));
        }
        let sent = slot.sent_nanos.load(Ordering::Relaxed);
        let micros = now.saturating_sub(sent) / 1000;
        let _ = stats.delivery_latency.record(micros.max(1));
        stats.deliveries += 1;
        if before == 1 {
            let _ = stats.last_latency.record(micros.max(1));
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Moves the oldest message in flight past those every subscriber has;
    /// returns its sequence number. Publisher only.
    pub fn advance(&self) -> u64 {
        let next = self.next_seq.load(Ordering::Relaxed);
        let mut oldest = self.oldest_seq.load(Ordering::Relaxed);
        while oldest < next && self.slot(oldest).remaining.load(Ordering::Acquire) == 0 {
            oldest += 1;
        }
        self.oldest_seq.store(oldest, Ordering::Release);
        oldest
    }

    /// Messages sent so far.
    pub fn sent_count(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Messages every subscriber has received.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Messages sent and not yet received by every subscriber.
    pub fn in_flight(&self) -> u64 {
        self.sent_count() - self.completed()
    }

    /// Messages sent more than `age` ago that some subscriber still has not
    /// received: at the end of a run, the lost ones (a live message takes
    /// milliseconds, not `age`).
    pub fn stale(&self, age: std::time::Duration) -> u64 {
        let now = self.now_nanos();
        let age = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        let (oldest, next) = (self.advance(), self.sent_count());
        (oldest..next)
            .filter(|&seq| {
                let slot = self.slot(seq);
                slot.remaining.load(Ordering::Acquire) > 0
                    && now.saturating_sub(slot.sent_nanos.load(Ordering::Relaxed)) > age
            })
            .count() as u64
    }

    /// Tells every thread to stop (one of them failed).
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Whether a thread failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_refuses_to_send_until_the_oldest_completes() {
        let tracker = Tracker::new(2, 1);
        let mut stats = ThreadStats::new().unwrap();
        assert_eq!(tracker.sent(), Some(0));
        assert_eq!(tracker.sent(), Some(1));
        assert_eq!(tracker.sent(), None);
        tracker.received(0, &mut stats).unwrap();
        assert_eq!(tracker.advance(), 1);
        assert_eq!(tracker.sent(), Some(2));
        assert!(tracker.received(0, &mut stats).is_err(), "already complete");
        assert!(tracker.received(7, &mut stats).is_err(), "never sent");
        assert_eq!(tracker.in_flight(), 2);
        assert_eq!(tracker.stale(std::time::Duration::ZERO), 2);
        assert_eq!(tracker.stale(std::time::Duration::from_secs(60)), 0);
    }

    #[test]
    fn threads_count_every_delivery_once() {
        let tracker = std::sync::Arc::new(Tracker::new(1024, 4));
        let seqs: Vec<u64> = (0..1000).map(|_| tracker.sent().unwrap()).collect();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (tracker, seqs) = (std::sync::Arc::clone(&tracker), seqs.clone());
                std::thread::spawn(move || {
                    let mut stats = ThreadStats::new().unwrap();
                    for seq in seqs {
                        tracker.received(seq, &mut stats).unwrap();
                    }
                    stats.deliveries
                })
            })
            .collect();
        let deliveries: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(deliveries, 4000);
        assert_eq!(tracker.completed(), 1000);
        assert_eq!(tracker.advance(), 1000);
    }
}
