//! Delivering broadcasts, once per loop turn.
//!
//! Broadcasts reach a loop during a turn from its mailbox (other threads,
//! other loops, other nodes) and from its own callbacks. None is delivered
//! on arrival: they wait in the turn's list, in arrival order, and are
//! delivered just before the flush, or earlier, before the loop reads
//! another socket or handles a command that sends to one connection: what
//! happened before an input is delivered before anything that input causes
//! (a client never sees the reply to its heartbeat before a broadcast that
//! reached the server first). All that one read brings, a publisher's burst
//! of messages, stays together. Consecutive broadcasts to the same topic
//! form a run, and a run reaches each subscriber as ONE queue entry holding
//! all its messages (per wire protocol, the run's frames joined into one
//! `Bytes`): each subscriber's slot is visited once per run, with one
//! refcount, one queue push and one iovec, instead of once per message. The
//! kernel sees the same bytes; the loop touches each connection once.
//!
//! Exact semantics are kept where a subscriber must not take the run as a
//! whole: a connection a message excludes (`broadcast_from`), and a
//! subscription whose handler intercepts some message of the run
//! (`handle_out`, server-side subscriptions) get the run message by message,
//! in order, frames and callbacks interleaved as they would have been one
//! broadcast at a time. Messages of other topics are never reordered: a run
//! ends where another topic's broadcast comes between. Large frames travel
//! alone (copying them into a run would cost more than it saves).
//!
//! Subscribers of a conflated topic also get the run message by message,
//! each with its conflation key: a subscriber that is behind (its socket
//! took less than it was given at the last flush), or whose queue is full,
//! keeps only the newest message per key (see
//! [`Conflation`](crate::Conflation)), which a joined run would hide.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Service, Worker};
use crate::{
    broadcast::{Broadcast, Delivery},
    conflation::{self, ConflationKey},
    metrics::bump,
    protocol::Encoding,
    pubsub::{ConnId, SubscriptionKind},
    reactor::{LoopContext, route_publish},
};

/// Frames larger than this travel alone.
const MAX_BATCHED_FRAME: usize = 16 * 1024;
/// The most messages one run holds.
const MAX_RUN_MESSAGES: usize = 256;
/// The most bytes one run's joined frame holds, per encoding.
const MAX_RUN_BYTES: usize = 256 * 1024;

/// A run of broadcasts to one topic, ready to be queued to its subscribers.
struct Run<'a> {
    broadcasts: &'a [Arc<Broadcast>],
    /// Per encoding, the run's frames of that encoding joined, and how many
    /// messages that is (none for a conflated topic).
    joined: [Option<(Bytes, u32)>; Encoding::COUNT],
    /// This loop's connections that some message of the run excludes.
    excluded: Vec<ConnId>,
    /// For each subscription kind other than `Plain` met so far: whether
    /// it takes every message of the run as a frame.
    kinds: Vec<(SubscriptionKind, bool)>,
    /// If the topic is conflated, each message's key (`None`: sent as is);
    /// empty otherwise.
    keys: Vec<Option<ConflationKey>>,
}

impl<'a> Run<'a> {
    /// The run, its frames joined for the encodings `wanted` says this
    /// loop's subscribers take.
    fn new(
        broadcasts: &'a [Arc<Broadcast>],
        ctx: &LoopContext,
        wanted: impl Fn(Encoding) -> bool,
    ) -> Self {
        let loop_index = ctx.loop_index;
        let keys = conflation_keys(broadcasts, ctx);
        let joined = Encoding::ALL.map(|encoding| {
            if keys.is_empty() && wanted(encoding) {
                join(broadcasts, encoding)
            } else {
                None
            }
        });
        let mut excluded = Vec::new();
        for broadcast in broadcasts {
            if let Some(conn) = broadcast.excluded_on(loop_index)
                && !excluded.contains(&conn)
            {
                excluded.push(conn);
            }
        }
        Self {
            broadcasts,
            joined,
            excluded,
            kinds: Vec::new(),
            keys,
        }
    }

    /// Whether the topic is conflated.
    fn conflated(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether a subscription of `kind` takes every message as a frame
    /// (asked of the service once per kind and message, not per
    /// subscriber).
    fn all_frames(&mut self, kind: SubscriptionKind, service: &impl Service) -> bool {
        if kind == SubscriptionKind::Plain {
            return true;
        }
        if let Some(&(_, all)) = self.kinds.iter().find(|(known, _)| *known == kind) {
            return all;
        }
        let all = self
            .broadcasts
            .iter()
            .all(|broadcast| service.delivery(kind, broadcast) == Delivery::Frame);
        self.kinds.push((kind, all));
        all
    }
}

/// Each broadcast's conflation key, if their topic is conflated; empty
/// if not.
fn conflation_keys(broadcasts: &[Arc<Broadcast>], ctx: &LoopContext) -> Vec<Option<ConflationKey>> {
    let topic = broadcasts[0].topic();
    let Some(rule) = conflation::rule_for(&ctx.config.conflation, topic) else {
        return Vec::new();
    };
    broadcasts
        .iter()
        .map(|broadcast| rule.key(&ctx.conflation_keys, topic, broadcast.payload()))
        .collect()
}

/// The frames of `encoding` in `broadcasts`, joined: shared as they are for
/// a single message, copied once into one buffer for several.
fn join(broadcasts: &[Arc<Broadcast>], encoding: Encoding) -> Option<(Bytes, u32)> {
    let mut frames = broadcasts.iter().filter_map(|b| b.frame_for(encoding));
    let first = frames.next()?;
    let Some(second) = frames.next() else {
        return Some((first.clone(), 1));
    };
    let total = broadcasts
        .iter()
        .filter_map(|b| b.frame_for(encoding))
        .map(Bytes::len)
        .sum();
    let mut joined = BytesMut::with_capacity(total);
    joined.extend_from_slice(first);
    joined.extend_from_slice(second);
    let mut messages = 2;
    for frame in frames {
        joined.extend_from_slice(frame);
        messages += 1;
    }
    Some((joined.freeze(), messages))
}

/// The largest frame of a broadcast.
fn largest_frame(broadcast: &Broadcast) -> usize {
    Encoding::ALL
        .iter()
        .filter_map(|&encoding| broadcast.frame_for(encoding))
        .map(Bytes::len)
        .max()
        .unwrap_or(0)
}

/// Where the run that starts at `start` ends: consecutive broadcasts to the
/// same topic, small enough to copy, within the run limits (and within half
/// a connection's queue limit, so that `DropOldest` never has to drop a
/// whole run where one message at a time would have kept the newest).
fn run_end(turn: &[Arc<Broadcast>], start: usize, max_queued_bytes: usize) -> usize {
    let max_run_bytes = MAX_RUN_BYTES.min(max_queued_bytes / 2);
    let first = &turn[start];
    let mut bytes = largest_frame(first);
    if bytes > MAX_BATCHED_FRAME {
        return start + 1;
    }
    let mut end = start + 1;
    while end < turn.len() && end - start < MAX_RUN_MESSAGES {
        let next = &turn[end];
        let size = largest_frame(next);
        if next.topic() != first.topic() || size > MAX_BATCHED_FRAME || bytes + size > max_run_bytes
        {
            break;
        }
        bytes += size;
        end += 1;
    }
    end
}

/// What one pass over a topic's subscribers left to do: subscriptions that
/// take the run message by message, and slow consumers the policy just
/// closed.
#[derive(Debug, Default)]
struct Leftovers {
    one_by_one: Vec<ConnId>,
    refused: Vec<usize>,
}

impl<S: Service> Worker<S> {
    /// Routes what callbacks published: to other loops' mailboxes and to
    /// other nodes now, to this loop's subscribers at the end of the turn.
    pub(super) fn deliver_publishes(&mut self) {
        for broadcast in std::mem::take(&mut self.ctx.publishes) {
            if let Some(relay) = &self.ctx.relay {
                relay.forward(&broadcast);
            }
            let skip = Some(self.ctx.loop_index);
            route_publish(
                self.ctx.topics.registry(),
                &self.ctx.peers,
                &broadcast,
                skip,
            );
            self.turn.push(broadcast);
        }
    }

    /// Whether the turn holds a broadcast that `conn` (subscribed to
    /// `topics`) would receive: then it is delivered before anything `conn`'s
    /// next input makes the handler send.
    pub(super) fn turn_reaches(&self, conn: ConnId, topics: &[Arc<str>]) -> bool {
        !topics.is_empty()
            && self.turn.iter().any(|broadcast| {
                !broadcast.excludes(self.ctx.loop_index, conn)
                    && topics.iter().any(|topic| **topic == *broadcast.topic())
            })
    }

    /// Delivers the turn's broadcasts, run by run, until callbacks publish
    /// no more.
    pub(super) fn deliver_turn(&mut self) {
        while !self.turn.is_empty() {
            let turn = std::mem::take(&mut self.turn);
            let mut start = 0;
            while start < turn.len() {
                let end = run_end(&turn, start, self.ctx.config.max_queued_bytes);
                // A run ends early where its stream skips offsets.
                let end = start + self.continue_stream(&turn[start..end]);
                self.deliver_run(&turn[start..end]);
                start = end;
            }
        }
    }

    fn deliver_run(&mut self, broadcasts: &[Arc<Broadcast>]) {
        let local = self.ctx.topics.local();
        let topic = broadcasts[0].topic();
        let mut run = Run::new(broadcasts, &self.ctx, |encoding| {
            local.has_encoding(topic, encoding)
        });
        let leftovers = self.queue_run(&mut run);
        bump(&self.ctx.stats.publishes_handled, broadcasts.len() as u64);
        for conn in leftovers.one_by_one {
            self.deliver_one_by_one(conn, broadcasts, &run.keys);
        }
        // Slow consumers the policy just closed move to Closing. Their
        // socket buffer is full, so the client may never read the 1013:
        // the close is counted (`slow_consumer_closes`) and logged here.
        for key in leftovers.refused {
            tracing::debug!(key, "closed a slow consumer (queue limit reached)");
            self.sync(key);
        }
    }

    /// The hot loop of fan-out: one entry per subscriber for the whole run.
    fn queue_run(&mut self, run: &mut Run<'_>) -> Leftovers {
        let LoopContext {
            topics,
            dirty,
            config,
            stats,
            ..
        } = &mut self.ctx;
        let service = &*self.service;
        let mut leftovers = Leftovers::default();
        let mut delivered = 0;
        let topic = run.broadcasts[0].topic();
        for (id, sub) in topics.local().subscribers(topic) {
            let key = id.key();
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.generation != id.generation() || !slot.conn.is_open() {
                continue;
            }
            if run.conflated() || run.excluded.contains(&id) || !run.all_frames(sub.kind, service) {
                leftovers.one_by_one.push(id);
                continue;
            }
            let Some((bytes, messages)) = &run.joined[sub.encoding().index()] else {
                continue;
            };
            if !slot
                .conn
                .outbox()
                .fan_out(key, bytes, *messages, None, config, stats, dirty)
            {
                leftovers.refused.push(key);
            }
            delivered += u64::from(*messages);
        }
        bump(&stats.published_deliveries, delivered);
        leftovers
    }

    /// Delivers a run to one subscription message by message, in order:
    /// frames (conflated under `keys`, when the topic has them) and
    /// callbacks as each message asks, skipping the messages that exclude
    /// this connection. The subscription is looked up again before each
    /// message: a callback may have ended or changed it.
    fn deliver_one_by_one(
        &mut self,
        conn: ConnId,
        broadcasts: &[Arc<Broadcast>],
        keys: &[Option<ConflationKey>],
    ) {
        let key = conn.key();
        for (index, broadcast) in broadcasts.iter().enumerate() {
            let local = self.ctx.topics.local();
            let Some(&sub) = local.subscription(broadcast.topic(), conn) else {
                return;
            };
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.generation != conn.generation() || !slot.conn.is_open() {
                return;
            }
            if broadcast.excludes(self.ctx.loop_index, conn) {
                continue;
            }
            let delivery = match sub.kind {
                SubscriptionKind::Plain => Delivery::Frame,
                kind => self.service.delivery(kind, broadcast),
            };
            match delivery {
                Delivery::Frame => {
                    let Some(frame) = broadcast.frame_for(sub.encoding()) else {
                        continue;
                    };
                    let LoopContext {
                        config,
                        stats,
                        dirty,
                        ..
                    } = &mut self.ctx;
                    let conflation = keys.get(index).copied().flatten();
                    let queued = slot
                        .conn
                        .outbox()
                        .fan_out(key, frame, 1, conflation, config, stats, dirty);
                    bump(&stats.published_deliveries, 1);
                    if !queued {
                        return self.sync(key);
                    }
                }
                Delivery::Callback => self.call(key, |service, conn| {
                    service.on_broadcast(conn, sub.kind, broadcast)
                }),
            }
        }
    }
}
