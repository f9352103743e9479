//! The incremental decoder for client-to-server frames.
//!
//! The caller reads from the socket into a [`BytesMut`] and calls
//! [`Decoder::decode`] after every read; the decoder consumes what it can and
//! keeps its place between calls, so any split of the byte stream (one byte
//! per read, or many frames per read) gives the same messages.
//!
//! # Zero copy
//!
//! Payloads are unmasked in place in the read buffer. A message that fits in
//! one frame (the common case) is handed out as a [`Bytes`] split off that
//! buffer: no copy, and the application may keep it, rebroadcast it, or
//! drop it. Only fragmented messages are copied, into an assembly buffer
//! that grows no larger than the message limit.
//!
//! # Limits before allocation
//!
//! Frame and message sizes are checked against [`DecoderConfig`] when the
//! header arrives, before a single payload byte is buffered, so a client
//! cannot make the server hold more than `max_frame_size` bytes of one frame
//! plus `max_message_size` bytes of one fragmented message.
//!
//! # Fail fast
//!
//! Payload bytes are unmasked and, for text, UTF-8 validated as soon as they
//! arrive, even before the rest of the frame: an invalid prefix fails the
//! connection without waiting for data that may never come.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    CloseCode, CloseFrame, FrameHeader, OpCode, ProtocolError, Utf8Bytes, Utf8Validator, apply_mask,
};

/// Limits and negotiated options for a [`Decoder`]. One value usually
/// serves every connection of an endpoint.
///
/// # Examples
///
/// ```
/// use herald::wire::DecoderConfig;
///
/// let config = DecoderConfig::default()
///     .max_frame_size(64 * 1024)
///     .max_message_size(1024 * 1024);
/// assert_eq!(config.frame_limit(), 64 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    max_frame_size: usize,
    max_message_size: usize,
    accepted_rsv: u8,
}

impl DecoderConfig {
    /// The default frame and message limit: 16 MiB.
    ///
    /// Large enough for any chat, dashboard or market-data message and for
    /// conformance suites; small enough that one client cannot tie up much
    /// memory. Fan-out servers whose clients only send small pushes should
    /// lower it (64 KiB is plenty for channel messages).
    pub const DEFAULT_LIMIT: usize = 16 << 20;

    /// Sets the largest payload one frame may declare (default
    /// [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT)). Larger frames fail with
    /// close code 1009 as soon as their header arrives; so do frames over
    /// 4 GiB, whatever the limit.
    pub const fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets the largest size a message may reach across its fragments
    /// (default [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT)).
    pub const fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Accepts the given RSV bits (RSV1 = `0b100`) on the first frame of a
    /// data message, as a negotiated extension defines them (RFC 7692
    /// permessage-deflate uses RSV1 this way). Such messages are returned as
    /// [`Message::Encoded`] for the extension to decode. The bits remain
    /// errors on control frames and continuation frames. Default: none.
    pub const fn accept_rsv_bits(mut self, bits: u8) -> Self {
        self.accepted_rsv = bits & 0x7;
        self
    }

    /// The frame size limit in force.
    pub const fn frame_limit(&self) -> usize {
        self.max_frame_size
    }

    /// The message size limit in force.
    pub const fn message_limit(&self) -> usize {
        self.max_message_size
    }
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_frame_size: Self::DEFAULT_LIMIT,
            max_message_size: Self::DEFAULT_LIMIT,
            accepted_rsv: 0,
        }
    }
}

/// One complete message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, validated as UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A data message whose first frame carried RSV bits that a negotiated
    /// extension defines (see [`DecoderConfig::accept_rsv_bits`]). The
    /// payload is as the extension encoded it; the extension decodes it and,
    /// for text, validates the result as UTF-8.
    Encoded {
        /// [`OpCode::Text`] or [`OpCode::Binary`].
        opcode: OpCode,
        /// The RSV bits of the first frame.
        rsv: u8,
        /// The encoded payload, all fragments joined.
        payload: Bytes,
    },
    /// A ping; the server answers with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame: `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

/// Decodes the frames one client sends, across arbitrary partial reads.
///
/// The decoder holds only the state that must survive between reads (a few
/// dozen bytes); limits come from a [`DecoderConfig`] passed to each call,
/// so a server keeps one config per endpoint rather than one per connection.
///
/// Once it has returned an error, the decoder returns that same error for
/// every later call: the connection must be failed with the error's
/// [close code](ProtocolError::close_code).
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use herald::wire::{Decoder, DecoderConfig, Message};
///
/// let config = DecoderConfig::default();
/// let mut decoder = Decoder::new();
/// // A masked text frame "Hi", delivered in two reads.
/// let frame = [0x81, 0x82, 0x01, 0x02, 0x03, 0x04, b'H' ^ 1, b'i' ^ 2];
/// let mut buf = BytesMut::from(&frame[..3]);
/// assert_eq!(decoder.decode(&mut buf, &config), Ok(None));
/// buf.extend_from_slice(&frame[3..]);
/// match decoder.decode(&mut buf, &config) {
///     Ok(Some(Message::Text(text))) => assert_eq!(text.as_str(), "Hi"),
///     other => panic!("unexpected {other:?}"),
/// }
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    /// The frame whose header has been consumed and whose payload is (partly)
    /// at the front of the read buffer.
    frame: Option<PartialFrame>,
    /// The fragmented message that is open, if any. Boxed: rare, and it would
    /// otherwise triple the size of every idle connection's decoder.
    message: Option<Box<PartialMessage>>,
    /// Validates the text message in progress.
    utf8: Utf8Validator,
    /// The error this decoder failed with (boxed: every connection holds a
    /// decoder, and this is set at most once in its life).
    failed: Option<Box<ProtocolError>>,
}

#[derive(Debug)]
struct PartialFrame {
    fin: bool,
    opcode: OpCode,
    /// RSV bits, non-zero only on the first frame of an extension-encoded
    /// data message.
    rsv: u8,
    key: [u8; 4],
    /// The header's length: the header stays at the front of the buffer
    /// until the frame is complete, so that the frame leaves it in one
    /// split.
    header_len: u8,
    /// The payload length (frames over 4 GiB are refused, which keeps this
    /// state, held by every connection, small).
    len: u32,
    /// Payload bytes, after the header, already unmasked (and validated,
    /// for text).
    processed: u32,
    /// Whether the payload is text to validate as it arrives.
    is_text: bool,
}

#[derive(Debug)]
struct PartialMessage {
    opcode: OpCode,
    rsv: u8,
    is_text: bool,
    /// The fragments so far, joined.
    assembled: Vec<u8>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub const fn new() -> Self {
        Self {
            frame: None,
            message: None,
            utf8: Utf8Validator::new(),
            failed: None,
        }
    }

    /// Decodes the next complete message from the front of `buf`.
    ///
    /// Consumes the frames it decodes, and the header and (unmasked) prefix
    /// of a frame still arriving. Returns `Ok(None)` when `buf` runs out
    /// before a message is complete: read more into `buf` and call again.
    /// Call in a loop until `Ok(None)`, since one read may hold many
    /// messages.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        config: &DecoderConfig,
    ) -> Result<Option<Message>, ProtocolError> {
        if let Some(err) = &self.failed {
            return Err(**err);
        }
        let result = self.decode_next(buf, config);
        if let Err(err) = result {
            self.failed = Some(Box::new(err));
        }
        result
    }

    /// Whether the decoder is between messages: no frame or fragmented
    /// message is partly received. A connection whose decoder is idle and
    /// whose read buffer is empty may give its buffer back to a pool.
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.message.is_none()
    }

    /// The bytes allocated to assemble the open fragmented message: the
    /// fuzzers check that it never exceeds the message limit.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn assembly_capacity(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.assembled.capacity())
    }

    #[inline]
    fn decode_next(
        &mut self,
        buf: &mut BytesMut,
        config: &DecoderConfig,
    ) -> Result<Option<Message>, ProtocolError> {
        loop {
            let mut frame = match self.frame.take() {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::parse(buf)? else {
                        return Ok(None);
                    };
                    self.start_frame(&header, header_len, config)?
                }
            };
            if !process_arrived(&mut frame, buf, &mut self.utf8)? {
                self.frame = Some(frame);
                return Ok(None);
            }
            let header_len = usize::from(frame.header_len);
            let mut payload = buf.split_to(header_len + frame.len as usize).freeze();
            payload.advance(header_len);
            if let Some(message) = self.finish_frame(&frame, payload, config)? {
                return Ok(Some(message));
            }
        }
    }

    /// Applies the rules that need the decoder's state or the config to a
    /// freshly parsed header, and sets up the frame's payload processing.
    #[inline]
    fn start_frame(
        &mut self,
        header: &FrameHeader,
        header_len: usize,
        config: &DecoderConfig,
    ) -> Result<PartialFrame, ProtocolError> {
        let key = header.mask.ok_or(ProtocolError::UnmaskedFrame)?;
        let data_start = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        let allowed_rsv = if data_start { config.accepted_rsv } else { 0 };
        if header.rsv & !allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits { bits: header.rsv });
        }
        let len = usize::try_from(header.payload_len)
            .ok()
            .filter(|&len| len <= config.max_frame_size && u32::try_from(len).is_ok())
            .ok_or(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                max: config.max_frame_size,
            })?;
        let is_text = match (header.opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(message)) => {
                check_message_size(message.assembled.len(), len, config)?;
                message.is_text
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            (OpCode::Text | OpCode::Binary, None) => {
                check_message_size(0, len, config)?;
                let is_text = header.opcode == OpCode::Text && header.rsv == 0;
                if is_text {
                    self.utf8 = Utf8Validator::new();
                }
                is_text
            }
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => false,
        };
        Ok(PartialFrame {
            fin: header.fin,
            opcode: header.opcode,
            rsv: header.rsv,
            key,
            // At most MAX_HEADER_LEN (14).
            header_len: header_len as u8,
            // Checked above to fit.
            len: len as u32,
            processed: 0,
            is_text,
        })
    }

    /// Turns a complete frame into a message, or absorbs it into the open
    /// fragmented message.
    #[inline]
    fn finish_frame(
        &mut self,
        frame: &PartialFrame,
        payload: Bytes,
        config: &DecoderConfig,
    ) -> Result<Option<Message>, ProtocolError> {
        match frame.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
            OpCode::Close => parse_close(payload).map(|close| Some(Message::Close(close))),
            OpCode::Text | OpCode::Binary if frame.fin => self
                .data_message(frame.opcode, frame.rsv, payload)
                .map(Some),
            OpCode::Text | OpCode::Binary => {
                let mut assembled = Vec::new();
                append_bounded(&mut assembled, &payload, config.max_message_size);
                self.message = Some(Box::new(PartialMessage {
                    opcode: frame.opcode,
                    rsv: frame.rsv,
                    is_text: frame.is_text,
                    assembled,
                }));
                Ok(None)
            }
            OpCode::Continuation => {
                // `start_frame` has already refused a continuation with no
                // open message; this only keeps that rule in one more place.
                let mut message = self
                    .message
                    .take()
                    .ok_or(ProtocolError::UnexpectedContinuation)?;
                append_bounded(&mut message.assembled, &payload, config.max_message_size);
                if !frame.fin {
                    self.message = Some(message);
                    return Ok(None);
                }
                let PartialMessage {
                    opcode,
                    rsv,
                    assembled,
                    ..
                } = *message;
                self.data_message(opcode, rsv, Bytes::from(assembled))
                    .map(Some)
            }
        }
    }

    /// Wraps a whole data message, checking that text ended on a code point
    /// boundary.
    #[inline]
    fn data_message(
        &self,
        opcode: OpCode,
        rsv: u8,
        payload: Bytes,
    ) -> Result<Message, ProtocolError> {
        if rsv != 0 {
            return Ok(Message::Encoded {
                opcode,
                rsv,
                payload,
            });
        }
        if opcode == OpCode::Binary {
            return Ok(Message::Binary(payload));
        }
        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        // SAFETY: every byte of this text payload went through `self.utf8`
        // as it arrived (`process_arrived`), which accepted it, and `finish`
        // just confirmed that it did not end inside a code point.
        Ok(Message::Text(unsafe {
            Utf8Bytes::from_bytes_unchecked(payload)
        }))
    }
}

/// Unmasks (and for text, validates) the payload bytes of `frame` that have
/// arrived since the last call. Returns whether the whole payload is there.
#[inline]
fn process_arrived(
    frame: &mut PartialFrame,
    buf: &mut BytesMut,
    utf8: &mut Utf8Validator,
) -> Result<bool, ProtocolError> {
    let header_len = usize::from(frame.header_len);
    let (len, processed) = (frame.len as usize, frame.processed as usize);
    let arrived = buf.len().saturating_sub(header_len).min(len);
    if arrived > processed {
        let fresh = &mut buf[header_len + processed..header_len + arrived];
        apply_mask(fresh, frame.key, processed);
        if frame.is_text {
            utf8.feed(fresh).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        // At most `len`, which fits in u32.
        frame.processed = arrived as u32;
    }
    Ok(frame.processed == frame.len)
}

/// Checks that a data frame of `frame_len` bytes keeps its message within
/// the limit, given the `so_far` bytes of earlier fragments.
#[inline]
fn check_message_size(
    so_far: usize,
    frame_len: usize,
    config: &DecoderConfig,
) -> Result<(), ProtocolError> {
    let total = so_far as u64 + frame_len as u64;
    if total > config.max_message_size as u64 {
        return Err(ProtocolError::MessageTooLarge {
            len: total,
            max: config.max_message_size,
        });
    }
    Ok(())
}

/// Appends a fragment, growing geometrically (amortised linear time however
/// small the fragments) but never past `limit`, which `check_message_size`
/// guarantees the message fits in.
fn append_bounded(assembled: &mut Vec<u8>, fragment: &[u8], limit: usize) {
    let needed = assembled.len() + fragment.len();
    if needed > assembled.capacity() {
        let target = (assembled.capacity() * 2)
            .max(needed)
            .min(limit.max(needed));
        assembled.reserve_exact(target - assembled.len());
    }
    assembled.extend_from_slice(fragment);
}

/// Parses a close frame's payload (RFC 6455 section 5.5.1): empty, or a
/// two-byte code allowed on the wire followed by a UTF-8 reason.
fn parse_close(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match *payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::TruncatedClosePayload),
        [high, low, ..] => {
            let code = CloseCode::from(u16::from_be_bytes([high, low]));
            if !code.is_allowed_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.as_u16()));
            }
            let reason = Utf8Bytes::try_from_bytes(payload.slice(2..))
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::append_bounded;

    #[test]
    fn fragment_assembly_never_allocates_beyond_the_message_limit() {
        for limit in [1usize, 100, 4096, 10_000] {
            for fragment in [1usize, 7, 100] {
                let mut assembled = Vec::new();
                let mut reallocations = 0;
                while assembled.len() + fragment <= limit {
                    let before = assembled.capacity();
                    append_bounded(&mut assembled, &vec![0; fragment], limit);
                    reallocations += usize::from(assembled.capacity() != before);
                    assert!(
                        assembled.capacity() <= limit,
                        "limit {limit} fragment {fragment}"
                    );
                }
                // Geometric growth: logarithmically many reallocations.
                assert!(
                    reallocations <= 2 + limit.ilog2() as usize,
                    "{reallocations}"
                );
            }
        }
    }
}
