//! Frame headers (RFC 6455 section 5.2): parsing and encoding, sans I/O.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! [`FrameHeader::parse`] checks what a header alone can break (opcode,
//! control-frame rules, length encoding) and reports "need more bytes" as
//! `Ok(None)` without consuming anything. Whether a frame must be masked and
//! which RSV bits are acceptable depend on the role and the negotiated
//! extensions, so the [decoder](super::Decoder) checks those.
//!
//! Errors are found in a fixed order, each as soon as the bytes it needs are
//! present, so the result never depends on how the input was chunked.

use super::{OpCode, ProtocolError};

/// The largest header: 2 fixed bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest control-frame payload (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
///
/// # Examples
///
/// ```
/// use herald::wire::{FrameHeader, OpCode};
///
/// // A masked, final text frame with a 5-byte payload.
/// let bytes = [0x81, 0x85, 1, 2, 3, 4];
/// let (header, len) = FrameHeader::parse(&bytes).unwrap().unwrap();
/// assert_eq!(len, 6);
/// assert_eq!(header.opcode, OpCode::Text);
/// assert_eq!(header.payload_len, 5);
/// assert_eq!(header.mask, Some([1, 2, 3, 4]));
///
/// // One byte short: "need more", nothing consumed.
/// assert_eq!(FrameHeader::parse(&bytes[..5]), Ok(None));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether this is the final fragment of its message.
    pub fin: bool,
    /// RSV1, RSV2 and RSV3 as the low three bits, RSV1 the most significant.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns the header and its encoded length, `Ok(None)` if `buf` holds
    /// only part of a header, or the first rule the header breaks:
    /// a reserved opcode, a fragmented or over-long control frame, a length
    /// in a non-minimal encoding (herald is strict: section 5.2 says the
    /// minimal number of bytes MUST be used) or a 64-bit length with its top
    /// bit set.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let [first, second, ..] = *buf else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        let rsv = (first >> 4) & 0x7;
        let opcode = OpCode::try_from(first & 0x0F)?;
        let masked = second & 0x80 != 0;
        let short_len = second & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if usize::from(short_len) > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let Some((payload_len, len_bytes)) = parse_length(short_len, &buf[2..])? else {
            return Ok(None);
        };
        let mask_at = 2 + len_bytes;
        let (mask, header_len) = if masked {
            let Some(key) = buf.get(mask_at..mask_at + 4) else {
                return Ok(None);
            };
            (Some([key[0], key[1], key[2], key[3]]), mask_at + 4)
        } else {
            (None, mask_at)
        };
        let header = Self {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes this header (minimal length encoding).
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::wire::{FrameHeader, OpCode};
    ///
    /// let header = FrameHeader {
    ///     fin: true,
    ///     rsv: 0,
    ///     opcode: OpCode::Binary,
    ///     mask: None,
    ///     payload_len: 300,
    /// };
    /// assert_eq!(header.encode().as_bytes(), &[0x82, 126, 0x01, 0x2C]);
    /// ```
    #[inline]
    pub fn encode(&self) -> EncodedHeader {
        let mut out = EncodedHeader {
            bytes: [0; MAX_HEADER_LEN],
            len: 0,
        };
        out.bytes[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = 2;
        match self.payload_len {
            short @ 0..=125 => out.bytes[1] = mask_bit | short as u8,
            medium @ 126..=0xFFFF => {
                out.bytes[1] = mask_bit | 126;
                out.bytes[2..4].copy_from_slice(&(medium as u16).to_be_bytes());
                len = 4;
            }
            long => {
                out.bytes[1] = mask_bit | 127;
                out.bytes[2..10].copy_from_slice(&long.to_be_bytes());
                len = 10;
            }
        }
        if let Some(key) = self.mask {
            out.bytes[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        out.len = len as u8;
        out
    }
}

/// Decodes the payload length that follows the two fixed bytes.
/// Returns the length and how many extra bytes encoded it.
#[inline]
fn parse_length(short_len: u8, rest: &[u8]) -> Result<Option<(u64, usize)>, ProtocolError> {
    match short_len {
        126 => {
            let Some(&[a, b]) = rest.get(..2).map(<[u8]>::as_ref) else {
                return Ok(None);
            };
            let len = u16::from_be_bytes([a, b]);
            if len < 126 {
                return Err(ProtocolError::NonMinimalLength);
            }
            Ok(Some((u64::from(len), 2)))
        }
        127 => {
            let Some(bytes) = rest.get(..8) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTopBitSet);
            }
            if len <= 0xFFFF {
                return Err(ProtocolError::NonMinimalLength);
            }
            Ok(Some((len, 8)))
        }
        short => Ok(Some((u64::from(short), 0))),
    }
}

/// An encoded header in a stack buffer: the first iovec of a frame whose
/// payload is written from its own buffer.
#[derive(Clone, Copy)]
pub struct EncodedHeader {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl EncodedHeader {
    /// The header bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for EncodedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EncodedHeader")
            .field(&self.as_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    #[test]
    fn payload_lengths_use_7_16_and_64_bit_encodings() {
        for (len, header_len) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (0xFFFF, 4),
            (0x1_0000, 10),
            (u64::MAX >> 1, 10),
        ] {
            let h = header(OpCode::Binary, len, None);
            let encoded = h.encode();
            assert_eq!(encoded.as_bytes().len(), header_len, "len {len}");
            assert_eq!(
                FrameHeader::parse(encoded.as_bytes()),
                Ok(Some((h, header_len)))
            );
        }
    }

    #[test]
    fn masked_header_round_trips() {
        let h = header(OpCode::Text, 70_000, Some([9, 8, 7, 6]));
        let encoded = h.encode();
        assert_eq!(encoded.as_bytes().len(), 14);
        assert_eq!(FrameHeader::parse(encoded.as_bytes()), Ok(Some((h, 14))));
    }

    #[test]
    fn partial_headers_need_more_bytes() {
        let encoded = header(OpCode::Binary, 70_000, Some([1, 2, 3, 4])).encode();
        let bytes = encoded.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(FrameHeader::parse(&bytes[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn length_with_top_bit_set_is_an_error() {
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            FrameHeader::parse(&bytes),
            Err(ProtocolError::LengthTopBitSet)
        );
    }

    #[test]
    fn non_minimal_length_encodings_are_errors() {
        // 16-bit encoding of 125.
        assert_eq!(
            FrameHeader::parse(&[0x82, 0xFE, 0x00, 125, 0, 0, 0, 0]),
            Err(ProtocolError::NonMinimalLength)
        );
        // 64-bit encoding of 65535.
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&0xFFFFu64.to_be_bytes());
        assert_eq!(
            FrameHeader::parse(&bytes),
            Err(ProtocolError::NonMinimalLength)
        );
    }

    #[test]
    fn control_frames_must_have_fin_set() {
        // Ping (0x9) without FIN.
        assert_eq!(
            FrameHeader::parse(&[0x09, 0x80]),
            Err(ProtocolError::FragmentedControlFrame)
        );
    }

    #[test]
    fn control_frames_carry_at_most_125_bytes() {
        assert!(FrameHeader::parse(&[0x89, 0x80 | 125]).unwrap().is_none());
        assert_eq!(
            FrameHeader::parse(&[0x89, 0x80 | 126]),
            Err(ProtocolError::ControlFrameTooLong)
        );
        assert_eq!(
            FrameHeader::parse(&[0x88, 0x80 | 127]),
            Err(ProtocolError::ControlFrameTooLong)
        );
    }

    #[test]
    fn reserved_opcodes_are_rejected_from_the_first_two_bytes() {
        assert_eq!(
            FrameHeader::parse(&[0x83, 0x80]),
            Err(ProtocolError::ReservedOpcode(0x3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x8B, 0x80]),
            Err(ProtocolError::ReservedOpcode(0xB))
        );
    }
}
