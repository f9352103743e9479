//! History on Redis: one Lua script assigns a publication its offset,
//! appends it to the topic's capped stream, renews the TTLs and publishes
//! it, atomically; every node (the publisher's too) delivers what Redis
//! publishes, so every node sees a topic's publications in offset order.
//!
//! # Keys
//!
//! - `herald:history:{topic}`: a stream whose entry ids are `0-<offset>`
//!   (dense, so a read from an offset is one `XRANGE`), each entry the
//!   publication's bus envelope, capped with `XADD … MAXLEN`, expiring
//!   the rule's TTL after the last publication;
//! - `herald:history-meta:{topic}`: a hash with the epoch (`e`) and the
//!   last offset (`s`), kept a day (or the rule's TTL, if longer) after the
//!   last publication: a Redis that lost its data (restarted without
//!   persistence) has no epoch, the next script makes a new one (and drops
//!   any stream left without its meta, whose ids would be ahead of the new
//!   offsets), and clients behind get `recovered: false`.
//!
//! # What Redis publishes
//!
//! `0xFE`, the offset in decimal, a space, the epoch, a space, the
//! excluded connection (`loop.id`, or `-`), a space, then the envelope.
//! The excluded connection means something only to the node the envelope
//! names as its origin.

use std::{
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Content, Envelope, NodeId, runtime::Bus};
use crate::{
    channels::history::{
        HistoryBackend, HistoryError, Publication, Publish, Recovery, RecoveryRead, StreamPosition,
    },
    pubsub::ConnId,
};

/// The first byte of what the publish script publishes (an envelope's
/// first byte is its version, 1).
pub(crate) const HISTORY_MARK: u8 = 0xFE;

/// How long a stream's epoch and last offset outlive its last
/// publication.
pub(crate) const META_TTL_MS: u64 = 24 * 3600 * 1000;

/// KEYS: stream, meta. ARGV: channel, size, TTL ms, meta TTL ms, a new
/// epoch, the excluded connection, the envelope.
pub(crate) const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('hget', KEYS[2], 'e')
local offset = 1
if epoch then
  offset = tonumber(redis.call('hget', KEYS[2], 's') or '0') + 1
else
  epoch = ARGV[5]
  redis.call('del', KEYS[1])
end
-- Appended before the offset is taken: a refused XADD (out of memory)
-- uses up no offset.
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], '0-' .. offset, 'd', ARGV[7])
redis.call('hset', KEYS[2], 'e', epoch, 's', offset)
redis.call('pexpire', KEYS[1], ARGV[3])
redis.call('pexpire', KEYS[2], ARGV[4])
redis.call('publish', ARGV[1], '\254' .. offset .. ' ' .. epoch .. ' ' .. ARGV[6] .. ' ' .. ARGV[7])
return offset
";

/// KEYS: stream, meta. ARGV: the client's offset (-1: none), the most
/// entries to return, a new epoch, the TTL in ms of a meta made here. Returns the epoch, the
/// last offset, and the entries after the client's offset if they can all
/// be there.
pub(crate) const READ_SCRIPT: &str = r"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 's', 0)
  redis.call('pexpire', KEYS[2], ARGV[4])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local since = tonumber(ARGV[1])
local entries = {}
if since >= 0 and since < top and top - since <= tonumber(ARGV[2]) then
  entries = redis.call('xrange', KEYS[1], '0-' .. (since + 1), '+', 'COUNT', ARGV[2])
end
return {epoch, top, entries}
";

/// The stream key of `topic`.
pub(crate) fn stream_key(topic: &str) -> String {
    format!("herald:history:{topic}")
}

/// The meta key of `topic`.
pub(crate) fn meta_key(topic: &str) -> String {
    format!("herald:history-meta:{topic}")
}

/// Makes epochs: distinct per call, unlikely to be another node's.
#[derive(Debug)]
pub(crate) struct Epochs {
    node: NodeId,
    next: AtomicU64,
    hasher: RandomState,
}

impl Epochs {
    pub(crate) fn new(node: NodeId) -> Self {
        Self {
            node,
            next: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn fresh(&self) -> String {
        let count = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}", self.hasher.hash_one((self.node, count)) as u32)
    }
}

/// The excluded connection as the publish script carries it.
pub(crate) fn encode_exclusion(exclude: Option<(usize, ConnId)>) -> String {
    match exclude {
        Some((loop_index, conn)) => format!("{loop_index}.{}", conn.to_bits()),
        None => "-".to_owned(),
    }
}

/// A publication as Redis published it: its place in the stream, the
/// connection it excludes, and its envelope.
#[derive(Debug)]
pub(crate) struct Published<'a> {
    pub(crate) offset: u64,
    pub(crate) epoch: &'a str,
    pub(crate) exclude: Option<(usize, ConnId)>,
    pub(crate) envelope: &'a [u8],
}

/// Reads what the publish script published; `None` if it is not that.
pub(crate) fn decode_published(bytes: &[u8]) -> Option<Published<'_>> {
    let rest = bytes.strip_prefix(&[HISTORY_MARK])?;
    let (offset, rest) = split_word(rest)?;
    let (epoch, rest) = split_word(rest)?;
    let (exclude, envelope) = split_word(rest)?;
    let offset = std::str::from_utf8(offset).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(epoch)
        .ok()
        .filter(|epoch| !epoch.is_empty())?;
    let exclude = match exclude {
        b"-" => None,
        text => {
            let (loop_index, conn) = std::str::from_utf8(text).ok()?.split_once('.')?;
            Some((
                loop_index.parse().ok()?,
                ConnId::from_bits(conn.parse().ok()?),
            ))
        }
    };
    Some(Published {
        offset,
        epoch,
        exclude,
        envelope,
    })
}

/// The bytes up to the first space (at most 64), and what follows it.
fn split_word(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = bytes.iter().take(65).position(|&byte| byte == b' ')?;
    Some((&bytes[..space], &bytes[space + 1..]))
}

/// Turns the read script's answer into a recovery for `since`.
pub(crate) fn recovery_from(value: &redis::Value, since: Option<&StreamPosition>) -> Recovery {
    let Some((epoch, top, entries)) = read_answer(value) else {
        return Recovery::unavailable();
    };
    let publications: Option<Vec<Publication>> = entries.iter().map(publication_from).collect();
    let Some(publications) = publications else {
        return Recovery::unavailable();
    };
    let oldest = publications.first().map(|publication| publication.offset);
    let top = StreamPosition { epoch, offset: top };
    Recovery::decide(since, top, oldest, |_| publications)
}

fn read_answer(value: &redis::Value) -> Option<(String, u64, &[redis::Value])> {
    let redis::Value::Array(parts) = value else {
        return None;
    };
    let [epoch, top, entries] = parts.as_slice() else {
        return None;
    };
    let epoch = match epoch {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
        redis::Value::SimpleString(text) => text.clone(),
        _ => return None,
    };
    let redis::Value::Int(top) = top else {
        return None;
    };
    let redis::Value::Array(entries) = entries else {
        return None;
    };
    Some((epoch, u64::try_from(*top).ok()?, entries))
}

/// One stream entry: `[id "0-<offset>", ["d", envelope]]`.
fn publication_from(entry: &redis::Value) -> Option<Publication> {
    let redis::Value::Array(parts) = entry else {
        return None;
    };
    let [redis::Value::BulkString(id), redis::Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset = std::str::from_utf8(id)
        .ok()?
        .strip_prefix("0-")?
        .parse()
        .ok()?;
    let [_, redis::Value::BulkString(envelope)] = fields.as_slice() else {
        return None;
    };
    let envelope = Envelope::decode(envelope).ok()?;
    let Content::Channel { event, payload } = envelope.content else {
        return None;
    };
    Some(Publication {
        offset,
        event,
        payload,
    })
}

/// The history store of a cluster on Redis: publishes and reads go
/// through the bus thread; the API's reads and removals use a connection
/// of their own.
pub(crate) struct RedisHistory {
    bus: Arc<Bus>,
    client: Option<redis::Client>,
    /// The API's connection, opened on first use.
    connection: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").finish_non_exhaustive()
    }
}

/// How long an API read or removal may take.
const API_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisHistory {
    pub(crate) fn new(bus: Arc<Bus>, url: &str) -> Self {
        Self {
            bus,
            client: redis::Client::open(url).ok(),
            connection: Mutex::new(None),
        }
    }

    /// Runs `command` on the API's connection, opening it if needed; a
    /// failed command drops the connection.
    fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Pipeline,
    ) -> Result<T, HistoryError> {
        let unavailable = |err: redis::RedisError| HistoryError::Unavailable(err.to_string());
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| HistoryError::Unavailable("invalid Redis URL".into()))?;
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            let connection = client
                .get_connection_with_timeout(API_TIMEOUT)
                .map_err(unavailable)?;
            connection
                .set_read_timeout(Some(API_TIMEOUT))
                .map_err(unavailable)?;
            connection
                .set_write_timeout(Some(API_TIMEOUT))
                .map_err(unavailable)?;
            *slot = Some(connection);
        }
        let connection = slot.as_mut().expect("opened above");
        let result = command.query(connection);
        if result.is_err() {
            *slot = None;
        }
        result.map_err(unavailable)
    }
}

impl HistoryBackend for RedisHistory {
    fn publish(&self, publish: Publish<'_>) -> Result<(), HistoryError> {
        self.bus.publish_history(publish);
        Ok(())
    }

    fn recover(&self, read: RecoveryRead) -> Option<Recovery> {
        self.bus.read_history(read);
        None
    }

    fn latest(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<(Option<StreamPosition>, Vec<Publication>), HistoryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(meta_key(topic)).arg("e").arg("s");
        pipe.cmd("XREVRANGE")
            .arg(stream_key(topic))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit.max(1));
        let (meta, entries): ((Option<String>, Option<u64>), Vec<redis::Value>) =
            self.query(&pipe)?;
        let position = match meta {
            (Some(epoch), offset) => Some(StreamPosition {
                epoch,
                offset: offset.unwrap_or(0),
            }),
            (None, _) => None,
        };
        let mut latest: Vec<Publication> = entries.iter().filter_map(publication_from).collect();
        latest.truncate(limit);
        latest.reverse();
        Ok((position, latest))
    }

    fn remove(&self, topic: &str) -> Result<bool, HistoryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(stream_key(topic)).arg(meta_key(topic));
        let (removed,): (u64,) = self.query(&pipe)?;
        Ok(removed > 0)
    }

    fn claim(&self, key: &str, ttl: Duration) -> Result<bool, HistoryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("herald:publish-key:{key}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let (claimed,): (Option<String>,) = self.query(&pipe)?;
        Ok(claimed.is_some())
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn published_messages_round_trip_and_garbage_is_refused() {
        let conn = ConnId::new(7, 3);
        let mut bytes = vec![HISTORY_MARK];
        bytes.extend_from_slice(format!("42 ep {} ", encode_exclusion(Some((1, conn)))).as_bytes());
        bytes.extend_from_slice(b"ENVELOPE");
        let published = decode_published(&bytes).unwrap();
        assert_eq!((published.offset, published.epoch), (42, "ep"));
        assert_eq!(published.exclude, Some((1, conn)));
        assert_eq!(published.envelope, b"ENVELOPE");
        let none = [&[HISTORY_MARK][..], b"7 ep - E"].concat();
        assert_eq!(decode_published(&none).unwrap().exclude, None);
        for garbage in [
            &b""[..],
            b"\x01 - E",
            b"\xFE",
            b"\xFEx ep - E",
            b"\xFE1 ep 1.x E",
            b"\xFE-1 ep - E",
            b"\xFE99999999999999999999999 ep - E",
            b"\xFE1 ep -E",
            b"\xFE1  - E",
        ] {
            assert!(decode_published(garbage).is_none(), "{garbage:?}");
        }
    }

    #[test]
    fn read_answers_become_recoveries() {
        use redis::Value::{Array, BulkString, Int};
        let envelope = |event: &str| {
            let payload = RawValue::from_string("{}".into()).unwrap();
            let envelope = super::super::envelope::encode_channel(1, "t", event, &payload);
            BulkString(envelope.unwrap().to_vec())
        };
        let entry = |offset: u64| {
            Array(vec![
                BulkString(format!("0-{offset}").into_bytes()),
                Array(vec![BulkString(b"d".to_vec()), envelope("e")]),
            ])
        };
        let answer = Array(vec![
            BulkString(b"ep".to_vec()),
            Int(5),
            Array(vec![entry(4), entry(5)]),
        ]);
        let since = StreamPosition {
            epoch: "ep".into(),
            offset: 3,
        };
        let recovery = recovery_from(&answer, Some(&since));
        let offsets: Vec<u64> = recovery.outcome.unwrap().iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [4, 5]);
        // A gap (entry 4 trimmed away) is not a recovery.
        let gap = Array(vec![
            BulkString(b"ep".to_vec()),
            Int(5),
            Array(vec![entry(5)]),
        ]);
        assert!(recovery_from(&gap, Some(&since)).outcome.is_err());
        // Garbage from the store: unavailable, never a panic.
        for garbage in [Int(1), Array(vec![]), Array(vec![Int(1), Int(2), Int(3)])] {
            let recovery = recovery_from(&garbage, Some(&since));
            assert!(recovery.top.is_none());
        }
    }
}
