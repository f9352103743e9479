//! One event loop: its listener, connections, timers and mailbox.
//!
//! See the [module docs](super) for the phases of a turn. Each phase is a
//! method here; what a connection decides by itself (the handshake, the
//! close handshake, heartbeats and deadlines) is in its
//! [`Connection`](crate::conn::Connection) state machine, which this loop
//! drives with bytes and ticks. Reading and dispatching to the application
//! is in `input.rs`, delivering broadcasts in `fanout.rs`.

mod ending;
mod fanout;
mod input;
mod streams;

use std::{
    io::{self, ErrorKind},
    net::{Shutdown, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use mio::{
    Events, Interest, Poll, Token, Waker,
    net::{TcpListener, TcpStream},
};
use slab::Slab;
use thin_vec::ThinVec;

use super::{
    Command, LoopContext, Mailbox, Relay, Service, TlsSession, compress,
    mailbox::{AppMessage, Inbox},
    names::Names,
};
use crate::{
    admission::Admission,
    broadcast::Broadcast,
    config::ServerConfig,
    conflation::ConflationKeys,
    conn::{AfterFlush, Connection, Env, Expired, Flushed, WriteQueue},
    metrics::{LoopStats, bump},
    pubsub::{ConnId, LoopTopics, TopicRegistry},
    timer::{Expiry, TICK, Tick, TimerWheel},
    wire::{CloseCode, Inflater},
};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

// A connection's poll token is its `ConnId`, which needs 64 bits.
const _: () = assert!(usize::BITS == 64, "herald needs a 64-bit target");

/// Slots in the timer wheel: 1024 ticks is 102 s, beyond every default.
const WHEEL_SLOTS: usize = 1024;
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Broadcasts a turn holds before it delivers them: a publisher as fast as
/// the loop cannot pile them up.
const MAX_TURN: usize = 4096;
/// How long a release waits once one is called for, so that the rest of the
/// burst (the other connections of a storm closing over a few turns) is
/// gone first.
const RELEASE_SETTLE: Duration = Duration::from_millis(500);
/// The shortest time between two counts of the memory queues hold (a walk
/// of every backlog) while their bytes add up past the queue budget.
const BUDGET_RECOUNT: Duration = Duration::from_millis(100);
/// The shortest time between two releases of free memory.
const RELEASE_EVERY: Duration = Duration::from_secs(10);
/// Connections that must have gone since the last peak before the loop
/// gives the freed memory back to the system (see `sys::release_free_memory`):
/// a burst of this size (a storm, a slowloris round) is worth a heap walk.
const RELEASE_AFTER_GONE: usize = 1024;
/// Bytes of queued frames that must have gone since the last peak before
/// the loop gives freed memory back: stuck consumers closed, a backlog
/// written out.
const RELEASE_AFTER_QUEUED: usize = 16 << 20;

/// A connection's slot in the loop's slab.
#[derive(Debug)]
struct Slot<S> {
    socket: TcpStream,
    generation: u32,
    /// The tick of this connection's one timer-wheel entry (0: none).
    armed: Tick,
    /// Bytes read and not yet decoded; borrowed from the loop's pool while
    /// a message is partly read, so idle connections hold none (boxed, so
    /// that not holding one costs a pointer).
    read_buf: Option<Box<BytesMut>>,
    conn: Connection,
    /// The topics it is subscribed to (one pointer while there are none).
    topics: ThinVec<Arc<str>>,
    /// The application's state, once `on_connect` accepted.
    state: Option<S>,
}

/// A connection's budget: what every idle connection costs in user space,
/// besides the application's state, its one timer entry (12 bytes) and slab
/// overhead. The fields above are arranged to keep it: a boxed read buffer,
/// a thin topic list, the handshake's state boxed in the connection. (Debug
/// builds add mio's 16-byte selector check to the socket.)
const SLOT_BUDGET: usize = if cfg!(debug_assertions) { 192 } else { 176 };
const _: () = assert!(size_of::<Slot<()>>() <= SLOT_BUDGET);

/// The TLS sessions of a loop's connections, by slab key.
#[derive(Debug, Default)]
struct Sessions(Vec<Option<TlsSession>>);

impl Sessions {
    /// Sets (or, with `None`, clears) connection `key`'s session.
    fn set(&mut self, key: usize, session: Option<TlsSession>) {
        if session.is_none() && key >= self.0.len() {
            return;
        }
        if key >= self.0.len() {
            self.0.resize_with(key + 1, || None);
        }
        self.0[key] = session;
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut TlsSession> {
        self.0.get_mut(key)?.as_mut()
    }

    /// Whether connection `key` has TLS records waiting for its socket.
    fn wants_write(&self, key: usize) -> bool {
        self.0
            .get(key)
            .and_then(Option::as_ref)
            .is_some_and(TlsSession::wants_write)
    }

    /// Gives the memory of the sessions of connections gone back.
    fn shrink(&mut self) {
        while self.0.last().is_some_and(Option::is_none) {
            self.0.pop();
        }
        self.0.shrink_to_fit();
    }
}

/// What a connection needs from the loop's context.
fn env(ctx: &LoopContext) -> Env<'_> {
    Env {
        config: &ctx.config,
        stats: &ctx.stats,
        inflater: &ctx.inflater,
    }
}

/// One event loop.
pub(crate) struct Worker<S: Service> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Slot<S::State>>,
    next_generation: u32,
    wheel: TimerWheel,
    expired: Vec<Expiry>,
    /// Connections whose read budget ran out: read again next turn.
    read_again: Vec<ConnId>,
    /// The connections' TLS sessions, by slab key, when the server serves
    /// TLS (kept beside the slots: a cleartext server pays nothing for it).
    sessions: Sessions,
    /// Read buffers not lent to a connection, boxed as the slots hold them
    /// (moving one in or out moves a pointer).
    #[allow(clippy::vec_box)]
    pool: Vec<Box<BytesMut>>,
    rx: Inbox,
    ctx: LoopContext,
    service: Arc<S>,
    open: Arc<AtomicUsize>,
    epoch: Instant,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    /// A drain in progress (see `ending.rs`).
    drain: Option<ending::Drain>,
    /// This loop's share of the connection rate limits.
    admission: Admission,
    /// The most connections held since memory was last given back.
    peak_connections: usize,
    /// The most bytes held queued between turns since memory was last
    /// given back, and how many are now.
    peak_queued: usize,
    queued: usize,
    /// When memory was last given back.
    released_at: Option<Instant>,
    /// When the release called for will be made.
    release_due: Option<Instant>,
    /// Spare vector swapped with `ctx.dirty` while flushing.
    flushing: Vec<usize>,
    /// Broadcasts that reached this loop during the turn, in arrival
    /// order, delivered just before the flush (see `fanout.rs`).
    turn: Vec<Arc<Broadcast>>,
    /// When the memory the backlogs hold was last counted.
    budget_counted_at: Option<Instant>,
    /// Connections whose socket did not take all it was given at their
    /// last flush, and so hold queued bytes between turns: what the queue
    /// budget counts. Stale entries (gone, caught up) are dropped when it
    /// is counted.
    behind: Vec<ConnId>,
}

impl<S: Service> Worker<S> {
    pub(crate) fn new(
        loop_index: usize,
        mut listener: TcpListener,
        config: Arc<ServerConfig>,
        service: Arc<S>,
        open: Arc<AtomicUsize>,
        registry: Arc<TopicRegistry>,
        relay: Option<Arc<dyn Relay>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (mailbox, rx) = Mailbox::new(waker, config.mailbox_capacity);
        let admission = Admission::new(
            config.connect_rate_per_address,
            config.connect_rate,
            config.loops,
            0,
        );
        Ok(Self {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            next_generation: 0,
            wheel: TimerWheel::new(WHEEL_SLOTS, 0),
            expired: Vec::new(),
            read_again: Vec::new(),
            sessions: Sessions::default(),
            pool: Vec::new(),
            rx,
            ctx: LoopContext {
                config,
                inflater: std::cell::RefCell::new(Inflater::new()),
                stats: Arc::new(LoopStats::default()),
                mailbox,
                dirty: Vec::new(),
                loop_index,
                topics: LoopTopics::new(loop_index, registry),
                names: Names::default(),
                peers: Arc::from(Vec::new()),
                publishes: Vec::new(),
                relay,
                conflation_keys: ConflationKeys::default(),
            },
            service,
            open,
            epoch: Instant::now(),
            accept_paused_until: None,
            shutdown_deadline: None,
            drain: None,
            admission,
            peak_connections: 0,
            peak_queued: 0,
            queued: 0,
            released_at: None,
            release_due: None,
            flushing: Vec::new(),
            turn: Vec::new(),
            behind: Vec::new(),
            budget_counted_at: None,
        })
    }

    pub(crate) fn mailbox(&self) -> Arc<Mailbox> {
        Arc::clone(&self.ctx.mailbox)
    }

    pub(crate) fn stats(&self) -> Arc<LoopStats> {
        Arc::clone(&self.ctx.stats)
    }

    /// Gives the loop every loop's mailbox, for publishing across loops.
    pub(crate) fn set_peers(&mut self, peers: Arc<[Arc<Mailbox>]>) {
        self.ctx.peers = peers;
    }

    /// Runs turns until a shutdown completes.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%err, "poll failed; stopping this loop");
                break;
            }
            let turn_started = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.drain_mailbox(),
                    token => {
                        let readiness = if event.is_read_closed() || event.is_error() {
                            Some(ReadUntil::WouldBlock)
                        } else {
                            event.is_readable().then_some(ReadUntil::ShortRead)
                        };
                        self.on_socket_event(token, readiness, event.is_writable());
                    }
                }
            }
            self.read_deferred();
            self.resume_accepting();
            self.expire_timers();
            self.drain_step();
            self.deliver_turn();
            self.flush_dirty();
            self.enforce_queue_budget();
            self.ctx.stats.turns.record(turn_started.elapsed());
            if self.shutdown_complete() {
                break;
            }
        }
        self.drop_all();
    }

    // ---- Phase 1: how long to sleep ----------------------------------------

    fn poll_timeout(&self) -> Option<Duration> {
        // Reads cut short, or broadcasts published after the last delivery
        // (by a callback run from the flush): no sleeping on them.
        if !self.read_again.is_empty() || !self.turn.is_empty() {
            return Some(Duration::ZERO);
        }
        let timers_pending = !self.wheel.is_empty()
            || self.accept_paused_until.is_some()
            || self.shutdown_deadline.is_some()
            || self.release_pending();
        timers_pending.then(|| {
            let into_tick = self.epoch.elapsed().as_nanos() % TICK.as_nanos();
            TICK - Duration::from_nanos(into_tick as u64) + Duration::from_millis(1)
        })
    }

    /// The loop's virtual time: ticks since it started.
    fn now_tick(&self) -> Tick {
        (self.epoch.elapsed().as_millis() / TICK.as_millis()) as Tick
    }

    /// Milliseconds since the loop started, for rate limits.
    fn now_millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    // ---- Phase 2: accept ----------------------------------------------------

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the backlog keeps the
                    // connection; try again after a pause instead of
                    // spinning on a listener that stays readable.
                    if is_resource_exhaustion(&err) {
                        bump(&self.ctx.stats.accept_resource_errors, 1);
                    } else {
                        tracing::warn!(%err, "accept failed");
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn resume_accepting(&mut self) {
        if self
            .accept_paused_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.accept_paused_until = None;
            self.accept_all();
        }
    }

    /// Registers an accepted socket as a handshaking connection.
    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        let over_limit =
            self.open.fetch_add(1, Ordering::Relaxed) >= self.ctx.config.max_connections;
        // Frames are small and latency matters; coalescing is done by writev.
        let _ = socket.set_nodelay(true);
        // 31 bits, so that no token reaches LISTENER or WAKER.
        let generation = self.next_generation & 0x7FFF_FFFF;
        self.next_generation = self.next_generation.wrapping_add(1);
        let now = self.now_tick();
        let admitted = self.admission.admit(peer.ip(), self.now_millis());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = Token(ConnId::new(key, generation).to_bits() as usize);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self.poll.registry().register(&mut socket, token, interest) {
            tracing::warn!(%err, "could not register an accepted socket");
            self.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let tls = match &self.ctx.config.tls {
            Some(config) => match TlsSession::new(config) {
                Ok(session) => Some(session),
                Err(err) => {
                    tracing::warn!(%err, "could not start a TLS session");
                    let _ = self.poll.registry().deregister(&mut socket);
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            },
            None => None,
        };
        let mut conn = Connection::accepted(peer, over_limit, now, env(&self.ctx));
        if let Err(refusal) = admitted {
            bump(&self.ctx.stats.connections_rate_limited, 1);
            conn.refuse(&refusal.into(), now, env(&self.ctx));
        }
        self.sessions.set(key, tls);
        entry.insert(Slot {
            socket,
            generation,
            armed: 0,
            read_buf: None,
            conn,
            topics: ThinVec::new(),
            state: None,
        });
        bump(&self.ctx.stats.connections_accepted, 1);
        self.sync(key);
    }

    // ---- Phase 2: mailbox ---------------------------------------------------

    fn drain_mailbox(&mut self) {
        self.ctx.mailbox.clear_wake();
        while let Some(command) = self.rx.next() {
            if !matches!(command, Command::Publish(_)) {
                // Keep a thread's order: its broadcasts posted before this
                // command reach their subscribers first.
                self.deliver_turn();
            }
            match command {
                Command::Send { conn, frame } => {
                    if let Some(key) = self.open_key(conn) {
                        let outbox = self.conns[key].conn.outbox();
                        let compression = self.ctx.config.compression;
                        let frame = compress::for_connection(frame, outbox.deflate, compression);
                        // A refused send is counted by the outbox itself.
                        let _ = outbox.enqueue(frame, &self.ctx.config, &self.ctx.stats);
                        self.sync(key);
                    }
                }
                Command::Close { conn, code, reason } => {
                    if let Some(key) = self.open_key(conn) {
                        self.conns[key].conn.close(code, &reason);
                        self.sync(key);
                    }
                }
                Command::Publish(broadcast) => {
                    // Private copies of the frames: every subscriber's clone
                    // then touches this loop's refcount only, not one that
                    // every loop shares.
                    self.turn.push(Arc::new(broadcast.localized()));
                    if self.turn.len() >= MAX_TURN {
                        self.deliver_turn();
                    }
                }
                Command::Disconnect(name) => self.disconnect(&name),
                Command::Info { conn, message } => {
                    if let Some(key) = self.open_key(conn) {
                        self.call(key, |service, conn| service.on_info(conn, &message));
                    }
                }
                Command::InfoByName { name, message } => self.info_by_name(&name, &message),
                Command::Decided { conn, decision } => self.decided(conn, decision),
                Command::Shutdown => self.begin_shutdown(),
                Command::Drain => self.begin_drain(),
            }
        }
    }

    /// The slab key of `conn` if it is still open; a command for a
    /// connection that has gone is counted.
    fn open_key(&self, conn: ConnId) -> Option<usize> {
        let open = self.is_open(conn);
        if !open {
            bump(&self.ctx.stats.commands_for_closed_connections, 1);
        }
        open.then_some(conn.key())
    }

    /// Whether `conn` is still this loop's and open.
    fn is_open(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn.key())
            .is_some_and(|slot| slot.generation == conn.generation() && slot.conn.is_open())
    }

    /// Hands `message` to the handlers of this loop's open connections
    /// named `name`.
    fn info_by_name(&mut self, name: &str, message: &AppMessage) {
        for conn in self.ctx.names.get(name) {
            let key = conn.key();
            if self.is_open(conn) {
                self.call(key, |service, conn| service.on_info(conn, message));
            }
        }
    }

    /// Closes this loop's connections named `name`, with 1001 (those
    /// already closing are left to finish).
    fn disconnect(&mut self, name: &str) {
        for conn in self.ctx.names.get(name) {
            let key = conn.key();
            if self.is_open(conn) {
                self.conns[key]
                    .conn
                    .close(CloseCode::GOING_AWAY, "disconnected");
                self.sync(key);
            }
        }
    }

    // ---- Phase 2: socket events ----------------------------------------------

    fn on_socket_event(&mut self, token: Token, readable: Option<ReadUntil>, writable: bool) {
        let id = ConnId::from_bits(token.0 as u64);
        let key = id.key();
        match self.conns.get_mut(key) {
            Some(slot) if slot.generation == id.generation() => {
                let tls_waiting = self.sessions.wants_write(key);
                if writable && (slot.conn.outbox().has_queued() || tls_waiting) {
                    slot.conn.outbox().mark_dirty(key, &mut self.ctx.dirty);
                }
            }
            _ => return,
        }
        if let Some(until) = readable {
            // A TLS session reads at most a few KiB of records at a time
            // and returns as soon as one decrypts: a short read says nothing
            // of what is left in the socket, so it reads until WouldBlock.
            let until = if self.sessions.get_mut(key).is_some() {
                ReadUntil::WouldBlock
            } else {
                until
            };
            self.read(key, until);
        }
    }

    // ---- Phase 3: timers ---------------------------------------------------------

    fn expire_timers(&mut self) {
        // What reached the loop before the timers goes out before what they
        // send (Amber's heartbeat text, closes).
        self.deliver_turn();
        self.release_memory_after_a_burst();
        let now = self.now_tick();
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for expiry in expired.drain(..) {
            let key = expiry.key as usize;
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.generation != expiry.generation || slot.armed != expiry.deadline {
                continue;
            }
            slot.armed = 0;
            let deadline = slot.conn.deadline();
            if deadline > now {
                // The deadline moved later since it was armed: re-arm.
                self.arm(key, deadline);
            } else {
                self.on_deadline(key, now);
            }
        }
        self.expired = expired;
    }

    /// Whether many connections, or many queued bytes, have gone since
    /// the peak: memory to give back (the loop wakes every tick until it
    /// has, even with nothing else to do).
    fn release_pending(&self) -> bool {
        self.peak_connections.saturating_sub(self.conns.len()) >= RELEASE_AFTER_GONE
            || self.peak_queued.saturating_sub(self.queued) >= RELEASE_AFTER_QUEUED
    }

    /// Gives freed memory back once many connections or queued bytes have
    /// gone since the peak: what a burst took comes back.
    fn release_memory_after_a_burst(&mut self) {
        self.peak_connections = self.peak_connections.max(self.conns.len());
        if !self.release_pending() {
            self.release_due = None;
            return;
        }
        let now = Instant::now();
        let due = *self.release_due.get_or_insert(now + RELEASE_SETTLE);
        let recently = self
            .released_at
            .is_some_and(|at| at.elapsed() < RELEASE_EVERY);
        if now < due || recently {
            return;
        }
        self.released_at = Some(now);
        self.release_due = None;
        self.pool.clear();
        self.pool.shrink_to_fit();
        self.conns.shrink_to_fit();
        self.sessions.shrink();
        for list in [&mut self.ctx.dirty, &mut self.flushing] {
            list.shrink_to_fit();
        }
        self.behind.shrink_to_fit();
        self.read_again.shrink_to_fit();
        super::sys::release_free_memory();
        self.peak_connections = self.conns.len();
        self.peak_queued = self.queued;
    }

    /// Makes sure the wheel wakes this connection by `deadline`, keeping one
    /// entry per connection: an entry that fires no later stays (it re-arms
    /// when it fires), a later one is replaced.
    fn arm(&mut self, key: usize, deadline: Tick) {
        let filed = self.wheel.filed_at(deadline);
        let slot = &mut self.conns[key];
        if slot.armed != 0 {
            if slot.armed <= filed {
                return;
            }
            self.wheel.cancel(key, slot.generation, slot.armed);
        }
        slot.armed = self.wheel.schedule(key, slot.generation, deadline);
    }

    fn on_deadline(&mut self, key: usize, now: Tick) {
        match self.conns[key].conn.on_deadline(now, env(&self.ctx)) {
            Expired::Stale => {}
            Expired::HandshakeTimeout | Expired::CloseTimeout => self.remove(key),
            Expired::IdleTimeout => self.sync(key),
            Expired::Heartbeat => {
                self.sync(key);
                self.call(key, |service, conn| service.on_heartbeat(conn));
            }
        }
    }

    // ---- Phase 4: flush ------------------------------------------------------------

    fn flush_dirty(&mut self) {
        std::mem::swap(&mut self.flushing, &mut self.ctx.dirty);
        let mut flushing = std::mem::take(&mut self.flushing);
        for key in flushing.drain(..) {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            slot.conn.outbox().dirty = false;
            let was_behind = slot.conn.outbox().is_behind();
            let (result, written) = match self.sessions.get_mut(key) {
                Some(tls) => {
                    let (result, written) = slot.conn.flush(&mut tls.writer(&slot.socket));
                    // Records still in the session count as not written,
                    // and so does what waits for the TLS handshake to end
                    // (a refusal queued at accept): the connection waits for
                    // its socket as if blocked. Once everything is out, a
                    // FIN held back for it goes.
                    let result = match (result, tls.send(&slot.socket)) {
                        (Ok(Flushed::All), Ok(false)) => Ok(Flushed::Blocked),
                        (Ok(Flushed::All), Ok(true)) if tls.is_handshaking() => {
                            Ok(Flushed::Blocked)
                        }
                        (Ok(flushed), Ok(sent)) => {
                            if sent && tls.take_pending_fin() {
                                let _ = slot.socket.shutdown(Shutdown::Write);
                            }
                            Ok(flushed)
                        }
                        (Err(err), _) | (_, Err(err)) => Err(err),
                    };
                    (result, written)
                }
                None => slot.conn.flush(&mut slot.socket),
            };
            bump(&self.ctx.stats.bytes_written, written as u64);
            match result {
                Ok(Flushed::All) => self.after_flush(key),
                Ok(Flushed::Blocked) if !was_behind && slot.conn.speaks_websocket() => {
                    self.behind.push(ConnId::new(key, slot.generation));
                }
                Ok(Flushed::Blocked) => {}
                Err(_) => self.remove(key),
            }
        }
        self.flushing = flushing;
    }

    /// Keeps the memory queued between turns within this loop's share of
    /// the queue budget: past it, the slow-consumer policy applies to the
    /// largest queues first, until the loop is back under. A broadcast's
    /// frame is one buffer shared by every queue that holds it, so while
    /// the queues' bytes add up past the budget, the memory they hold is
    /// counted (each buffer once, and each entry's own size), at most
    /// every [`BUDGET_RECOUNT`].
    fn enforce_queue_budget(&mut self) {
        if self.behind.is_empty() {
            self.queued = 0;
            return;
        }
        let conns = &self.conns;
        let mut held = 0;
        self.behind.retain(|id| match conns.get(id.key()) {
            Some(slot)
                if slot.generation == id.generation() && slot.conn.outbox_ref().is_behind() =>
            {
                held += slot.conn.outbox_ref().queued_bytes();
                true
            }
            _ => false,
        });
        self.queued = held;
        self.peak_queued = self.peak_queued.max(held);
        let budget = self.ctx.config.loop_queue_budget();
        let counted_recently = self
            .budget_counted_at
            .is_some_and(|at| at.elapsed() < BUDGET_RECOUNT);
        if held <= budget || counted_recently {
            return;
        }
        self.budget_counted_at = Some(Instant::now());
        let memory = self.queued_memory();
        if memory > budget {
            self.shed_largest(memory - budget);
        }
    }

    /// The memory the backlogs hold: each buffer once, however many queues
    /// share it, and each queue entry.
    fn queued_memory(&self) -> usize {
        let mut seen = ahash::AHashSet::new();
        let mut memory = 0;
        for id in &self.behind {
            for buffer in self.conns[id.key()].conn.outbox_ref().queued_buffers() {
                memory += WriteQueue::ENTRY_SIZE;
                if seen.insert((buffer.as_ptr() as usize, buffer.len())) {
                    memory += buffer.len();
                }
            }
        }
        memory
    }

    /// Sheds the largest queues until `excess` bytes are freed (counting
    /// what each gives up; where that was shared with other queues less
    /// memory comes back, and the next count, a tick later, sheds more).
    fn shed_largest(&mut self, mut excess: usize) {
        let mut largest: Vec<(usize, ConnId)> = self
            .behind
            .iter()
            .map(|&id| (self.conns[id.key()].conn.outbox_ref().queued_bytes(), id))
            .collect();
        largest.sort_unstable_by_key(|&(queued, _)| std::cmp::Reverse(queued));
        for (queued, id) in largest {
            if excess == 0 {
                break;
            }
            let LoopContext { config, stats, .. } = &self.ctx;
            let outbox = self.conns[id.key()].conn.outbox();
            outbox.shed(excess, config, stats, "queue budget");
            let freed = queued.saturating_sub(outbox.queued_bytes());
            excess = excess.saturating_sub(freed);
            bump(&stats.queue_budget_sheds, 1);
            tracing::debug!(
                key = id.key(),
                freed,
                "shed a queue (loop queue budget reached)"
            );
            self.sync(id.key());
        }
    }

    /// Everything queued went out: finish a close if one is under way.
    fn after_flush(&mut self, key: usize) {
        let slot = &mut self.conns[key];
        match slot.conn.after_flush() {
            AfterFlush::Keep => {}
            AfterFlush::ShutdownWrite => {
                // The TLS stream's end, then TCP's: a FIN the socket cannot
                // take after the close_notify yet waits for the next flush.
                let shut = match self.sessions.get_mut(key) {
                    Some(tls) => tls.end(&slot.socket),
                    None => true,
                };
                if shut {
                    let _ = slot.socket.shutdown(Shutdown::Write);
                } else {
                    slot.conn.outbox().mark_dirty(key, &mut self.ctx.dirty);
                }
            }
            // Removing a TLS connection ends its TLS stream first.
            AfterFlush::Remove => self.remove(key),
        }
    }
}

/// When a read of a readable socket may stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadUntil {
    /// At the first `recv` that returns less than asked: the receive queue
    /// was emptied, and data arriving later raises a new edge. Saves the
    /// `recv` that would only return `EAGAIN`, a third of the system calls
    /// of a small request-response exchange.
    ShortRead,
    /// Until `WouldBlock` or EOF: when the peer's FIN or an error was
    /// reported with the data (no further edge would announce them), and
    /// for reads resumed after the per-turn budget.
    WouldBlock,
}

fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
