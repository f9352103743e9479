//! # herald
//!
//! A WebSocket "channels" fan-out engine: clients join topics, the
//! application broadcasts to a topic from anywhere, and every subscriber gets
//! the message, at millions of deliveries per second on one box; many boxes
//! join through Redis or NATS.
//!
//! - The event-loop server: [`Server`], configured by [`ServerBuilder`], runs
//!   one `mio` loop per core; the application implements [`Handler`] (after
//!   Azu's channel: `on_connect`, `on_message`, `on_binary`, `on_ping`,
//!   `on_pong`, `on_close`) and sends through [`Conn`] inside callbacks or a
//!   [`ConnHandle`] from any thread; plain pub/sub with
//!   [`Conn::subscribe`] and [`ServerHandle::publish`].
//! - [`channels`]: sockets, topics routed to channel handlers, join/leave,
//!   rebroadcast, interception and server-side subscriptions, over the
//!   Phoenix V2 and Amber wire protocols ([`protocol`]); broadcasts from
//!   anywhere through an [`EngineHandle`](channels::EngineHandle).
//! - [`cluster`]: nodes joined through a broker, attached to a server's
//!   builder with [`Cluster::attach`](cluster::Cluster::attach).
//! - [`wire`]: the RFC 6455 frame codec, sans I/O.
//!
//! # Layers
//!
//! Every module sits in one layer, and imports point down only (the test
//! `engine/tests/layers.rs` reads every `use crate::` and fails on an
//! upward one):
//!
//! ```text
//!  cluster     brokers (Redis, NATS), the bus thread     ─┐ attached from
//!  channels    sockets, channels, Phoenix/Amber routing   │ above: the loops
//!  ─────────────────────────────────────────────────────  │ see a relay and
//!  reactor     mio, sockets, threads, the clock: loops,   │ a service trait,
//!              mailboxes, the Handler API                 │ nothing more
//!  ─────────────────────────────────────────────────────  ┘
//!  conn        one connection's state machine: phase, decoder, outbox,
//!              close handshake, heartbeat and deadlines (bytes and ticks in,
//!              actions out)
//!  pubsub      the topic index (lock-free registry + per-loop subscribers)
//!  broadcast   a publish, encoded once per wire protocol
//!  ─────────────────────────────────────────────────────
//!  timer, metrics, config, admission,                   pure, no I/O
//!  protocol, handshake, wire
//! ```
//!
//! # The life of a broadcast
//!
//! ```text
//!  publisher thread           topic index         loop mailboxes        each subscriber
//!  ────────────────           ───────────         ──────────────        ───────────────
//!  EngineHandle::broadcast
//!   │ lookup(topic) ────────► which loops, which
//!   │                         protocols
//!   │ encode once per protocol in use (one Bytes each)
//!   ├─ relay.forward ──► bus thread ──► broker ──► other nodes
//!   └─ post Arc<Broadcast> ───────────────────► loop 0 ─┐ copy each frame once
//!                                               loop 1  │ (a refcount private
//!                                               ...     │ to the loop)
//!                                                       ▼
//!                                   for each subscriber: clone the Bytes into
//!                                   its write queue, mark it dirty
//!                                                       ▼
//!                                   end of turn: one writev per dirty socket,
//!                                   everything queued for it this turn
//! ```
//!
//! A loop turn polls, handles events (accepts, mailbox commands, reads that
//! feed each connection's state machine and dispatch what comes out to the
//! handler), expires timers, then flushes every connection that had frames
//! queued during the turn with one vectored write (`reactor/mod.rs`
//! documents the phases and their ordering rules).
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
pub mod wire;

mod admission;
mod broadcast;
mod config;
mod conflation;
mod conn;
mod handshake;
mod metrics;
mod pubsub;
mod reactor;
mod timer;

pub use admission::RateLimit;
pub use broadcast::Broadcast;
pub use config::{
    Compression, ConfigError, MAX_LOOPS, ServerConfig, SlowConsumerPolicy, StaticFile,
};
pub use conflation::Conflation;
pub use conn::SendError;
pub use handshake::{HEALTH_PATH, HandshakeError, Request};
pub use metrics::{Metric, MetricKind, ServerStats, TURN_BUCKETS_MICROS, TurnTimes};
pub use reactor::{
    Accept, Conn, ConnHandle, Handler, Reject, Server, ServerBuilder, ServerHandle, StartError,
    TlsConfig, TlsError,
};

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "bench-support")]
#[doc(hidden)]
pub mod bench_support;
