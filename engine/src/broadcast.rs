//! What a publish carries to the loops: the topic, the frame already encoded
//! for each wire protocol that has subscribers, and, for channel protocols,
//! the event and raw payload that interceptors and server-side subscribers
//! see.
//!
//! A broadcast is built once, by the publisher, and shared (`Arc`) by every
//! loop it reaches; each frame is one `Bytes` that every subscriber's write
//! queue clones (a refcount, never a copy).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::{
    protocol::{Encoding, MessageError, WireProtocol, amber, phoenix},
    pubsub::{ConnId, TopicEntry},
    wire::{Deflater, FrameHeader, OpCode},
};

/// The event and payload of a channel broadcast.
#[derive(Debug)]
struct ChannelMessage {
    event: Box<str>,
    payload: Box<RawValue>,
}

/// One frame per wire protocol, `None` for protocols nobody needs.
type Frames = [Option<Bytes>; WireProtocol::COUNT];

/// A message published to a topic, as a channel's
/// [`handle_info`](crate::channels::Channel::handle_info) sees it.
///
/// Built once by the publisher with one frame per wire protocol that has
/// subscribers; every loop with subscribers gets it, copies each frame once
/// (so that each subscriber's clone touches a refcount private to the loop),
/// and queues the frame to every subscriber, or hands the broadcast to the
/// channel for subscriptions that intercept it.
#[derive(Debug, Clone)]
pub struct Broadcast {
    topic: Arc<str>,
    message: Option<Arc<ChannelMessage>>,
    frames: Frames,
    /// Per protocol, the frame compressed (permessage-deflate, no context
    /// takeover), for subscribers that negotiated it; `None` where nobody
    /// does, or the frame is too small to be worth it (they get the plain
    /// one, which is as valid).
    deflated: Frames,
    /// A binary channel broadcast: its frames, not its message, are what
    /// other nodes need.
    binary: bool,
    /// The connection that must not receive it (`broadcast_from`): its
    /// loop and its id there.
    exclude: Option<(usize, ConnId)>,
    /// Its place in the topic's stream (epoch, offset), for a topic with
    /// history.
    position: Option<(Arc<str>, u64)>,
}

/// How a broadcast reaches one subscription (see
/// [`Service::delivery`](crate::reactor::Service::delivery)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queue the frame encoded for the subscription's protocol.
    Frame,
    /// Call the handler's `on_broadcast` for it.
    Callback,
}

impl Broadcast {
    /// A plain WebSocket publish: `frame` goes to raw subscribers as is.
    pub(crate) fn raw(topic: &str, frame: Bytes) -> Self {
        let mut frames = Frames::default();
        frames[WireProtocol::Raw.index()] = Some(frame);
        Self::encoded(topic, frames)
    }

    /// Frames already encoded per protocol, with no channel message (what
    /// another node sent).
    pub(crate) fn encoded(topic: &str, frames: Frames) -> Self {
        Self {
            topic: Arc::from(topic),
            message: None,
            frames,
            deflated: Frames::default(),
            binary: false,
            exclude: None,
            position: None,
        }
    }

    /// A channel broadcast of a topic with history, at `offset` of the
    /// stream named `epoch`: the Phoenix frame carries the offset (see
    /// [`phoenix::broadcast_at`]); Amber's has no place for it.
    pub(crate) fn channel_at(
        topic: &str,
        event: &str,
        payload: Box<RawValue>,
        entry: &TopicEntry,
        (epoch, offset): (Arc<str>, u64),
    ) -> Self {
        let mut frames = Frames::default();
        if entry.has_protocol(WireProtocol::PhoenixV2) {
            frames[WireProtocol::PhoenixV2.index()] =
                Some(phoenix::broadcast_at(topic, event, &payload, offset));
        }
        if entry.has_protocol(WireProtocol::Amber) {
            frames[WireProtocol::Amber.index()] = Some(amber::message(topic, event, &payload));
        }
        let mut broadcast = Self::with_message(topic, event, payload, frames);
        broadcast.position = Some((epoch, offset));
        broadcast
    }

    /// A channel broadcast of `event` with `payload`, encoded once for each
    /// protocol `entry` says has subscribers.
    pub(crate) fn channel(
        topic: &str,
        event: &str,
        payload: Box<RawValue>,
        entry: &TopicEntry,
    ) -> Self {
        let mut frames = Frames::default();
        if entry.has_protocol(WireProtocol::PhoenixV2) {
            frames[WireProtocol::PhoenixV2.index()] =
                Some(phoenix::broadcast(topic, event, &payload));
        }
        if entry.has_protocol(WireProtocol::Amber) {
            frames[WireProtocol::Amber.index()] = Some(amber::message(topic, event, &payload));
        }
        Self::with_message(topic, event, payload, frames)
    }

    /// A binary channel broadcast: the Phoenix binary V2 frame only (Amber
    /// has no binary messages). Fails if the topic or event exceeds 255
    /// bytes.
    pub(crate) fn channel_binary(
        topic: &str,
        event: &str,
        data: &[u8],
        entry: &TopicEntry,
    ) -> Result<Self, MessageError> {
        let mut frames = Frames::default();
        if entry.has_protocol(WireProtocol::PhoenixV2) {
            frames[WireProtocol::PhoenixV2.index()] =
                Some(phoenix::binary_broadcast(topic, event, data)?);
        }
        let mut broadcast = Self::with_message(topic, event, RawValue::NULL.to_owned(), frames);
        broadcast.binary = true;
        Ok(broadcast)
    }

    fn with_message(topic: &str, event: &str, payload: Box<RawValue>, frames: Frames) -> Self {
        let message = ChannelMessage {
            event: Box::from(event),
            payload,
        };
        Self {
            topic: Arc::from(topic),
            message: Some(Arc::new(message)),
            frames,
            deflated: Frames::default(),
            binary: false,
            exclude: None,
            position: None,
        }
    }

    /// Excludes one connection (the sender, for `broadcast_from`).
    pub(crate) fn excluding(mut self, loop_index: usize, conn: ConnId) -> Self {
        self.exclude = Some((loop_index, conn));
        self
    }

    /// The connection of loop `loop_index` this broadcast excludes, if any.
    pub(crate) fn excluded_on(&self, loop_index: usize) -> Option<ConnId> {
        self.exclude
            .and_then(|(excluded_loop, conn)| (excluded_loop == loop_index).then_some(conn))
    }

    /// Whether the connection `conn` of loop `loop_index` is excluded.
    pub(crate) fn excludes(&self, loop_index: usize, conn: ConnId) -> bool {
        self.exclude == Some((loop_index, conn))
    }

    /// Its offset in the topic's stream, for a topic with history.
    pub fn offset(&self) -> Option<u64> {
        self.position.as_ref().map(|&(_, offset)| offset)
    }

    /// The epoch of the topic's stream, for a topic with history.
    pub fn epoch(&self) -> Option<&str> {
        self.position.as_ref().map(|(epoch, _)| &**epoch)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event of a channel broadcast.
    pub fn event(&self) -> Option<&str> {
        self.message.as_ref().map(|message| &*message.event)
    }

    /// The payload of a channel broadcast (`null` for a binary one).
    pub fn payload(&self) -> Option<&RawValue> {
        self.message.as_ref().map(|message| &*message.payload)
    }

    /// Whether this is a binary channel broadcast: its data is in its
    /// Phoenix frame, not in its payload.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The frame encoded for `protocol`, if subscribers of that protocol
    /// were expected.
    pub fn frame(&self, protocol: WireProtocol) -> Option<&Bytes> {
        self.frames[protocol.index()].as_ref()
    }

    /// The frame a subscriber taking `encoding` gets: the compressed one
    /// if there is one, else the plain one.
    pub(crate) fn frame_for(&self, encoding: Encoding) -> Option<&Bytes> {
        let index = encoding.protocol.index();
        let deflated = encoding.deflate.then(|| self.deflated[index].as_ref());
        deflated.flatten().or(self.frames[index].as_ref())
    }

    /// Compresses, once, the frame of every protocol that `entry` says has
    /// subscribers taking it compressed, if it has at least `min_size`
    /// bytes of payload.
    pub(crate) fn compress(
        &mut self,
        entry: &TopicEntry,
        deflater: &mut Deflater,
        min_size: usize,
    ) {
        for protocol in WireProtocol::ALL {
            let index = protocol.index();
            if self.deflated[index].is_some() || !entry.has_encoding(Encoding::deflated(protocol)) {
                continue;
            }
            if let Some(frame) = &self.frames[index] {
                self.deflated[index] = compress_frame(frame, deflater, min_size);
            }
        }
    }

    /// The same broadcast with private copies of the frames, for a loop
    /// other than the publisher's.
    pub(crate) fn localized(&self) -> Self {
        let copy = |frames: &Frames| {
            frames
                .each_ref()
                .map(|frame| frame.as_ref().map(|frame| Bytes::copy_from_slice(frame)))
        };
        Self {
            topic: Arc::clone(&self.topic),
            message: self.message.clone(),
            frames: copy(&self.frames),
            deflated: copy(&self.deflated),
            binary: self.binary,
            exclude: self.exclude,
            position: self.position.clone(),
        }
    }
}

/// `frame` (one whole, unfragmented data frame, as herald encodes them)
/// compressed, if its payload has at least `min_size` bytes and it is not
/// compressed already.
pub(crate) fn compress_frame(
    frame: &Bytes,
    deflater: &mut Deflater,
    min_size: usize,
) -> Option<Bytes> {
    let (header, len) = FrameHeader::parse(frame).ok().flatten()?;
    let payload = frame.get(len..)?;
    let data = matches!(header.opcode, OpCode::Text | OpCode::Binary);
    // Exactly one whole frame (an application may hand `send_frame` other
    // buffers: those go as they are).
    let one = payload.len() as u64 == header.payload_len;
    let whole = one && header.fin && header.rsv == 0 && data && header.mask.is_none();
    (whole && payload.len() >= min_size).then(|| deflater.frame(header.opcode, payload))
}
