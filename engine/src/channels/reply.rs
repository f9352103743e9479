//! Replies to joins and pushes, and why a channel ends.

use serde::Serialize;
use serde_json::value::RawValue;

/// The response of a join or a reply: raw JSON.
///
/// # Examples
///
/// ```
/// use herald::channels::Reply;
///
/// assert_eq!(Reply::empty().as_json(), "{}");
/// assert_eq!(Reply::reason("unauthorized").as_json(), r#"{"reason":"unauthorized"}"#);
/// assert_eq!(Reply::json(&[1, 2]).unwrap().as_json(), "[1,2]");
/// ```
#[derive(Debug, Clone)]
pub struct Reply(Box<RawValue>);

impl Reply {
    /// `{}`.
    pub fn empty() -> Self {
        Self::from_raw_str("{}")
    }

    /// `{"reason": reason}`, the convention for refusals.
    pub fn reason(reason: &str) -> Self {
        #[derive(Serialize)]
        struct Reason<'a> {
            reason: &'a str,
        }
        Self::json(&Reason { reason }).unwrap_or_else(|_| Self::empty())
    }

    /// Any serializable value.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Raw JSON as received, for example a client's payload.
    pub fn raw(value: &RawValue) -> Self {
        Self(value.to_owned())
    }

    fn from_raw_str(json: &'static str) -> Self {
        // Only called with literal, valid JSON.
        Self(RawValue::from_string(json.to_owned()).unwrap_or_else(|_| unreachable_json()))
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    pub(crate) fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

/// `null` as a raw value, for the impossible case that a literal fails to
/// parse.
fn unreachable_json() -> Box<RawValue> {
    serde_json::value::to_raw_value(&()).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// What [`Channel::handle_joined`](super::Channel::handle_joined) returns:
/// `Ok(response)` joins, `Err(response)` refuses.
pub type JoinResult = Result<Reply, Reply>;

/// Why a channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveReason {
    /// The client left the topic (`phx_leave`, Amber `leave`).
    Left,
    /// The connection closed.
    Disconnected,
    /// The client joined the same topic again; this join was replaced.
    Rejoined,
    /// The channel stopped itself ([`ChannelContext::stop`](super::ChannelContext::stop)).
    Stopped,
    /// The server took the client off the topic
    /// ([`EngineHandle::unsubscribe`](super::EngineHandle::unsubscribe)).
    Removed,
    /// The client missed publications of a topic with history (a gap in
    /// the stream reached this server, or too many arrived while its join
    /// recovered): the channel errs, and the client joins again and
    /// recovers.
    Gap,
}
