//! The wire layer's errors.
//!
//! [`ProtocolError`] is everything a client can do wrong at the frame level.
//! Each variant knows the close code the server must answer with
//! ([`ProtocolError::close_code`]), so the connection layer never has to
//! decide it again. [`EncodeError`] is the server's own misuse of the
//! encoder, which never depends on network input.

use super::close::CloseCode;

/// A client broke RFC 6455 at the frame level; the connection must be failed
/// with [`close_code`](Self::close_code).
///
/// The variants are `Copy`: a decoder that has failed keeps returning the
/// same error.
///
/// # Examples
///
/// ```
/// use herald::wire::{CloseCode, ProtocolError};
///
/// let err = ProtocolError::InvalidUtf8;
/// assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
/// assert_eq!(err.to_string(), "text is not valid UTF-8");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client frame without the mask bit (section 5.1: the server must
    /// close the connection). Close code 1002.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RSV1-3 bits set that no negotiated extension defines (section 5.2).
    /// Close code 1002.
    #[error("reserved bits {bits:#05b} set where no negotiated extension allows them")]
    ReservedBits {
        /// The three RSV bits as read, RSV1 being the most significant.
        bits: u8,
    },
    /// An opcode that RFC 6455 reserves. Close code 1002.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame without FIN (section 5.5: control frames are never
    /// fragmented). Close code 1002.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame with more than 125 bytes of payload. Close code 1002.
    #[error("control frame payload exceeds 125 bytes")]
    ControlFrameTooLong,
    /// A payload length in a longer encoding than needed (section 5.2: "the
    /// minimal number of bytes MUST be used"). herald is strict here.
    /// Close code 1002.
    #[error("payload length not minimally encoded")]
    NonMinimalLength,
    /// A 64-bit payload length with its most significant bit set.
    /// Close code 1002.
    #[error("64-bit payload length has its top bit set")]
    LengthTopBitSet,
    /// A continuation frame while no fragmented message is open.
    /// Close code 1002.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open.
    /// Close code 1002.
    #[error("new data frame while a fragmented message is open")]
    ExpectedContinuation,
    /// A frame whose declared payload exceeds the configured maximum frame
    /// size; rejected from the header, before any payload is buffered.
    /// Close code 1009.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The declared payload length.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message whose fragments add up to more than the configured maximum
    /// message size; rejected from the header of the frame that would cross
    /// it. Close code 1009.
    #[error("message of at least {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The size the message would reach with this frame.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// Text (or a close reason) that is not UTF-8, detected at the first
    /// byte that makes it so. Close code 1007.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame with a one-byte payload: too long to be empty, too short
    /// to hold a status code. Close code 1002.
    #[error("close frame payload of one byte")]
    TruncatedClosePayload,
    /// A close frame with a code that may not be sent on the wire (see
    /// [`CloseCode::is_allowed_on_wire`]). Close code 1002.
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A compressed message (permessage-deflate) that inflates past the
    /// message limit, found as soon as the output passes it. Close code
    /// 1009.
    #[error("message inflates past the limit of {max} bytes")]
    InflatedTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// A compressed message whose payload is not a DEFLATE stream. Close
    /// code 1007.
    #[error("invalid compressed data")]
    BadCompression,
}

impl ProtocolError {
    /// The close code that the server sends before closing the connection.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::wire::{CloseCode, ProtocolError};
    ///
    /// let too_big = ProtocolError::FrameTooLarge { len: 1 << 30, max: 1 << 20 };
    /// assert_eq!(too_big.close_code(), CloseCode::MESSAGE_TOO_BIG);
    /// assert_eq!(ProtocolError::UnmaskedFrame.close_code(), CloseCode::PROTOCOL_ERROR);
    /// ```
    pub const fn close_code(&self) -> CloseCode {
        match self {
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::InflatedTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::BadCompression => CloseCode::INVALID_PAYLOAD,
            Self::UnmaskedFrame
            | Self::ReservedBits { .. }
            | Self::ReservedOpcode(_)
            | Self::FragmentedControlFrame
            | Self::ControlFrameTooLong
            | Self::NonMinimalLength
            | Self::LengthTopBitSet
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::TruncatedClosePayload
            | Self::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// The server asked the encoder for a frame that RFC 6455 does not allow.
///
/// These come from herald's or the application's own arguments, never from
/// network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Control frames carry at most 125 bytes (a close frame: a two-byte
    /// code and at most 123 bytes of reason). Shorten the payload.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlPayloadTooLong(usize),
    /// The close code may not be sent (see
    /// [`CloseCode::is_allowed_on_wire`]); use 1000-1003, 1007-1014 or
    /// 3000-4999.
    #[error("close code {0} may not be sent")]
    CloseCodeNotSendable(u16),
}

impl From<super::InflateError> for ProtocolError {
    fn from(err: super::InflateError) -> Self {
        match err {
            super::InflateError::TooLarge { limit } => Self::InflatedTooLarge { max: limit },
            super::InflateError::Corrupt => Self::BadCompression,
        }
    }
}
