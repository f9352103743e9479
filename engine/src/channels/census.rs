//! Topic counts across the nodes of a cluster, and the events a backend
//! wants about them (a topic's first and last subscriber, a member's first
//! and last presence).
//!
//! Each node counts its own subscribers (the topic index has them) and,
//! every round (one second by default), tells the others what changed
//! since its last round over the bus's control channel, with its whole
//! table every [`FULL_EVERY`] rounds and in the round after it hears of a
//! node it did not know, so that a lost message or a node that joined late
//! is repaired. Messages are cut at [`MAX_MESSAGE_BYTES`] (NATS refuses
//! payloads over 1 MiB by default). A node keeps each other node's table,
//! forgets one that said goodbye at once (and ignores what it says after),
//! and one silent for the down period after it. A topic's count
//! cluster-wide is this node's count plus the others' latest: at most a
//! round (plus the broker's latency) old.
//!
//! Events are raised by the node where the change happened, from what it
//! knows then: a topic becomes occupied when this node's count goes from 0
//! and no other node has reported it, vacated when it goes to 0 and none
//! has. When a node is forgotten (goodbye, or silent for the down period)
//! and a topic it held has no subscriber left, the remaining node with the
//! lowest id raises `Vacated`. A node holds its events for its first
//! [`WARM_UP_ROUNDS`] rounds, until the others' tables have reached it,
//! then raises `Occupied` for its topics no other node has (a topic
//! occupied and vacated within those rounds is not reported). Two nodes
//! changing the same topic within one round may both report it. The logic
//! here is pure (counts and `now` in, events and messages out); the
//! engine's census thread and the bus's thread move them.

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

/// Rounds a node holds its topic events for after it starts.
const WARM_UP_ROUNDS: u64 = 2;

/// The largest census message; a round that says more is cut into several.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Departed nodes remembered, so that a late round of theirs is ignored.
const DEPARTED_KEPT: usize = 64;

/// The start of every census message, which tells it apart from presence
/// messages on the shared control channel.
pub(crate) const CENSUS_TAG: &[u8] = b"{\"census\":";

/// What the cluster's view of a topic says, for the application (the
/// standalone server's webhooks).
///
/// How exact: each event is raised by the node where the change happened,
/// from what it knew then. Two nodes changing one topic within a census
/// round may both raise `Occupied` (or `Vacated`); a node that just started
/// holds its topic events for its first two rounds; when a node says
/// goodbye or goes silent for the down period, the remaining node with the
/// lowest id raises `Vacated` for the topics left with no subscriber.
/// `MemberAdded` / `MemberRemoved` are raised as this node tracks a key's
/// first presence on a topic or untracks its last, as far as this node's
/// list (every node's presences) shows; the members of a node that dies
/// leave without one.
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
    /// Nodes that said goodbye, newest last.
    departed: std::collections::VecDeque<NodeId>,
    /// A node new to this one was heard: send the whole table next round.
    full_next: bool,
    /// This node said goodbye: it says and raises nothing more.
    left: bool,
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
    /// and the messages for the other nodes.
    pub(crate) fn round(&self, local: LocalRound, now: Instant) -> (Vec<TopicEvent>, Vec<Bytes>) {
        let mut state = self.lock();
        if state.left {
            return (Vec::new(), Vec::new());
        }
        let mut events = state.expire(now);
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
        if state.seq <= WARM_UP_ROUNDS {
            events.clear();
        }
        if state.seq == WARM_UP_ROUNDS + 1 {
            // The others' tables have had time to arrive: what this node
            // holds alone is occupied by it.
            events.retain(|event| !matches!(event, TopicEvent::Occupied { .. }));
            let alone = state
                .local
                .keys()
                .filter(|topic| state.remote_count(topic) == 0)
                .map(|topic| TopicEvent::Occupied {
                    topic: topic.to_string(),
                });
            events.extend(alone.collect::<Vec<_>>());
        }
        let full = state.seq % FULL_EVERY == 1 || std::mem::take(&mut state.full_next);
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
        (events, encode_round(round))
    }

    /// This node is stopping: it says and raises nothing more after the
    /// goodbye this returns.
    pub(crate) fn leave(&self) -> Bytes {
        self.lock().left = true;
        encode(Round {
            bye: true,
            ..Round::default()
        })
    }

    /// Another node's census message; the events it raises (a topic whose
    /// last subscribers were on a node that said goodbye).
    pub(crate) fn receive(&self, origin: NodeId, message: &[u8], now: Instant) -> Vec<TopicEvent> {
        let Ok(Envelope { census: round }) = serde_json::from_slice::<Envelope>(message) else {
            tracing::debug!("dropped an unreadable census message");
            return Vec::new();
        };
        let mut state = self.lock();
        if origin == state.me || state.left || state.departed.contains(&origin) {
            return Vec::new();
        }
        if round.bye {
            if state.departed.len() == DEPARTED_KEPT {
                state.departed.pop_front();
            }
            state.departed.push_back(origin);
            return state.forget(origin);
        }
        if !state.remote.contains_key(&origin) {
            state.full_next = true;
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
        Vec::new()
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
        let total = self.remote_totals.get(&topic).copied().unwrap_or(0);
        let updated = (i128::from(total) + delta).max(0);
        if updated == 0 {
            self.remote_totals.remove(&topic);
        } else {
            let updated = u64::try_from(updated).unwrap_or(u64::MAX);
            self.remote_totals.insert(topic, updated);
        }
    }

    /// Drops what `node` held; the events that raises (see the module
    /// docs: the lowest id left reports topics left with no subscriber).
    fn forget(&mut self, node: NodeId) -> Vec<TopicEvent> {
        let Some(remote) = self.remote.remove(&node) else {
            return Vec::new();
        };
        let reporter = self.remote.keys().all(|other| self.me < *other);
        let mut events = Vec::new();
        for (topic, count) in remote.topics {
            self.adjust(topic.clone(), -i128::from(count));
            let empty = self.remote_count(&topic) == 0 && !self.local.contains_key(&topic);
            if reporter && empty && !self.left {
                events.push(TopicEvent::Vacated {
                    topic: topic.into(),
                });
            }
        }
        events
    }

    /// Forgets the nodes silent for the down period.
    fn expire(&mut self, now: Instant) -> Vec<TopicEvent> {
        let down_after = self.down_after;
        let silent: Vec<NodeId> = self
            .remote
            .iter()
            .filter(|(_, remote)| now.saturating_duration_since(remote.seen) >= down_after)
            .map(|(id, _)| *id)
            .collect();
        silent
            .into_iter()
            .flat_map(|node| self.forget(node))
            .collect()
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

/// A round as messages of at most about [`MAX_MESSAGE_BYTES`] each: the
/// first says whether the table is whole; the others add to it.
fn encode_round(mut round: Round) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut topics = std::mem::take(&mut round.topics).into_iter().peekable();
    loop {
        let mut bytes = 0;
        let mut part = Vec::new();
        while let Some((topic, _)) = topics.peek() {
            // A topic costs its length, quotes, a count and separators.
            let cost = topic.len() + 32;
            if !part.is_empty() && bytes + cost > MAX_MESSAGE_BYTES {
                break;
            }
            bytes += cost;
            part.extend(topics.next());
        }
        let first = messages.is_empty();
        messages.push(encode(Round {
            seq: round.seq,
            full: round.full && first,
            connections: round.connections,
            deliveries: round.deliveries,
            topics: part,
            bye: false,
        }));
        if topics.peek().is_none() {
            return messages;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Duration = Duration::from_secs(30);

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

    /// Two nodes past their warm-up, each having heard the other.
    fn pair(down_after: Duration) -> (Census, Census) {
        let (a, b) = (Census::new(1, down_after), Census::new(2, down_after));
        let now = Instant::now();
        for _ in 0..WARM_UP_ROUNDS {
            exchange(&a, &b, &[], &[], now);
        }
        (a, b)
    }

    /// A round of each, heard by the other; the events of each.
    fn exchange(
        a: &Census,
        b: &Census,
        at_a: &[(&str, u64)],
        at_b: &[(&str, u64)],
        now: Instant,
    ) -> (Vec<TopicEvent>, Vec<TopicEvent>) {
        let (a_events, a_says) = a.round(local(at_a), now);
        a_says.iter().for_each(|m| drop(b.receive(1, m, now)));
        let (b_events, b_says) = b.round(local(at_b), now);
        b_says.iter().for_each(|m| drop(a.receive(2, m, now)));
        (a_events, b_events)
    }

    #[test]
    fn counts_travel_as_changes_and_add_up_across_nodes() {
        let now = Instant::now();
        let (a, b) = pair(DOWN);
        let (events, _) = exchange(&a, &b, &[("room:1", 2)], &[], now);
        assert_eq!(events, [occupied("room:1")]);
        assert_eq!(b.remote_count("room:1"), 2);
        // B's first subscriber is not the cluster's first.
        let (_, events) = exchange(&a, &b, &[("room:1", 2)], &[("room:1", 1)], now);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(a.remote_count("room:1"), 1);
        // A's changes only: 0 for a topic gone, and B still has it.
        let (events, _) = exchange(&a, &b, &[], &[("room:1", 1)], now);
        assert!(events.is_empty(), "B still has room:1: {events:?}");
        assert_eq!(b.remote_count("room:1"), 0);
        let (_, events) = exchange(&a, &b, &[], &[], now);
        assert_eq!(events, [vacated("room:1")]);
    }

    #[test]
    fn a_full_table_repairs_lost_changes_and_silent_or_departed_nodes_are_forgotten() {
        let now = Instant::now();
        let (a, b) = (
            Census::new(1, Duration::from_secs(5)),
            Census::new(2, Duration::from_secs(5)),
        );
        // B hears none of A's rounds until a full one.
        let mut rounds = 1;
        let full = loop {
            let (_, says) = a.round(local(&[("t", rounds)]), now);
            rounds += 1;
            if rounds > FULL_EVERY + 1 {
                break says;
            }
        };
        full.iter().for_each(|m| drop(b.receive(1, m, now)));
        assert_eq!(b.remote_count("t"), FULL_EVERY + 1);
        assert_eq!(b.remote_topics(), [("t".to_owned(), FULL_EVERY + 1)]);
        assert_eq!(b.nodes(now).len(), 2);
        b.round(local(&[]), now + Duration::from_secs(5));
        assert_eq!(b.remote_count("t"), 0, "silent past the down period");
        full.iter().for_each(|m| drop(b.receive(1, m, now)));
        assert_eq!(b.remote_count("t"), FULL_EVERY + 1);
        // Goodbye: forgotten, and what it says later is ignored.
        b.receive(1, &a.leave(), now);
        assert_eq!(b.remote_count("t"), 0, "said goodbye");
        full.iter().for_each(|m| drop(b.receive(1, m, now)));
        assert_eq!(b.remote_count("t"), 0, "a departed node's late round");
        assert_eq!(b.nodes(now).len(), 1);
        assert!(
            a.round(local(&[("t", 1)]), now).1.is_empty(),
            "A says nothing more"
        );
    }

    #[test]
    fn the_lowest_node_left_reports_what_a_departed_node_held_alone() {
        let now = Instant::now();
        let (a, b) = pair(DOWN);
        let c = Census::new(3, DOWN);
        let (_, a_says) = a.round(local(&[]), now);
        a_says.iter().for_each(|m| drop(c.receive(1, m, now)));
        let (_, says) = b.round(local(&[("b-only", 4)]), now);
        says.iter().for_each(|m| {
            a.receive(2, m, now);
            c.receive(2, m, now);
        });
        let bye = b.leave();
        assert_eq!(
            a.receive(2, &bye, now),
            [vacated("b-only")],
            "A has the lowest id"
        );
        assert!(c.receive(2, &bye, now).is_empty(), "C leaves it to A");
    }

    #[test]
    fn a_starting_node_holds_its_events_until_it_has_heard_the_others() {
        let now = Instant::now();
        let (a, b) = (Census::new(1, DOWN), Census::new(2, DOWN));
        let (_, b_says) = b.round(local(&[("shared", 1)]), now);
        b_says.iter().for_each(|m| drop(a.receive(2, m, now)));
        assert!(
            a.round(local(&[("shared", 1), ("mine", 1)]), now)
                .0
                .is_empty()
        );
        assert!(
            a.round(local(&[("shared", 1), ("mine", 1)]), now)
                .0
                .is_empty()
        );
        let (events, _) = a.round(local(&[("shared", 1), ("mine", 1)]), now);
        assert_eq!(events, [occupied("mine")], "shared was occupied before A");
    }

    #[test]
    fn a_large_round_is_cut_into_messages_under_the_limit() {
        let census = Census::new(1, DOWN);
        let topics: Vec<(String, u64)> =
            (0..40_000).map(|i| (format!("topic:{i:08}"), 1)).collect();
        let round = LocalRound {
            topics: topics
                .iter()
                .map(|(t, c)| (Box::from(t.as_str()), *c))
                .collect(),
            connections: 1,
            deliveries: 0,
        };
        let (_, messages) = census.round(round, Instant::now());
        assert!(messages.len() > 1);
        assert!(
            messages.iter().all(|m| m.len() <= MAX_MESSAGE_BYTES),
            "{}",
            messages[0].len()
        );
        let other = Census::new(2, DOWN);
        messages
            .iter()
            .for_each(|m| drop(other.receive(1, m, Instant::now())));
        assert_eq!(other.remote_topics().len(), 40_000);
    }
}
