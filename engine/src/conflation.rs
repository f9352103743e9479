//! Topic patterns, and which topics conflate for subscribers that fall
//! behind.
//!
//! Pure settings: no socket, no clock. A [`Conflation`] rule names topics
//! (and optionally a field of each message's payload) whose messages
//! supersede one another, so that a subscriber whose socket cannot keep up
//! is sent the latest message per topic (or per key) instead of every
//! message, and is neither closed nor left with a queue that grows with the
//! publish rate. The write queue does the replacing (`conn/write_queue.rs`);
//! this module only says which messages share a [`ConflationKey`].

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher, RandomState},
};

use serde_json::value::RawValue;

/// A topic pattern, as channel routes declare them: an exact topic, or a
/// prefix when it ends with `*` (`"room:*"`; `"*"` alone matches every
/// topic).
///
/// # Examples
///
/// ```
/// use herald::channels::TopicPattern;
///
/// let rooms = TopicPattern::new("room:*");
/// assert!(rooms.matches("room:lobby"));
/// assert!(!rooms.matches("lobby"));
/// assert!(TopicPattern::new("lobby").matches("lobby"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// This topic only.
    Exact(String),
    /// Every topic that starts with this.
    Prefix(String),
}

impl TopicPattern {
    /// Parses a pattern: a trailing `*` makes it a prefix.
    pub fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == topic,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// Topics whose messages supersede one another for a subscriber that falls
/// behind: the third slow-consumer policy, chosen per topic pattern.
///
/// While a subscriber keeps up it gets every message, and the first message
/// after it fell behind is queued at once like any other. While its socket
/// cannot take more, a new message of a conflated topic replaces the one of
/// the same topic (or the same key) still waiting in its queue, and goes
/// after everything queued before it; so the subscriber always ends with the
/// latest message of each topic or key, its queue holds at most one waiting
/// message per topic or key, and what it is sent stays in publish order.
/// Replaced messages are counted in
/// [`ServerStats::messages_conflated`](crate::ServerStats). The connection's
/// queue limit still applies, with the server's
/// [`SlowConsumerPolicy`](crate::SlowConsumerPolicy), to what conflation
/// cannot bound (many keys, other topics).
///
/// Use it for streams where only the current value matters: prices,
/// positions, scores, dashboards.
///
/// # Examples
///
/// ```
/// use herald::Conflation;
///
/// // A subscriber behind gets the latest message of each `ticker:` topic...
/// let tickers = Conflation::topic("ticker:*");
/// assert!(tickers.applies_to("ticker:EURUSD"));
/// // ...or the latest per `"symbol"` of the payload on `quotes`.
/// let quotes = Conflation::by_key("quotes", "symbol");
/// assert_eq!(quotes.key_field(), Some("symbol"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflation {
    pattern: TopicPattern,
    key_field: Option<Box<str>>,
}

impl Conflation {
    /// Conflates each topic matching `pattern` as a whole: a subscriber that
    /// falls behind gets the latest message of each such topic.
    pub fn topic(pattern: &str) -> Self {
        Self {
            pattern: TopicPattern::new(pattern),
            key_field: None,
        }
    }

    /// Conflates the topics matching `pattern` per value of the payload's
    /// top-level `field`: a subscriber that falls behind gets the latest
    /// message of each topic and key. Messages whose payload lacks the field
    /// (or that have no JSON payload: plain WebSocket publishes, binary
    /// broadcasts) are not conflated: every one is sent.
    pub fn by_key(pattern: &str, field: &str) -> Self {
        Self {
            pattern: TopicPattern::new(pattern),
            key_field: Some(Box::from(field)),
        }
    }

    /// Whether `topic` is conflated by this rule.
    pub fn applies_to(&self, topic: &str) -> bool {
        self.pattern.matches(topic)
    }

    /// The payload field that keys messages, if any.
    pub fn key_field(&self) -> Option<&str> {
        self.key_field.as_deref()
    }

    /// The key a message of `topic` with `payload` is conflated under, or
    /// `None` if it must be sent as it is.
    pub(crate) fn key(
        &self,
        keys: &ConflationKeys,
        topic: &str,
        payload: Option<&RawValue>,
    ) -> Option<ConflationKey> {
        let mut hasher = keys.hasher.build_hasher();
        topic.hash(&mut hasher);
        if let Some(field) = &self.key_field {
            field_value(payload?, field)?.hash(&mut hasher);
        }
        Some(ConflationKey::from_hash(hasher.finish()))
    }
}

/// The first rule in `rules` that conflates `topic`.
pub(crate) fn rule_for<'a>(rules: &'a [Conflation], topic: &str) -> Option<&'a Conflation> {
    rules.iter().find(|rule| rule.applies_to(topic))
}

/// The raw JSON text of a top-level `field` of an object payload (two
/// spellings of one value, `"A"` and `"\u0041"`, are two keys).
fn field_value<'a>(payload: &'a RawValue, field: &str) -> Option<&'a str> {
    let object: HashMap<Cow<'a, str>, &'a RawValue> = serde_json::from_str(payload.get()).ok()?;
    object.get(field).map(|value| value.get())
}

/// What makes two messages supersede one another in one connection's
/// queue: a 63-bit keyed hash of the topic and key (a collision between two
/// of one subscriber's waiting keys, about one in 10^13 for a thousand
/// keys, would send the newer of the two in place of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConflationKey(u64);

impl ConflationKey {
    /// The key with this hash (its top bit is dropped: the write queue
    /// uses it to tell keys from message counts).
    pub(crate) fn from_hash(hash: u64) -> Self {
        Self(hash & !(1 << 63))
    }

    /// The 63 bits.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }
}

/// The hashing keys one loop computes conflation keys with: random per
/// process, so that a publisher cannot choose payload keys that collide.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConflationKeys {
    hasher: RandomState,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn a_topic_rule_gives_every_message_of_a_topic_one_key() {
        let keys = ConflationKeys::default();
        let rule = Conflation::topic("ticker:*");
        let a = rule.key(&keys, "ticker:A", Some(&payload(r#"{"p":1}"#)));
        let a_again = rule.key(&keys, "ticker:A", None);
        let b = rule.key(&keys, "ticker:B", Some(&payload(r#"{"p":1}"#)));
        assert!(a.is_some());
        assert_eq!(a, a_again);
        assert_ne!(a, b);
    }

    #[test]
    fn a_keyed_rule_tells_keys_apart_and_skips_messages_without_one() {
        let keys = ConflationKeys::default();
        let rule = Conflation::by_key("quotes", "symbol");
        let eur = rule.key(&keys, "quotes", Some(&payload(r#"{"symbol":"EUR","p":1}"#)));
        let eur_later = rule.key(&keys, "quotes", Some(&payload(r#"{"p":2,"symbol":"EUR"}"#)));
        let usd = rule.key(&keys, "quotes", Some(&payload(r#"{"symbol":"USD","p":1}"#)));
        assert_eq!(eur, eur_later);
        assert_ne!(eur, usd);
        assert_eq!(
            rule.key(&keys, "quotes", Some(&payload(r#"{"p":1}"#))),
            None
        );
        assert_eq!(rule.key(&keys, "quotes", Some(&payload("[1,2]"))), None);
        assert_eq!(rule.key(&keys, "quotes", None), None);
    }

    #[test]
    fn the_first_matching_rule_applies() {
        let rules = [
            Conflation::by_key("quotes", "symbol"),
            Conflation::topic("*"),
        ];
        assert_eq!(
            rule_for(&rules, "quotes").unwrap().key_field(),
            Some("symbol")
        );
        assert_eq!(rule_for(&rules, "other").unwrap().key_field(), None);
        assert!(rule_for(&rules[..1], "other").is_none());
    }

    #[test]
    fn keys_leave_the_top_bit_clear() {
        assert_eq!(ConflationKey::from_hash(u64::MAX).bits(), u64::MAX >> 1);
    }
}
