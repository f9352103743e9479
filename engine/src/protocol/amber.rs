//! Amber's channel protocol (the amber.js client), sans I/O.
//!
//! Clients send JSON objects: `{"event":"join","topic":"chat_room:1"}`,
//! `{"event":"leave","topic":...}` and `{"event":"message","topic":...,
//! "subject":"msg:new","payload":{...}}`. The server sends
//! `{"event":"message","topic":...,"subject":...,"payload":...}`, and every
//! 30 s the text `ping`, which amber.js takes as its heartbeat. Amber has no
//! refs, no join replies and no error frames.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::MessageError;
use crate::wire::{FrameBuilder, OpCode, text_frame};

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Join the topic.
    Join,
    /// Leave the topic.
    Leave,
    /// A message to the topic's channel.
    Message,
}

/// A message from an amber.js client, borrowing from its text.
#[derive(Debug, Clone)]
pub struct ClientMessage<'a> {
    /// What the client asks for.
    pub event: Event,
    /// The topic, such as `chat_room:1`.
    pub topic: Cow<'a, str>,
    /// The subject of a message, such as `msg:new` (empty if absent).
    pub subject: Cow<'a, str>,
    /// The payload, raw JSON (`None` if absent).
    pub payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Decodes a client message.
///
/// # Examples
///
/// ```
/// use herald::protocol::amber::{Event, decode};
///
/// let message = decode(r#"{"event":"message","topic":"chat_room:1","subject":"msg:new","payload":{"m":"hi"}}"#)?;
/// assert_eq!(message.event, Event::Message);
/// assert_eq!(message.subject, "msg:new");
/// assert_eq!(message.payload.map(|p| p.get()), Some(r#"{"m":"hi"}"#));
/// # Ok::<(), herald::protocol::MessageError>(())
/// ```
pub fn decode(text: &str) -> Result<ClientMessage<'_>, MessageError> {
    let wire: Wire<'_> = serde_json::from_str(text)
        .map_err(|_| MessageError::Malformed("not an amber channel message object"))?;
    let event = match &*wire.event {
        "join" => Event::Join,
        "leave" => Event::Leave,
        "message" => Event::Message,
        _ => {
            return Err(MessageError::Malformed(
                "event must be join, leave or message",
            ));
        }
    };
    Ok(ClientMessage {
        event,
        topic: wire.topic,
        subject: wire.subject.unwrap_or_default(),
        payload: wire.payload,
    })
}

/// `{"event":"message","topic":...,"subject":...,"payload":...}`: what every
/// subscriber of `topic` receives, encoded once.
///
/// # Examples
///
/// ```
/// use herald::protocol::amber::message;
/// use serde_json::value::RawValue;
///
/// let payload = RawValue::from_string(r#"{"m":"hi"}"#.into())?;
/// let frame = message("chat_room:1", "msg:new", &payload);
/// assert_eq!(
///     &frame[2..],
///     br#"{"event":"message","topic":"chat_room:1","subject":"msg:new","payload":{"m":"hi"}}"#
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn message(topic: &str, subject: &str, payload: &RawValue) -> Bytes {
    let mut frame =
        FrameBuilder::with_capacity(56 + topic.len() + subject.len() + payload.get().len());
    frame.extend_from_slice(br#"{"event":"message","topic":"#);
    write_json_string(&mut frame, topic);
    frame.extend_from_slice(br#","subject":"#);
    write_json_string(&mut frame, subject);
    frame.extend_from_slice(br#","payload":"#);
    frame.extend_from_slice(payload.get().as_bytes());
    frame.extend_from_slice(b"}");
    frame
        .finish(OpCode::Text)
        .unwrap_or_else(|_| Bytes::from_static(b"\x81\x00"))
}

/// The heartbeat text frame, `ping`.
pub fn heartbeat() -> Bytes {
    text_frame("ping")
}

/// The channel route a topic belongs to: the topic without its last
/// `:segment` (`chat_room:1` -> `chat_room`), as Amber routes them.
///
/// # Examples
///
/// ```
/// use herald::protocol::amber::route_of;
///
/// assert_eq!(route_of("chat_room:1"), "chat_room");
/// assert_eq!(route_of("a:b:c"), "a:b");
/// assert_eq!(route_of("lobby"), "lobby");
/// ```
pub fn route_of(topic: &str) -> &str {
    topic.rsplit_once(':').map_or(topic, |(route, _)| route)
}

fn write_json_string(frame: &mut FrameBuilder, text: &str) {
    // Writing to a FrameBuilder cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(frame, text);
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn join_leave_and_message_decode() {
        let join = decode(r#"{"event":"join","topic":"chat_room:1"}"#).unwrap();
        assert_eq!((join.event, &*join.topic), (Event::Join, "chat_room:1"));
        assert!(join.payload.is_none());
        let leave = decode(r#"{"topic":"chat_room:1","event":"leave"}"#).unwrap();
        assert_eq!(leave.event, Event::Leave);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for text in [
            "",
            "[]",
            r#"{"event":"join"}"#,
            r#"{"event":"shout","topic":"t"}"#,
            "ping",
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn messages_encode_as_amber_js_reads_them() {
        let payload = serde_json::value::to_raw_value(&json!({"message": "hé \"x\""})).unwrap();
        let frame = message("chat_room:\"1\"", "msg:new", &payload);
        let value: Value = serde_json::from_slice(&frame[2..]).unwrap();
        assert_eq!(
            value,
            json!({"event": "message", "topic": "chat_room:\"1\"", "subject": "msg:new", "payload": {"message": "hé \"x\""}})
        );
        assert_eq!(&heartbeat()[..], b"\x81\x04ping");
    }
}
