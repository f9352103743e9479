//! The Phoenix Channels V2 serializer (the `phoenix` npm package's
//! `vsn=2.0.0`), sans I/O.
//!
//! Every text message is a JSON array `[join_ref, ref, topic, event,
//! payload]`. Decoding borrows from the received text: refs and payload stay
//! raw JSON (`&RawValue`), so a reply echoes the client's refs byte for byte
//! and a rebroadcast payload is copied into the outgoing frame without being
//! parsed into values and serialized again. Encoding writes straight into a
//! [`FrameBuilder`], so each server message is one allocation holding the
//! finished WebSocket frame; a broadcast (`[null,null,topic,event,payload]`,
//! the same bytes for every subscriber) is encoded once and shared.
//!
//! Binary messages use Phoenix's binary V2 layout (sizes are one byte, so
//! refs, topic and event are at most 255 bytes each):
//!
//! | kind | direction | after the kind byte |
//! | --- | --- | --- |
//! | 0 push | client to server | `join_ref_size, ref_size, topic_size, event_size, join_ref, ref, topic, event, data` |
//! | 0 push | server to client | `join_ref_size, topic_size, event_size, join_ref, topic, event, data` |
//! | 1 reply | server to client | `join_ref_size, ref_size, topic_size, status_size, join_ref, ref, topic, status, data` |
//! | 2 broadcast | server to client | `topic_size, event_size, topic, event, data` |

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::MessageError;
use crate::wire::{FrameBuilder, OpCode};

/// The topic of heartbeats.
pub const HEARTBEAT_TOPIC: &str = "phoenix";
/// The event of heartbeats.
pub const HEARTBEAT: &str = "heartbeat";
/// Joins a topic.
pub const JOIN: &str = "phx_join";
/// Leaves a topic.
pub const LEAVE: &str = "phx_leave";
/// A reply to a message that carried a ref.
pub const REPLY: &str = "phx_reply";
/// The server closed a channel.
pub const CLOSE: &str = "phx_close";
/// A channel failed.
pub const ERROR: &str = "phx_error";

/// A ref as sent by the client: the raw JSON text, `null` or a string.
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::Ref;
///
/// assert!(Ref::NULL.is_null());
/// assert_eq!(Ref::NULL.as_json(), "null");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ref<'a>(&'a str);

impl<'a> Ref<'a> {
    /// The `null` ref.
    pub const NULL: Ref<'static> = Ref("null");

    /// The ref as JSON text, for writing it back unchanged.
    pub fn as_json(&self) -> &'a str {
        self.0
    }

    /// Whether the client sent `null`.
    pub fn is_null(&self) -> bool {
        self.0 == "null"
    }

    /// The ref's string, unquoted (for binary messages, which carry refs
    /// bare); empty for `null`.
    pub fn value(&self) -> Cow<'a, str> {
        match serde_json::from_str::<Cow<'a, str>>(self.0) {
            Ok(value) => value,
            // `null`: refs are JSON strings or null, checked when decoded.
            Err(_) => Cow::Borrowed(""),
        }
    }

    fn from_raw(raw: &'a RawValue) -> Result<Self, MessageError> {
        let text = raw.get();
        if text == "null" || text.starts_with('"') {
            Ok(Self(text))
        } else {
            Err(MessageError::Malformed("refs must be strings or null"))
        }
    }
}

/// A ref kept after the message that carried it (a channel's join ref, a
/// push awaiting a late reply): the JSON text of a string, as the client
/// sent it, so that it is echoed byte for byte. A `null` ref is not kept:
/// an absent one is `Option::None`.
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::{OwnedRef, Ref, decode_text};
///
/// let join = decode_text(r#"["7","7","room:1","phx_join",{}]"#)?;
/// let kept = OwnedRef::keep(join.join_ref).unwrap();
/// assert_eq!(kept.get(), join.join_ref);
/// assert_eq!(kept.value(), "7");
/// assert!(OwnedRef::keep(Ref::NULL).is_none());
/// assert_eq!(OwnedRef::from_value("7"), kept);
/// # Ok::<(), herald::protocol::MessageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRef(Box<str>);

impl OwnedRef {
    /// Keeps `r`; `None` if it is `null`.
    pub fn keep(r: Ref<'_>) -> Option<Self> {
        (!r.is_null()).then(|| Self(Box::from(r.as_json())))
    }

    /// A ref given as its bare string (binary messages carry them so).
    pub fn from_value(value: &str) -> Self {
        // A string always serializes.
        Self(
            serde_json::to_string(value)
                .unwrap_or_default()
                .into_boxed_str(),
        )
    }

    /// The ref, to write it back.
    pub fn get(&self) -> Ref<'_> {
        Ref(&self.0)
    }

    /// The ref's string, unquoted (for binary messages).
    pub fn value(&self) -> Cow<'_, str> {
        self.get().value()
    }
}

/// The ref to write for a ref that may not have been kept: `null` if not.
pub fn ref_or_null(kept: Option<&OwnedRef>) -> Ref<'_> {
    kept.map_or(Ref::NULL, OwnedRef::get)
}

/// A message from a client, borrowing from the text it was decoded from.
#[derive(Debug, Clone)]
pub struct ClientMessage<'a> {
    /// The join ref of the channel the message belongs to.
    pub join_ref: Ref<'a>,
    /// The message's own ref, echoed in the reply.
    pub msg_ref: Ref<'a>,
    /// The topic.
    pub topic: Cow<'a, str>,
    /// The event.
    pub event: Cow<'a, str>,
    /// The payload.
    pub payload: Payload<'a>,
}

/// A payload: JSON for text messages, bytes for binary ones.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Raw JSON text.
    Json(&'a RawValue),
    /// Binary data (binary V2 frames).
    Binary(&'a [u8]),
}

/// Decodes a text message.
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::{Payload, decode_text};
///
/// let message = decode_text(r#"["1","2","room:lobby","phx_join",{"name":"ada"}]"#)?;
/// assert_eq!(message.topic, "room:lobby");
/// assert_eq!(message.msg_ref.as_json(), r#""2""#);
/// assert!(matches!(message.payload, Payload::Json(raw) if raw.get() == r#"{"name":"ada"}"#));
/// # Ok::<(), herald::protocol::MessageError>(())
/// ```
pub fn decode_text(text: &str) -> Result<ClientMessage<'_>, MessageError> {
    type Wire<'a> = (
        &'a RawValue,
        &'a RawValue,
        Cow<'a, str>,
        Cow<'a, str>,
        &'a RawValue,
    );
    let (join_ref, msg_ref, topic, event, payload): Wire<'_> =
        serde_json::from_str(text).map_err(|_| {
            MessageError::Malformed("not a [join_ref, ref, topic, event, payload] array")
        })?;
    Ok(ClientMessage {
        join_ref: Ref::from_raw(join_ref)?,
        msg_ref: Ref::from_raw(msg_ref)?,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// Decodes a binary V2 push (kind 0) from a client.
///
/// Refs are given as strings; their JSON text is not available, so they
/// are returned in `binary_refs` for the caller to quote when replying.
pub fn decode_binary(data: &[u8]) -> Result<BinaryPush<'_>, MessageError> {
    let [
        kind,
        join_ref_size,
        ref_size,
        topic_size,
        event_size,
        rest @ ..,
    ] = data
    else {
        return Err(MessageError::Malformed(
            "binary message shorter than its header",
        ));
    };
    if *kind != 0 {
        return Err(MessageError::Malformed(
            "clients may only send binary pushes (kind 0)",
        ));
    }
    let mut rest = rest;
    let mut take = |size: u8| -> Result<&[u8], MessageError> {
        let size = usize::from(size);
        if rest.len() < size {
            return Err(MessageError::Malformed(
                "binary message shorter than its fields",
            ));
        }
        let (field, tail) = rest.split_at(size);
        rest = tail;
        Ok(field)
    };
    let join_ref = utf8(take(*join_ref_size)?)?;
    let msg_ref = utf8(take(*ref_size)?)?;
    let topic = utf8(take(*topic_size)?)?;
    let event = utf8(take(*event_size)?)?;
    Ok(BinaryPush {
        join_ref,
        msg_ref,
        topic,
        event,
        data: rest,
    })
}

/// A binary V2 push from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryPush<'a> {
    /// The join ref, as a string.
    pub join_ref: &'a str,
    /// The message ref, as a string.
    pub msg_ref: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// The event.
    pub event: &'a str,
    /// The data.
    pub data: &'a [u8],
}

fn utf8(bytes: &[u8]) -> Result<&str, MessageError> {
    std::str::from_utf8(bytes)
        .map_err(|_| MessageError::Malformed("binary message field is not UTF-8"))
}

/// Writes `[join_ref, ref, topic, event, payload]` as one text frame.
fn encode_array(join_ref: &str, msg_ref: &str, topic: &str, event: &str, payload: &str) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(
        16 + join_ref.len() + msg_ref.len() + topic.len() + event.len() + payload.len(),
    );
    frame.extend_from_slice(b"[");
    frame.extend_from_slice(join_ref.as_bytes());
    frame.extend_from_slice(b",");
    frame.extend_from_slice(msg_ref.as_bytes());
    frame.extend_from_slice(b",");
    write_json_string(&mut frame, topic);
    frame.extend_from_slice(b",");
    write_json_string(&mut frame, event);
    frame.extend_from_slice(b",");
    frame.extend_from_slice(payload.as_bytes());
    frame.extend_from_slice(b"]");
    finish_text(frame)
}

fn write_json_string(frame: &mut FrameBuilder, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        frame.extend_from_slice(b"\"");
        frame.extend_from_slice(text.as_bytes());
        frame.extend_from_slice(b"\"");
    } else {
        // Writing to a FrameBuilder cannot fail, and a &str always
        // serializes.
        let _ = serde_json::to_writer(frame, text);
    }
}

fn finish_text(frame: FrameBuilder) -> Bytes {
    // A text frame has no size limit to refuse, so finish cannot fail.
    frame
        .finish(OpCode::Text)
        .unwrap_or_else(|_| Bytes::from_static(b"\x81\x00"))
}

/// `[null, null, topic, event, payload]`: a broadcast, identical for every
/// subscriber.
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::broadcast;
/// use serde_json::value::RawValue;
///
/// let payload = RawValue::from_string(r#"{"body":"hi"}"#.into())?;
/// let frame = broadcast("room:1", "new_msg", &payload);
/// assert_eq!(&frame[2..], br#"[null,null,"room:1","new_msg",{"body":"hi"}]"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn broadcast(topic: &str, event: &str, payload: &RawValue) -> Bytes {
    encode_array("null", "null", topic, event, payload.get())
}

/// `[null, "@<offset>", topic, event, payload]`: a broadcast of a topic
/// with history, carrying its offset in the stream in the ref slot (the
/// phoenix client hands it to `channel.on` callbacks as their second
/// argument). The `@` keeps it from ever equalling a client's own numeric
/// refs (a heartbeat's, whose reply the client waits for).
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::broadcast_at;
/// use serde_json::value::RawValue;
///
/// let payload = RawValue::from_string(r#"{"body":"hi"}"#.into())?;
/// let frame = broadcast_at("room:1", "new_msg", &payload, 17);
/// assert_eq!(&frame[2..], br#"[null,"@17","room:1","new_msg",{"body":"hi"}]"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn broadcast_at(topic: &str, event: &str, payload: &RawValue, offset: u64) -> Bytes {
    let offset_ref = format!("\"{OFFSET_REF_PREFIX}{offset}\"");
    encode_array("null", &offset_ref, topic, event, payload.get())
}

/// What starts the ref of a broadcast that carries its offset.
pub const OFFSET_REF_PREFIX: char = '@';

/// `[join_ref, null, topic, event, payload]`: a push to one client.
pub fn push(join_ref: Ref<'_>, topic: &str, event: &str, payload: &RawValue) -> Bytes {
    encode_array(join_ref.as_json(), "null", topic, event, payload.get())
}

/// The start of a push whose payload is sent from a buffer shared by many
/// pushes: the frame header (for a payload of the start plus `rest_len`
/// bytes) and `[join_ref,null,topic,event,`. The frame is this, then the
/// payload, then `]` (`rest_len` counts both).
pub(crate) fn push_head(join_ref: Ref<'_>, topic: &str, event: &str, rest_len: usize) -> Bytes {
    let mut start = FrameBuilder::with_capacity(16 + topic.len() + event.len());
    start.extend_from_slice(b"[");
    start.extend_from_slice(join_ref.as_json().as_bytes());
    start.extend_from_slice(b",null,");
    write_json_string(&mut start, topic);
    start.extend_from_slice(b",");
    write_json_string(&mut start, event);
    start.extend_from_slice(b",");
    let start = start.payload();
    let header = crate::wire::server_header(OpCode::Text, start.len() + rest_len);
    let mut head = bytes::BytesMut::with_capacity(header.as_bytes().len() + start.len());
    head.extend_from_slice(header.as_bytes());
    head.extend_from_slice(start);
    head.freeze()
}

/// The status of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `"ok"`.
    Ok,
    /// `"error"`.
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// `[join_ref, ref, topic, "phx_reply", {"status": ..., "response": ...}]`.
///
/// # Examples
///
/// ```
/// use herald::protocol::phoenix::{Ref, Status, decode_text, reply};
/// use serde_json::value::RawValue;
///
/// let join = decode_text(r#"["3","3","room:1","phx_join",{}]"#)?;
/// let response = RawValue::from_string("{}".into()).unwrap();
/// let frame = reply(join.join_ref, join.msg_ref, "room:1", Status::Ok, &response);
/// assert_eq!(
///     &frame[2..],
///     br#"["3","3","room:1","phx_reply",{"status":"ok","response":{}}]"#
/// );
/// # Ok::<(), herald::protocol::MessageError>(())
/// ```
pub fn reply(
    join_ref: Ref<'_>,
    msg_ref: Ref<'_>,
    topic: &str,
    status: Status,
    response: &RawValue,
) -> Bytes {
    let body = format!(
        r#"{{"status":"{}","response":{}}}"#,
        status.as_str(),
        response.get()
    );
    encode_array(join_ref.as_json(), msg_ref.as_json(), topic, REPLY, &body)
}

/// `[join_ref, join_ref, topic, "phx_close", {}]`: the server closed the
/// channel (for instance, a second join of the same topic replaced it).
pub fn close(join_ref: Ref<'_>, topic: &str) -> Bytes {
    encode_array(join_ref.as_json(), join_ref.as_json(), topic, CLOSE, "{}")
}

/// `[join_ref, join_ref, topic, "phx_error", {"reason":"channel_crash"}]`:
/// the channel failed (a panic in its callbacks).
pub fn error(join_ref: Ref<'_>, topic: &str) -> Bytes {
    encode_array(
        join_ref.as_json(),
        join_ref.as_json(),
        topic,
        ERROR,
        r#"{"reason":"channel_crash"}"#,
    )
}

/// A binary V2 broadcast (kind 2): `topic_size, event_size, topic, event,
/// data`, as one binary frame.
pub fn binary_broadcast(topic: &str, event: &str, data: &[u8]) -> Result<Bytes, MessageError> {
    let sizes = [field_size(topic)?, field_size(event)?];
    let mut frame = FrameBuilder::with_capacity(3 + topic.len() + event.len() + data.len());
    frame.extend_from_slice(&[2, sizes[0], sizes[1]]);
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(event.as_bytes());
    frame.extend_from_slice(data);
    Ok(finish_binary(frame))
}

/// A binary V2 push to one client (kind 0): `join_ref_size, topic_size,
/// event_size, join_ref, topic, event, data`.
pub fn binary_push(
    join_ref: &str,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Result<Bytes, MessageError> {
    let sizes = [
        field_size(join_ref)?,
        field_size(topic)?,
        field_size(event)?,
    ];
    let mut frame =
        FrameBuilder::with_capacity(4 + join_ref.len() + topic.len() + event.len() + data.len());
    frame.extend_from_slice(&[0, sizes[0], sizes[1], sizes[2]]);
    for field in [join_ref, topic, event] {
        frame.extend_from_slice(field.as_bytes());
    }
    frame.extend_from_slice(data);
    Ok(finish_binary(frame))
}

/// A binary V2 reply (kind 1): `join_ref_size, ref_size, topic_size,
/// status_size, join_ref, ref, topic, status, data`.
pub fn binary_reply(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    status: Status,
    data: &[u8],
) -> Result<Bytes, MessageError> {
    let status = status.as_str();
    let sizes = [
        field_size(join_ref)?,
        field_size(msg_ref)?,
        field_size(topic)?,
        field_size(status)?,
    ];
    let mut frame = FrameBuilder::with_capacity(
        5 + join_ref.len() + msg_ref.len() + topic.len() + status.len() + data.len(),
    );
    frame.extend_from_slice(&[1, sizes[0], sizes[1], sizes[2], sizes[3]]);
    for field in [join_ref, msg_ref, topic, status] {
        frame.extend_from_slice(field.as_bytes());
    }
    frame.extend_from_slice(data);
    Ok(finish_binary(frame))
}

fn field_size(field: &str) -> Result<u8, MessageError> {
    u8::try_from(field.len()).map_err(|_| MessageError::FieldTooLong(field.len()))
}

fn finish_binary(frame: FrameBuilder) -> Bytes {
    frame
        .finish(OpCode::Binary)
        .unwrap_or_else(|_| Bytes::from_static(b"\x82\x00"))
}

/// Writes a JSON value as a payload, for callers holding typed data.
///
/// # Examples
///
/// ```
/// let payload = herald::protocol::phoenix::to_raw(&serde_json::json!({"n": 1}))?;
/// assert_eq!(payload.get(), r#"{"n":1}"#);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn to_raw<T: serde::Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(value)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The JSON text inside a server text frame (header stripped).
    fn json_of(frame: &Bytes) -> Value {
        let header_len = match frame[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        assert_eq!(frame[0], 0x81, "a final text frame");
        serde_json::from_slice(&frame[header_len..]).expect("valid JSON")
    }

    fn raw(value: Value) -> Box<RawValue> {
        to_raw(&value).unwrap()
    }

    #[test]
    fn client_messages_decode_with_raw_refs_and_payload() {
        let message = decode_text(r#"[null,"5","phoenix","heartbeat",{}]"#).unwrap();
        assert!(message.join_ref.is_null());
        assert_eq!(message.msg_ref.as_json(), "\"5\"");
        assert_eq!((&*message.topic, &*message.event), ("phoenix", "heartbeat"));
        // Escaped topics decode to their text.
        let message = decode_text(r#"["1","2","room:\u00e9","ev",[1,2]]"#).unwrap();
        assert_eq!(message.topic, "room:é");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for text in [
            "",
            "{}",
            "[1,2,3]",
            r#"["1","2","t","e"]"#,
            r#"["1","2","t","e",{},"extra"]"#,
            r#"[1,"2","t","e",{}]"#,
            r#"["1","2",3,"e",{}]"#,
            "[\"1\",\"2\",\"t\",\"e\",{",
        ] {
            assert!(decode_text(text).is_err(), "{text}");
        }
    }

    #[test]
    fn server_messages_have_the_v2_shapes() {
        let payload = raw(json!({"body": "hé \"quoted\""}));
        let join = decode_text(r#"["7","8","room:1","phx_join",{}]"#).unwrap();
        assert_eq!(
            json_of(&broadcast("room:1", "new_msg", &payload)),
            json!([null, null, "room:1", "new_msg", {"body": "hé \"quoted\""}])
        );
        assert_eq!(
            json_of(&push(join.join_ref, "room:1", "ev", &payload)),
            json!(["7", null, "room:1", "ev", {"body": "hé \"quoted\""}])
        );
        assert_eq!(
            json_of(&reply(
                join.join_ref,
                join.msg_ref,
                "room:1",
                Status::Error,
                &raw(json!({"reason": "unmatched topic"}))
            )),
            json!(["7", "8", "room:1", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
        );
        assert_eq!(
            json_of(&close(join.join_ref, "room:1")),
            json!(["7", "7", "room:1", "phx_close", {}])
        );
        assert_eq!(
            json_of(&error(join.join_ref, "room:1")),
            json!(["7", "7", "room:1", "phx_error", {"reason": "channel_crash"}])
        );
    }

    #[test]
    fn topics_and_events_needing_escapes_are_escaped() {
        let payload = raw(json!(null));
        let frame = broadcast("room:\"1\"\\\n", "ev\u{1}", &payload);
        assert_eq!(
            json_of(&frame),
            json!([null, null, "room:\"1\"\\\n", "ev\u{1}", null])
        );
    }

    #[test]
    fn binary_pushes_decode_and_server_binary_frames_have_the_v2_layout() {
        let mut data = vec![0u8, 1, 1, 4, 3];
        data.extend_from_slice(b"12roomevt\x00\xff");
        let push = decode_binary(&data).unwrap();
        assert_eq!(
            push,
            BinaryPush {
                join_ref: "1",
                msg_ref: "2",
                topic: "room",
                event: "evt",
                data: b"\x00\xff"
            }
        );
        assert!(decode_binary(&data[..8]).is_err());
        assert!(decode_binary(&[1, 0, 0, 0, 0]).is_err());

        let frame = binary_broadcast("room", "evt", b"\x01\x02").unwrap();
        assert_eq!(&frame[..], b"\x82\x0c\x02\x04\x03roomevt\x01\x02");
        let frame = binary_push("1", "room", "evt", b"!").unwrap();
        assert_eq!(&frame[2..], b"\x00\x01\x04\x031roomevt!");
        let frame = binary_reply("1", "2", "room", Status::Ok, b"").unwrap();
        assert_eq!(&frame[2..], b"\x01\x01\x01\x04\x02\x31\x32roomok");
        let long = "t".repeat(256);
        assert_eq!(
            binary_broadcast(&long, "e", b""),
            Err(MessageError::FieldTooLong(256))
        );
    }
}
