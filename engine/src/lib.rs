//! # herald
//!
//! A WebSocket "channels" fan-out engine: clients join topics, the
//! application broadcasts to a topic from anywhere, and every subscriber gets
//! the message, at millions of deliveries per second on one box.
//!
//! This release contains the foundation every other layer stands on:
//!
//! - [`wire`]: the RFC 6455 frame codec. An incremental, zero-copy decoder
//!   for client frames that rejects hostile input with the right close code,
//!   and encoders that build a server frame once as [`bytes::Bytes`] so any
//!   number of connections can share it.
//!
//! The per-core event loops, the channels layer (Phoenix V2 and Amber wire
//! protocols), the broker adapters and the standalone server are built on it
//! in later releases; see the repository's README for the plan.
//!
//! # Example
//!
//! Decode what a client sent and build the frame of a broadcast once:
//!
//! ```
//! use bytes::BytesMut;
//! use herald::wire::{Decoder, DecoderConfig, Message, OpCode, client_frame, text_frame};
//!
//! let mut from_client = BytesMut::new();
//! client_frame(&mut from_client, true, OpCode::Text, [1, 2, 3, 4], b"hello");
//! let mut decoder = Decoder::new();
//! let Ok(Some(Message::Text(text))) = decoder.decode(&mut from_client, &DecoderConfig::default())
//! else {
//!     panic!("expected a text message");
//! };
//!
//! // One frame, shared by every subscriber's write queue.
//! let frame = text_frame(text.as_str());
//! let queues: Vec<_> = (0..3).map(|_| frame.clone()).collect();
//! assert!(queues.iter().all(|f| f.as_ptr() == frame.as_ptr()));
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

pub mod wire;

mod config;
mod conn;
mod handler;
mod handshake;
mod reactor;
mod stats;
mod timer;
mod write_queue;

pub use config::{ServerConfig, SlowConsumerPolicy};
pub use handler::{Accept, Conn, Handler, Reject, SendError};
pub use handshake::{HEALTH_PATH, HandshakeError, Request};
pub use reactor::{ConnHandle, Server, ServerBuilder, ServerHandle};
pub use stats::ServerStats;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
