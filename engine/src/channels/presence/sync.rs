//! Presence across the nodes of a cluster: what nodes tell each other, and
//! how a node keeps the others' presences.
//!
//! Each presence is owned by the node whose client tracked it, so nodes
//! never merge concurrent writes to one entry: each replicates its own
//! list to the others, as Phoenix.Tracker does, over the bus (no protocol
//! of our own on the wire, JSON messages on the broker's control channel).
//!
//! - A node numbers the changes to its own list: every diff window with
//!   changes becomes one `delta` (version `from` to `from + 1`).
//! - Every [`HEARTBEAT`] it says its version. A node that hears of a
//!   version it has not reached (a delta was lost: brokers deliver at most
//!   once, and nothing is published during an outage), or of a node it does
//!   not know (it started, or came back), asks for that node's `state` and
//!   replaces what it held of it: the joins and leaves between the two go to
//!   its clients as an ordinary diff.
//! - A node not heard from for the down period (default 30 s, as Phoenix)
//!   is taken for dead (killed, cut off): its presences leave. A node that
//!   stops cleanly says `bye` and its presences leave at once.
//! - A node's id is random per start: a restarted node is a new
//!   incarnation, and the old one's presences leave by `bye`, or by the
//!   down period after a crash.
//!
//! The logic here is pure (messages and `now` in, changes and replies
//! out); the tracker applies the changes to its lists, and the engine's
//! presence thread moves the messages.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How often a node says it is alive, and its version.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long after a state request a node asks again.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// A node on the bus (random per start).
pub(crate) type NodeId = u64;

/// One presence of a node, as replicated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) topic: String,
    pub(crate) key: String,
    pub(crate) phx_ref: String,
    /// The meta as sent to clients (`phx_ref` included).
    pub(crate) meta: Box<RawValue>,
}

/// A presence that left: enough to find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub(crate) struct Gone {
    pub(crate) topic: String,
    pub(crate) key: String,
    pub(crate) phx_ref: String,
}

impl Entry {
    fn gone(&self) -> Gone {
        Gone {
            topic: self.topic.clone(),
            key: self.key.clone(),
            phx_ref: self.phx_ref.clone(),
        }
    }
}

/// What nodes say to each other. Externally tagged (`{"delta": {...}}`):
/// serde cannot read the raw metas inside an internally tagged enum.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Message {
    /// Alive, with this many deltas made.
    Heartbeat { version: u64 },
    /// The changes from version `from` to `from + 1`.
    Delta {
        from: u64,
        joins: Vec<Entry>,
        leaves: Vec<Gone>,
    },
    /// Asks node `of` for its state.
    StateRequest { of: NodeId },
    /// A node's whole list, at `version`.
    State { version: u64, entries: Vec<Entry> },
    /// Stopping: drop my presences.
    Bye,
}

/// What a message asks of the tracker.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Presences of other nodes that joined.
    pub(crate) joins: Vec<Entry>,
    /// Presences of other nodes that left.
    pub(crate) leaves: Vec<Gone>,
    /// Messages to send.
    pub(crate) replies: Vec<Message>,
    /// Whether to answer with this node's state.
    pub(crate) send_state: bool,
}

/// What this node holds of another.
#[derive(Debug)]
struct Peer {
    version: u64,
    /// Whether a state has been applied since it was last (re)discovered:
    /// until then, deltas cannot be trusted to follow on.
    synced: bool,
    last_seen: Instant,
    asked_at: Option<Instant>,
    entries: HashMap<String, Entry>,
}

/// This node's view of the others.
#[derive(Debug)]
pub(crate) struct Peers {
    me: NodeId,
    peers: HashMap<NodeId, Peer>,
}

impl Peers {
    pub(crate) fn new(me: NodeId) -> Self {
        Self {
            me,
            peers: HashMap::new(),
        }
    }

    /// Handles `message` from `origin` at `now`.
    pub(crate) fn receive(&mut self, origin: NodeId, message: Message, now: Instant) -> Effects {
        let mut effects = Effects::default();
        if origin == self.me {
            return effects;
        }
        match message {
            Message::StateRequest { of } => effects.send_state = of == self.me,
            Message::Bye => {
                if let Some(peer) = self.peers.remove(&origin) {
                    effects
                        .leaves
                        .extend(peer.entries.values().map(Entry::gone));
                }
            }
            Message::Heartbeat { version } => {
                let peer = self.peer(origin, now);
                if !peer.synced || version != peer.version {
                    Self::ask(peer, origin, now, &mut effects);
                }
            }
            Message::Delta {
                from,
                joins,
                leaves,
            } => {
                let peer = self.peer(origin, now);
                if peer.synced && from == peer.version {
                    peer.version = from + 1;
                    for gone in leaves {
                        if peer.entries.remove(&gone.phx_ref).is_some() {
                            effects.leaves.push(gone);
                        }
                    }
                    for entry in joins {
                        if !peer.entries.contains_key(&entry.phx_ref) {
                            peer.entries.insert(entry.phx_ref.clone(), entry.clone());
                            effects.joins.push(entry);
                        }
                    }
                } else {
                    Self::ask(peer, origin, now, &mut effects);
                }
            }
            Message::State { version, entries } => {
                let peer = self.peer(origin, now);
                let mut incoming: HashMap<String, Entry> = entries
                    .into_iter()
                    .map(|entry| (entry.phx_ref.clone(), entry))
                    .collect();
                for (phx_ref, entry) in &peer.entries {
                    if !incoming.contains_key(phx_ref) {
                        effects.leaves.push(entry.gone());
                    }
                }
                for (phx_ref, entry) in &incoming {
                    if !peer.entries.contains_key(phx_ref) {
                        effects.joins.push(entry.clone());
                    }
                }
                peer.entries = std::mem::take(&mut incoming);
                peer.version = version;
                peer.synced = true;
                peer.asked_at = None;
            }
        }
        effects
    }

    /// The peer `origin`, known from now on, seen at `now`.
    fn peer(&mut self, origin: NodeId, now: Instant) -> &mut Peer {
        let peer = self.peers.entry(origin).or_insert_with(|| Peer {
            version: 0,
            synced: false,
            last_seen: now,
            asked_at: None,
            entries: HashMap::new(),
        });
        peer.last_seen = now;
        peer
    }

    fn ask(peer: &mut Peer, origin: NodeId, now: Instant, effects: &mut Effects) {
        if peer
            .asked_at
            .is_some_and(|at| now.saturating_duration_since(at) < ASK_AGAIN)
        {
            return;
        }
        peer.asked_at = Some(now);
        effects.replies.push(Message::StateRequest { of: origin });
    }

    /// Forgets the nodes not heard from for `down_after`: their presences
    /// leave.
    pub(crate) fn expire(&mut self, now: Instant, down_after: Duration) -> Vec<Gone> {
        let mut leaves = Vec::new();
        self.peers.retain(|_, peer| {
            let alive = now.saturating_duration_since(peer.last_seen) < down_after;
            if !alive {
                leaves.extend(peer.entries.values().map(Entry::gone));
            }
            alive
        });
        leaves
    }

    /// How many other nodes are known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A node's own list, as the tracker keeps it, and its deltas.
    #[derive(Default)]
    struct Owner {
        entries: HashMap<String, Entry>,
        version: u64,
        log_joins: Vec<Entry>,
        log_leaves: Vec<Gone>,
        next: u64,
    }

    impl Owner {
        fn track(&mut self, topic: &str) {
            self.next += 1;
            let phx_ref = format!("r{}", self.next);
            let entry = Entry {
                topic: topic.into(),
                key: format!("k{}", self.next % 5),
                phx_ref: phx_ref.clone(),
                meta: RawValue::from_string(format!(r#"{{"phx_ref":"{phx_ref}"}}"#)).unwrap(),
            };
            self.entries.insert(phx_ref, entry.clone());
            self.log_joins.push(entry);
        }

        fn untrack_oldest(&mut self) {
            let Some(phx_ref) = self.entries.keys().min().cloned() else {
                return;
            };
            let entry = self.entries.remove(&phx_ref).unwrap();
            // A join and a leave in one delta: the leave wins, as a diff.
            self.log_joins.retain(|join| join.phx_ref != phx_ref);
            self.log_leaves.push(entry.gone());
        }

        fn delta(&mut self) -> Option<Message> {
            if self.log_joins.is_empty() && self.log_leaves.is_empty() {
                return None;
            }
            let message = Message::Delta {
                from: self.version,
                joins: std::mem::take(&mut self.log_joins),
                leaves: std::mem::take(&mut self.log_leaves),
            };
            self.version += 1;
            Some(message)
        }

        fn state(&self) -> Message {
            Message::State {
                version: self.version,
                entries: self.entries.values().cloned().collect(),
            }
        }

        fn refs(&self) -> BTreeSet<String> {
            self.entries.keys().cloned().collect()
        }
    }

    /// A small deterministic generator (xorshift), for runs that can be
    /// replayed from their seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The naive model: the receiver's view of the owner is the set of
    /// joins minus leaves it has applied, and after a heartbeat (and the
    /// state it asks for) it must equal the owner's list, whatever was lost.
    #[test]
    fn a_receiver_converges_to_the_owners_list_whatever_the_bus_loses() {
        for seed in 1..300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut owner = Owner::default();
            let mut peers = Peers::new(2);
            let mut view: BTreeSet<String> = BTreeSet::new();
            let start = Instant::now();
            let mut apply = |peers: &mut Peers, message: Message, at: u64, owner: &Owner| {
                let effects = peers.receive(1, message, start + Duration::from_millis(at));
                for gone in &effects.leaves {
                    assert!(
                        view.remove(&gone.phx_ref),
                        "seed {seed}: a leave of what was not held"
                    );
                }
                for join in &effects.joins {
                    assert!(
                        view.insert(join.phx_ref.clone()),
                        "seed {seed}: a join twice"
                    );
                }
                effects
                    .replies
                    .iter()
                    .any(|reply| matches!(reply, Message::StateRequest { of: 1 }))
                    .then(|| owner.state())
            };
            for step in 0..60u64 {
                match rng.below(3) {
                    0 | 1 => owner.track(if rng.below(2) == 0 { "a" } else { "b" }),
                    _ => owner.untrack_oldest(),
                }
                if rng.below(2) == 0
                    && let Some(delta) = owner.delta()
                    && rng.below(4) != 0
                {
                    // Delivered (a quarter are lost).
                    if let Some(state) = apply(&mut peers, delta, step * 10, &owner)
                        && rng.below(3) != 0
                    {
                        apply(&mut peers, state, step * 10, &owner);
                    }
                }
                if rng.below(5) == 0 {
                    let heartbeat = Message::Heartbeat {
                        version: owner.version,
                    };
                    if let Some(state) = apply(&mut peers, heartbeat, step * 10, &owner) {
                        apply(&mut peers, state, step * 10, &owner);
                    }
                }
            }
            // Quiet: the last delta goes out, then a heartbeat later on.
            if let Some(delta) = owner.delta() {
                apply(&mut peers, delta, 10_000, &owner);
            }
            let heartbeat = Message::Heartbeat {
                version: owner.version,
            };
            if let Some(state) = apply(&mut peers, heartbeat, 20_000, &owner) {
                apply(&mut peers, state, 20_000, &owner);
            }
            assert_eq!(view, owner.refs(), "seed {seed}");
        }
    }

    #[test]
    fn every_message_survives_json() {
        let entry = Entry {
            topic: "t".into(),
            key: "k".into(),
            phx_ref: "r".into(),
            meta: RawValue::from_string(r#"{"phx_ref":"r","x":[1]}"#.into()).unwrap(),
        };
        let gone = entry.gone();
        let messages = [
            Message::Heartbeat { version: 3 },
            Message::Delta {
                from: 2,
                joins: vec![entry.clone()],
                leaves: vec![gone],
            },
            Message::StateRequest { of: u64::MAX },
            Message::State {
                version: 3,
                entries: vec![entry],
            },
            Message::Bye,
        ];
        for message in messages {
            let json = serde_json::to_string(&message).unwrap();
            let back: Message = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
        assert!(serde_json::from_str::<Message>(r#"{"delta":{"from":"x"}}"#).is_err());
    }

    #[test]
    fn a_silent_node_expires_and_a_bye_leaves_at_once() {
        let start = Instant::now();
        let entry = |phx_ref: &str| Entry {
            topic: "t".into(),
            key: "k".into(),
            phx_ref: phx_ref.into(),
            meta: RawValue::from_string("{}".into()).unwrap(),
        };
        let mut peers = Peers::new(9);
        let state = |refs: &[&str]| Message::State {
            version: 3,
            entries: refs.iter().map(|r| entry(r)).collect(),
        };
        assert_eq!(peers.receive(1, state(&["a", "b"]), start).joins.len(), 2);
        assert_eq!(peers.receive(2, state(&["c"]), start).joins.len(), 1);
        let later = start + Duration::from_secs(20);
        peers.receive(2, Message::Heartbeat { version: 3 }, later);
        let gone = peers.expire(start + Duration::from_secs(31), Duration::from_secs(30));
        let refs: BTreeSet<_> = gone.into_iter().map(|gone| gone.phx_ref).collect();
        assert_eq!(refs, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.receive(2, Message::Bye, later).leaves.len(), 1);
        assert_eq!(peers.len(), 0);
        // A node's own messages, come back from the broker, do nothing.
        assert!(peers.receive(9, state(&["x"]), later).joins.is_empty());
        // A state request is answered only by the node asked.
        assert!(
            peers
                .receive(1, Message::StateRequest { of: 9 }, later)
                .send_state
        );
        assert!(
            !peers
                .receive(1, Message::StateRequest { of: 8 }, later)
                .send_state
        );
    }
}
