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
    local
        .stream_place(broadcast.topic())
        .is_some_and(|(last_epoch, last)| **last_epoch == *epoch && offset > last + 1)
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
                self.report_gap(broadcast.topic());
            }
            note_place(self.ctx.topics.local_mut(), broadcast);
        }
        run.len()
    }

    /// Tells every channel subscription of `topic` on this loop that its
    /// stream skipped offsets.
    fn report_gap(&mut self, topic: &str) {
        tracing::warn!(
            topic,
            "publications of a topic with history never reached this loop; its clients rejoin to recover"
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
            self.call(key, |service, conn| service.on_stream_gap(conn, topic));
        }
    }
}
