//! One event loop: its listener, connections, timers and mailbox.
//!
//! See the [module docs](super) for the phases of a turn. Each phase is a
//! method here; the per-connection protocol logic they call (decoding,
//! handshake checks, the outbox, the timer wheel) is pure and lives
//! elsewhere.

use std::{
    io::{self, ErrorKind},
    net::{Shutdown, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use mio::{
    Events, Interest, Poll, Token, Waker,
    net::{TcpListener, TcpStream},
};
use slab::Slab;

use super::{Bus, Command, LoopContext, Mailbox, route_publish, sys::recv_into};
use crate::{
    Broadcast, Conn, Delivery, Handler, ServerConfig,
    conn::Outbox,
    handshake::{self, HandshakeError, Route},
    pubsub::{LoopTopics, TopicRegistry, conn_id},
    stats::{LoopStats, bump},
    timer::{Expiry, TimerWheel},
    wire::{CloseCode, Decoder, Message, pong_frame},
};

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// The timer resolution.
const TICK: Duration = Duration::from_millis(100);
/// Slots in the timer wheel: 1024 ticks is 102 s, beyond every default.
const WHEEL_SLOTS: usize = 1024;
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes read from one socket per turn before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Read buffers kept for reuse per loop, and the largest one kept.
const POOL_BUFFERS: usize = 64;
const POOL_MAX_CAPACITY: usize = 64 * 1024;
/// The heartbeat ping: an empty ping frame, the same bytes for everyone.
const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// Where a connection is in its life.
#[derive(Debug)]
enum Phase {
    /// Waiting for the request head.
    Handshake(Box<Pending>),
    /// Open: messages flow both ways.
    Open,
    /// A close frame has been queued; waiting for the peer's close frame or
    /// FIN, or for the close timeout.
    Closing,
    /// A handshake was refused with an HTTP response; dropped once it is
    /// written and the peer has closed, or at the close timeout.
    Refused,
}

/// What a handshaking connection keeps until it opens.
#[derive(Debug)]
struct Pending {
    peer: SocketAddr,
    /// How far the buffer has been searched for the end of the head.
    scanned: usize,
    /// Accepted past the connection limit: to be answered with 503.
    over_limit: bool,
}

/// A connection's slot in the loop's slab.
#[derive(Debug)]
struct Slot<S> {
    socket: TcpStream,
    generation: u32,
    phase: Phase,
    read_buf: Option<BytesMut>,
    decoder: Decoder,
    outbox: Outbox,
    /// The tick of this connection's live timer entry.
    deadline: u64,
    /// The tick at which bytes last arrived.
    last_recv: u64,
    /// Whether the peer's close frame has arrived.
    peer_closed: bool,
    /// Whether input is being discarded (after a protocol error).
    discard_input: bool,
    /// Whether our side of the TCP connection has been shut down.
    write_shut: bool,
    /// Whether `on_close` has been called.
    close_reported: bool,
    /// The topics it is subscribed to (plain WebSocket pub/sub).
    topics: Vec<Arc<str>>,
    /// The application's state, once `on_connect` accepted.
    state: Option<S>,
}

/// A connection's budget: what every idle connection costs in user space,
/// besides the application's state and slab overhead.
const _: () = assert!(size_of::<Slot<()>>() <= 272);

/// One event loop.
pub(crate) struct Worker<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Slot<H::State>>,
    next_generation: u32,
    wheel: TimerWheel,
    expired: Vec<Expiry>,
    /// Connections whose read budget ran out: read again next turn.
    read_again: Vec<(usize, u32)>,
    pool: Vec<BytesMut>,
    rx: Receiver<Command>,
    ctx: LoopContext,
    handler: Arc<H>,
    open: Arc<AtomicUsize>,
    epoch: Instant,
    accept_paused_until: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    /// Spare vector swapped with `ctx.dirty` while flushing.
    flushing: Vec<usize>,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        loop_index: usize,
        mut listener: TcpListener,
        config: Arc<ServerConfig>,
        handler: Arc<H>,
        open: Arc<AtomicUsize>,
        registry: Arc<TopicRegistry>,
        bus: Option<Arc<Bus>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (mailbox, rx) = Mailbox::new(waker);
        Ok(Self {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            next_generation: 0,
            wheel: TimerWheel::new(WHEEL_SLOTS, 0),
            expired: Vec::new(),
            read_again: Vec::new(),
            pool: Vec::new(),
            rx,
            ctx: LoopContext {
                config,
                stats: Arc::new(LoopStats::default()),
                mailbox,
                dirty: Vec::new(),
                loop_index,
                topics: LoopTopics::new(loop_index, registry),
                peers: Arc::from(Vec::new()),
                publishes: Vec::new(),
                bus,
            },
            handler,
            open,
            epoch: Instant::now(),
            accept_paused_until: None,
            shutdown_deadline: None,
            flushing: Vec::new(),
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
            self.flush_dirty();
            self.ctx.stats.turns.record(turn_started.elapsed());
            if self.shutdown_complete() {
                break;
            }
        }
        self.drop_all();
    }

    // ---- Phase 1: how long to sleep ----------------------------------------

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let timers_pending = !self.wheel.is_empty()
            || self.accept_paused_until.is_some()
            || self.shutdown_deadline.is_some();
        timers_pending.then(|| {
            let into_tick = self.epoch.elapsed().as_nanos() % TICK.as_nanos();
            TICK - Duration::from_nanos(into_tick as u64) + Duration::from_millis(1)
        })
    }

    fn now_tick(&self) -> u64 {
        (self.epoch.elapsed().as_millis() / TICK.as_millis()) as u64
    }

    fn ticks(duration: Duration) -> u64 {
        duration.as_millis().div_ceil(TICK.as_millis()).max(1) as u64
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
        let generation = self.next_generation & 0x7FFF_FFFF;
        self.next_generation = self.next_generation.wrapping_add(1);
        let now = self.now_tick();
        let deadline = now + Self::ticks(self.ctx.config.handshake_timeout);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = Token(key | (generation as usize) << 32);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self.poll.registry().register(&mut socket, token, interest) {
            tracing::warn!(%err, "could not register an accepted socket");
            self.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        entry.insert(Slot {
            socket,
            generation,
            phase: Phase::Handshake(Box::new(Pending {
                peer,
                scanned: 0,
                over_limit,
            })),
            read_buf: None,
            decoder: Decoder::new(),
            outbox: Outbox::default(),
            deadline,
            last_recv: now,
            peer_closed: false,
            discard_input: false,
            write_shut: false,
            close_reported: false,
            topics: Vec::new(),
            state: None,
        });
        self.wheel.schedule(key, generation, deadline);
        bump(&self.ctx.stats.connections_accepted, 1);
    }

    // ---- Phase 2: mailbox ---------------------------------------------------

    fn drain_mailbox(&mut self) {
        self.ctx.mailbox.clear_wake();
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Send {
                    key,
                    generation,
                    frame,
                } => {
                    if self.is_open(key, generation) {
                        let outbox = &mut self.conns[key].outbox;
                        // A refused send is counted by the outbox itself.
                        let _ = outbox.enqueue(frame, &self.ctx.config, &self.ctx.stats);
                        self.after_callback(key);
                    } else {
                        bump(&self.ctx.stats.commands_for_closed_connections, 1);
                    }
                }
                Command::Close {
                    key,
                    generation,
                    code,
                    reason,
                } => {
                    if self.is_open(key, generation) {
                        self.conns[key].outbox.queue_close(code, &reason);
                        self.after_callback(key);
                    } else {
                        bump(&self.ctx.stats.commands_for_closed_connections, 1);
                    }
                }
                Command::Publish(broadcast) => {
                    // Private copies of the frames: every subscriber's clone
                    // then touches this loop's refcount only, not one that
                    // every loop shares.
                    let broadcast = Arc::new(broadcast.localized());
                    self.deliver(&broadcast);
                }
                Command::Shutdown => self.begin_shutdown(),
            }
        }
    }

    /// Whether the connection at `key` is open and still the one
    /// `generation` names.
    fn is_open(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|slot| slot.generation == generation && matches!(slot.phase, Phase::Open))
    }

    // ---- Phase 2: socket events ----------------------------------------------

    fn on_socket_event(&mut self, token: Token, readable: Option<ReadUntil>, writable: bool) {
        let key = token.0 & 0xFFFF_FFFF;
        let generation = (token.0 >> 32) as u32;
        match self.conns.get_mut(key) {
            Some(slot) if slot.generation == generation => {
                if writable && !slot.outbox.queue.is_empty() {
                    self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
                }
            }
            _ => return,
        }
        if let Some(until) = readable {
            self.read(key, until);
        }
    }

    fn read_deferred(&mut self) {
        for (key, generation) in std::mem::take(&mut self.read_again) {
            if self
                .conns
                .get(key)
                .is_some_and(|slot| slot.generation == generation)
            {
                self.read(key, ReadUntil::WouldBlock);
            }
        }
    }

    /// Reads until `until`, EOF or the budget, processing input after
    /// every `recv`.
    fn read(&mut self, key: usize, until: ReadUntil) {
        let chunk = self.ctx.config.read_chunk;
        let mut total = 0;
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let buf = slot
                .read_buf
                .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
            match recv_into(&slot.socket, buf, chunk) {
                Ok(0) => return self.peer_gone(key),
                Ok(received) => {
                    slot.last_recv = (self.epoch.elapsed().as_millis() / TICK.as_millis()) as u64;
                    total += received;
                    self.process_input(key);
                    if received < chunk && until == ReadUntil::ShortRead {
                        break;
                    }
                    if total >= READ_BUDGET {
                        if let Some(slot) = self.conns.get(key) {
                            self.read_again.push((key, slot.generation));
                        }
                        return;
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.peer_gone(key),
            }
        }
        self.release_idle_buffer(key);
    }

    /// Gives the read buffer back to the pool when nothing is half-read.
    fn release_idle_buffer(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let idle = slot.read_buf.as_ref().is_some_and(BytesMut::is_empty) && slot.decoder.is_idle();
        if idle && let Some(buf) = slot.read_buf.take() {
            self.recycle(buf);
        }
    }

    fn recycle(&mut self, mut buf: BytesMut) {
        buf.clear();
        if self.pool.len() < POOL_BUFFERS && buf.capacity() <= POOL_MAX_CAPACITY {
            self.pool.push(buf);
        }
    }

    fn process_input(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        match slot.phase {
            Phase::Handshake(_) => self.advance_handshake(key),
            Phase::Open | Phase::Closing if !slot.discard_input => self.decode_frames(key),
            Phase::Open | Phase::Closing | Phase::Refused => {
                if let Some(buf) = &mut slot.read_buf {
                    buf.clear();
                }
            }
        }
    }

    // ---- Handshake -------------------------------------------------------------

    fn advance_handshake(&mut self, key: usize) {
        let max_head = self.ctx.config.max_head_bytes;
        let slot = &mut self.conns[key];
        let (Phase::Handshake(pending), Some(buf)) = (&mut slot.phase, &mut slot.read_buf) else {
            return;
        };
        let Some(end) = handshake::head_end(buf, pending.scanned) else {
            pending.scanned = buf.len();
            if buf.len() > max_head {
                self.refuse(key, HandshakeError::HeadTooLarge { limit: max_head });
            }
            return;
        };
        let parsed = match handshake::parse_head(&buf[..end], max_head) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return self.refuse(key, HandshakeError::Malformed),
            Err(err) => return self.refuse(key, err),
        };
        let (peer, over_limit) = (pending.peer, pending.over_limit);
        let http_minor = parsed.http_minor;
        let head = buf.split_to(parsed.len).freeze();
        let request = parsed.into_request(head, peer);
        let config = Arc::clone(&self.ctx.config);
        let serves =
            |path: &str| config.endpoints.is_empty() || config.endpoints.iter().any(|e| e == path);
        let static_file = |path: &str| {
            config
                .static_files
                .iter()
                .position(|file| file.path == path)
        };
        match handshake::route(&request, serves, static_file) {
            Err(err) => self.refuse(key, err),
            Ok(Route::Health) => self.respond_and_close(key, handshake::health_response()),
            Ok(Route::Static(index)) => {
                let file = &config.static_files[index];
                let response = handshake::static_response(&file.content_type, &file.body);
                self.respond_and_close(key, response);
            }
            Ok(Route::Upgrade) => match handshake::check_upgrade(&request, http_minor) {
                Err(err) => self.refuse(key, err),
                Ok(_) if over_limit => self.refuse(key, HandshakeError::Overloaded),
                Ok(ws_key) => {
                    let ws_key = ws_key.to_vec();
                    self.connect(key, &request, &ws_key);
                }
            },
        }
    }

    /// Asks the application, then opens or refuses.
    fn connect(&mut self, key: usize, request: &handshake::Request, ws_key: &[u8]) {
        let handler = &*self.handler;
        let decision = catch_unwind(AssertUnwindSafe(|| handler.on_connect(request)));
        let accept = match decision {
            Ok(Ok(accept)) => accept,
            Ok(Err(reject)) => {
                let (status, reason) = reject.into_parts();
                return self.refuse(key, HandshakeError::Rejected { status, reason });
            }
            Err(_) => {
                bump(&self.ctx.stats.handler_panics, 1);
                tracing::error!(path = request.path(), "on_connect panicked");
                let reason = None;
                return self.refuse(
                    key,
                    HandshakeError::Rejected {
                        status: 500,
                        reason,
                    },
                );
            }
        };
        let now = self.now_tick();
        let response = handshake::switching_protocols(ws_key, accept.subprotocol.as_deref());
        let slot = &mut self.conns[key];
        slot.phase = Phase::Open;
        slot.state = Some(accept.state);
        slot.outbox.queue.push(response);
        slot.deadline = now + Self::ticks(self.ctx.config.ping_interval);
        self.wheel.schedule(key, slot.generation, slot.deadline);
        self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
        bump(&self.ctx.stats.connections_opened, 1);
        self.call(key, |handler, conn| handler.on_open(conn));
        // A client may send frames right behind its request head.
        if self.conns.get(key).is_some_and(|slot| !slot.discard_input) {
            self.decode_frames(key);
        }
    }

    fn refuse(&mut self, key: usize, err: HandshakeError) {
        bump(&self.ctx.stats.handshakes_refused, 1);
        self.respond_and_close(key, handshake::error_response(&err));
    }

    /// Sends an HTTP response, then closes once it is written and the peer
    /// has closed (or at the close timeout).
    fn respond_and_close(&mut self, key: usize, response: Bytes) {
        let now = self.now_tick();
        let slot = &mut self.conns[key];
        slot.phase = Phase::Refused;
        slot.discard_input = true;
        if let Some(buf) = &mut slot.read_buf {
            buf.clear();
        }
        slot.outbox.queue.push(response);
        slot.deadline = now + Self::ticks(self.ctx.config.close_timeout);
        self.wheel.schedule(key, slot.generation, slot.deadline);
        self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
    }

    // ---- Frames ----------------------------------------------------------------

    fn decode_frames(&mut self, key: usize) {
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let Some(buf) = &mut slot.read_buf else {
                return;
            };
            if slot.discard_input {
                buf.clear();
                return;
            }
            match slot.decoder.decode(buf, &self.ctx.config.decoder) {
                Ok(None) => return,
                Ok(Some(message)) => {
                    bump(&self.ctx.stats.messages_received, 1);
                    self.dispatch(key, message);
                }
                Err(err) => {
                    bump(&self.ctx.stats.protocol_errors, 1);
                    tracing::debug!(%err, "protocol error");
                    slot.discard_input = true;
                    buf.clear();
                    slot.outbox.queue_close(err.close_code(), &err.to_string());
                    self.after_callback(key);
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, key: usize, message: Message) {
        let slot = &mut self.conns[key];
        if !matches!(slot.phase, Phase::Open) {
            // After our close frame, only the peer's close matters
            // (RFC 6455 section 5.5.1).
            if let Message::Close(_) = message {
                slot.peer_closed = true;
                self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
            }
            return;
        }
        match message {
            Message::Text(text) => self.call(key, |h, conn| h.on_message(conn, text)),
            Message::Binary(data) => self.call(key, |h, conn| h.on_binary(conn, data)),
            Message::Ping(payload) => {
                if let Ok(pong) = pong_frame(&payload) {
                    slot.outbox.push_control(pong);
                    self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
                }
                self.call(key, |h, conn| h.on_ping(conn, payload));
            }
            Message::Pong(payload) => self.call(key, |h, conn| h.on_pong(conn, payload)),
            Message::Close(close) => {
                let code = close.as_ref().map(|close| close.code);
                slot.peer_closed = true;
                slot.outbox.answer_close(code);
                let reason = close.map(|close| close.reason);
                let reason = reason.as_ref().map_or("", |reason| reason.as_str());
                // Report the client's code and reason before the transition
                // to Closing would report ours.
                self.report_close(key, code.unwrap_or(CloseCode::NO_STATUS), reason);
                self.after_callback(key);
            }
            Message::Encoded { .. } => {
                // No extension is negotiated, so the decoder never yields
                // this; refuse it like an unknown extension would be.
                slot.outbox
                    .queue_close(CloseCode::UNSUPPORTED_DATA, "no extension negotiated");
                self.after_callback(key);
            }
        }
    }

    /// Runs a handler callback for an open connection, catching panics: a
    /// panic closes the connection with 1011. Then delivers what it
    /// published and applies a close it asked for.
    fn call(&mut self, key: usize, callback: impl FnOnce(&H, &mut Conn<'_, H::State>)) {
        if self.invoke(key, callback) {
            tracing::error!("a handler callback panicked; closing its connection with 1011");
            self.conns[key]
                .outbox
                .queue_close(CloseCode::INTERNAL_ERROR, "internal error");
        }
        self.deliver_publishes();
        self.after_callback(key);
    }

    /// Runs `callback` with the connection's [`Conn`]; returns whether it
    /// panicked (counted). Does nothing before the connection has a state.
    fn invoke(&mut self, key: usize, callback: impl FnOnce(&H, &mut Conn<'_, H::State>)) -> bool {
        let slot = &mut self.conns[key];
        let Some(state) = slot.state.as_mut() else {
            return false;
        };
        let mut conn = Conn {
            state,
            outbox: &mut slot.outbox,
            topics: &mut slot.topics,
            key,
            generation: slot.generation,
            ctx: &mut self.ctx,
        };
        let handler = &*self.handler;
        let panicked = catch_unwind(AssertUnwindSafe(|| callback(handler, &mut conn))).is_err();
        if panicked {
            bump(&self.ctx.stats.handler_panics, 1);
        }
        panicked
    }

    /// Delivers what callbacks published: to this loop's subscribers now,
    /// to other loops' through their mailboxes.
    fn deliver_publishes(&mut self) {
        while !self.ctx.publishes.is_empty() {
            let publishes = std::mem::take(&mut self.ctx.publishes);
            for broadcast in &publishes {
                if let Some(bus) = &self.ctx.bus {
                    bus.forward(broadcast);
                }
                let skip = Some(self.ctx.loop_index);
                route_publish(self.ctx.topics.registry(), &self.ctx.peers, broadcast, skip);
                self.deliver(broadcast);
            }
        }
    }

    /// Queues a broadcast's frames for this loop's subscribers of its topic
    /// (except the one it excludes), and runs the handler for subscriptions
    /// it intercepts.
    fn deliver(&mut self, broadcast: &Arc<Broadcast>) {
        let LoopContext {
            topics,
            dirty,
            config,
            stats,
            loop_index,
            ..
        } = &mut self.ctx;
        let handler = &*self.handler;
        let mut delivered = 0;
        let mut refused = Vec::new();
        let mut callbacks = Vec::new();
        // Subscriptions of a topic mostly share a tag: ask the handler once
        // per run of equal tags, not once per subscriber.
        let mut decided: Option<(u32, Delivery)> = None;
        for (id, sub) in topics.local().subscribers(broadcast.topic()) {
            if broadcast.excludes(*loop_index, id) {
                continue;
            }
            let key = (id & 0xFFFF_FFFF) as usize;
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if conn_id(key, slot.generation) != id || !matches!(slot.phase, Phase::Open) {
                continue;
            }
            let delivery = match decided {
                Some((tag, delivery)) if tag == sub.tag => delivery,
                _ => {
                    let delivery = handler.delivery(sub.tag, broadcast);
                    decided = Some((sub.tag, delivery));
                    delivery
                }
            };
            match delivery {
                Delivery::Frame => {
                    let Some(frame) = broadcast.frame(sub.protocol) else {
                        continue;
                    };
                    if !slot.outbox.fan_out(key, frame, config, stats, dirty) {
                        refused.push(key);
                    }
                    delivered += 1;
                }
                Delivery::Callback => callbacks.push((key, sub.tag)),
                Delivery::Skip => {}
            }
        }
        bump(&stats.publishes_handled, 1);
        bump(&stats.published_deliveries, delivered);
        for (key, tag) in callbacks {
            self.call(key, |handler, conn| {
                handler.on_broadcast(conn, tag, broadcast)
            });
        }
        // Slow consumers the policy just closed move to Closing.
        for key in refused {
            self.after_callback(key);
        }
    }

    /// Moves an open connection whose outbox has a close frame to Closing,
    /// reporting the close once, and schedules the close timeout.
    fn after_callback(&mut self, key: usize) {
        let now = self.now_tick();
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if !slot.outbox.queue.is_empty() {
            self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
        }
        let slot = &mut self.conns[key];
        if !matches!(slot.phase, Phase::Open) {
            return;
        }
        let Some(code) = slot.outbox.close_code() else {
            return;
        };
        slot.phase = Phase::Closing;
        slot.deadline = now + Self::ticks(self.ctx.config.close_timeout);
        self.wheel.schedule(key, slot.generation, slot.deadline);
        self.report_close(key, code, "");
    }

    /// Calls `on_close` once per opened connection.
    fn report_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let slot = &mut self.conns[key];
        if slot.close_reported || slot.state.is_none() {
            return;
        }
        slot.close_reported = true;
        bump(&self.ctx.stats.connections_closed, 1);
        if self.invoke(key, |handler, conn| handler.on_close(conn, code, reason)) {
            tracing::error!("on_close panicked");
        }
        self.deliver_publishes();
    }

    // ---- Phase 3: timers ---------------------------------------------------------

    fn expire_timers(&mut self) {
        let now = self.now_tick();
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        for expiry in expired.drain(..) {
            let live = self.conns.get(expiry.key).is_some_and(|slot| {
                slot.generation == expiry.generation && slot.deadline == expiry.deadline
            });
            if live {
                self.on_deadline(expiry.key, now);
            }
        }
        self.expired = expired;
    }

    fn on_deadline(&mut self, key: usize, now: u64) {
        let config = Arc::clone(&self.ctx.config);
        let slot = &mut self.conns[key];
        match slot.phase {
            Phase::Handshake(_) => {
                bump(&self.ctx.stats.handshakes_refused, 1);
                self.remove(key);
            }
            Phase::Open => {
                let idle_ticks = Self::ticks(config.idle_timeout);
                if now.saturating_sub(slot.last_recv) >= idle_ticks {
                    bump(&self.ctx.stats.idle_timeouts, 1);
                    slot.outbox
                        .queue_close(CloseCode::GOING_AWAY, "idle timeout");
                    self.after_callback(key);
                    return;
                }
                slot.outbox.push_control(PING);
                slot.outbox.queue.release_if_idle();
                let next_ping = now + Self::ticks(config.ping_interval);
                slot.deadline = next_ping.min(slot.last_recv + idle_ticks).max(now + 1);
                self.wheel.schedule(key, slot.generation, slot.deadline);
                self.ctx.mark_dirty(key, &mut self.conns[key].outbox);
                self.call(key, |handler, conn| handler.on_heartbeat(conn));
            }
            Phase::Closing | Phase::Refused => self.remove(key),
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
            slot.outbox.dirty = false;
            let before = slot.outbox.queued_bytes();
            let result = slot.outbox.queue.flush_to(&mut slot.socket);
            bump(
                &self.ctx.stats.bytes_written,
                (before - slot.outbox.queued_bytes()) as u64,
            );
            match result {
                Ok(crate::write_queue::Flushed::All) => self.after_flush(key),
                Ok(crate::write_queue::Flushed::Blocked) => {}
                Err(_) => self.peer_gone(key),
            }
        }
        self.flushing = flushing;
    }

    /// Everything queued went out: finish a close if one is under way.
    fn after_flush(&mut self, key: usize) {
        let slot = &mut self.conns[key];
        let closing = matches!(slot.phase, Phase::Closing | Phase::Refused);
        if !closing {
            return;
        }
        if slot.peer_closed {
            // The close handshake is complete; the server closes the TCP
            // connection first (RFC 6455 section 7.1.1).
            return self.remove(key);
        }
        if !slot.write_shut {
            // Nothing more will be sent; the FIN tells the peer so. The read
            // side stays open for its close frame or FIN, so that closing
            // does not reset a connection with unread data in flight.
            slot.write_shut = true;
            let _ = slot.socket.shutdown(Shutdown::Write);
        }
    }

    // ---- Endings -----------------------------------------------------------------

    /// The peer closed its side or the socket failed.
    fn peer_gone(&mut self, key: usize) {
        if self.conns.contains(key) {
            self.report_close(key, CloseCode::ABNORMAL, "");
            self.remove(key);
        }
    }

    fn remove(&mut self, key: usize) {
        if self.conns.contains(key) {
            self.report_close(key, CloseCode::ABNORMAL, "");
        }
        let Some(mut slot) = self.conns.try_remove(key) else {
            return;
        };
        let id = conn_id(key, slot.generation);
        for topic in slot.topics.drain(..) {
            self.ctx.topics.unsubscribe(&topic, id);
        }
        let _ = self.poll.registry().deregister(&mut slot.socket);
        if let Some(buf) = slot.read_buf.take() {
            self.recycle(buf);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.ctx.config.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns[key].phase {
                Phase::Open => {
                    self.conns[key]
                        .outbox
                        .queue_close(CloseCode::GOING_AWAY, "server shutting down");
                    self.after_callback(key);
                }
                Phase::Handshake(_) => self.remove(key),
                Phase::Closing | Phase::Refused => {}
            }
        }
    }

    fn shutdown_complete(&self) -> bool {
        self.shutdown_deadline
            .is_some_and(|deadline| self.conns.is_empty() || Instant::now() >= deadline)
    }

    fn drop_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.remove(key);
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
