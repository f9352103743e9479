//! # herald
//!
//! A WebSocket "channels" fan-out engine: clients join topics, the
//! application broadcasts to a topic from anywhere, and every subscriber gets
//! the message, at millions of deliveries per second on one box.
//!
//! Layers, bottom up (the broker adapters and the standalone server come
//! next):
//!
//! - [`wire`]: the RFC 6455 frame codec, sans I/O. An incremental,
//!   zero-copy decoder for client frames that rejects hostile input with the
//!   right close code, and encoders that build a server frame once as
//!   [`bytes::Bytes`] so any number of connections can share it.
//! - The event-loop server: [`Server`], configured by [`ServerBuilder`], runs
//!   one `mio` loop per core; the application implements [`Handler`] (after
//!   Azu's channel: `on_connect`, `on_message`, `on_binary`, `on_ping`,
//!   `on_pong`, `on_close`) and sends through [`Conn`] inside callbacks or a
//!   [`ConnHandle`] from any thread; plain pub/sub with
//!   [`Conn::subscribe`] and [`ServerHandle::publish`].
//! - [`channels`]: sockets, topics routed to channel handlers, join/leave,
//!   rebroadcast, interception and server-side subscriptions, over the
//!   Phoenix V2 and Amber wire protocols ([`protocol`]); broadcasts from
//!   anywhere through an [`EngineHandle`](channels::EngineHandle), indexed by
//!   the lock-free [`pubsub`] registry.
//!
//! # Architecture
//!
//! ```text
//!   any thread                        loop threads (one per core, pinned)
//!  ─────────────                     ──────────────────────────────────────
//!  ConnHandle ──┐  mailbox + waker   ┌─ loop 0: SO_REUSEPORT listener
//!  ServerHandle ┼──────────────────► │   slab of connections (≈300 B idle)
//!               │                    │   timer wheel (100 ms ticks)
//!               │                    │   read-buffer pool
//!               └──────────────────► └─ loop 1: ... (no socket is shared)
//!
//!  per connection:  recv ─► wire::Decoder ─► Handler callbacks
//!                   Handler sends ─► write queue of shared Bytes ─► one writev per turn
//! ```
//!
//! A loop turn polls, handles events (accepts, mailbox commands, reads that
//! dispatch to the handler), expires timers (handshake timeout, heartbeat
//! pings, idle and close timeouts), then flushes every connection that had
//! frames queued during the turn with one vectored write
//! (`engine/src/reactor/mod.rs` documents the phases and their ordering
//! rules).
//!
//! # Example
//!
//! A server that echoes messages and refuses clients without a token:
//!
//! ```no_run
//! use bytes::Bytes;
//! use herald::{Accept, Conn, Handler, Reject, Request, Server, wire::Utf8Bytes};
//!
//! struct Echo;
//!
//! struct Client {
//!     user: String,
//! }
//!
//! impl Handler for Echo {
//!     type State = Client;
//!
//!     fn on_connect(&self, request: &Request) -> Result<Accept<Client>, Reject> {
//!         let user = request.query_param("token").ok_or(Reject::unauthorized())?;
//!         Ok(Accept::new(Client { user: user.into_owned() }))
//!     }
//!
//!     fn on_message(&self, conn: &mut Conn<'_, Client>, text: Utf8Bytes) {
//!         let reply = format!("{} said {}", conn.state().user, text);
//!         let _ = conn.send_text(&reply);
//!     }
//!
//!     fn on_binary(&self, conn: &mut Conn<'_, Client>, data: Bytes) {
//!         let _ = conn.send_binary(&data);
//!     }
//! }
//!
//! let server = Server::builder()
//!     .bind("127.0.0.1:9001".parse()?)
//!     .endpoint("/ws")
//!     .start(Echo)?;
//! println!("listening on ws://{}/ws", server.local_addr());
//! server.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Decoding and encoding frames without a server:
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

pub mod channels;
pub mod cluster;
pub mod protocol;
pub mod pubsub;
pub mod wire;

mod broadcast;
mod config;
mod conn;
mod handler;
mod handshake;
mod reactor;
mod stats;
mod timer;
mod write_queue;

pub use broadcast::{Broadcast, ChannelMessage, Delivery};
pub use config::{ServerConfig, SlowConsumerPolicy, StaticFile};
pub use handler::{Accept, Conn, Handler, Reject, SendError};
pub use handshake::{HEALTH_PATH, HandshakeError, Request};
pub use reactor::{ConnHandle, Server, ServerBuilder, ServerHandle};
pub use stats::{ServerStats, TURN_BUCKETS_MICROS, TurnTimes};

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "bench-support")]
#[doc(hidden)]
pub mod bench_support;
