//! History and recovery: a client that loses its connection gets what was
//! published meanwhile when it joins again, or is told it cannot.
//!
//! The design is Centrifugo's. A topic that a [`History`] rule covers is a
//! stream: every publication gets the next offset (dense, from 1) and is
//! kept, up to the rule's size and for its TTL; the stream has an *epoch*,
//! a name that changes when its storage is lost, so that an offset is
//! never mistaken for one of an earlier life. A Phoenix client joins with
//! its last position (`{"recover": {"epoch": "…", "offset": 17}}` in the
//! join payload) and the join's reply says where the stream is and whether
//! every missed publication follows (`"history": {"epoch", "offset",
//! "recovered"}`); they come right after the reply, in order, before any
//! live one, each a broadcast whose ref is `"@<offset>"`. Recovery is
//! never partial: past [`MAX_RECOVERED`] missed, an epoch that changed, or
//! publications that expired, the answer is `"recovered": false` and the
//! application refetches.
//!
//! # No gap, no duplicate
//!
//! The join subscribes its connection *before* it reads the history. Live
//! broadcasts that reach the subscription before the read is answered are
//! held back (a stream in another process answers later); once it is
//! answered, those at or below the read's top offset are dropped (the
//! history had them) and the rest follow the recovered ones. Every
//! publication with history reaches each node in offset order: the
//! memory store delivers under the stream's lock, and the Redis store
//! delivers what its one script published, in the order Redis ran it.
//!
//! # Stores
//!
//! [`HistoryStore::memory`] keeps streams in this process, for a single
//! node; a cluster on Redis takes its store from
//! [`Cluster::history_store`](crate::cluster::Cluster::history_store),
//! which assigns offsets and publishes in one Lua script.

mod memory;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub(crate) use memory::MemoryHistory;

use super::stats::{ChannelCounters, count};
use crate::{
    conflation::TopicPattern,
    pubsub::ConnId,
    reactor::{ConnHandle, ServerHandle},
};

/// The most missed publications one join recovers; past it the answer is
/// `recovered: false` (Centrifugo's default too).
pub const MAX_RECOVERED: usize = 300;

/// The most topics an in-process history store keeps by default.
pub(crate) const DEFAULT_HISTORY_TOPICS: usize = 100_000;

/// The most bytes of publications an in-process history store keeps by
/// default.
pub(crate) const DEFAULT_HISTORY_BYTES: usize = 256 << 20;

/// The longest a history is kept.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest epoch a client may send back.
const MAX_EPOCH_LEN: usize = 64;

/// How a topic's history is kept: how many publications, for how long.
/// Off unless a rule covers the topic
/// ([`Channels::history`](super::Channels::history)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use herald::channels::History;
///
/// let rule = History::new().size(100).ttl(Duration::from_secs(300));
/// assert_eq!(rule.max_size(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    size: usize,
    ttl: Duration,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// 100 publications, kept 5 minutes.
    pub fn new() -> Self {
        Self {
            size: 100,
            ttl: Duration::from_secs(300),
        }
    }

    /// Keeps the latest `size` publications (at least 1).
    pub fn size(mut self, size: usize) -> Self {
        self.size = size.max(1);
        self
    }

    /// Keeps each publication `ttl` (at least 1 ms, at most a year).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_millis(1), MAX_TTL);
        self
    }

    /// How many publications are kept.
    pub fn max_size(&self) -> usize {
        self.size
    }

    /// How long a publication is kept.
    pub fn max_age(&self) -> Duration {
        self.ttl
    }
}

/// A place in a topic's stream: its epoch and the offset of the last
/// publication seen (0: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream's identity; a new one means its history was lost.
    pub epoch: String,
    /// The offset of the last publication.
    pub offset: u64,
}

/// One publication kept in a topic's history.
#[derive(Debug, Clone, Serialize)]
pub struct Publication {
    /// Its offset in the stream (from 1).
    pub offset: u64,
    /// The event.
    pub event: String,
    /// The payload, as published.
    pub payload: Box<RawValue>,
}

impl Publication {
    /// About what it takes on the wire and in memory.
    pub(crate) fn wire_size(&self) -> usize {
        self.event.len() + self.payload.get().len() + 64
    }
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store could not be reached or answered garbage.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
}

/// Why a recovery was refused (`recovered: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRecovered {
    /// The stream's epoch is not the client's.
    Epoch,
    /// More than [`MAX_RECOVERED`] were missed, or more bytes than half
    /// the connection's queue limit.
    TooMany,
    /// Missed publications are gone (size or TTL), or the offset was never
    /// reached.
    Gone,
    /// The store did not answer.
    Unavailable,
}

impl NotRecovered {
    /// The reason as the join reply names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Epoch => "epoch",
            Self::TooMany => "too_many",
            Self::Gone => "gone",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What a store read for a join: where the stream is, and what the client
/// missed.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// The stream's top (`None`: the store did not answer).
    pub(crate) top: Option<StreamPosition>,
    /// The missed publications, in order, when all of them are here.
    pub(crate) outcome: Result<Vec<Publication>, NotRecovered>,
}

impl Recovery {
    /// A store that did not answer.
    pub(crate) fn unavailable() -> Self {
        Self {
            top: None,
            outcome: Err(NotRecovered::Unavailable),
        }
    }

    /// Decides a recovery from `since` (the client's position, if it sent
    /// one) in a stream at `top`, whose oldest kept publication is
    /// `oldest` (`None`: nothing kept), given the publications after
    /// `since` that `read` returns (called only if they can all be there).
    pub(crate) fn decide(
        since: Option<&StreamPosition>,
        top: StreamPosition,
        oldest: Option<u64>,
        read: impl FnOnce(u64) -> Vec<Publication>,
    ) -> Self {
        let outcome = match since {
            None => Ok(Vec::new()),
            Some(since) => decide_outcome(since, &top, oldest, read),
        };
        Self {
            top: Some(top),
            outcome,
        }
    }
}

fn decide_outcome(
    since: &StreamPosition,
    top: &StreamPosition,
    oldest: Option<u64>,
    read: impl FnOnce(u64) -> Vec<Publication>,
) -> Result<Vec<Publication>, NotRecovered> {
    if since.epoch != top.epoch {
        return Err(NotRecovered::Epoch);
    }
    if since.offset > top.offset {
        return Err(NotRecovered::Gone);
    }
    let missed = top.offset - since.offset;
    if missed == 0 {
        return Ok(Vec::new());
    }
    if missed > MAX_RECOVERED as u64 {
        return Err(NotRecovered::TooMany);
    }
    if oldest.is_none_or(|oldest| oldest > since.offset + 1) {
        return Err(NotRecovered::Gone);
    }
    let publications = read(since.offset);
    // A store that lost some meanwhile (a TTL that just ran out) must not
    // answer with a gap.
    let dense = publications.len() as u64 == missed
        && publications
            .iter()
            .zip(since.offset + 1..)
            .all(|(publication, offset)| publication.offset == offset);
    if dense {
        Ok(publications)
    } else {
        Err(NotRecovered::Gone)
    }
}

/// A client's recovery request, from its join payload: `Ok(None)` when it
/// asked for none, `Err` when `recover` is malformed.
pub(crate) fn requested(payload: &RawValue) -> Result<Option<StreamPosition>, &'static str> {
    #[derive(Deserialize)]
    struct JoinPayload<'a> {
        #[serde(borrow, default)]
        recover: Option<&'a RawValue>,
    }
    if !payload.get().trim_ascii_start().starts_with('{') {
        return Ok(None); // only an object names fields
    }
    // A valid object fails only with `recover` named twice.
    let join =
        serde_json::from_str::<JoinPayload<'_>>(payload.get()).map_err(|_| INVALID_RECOVER)?;
    let Some(recover) = join.recover else {
        return Ok(None);
    };
    if recover.get() == "null" {
        return Ok(None);
    }
    if !recover.get().starts_with('{') {
        return Err(INVALID_RECOVER);
    }
    let position: StreamPosition =
        serde_json::from_str(recover.get()).map_err(|_| INVALID_RECOVER)?;
    if position.epoch.len() > MAX_EPOCH_LEN {
        return Err(INVALID_RECOVER);
    }
    Ok(Some(position))
}

/// The join error for a malformed `recover`.
pub(crate) const INVALID_RECOVER: &str =
    "invalid recover: expected {\"epoch\": string, \"offset\": non-negative integer}";

/// `response` (a join's reply) with `"history": {...}` first in it, if it
/// is an object; as it is otherwise.
pub(crate) fn reply_with_history(
    response: &RawValue,
    top: Option<&StreamPosition>,
    outcome: Option<NotRecovered>,
    asked: bool,
) -> Option<Box<RawValue>> {
    #[derive(Serialize)]
    struct Summary<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        recovered: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    }
    let summary = Summary {
        epoch: top.map(|top| top.epoch.as_str()),
        offset: top.map(|top| top.offset),
        recovered: asked && outcome.is_none(),
        reason: outcome.map(NotRecovered::as_str),
    };
    let summary = serde_json::to_string(&summary).ok()?;
    let body = response.get().trim_ascii();
    let rest = body.strip_prefix('{')?.trim_ascii_start();
    let merged = if rest == "}" {
        format!("{{\"history\":{summary}}}")
    } else {
        format!("{{\"history\":{summary},{rest}")
    };
    RawValue::from_string(merged).ok()
}

/// A history store: where offsets are assigned and publications kept.
pub(crate) trait HistoryBackend: Send + Sync + fmt::Debug {
    /// Publishes `event` with `payload` to `topic` with the stream's next
    /// offset, and delivers it to this node's subscribers (now, or when
    /// the broker brings it back) in offset order.
    fn publish(&self, publish: Publish<'_>) -> Result<(), HistoryError>;

    /// Reads what a joining client missed: answered now (`Some`), or
    /// later through `reply` (`None`).
    fn recover(&self, read: RecoveryRead) -> Option<Recovery>;

    /// The stream's position and its latest `limit` publications, oldest
    /// first. Blocks: call it off the loops.
    fn latest(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<(Option<StreamPosition>, Vec<Publication>), HistoryError>;

    /// Removes the topic's history (its epoch too). Blocks. Returns
    /// whether there was one.
    fn remove(&self, topic: &str) -> Result<bool, HistoryError>;

    /// Claims a publish key (an HTTP API request's `Idempotency-Key`)
    /// for `ttl`: `true` the first time, `false` while it is claimed.
    /// Blocks on a remote store.
    fn claim(&self, key: &str, ttl: Duration) -> Result<bool, HistoryError>;

    /// Forgets what has expired (called every second or so).
    fn sweep(&self) {}

    /// Whether every node of a cluster shares this store.
    fn shared(&self) -> bool {
        false
    }

    /// Where this store delivers the broadcasts it publishes.
    fn attach(&self, _server: ServerHandle) {}
}

/// One publication to make.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    pub(crate) topic: &'a str,
    pub(crate) rule: History,
    pub(crate) event: &'a str,
    pub(crate) payload: Box<RawValue>,
    /// The connection that must not receive it (`broadcast_from`).
    pub(crate) exclude: Option<(usize, ConnId)>,
}

/// One join's read of the history.
#[derive(Debug)]
pub(crate) struct RecoveryRead {
    pub(crate) topic: Arc<str>,
    pub(crate) rule: History,
    pub(crate) since: Option<StreamPosition>,
    /// Where an answer given later goes.
    pub(crate) reply: RecoveryReply,
}

/// Where a recovery answered later goes: the joining connection's loop.
/// Dropped unanswered (a store that stopped), it answers "unavailable".
#[derive(Debug)]
pub(crate) struct RecoveryReply {
    conn: ConnHandle,
    topic: Arc<str>,
    id: u64,
    /// Set once answered: the join's deadline then posts nothing.
    pub(crate) answered: Arc<AtomicBool>,
}

impl RecoveryReply {
    pub(crate) fn new(conn: ConnHandle, topic: Arc<str>, id: u64) -> Self {
        Self {
            conn,
            topic,
            id,
            answered: Arc::default(),
        }
    }

    /// Sends the answer to the connection (gone: dropped).
    pub(crate) fn send(self, recovery: Recovery) {
        self.post(recovery);
    }

    /// For a store that answers at once (the answer is returned, not
    /// sent): nothing is posted, not even on drop.
    pub(crate) fn answered_now(&self) {
        self.answered.store(true, Ordering::Release);
    }

    fn post(&self, recovery: Recovery) {
        if self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        let answer = RecoveryAnswer {
            topic: Arc::clone(&self.topic),
            id: self.id,
            recovery: std::sync::Mutex::new(Some(recovery)),
        };
        let _ = self.conn.send_answer(Arc::new(answer));
    }
}

impl Drop for RecoveryReply {
    fn drop(&mut self) {
        self.post(Recovery::unavailable());
    }
}

/// A recovery read answered later, on its way to the joining connection.
pub(crate) struct RecoveryAnswer {
    pub(crate) topic: Arc<str>,
    pub(crate) id: u64,
    /// Taken by the loop (messages to a connection are shared).
    pub(crate) recovery: std::sync::Mutex<Option<Recovery>>,
}

/// The history rules and the store: what the channels layer asks.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    pub(crate) backend: Arc<dyn HistoryBackend>,
}

impl HistoryStore {
    /// Streams kept in this process: for a single node. At most
    /// `max_topics` streams are kept (past that, the one published to
    /// least recently is forgotten: its clients get `recovered: false`),
    /// holding at most `max_bytes` of publications (past that, the oldest
    /// go, those of the topics published to least recently first).
    pub fn memory(max_topics: usize, max_bytes: usize) -> Self {
        Self {
            backend: Arc::new(MemoryHistory::new(max_topics, max_bytes)),
        }
    }

    /// The topic's position and its latest `limit` publications, oldest
    /// first. Blocks on a remote store: call it off the event loops.
    pub fn latest(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<(Option<StreamPosition>, Vec<Publication>), HistoryError> {
        self.backend.latest(topic, limit)
    }

    /// Removes the topic's history and epoch: clients behind get
    /// `recovered: false`. Blocks on a remote store.
    pub fn remove(&self, topic: &str) -> Result<bool, HistoryError> {
        self.backend.remove(topic)
    }

    /// Claims `key` for `ttl`, so that a publish retried with the same key
    /// is made once: `Ok(true)` the first time, `Ok(false)` while the key
    /// is claimed. Shared by every node on Redis; per process in memory
    /// (at most 100,000 keys). Blocks on a remote store.
    pub fn claim_publish_key(&self, key: &str, ttl: Duration) -> Result<bool, HistoryError> {
        self.backend.claim(key, ttl)
    }
}

/// Which topics keep history, by pattern; the first rule that matches
/// wins (a rule may say "no history").
#[derive(Debug, Clone, Default)]
pub(crate) struct HistoryRules {
    rules: Vec<(TopicPattern, Option<History>)>,
    /// Whether any rule keeps history (else no topic is looked up).
    any: bool,
}

impl HistoryRules {
    pub(crate) fn push(&mut self, pattern: &str, rule: Option<History>) {
        self.any |= rule.is_some();
        self.rules.push((TopicPattern::new(pattern), rule));
    }

    /// Whether no topic keeps history.
    pub(crate) fn is_empty(&self) -> bool {
        !self.any
    }

    /// The rule for `topic`, if one covers it.
    pub(crate) fn rule_for(&self, topic: &str) -> Option<History> {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .and_then(|&(_, rule)| rule)
    }
}

/// Rules and store together, shared by the loops and the engine handle.
#[derive(Debug, Clone)]
pub(crate) struct Histories {
    pub(crate) rules: HistoryRules,
    pub(crate) store: HistoryStore,
    pub(crate) counters: Arc<ChannelCounters>,
}

impl Histories {
    /// Publishes `event` to `topic`, which keeps history under `rule`,
    /// through the store: the publication takes its offset there and
    /// reaches the loops in offset order. Logs and returns `false` if the
    /// store refused it.
    pub(crate) fn publish(
        &self,
        topic: &str,
        rule: History,
        event: &str,
        payload: Box<RawValue>,
        exclude: Option<(usize, ConnId)>,
    ) -> bool {
        let publish = Publish {
            topic,
            rule,
            event,
            payload,
            exclude,
        };
        match self.store.backend.publish(publish) {
            Ok(()) => {
                count(&self.counters.history_appends);
                true
            }
            Err(err) => {
                tracing::warn!(%err, topic, "broadcast with history not published");
                false
            }
        }
    }

    /// The rule for `topic`, if it keeps history.
    #[inline]
    pub(crate) fn rule_for(&self, topic: &str) -> Option<History> {
        if self.rules.is_empty() {
            return None;
        }
        self.rules.rule_for(topic)
    }
}

#[cfg(test)]
mod tests;
