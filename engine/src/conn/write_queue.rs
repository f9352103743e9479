//! A connection's outbound queue: shared frames, written with `writev`.
//!
//! A broadcast's frame is one `Bytes` shared by every subscriber; each
//! queue holds a clone (a refcount, no copy). Everything queued for a
//! socket during a loop turn leaves in one `write_vectored` call of up to
//! [`MAX_IOVECS`] frames, repeated only if the kernel took all of it and
//! more is queued.
//!
//! Backpressure policies need to drop frames; a frame the kernel has taken
//! part of is never dropped (the peer would see half a frame), only whole
//! unsent ones.
//!
//! The first frame is held inline: a connection that has at most one frame
//! waiting (the 101 response, a heartbeat ping, most broadcasts to a
//! keeping-up client) never allocates a ring, and an idle connection holds
//! no heap memory for its queue.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, Write},
};

use bytes::Bytes;

use crate::conflation::ConflationKey;

/// The most frames one `writev` call carries (Linux allows 1024).
pub(crate) const MAX_IOVECS: usize = 64;

/// One queued frame, or several whole messages written as one (a loop
/// turn's broadcasts to one topic), and what it holds: a count of
/// messages, or, with the top bit set, one message of a conflated topic
/// and its [`ConflationKey`] (packed, so that an entry stays 40 bytes).
#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    tag: u64,
}

/// The top bit of an entry's tag: the rest is a conflation key.
const CONFLATED: u64 = 1 << 63;
/// The tag of an entry that continues the message of the entry before it
/// (a frame sent from several buffers, one of them shared): it is written,
/// kept and dropped with that entry, never alone.
const CONTINUES: u64 = 1 << 62;

impl Entry {
    fn messages(&self) -> u64 {
        if self.is_keyed() {
            1
        } else if self.continues() {
            0
        } else {
            self.tag
        }
    }

    /// Whether it continues the message of the entry before it (a tag no
    /// message count or conflation key can equal).
    fn continues(&self) -> bool {
        self.tag == CONTINUES
    }

    fn is_keyed(&self) -> bool {
        self.tag & CONFLATED != 0
    }

    fn is_conflated_as(&self, key: ConflationKey) -> bool {
        self.tag == key.bits() | CONFLATED
    }
}

/// The entries after the head, and how many of them are keyed: a
/// conflated push looks through the ring only when some are.
#[derive(Debug, Default)]
struct Tail {
    ring: VecDeque<Entry>,
    keyed: usize,
}

impl Tail {
    fn push_back(&mut self, entry: Entry) {
        self.keyed += usize::from(entry.is_keyed());
        self.ring.push_back(entry);
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.ring.pop_front()?;
        self.keyed -= usize::from(entry.is_keyed());
        Some(entry)
    }

    fn push_front(&mut self, entry: Entry) {
        self.keyed += usize::from(entry.is_keyed());
        self.ring.push_front(entry);
    }

    fn pop_back(&mut self) -> Option<Entry> {
        let entry = self.ring.pop_back()?;
        self.keyed -= usize::from(entry.is_keyed());
        Some(entry)
    }

    /// Removes the oldest entry conflated under `key`.
    fn remove_keyed(&mut self, key: ConflationKey) -> Option<Entry> {
        if self.keyed == 0 {
            return None;
        }
        let at = self
            .ring
            .iter()
            .position(|entry| entry.is_conflated_as(key))?;
        self.keyed -= 1;
        self.ring.remove(at)
    }

    fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// Frames waiting to be written to one socket.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    /// The oldest entry; `None` only when the queue is empty.
    head: Option<Entry>,
    /// The entries after `head`, boxed: most connections never have more
    /// than one entry waiting, and an idle one should not carry a ring's
    /// worth of bytes inline (8 bytes here instead of 32, for every
    /// connection; the extra allocation is paid only by the busy ones).
    tail: Option<Box<Tail>>,
    /// How much of the front entry the kernel has already taken.
    front_sent: u32,
    /// Bytes queued and not yet written. `u32`, with `front_sent`, to keep
    /// every connection's queue small: the outbox never holds more than its
    /// limit (at most 1 GiB) and one entry, and refuses entries of 4 GiB
    /// or more ([`fits`]).
    queued: u32,
}

/// Whether `bytes` can be queued at all (under 4 GiB).
pub(crate) fn fits(bytes: &Bytes) -> bool {
    u32::try_from(bytes.len()).is_ok()
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything was written.
    All,
    /// The socket's send buffer is full; wait for it to become writable.
    Blocked,
}

impl WriteQueue {
    /// Queues a frame holding one message.
    #[inline]
    pub(crate) fn push(&mut self, frame: Bytes) {
        self.push_messages(frame, 1);
    }

    /// Queues bytes holding `messages` whole messages.
    #[inline]
    pub(crate) fn push_messages(&mut self, bytes: Bytes, messages: u32) {
        debug_assert!(fits(&bytes), "entries over 4 GiB are refused by the outbox");
        self.push_entry(Entry {
            bytes,
            tag: u64::from(messages),
        });
    }

    /// Queues one message written from several buffers (a frame's own
    /// start and a payload shared with other frames), kept and dropped as
    /// one.
    pub(crate) fn push_parts(&mut self, parts: &[Bytes]) {
        let mut parts = parts.iter();
        if let Some(first) = parts.next() {
            self.push(first.clone());
        }
        for part in parts {
            self.push_entry(Entry {
                bytes: part.clone(),
                tag: CONTINUES,
            });
        }
    }

    /// Queues one message of a conflated topic under its `key`, so that a
    /// later [`push_conflated`](Self::push_conflated) can replace it.
    pub(crate) fn push_keyed(&mut self, bytes: Bytes, key: ConflationKey) {
        self.push_entry(Entry {
            bytes,
            tag: key.bits() | CONFLATED,
        });
    }

    /// Queues one message of a conflated topic, after removing an unsent
    /// message with the same `key`, if any (a partly written one stays):
    /// the newest goes last, so what is sent stays in publish order.
    /// Returns whether one was replaced.
    pub(crate) fn push_conflated(&mut self, bytes: Bytes, key: ConflationKey) -> bool {
        let replaced = self.remove_unsent(key);
        self.push_keyed(bytes, key);
        replaced
    }

    /// Removes the oldest unsent entry conflated under `key`. Entries
    /// queued while the client kept up may hold several; each replacement
    /// removes one, so a conflated message never grows the queue once one
    /// of its key waits.
    fn remove_unsent(&mut self, key: ConflationKey) -> bool {
        let head_unsent = self.front_sent == 0;
        if head_unsent
            && self
                .head
                .as_ref()
                .is_some_and(|head| head.is_conflated_as(key))
        {
            let head = self.pop_front();
            self.forget(head);
            return true;
        }
        let removed = self.tail.as_mut().and_then(|tail| tail.remove_keyed(key));
        let found = removed.is_some();
        self.forget(removed);
        found
    }

    /// Takes an entry removed unsent off the count of queued bytes.
    fn forget(&mut self, entry: Option<Entry>) {
        if let Some(entry) = entry {
            self.queued = self.queued.saturating_sub(entry.bytes.len() as u32);
        }
    }

    fn push_entry(&mut self, entry: Entry) {
        self.queued = self.queued.saturating_add(entry.bytes.len() as u32);
        if self.head.is_none() {
            self.head = Some(entry);
        } else {
            self.tail.get_or_insert_default().push_back(entry);
        }
    }

    fn tail_is_empty(&self) -> bool {
        self.tail.as_ref().is_none_or(|tail| tail.is_empty())
    }

    /// The buffers queued, in order (a partly written front one whole).
    pub(crate) fn buffers(&self) -> impl Iterator<Item = &Bytes> {
        self.entries().map(|entry| &entry.bytes)
    }

    /// The memory one queued entry takes besides its buffer.
    pub(crate) const ENTRY_SIZE: usize = size_of::<Entry>();

    /// The entries in order.
    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.head
            .iter()
            .chain(self.tail.iter().flat_map(|tail| tail.ring.iter()))
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let front = self.head.take();
        self.head = self.tail.as_mut().and_then(|tail| tail.pop_front());
        front
    }

    /// Bytes queued and not yet written.
    #[inline]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued as usize
    }

    /// Whether nothing is waiting.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Writes as much as `writer` takes, in vectored writes of up to
    /// [`MAX_IOVECS`] entries.
    pub(crate) fn flush_to(&mut self, writer: &mut impl Write) -> io::Result<Flushed> {
        while let Some(head) = &self.head {
            let written = if self.tail_is_empty() {
                // One entry (the common case in fan-out): a plain `write`
                // skips the kernel's iovec import.
                writer.write(&head.bytes[self.front_sent as usize..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = self.fill_slices(&mut slices);
                writer.write_vectored(&slices[..count])
            };
            let written = match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            // Until WouldBlock or empty, as edge-triggered readiness needs.
            self.consume(written);
        }
        self.release_if_large();
        Ok(Flushed::All)
    }

    fn fill_slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut count = 0;
        for (slot, entry) in slices.iter_mut().zip(self.entries()) {
            let start = if count == 0 {
                self.front_sent as usize
            } else {
                0
            };
            *slot = IoSlice::new(&entry.bytes[start..]);
            count += 1;
        }
        count
    }

    /// Removes `written` bytes from the front.
    fn consume(&mut self, written: usize) {
        // The kernel took at most what was queued, which fits a u32.
        let mut written = written as u32;
        self.queued = self.queued.saturating_sub(written);
        while written > 0 {
            let Some(front) = &self.head else {
                break;
            };
            let left = front.bytes.len() as u32 - self.front_sent;
            if written < left {
                self.front_sent += written;
                return;
            }
            written -= left;
            self.front_sent = 0;
            self.pop_front();
        }
    }

    /// Drops whole unsent messages from the front until at most `cap` bytes
    /// are queued, keeping a message the kernel has started to take (its
    /// front entry partly written, or a continuation at the front). Returns
    /// how many messages were dropped.
    pub(crate) fn drop_oldest_until(&mut self, cap: usize) -> u64 {
        let started = self.front_sent > 0 || self.head.as_ref().is_some_and(Entry::continues);
        // The started message's continuations stay with it.
        let mut kept = Vec::new();
        if started {
            while let Some(tail) = self.tail.as_mut()
                && tail.ring.front().is_some_and(Entry::continues)
            {
                kept.extend(tail.pop_front());
            }
        }
        let mut dropped = 0;
        while self.queued as usize > cap {
            let entry = if started {
                self.tail.as_mut().and_then(|tail| tail.pop_front())
            } else {
                self.pop_front()
            };
            let Some(entry) = entry else {
                break;
            };
            dropped += entry.messages();
            self.forget(Some(entry));
            self.drop_continuations(started);
        }
        if let Some(tail) = self.tail.as_mut() {
            for entry in kept.into_iter().rev() {
                tail.push_front(entry);
            }
        }
        dropped
    }

    /// Drops the continuations of a message just dropped: the entries at
    /// the front of the ring (or, if nothing has started, at the head).
    fn drop_continuations(&mut self, started: bool) {
        loop {
            let next_continues = if started {
                self.tail
                    .as_ref()
                    .is_some_and(|tail| tail.ring.front().is_some_and(Entry::continues))
            } else {
                self.head.as_ref().is_some_and(Entry::continues)
            };
            if !next_continues {
                return;
            }
            let entry = if started {
                self.tail.as_mut().and_then(|tail| tail.pop_front())
            } else {
                self.pop_front()
            };
            self.forget(entry);
        }
    }

    /// Drops every unsent entry (keeping a partly written front entry, so
    /// that a close frame queued next still parses). Returns how many
    /// messages were dropped.
    pub(crate) fn drop_unsent(&mut self) -> u64 {
        self.drop_oldest_until(0)
    }

    /// Drops every unsent entry but the last (a queued close frame, which
    /// must still go out), keeping a partly written front entry. Returns
    /// how many messages were dropped.
    pub(crate) fn drop_unsent_but_last(&mut self) -> u64 {
        let Some(last) = self.tail.as_mut().and_then(|tail| tail.pop_back()) else {
            // The head is the only entry: it is the last.
            return 0;
        };
        self.queued = self.queued.saturating_sub(last.bytes.len() as u32);
        let dropped = self.drop_unsent();
        self.push_entry(last);
        dropped
    }

    /// Forgets everything queued, as if it had been written.
    #[cfg(feature = "bench-support")]
    pub(crate) fn clear(&mut self) {
        self.head = None;
        self.tail = None;
        self.front_sent = 0;
        self.queued = 0;
    }

    /// Gives back the ring's memory after a large burst.
    fn release_if_large(&mut self) {
        if self
            .tail
            .as_ref()
            .is_some_and(|tail| tail.is_empty() && tail.ring.capacity() > 16)
        {
            self.tail = None;
        }
    }

    /// Gives back all the ring's memory if nothing is queued: for
    /// connections that have gone quiet (called from the heartbeat).
    pub(crate) fn release_if_idle(&mut self) {
        if self.tail_is_empty() {
            self.tail = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `budget` bytes in total, then blocks,
    /// and counts its calls.
    struct Throttled {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(self.budget - taken);
                self.out.extend_from_slice(&buf[..n]);
                taken += n;
            }
            self.budget -= taken;
            Ok(taken)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn writer(budget: usize) -> Throttled {
        Throttled {
            out: Vec::new(),
            budget,
            calls: 0,
        }
    }

    #[test]
    fn everything_queued_in_a_turn_leaves_in_one_writev() {
        let mut queue = WriteQueue::default();
        for i in 0..10u8 {
            queue.push(Bytes::from(vec![i; 100]));
        }
        let mut w = writer(usize::MAX);
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::All);
        assert_eq!(w.calls, 1);
        assert_eq!(w.out.len(), 1000);
        assert!(queue.is_empty());
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[test]
    fn a_single_queued_frame_needs_no_ring() {
        let mut queue = WriteQueue::default();
        queue.push(Bytes::from_static(b"only"));
        assert!(queue.tail.is_none());
        let mut w = writer(usize::MAX);
        queue.flush_to(&mut w).unwrap();
        queue.push(Bytes::from_static(b"a"));
        queue.push(Bytes::from_static(b"b"));
        assert!(queue.tail.is_some());
        queue.flush_to(&mut w).unwrap();
        queue.release_if_idle();
        assert!(queue.tail.is_none());
        assert_eq!(w.out, b"onlyab");
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut queue = WriteQueue::default();
        queue.push(Bytes::from_static(b"hello "));
        queue.push(Bytes::from_static(b"world"));
        let mut w = writer(4);
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::Blocked);
        assert_eq!(queue.queued_bytes(), 7);
        w.budget = 100;
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::All);
        assert_eq!(w.out, b"hello world");
    }

    #[test]
    fn more_than_max_iovecs_frames_take_several_writes() {
        let mut queue = WriteQueue::default();
        for _ in 0..(MAX_IOVECS * 2 + 3) {
            queue.push(Bytes::from_static(b"ab"));
        }
        let mut w = writer(usize::MAX);
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::All);
        assert_eq!(w.calls, 3);
        assert_eq!(w.out.len(), (MAX_IOVECS * 2 + 3) * 2);
    }

    #[test]
    fn dropping_oldest_keeps_a_partly_written_frame() {
        let mut queue = WriteQueue::default();
        for i in 0..5u8 {
            queue.push(Bytes::from(vec![i; 10]));
        }
        let mut w = writer(3);
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::Blocked);
        // 47 bytes queued; keep at most 20: frames 1, 2 and 3 go.
        assert_eq!(queue.drop_oldest_until(20), 3);
        assert_eq!(queue.queued_bytes(), 17);
        w.budget = 100;
        queue.flush_to(&mut w).unwrap();
        let mut expected = vec![0u8; 10];
        expected.extend_from_slice(&[4; 10]);
        assert_eq!(w.out, expected);
    }

    #[test]
    fn dropping_counts_the_messages_each_entry_holds() {
        let mut queue = WriteQueue::default();
        queue.push_messages(Bytes::from(vec![1; 30]), 3);
        queue.push(Bytes::from(vec![2; 10]));
        queue.push_messages(Bytes::from(vec![3; 20]), 2);
        // Keep 20 bytes: the 3-message entry and the single one go.
        assert_eq!(queue.drop_oldest_until(20), 4);
        assert_eq!(queue.drop_unsent(), 2);
        assert!(queue.is_empty());
    }

    #[test]
    fn drop_unsent_leaves_only_the_partial_front() {
        let mut queue = WriteQueue::default();
        queue.push(Bytes::from_static(b"0123456789"));
        queue.push(Bytes::from_static(b"abc"));
        let mut w = writer(5);
        queue.flush_to(&mut w).unwrap();
        assert_eq!(queue.drop_unsent(), 1);
        assert_eq!(queue.queued_bytes(), 5);
        let mut empty = WriteQueue::default();
        empty.push(Bytes::from_static(b"x"));
        assert_eq!(empty.drop_unsent(), 1);
        assert!(empty.is_empty());
    }

    #[test]
    fn a_conflated_message_replaces_the_unsent_one_of_its_key_and_goes_last() {
        let a = ConflationKey::from_hash(1);
        let b = ConflationKey::from_hash(2);
        let mut queue = WriteQueue::default();
        assert!(!queue.push_conflated(Bytes::from_static(b"a1"), a));
        queue.push(Bytes::from_static(b"x"));
        assert!(!queue.push_conflated(Bytes::from_static(b"b1"), b));
        assert!(queue.push_conflated(Bytes::from_static(b"a2"), a));
        assert!(queue.push_conflated(Bytes::from_static(b"a3"), a));
        assert_eq!(queue.queued_bytes(), 5);
        let mut w = writer(usize::MAX);
        queue.flush_to(&mut w).unwrap();
        assert_eq!(w.out, b"xb1a3");
    }

    #[test]
    fn a_partly_written_conflated_message_is_finished_not_replaced() {
        let key = ConflationKey::from_hash(7);
        let mut queue = WriteQueue::default();
        queue.push_conflated(Bytes::from_static(b"old!"), key);
        let mut w = writer(2);
        assert_eq!(queue.flush_to(&mut w).unwrap(), Flushed::Blocked);
        assert!(!queue.push_conflated(Bytes::from_static(b"new"), key));
        assert!(queue.push_conflated(Bytes::from_static(b"newest"), key));
        assert_eq!(queue.queued_bytes(), 2 + 6);
        w.budget = 100;
        queue.flush_to(&mut w).unwrap();
        assert_eq!(w.out, b"old!newest");
        // A conflated entry counts as one message when dropped.
        queue.push_conflated(Bytes::from_static(b"z"), key);
        assert_eq!(queue.drop_unsent(), 1);
    }

    #[test]
    fn a_message_of_several_parts_is_written_kept_and_dropped_whole() {
        let parts = [
            Bytes::from_static(b"<a"),
            Bytes::from_static(b"shared"),
            Bytes::from_static(b">"),
        ];
        // Dropped whole, counted once.
        let mut queue = WriteQueue::default();
        queue.push_parts(&parts);
        queue.push(Bytes::from_static(b"b"));
        assert_eq!(queue.drop_oldest_until(1), 1);
        assert_eq!(queue.queued_bytes(), 1);
        let mut w = writer(usize::MAX);
        queue.flush_to(&mut w).unwrap();
        assert_eq!(w.out, b"b");
        // Started (its first part partly written): kept whole, the rest goes.
        let mut queue = WriteQueue::default();
        queue.push_parts(&parts);
        queue.push(Bytes::from_static(b"b"));
        let mut w = writer(1);
        queue.flush_to(&mut w).unwrap();
        assert_eq!(queue.drop_unsent(), 1);
        w.budget = 100;
        queue.flush_to(&mut w).unwrap();
        assert_eq!(w.out, b"<ashared>");
        // Started (its first part written, a shared part next): kept too.
        let mut queue = WriteQueue::default();
        queue.push_parts(&parts);
        queue.push(Bytes::from_static(b"b"));
        let mut w = writer(2);
        queue.flush_to(&mut w).unwrap();
        assert_eq!(queue.drop_unsent(), 1);
        w.budget = 100;
        queue.flush_to(&mut w).unwrap();
        assert_eq!(w.out, b"<ashared>");
    }
}
