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
    /// The code of the close frame queued, once one is.
    close_code: Option<CloseCode>,
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
        self.enqueue_messages(frame, 1, config, stats)
    }

    /// Queues bytes holding `messages` whole messages (a loop turn's
    /// broadcasts to one topic travel as one), applying the slow-consumer
    /// policy if the queue would exceed its limit. Drops are counted in
    /// messages, and only whole entries are dropped.
    #[inline]
    pub(crate) fn enqueue_messages(
        &mut self,
        bytes: Bytes,
        messages: u32,
        config: &ServerConfig,
        stats: &LoopStats,
    ) -> Result<(), SendError> {
        if self.close_code.is_some() {
            bump(&stats.sends_after_close, 1);
            return Err(SendError::Closed);
        }
        let fits = write_queue::fits(&bytes);
        if fits && self.queue.queued_bytes() + bytes.len() <= config.max_queued_bytes {
            self.queue.push_messages(bytes, messages);
            return Ok(());
        }
        match config.slow_consumer {
            SlowConsumerPolicy::DropOldest if !fits => {
                bump(&stats.frames_dropped, u64::from(messages));
                Ok(())
            }
            SlowConsumerPolicy::DropOldest => {
                self.queue.push_messages(bytes, messages);
                let dropped = self.queue.drop_oldest_until(config.max_queued_bytes);
                bump(&stats.frames_dropped, dropped);
                Ok(())
            }
            SlowConsumerPolicy::Close(code) => {
                // What tripped the limit is dropped too.
                let dropped = self.queue.drop_unsent() + u64::from(messages);
                bump(&stats.frames_dropped, dropped);
                bump(&stats.slow_consumer_closes, 1);
                self.queue_close(code, "slow consumer");
                Err(SendError::SlowConsumer)
            }
        }
    }

    /// Queues one subscriber's clone of a broadcast's bytes (`messages`
    /// whole messages) and puts the connection on the turn's flush list: the
    /// per-subscriber step of every fan-out. Returns `false` if the send was
    /// refused (closing, or closed by the slow-consumer policy).
    #[inline]
    pub(crate) fn fan_out(
        &mut self,
        key: usize,
        bytes: &Bytes,
        messages: u32,
        config: &ServerConfig,
        stats: &LoopStats,
        dirty: &mut Vec<usize>,
    ) -> bool {
        let queued = self
            .enqueue_messages(bytes.clone(), messages, config, stats)
            .is_ok();
        self.mark_dirty(key, dirty);
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

    /// Whether anything is waiting to be written.
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes waiting.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
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
}
