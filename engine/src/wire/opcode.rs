//! Frame opcodes (RFC 6455 section 5.2 and 11.8).
//!
//! The byte-to-opcode conversion is a `TryFrom`: the four opcode bits come
//! straight off the network, and a reserved value is a protocol error, never a
//! panic.

use super::ProtocolError;

/// The opcode of one WebSocket frame.
///
/// # Examples
///
/// ```
/// use herald::wire::OpCode;
///
/// assert_eq!(OpCode::try_from(0x1), Ok(OpCode::Text));
/// assert!(OpCode::Ping.is_control());
/// assert!(OpCode::try_from(0x3).is_err()); // reserved non-control opcode
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// `0x0`: the next fragment of the message that is open.
    Continuation = 0x0,
    /// `0x1`: the first (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// `0x2`: the first (or only) frame of a binary message.
    Binary = 0x2,
    /// `0x8`: the close handshake.
    Close = 0x8,
    /// `0x9`: a ping; the peer answers with a pong carrying the same payload.
    Ping = 0x9,
    /// `0xA`: a pong, solicited or not.
    Pong = 0xA,
}

impl OpCode {
    /// Whether this is a control opcode (close, ping, pong): such frames may
    /// not be fragmented and carry at most 125 bytes (RFC 6455 section 5.5).
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::wire::OpCode;
    ///
    /// assert!(OpCode::Close.is_control());
    /// assert!(!OpCode::Binary.is_control());
    /// ```
    #[inline]
    pub const fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// The four-bit value that goes on the wire.
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::wire::OpCode;
    ///
    /// assert_eq!(OpCode::Pong.as_u8(), 0xA);
    /// ```
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for OpCode {
    type Error = ProtocolError;

    /// Reads the low four bits of a frame's first byte.
    ///
    /// Values `0x3..=0x7` and `0xB..=0xF` are reserved for future use and
    /// are a [`ProtocolError::ReservedOpcode`]; so is anything above `0xF`.
    #[inline]
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0x0 => Ok(Self::Continuation),
            0x1 => Ok(Self::Text),
            0x2 => Ok(Self::Binary),
            0x8 => Ok(Self::Close),
            0x9 => Ok(Self::Ping),
            0xA => Ok(Self::Pong),
            other => Err(ProtocolError::ReservedOpcode(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_four_bit_value_either_maps_back_or_is_reserved() {
        for value in 0u8..=0xF {
            match OpCode::try_from(value) {
                Ok(op) => assert_eq!(op.as_u8(), value),
                Err(err) => assert_eq!(err, ProtocolError::ReservedOpcode(value)),
            }
        }
    }

    #[test]
    fn reserved_opcodes_are_errors() {
        for value in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                OpCode::try_from(value),
                Err(ProtocolError::ReservedOpcode(value))
            );
        }
    }
}
