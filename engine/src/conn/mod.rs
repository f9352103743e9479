//! One connection's life, sans I/O: the handshake, the open phase, the
//! close handshake, heartbeats and deadlines.
//!
//! [`Connection`] holds everything a connection decides by itself: its
//! phase, the frame decoder, the outbox of frames to send, and the one
//! deadline it waits for. It never touches a socket or reads the clock: the
//! reactor feeds it the bytes it read and the current [`Tick`], lets it
//! write its queue to whatever implements [`std::io::Write`], and asks it
//! what to do next. That makes every rule below testable on virtual time
//! (see `tests.rs`), the way `quinn-proto` drives QUIC.
//!
//! ```text
//!            request head complete,             close frame queued
//!            application accepts                (by either side)
//!  Handshake ─────────────────────────► Open ─────────────────────► Closing
//!      │                                 │ ▲                          │
//!      │ refused, static file,           │ │ ping every ping_interval │ peer's close frame
//!      │ health check                    └─┘ close 1001 after         │ or FIN after ours,
//!      ▼                                     idle_timeout of silence  │ or close_timeout
//!   Refused ─── response written and peer gone, or close_timeout ──► removed
//! ```
//!
//! # What the reactor does with it
//!
//! - After reading: [`poll_handshake`](Connection::poll_handshake) while
//!   handshaking, then [`next_input`](Connection::next_input) until it
//!   returns `None`, giving each [`Input`] to the application.
//! - After anything that may have queued frames or a close (an input, an
//!   application callback, a deadline): [`sync`](Connection::sync), which
//!   moves an open connection with a queued close to `Closing` and says
//!   whether to flush, whether to report the close to the application, and
//!   whether the deadline moved.
//! - When the deadline's tick comes: [`on_deadline`](Connection::on_deadline).
//! - When the socket may take bytes: [`flush`](Connection::flush), then
//!   [`after_flush`](Connection::after_flush) says whether to shut the write
//!   side or drop the connection.

mod outbox;
mod write_queue;

#[cfg(test)]
mod tests;

use std::{cell::RefCell, io, net::SocketAddr};

use bytes::{Bytes, BytesMut};

pub(crate) use outbox::Outbox;
pub(crate) use write_queue::{Flushed, WriteQueue};

use crate::{
    admission::{Metered, TickBucket},
    config::ServerConfig,
    handshake::{self, HandshakeError, Request, Route},
    metrics::{LoopStats, bump},
    timer::{Tick, ticks},
    wire::{
        CloseCode, Decoder, Inflater, Message, OpCode, ProtocolError, RSV1, Utf8Bytes, pong_frame,
    },
};

/// The heartbeat ping: an empty ping frame, the same bytes for everyone.
const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// Why a send did not queue its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed; nothing more can be sent.
    #[error("connection is closing")]
    Closed,
    /// This send took the connection past its queue limit and the
    /// slow-consumer policy closed it.
    #[error("connection closed as a slow consumer")]
    SlowConsumer,
    /// The server has shut down.
    #[error("server has shut down")]
    ServerStopped,
    /// The connection's loop has a full mailbox (a publisher faster than
    /// the loop): nothing was queued; retry later, or slow down.
    #[error("the server is busy; retry later")]
    Busy,
}

/// What a connection needs from its loop: the limits, and the counters it
/// updates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) config: &'a ServerConfig,
    pub(crate) stats: &'a LoopStats,
    /// The loop's inflater for compressed client messages (permessage-deflate
    /// without context takeover: reset before every message).
    pub(crate) inflater: &'a RefCell<Inflater>,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the request head (see [`Pending`]).
    Handshake,
    /// Open: messages flow both ways.
    Open,
    /// A close frame has been queued; waiting for the peer's close frame or
    /// FIN, or for the close timeout.
    Closing,
    /// A handshake was answered with an HTTP response; dropped once it is
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
    /// The head was an upgrade the application decides off the loop: what
    /// the `101` needs from it.
    awaiting: Option<Accepting>,
}

/// What [`Connection::poll_handshake`] found.
#[derive(Debug)]
pub(crate) enum HandshakeStep {
    /// The request head is not complete yet.
    Incomplete,
    /// An HTTP response was queued (a refusal, a static file, the health
    /// check); the connection ends once it is written.
    Responded,
    /// A valid upgrade request: ask the application, then
    /// [`open`](Connection::open) or [`refuse`](Connection::refuse).
    Upgrade(Box<Upgrade>),
}

/// What the `101` answering an upgrade needs from its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepting {
    /// The client's `Sec-WebSocket-Key` (24 base64 characters, checked).
    pub(crate) key: [u8; 24],
    /// The `Sec-WebSocket-Extensions` answer, if permessage-deflate is
    /// negotiated.
    pub(crate) extensions: Option<&'static str>,
}

/// A valid upgrade request waiting for the application's decision.
#[derive(Debug)]
pub(crate) struct Upgrade {
    pub(crate) request: Request,
    /// The client's `Sec-WebSocket-Key` (24 base64 characters, checked).
    pub(crate) key: [u8; 24],
}

/// Something the client sent, for the application.
#[derive(Debug)]
pub(crate) enum Input {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping, already answered with a pong.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The client's close frame, already answered: report it to the
    /// application with the client's code (1005 if it sent none) and reason.
    Close(CloseCode, Utf8Bytes),
    /// A frame broke RFC 6455: the close frame with its code is queued and
    /// further input is discarded.
    ProtocolError(ProtocolError),
    /// A text (with it) or binary message past the connection's message
    /// rate, not given to the application as a message: the application
    /// may tell the client (a Phoenix error reply) or close.
    RateLimited(Option<Utf8Bytes>),
    /// A message was refused with a close (1003 for an extension that was
    /// not negotiated, 1008 for a client that kept sending past its
    /// message rate); only the peer's close matters from here on.
    Refused,
}

/// What a deadline brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The deadline has not come yet (a timer fired for an earlier one
    /// that has since moved): nothing to do.
    Stale,
    /// A heartbeat ping was queued; tell the application (protocols with
    /// heartbeats of their own send theirs now).
    Heartbeat,
    /// The client was silent past the idle timeout: close 1001 queued.
    IdleTimeout,
    /// The handshake took too long: drop the connection.
    HandshakeTimeout,
    /// The close handshake or the refused request's FIN took too long:
    /// drop the connection.
    CloseTimeout,
}

/// What the reactor must do after a change (see [`Connection::sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Followup {
    /// Frames are waiting, or a close can complete: put the connection on
    /// the turn's flush list.
    pub(crate) flush: bool,
    /// The connection started closing with this code: tell the
    /// application (once per opened connection).
    pub(crate) closed: Option<CloseCode>,
    /// The deadline moved to this tick: arm a timer for it.
    pub(crate) wake_at: Option<Tick>,
}

/// What a completed flush leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFlush {
    /// Nothing more to do.
    Keep,
    /// Everything, our close frame included, has been written: shut down
    /// the write side (our FIN), keep reading for the peer's close or FIN.
    ShutdownWrite,
    /// The close handshake is complete: the server closes the TCP
    /// connection first (RFC 6455 section 7.1.1).
    Remove,
}

/// What a graceful shutdown does to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shutdown {
    /// Still handshaking: drop it.
    Remove,
    /// Open: close 1001 queued.
    Closing,
    /// Already ending.
    Nothing,
}

/// One connection's state machine.
///
/// Every open connection holds one, so it is kept small (see the size
/// budget in the reactor's `Slot`): what only a handshaking connection
/// needs is boxed in `pending` and dropped when it opens.
#[derive(Debug)]
pub(crate) struct Connection {
    phase: Phase,
    /// What the handshake needs until the connection opens or is refused.
    pending: Option<Box<Pending>>,
    decoder: Decoder,
    outbox: Outbox,
    /// The tick of the one deadline this connection waits for.
    deadline: Tick,
    /// The tick at which bytes last arrived.
    last_recv: Tick,
    /// Whether `deadline` moved since the reactor last armed a timer.
    deadline_moved: bool,
    /// Whether the peer's close frame has arrived.
    peer_closed: bool,
    /// Whether a flush is needed to finish a close even with nothing queued.
    flush_requested: bool,
    /// Whether input is being discarded (after a protocol error, or once a
    /// response to a refused request is queued).
    discard_input: bool,
    /// Whether our side of the TCP connection has been shut down.
    write_shut: bool,
    /// Whether the application accepted the connection.
    opened: bool,
    /// Whether the end has been reported to the application.
    close_reported: bool,
    /// The client's message rate, when one is set.
    message_rate: TickBucket,
}

impl Connection {
    /// A connection just accepted from `peer`, handshaking until the
    /// handshake timeout; `over_limit` if the server is at its connection
    /// limit (it will be answered with 503).
    pub(crate) fn accepted(peer: SocketAddr, over_limit: bool, now: Tick, env: Env<'_>) -> Self {
        Self {
            phase: Phase::Handshake,
            pending: Some(Box::new(Pending {
                peer,
                scanned: 0,
                over_limit,
                awaiting: None,
            })),
            decoder: Decoder::new(),
            outbox: Outbox::default(),
            deadline: now + ticks(env.config.handshake_timeout),
            last_recv: now,
            deadline_moved: true,
            peer_closed: false,
            flush_requested: false,
            discard_input: false,
            write_shut: false,
            opened: false,
            close_reported: false,
            message_rate: TickBucket::default(),
        }
    }

    /// Whether the connection is open (handshake done, no close queued).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// Whether the connection speaks WebSocket (open, or closing): what it
    /// has queued is frames, which the queue budget may shed (an HTTP
    /// response being written is never cut).
    pub(crate) fn speaks_websocket(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Closing)
    }

    /// Whether the connection negotiated permessage-deflate.
    pub(crate) fn deflates(&self) -> bool {
        self.outbox.deflate
    }

    /// Whether the connection is still waiting for its request head.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.phase == Phase::Handshake
    }

    /// The frames waiting to be sent, and the send side of the API.
    pub(crate) fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The frames waiting to be sent, to look at.
    pub(crate) fn outbox_ref(&self) -> &Outbox {
        &self.outbox
    }

    /// The tick of the deadline this connection waits for; a timer that
    /// fires for another tick is stale.
    pub(crate) fn deadline(&self) -> Tick {
        self.deadline
    }

    /// Whether the decoder is between messages, so that the read buffer can
    /// go back to the pool once it is empty.
    pub(crate) fn is_between_messages(&self) -> bool {
        self.decoder.is_idle()
    }

    fn set_deadline(&mut self, deadline: Tick) {
        self.deadline = deadline;
        self.deadline_moved = true;
    }

    // ---- Handshake ------------------------------------------------------------

    /// Looks for a complete request head in `buf` and checks it. The head
    /// leaves `buf` when it is complete; frames sent right behind it stay.
    pub(crate) fn poll_handshake(
        &mut self,
        buf: &mut BytesMut,
        now: Tick,
        env: Env<'_>,
    ) -> HandshakeStep {
        let max_head = env.config.max_head_bytes;
        let Some(pending) = self.pending.as_deref_mut() else {
            return HandshakeStep::Incomplete;
        };
        if pending.awaiting.is_some() {
            // A client may send frames behind its head, but not more than a
            // head's worth before it has its answer.
            if buf.len() > max_head {
                return self.refuse(&HandshakeError::Malformed, now, env);
            }
            return HandshakeStep::Incomplete;
        }
        let Some(end) = handshake::head_end(buf, pending.scanned) else {
            pending.scanned = buf.len();
            if buf.len() > max_head {
                return self.refuse(&HandshakeError::HeadTooLarge { limit: max_head }, now, env);
            }
            // Bytes that can never begin an HTTP request get their 400 now,
            // not at the handshake timeout.
            if let Err(err) = handshake::parse_head(buf, max_head) {
                return self.refuse(&err, now, env);
            }
            return HandshakeStep::Incomplete;
        };
        let parsed = match handshake::parse_head(&buf[..end], max_head) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return self.refuse(&HandshakeError::Malformed, now, env),
            Err(err) => return self.refuse(&err, now, env),
        };
        let (peer, over_limit) = (pending.peer, pending.over_limit);
        let http_minor = parsed.http_minor;
        let head = buf.split_to(parsed.len).freeze();
        let request = parsed.into_request(head, peer);
        self.route(request, http_minor, over_limit, now, env)
    }

    /// Answers a parsed request: the health check, a static file, a refusal,
    /// or an upgrade for the application to decide.
    fn route(
        &mut self,
        request: Request,
        http_minor: u8,
        over_limit: bool,
        now: Tick,
        env: Env<'_>,
    ) -> HandshakeStep {
        let config = env.config;
        let serves =
            |path: &str| config.endpoints.is_empty() || config.endpoints.iter().any(|e| e == path);
        let static_file = |path: &str| {
            config
                .static_files
                .iter()
                .position(|file| file.path == path)
        };
        match handshake::route(&request, serves, static_file) {
            Err(err) => self.refuse(&err, now, env),
            Ok(Route::Health) => self.respond(handshake::health_response(), now, env),
            Ok(Route::Static(index)) => {
                let file = &config.static_files[index];
                let response = handshake::static_response(&file.content_type, &file.body);
                self.respond(response, now, env)
            }
            Ok(Route::Upgrade) => match handshake::check_upgrade(&request, http_minor) {
                Err(err) => self.refuse(&err, now, env),
                Ok(_) if over_limit => self.refuse(&HandshakeError::Overloaded, now, env),
                Ok(key) => HandshakeStep::Upgrade(Box::new(Upgrade { request, key })),
            },
        }
    }

    /// The application decides the upgrade off the loop: the connection
    /// waits in its handshake (and its timeout) for
    /// [`decided`](Self::decided).
    pub(crate) fn await_decision(&mut self, accepting: Accepting) {
        if let Some(pending) = self.pending.as_deref_mut() {
            pending.awaiting = Some(accepting);
        }
    }

    /// The decision came: what the `101` needs if the connection is still
    /// waiting for it (then [`open`](Self::open) or
    /// [`refuse`](Self::refuse) it), `None` if it is not.
    pub(crate) fn decided(&mut self) -> Option<Accepting> {
        if self.phase != Phase::Handshake {
            return None;
        }
        self.pending.as_deref_mut()?.awaiting.take()
    }

    /// Answers the request with the error's status (counted as refused);
    /// the connection ends once the response is written.
    pub(crate) fn refuse(
        &mut self,
        err: &HandshakeError,
        now: Tick,
        env: Env<'_>,
    ) -> HandshakeStep {
        bump(&env.stats.handshakes_refused, 1);
        self.respond(handshake::error_response(err), now, env)
    }

    /// Queues an HTTP response; the connection ends once it is written and
    /// the peer has closed, or at the close timeout.
    fn respond(&mut self, response: Bytes, now: Tick, env: Env<'_>) -> HandshakeStep {
        self.phase = Phase::Refused;
        self.pending = None;
        self.discard_input = true;
        self.outbox.queue.push(response);
        self.set_deadline(now + ticks(env.config.close_timeout));
        HandshakeStep::Responded
    }

    /// The application accepted the upgrade: queues the `101` response
    /// (which says whether permessage-deflate was negotiated: `deflate`)
    /// and starts the heartbeat.
    pub(crate) fn open(&mut self, response: Bytes, deflate: bool, now: Tick, env: Env<'_>) {
        self.phase = Phase::Open;
        self.outbox.deflate = deflate;
        self.pending = None;
        self.opened = true;
        self.outbox.queue.push(response);
        self.set_deadline(now + ticks(env.config.ping_interval));
        bump(&env.stats.connections_opened, 1);
    }

    // ---- Open and closing -------------------------------------------------------

    /// Bytes arrived at `now`: the idle timeout counts from here.
    pub(crate) fn received(&mut self, now: Tick) {
        self.last_recv = now;
    }

    /// Decodes the next message in `buf` and applies what the protocol
    /// requires by itself (a pong for a ping, the answer to a close, a close
    /// for a protocol error). `None` when `buf` holds no complete message,
    /// or nothing more is wanted from this peer.
    pub(crate) fn next_input(
        &mut self,
        buf: &mut BytesMut,
        now: Tick,
        env: Env<'_>,
    ) -> Option<Input> {
        loop {
            if self.discard_input || self.is_handshaking() {
                if self.discard_input {
                    buf.clear();
                }
                return None;
            }
            let decoder = if self.deflates() {
                // The limits hold for the inflated message (see `inflate`);
                // on the wire, a compressed message may be a little larger
                // than its text (stored blocks of incompressible data).
                let limits = env.config.decoder;
                let room = |limit: usize| limit.saturating_add(limit / 64 + 1024);
                limits
                    .accept_rsv_bits(RSV1)
                    .max_frame_size(room(limits.frame_limit()))
                    .max_message_size(room(limits.message_limit()))
            } else {
                env.config.decoder
            };
            let message = match self.decoder.decode(buf, &decoder) {
                Ok(None) => return None,
                Ok(Some(message)) => message,
                Err(err) => {
                    buf.clear();
                    return Some(self.fail(err, env));
                }
            };
            bump(&env.stats.messages_received, 1);
            let message = match self.inflate(message, env) {
                Ok(message) => message,
                Err(err) => {
                    buf.clear();
                    return Some(self.fail(err, env));
                }
            };
            if let Some(input) = self.accept_message(message, env.config.max_queued_bytes) {
                return Some(self.meter(input, now, env));
            }
        }
    }

    /// Fails the connection for a broken rule: its close code, and no more
    /// input read.
    fn fail(&mut self, err: ProtocolError, env: Env<'_>) -> Input {
        bump(&env.stats.protocol_errors, 1);
        self.discard_input = true;
        self.outbox.queue_close(err.close_code(), &err.to_string());
        Input::ProtocolError(err)
    }

    /// A compressed message (RSV1, with permessage-deflate negotiated)
    /// inflated, within the message limit, text validated as UTF-8; other
    /// messages as they are, within the same limit.
    fn inflate(&self, message: Message, env: Env<'_>) -> Result<Message, ProtocolError> {
        let limit = env.config.decoder.message_limit();
        let plain_len = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(data) => data.len(),
            _ => 0,
        };
        // The decoder gave a compressing connection room on the wire (see
        // `next_input`); an uncompressed message keeps the exact limit.
        if self.deflates() && plain_len > limit {
            return Err(ProtocolError::MessageTooLarge {
                len: plain_len as u64,
                max: limit,
            });
        }
        let Message::Encoded {
            opcode,
            rsv: RSV1,
            payload,
        } = message
        else {
            return Ok(message);
        };
        if !self.deflates() {
            return Ok(Message::Encoded {
                opcode,
                rsv: RSV1,
                payload,
            });
        }
        let inflated = env.inflater.borrow_mut().inflate(&payload, limit)?;
        bump(&env.stats.messages_inflated, 1);
        match opcode {
            OpCode::Text => Utf8Bytes::try_from_bytes(inflated)
                .map(Message::Text)
                .map_err(|_| ProtocolError::InvalidUtf8),
            _ => Ok(Message::Binary(inflated)),
        }
    }

    /// What a decoded message means in the current phase.
    fn accept_message(&mut self, message: Message, max_queued_bytes: usize) -> Option<Input> {
        if !self.is_open() {
            // After our close frame, only the peer's close matters
            // (RFC 6455 section 5.5.1).
            if let Message::Close(_) = message {
                self.peer_closed = true;
                self.flush_requested = true;
            }
            return None;
        }
        Some(match message {
            Message::Text(text) => Input::Text(text),
            Message::Binary(data) => Input::Binary(data),
            Message::Ping(payload) => {
                if let Ok(pong) = pong_frame(&payload) {
                    self.outbox.push_control(pong, max_queued_bytes);
                }
                Input::Ping(payload)
            }
            Message::Pong(payload) => Input::Pong(payload),
            Message::Close(close) => {
                let code = close.as_ref().map(|close| close.code);
                self.peer_closed = true;
                self.outbox.answer_close(code);
                let code = code.unwrap_or(CloseCode::NO_STATUS);
                let reason = close.map(|close| close.reason).unwrap_or_default();
                Input::Close(code, reason)
            }
            Message::Encoded { .. } => {
                // No extension is negotiated (a decoder configured to accept
                // RSV bits yields these): refuse it like an unknown
                // extension would be.
                self.outbox
                    .queue_close(CloseCode::UNSUPPORTED_DATA, "no extension negotiated");
                Input::Refused
            }
        })
    }

    /// Applies the client message rate, if one is set, to text and binary
    /// messages: over it, the message is not given to the application;
    /// kept up past a burst's worth more, the connection is closed with
    /// 1008.
    fn meter(&mut self, input: Input, now: Tick, env: Env<'_>) -> Input {
        let Some(limit) = env.config.message_rate else {
            return input;
        };
        if !matches!(input, Input::Text(_) | Input::Binary(_)) {
            return input;
        }
        match self.message_rate.take(limit, now) {
            Metered::Taken => return input,
            Metered::Refused => bump(&env.stats.messages_rate_limited, 1),
            Metered::Exceeded => {
                bump(&env.stats.messages_rate_limited, 1);
                self.outbox
                    .queue_close(CloseCode::POLICY_VIOLATION, "message rate exceeded");
                return Input::Refused;
            }
        }
        match input {
            Input::Text(text) => Input::RateLimited(Some(text)),
            _ => Input::RateLimited(None),
        }
    }

    /// Queues a close frame with `code` and `reason` (the application's, or
    /// a policy's).
    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) {
        self.outbox.queue_close(code, reason);
    }

    /// Applies what the last change asked for: an open connection with a
    /// queued close moves to `Closing` (waiting at most the close timeout
    /// for the peer). Returns what the reactor must do.
    pub(crate) fn sync(&mut self, now: Tick, env: Env<'_>) -> Followup {
        let mut sync = Followup::default();
        if self.is_open()
            && let Some(code) = self.outbox.close_code()
        {
            self.phase = Phase::Closing;
            self.set_deadline(now + ticks(env.config.close_timeout));
            sync.closed = self.take_close_report().then_some(code);
        }
        sync.flush = !self.outbox.queue.is_empty() || std::mem::take(&mut self.flush_requested);
        if std::mem::take(&mut self.deadline_moved) {
            sync.wake_at = Some(self.deadline);
        }
        sync
    }

    /// Whether the application must still be told that the connection
    /// ended: true once, and only for a connection that opened.
    pub(crate) fn take_close_report(&mut self) -> bool {
        let report = self.opened && !self.close_reported;
        self.close_reported = true;
        report
    }

    /// The deadline's tick has come (the reactor checked it is still this
    /// connection's deadline).
    pub(crate) fn on_deadline(&mut self, now: Tick, env: Env<'_>) -> Expired {
        if now < self.deadline {
            return Expired::Stale;
        }
        match self.phase {
            Phase::Handshake => {
                bump(&env.stats.handshakes_refused, 1);
                Expired::HandshakeTimeout
            }
            Phase::Open => self.heartbeat(now, env),
            Phase::Closing | Phase::Refused => Expired::CloseTimeout,
        }
    }

    /// Pings an open connection, or closes it if it has been silent past
    /// the idle timeout; schedules the next ping.
    fn heartbeat(&mut self, now: Tick, env: Env<'_>) -> Expired {
        let idle = ticks(env.config.idle_timeout);
        if now.saturating_sub(self.last_recv) >= idle {
            bump(&env.stats.idle_timeouts, 1);
            self.outbox
                .queue_close(CloseCode::GOING_AWAY, "idle timeout");
            return Expired::IdleTimeout;
        }
        self.outbox.push_control(PING, env.config.max_queued_bytes);
        self.outbox.queue.release_if_idle();
        let next_ping = now + ticks(env.config.ping_interval);
        self.set_deadline(next_ping.min(self.last_recv + idle).max(now + 1));
        Expired::Heartbeat
    }

    /// A graceful shutdown (`code` 1001) or a drain (1012, "service
    /// restart": reconnect, to another node) reaches this connection.
    pub(crate) fn begin_shutdown(&mut self, code: CloseCode) -> Shutdown {
        match self.phase {
            Phase::Open => {
                let reason = if code == CloseCode::SERVICE_RESTART {
                    "server restarting"
                } else {
                    "server shutting down"
                };
                self.outbox.queue_close(code, reason);
                Shutdown::Closing
            }
            Phase::Handshake => Shutdown::Remove,
            Phase::Closing | Phase::Refused => Shutdown::Nothing,
        }
    }

    // ---- Writing -------------------------------------------------------------------

    /// Writes what is queued to `writer` until it is empty or `writer`
    /// would block. Returns how it ended and how many bytes went out.
    pub(crate) fn flush(&mut self, writer: &mut impl io::Write) -> (io::Result<Flushed>, usize) {
        let before = self.outbox.queued_bytes();
        let result = self.outbox.flush_to(writer);
        (result, before - self.outbox.queued_bytes())
    }

    /// Everything queued went out: finish a close if one is under way.
    pub(crate) fn after_flush(&mut self) -> AfterFlush {
        if !matches!(self.phase, Phase::Closing | Phase::Refused) {
            return AfterFlush::Keep;
        }
        if self.peer_closed {
            return AfterFlush::Remove;
        }
        if self.write_shut {
            return AfterFlush::Keep;
        }
        // Nothing more will be sent; the FIN tells the peer so. The read
        // side stays open for its close frame or FIN, so that closing does
        // not reset a connection with unread data in flight.
        self.write_shut = true;
        AfterFlush::ShutdownWrite
    }
}
