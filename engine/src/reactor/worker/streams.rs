//! Gaps in topics' streams, as this loop receives them.
//!
//! A broadcast of a topic with history carries its place in the topic's
//! stream (epoch, offset), and every loop receives a topic's publications
//! in offset order. So when this loop, subscribed all along, sees offset 9
//! follow offset 7 of the same epoch, offset 8 never reached it: a full
//! mailbox refused it, or the broker dropped it while the node was cut
//! off. Its subscribers would never know. Instead, their channels are told
//! before offset 9 is delivered ([`Service::on_stream_gap`]): the channels
//! layer errs them, and the clients join again and recover offset 8 from
//! the history. The last place is kept with the topic's subscribers on
//! this loop (`LocalIndex`), and goes with the last of them: a topic
//! subscribed to again starts afresh.

use std::sync::Arc;

use super::{Service, Worker};
use crate::{
    broadcast::Broadcast,
    pubsub::{LocalIndex, Sub, SubscriptionKind},
};

/// Whether `broadcast` skips offsets after the last broadcast of its
/// stream delivered on this loop.
fn skips_offsets(local: &LocalIndex<Sub>, broadcast: &Broadcast) -> bool {
    let (Some(epoch), Some(offset)) = (broadcast.epoch(), broadcast.offset()) else {
        return false;
    };
    // A new epoch starts at offset 1 (the store's storage was lost).
    local
        .stream_place(broadcast.topic())
        .is_some_and(|(last_epoch, last)| {
            let next = if **last_epoch == *epoch { last + 1 } else { 1 };
            offset > next
        })
}

/// Notes `broadcast`'s place as its stream's last on this loop.
fn note_place(local: &mut LocalIndex<Sub>, broadcast: &Broadcast) {
    let (Some(epoch), Some(offset)) = (broadcast.epoch(), broadcast.offset()) else {
        return;
    };
    let topic = broadcast.topic();
    let place = match local.stream_place(topic) {
        Some((last_epoch, last)) if **last_epoch == *epoch => {
            (Arc::clone(last_epoch), offset.max(*last))
        }
        _ => (Arc::from(epoch), offset),
    };
    local.set_stream_place(topic, place);
}

impl<S: Service> Worker<S> {
    /// How many broadcasts at the start of `run` (one topic's) follow
    /// their stream on this loop, noting each. A gap at the first one is
    /// handled here: its subscribers' channels are told, then it counts
    /// as following.
    pub(super) fn continue_stream(&mut self, run: &[Arc<Broadcast>]) -> usize {
        for (index, broadcast) in run.iter().enumerate() {
            if skips_offsets(self.ctx.topics.local(), broadcast) {
                if index > 0 {
                    return index;
                }
                self.report_gap(broadcast);
            }
            note_place(self.ctx.topics.local_mut(), broadcast);
        }
        run.len()
    }

    /// Tells every channel subscription of `broadcast`'s topic on this
    /// loop that the offsets before it never came.
    fn report_gap(&mut self, broadcast: &Broadcast) {
        let topic = broadcast.topic();
        let (Some(epoch), Some(offset)) = (broadcast.epoch(), broadcast.offset()) else {
            return;
        };
        let missing = (epoch, offset - 1);
        // Often benign: a join whose read covers the missing offsets (its
        // node was briefly unsubscribed) lets it pass. Channels that must
        // rejoin say so.
        tracing::debug!(
            topic,
            "publications of a topic with history never reached this loop"
        );
        let joined: Vec<usize> = self
            .ctx
            .topics
            .local()
            .subscribers(topic)
            .filter(|(_, sub)| matches!(sub.kind, SubscriptionKind::Join { .. }))
            .map(|(id, _)| id.key())
            .collect();
        for key in joined {
            self.call(key, |service, conn| {
                service.on_stream_gap(conn, topic, missing)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::{
        protocol::WireProtocol,
        pubsub::{ConnId, TopicEntry},
    };

    fn at(epoch: &str, offset: u64) -> Broadcast {
        let payload = RawValue::from_string("{}".into()).unwrap();
        let entry = TopicEntry::with_protocol(WireProtocol::PhoenixV2);
        Broadcast::channel_at("t", "e", payload, &entry, (Arc::from(epoch), offset))
    }

    #[test]
    fn a_stream_skips_offsets_only_after_a_place_this_loop_reached() {
        let mut local = LocalIndex::default();
        // No subscribers: no place is kept, nothing is a gap.
        note_place(&mut local, &at("e1", 4));
        assert!(!skips_offsets(&local, &at("e1", 9)));
        local.insert("t", ConnId::new(0, 0), Sub::plain(WireProtocol::PhoenixV2));
        assert!(!skips_offsets(&local, &at("e1", 9)), "no place yet");
        note_place(&mut local, &at("e1", 4));
        assert!(!skips_offsets(&local, &at("e1", 5)));
        assert!(!skips_offsets(&local, &at("e1", 3)), "late, not missing");
        assert!(skips_offsets(&local, &at("e1", 6)));
        // A new epoch starts at 1.
        assert!(!skips_offsets(&local, &at("e2", 1)));
        assert!(skips_offsets(&local, &at("e2", 2)));
        // Places only move forward; broadcasts without one are never gaps.
        note_place(&mut local, &at("e1", 2));
        assert!(!skips_offsets(&local, &at("e1", 5)));
        let raw = Broadcast::raw("t", bytes::Bytes::from_static(b"x"));
        assert!(!skips_offsets(&local, &raw));
        // The place goes with the last subscriber.
        local.remove("t", ConnId::new(0, 0));
        local.insert("t", ConnId::new(1, 0), Sub::plain(WireProtocol::PhoenixV2));
        assert!(!skips_offsets(&local, &at("e1", 9)));
    }
}
