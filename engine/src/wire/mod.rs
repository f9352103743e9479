//! The WebSocket wire format (RFC 6455), sans I/O.
//!
//! Everything here takes bytes and returns bytes, messages or errors; no
//! socket, clock or thread is involved, which is what lets the codec be
//! fuzzed and tested exhaustively.
//!
//! - [`Decoder`]: client-to-server frames, incrementally, from a growable
//!   read buffer; zero-copy for unfragmented messages; every RFC 6455 rule a
//!   client can break is a [`ProtocolError`] that carries its close code.
//! - The encoders ([`text_frame`], [`FrameBuilder`], [`server_header`], ...):
//!   server-to-client frames as [`bytes::Bytes`], built once per broadcast
//!   and shared by every subscriber.
//! - The pieces both use: [`FrameHeader`], [`OpCode`], [`CloseCode`],
//!   [`apply_mask`] and the incremental [`Utf8Validator`].
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use herald::wire::{CloseCode, Decoder, DecoderConfig, Message, OpCode, client_frame};
//!
//! let config = DecoderConfig::default().max_message_size(1 << 20);
//! let mut decoder = Decoder::new();
//! let mut read_buf = BytesMut::new();
//!
//! // What a client sends: a ping, then a close with code 1000.
//! client_frame(&mut read_buf, true, OpCode::Ping, [7, 7, 7, 7], b"are you there?");
//! client_frame(&mut read_buf, true, OpCode::Close, [1, 2, 3, 4], &1000u16.to_be_bytes());
//!
//! assert!(matches!(decoder.decode(&mut read_buf, &config), Ok(Some(Message::Ping(_)))));
//! match decoder.decode(&mut read_buf, &config) {
//!     Ok(Some(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::NORMAL),
//!     other => panic!("unexpected {other:?}"),
//! }
//! assert_eq!(decoder.decode(&mut read_buf, &config), Ok(None));
//! ```

mod close;
mod decode;
mod deflate;
mod encode;
mod error;
mod header;
mod mask;
mod opcode;
mod utf8;

#[cfg(test)]
mod tests;

pub use close::{CloseCode, CloseFrame};
pub use decode::{Decoder, DecoderConfig, Message};
pub use deflate::{Deflater, InflateError, Inflater, RSV1};
pub use encode::{
    FrameBuilder, binary_frame, client_frame, close_frame, ping_frame, pong_frame, server_frame,
    server_header, text_frame,
};
pub use error::{EncodeError, ProtocolError};
pub use header::{EncodedHeader, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
pub use mask::{apply_mask, apply_mask_scalar};
pub use opcode::OpCode;
pub use utf8::{InvalidUtf8, Utf8Bytes, Utf8Validator};
