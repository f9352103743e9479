//! Presence: who is on a topic, in the wire format of Phoenix.Presence, so
//! that the phoenix npm client's `Presence` class works unmodified.
//!
//! Each tracked presence is a *meta*: the application's JSON object plus a
//! unique `phx_ref`, under a *key* (a user id: one user with two tabs is
//! one key with two metas). A client that joins gets the topic's whole
//! list as a `presence_state` push after its join reply; every change
//! reaches the topic's subscribers as a `presence_diff` broadcast
//! (`{"joins": {key: {"metas": [...]}}, "leaves": {...}}`), encoded once
//! per wire protocol like any broadcast. An update is the join of a new
//! meta carrying `phx_ref_prev` and the leave of the old one.
//!
//! Diffs are coalesced per topic over a short window ([`DIFF_WINDOW`]):
//! under a join storm of N clients each subscriber receives one diff per
//! window instead of N, while a single join is seen within the window. A
//! diff may hold the join and the leave of one meta (phoenix.js applies
//! joins, then leaves): nothing is cancelled inside a window, because a
//! client may already hold the meta from its `presence_state`.
//!
//! A joining client's `presence_state` is the topic's list as of the last
//! diff sent (a snapshot serialized once per window, shared by every join
//! of that window), and the changes since then reach it in the next diff:
//! it is subscribed before it is sent the state, and phoenix.js holds diffs
//! back until it has the state, then applies them (a join it already has
//! is not doubled; a leave of a meta it never had is nothing). So a join
//! storm costs one serialization of the list per window, not one per join,
//! and a joining client sees itself in the next diff.
//!
//! The list lives in one tracker per engine, behind a mutex: presence
//! changes come with joins and leaves, not with every broadcast, so plain
//! broadcasts never touch it. With a cluster bus it also holds the other
//! nodes' presences, replicated as `sync.rs` describes, and each node sends
//! its own clients the diffs of every node's changes.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use indexmap::IndexMap;

use super::census::{Listener, TopicEvent};
pub(crate) use sync::NodeId;
use sync::{Entry, Gone, Message, Peers};

mod sync;
use serde::Serialize;
use serde_json::{Map, Value, value::RawValue};
use sync::HEARTBEAT;

/// How long changes to a topic's presence wait to go out as one diff. At
/// 50 ms a human sees "online" as at once, and a storm of 500 joins a
/// second costs each subscriber 20 diffs a second, not 500.
pub const DIFF_WINDOW: Duration = Duration::from_millis(50);

/// The event of the full list pushed to a joining client.
pub const PRESENCE_STATE: &str = "presence_state";
/// The event of the changes broadcast to a topic.
pub const PRESENCE_DIFF: &str = "presence_diff";

/// Why a presence could not be tracked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The meta is not a JSON object (Phoenix metas are maps).
    #[error("presence metadata must serialize to a JSON object")]
    MetaNotAnObject,
    /// The meta could not be serialized.
    #[error("presence metadata could not be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One tracked presence: its ref and its meta as sent (`phx_ref` included).
#[derive(Debug, Clone)]
struct Meta {
    phx_ref: Arc<str>,
    json: Arc<RawValue>,
    /// Tracked by this node's clients (else replicated from another's).
    local: bool,
}

/// A topic's presences: metas by key, in the order keys first appeared.
type Presences = IndexMap<Arc<str>, Vec<Meta>>;

/// The joins and leaves of one topic not yet broadcast.
#[derive(Debug, Default)]
struct Diff {
    joins: Presences,
    leaves: Presences,
}

/// This node's presences and the diffs waiting for their window.
#[derive(Debug, Default)]
struct Tracker {
    topics: HashMap<Arc<str>, Presences>,
    pending: HashMap<Arc<str>, Diff>,
    /// Each topic's list as of its last diff, in `presence_state` form,
    /// shared by every frame that sends it.
    snapshots: HashMap<Arc<str>, Bytes>,
    /// Distinguishes this tracker's refs from another run's.
    incarnation: u64,
    next_ref: u64,
    /// Replication with the other nodes, once linked to a cluster bus.
    cluster: Option<Replication>,
}

/// This node's side of presence replication (see `sync.rs`).
#[derive(Debug)]
struct Replication {
    peers: Peers,
    /// This node's changes since its last delta.
    joins: Vec<Entry>,
    leaves: Vec<Gone>,
    /// Deltas sent.
    version: u64,
    heartbeat_at: Option<Instant>,
    down_after: Duration,
    /// Set once this node has said goodbye: it tells the others nothing
    /// more (they have dropped its presences, and must not take it back).
    left: bool,
}

/// The engine's presence tracker, shared by its loops.
#[derive(Debug, Default)]
pub(crate) struct PresenceTracker {
    tracker: Mutex<Tracker>,
    /// Wakes the diff sender when a first change is pending, or to stop.
    changed: Condvar,
    /// Set when the engine has stopped: the diff sender ends.
    stopped: AtomicBool,
    /// Told of a key's first and last presence on a topic, as this node
    /// tracks and untracks (see `Channels::on_topic_event`).
    observer: std::sync::OnceLock<Listener>,
}

/// A presence this connection tracks, to untrack when it leaves.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub(crate) topic: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) phx_ref: Arc<str>,
}

impl Tracker {
    fn new_ref(&mut self) -> Arc<str> {
        self.next_ref += 1;
        Arc::from(format!("{:x}-{:x}", self.incarnation, self.next_ref).as_str())
    }

    fn pending(&mut self, topic: &Arc<str>) -> &mut Diff {
        self.pending.entry(Arc::clone(topic)).or_default()
    }

    fn add(&mut self, topic: &Arc<str>, key: &Arc<str>, meta: Meta) {
        let presences = self.topics.entry(Arc::clone(topic)).or_default();
        presences
            .entry(Arc::clone(key))
            .or_default()
            .push(meta.clone());
        let diff = self.pending(topic);
        diff.joins.entry(Arc::clone(key)).or_default().push(meta);
    }

    /// Notes a change of this node's own list for the next delta.
    fn log_join(&mut self, topic: &str, key: &str, meta: &Meta) {
        if let Some(cluster) = &mut self.cluster {
            cluster.joins.push(Entry {
                topic: topic.to_owned(),
                key: key.to_owned(),
                phx_ref: meta.phx_ref.to_string(),
                meta: (*meta.json).to_owned(),
            });
        }
    }

    fn log_leave(&mut self, topic: &str, key: &str, phx_ref: &str) {
        if let Some(cluster) = &mut self.cluster {
            let before = cluster.joins.len();
            cluster.joins.retain(|join| join.phx_ref != phx_ref);
            if cluster.joins.len() == before {
                cluster.leaves.push(Gone {
                    topic: topic.to_owned(),
                    key: key.to_owned(),
                    phx_ref: phx_ref.to_owned(),
                });
            }
        }
    }

    /// This node's own presences, for a state message.
    fn local_entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (topic, presences) in &self.topics {
            for (key, metas) in presences {
                for meta in metas.iter().filter(|meta| meta.local) {
                    entries.push(Entry {
                        topic: topic.to_string(),
                        key: key.to_string(),
                        phx_ref: meta.phx_ref.to_string(),
                        meta: (*meta.json).to_owned(),
                    });
                }
            }
        }
        entries
    }

    /// Applies other nodes' joins and leaves to the lists (and the
    /// pending diffs).
    fn apply_remote(&mut self, joins: Vec<Entry>, leaves: Vec<Gone>) -> bool {
        let changed = !joins.is_empty() || !leaves.is_empty();
        for gone in leaves {
            let topic: Arc<str> = Arc::from(gone.topic.as_str());
            self.remove(&topic, &gone.key, &gone.phx_ref);
        }
        for entry in joins {
            let meta = Meta {
                phx_ref: Arc::from(entry.phx_ref.as_str()),
                json: Arc::from(entry.meta),
                local: false,
            };
            self.add(
                &Arc::from(entry.topic.as_str()),
                &Arc::from(entry.key.as_str()),
                meta,
            );
        }
        changed
    }

    /// Whether `key` has a presence on `topic`, on any node.
    fn has_key(&self, topic: &str, key: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|presences| presences.contains_key(key))
    }

    fn remove(&mut self, topic: &Arc<str>, key: &str, phx_ref: &str) -> Option<Meta> {
        let presences = self.topics.get_mut(topic)?;
        let metas = presences.get_mut(key)?;
        let at = metas.iter().position(|meta| &*meta.phx_ref == phx_ref)?;
        let meta = metas.remove(at);
        if metas.is_empty() {
            presences.shift_remove(key);
        }
        if presences.is_empty() {
            self.topics.remove(topic);
        }
        let key = Arc::from(key);
        let diff = self.pending(topic);
        diff.leaves.entry(key).or_default().push(meta.clone());
        Some(meta)
    }
}

impl PresenceTracker {
    /// A tracker whose refs are told apart from other runs' by `incarnation`.
    pub(crate) fn new(incarnation: u64) -> Self {
        Self {
            tracker: Mutex::new(Tracker {
                incarnation,
                ..Tracker::default()
            }),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Tells `observer` of keys' first and last presences on topics.
    pub(crate) fn observe(&self, observer: Listener) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer, if any, of `event` (made only if there is one).
    fn tell(&self, event: impl FnOnce() -> TopicEvent) {
        if let Some(Listener(observer)) = self.observer.get() {
            observer(event());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tracker> {
        // A panic while holding the lock cannot leave the maps half
        // changed in a way that matters more than losing presence.
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tracks a presence of `key` on `topic` with `meta`; returns what the
    /// connection keeps to untrack it.
    pub(crate) fn track<T: Serialize + ?Sized>(
        &self,
        topic: &Arc<str>,
        key: &str,
        meta: &T,
    ) -> Result<Tracked, PresenceError> {
        let meta = meta_object(meta)?;
        let mut tracker = self.lock();
        let phx_ref = tracker.new_ref();
        let key: Arc<str> = Arc::from(key);
        let meta = with_refs(meta, &phx_ref, None)?;
        let first = !tracker.has_key(topic, &key);
        tracker.log_join(topic, &key, &meta);
        tracker.add(topic, &key, meta);
        if first {
            // Under the lock, so that events keep the order of the changes
            // (the observer only queues).
            self.tell(|| TopicEvent::MemberAdded {
                topic: topic.to_string(),
                key: key.to_string(),
            });
        }
        drop(tracker);
        self.changed.notify_one();
        Ok(Tracked {
            topic: Arc::clone(topic),
            key,
            phx_ref,
        })
    }

    /// Replaces a tracked presence's meta: the new meta joins with
    /// `phx_ref_prev`, the old one leaves. Returns the new handle, or
    /// `None` if `tracked` is no longer tracked.
    pub(crate) fn update<T: Serialize + ?Sized>(
        &self,
        tracked: &Tracked,
        meta: &T,
    ) -> Result<Option<Tracked>, PresenceError> {
        let meta = meta_object(meta)?;
        let mut tracker = self.lock();
        if tracker
            .remove(&tracked.topic, &tracked.key, &tracked.phx_ref)
            .is_none()
        {
            return Ok(None);
        }
        tracker.log_leave(&tracked.topic, &tracked.key, &tracked.phx_ref);
        let phx_ref = tracker.new_ref();
        let meta = with_refs(meta, &phx_ref, Some(&tracked.phx_ref))?;
        tracker.log_join(&tracked.topic, &tracked.key, &meta);
        tracker.add(&tracked.topic, &tracked.key, meta);
        drop(tracker);
        self.changed.notify_one();
        Ok(Some(Tracked {
            phx_ref,
            ..tracked.clone()
        }))
    }

    /// Untracks a presence (a leave in the next diff).
    pub(crate) fn untrack(&self, tracked: &Tracked) {
        let mut tracker = self.lock();
        let removed = tracker.remove(&tracked.topic, &tracked.key, &tracked.phx_ref);
        if removed.is_some() {
            tracker.log_leave(&tracked.topic, &tracked.key, &tracked.phx_ref);
            if !tracker.has_key(&tracked.topic, &tracked.key) {
                self.tell(|| TopicEvent::MemberRemoved {
                    topic: tracked.topic.to_string(),
                    key: tracked.key.to_string(),
                });
            }
            drop(tracker);
            self.changed.notify_one();
        }
    }

    // ---- Replication with other nodes (see `sync.rs`) ---------------------

    /// Starts replicating with the other nodes as node `me`; a node not
    /// heard from for `down_after` is taken for gone.
    pub(crate) fn link(&self, me: NodeId, down_after: Duration) {
        self.lock().cluster = Some(Replication {
            peers: Peers::new(me),
            joins: Vec::new(),
            leaves: Vec::new(),
            version: 0,
            heartbeat_at: None,
            down_after,
            left: false,
        });
    }

    /// What this node has to tell the others at `now`: its changes since
    /// the last delta, and a heartbeat when one is due. Forgets the nodes
    /// silent for the down period (their presences leave).
    pub(crate) fn sync_outgoing(&self, now: Instant) -> Vec<Bytes> {
        let mut tracker = self.lock();
        let Some(cluster) = tracker.cluster.as_mut() else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        if cluster.left {
            cluster.joins.clear();
            cluster.leaves.clear();
        } else if !cluster.joins.is_empty() || !cluster.leaves.is_empty() {
            messages.push(Message::Delta {
                from: cluster.version,
                joins: std::mem::take(&mut cluster.joins),
                leaves: std::mem::take(&mut cluster.leaves),
            });
            cluster.version += 1;
        }
        let due = !cluster.left
            && cluster
                .heartbeat_at
                .is_none_or(|at| now.saturating_duration_since(at) >= HEARTBEAT);
        if due {
            cluster.heartbeat_at = Some(now);
            messages.push(Message::Heartbeat {
                version: cluster.version,
            });
        }
        let down_after = cluster.down_after;
        let gone = cluster.peers.expire(now, down_after);
        let changed = tracker.apply_remote(Vec::new(), gone);
        drop(tracker);
        if changed {
            self.changed.notify_one();
        }
        messages.iter().filter_map(encode).collect()
    }

    /// Takes another node's message; returns what to answer.
    pub(crate) fn sync_receive(&self, origin: NodeId, message: &[u8], now: Instant) -> Vec<Bytes> {
        let message: Message = match serde_json::from_slice(message) {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(%err, "presence sync message dropped");
                return Vec::new();
            }
        };
        let mut tracker = self.lock();
        let Some(cluster) = tracker.cluster.as_mut() else {
            return Vec::new();
        };
        let effects = cluster.peers.receive(origin, message, now);
        let mut replies = if cluster.left {
            Vec::new()
        } else {
            effects.replies
        };
        if effects.send_state && !cluster.left {
            // The state matches the version only once the changes not yet
            // sent have gone out as a delta.
            if !cluster.joins.is_empty() || !cluster.leaves.is_empty() {
                replies.push(Message::Delta {
                    from: cluster.version,
                    joins: std::mem::take(&mut cluster.joins),
                    leaves: std::mem::take(&mut cluster.leaves),
                });
                cluster.version += 1;
            }
            let version = cluster.version;
            replies.push(Message::State {
                version,
                entries: tracker.local_entries(),
            });
        }
        if tracker.apply_remote(effects.joins, effects.leaves) {
            drop(tracker);
            self.changed.notify_one();
        }
        replies.iter().filter_map(encode).collect()
    }

    /// The goodbye of a node that stops: the others drop its presences,
    /// and it tells them nothing more. `None` once said, or without a
    /// cluster.
    pub(crate) fn sync_bye(&self) -> Option<Bytes> {
        let mut tracker = self.lock();
        let cluster = tracker.cluster.as_mut()?;
        if cluster.left {
            return None;
        }
        cluster.left = true;
        encode(&Message::Bye)
    }

    /// The presences of `topic` in `presence_state` form, as of the last
    /// diff sent (see the module docs).
    pub(crate) fn state(&self, topic: &str) -> Bytes {
        let tracker = self.lock();
        match tracker.snapshots.get(topic) {
            Some(snapshot) => snapshot.clone(),
            None => Bytes::from_static(b"{}"),
        }
    }

    /// [`state`](Self::state) as a JSON value.
    pub(crate) fn state_json(&self, topic: &str) -> Box<RawValue> {
        let state = self.state(topic);
        let text = std::str::from_utf8(&state).unwrap_or("{}");
        to_raw(text.to_owned())
    }

    /// How many keys `topic` has.
    pub(crate) fn count(&self, topic: &str) -> usize {
        self.lock().topics.get(topic).map_or(0, IndexMap::len)
    }

    /// Waits until a change is pending (or `timeout`), then waits out the
    /// coalescing window and takes every pending diff as `(topic,
    /// presence_diff payload)`.
    pub(crate) fn next_diffs(&self, timeout: Duration) -> Vec<(Arc<str>, Box<RawValue>)> {
        let tracker = self.lock();
        let (tracker, _) = self
            .changed
            .wait_timeout_while(tracker, timeout, |tracker| {
                tracker.pending.is_empty() && !self.is_stopped()
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tracker.pending.is_empty() {
            return Vec::new();
        }
        drop(tracker);
        std::thread::sleep(DIFF_WINDOW);
        self.take_diffs()
    }

    /// Every pending diff, as `(topic, presence_diff payload)`; the
    /// snapshots of those topics are brought up to date with them.
    pub(crate) fn take_diffs(&self) -> Vec<(Arc<str>, Box<RawValue>)> {
        let mut tracker = self.lock();
        let pending = std::mem::take(&mut tracker.pending);
        let mut diffs = Vec::with_capacity(pending.len());
        for (topic, diff) in pending {
            let snapshot = tracker.topics.get(&topic).map(presences_json);
            match snapshot {
                Some(json) => {
                    tracker
                        .snapshots
                        .insert(Arc::clone(&topic), Bytes::from(json));
                }
                None => {
                    tracker.snapshots.remove(&topic);
                }
            }
            let mut payload = String::from("{\"joins\":");
            payload.push_str(&presences_json(&diff.joins));
            payload.push_str(",\"leaves\":");
            payload.push_str(&presences_json(&diff.leaves));
            payload.push('}');
            diffs.push((topic, to_raw(payload)));
        }
        diffs
    }

    /// Stops the diff sender: it ends at once instead of waiting.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _guard = self.lock();
        self.changed.notify_all();
    }

    /// Whether the engine has stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// A sync message as JSON (a failure, which cannot happen for these
/// types, drops the message).
fn encode(message: &Message) -> Option<Bytes> {
    serde_json::to_vec(message).ok().map(Bytes::from)
}

/// `meta` as a JSON object.
fn meta_object<T: Serialize + ?Sized>(meta: &T) -> Result<Map<String, Value>, PresenceError> {
    match serde_json::to_value(meta)? {
        Value::Object(object) => Ok(object),
        _ => Err(PresenceError::MetaNotAnObject),
    }
}

/// The meta as sent: the application's fields, `phx_ref`, and for an
/// update `phx_ref_prev`.
fn with_refs(
    mut meta: Map<String, Value>,
    phx_ref: &Arc<str>,
    previous: Option<&Arc<str>>,
) -> Result<Meta, PresenceError> {
    meta.insert("phx_ref".into(), Value::from(&**phx_ref));
    if let Some(previous) = previous {
        meta.insert("phx_ref_prev".into(), Value::from(&**previous));
    }
    let json = serde_json::value::to_raw_value(&meta)?;
    Ok(Meta {
        phx_ref: Arc::clone(phx_ref),
        json: Arc::from(json),
        local: true,
    })
}

/// `{key: {"metas": [meta, ...]}, ...}`, from the metas as stored.
fn presences_json(presences: &Presences) -> String {
    let mut out = String::from("{");
    for (index, (key, metas)) in presences.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        // A string always serializes.
        let key = serde_json::to_string(&**key).unwrap_or_else(|_| "\"\"".into());
        let _ = write!(out, "{key}:{{\"metas\":[");
        for (index, meta) in metas.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(meta.json.get());
        }
        out.push_str("]}");
    }
    out.push('}');
    out
}

/// Text built above from valid JSON pieces, as a raw value.
fn to_raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn value(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).unwrap()
    }

    fn listed(tracker: &PresenceTracker, topic: &str) -> Value {
        serde_json::from_slice(&tracker.state(topic)).unwrap()
    }

    #[test]
    fn state_lists_each_key_with_its_metas_and_refs() {
        let tracker = PresenceTracker::new(7);
        let topic: Arc<str> = Arc::from("room:1");
        let ada = tracker
            .track(&topic, "ada", &json!({"device": "phone"}))
            .unwrap();
        let ada_2 = tracker
            .track(&topic, "ada", &json!({"device": "laptop"}))
            .unwrap();
        tracker.track(&topic, "bob", &json!({})).unwrap();
        assert_ne!(ada.phx_ref, ada_2.phx_ref);
        // The state is the list as of the last diff.
        assert_eq!(listed(&tracker, "room:1"), json!({}));
        tracker.take_diffs();
        let state = listed(&tracker, "room:1");
        assert_eq!(
            state,
            json!({
                "ada": {"metas": [
                    {"device": "phone", "phx_ref": &*ada.phx_ref},
                    {"device": "laptop", "phx_ref": &*ada_2.phx_ref},
                ]},
                "bob": {"metas": [{"phx_ref": "7-3"}]},
            })
        );
        assert_eq!(tracker.count("room:1"), 2);
        assert_eq!(listed(&tracker, "room:2"), json!({}));
    }

    #[test]
    fn diffs_coalesce_joins_updates_and_leaves_per_topic() {
        let tracker = PresenceTracker::new(1);
        let topic: Arc<str> = Arc::from("t");
        let ada = tracker.track(&topic, "ada", &json!({"s": "away"})).unwrap();
        let updated = tracker
            .update(&ada, &json!({"s": "here"}))
            .unwrap()
            .unwrap();
        let bob = tracker.track(&topic, "bob", &json!({})).unwrap();
        tracker.untrack(&bob);
        let diffs = tracker.take_diffs();
        assert_eq!(diffs.len(), 1);
        let (diff_topic, diff) = &diffs[0];
        assert_eq!(&**diff_topic, "t");
        assert_eq!(
            value(diff),
            json!({
                "joins": {
                    "ada": {"metas": [
                        {"s": "away", "phx_ref": "1-1"},
                        {"s": "here", "phx_ref": "1-2", "phx_ref_prev": "1-1"},
                    ]},
                    "bob": {"metas": [{"phx_ref": "1-3"}]},
                },
                "leaves": {
                    "ada": {"metas": [{"s": "away", "phx_ref": "1-1"}]},
                    "bob": {"metas": [{"phx_ref": "1-3"}]},
                },
            })
        );
        assert!(tracker.take_diffs().is_empty());
        assert_eq!(
            listed(&tracker, "t"),
            json!({"ada": {"metas": [
                {"s": "here", "phx_ref": &*updated.phx_ref, "phx_ref_prev": "1-1"}
            ]}})
        );
        // An untracked presence cannot be updated or untracked again.
        tracker.untrack(&updated);
        assert!(tracker.update(&updated, &json!({})).unwrap().is_none());
        tracker.untrack(&updated);
        assert_eq!(tracker.count("t"), 0);
        assert_eq!(tracker.take_diffs().len(), 1);
        assert_eq!(listed(&tracker, "t"), json!({}));
    }

    #[test]
    fn metas_must_be_objects_and_keys_are_escaped() {
        let tracker = PresenceTracker::new(1);
        let topic: Arc<str> = Arc::from("t");
        assert!(matches!(
            tracker.track(&topic, "ada", &[1, 2]),
            Err(PresenceError::MetaNotAnObject)
        ));
        tracker.track(&topic, "a\"b\\c", &json!({})).unwrap();
        tracker.take_diffs();
        let state = listed(&tracker, "t");
        assert!(state.get("a\"b\\c").is_some());
    }
}
