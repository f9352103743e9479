//! A connection's outbound side: the write queue, the backpressure policy,
//! and the close frame that ends what may be sent.
//!
//! Pure: no socket. The connection's state machine decides, from
//! [`Outbox::is_closing`], when the TCP connection may go.

use bytes::Bytes;

use super::{
    SendError,
    write_queue::{self, WriteQueue},
};
use crate::{
    config::{ServerConfig, SlowConsumerPolicy},
    conflation::ConflationKey,
    metrics::{LoopStats, bump},
    wire::{CloseCode, close_frame},
};

/// The largest close reason: a close payload is at most 125 bytes, two of
/// which are the code.
const MAX_CLOSE_REASON: usize = 123;

/// What is waiting to be written to one connection.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) queue: WriteQueue,
    /// Whether the connection is on the loop's list of sockets to flush.
    pub(crate) dirty: bool,
    /// Whether the last flush left bytes the socket would not take: the
    /// client is behind, and conflated topics conflate.
    behind: bool,
    /// The code of the close frame queued, once one is.
    close_code: Option<CloseCode>,
    /// Whether the connection negotiated permessage-deflate: frames for it
    /// may be compressed, and so may its messages (kept here, where a byte
    /// of padding had room for it, so that a slot stays within its budget).
    pub(crate) deflate: bool,
}

impl Outbox {
    /// Queues a frame holding one message, applying the slow-consumer
    /// policy if the queue would exceed its limit.
    #[inline]
    pub(crate) fn enqueue(
        &mut self,
        frame: Bytes,
        config: &ServerConfig,
        stats: &LoopStats,
    ) -> Result<(), SendError> {
        self.enqueue_messages(frame, 1, None, config, stats)
    }

    /// Queues bytes holding `messages` whole messages (a loop turn's
    /// broadcasts to one topic travel as one), applying the slow-consumer
    /// policy if the queue would exceed its limit. Drops are counted in
    /// messages, and only whole entries are dropped.
    ///
    /// A single message with a conflation `key`, sent while the client is
    /// behind or when it would pass the limit, replaces the unsent message
    /// of the same key (counted in `messages_conflated`).
    #[inline]
    pub(crate) fn enqueue_messages(
        &mut self,
        bytes: Bytes,
        messages: u32,
        key: Option<ConflationKey>,
        config: &ServerConfig,
        stats: &LoopStats,
    ) -> Result<(), SendError> {
        if self.close_code.is_some() {
            bump(&stats.sends_after_close, 1);
            return Err(SendError::Closed);
        }
        if !write_queue::fits(&bytes) {
            // A frame of 4 GiB or more cannot be queued: it alone is
            // dropped, or the connection closed, as the policy says.
            bump(&stats.frames_dropped, u64::from(messages));
            return match config.slow_consumer {
                SlowConsumerPolicy::DropOldest => Ok(()),
                SlowConsumerPolicy::Close(_) => {
                    self.shed(usize::MAX, config, stats, "slow consumer");
                    Err(SendError::SlowConsumer)
                }
            };
        }
        let over = self.queue.queued_bytes() + bytes.len() > config.max_queued_bytes;
        match key.filter(|_| messages == 1) {
            Some(key) if self.behind || over => {
                if self.queue.push_conflated(bytes, key) {
                    bump(&stats.messages_conflated, 1);
                }
            }
            Some(key) => self.queue.push_keyed(bytes, key),
            None => self.queue.push_messages(bytes, messages),
        }
        self.within_limit(config, stats)
    }

    /// Queues one message written from several buffers (see
    /// [`WriteQueue::push_parts`]), applying the slow-consumer policy if
    /// the queue would exceed its limit.
    pub(crate) fn enqueue_parts(
        &mut self,
        parts: &[Bytes],
        config: &ServerConfig,
        stats: &LoopStats,
    ) -> Result<(), SendError> {
        if self.close_code.is_some() {
            bump(&stats.sends_after_close, 1);
            return Err(SendError::Closed);
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        if u32::try_from(len).is_err() {
            bump(&stats.frames_dropped, 1);
            return Ok(());
        }
        self.queue.push_parts(parts);
        self.within_limit(config, stats)
    }

    /// Applies the slow-consumer policy if the queue is past its limit.
    fn within_limit(&mut self, config: &ServerConfig, stats: &LoopStats) -> Result<(), SendError> {
        let excess = self
            .queue
            .queued_bytes()
            .saturating_sub(config.max_queued_bytes);
        if excess == 0 {
            return Ok(());
        }
        match self.shed(excess, config, stats, "slow consumer") {
            Some(_) => Err(SendError::SlowConsumer),
            None => Ok(()),
        }
    }

    /// Frees at least `excess` queued bytes by the slow-consumer policy, if
    /// it can: `DropOldest` drops the oldest whole messages; `Close` drops
    /// every unsent one and queues the close frame with `reason` (counted
    /// as a slow-consumer close). A connection already closing loses its
    /// unsent messages, never its close frame. Returns the close code if
    /// it is closing, and counts what it dropped.
    pub(crate) fn shed(
        &mut self,
        excess: usize,
        config: &ServerConfig,
        stats: &LoopStats,
        reason: &str,
    ) -> Option<CloseCode> {
        if let Some(code) = self.close_code {
            bump(&stats.frames_dropped, self.queue.drop_unsent_but_last());
            return Some(code);
        }
        match config.slow_consumer {
            SlowConsumerPolicy::DropOldest => {
                let keep = self.queue.queued_bytes().saturating_sub(excess);
                let dropped = self.queue.drop_oldest_until(keep);
                bump(&stats.frames_dropped, dropped);
                None
            }
            SlowConsumerPolicy::Close(code) => {
                let dropped = self.queue.drop_unsent();
                bump(&stats.frames_dropped, dropped);
                bump(&stats.slow_consumer_closes, 1);
                self.queue_close(code, reason);
                Some(code)
            }
        }
    }

    /// Queues one subscriber's clone of a broadcast's bytes (`messages`
    /// whole messages, conflated under `key` if it has one) and puts the
    /// connection on the turn's flush list: the per-subscriber step of
    /// every fan-out. Returns `false` if the send was refused (closing, or
    /// closed by the slow-consumer policy).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fan_out(
        &mut self,
        slot: usize,
        bytes: &Bytes,
        messages: u32,
        key: Option<ConflationKey>,
        config: &ServerConfig,
        stats: &LoopStats,
        dirty: &mut Vec<usize>,
    ) -> bool {
        let queued = self
            .enqueue_messages(bytes.clone(), messages, key, config, stats)
            .is_ok();
        self.mark_dirty(slot, dirty);
        queued
    }

    /// Puts the connection on the turn's flush list, once.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    /// Queues a control frame the protocol requires (a pong, a heartbeat
    /// ping); nothing after a close frame, nor into a queue already at its
    /// limit (a client that pings and never reads must not grow it: its
    /// pongs are skipped, as RFC 6455 allows for an unread connection).
    pub(crate) fn push_control(&mut self, frame: Bytes, max_queued_bytes: usize) {
        if self.close_code.is_none() && self.queue.queued_bytes() < max_queued_bytes {
            self.queue.push(frame);
        }
    }

    /// Queues the close frame, once: later calls do nothing. A code that
    /// may not be sent becomes 1000; a reason over 123 bytes is cut at a
    /// character boundary.
    pub(crate) fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if self.close_code.is_some() {
            return;
        }
        let code = if code.is_allowed_on_wire() {
            code
        } else {
            CloseCode::NORMAL
        };
        let frame = close_frame(code, truncate_reason(reason));
        // Both arguments were just made valid, so this cannot fail; an empty
        // close frame would still end the connection correctly.
        self.queue
            .push(frame.unwrap_or_else(|_| Bytes::from_static(b"\x88\x00")));
        self.close_code = Some(code);
    }

    /// Queues the reply to a client's close frame: the same code, or an
    /// empty close frame if the client sent none (RFC 6455 section 5.5.1).
    pub(crate) fn answer_close(&mut self, code: Option<CloseCode>) {
        match code {
            Some(code) => self.queue_close(code, ""),
            None if self.close_code.is_none() => {
                self.queue.push(Bytes::from_static(b"\x88\x00"));
                self.close_code = Some(CloseCode::NO_STATUS);
            }
            None => {}
        }
    }

    /// Whether a close frame has been queued.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_code.is_some()
    }

    /// The code of the queued close frame.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        self.close_code
    }

    /// Writes what the socket takes, and notes whether the client is behind
    /// (the socket would not take it all).
    pub(crate) fn flush_to(
        &mut self,
        writer: &mut impl std::io::Write,
    ) -> std::io::Result<write_queue::Flushed> {
        let result = self.queue.flush_to(writer);
        self.behind = matches!(result, Ok(write_queue::Flushed::Blocked));
        result
    }

    /// Whether the last flush left bytes the socket would not take.
    pub(crate) fn is_behind(&self) -> bool {
        self.behind
    }

    /// Whether anything is waiting to be written.
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes waiting.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }

    /// The buffers waiting, for counting memory shared between queues once.
    pub(crate) fn queued_buffers(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.buffers()
    }
}

fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn config(cap: usize, policy: SlowConsumerPolicy) -> ServerConfig {
        ServerConfig {
            max_queued_bytes: cap,
            slow_consumer: policy,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn slow_consumer_close_policy_drops_the_queue_and_queues_a_close() {
        let config = config(100, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let stats = LoopStats::default();
        let mut outbox = Outbox::default();
        for _ in 0..10 {
            outbox
                .enqueue(Bytes::from(vec![0; 10]), &config, &stats)
                .unwrap();
        }
        let result = outbox.enqueue(Bytes::from(vec![0; 10]), &config, &stats);
        assert_eq!(result, Err(SendError::SlowConsumer));
        assert_eq!(outbox.close_code(), Some(CloseCode::TRY_AGAIN_LATER));
        assert_eq!(stats.frames_dropped.load(Relaxed), 11);
        assert_eq!(stats.slow_consumer_closes.load(Relaxed), 1);
        // Only the close frame is left: 2 header bytes, 2 code bytes, reason.
        assert_eq!(outbox.queued_bytes(), 4 + "slow consumer".len());
        assert_eq!(
            outbox.enqueue(Bytes::from_static(b"x"), &config, &stats),
            Err(SendError::Closed)
        );
    }

    #[test]
    fn slow_consumer_drop_oldest_policy_keeps_the_newest_within_the_cap() {
        let config = config(100, SlowConsumerPolicy::DropOldest);
        let stats = LoopStats::default();
        let mut outbox = Outbox::default();
        for _ in 0..25 {
            outbox
                .enqueue(Bytes::from(vec![0; 10]), &config, &stats)
                .unwrap();
        }
        assert_eq!(outbox.queued_bytes(), 100);
        assert_eq!(stats.frames_dropped.load(Relaxed), 15);
        assert!(!outbox.is_closing());
    }

    #[test]
    fn close_is_queued_once_with_a_sendable_code_and_short_reason() {
        let mut outbox = Outbox::default();
        outbox.queue_close(CloseCode::ABNORMAL, &"é".repeat(100));
        assert_eq!(outbox.close_code(), Some(CloseCode::NORMAL));
        // 122 bytes of reason (61 two-byte characters), code, header.
        assert_eq!(outbox.queued_bytes(), 2 + 2 + 122);
        outbox.queue_close(CloseCode::GOING_AWAY, "again");
        assert_eq!(outbox.close_code(), Some(CloseCode::NORMAL));
    }

    #[test]
    fn a_close_without_code_is_answered_with_an_empty_close() {
        let mut outbox = Outbox::default();
        outbox.answer_close(None);
        assert_eq!(outbox.queued_bytes(), 2);
        assert!(outbox.is_closing());
        let mut outbox = Outbox::default();
        outbox.answer_close(Some(CloseCode::from(4000)));
        assert_eq!(outbox.close_code(), Some(CloseCode::from(4000)));
    }

    /// A writer whose socket buffer is full.
    struct Full;

    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ticker(i: u8) -> Bytes {
        Bytes::from(vec![i; 10])
    }

    #[test]
    fn a_client_that_keeps_up_gets_every_conflated_message() {
        let config = config(100, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let stats = LoopStats::default();
        let key = Some(ConflationKey::from_hash(1));
        let mut outbox = Outbox::default();
        for i in 0..5 {
            outbox
                .enqueue_messages(ticker(i), 1, key, &config, &stats)
                .unwrap();
        }
        assert_eq!(outbox.queued_bytes(), 50);
        assert_eq!(stats.messages_conflated.load(Relaxed), 0);
    }

    #[test]
    fn a_client_behind_keeps_only_the_newest_message_per_key() {
        let config = config(100, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let stats = LoopStats::default();
        let (a, b) = (
            Some(ConflationKey::from_hash(1)),
            Some(ConflationKey::from_hash(2)),
        );
        let mut outbox = Outbox::default();
        outbox
            .enqueue_messages(ticker(1), 1, a, &config, &stats)
            .unwrap();
        assert!(outbox.flush_to(&mut Full).is_ok());
        assert!(outbox.is_behind());
        for i in 2..50 {
            outbox
                .enqueue_messages(ticker(i), 1, a, &config, &stats)
                .unwrap();
            outbox
                .enqueue_messages(ticker(100 + i), 1, b, &config, &stats)
                .unwrap();
        }
        // One message per key waits: the newest.
        assert_eq!(outbox.queued_bytes(), 20);
        assert_eq!(stats.messages_conflated.load(Relaxed), 48 + 47);
        let mut written = Vec::new();
        outbox.flush_to(&mut written).unwrap();
        assert!(!outbox.is_behind());
        assert_eq!(written, [vec![49; 10], vec![149; 10]].concat());
    }

    #[test]
    fn a_full_queue_conflates_even_before_a_flush_says_behind() {
        let config = config(100, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let stats = LoopStats::default();
        let key = Some(ConflationKey::from_hash(1));
        let mut outbox = Outbox::default();
        for i in 0..200 {
            let sent = outbox.enqueue_messages(ticker(i as u8), 1, key, &config, &stats);
            assert_eq!(sent, Ok(()), "message {i}");
        }
        assert!(outbox.queued_bytes() <= 100);
        assert!(!outbox.is_closing());
        assert_eq!(stats.frames_dropped.load(Relaxed), 0);
    }

    #[test]
    fn too_many_keys_for_the_limit_fall_back_to_the_policy() {
        let config = config(100, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let stats = LoopStats::default();
        let mut outbox = Outbox::default();
        let mut result = Ok(());
        for i in 0..11 {
            let key = Some(ConflationKey::from_hash(i));
            result = outbox.enqueue_messages(ticker(i as u8), 1, key, &config, &stats);
        }
        assert_eq!(result, Err(SendError::SlowConsumer));
        assert_eq!(stats.slow_consumer_closes.load(Relaxed), 1);
    }

    #[test]
    fn shedding_drops_the_oldest_or_closes_as_the_policy_says() {
        let stats = LoopStats::default();
        let drop_oldest = config(1000, SlowConsumerPolicy::DropOldest);
        let mut outbox = Outbox::default();
        for i in 0..10 {
            outbox.enqueue(ticker(i), &drop_oldest, &stats).unwrap();
        }
        assert_eq!(outbox.shed(25, &drop_oldest, &stats, "queue budget"), None);
        assert_eq!(outbox.queued_bytes(), 70);
        assert_eq!(stats.frames_dropped.load(Relaxed), 3);
        let close = config(1000, SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER));
        let code = outbox.shed(1, &close, &stats, "queue budget");
        assert_eq!(code, Some(CloseCode::TRY_AGAIN_LATER));
        assert_eq!(outbox.queued_bytes(), 4 + "queue budget".len());
        assert_eq!(stats.slow_consumer_closes.load(Relaxed), 1);
        // A second shed of a closing queue is not a second close, and
        // keeps the close frame.
        outbox.shed(1, &close, &stats, "queue budget");
        assert_eq!(stats.slow_consumer_closes.load(Relaxed), 1);
        assert_eq!(outbox.queued_bytes(), 4 + "queue budget".len());
    }

    #[test]
    fn shedding_a_closing_queue_keeps_its_close_frame_last() {
        let stats = LoopStats::default();
        for policy in [
            SlowConsumerPolicy::DropOldest,
            SlowConsumerPolicy::Close(CloseCode::TRY_AGAIN_LATER),
        ] {
            let config = config(1000, policy);
            let mut outbox = Outbox::default();
            for i in 0..5 {
                outbox.enqueue(ticker(i), &config, &stats).unwrap();
            }
            outbox.queue_close(CloseCode::GOING_AWAY, "bye");
            outbox.shed(usize::MAX, &config, &stats, "queue budget");
            let mut written = Vec::new();
            outbox.flush_to(&mut written).unwrap();
            assert_eq!(
                written,
                [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e'],
                "{policy:?}"
            );
        }
    }
}
