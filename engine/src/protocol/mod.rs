//! Application wire protocols, sans I/O: how channel messages look inside
//! WebSocket text (and binary) frames.
//!
//! - [`phoenix`]: Phoenix Channels V2 JSON and binary (the `phoenix` npm
//!   package).
//! - [`amber`]: Amber's channel JSON (amber.js).
//!
//! Decoders borrow from the received frame and keep payloads as raw JSON;
//! encoders produce finished WebSocket frames as `Bytes`, so a broadcast is
//! serialized once per protocol and shared by every subscriber.

pub mod amber;
pub mod phoenix;

/// A client message that could not be understood. Neither protocol closes
/// the connection for it: the message is dropped and counted (Phoenix itself
/// would close the socket; herald keeps it, as PROTOCOLS.md records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not the protocol's message shape.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A binary V2 field (ref, topic, event) longer than 255 bytes.
    #[error("binary field of {0} bytes exceeds 255")]
    FieldTooLong(usize),
}

/// The wire protocol an endpoint speaks; a broadcast is encoded once for
/// each protocol that has subscribers to its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireProtocol {
    /// Plain WebSocket: a published frame is sent as it is (the low-level
    /// [`Conn::subscribe`](crate::Conn::subscribe) API).
    Raw,
    /// Phoenix Channels V2.
    PhoenixV2,
    /// Amber channels.
    Amber,
}

impl WireProtocol {
    /// How many protocols there are.
    pub const COUNT: usize = 3;

    /// Every protocol, in [`index`](Self::index) order.
    pub const ALL: [Self; Self::COUNT] = [Self::Raw, Self::PhoenixV2, Self::Amber];

    /// A dense index, for per-protocol arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Raw => 0,
            Self::PhoenixV2 => 1,
            Self::Amber => 2,
        }
    }

    /// The protocol with this [`index`](Self::index), if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::protocol::WireProtocol;
    ///
    /// assert_eq!(WireProtocol::from_index(1), Some(WireProtocol::PhoenixV2));
    /// assert_eq!(WireProtocol::from_index(3), None);
    /// ```
    pub const fn from_index(index: usize) -> Option<Self> {
        match index {
            0 => Some(Self::Raw),
            1 => Some(Self::PhoenixV2),
            2 => Some(Self::Amber),
            _ => None,
        }
    }
}

/// A wire protocol as one connection receives it: its frames as encoded,
/// or compressed with permessage-deflate (RFC 7692) when the connection
/// negotiated it. The topic index counts subscribers per encoding, so that
/// a broadcast is compressed once, and only when someone takes it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Encoding {
    pub(crate) protocol: WireProtocol,
    pub(crate) deflate: bool,
}

impl Encoding {
    /// How many encodings there are: each protocol, plain and deflated.
    pub(crate) const COUNT: usize = 2 * WireProtocol::COUNT;

    /// Every encoding, in [`index`](Self::index) order.
    pub(crate) const ALL: [Self; Self::COUNT] = {
        let mut all = [Self::plain(WireProtocol::Raw); Self::COUNT];
        let mut index = 0;
        while index < WireProtocol::COUNT {
            let protocol = WireProtocol::ALL[index];
            all[index] = Self::plain(protocol);
            all[index + WireProtocol::COUNT] = Self::deflated(protocol);
            index += 1;
        }
        all
    };

    /// `protocol`'s frames as encoded.
    pub(crate) const fn plain(protocol: WireProtocol) -> Self {
        Self {
            protocol,
            deflate: false,
        }
    }

    /// `protocol`'s frames, compressed.
    pub(crate) const fn deflated(protocol: WireProtocol) -> Self {
        Self {
            protocol,
            deflate: true,
        }
    }

    /// A dense index, for per-encoding arrays: the plain encodings first.
    pub(crate) const fn index(self) -> usize {
        self.protocol.index() + if self.deflate { WireProtocol::COUNT } else { 0 }
    }
}
