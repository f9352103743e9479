//! Delivering broadcasts: what callbacks published during the turn, and
//! what other loops and threads posted to this loop's mailbox.

use std::sync::Arc;

use super::{Service, Worker};
use crate::{
    broadcast::{Broadcast, Delivery},
    metrics::bump,
    pubsub::SubscriptionKind,
    reactor::{LoopContext, route_publish},
};

/// What one pass over a topic's subscribers left to do after queuing
/// frames: handler callbacks, and slow consumers the policy just closed.
#[derive(Debug, Default)]
struct Leftovers {
    callbacks: Vec<(usize, SubscriptionKind)>,
    refused: Vec<usize>,
}

impl<S: Service> Worker<S> {
    /// Delivers what callbacks published: to this loop's subscribers now,
    /// to other loops' through their mailboxes, to other nodes through the
    /// relay.
    pub(super) fn deliver_publishes(&mut self) {
        while !self.ctx.publishes.is_empty() {
            let publishes = std::mem::take(&mut self.ctx.publishes);
            for broadcast in &publishes {
                if let Some(relay) = &self.ctx.relay {
                    relay.forward(broadcast);
                }
                let skip = Some(self.ctx.loop_index);
                route_publish(self.ctx.topics.registry(), &self.ctx.peers, broadcast, skip);
                self.deliver(broadcast);
            }
        }
    }

    /// Queues a broadcast's frames for this loop's subscribers of its topic
    /// (except the one it excludes), then runs the handler for the
    /// subscriptions that take it as a callback.
    pub(super) fn deliver(&mut self, broadcast: &Arc<Broadcast>) {
        let leftovers = self.queue_frames(broadcast);
        for (key, kind) in leftovers.callbacks {
            self.call(key, |service, conn| {
                service.on_broadcast(conn, kind, broadcast)
            });
        }
        // Slow consumers the policy just closed move to Closing.
        for key in leftovers.refused {
            self.sync(key);
        }
    }

    /// The hot loop of fan-out: one refcounted frame per subscriber.
    fn queue_frames(&mut self, broadcast: &Broadcast) -> Leftovers {
        let LoopContext {
            topics,
            dirty,
            config,
            stats,
            loop_index,
            ..
        } = &mut self.ctx;
        let service = &*self.service;
        let mut leftovers = Leftovers::default();
        let mut delivered = 0;
        // Subscriptions of a topic mostly share a kind: ask the handler once
        // per run of equal kinds, not once per subscriber.
        let mut decided: Option<(SubscriptionKind, Delivery)> = None;
        for (id, sub) in topics.local().subscribers(broadcast.topic()) {
            if broadcast.excludes(*loop_index, id) {
                continue;
            }
            let key = id.key();
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.generation != id.generation() || !slot.conn.is_open() {
                continue;
            }
            let delivery = match (sub.kind, decided) {
                (SubscriptionKind::Plain, _) => Delivery::Frame,
                (kind, Some((decided_kind, delivery))) if kind == decided_kind => delivery,
                (kind, _) => {
                    let delivery = service.delivery(kind, broadcast);
                    decided = Some((kind, delivery));
                    delivery
                }
            };
            match delivery {
                Delivery::Frame => {
                    let Some(frame) = broadcast.frame(sub.protocol) else {
                        continue;
                    };
                    if !slot.conn.outbox().fan_out(key, frame, config, stats, dirty) {
                        leftovers.refused.push(key);
                    }
                    delivered += 1;
                }
                Delivery::Callback => leftovers.callbacks.push((key, sub.kind)),
            }
        }
        bump(&stats.publishes_handled, 1);
        bump(&stats.published_deliveries, delivered);
        leftovers
    }
}
