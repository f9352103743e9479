//! The reactor: the only code that touches `mio`, sockets, threads and the
//! clock.
//!
//! # Threads
//!
//! A server runs one event loop per core, each on its own thread (pinned to
//! a core unless told otherwise). Each loop owns a `SO_REUSEPORT` listener,
//! its connections in a slab, a timer wheel, a pool of read buffers and a
//! mailbox; no socket is ever touched by two threads. Other threads reach a
//! loop only through its mailbox ([`ConnHandle`], [`ServerHandle`]).
//!
//! ```text
//!              clients
//!   ┌─────────────┼──────────────┐
//!   ▼ (kernel spreads accepts)   ▼
//! ┌──────────────────┐   ┌──────────────────┐
//! │ loop 0 (core 0)  │   │ loop 1 (core 1)  │   ...
//! │ listener         │   │ listener         │
//! │ slab of conns    │   │ slab of conns    │
//! │ timer wheel      │   │ timer wheel      │
//! │ mailbox ◄────────┼───┼── ConnHandle / ServerHandle (any thread)
//! └──────────────────┘   └──────────────────┘
//! ```
//!
//! # A loop turn
//!
//! 1. **Poll** for readiness, with a timeout up to the next timer tick
//!    (100 ms) when any deadline is pending, zero when reads were cut short
//!    last turn.
//! 2. **Events**, in the order the kernel reports them: accept every pending
//!    connection (backing off on `EMFILE`/`ENFILE`); drain the mailbox;
//!    read each readable socket until `WouldBlock` or a per-turn budget
//!    (the rest is read next turn, so one fast sender cannot starve the
//!    others), decoding and dispatching to the handler as bytes arrive.
//!    Handlers only queue frames; nothing is written yet. Broadcasts wait
//!    in the turn's list: those a read or a command brought are delivered,
//!    each run to one topic as one queue entry per subscriber, before the
//!    next socket is read or a command sends to a connection
//!    (`worker/fanout.rs`).
//! 3. **Timers**: advance the wheel to now; handshakes that took too long
//!    are dropped, silent connections are pinged or closed, close
//!    handshakes that stalled are cut off. Then the broadcasts still
//!    waiting are delivered.
//! 4. **Flush**: every connection that had frames queued this turn (or
//!    became writable) is written once, with `writev`, until its queue is
//!    empty or the socket would block. Connections whose close is complete
//!    are dropped here, after their last bytes went out.
//!
//! Ordering rules: a frame queued in phase 2 or 3 leaves in phase 4 of the
//! same turn; a connection is removed only in phases 2-4 and never while a
//! handler for it runs; a stale event or command (for a slot that was
//! freed and reused) is recognised by the generation in its token.

mod compress;
mod deferred;
mod handler;
mod listener;
mod mailbox;
mod names;
mod server;
mod sys;
mod tls;
mod worker;

use std::{io, sync::Arc, thread::JoinHandle};

use bytes::Bytes;

pub(crate) use deferred::{Connecting, Decision, Later, PendingConnect};
pub(crate) use handler::Service;

pub use handler::{Accept, Conn, Handler, Reject};
pub use mailbox::ConnHandle;
pub(crate) use mailbox::{AppMessage, Command, Mailbox};
pub use server::{Server, ServerBuilder, ServerHandle, StartError};
pub(crate) use tls::TlsSession;
pub use tls::{TlsConfig, TlsError};

use crate::{
    broadcast::Broadcast,
    config::ServerConfig,
    conflation::ConflationKeys,
    conn::Outbox,
    metrics::LoopStats,
    pubsub::{ConnId, LoopTopics, Sub, TopicRegistry},
    wire::Inflater,
};

/// A link from this node to others (the cluster bus), attached from above:
/// the reactor tells it what this node publishes and which topics gain or
/// lose local interest, and knows nothing of brokers.
pub(crate) trait Relay: Send + Sync + std::fmt::Debug + 'static {
    /// A broadcast made on this node (never one that came from a relay).
    fn forward(&self, broadcast: &Broadcast);
    /// A disconnect by connection name made on this node.
    fn forward_disconnect(&self, name: &str);
    /// `topic` gained its first subscriber on this node or lost its last;
    /// may be called more than once for one change, from any loop.
    fn interest_changed(&self, topic: &str);
    /// The server is up: deliver what other nodes publish through
    /// `server`. Returns the thread doing so, which the server joins.
    fn start(&self, server: ServerHandle) -> io::Result<JoinHandle<()>>;
    /// The server is shutting down.
    fn stop(&self);
    /// This node's id among the nodes.
    fn node_id(&self) -> u64;
    /// Sends an upper layer's message (presence replication) to every
    /// other node, without blocking (dropped and counted if it cannot go).
    fn forward_sync(&self, message: Bytes);
    /// Where the upper layer takes the other nodes' sync messages: called
    /// with the sending node's id and the message, on the relay's thread.
    fn set_sync_handler(&self, handler: SyncHandler);
}

/// Receives other nodes' sync messages (see [`Relay::set_sync_handler`]):
/// the sending node's id and the message.
#[derive(Clone)]
pub(crate) struct SyncHandler(pub(crate) Arc<SyncFn>);

/// What a [`SyncHandler`] calls.
pub(crate) type SyncFn = dyn Fn(u64, &[u8]) + Send + Sync;

impl std::fmt::Debug for SyncHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHandler")
    }
}

/// What a loop shares with the callbacks it runs (through
/// [`Conn`]).
#[derive(Debug)]
pub(crate) struct LoopContext {
    pub(crate) config: Arc<ServerConfig>,
    /// Inflates compressed client messages (permessage-deflate), one at a
    /// time; a `RefCell` because connections borrow the context shared.
    pub(crate) inflater: std::cell::RefCell<Inflater>,
    pub(crate) stats: Arc<LoopStats>,
    pub(crate) mailbox: Arc<Mailbox>,
    /// Connections with frames queued this turn, to flush at its end.
    pub(crate) dirty: Vec<usize>,
    /// This loop's position among the server's loops.
    pub(crate) loop_index: usize,
    /// This loop's topic subscriptions.
    pub(crate) topics: LoopTopics<Sub>,
    /// This loop's named connections (see [`Conn::set_id`]).
    pub(crate) names: names::Names,
    /// Every loop's mailbox, this one's included, by loop index.
    pub(crate) peers: Arc<[Arc<Mailbox>]>,
    /// Publishes made by the callback that is running, delivered when it
    /// returns (a callback cannot reach the other connections' queues).
    pub(crate) publishes: Vec<Arc<Broadcast>>,
    /// The link to other nodes, if any.
    pub(crate) relay: Option<Arc<dyn Relay>>,
    /// How this loop hashes conflation keys.
    pub(crate) conflation_keys: ConflationKeys,
}

/// Posts `broadcast` to every loop, other than `skip`, that has subscribers
/// of its topic. Returns how many loops it was posted to.
pub(crate) fn route_publish(
    registry: &TopicRegistry,
    peers: &[Arc<Mailbox>],
    broadcast: &Arc<Broadcast>,
    skip: Option<usize>,
) -> usize {
    let Some(entry) = registry.lookup(broadcast.topic()) else {
        return 0;
    };
    let mut loops = entry.all_loops();
    let mut posted = 0;
    while loops != 0 {
        let index = loops.trailing_zeros() as usize;
        loops &= loops - 1;
        if Some(index) == skip {
            continue;
        }
        if let Some(mailbox) = peers.get(index) {
            // A loop that has stopped has no subscribers left to reach.
            if mailbox
                .post(Command::Publish(Arc::clone(broadcast)))
                .is_ok()
            {
                posted += 1;
            }
        }
    }
    posted
}

impl LoopContext {
    /// Puts a connection on this turn's flush list, once.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, id: ConnId, outbox: &mut Outbox) {
        outbox.mark_dirty(id.key(), &mut self.dirty);
    }

    pub(crate) fn handle_for(&self, id: ConnId) -> ConnHandle {
        ConnHandle {
            mailbox: Arc::clone(&self.mailbox),
            id,
        }
    }
}
