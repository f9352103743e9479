//! Frame encoding.
//!
//! Server-to-client frames are never masked (RFC 6455 section 5.1), so a
//! frame is the same bytes for every recipient: a broadcast is encoded once
//! into a [`Bytes`] and each subscriber's write queue holds a cheap,
//! refcounted clone. Three shapes are offered:
//!
//! - one contiguous `Bytes` per frame ([`text_frame`], [`binary_frame`],
//!   [`server_frame`], the control frames): one allocation, one iovec;
//! - [`FrameBuilder`], which lets a serializer write the payload straight
//!   into the frame's buffer (room for the header is kept in front, so the
//!   payload is never copied to make space for it);
//! - [`server_header`], a header on the stack to send in front of a payload
//!   that already lives in its own buffer: two iovecs, no copy.
//!
//! [`client_frame`] builds masked frames, as clients send them: for tests,
//! the fuzzers and the load generator.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    CloseCode, EncodeError, EncodedHeader, FrameHeader, MAX_CONTROL_PAYLOAD, OpCode, apply_mask,
};

/// The longest unmasked header: 2 bytes plus a 64-bit length.
const MAX_SERVER_HEADER: usize = 10;

/// The header of a final, unmasked frame carrying `payload_len` bytes.
///
/// # Examples
///
/// ```
/// use herald::wire::{OpCode, server_header};
///
/// let payload = vec![0u8; 1000];
/// let header = server_header(OpCode::Binary, payload.len());
/// // Send `header.as_bytes()` and `payload` as two iovecs.
/// assert_eq!(header.as_bytes(), &[0x82, 126, 0x03, 0xE8]);
/// ```
#[inline]
pub fn server_header(opcode: OpCode, payload_len: usize) -> EncodedHeader {
    FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask: None,
        payload_len: payload_len as u64,
    }
    .encode()
}

/// A final, unmasked frame with a copy of `payload`, in one buffer.
///
/// The caller is responsible for the opcode's rules: a control opcode needs
/// a payload of at most 125 bytes (use [`ping_frame`], [`pong_frame`] or
/// [`close_frame`], which check), and text must be UTF-8.
///
/// # Examples
///
/// ```
/// use herald::wire::{OpCode, server_frame};
///
/// let frame = server_frame(OpCode::Text, b"hi");
/// assert_eq!(&frame[..], &[0x81, 0x02, b'h', b'i']);
/// ```
#[inline]
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = server_header(opcode, payload.len());
    let mut frame = BytesMut::with_capacity(header.as_bytes().len() + payload.len());
    frame.put_slice(header.as_bytes());
    frame.put_slice(payload);
    frame.freeze()
}

/// A text frame.
///
/// # Examples
///
/// ```
/// use herald::wire::text_frame;
///
/// assert_eq!(&text_frame("ok")[..], b"\x81\x02ok");
/// ```
#[inline]
pub fn text_frame(text: &str) -> Bytes {
    server_frame(OpCode::Text, text.as_bytes())
}

/// A binary frame.
///
/// # Examples
///
/// ```
/// use herald::wire::binary_frame;
///
/// assert_eq!(&binary_frame(&[1, 2])[..], &[0x82, 0x02, 1, 2]);
/// ```
#[inline]
pub fn binary_frame(data: &[u8]) -> Bytes {
    server_frame(OpCode::Binary, data)
}

/// A ping frame; fails if `payload` exceeds 125 bytes.
///
/// # Examples
///
/// ```
/// use herald::wire::ping_frame;
///
/// assert_eq!(&ping_frame(b"")?[..], &[0x89, 0x00]);
/// assert!(ping_frame(&[0; 126]).is_err());
/// # Ok::<(), herald::wire::EncodeError>(())
/// ```
pub fn ping_frame(payload: &[u8]) -> Result<Bytes, EncodeError> {
    control_frame(OpCode::Ping, payload)
}

/// A pong frame; fails if `payload` exceeds 125 bytes.
///
/// # Examples
///
/// ```
/// use herald::wire::pong_frame;
///
/// assert_eq!(&pong_frame(b"x")?[..], &[0x8A, 0x01, b'x']);
/// # Ok::<(), herald::wire::EncodeError>(())
/// ```
pub fn pong_frame(payload: &[u8]) -> Result<Bytes, EncodeError> {
    control_frame(OpCode::Pong, payload)
}

/// A close frame with a status code and a reason.
///
/// Fails if the code may not be sent (1005, 1006, 1015, reserved ranges) or
/// the reason is longer than 123 bytes.
///
/// # Examples
///
/// ```
/// use herald::wire::{CloseCode, close_frame};
///
/// let frame = close_frame(CloseCode::GOING_AWAY, "restart")?;
/// assert_eq!(&frame[..4], &[0x88, 9, 0x03, 0xE9]);
/// assert!(close_frame(CloseCode::ABNORMAL, "").is_err());
/// # Ok::<(), herald::wire::EncodeError>(())
/// ```
pub fn close_frame(code: CloseCode, reason: &str) -> Result<Bytes, EncodeError> {
    if !code.is_allowed_on_wire() {
        return Err(EncodeError::CloseCodeNotSendable(code.as_u16()));
    }
    let len = 2 + reason.len();
    if len > MAX_CONTROL_PAYLOAD {
        return Err(EncodeError::ControlPayloadTooLong(len));
    }
    let mut frame = BytesMut::with_capacity(2 + len);
    frame.put_slice(server_header(OpCode::Close, len).as_bytes());
    frame.put_u16(code.as_u16());
    frame.put_slice(reason.as_bytes());
    Ok(frame.freeze())
}

fn control_frame(opcode: OpCode, payload: &[u8]) -> Result<Bytes, EncodeError> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(EncodeError::ControlPayloadTooLong(payload.len()));
    }
    Ok(server_frame(opcode, payload))
}

/// Builds one server frame whose payload is written in place, such as a
/// broadcast serialized once for every subscriber.
///
/// The builder keeps room for the longest header in front of the payload;
/// [`finish`](Self::finish) writes the real header right before the payload
/// and hands out the frame without moving a byte of it.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use herald::wire::{FrameBuilder, OpCode};
///
/// let mut builder = FrameBuilder::with_capacity(64);
/// write!(builder, "[null,null,\"room:1\",\"new_msg\",{{}}]")?;
/// let frame = builder.finish(OpCode::Text)?;
/// assert_eq!(frame[0], 0x81);
/// assert_eq!(usize::from(frame[1]), frame.len() - 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
}

impl FrameBuilder {
    /// A builder with room for `payload_capacity` bytes before it grows.
    pub fn with_capacity(payload_capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + payload_capacity);
        buf.put_bytes(0, MAX_SERVER_HEADER);
        Self { buf }
    }

    /// The payload written so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[MAX_SERVER_HEADER..]
    }

    /// Appends payload bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes the header for `opcode` in front of the payload and returns
    /// the frame. Fails for a control opcode with more than 125 bytes.
    ///
    /// As with [`server_frame`], a text payload must be UTF-8.
    pub fn finish(mut self, opcode: OpCode) -> Result<Bytes, EncodeError> {
        let payload_len = self.buf.len() - MAX_SERVER_HEADER;
        if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD {
            return Err(EncodeError::ControlPayloadTooLong(payload_len));
        }
        let header = server_header(opcode, payload_len);
        let header = header.as_bytes();
        let start = MAX_SERVER_HEADER - header.len();
        self.buf[start..MAX_SERVER_HEADER].copy_from_slice(header);
        Ok(self.buf.split_off(start).freeze())
    }
}

impl io::Write for FrameBuilder {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends a masked frame to `dst`, as a client sends it.
///
/// `fin = false` and `OpCode::Continuation` build fragmented messages; no
/// rule is checked, so tests can build invalid frames on purpose.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use herald::wire::{Decoder, DecoderConfig, Message, OpCode, client_frame};
///
/// let mut wire = BytesMut::new();
/// client_frame(&mut wire, false, OpCode::Text, [1, 2, 3, 4], b"Hel");
/// client_frame(&mut wire, true, OpCode::Continuation, [5, 6, 7, 8], b"lo");
/// let message = Decoder::new().decode(&mut wire, &DecoderConfig::default());
/// assert!(matches!(message, Ok(Some(Message::Text(t))) if t.as_str() == "Hello"));
/// ```
pub fn client_frame(dst: &mut BytesMut, fin: bool, opcode: OpCode, key: [u8; 4], payload: &[u8]) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    }
    .encode();
    dst.reserve(header.as_bytes().len() + payload.len());
    dst.put_slice(header.as_bytes());
    let start = dst.len();
    dst.put_slice(payload);
    apply_mask(&mut dst[start..], key, 0);
}
