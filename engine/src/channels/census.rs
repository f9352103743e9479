//! Topic counts across the nodes of a cluster, and the events a backend
//! wants about them (a topic's first and last subscriber, a member's first
//! and last presence).
//!
//! Each node counts its own subscribers (the topic index has them) and,
//! every round (one second by default), tells the others what changed
//! since its last round over the bus's control channel, with its whole
//! table every [`FULL_EVERY`] rounds, so that a lost message or a node
//! that joined late is repaired within that many rounds. A node keeps each
//! other node's table, and forgets a node that said goodbye at once, one
//! silent for the down period after it. A topic's count cluster-wide is
//! this node's count plus the others' latest: at most a round (plus the
//! broker's latency) old.
//!
//! Events are raised by the node where the change happened, from what it
//! knows when it happens: a topic becomes occupied when this node's count
//! goes from 0 and no other node has reported it, vacated when it goes to
//! 0 and none has. Two nodes changing the same topic within one round may
//! both report it (at least once, sometimes twice). The logic here is pure
//! (counts and `now` in, events and messages out); the engine's census
//! thread moves them.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::presence::NodeId;

/// How often a node counts its topics and tells the others, by default.
pub const CENSUS_EVERY: Duration = Duration::from_secs(1);

/// Every how many rounds a node sends its whole table, not its changes.
const FULL_EVERY: u64 = 10;

/// The start of every census message, which tells it apart from presence
/// messages on the shared control channel.
pub(crate) const CENSUS_TAG: &[u8] = b"{\"census\":";

/// What the cluster's view of a topic says, for the application (the
/// standalone server's webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicEvent {
    /// The topic got its first subscriber in the cluster.
    Occupied {
        /// The topic.
        topic: String,
    },
    /// The topic lost its last subscriber in the cluster.
    Vacated {
        /// The topic.
        topic: String,
    },
    /// A presence key got its first presence on the topic.
    MemberAdded {
        /// The topic.
        topic: String,
        /// The presence key (the user).
        key: String,
    },
    /// A presence key lost its last presence on the topic.
    MemberRemoved {
        /// The topic.
        topic: String,
        /// The presence key (the user).
        key: String,
    },
}

/// What the application gives [`Channels::on_topic_event`](super::Channels::on_topic_event).
pub(crate) type TopicEventFn = dyn Fn(TopicEvent) + Send + Sync;

/// A [`TopicEventFn`] kept by the engine.
#[derive(Clone)]
pub(crate) struct Listener(pub(crate) std::sync::Arc<TopicEventFn>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// One node of the cluster, as this node knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSummary {
    /// The node's id on the bus (random per start).
    pub id: u64,
    /// Whether it is this node.
    pub this_node: bool,
    /// Its connections, as of its last round.
    pub connections: u64,
    /// Its topics with subscribers.
    pub topics: usize,
    /// Messages it queued for subscribers per second, over its last two
    /// rounds (`None` until two are known).
    pub deliveries_per_second: Option<f64>,
    /// Milliseconds since it was last heard from (0 for this node).
    pub last_seen_ms: u64,
}

/// What nodes say to each other.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    census: Round,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Round {
    #[serde(default)]
    seq: u64,
    /// The whole table, not the changes since the last round.
    #[serde(default)]
    full: bool,
    #[serde(default)]
    connections: u64,
    #[serde(default)]
    deliveries: u64,
    /// Topics and their subscribers (0: gone).
    #[serde(default)]
    topics: Vec<(String, u64)>,
    /// The node is stopping: forget it.
    #[serde(default)]
    bye: bool,
}

/// This node's figures for one round.
#[derive(Debug, Default)]
pub(crate) struct LocalRound {
    pub(crate) topics: Vec<(Box<str>, u64)>,
    pub(crate) connections: u64,
    pub(crate) deliveries: u64,
}

#[derive(Debug)]
struct Remote {
    topics: HashMap<Box<str>, u64>,
    connections: u64,
    /// The last two (deliveries, when) samples.
    deliveries: [Option<(u64, Instant)>; 2],
    seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    local: HashMap<Box<str>, u64>,
    local_connections: u64,
    local_deliveries: [Option<(u64, Instant)>; 2],
    remote: HashMap<NodeId, Remote>,
    /// Each topic's subscribers on the other nodes, summed.
    remote_totals: HashMap<Box<str>, u64>,
    seq: u64,
    me: NodeId,
    down_after: Duration,
}

/// The census of one node.
#[derive(Debug, Default)]
pub(crate) struct Census {
    state: Mutex<State>,
}

impl Census {
    pub(crate) fn new(me: NodeId, down_after: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                me,
                down_after,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes this node's counts for a round: the events its changes raise,
    /// and the message for the other nodes.
    pub(crate) fn round(&self, local: LocalRound, now: Instant) -> (Vec<TopicEvent>, Bytes) {
        let mut state = self.lock();
        state.expire(now);
        let mut events = Vec::new();
        let mut changes = Vec::new();
        let mut current: HashMap<Box<str>, u64> = HashMap::with_capacity(local.topics.len());
        for (topic, count) in local.topics {
            let before = state.local.get(&topic).copied().unwrap_or(0);
            if before != count {
                if before == 0 && state.remote_count(&topic) == 0 {
                    events.push(TopicEvent::Occupied {
                        topic: topic.to_string(),
                    });
                }
                changes.push((topic.to_string(), count));
            }
            current.insert(topic, count);
        }
        for topic in state.local.keys() {
            if !current.contains_key(topic) {
                if state.remote_count(topic) == 0 {
                    events.push(TopicEvent::Vacated {
                        topic: topic.to_string(),
                    });
                }
                changes.push((topic.to_string(), 0));
            }
        }
        state.local = current;
        state.local_connections = local.connections;
        state.local_deliveries = [state.local_deliveries[1], Some((local.deliveries, now))];
        state.seq += 1;
        let full = state.seq % FULL_EVERY == 1;
        let topics = if full {
            state
                .local
                .iter()
                .map(|(topic, count)| (topic.to_string(), *count))
                .collect()
        } else {
            changes
        };
        let round = Round {
            seq: state.seq,
            full,
            connections: local.connections,
            deliveries: local.deliveries,
            topics,
            bye: false,
        };
        (events, encode(round))
    }

    /// The goodbye a stopping node sends.
    pub(crate) fn bye() -> Bytes {
        encode(Round {
            bye: true,
            ..Round::default()
        })
    }

    /// Another node's census message.
    pub(crate) fn receive(&self, origin: NodeId, message: &[u8], now: Instant) {
        let Ok(Envelope { census: round }) = serde_json::from_slice::<Envelope>(message) else {
            tracing::debug!("dropped an unreadable census message");
            return;
        };
        let mut state = self.lock();
        if origin == state.me {
            return;
        }
        if round.bye {
            state.forget(origin);
            return;
        }
        let remote = state.remote.entry(origin).or_insert_with(|| Remote {
            topics: HashMap::new(),
            connections: 0,
            deliveries: [None, None],
            seen: now,
        });
        remote.seen = now;
        remote.connections = round.connections;
        remote.deliveries = [remote.deliveries[1], Some((round.deliveries, now))];
        let mut changes: Vec<(Box<str>, i128)> = Vec::new();
        if round.full {
            for (topic, count) in remote.topics.drain() {
                changes.push((topic, -i128::from(count)));
            }
        }
        for (topic, count) in round.topics {
            let topic: Box<str> = topic.into();
            let before = if count == 0 {
                remote.topics.remove(&topic)
            } else {
                remote.topics.insert(topic.clone(), count)
            };
            changes.push((topic, i128::from(count) - i128::from(before.unwrap_or(0))));
        }
        for (topic, delta) in changes {
            state.adjust(topic, delta);
        }
    }

    /// `topic`'s subscribers on the other nodes.
    pub(crate) fn remote_count(&self, topic: &str) -> u64 {
        self.lock().remote_count(topic)
    }

    /// Every topic with subscribers on another node, and how many.
    pub(crate) fn remote_topics(&self) -> Vec<(String, u64)> {
        self.lock()
            .remote_totals
            .iter()
            .map(|(topic, count)| (topic.to_string(), *count))
            .collect()
    }

    /// The nodes known, this one first.
    pub(crate) fn nodes(&self, now: Instant) -> Vec<NodeSummary> {
        let state = self.lock();
        let me = NodeSummary {
            id: state.me,
            this_node: true,
            connections: state.local_connections,
            topics: state.local.len(),
            deliveries_per_second: rate(&state.local_deliveries),
            last_seen_ms: 0,
        };
        let mut others: Vec<NodeSummary> = state
            .remote
            .iter()
            .map(|(id, remote)| NodeSummary {
                id: *id,
                this_node: false,
                connections: remote.connections,
                topics: remote.topics.len(),
                deliveries_per_second: rate(&remote.deliveries),
                last_seen_ms: now.saturating_duration_since(remote.seen).as_millis() as u64,
            })
            .collect();
        others.sort_by_key(|node| node.id);
        std::iter::once(me).chain(others).collect()
    }
}

impl State {
    fn remote_count(&self, topic: &str) -> u64 {
        self.remote_totals.get(topic).copied().unwrap_or(0)
    }

    fn adjust(&mut self, topic: Box<str>, delta: i128) {
        if delta == 0 {
            return;
        }
        let total = self.remote_totals.entry(topic).or_insert(0);
        let updated = (i128::from(*total) + delta).max(0);
        *total = u64::try_from(updated).unwrap_or(u64::MAX);
        self.remote_totals.retain(|_, count| *count > 0);
    }

    fn forget(&mut self, node: NodeId) {
        if let Some(remote) = self.remote.remove(&node) {
            for (topic, count) in remote.topics {
                self.adjust(topic, -i128::from(count));
            }
        }
    }

    /// Forgets the nodes silent for the down period.
    fn expire(&mut self, now: Instant) {
        let down_after = self.down_after;
        let silent: Vec<NodeId> = self
            .remote
            .iter()
            .filter(|(_, remote)| now.saturating_duration_since(remote.seen) >= down_after)
            .map(|(id, _)| *id)
            .collect();
        for node in silent {
            self.forget(node);
        }
    }
}

/// Per second, between two (count, when) samples.
fn rate(samples: &[Option<(u64, Instant)>; 2]) -> Option<f64> {
    let [Some((before, then)), Some((after, now))] = samples else {
        return None;
    };
    let seconds = now.saturating_duration_since(*then).as_secs_f64();
    (seconds > 0.0).then(|| after.saturating_sub(*before) as f64 / seconds)
}

fn encode(census: Round) -> Bytes {
    Bytes::from(serde_json::to_vec(&Envelope { census }).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(topics: &[(&str, u64)]) -> LocalRound {
        LocalRound {
            topics: topics.iter().map(|(t, c)| (Box::from(*t), *c)).collect(),
            connections: 1,
            deliveries: 0,
        }
    }

    fn occupied(topic: &str) -> TopicEvent {
        TopicEvent::Occupied {
            topic: topic.into(),
        }
    }

    fn vacated(topic: &str) -> TopicEvent {
        TopicEvent::Vacated {
            topic: topic.into(),
        }
    }

    #[test]
    fn counts_travel_as_changes_and_add_up_across_nodes() {
        let now = Instant::now();
        let (a, b) = (
            Census::new(1, Duration::from_secs(30)),
            Census::new(2, Duration::from_secs(30)),
        );
        let (events, message) = a.round(local(&[("room:1", 2)]), now);
        assert_eq!(events, [occupied("room:1")]);
        b.receive(1, &message, now);
        assert_eq!(b.remote_count("room:1"), 2);
        // B's first subscriber is not the cluster's first.
        let (events, message) = b.round(local(&[("room:1", 1)]), now);
        assert!(events.is_empty(), "{events:?}");
        a.receive(2, &message, now);
        assert_eq!(a.remote_count("room:1"), 1);
        // A round carries changes only: 0 for a topic gone.
        let (events, message) = a.round(local(&[]), now);
        assert!(events.is_empty(), "B still has room:1: {events:?}");
        assert!(message.starts_with(CENSUS_TAG));
        b.receive(1, &message, now);
        assert_eq!(b.remote_count("room:1"), 0);
        let (events, _) = b.round(local(&[]), now);
        assert_eq!(events, [vacated("room:1")]);
    }

    #[test]
    fn a_full_table_repairs_lost_changes_and_silent_or_departed_nodes_are_forgotten() {
        let now = Instant::now();
        let (a, b) = (
            Census::new(1, Duration::from_secs(5)),
            Census::new(2, Duration::from_secs(5)),
        );
        // B hears none of A's first rounds; the next full one repairs it.
        for count in 1..=FULL_EVERY {
            a.round(local(&[("t", count)]), now);
        }
        let (_, full) = a.round(local(&[("t", 99)]), now);
        b.receive(1, &full, now);
        assert_eq!(b.remote_count("t"), 99);
        assert_eq!(b.remote_topics(), [("t".to_owned(), 99)]);
        assert_eq!(b.nodes(now).len(), 2);
        b.round(local(&[]), now + Duration::from_secs(5));
        assert_eq!(b.remote_count("t"), 0, "silent past the down period");
        b.receive(1, &full, now);
        assert_eq!(b.remote_count("t"), 99);
        b.receive(1, &Census::bye(), now);
        assert_eq!(b.remote_count("t"), 0, "said goodbye");
        assert_eq!(b.nodes(now).len(), 1);
    }
}
