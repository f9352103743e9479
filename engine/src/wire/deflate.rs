//! permessage-deflate (RFC 7692) as herald uses it: every message
//! compressed and decompressed on its own, with no context carried from one
//! message to the next, in either direction.
//!
//! herald always answers an offer with `server_no_context_takeover` and
//! `client_no_context_takeover` (section 7.1.1: a server may add both).
//! Without takeover a compressed frame depends on nothing but its message,
//! so a broadcast is compressed once and the same bytes go to every
//! subscriber that negotiated the extension, like any other shared frame;
//! and a connection keeps no inflate state between messages, so an idle
//! one holds none. Each thread that compresses (a loop, an API thread, the
//! cluster bus) keeps one [`Deflater`], and each loop one [`Inflater`],
//! reset before every message.
//!
//! A compressed message is a raw DEFLATE stream flushed with a sync flush,
//! without the sync flush's trailing `00 00 ff ff` (section 7.2.1); the
//! receiver puts those four bytes back before inflating (7.2.2). The first
//! frame of a compressed message carries RSV1; control frames never do.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{FrameHeader, OpCode};

/// RSV1, the bit that marks a compressed message's first frame.
pub const RSV1: u8 = 0b100;

/// The tail a sync flush ends with, which the sender removes.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest output buffer a [`Deflater`] keeps between messages (a
/// larger one, for an unusually large message, is given back).
const KEPT_OUTPUT: usize = 1 << 20;

/// Bytes the output grows by at a time while inflating.
const INFLATE_STEP: usize = 16 * 1024;

/// Why a compressed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the message limit (close 1009); found as soon as
    /// the output passes the limit, never after inflating all of it.
    #[error("inflated message exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a DEFLATE stream (close 1007: the payload is not
    /// consistent with the message's type).
    #[error("invalid compressed data")]
    Corrupt,
}

/// Compresses one message at a time into a final frame with RSV1.
pub struct Deflater {
    compress: Compress,
    /// Reused output buffer.
    out: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor at `level` (0-9; 6 is zlib's default balance).
    pub fn new(level: u32) -> Self {
        Self {
            compress: Compress::new(Compression::new(level.min(9)), false),
            out: Vec::new(),
        }
    }

    /// `payload` as one compressed frame of `opcode` (text or binary),
    /// with no context from earlier messages.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        self.compress.reset();
        self.out.clear();
        // A sync flush of incompressible data grows it by a few bytes per
        // 64 KiB block; room for that and the tail up front.
        self.out.reserve(payload.len() + payload.len() / 1024 + 64);
        let mut input = payload;
        loop {
            let before = self.compress.total_in();
            let status = self
                .compress
                .compress_vec(input, &mut self.out, FlushCompress::Sync);
            let consumed = (self.compress.total_in() - before) as usize;
            input = &input[consumed..];
            let flushed = self.out.ends_with(&SYNC_TAIL);
            if input.is_empty() && flushed || status.is_err() {
                break;
            }
            self.out.reserve(self.out.capacity().max(1024));
        }
        let compressed = self.out.strip_suffix(&SYNC_TAIL).unwrap_or(&self.out);
        // An empty message compresses to a single zero byte.
        let compressed: &[u8] = if compressed.is_empty() {
            &[0]
        } else {
            compressed
        };
        let header = FrameHeader {
            fin: true,
            rsv: RSV1,
            opcode,
            mask: None,
            payload_len: compressed.len() as u64,
        }
        .encode();
        let mut frame = BytesMut::with_capacity(header.as_bytes().len() + compressed.len());
        frame.put_slice(header.as_bytes());
        frame.put_slice(compressed);
        if self.out.capacity() > KEPT_OUTPUT {
            self.out = Vec::new();
        }
        frame.freeze()
    }
}

/// Decompresses one message at a time, within a size limit. Its state
/// (about 40 KiB with the window) is allocated at the first message.
pub struct Inflater {
    decompress: Option<Box<Decompress>>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// An inflater for raw DEFLATE with a 32 KiB window (any window a
    /// client may use).
    pub const fn new() -> Self {
        Self { decompress: None }
    }

    /// The message `payload` carried, inflated with no context from
    /// earlier messages; at most `limit` bytes.
    pub fn inflate(&mut self, payload: &[u8], limit: usize) -> Result<Bytes, InflateError> {
        let decompress = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        decompress.reset(false);
        let mut out: Vec<u8> =
            Vec::with_capacity(payload.len().saturating_mul(2).clamp(64, INFLATE_STEP));
        for input in [payload, &SYNC_TAIL[..]] {
            let mut input = input;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooLarge { limit });
                    }
                    // One byte past the limit tells "too large" from "just fits".
                    let room =
                        (limit.saturating_add(1) - out.len()).min(INFLATE_STEP.max(out.len()));
                    out.reserve_exact(room);
                }
                let before_in = decompress.total_in();
                let before_out = out.len();
                let status = decompress
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let consumed = (decompress.total_in() - before_in) as usize;
                input = &input[consumed..];
                if out.len() > limit {
                    return Err(InflateError::TooLarge { limit });
                }
                let stalled = consumed == 0 && out.len() == before_out;
                match status {
                    // The client ended its stream (BFINAL): the tail, if any
                    // is left, is not part of it.
                    Status::StreamEnd => return Ok(Bytes::from(out)),
                    _ if input.is_empty() && out.len() < out.capacity() => break,
                    // No progress with room to write: the input is done.
                    _ if stalled && out.len() < out.capacity() => break,
                    _ => {}
                }
            }
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Decoder, DecoderConfig, Message, client_frame};

    fn payload_of(frame: &[u8]) -> (FrameHeader, &[u8]) {
        let (header, len) = FrameHeader::parse(frame).unwrap().unwrap();
        (header, &frame[len..])
    }

    #[test]
    fn a_message_round_trips_and_frames_carry_rsv1_without_the_tail() {
        let mut deflater = Deflater::new(6);
        let mut inflater = Inflater::new();
        let message =
            br#"{"event":"new_msg","payload":{"body":"hello hello hello hello"}}"#.repeat(20);
        let frame = deflater.frame(OpCode::Text, &message);
        let (header, compressed) = payload_of(&frame);
        assert_eq!(header.rsv, RSV1);
        assert!(header.fin);
        assert!(
            compressed.len() < message.len() / 4,
            "{} bytes",
            compressed.len()
        );
        assert!(!compressed.ends_with(&SYNC_TAIL));
        assert_eq!(
            &inflater.inflate(compressed, 1 << 20).unwrap()[..],
            &message[..]
        );
        // No context: the same message compresses to the same bytes again.
        assert_eq!(deflater.frame(OpCode::Text, &message), frame);
    }

    #[test]
    fn empty_and_incompressible_messages_round_trip() {
        let mut deflater = Deflater::new(6);
        let mut inflater = Inflater::new();
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for message in [&b""[..], b"x", &noise] {
            let frame = deflater.frame(OpCode::Binary, message);
            let (_, compressed) = payload_of(&frame);
            assert_eq!(&inflater.inflate(compressed, 1 << 20).unwrap()[..], message);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let mut deflater = Deflater::new(9);
        let mut inflater = Inflater::new();
        let zeros = vec![0u8; 8 << 20];
        let frame = deflater.frame(OpCode::Binary, &zeros);
        let (_, compressed) = payload_of(&frame);
        assert!(compressed.len() < 16 * 1024, "{}", compressed.len());
        assert_eq!(
            inflater.inflate(compressed, 64 * 1024),
            Err(InflateError::TooLarge { limit: 64 * 1024 })
        );
        assert_eq!(
            inflater.inflate(compressed, 8 << 20).unwrap().len(),
            8 << 20
        );
        assert_eq!(
            inflater.inflate(&[0xff; 64], 1 << 20),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn what_a_client_compresses_reaches_the_decoder_as_an_encoded_message() {
        let mut deflater = Deflater::new(6);
        let (_, compressed) = {
            let frame = deflater.frame(OpCode::Text, b"hello");
            let (_, payload) = payload_of(&frame);
            (0, payload.to_vec())
        };
        let mut buf = BytesMut::new();
        client_frame(&mut buf, true, OpCode::Text, [1, 2, 3, 4], &compressed);
        buf[0] |= RSV1 << 4;
        let config = DecoderConfig::default().accept_rsv_bits(RSV1);
        let message = Decoder::new().decode(&mut buf, &config).unwrap().unwrap();
        let Message::Encoded {
            opcode,
            rsv,
            payload,
        } = message
        else {
            panic!("{message:?}");
        };
        assert_eq!((opcode, rsv), (OpCode::Text, RSV1));
        assert_eq!(
            &Inflater::new().inflate(&payload, 100).unwrap()[..],
            b"hello"
        );
    }
}
