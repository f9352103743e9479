//! The envelope a broadcast travels in between nodes: compact, versioned,
//! binary.
//!
//! ```text
//! byte 0      version (1)
//! byte 1      kind: 1 = channel message, 2 = encoded frames, 3 = disconnect,
//!             4 = sync (presence replication)
//! bytes 2-9   origin node id, little-endian u64
//! u16 LE      topic length, then the topic (UTF-8); for kind 3, the
//!             name of the connections to close
//! kind 1:     u16 LE event length, the event, then the payload (JSON) to the end
//! kind 2:     u8 frame count, then per frame: u8 protocol index, u32 LE length, the frame
//! kind 3:     nothing more
//! kind 4:     (empty topic) the message, JSON, to the end
//! ```
//!
//! A channel message carries the event and raw JSON payload, not frames: the
//! receiving node encodes the frame once per protocol its own subscribers
//! speak. Frames travel as they are only for what has no channel message
//! (plain publishes, binary broadcasts).
//!
//! Decoding trusts nothing: every length is checked against what is left,
//! the payload must be JSON, and a frame must be one complete, unmasked,
//! final WebSocket frame, so a broker cannot make a node send a client
//! bytes that break its stream.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::{protocol::WireProtocol, wire::FrameHeader};

/// The envelope format version this build writes and reads.
///
/// Kind 3 (disconnect) was added to version 1 without a version change:
/// nodes that predate it count such envelopes as decode errors, so a
/// disconnect made during a rolling upgrade may miss the older nodes (their
/// own disconnects, sent as empty frames, are refused here likewise).
pub const VERSION: u8 = 1;

const KIND_CHANNEL: u8 = 1;
const KIND_FRAMES: u8 = 2;
const KIND_DISCONNECT: u8 = 3;
const KIND_SYNC: u8 = 4;
const FIXED_HEADER: usize = 1 + 1 + 8 + 2;

/// A node's identity on the bus: random per process start.
pub type NodeId = u64;

/// What an envelope carries.
#[derive(Debug, Clone)]
pub enum Content {
    /// A channel broadcast: the event and its raw JSON payload.
    Channel {
        /// The event.
        event: String,
        /// The payload, JSON.
        payload: Box<RawValue>,
    },
    /// Frames already encoded, per protocol.
    Frames(Vec<(WireProtocol, Bytes)>),
    /// Close the connections named by the envelope's topic field.
    Disconnect,
    /// A message between the nodes' channels layers (presence
    /// replication), JSON.
    Sync(Bytes),
}

impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Channel { event, payload },
                Self::Channel {
                    event: other_event,
                    payload: other_payload,
                },
            ) => event == other_event && payload.get() == other_payload.get(),
            (Self::Frames(frames), Self::Frames(other)) => frames == other,
            (Self::Disconnect, Self::Disconnect) => true,
            (Self::Sync(message), Self::Sync(other)) => message == other,
            _ => false,
        }
    }
}

/// A broadcast on its way between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node that published it.
    pub origin: NodeId,
    /// The topic.
    pub topic: String,
    /// The message.
    pub content: Content,
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Written by a newer (or unknown) format version.
    #[error("envelope version {0} is not supported (this build reads {VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// A length runs past the end, or bytes are left over.
    #[error("envelope is truncated or malformed")]
    Truncated,
    /// The topic or event is not UTF-8.
    #[error("envelope text is not UTF-8")]
    Utf8,
    /// The payload is not JSON.
    #[error("envelope payload is not JSON")]
    Json,
    /// A frame is not one complete, unmasked, final WebSocket frame.
    #[error("envelope frame is not a complete server frame")]
    Frame,
    /// A topic or event over 65,535 bytes, or a frame over 4 GiB, cannot be
    /// written.
    #[error("envelope field too long")]
    TooLong,
}

impl Envelope {
    /// Writes the envelope.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::cluster::{Content, Envelope};
    /// use serde_json::value::RawValue;
    ///
    /// let envelope = Envelope {
    ///     origin: 7,
    ///     topic: "room:1".into(),
    ///     content: Content::Channel {
    ///         event: "new_msg".into(),
    ///         payload: RawValue::from_string(r#"{"body":"hi"}"#.into()).unwrap(),
    ///     },
    /// };
    /// let bytes = envelope.encode().unwrap();
    /// assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    /// ```
    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        match &self.content {
            Content::Channel { event, payload } => {
                encode_channel(self.origin, &self.topic, event, payload)
            }
            Content::Frames(frames) => encode_frames(
                self.origin,
                &self.topic,
                frames
                    .iter()
                    .map(|(protocol, frame)| (*protocol, &frame[..])),
            ),
            Content::Disconnect => encode_disconnect(self.origin, &self.topic),
            Content::Sync(message) => encode_sync(self.origin, message),
        }
    }

    /// Reads an envelope, checking everything.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let mut reader = Reader { rest: bytes };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let kind = reader.u8()?;
        let origin = u64::from_le_bytes(reader.array()?);
        let topic = reader.short_str()?.to_owned();
        let content = match kind {
            KIND_CHANNEL => {
                let event = reader.short_str()?.to_owned();
                let json = std::str::from_utf8(reader.rest).map_err(|_| EnvelopeError::Utf8)?;
                let payload =
                    RawValue::from_string(json.to_owned()).map_err(|_| EnvelopeError::Json)?;
                Content::Channel { event, payload }
            }
            KIND_FRAMES => {
                let count = reader.u8()?;
                let mut frames = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let protocol = WireProtocol::from_index(usize::from(reader.u8()?))
                        .ok_or(EnvelopeError::Truncated)?;
                    let len = u32::from_le_bytes(reader.array()?) as usize;
                    let frame = reader.take(len)?;
                    check_frame(frame)?;
                    frames.push((protocol, Bytes::copy_from_slice(frame)));
                }
                if !reader.rest.is_empty() {
                    return Err(EnvelopeError::Truncated);
                }
                Content::Frames(frames)
            }
            KIND_DISCONNECT if reader.rest.is_empty() => Content::Disconnect,
            // A sync message has no topic (so that what decodes re-encodes
            // to the same bytes).
            KIND_SYNC if !topic.is_empty() => return Err(EnvelopeError::Truncated),
            KIND_SYNC => {
                serde_json::from_slice::<serde::de::IgnoredAny>(reader.rest)
                    .map_err(|_| EnvelopeError::Json)?;
                Content::Sync(Bytes::copy_from_slice(reader.rest))
            }
            KIND_DISCONNECT => return Err(EnvelopeError::Truncated),
            other => return Err(EnvelopeError::Kind(other)),
        };
        Ok(Self {
            origin,
            topic,
            content,
        })
    }
}

/// Writes a channel message's envelope from borrowed parts (what a node
/// publishes: no copy of the payload before the envelope's own).
pub(crate) fn encode_channel(
    origin: NodeId,
    topic: &str,
    event: &str,
    payload: &RawValue,
) -> Result<Bytes, EnvelopeError> {
    let payload = payload.get().as_bytes();
    let mut out = header(KIND_CHANNEL, origin, topic, event.len() + payload.len() + 2)?;
    put_short_str(&mut out, event)?;
    out.put_slice(payload);
    Ok(out.freeze())
}

/// Writes a frames envelope from borrowed frames.
pub(crate) fn encode_frames<'a>(
    origin: NodeId,
    topic: &str,
    frames: impl Iterator<Item = (WireProtocol, &'a [u8])>,
) -> Result<Bytes, EnvelopeError> {
    let mut out = header(KIND_FRAMES, origin, topic, 64)?;
    let count_at = out.len();
    out.put_u8(0);
    let mut count = 0u8;
    for (protocol, frame) in frames {
        count = count.checked_add(1).ok_or(EnvelopeError::TooLong)?;
        let len = u32::try_from(frame.len()).map_err(|_| EnvelopeError::TooLong)?;
        out.put_u8(protocol.index() as u8);
        out.put_u32_le(len);
        out.put_slice(frame);
    }
    out[count_at] = count;
    Ok(out.freeze())
}

/// Writes a disconnect envelope: close the connections named `name`.
pub(crate) fn encode_disconnect(origin: NodeId, name: &str) -> Result<Bytes, EnvelopeError> {
    Ok(header(KIND_DISCONNECT, origin, name, 0)?.freeze())
}

/// Writes a sync envelope: a message for every other node's channels layer.
pub(crate) fn encode_sync(origin: NodeId, message: &[u8]) -> Result<Bytes, EnvelopeError> {
    let mut out = header(KIND_SYNC, origin, "", message.len())?;
    out.put_slice(message);
    Ok(out.freeze())
}

/// The fields every envelope starts with, in a buffer with room for `rest`.
fn header(kind: u8, origin: NodeId, topic: &str, rest: usize) -> Result<BytesMut, EnvelopeError> {
    let mut out = BytesMut::with_capacity(FIXED_HEADER + topic.len() + rest);
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u64_le(origin);
    put_short_str(&mut out, topic)?;
    Ok(out)
}

fn put_short_str(out: &mut BytesMut, text: &str) -> Result<(), EnvelopeError> {
    let len = u16::try_from(text.len()).map_err(|_| EnvelopeError::TooLong)?;
    out.put_u16_le(len);
    out.put_slice(text.as_bytes());
    Ok(())
}

/// A frame a node may queue to its clients: exactly one unmasked, final
/// frame.
fn check_frame(frame: &[u8]) -> Result<(), EnvelopeError> {
    match FrameHeader::parse(frame) {
        Ok(Some((header, header_len)))
            if header.fin
                && header.mask.is_none()
                && header_len as u64 + header.payload_len == frame.len() as u64 =>
        {
            Ok(())
        }
        Ok(_) | Err(_) => Err(EnvelopeError::Frame),
    }
}

/// Reads fields off the front of a byte slice, never past its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], EnvelopeError> {
        if len > self.rest.len() {
            return Err(EnvelopeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.array::<1>()?[0])
    }

    fn short_str(&mut self) -> Result<&'a str, EnvelopeError> {
        let len = u16::from_le_bytes(self.array()?);
        let bytes = self.take(usize::from(len))?;
        std::str::from_utf8(bytes).map_err(|_| EnvelopeError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{binary_frame, text_frame};

    fn channel(topic: &str, event: &str, payload: &str) -> Envelope {
        Envelope {
            origin: 0x0102_0304_0506_0708,
            topic: topic.into(),
            content: Content::Channel {
                event: event.into(),
                payload: RawValue::from_string(payload.into()).unwrap(),
            },
        }
    }

    #[test]
    fn channel_messages_round_trip() {
        let envelope = channel("room:é", "new_msg", r#"{"body":"hi","n":[1,2]}"#);
        let bytes = envelope.encode().unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn frames_and_disconnects_round_trip() {
        let envelope = Envelope {
            origin: 9,
            topic: "ticker".into(),
            content: Content::Frames(vec![
                (WireProtocol::Raw, text_frame("42")),
                (WireProtocol::PhoenixV2, binary_frame(&[0; 300])),
            ]),
        };
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        let disconnect = Envelope {
            origin: 9,
            topic: "user_socket:42".into(),
            content: Content::Disconnect,
        };
        let bytes = disconnect.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), disconnect);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Envelope::decode(&longer), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn empty_frames_are_refused() {
        let envelope = Envelope {
            origin: 1,
            topic: "t".into(),
            content: Content::Frames(vec![(WireProtocol::Raw, Bytes::new())]),
        };
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::Frame));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for envelope in [
            channel("t", "e", "{}"),
            Envelope {
                origin: 1,
                topic: "t".into(),
                content: Content::Frames(vec![(WireProtocol::Raw, text_frame("x"))]),
            },
        ] {
            let bytes = envelope.encode().unwrap();
            for cut in 0..bytes.len() {
                assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn bad_versions_kinds_payloads_and_frames_are_refused() {
        let mut bytes = channel("t", "e", "{}").encode().unwrap().to_vec();
        bytes[0] = 2;
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::Version(2)));
        bytes[0] = VERSION;
        bytes[1] = 9;
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::Kind(9)));

        let mut not_json = channel("t", "e", "{}").encode().unwrap().to_vec();
        not_json.pop();
        assert_eq!(Envelope::decode(&not_json), Err(EnvelopeError::Json));

        // A frame with bytes beyond its declared length.
        let mut frame = text_frame("x").to_vec();
        frame.push(b'!');
        let envelope = Envelope {
            origin: 1,
            topic: "t".into(),
            content: Content::Frames(vec![(WireProtocol::Raw, Bytes::from(frame))]),
        };
        let bytes = envelope.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::Frame));
    }
}
