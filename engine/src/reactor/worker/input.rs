//! Reading: bytes from the socket into the connection's state machine, and
//! what comes out of it into the application's callbacks.

use std::{
    io::ErrorKind,
    panic::{AssertUnwindSafe, catch_unwind},
};

use bytes::BytesMut;

use super::{ReadUntil, Service, Worker, env};
use crate::{
    conn::{Accepting, HandshakeStep, Input, Upgrade},
    handshake::{self, HandshakeError},
    metrics::bump,
    pubsub::ConnId,
    reactor::{Accept, Conn, Connecting, Decision, Later, Reject, sys::recv_into},
    wire::{CloseCode, Utf8Bytes},
};

/// Bytes read from one socket per turn before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Read buffers kept for reuse per loop, and the largest one kept.
const POOL_BUFFERS: usize = 64;
const POOL_MAX_CAPACITY: usize = 64 * 1024;
/// Bytes read per `recv` while a request head arrives: a head is a few
/// hundred bytes, and a connection that sends it slowly (or never, as in a
/// slowloris attack) then holds a buffer of its size, not a whole read
/// chunk. It grows, a chunk at a time, up to the head limit.
const HANDSHAKE_CHUNK: usize = 1024;

impl<S: Service> Worker<S> {
    /// Reads what the budget cut short last turn.
    pub(super) fn read_deferred(&mut self) {
        for id in std::mem::take(&mut self.read_again) {
            if self
                .conns
                .get(id.key())
                .is_some_and(|slot| slot.generation == id.generation())
            {
                self.read(id.key(), ReadUntil::WouldBlock);
            }
        }
    }

    /// Reads until `until`, EOF or the budget, processing input after
    /// every `recv`.
    pub(super) fn read(&mut self, key: usize, until: ReadUntil) {
        // What arrived before this input is delivered before anything this
        // input makes the handler send (see `fanout.rs`).
        self.deliver_turn();
        let mut total = 0;
        loop {
            let now = self.now_tick();
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let (chunk, buf) = if slot.conn.is_handshaking() {
                let buf = slot
                    .read_buf
                    .get_or_insert_with(|| Box::new(BytesMut::with_capacity(HANDSHAKE_CHUNK)));
                (HANDSHAKE_CHUNK, buf)
            } else {
                let buf = slot
                    .read_buf
                    .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
                (self.ctx.config.read_chunk, buf)
            };
            let received = match self.sessions.get_mut(key) {
                Some(tls) => {
                    let received = tls.recv_into(&slot.socket, buf, chunk);
                    // The TLS handshake (or a key update) may have records
                    // to send.
                    if tls.wants_write() {
                        slot.conn.outbox().mark_dirty(key, &mut self.ctx.dirty);
                    }
                    received
                }
                None => recv_into(&slot.socket, buf, chunk),
            };
            match received {
                Ok(0) => return self.remove(key),
                Ok(received) => {
                    slot.conn.received(now);
                    total += received;
                    self.process_input(key);
                    if received < chunk && until == ReadUntil::ShortRead {
                        break;
                    }
                    if total >= READ_BUDGET {
                        if let Some(slot) = self.conns.get(key) {
                            self.read_again.push(ConnId::new(key, slot.generation));
                        }
                        return;
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.remove(key),
            }
        }
        self.release_idle_buffer(key);
    }

    /// Gives the read buffer back to the pool when nothing is half-read.
    fn release_idle_buffer(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let idle = slot.read_buf.as_ref().is_some_and(|buf| buf.is_empty())
            && slot.conn.is_between_messages();
        if idle && let Some(buf) = slot.read_buf.take() {
            self.recycle(buf);
        }
    }

    pub(super) fn recycle(&mut self, mut buf: Box<BytesMut>) {
        buf.clear();
        if self.pool.len() < POOL_BUFFERS && buf.capacity() <= POOL_MAX_CAPACITY {
            self.pool.push(buf);
        }
    }

    fn process_input(&mut self, key: usize) {
        if self.conns[key].conn.is_handshaking() {
            self.advance_handshake(key);
        } else {
            self.decode_inputs(key);
        }
    }

    // ---- Handshake -------------------------------------------------------------

    fn advance_handshake(&mut self, key: usize) {
        let now = self.now_tick();
        let slot = &mut self.conns[key];
        let Some(buf) = &mut slot.read_buf else {
            return;
        };
        match slot.conn.poll_handshake(buf, now, env(&self.ctx)) {
            HandshakeStep::Incomplete => {}
            HandshakeStep::Responded => {
                buf.clear();
                self.sync(key);
            }
            HandshakeStep::Upgrade(upgrade) => self.connect(key, *upgrade),
        }
    }

    /// Asks the application, then opens or refuses, or waits for its
    /// decision (see `deferred.rs`).
    fn connect(&mut self, key: usize, upgrade: Upgrade) {
        let service = &*self.service;
        let later = Later {
            mailbox: &self.ctx.mailbox,
            conn: ConnId::new(key, self.conns[key].generation),
        };
        let decision = catch_unwind(AssertUnwindSafe(|| {
            service.on_connect(&upgrade.request, later)
        }));
        let compression = self.ctx.config.compression;
        let accepting = Accepting {
            key: upgrade.key,
            extensions: compression.and_then(|_| handshake::negotiate_deflate(&upgrade.request)),
        };
        match decision {
            Ok(Connecting::Now(decision)) => self.conclude(key, accepting, Ok(decision)),
            Ok(Connecting::Later) => self.conns[key].conn.await_decision(accepting),
            Err(_) => self.conclude(key, accepting, Err(upgrade.request.path())),
        }
    }

    /// A decision taken off the loop has come back (`None`: dropped
    /// unanswered, refused with 503).
    pub(super) fn decided(&mut self, conn: ConnId, decision: Option<Decision>) {
        let accepting = self
            .conns
            .get_mut(conn.key())
            .filter(|slot| slot.generation == conn.generation())
            .and_then(|slot| slot.conn.decided());
        let Some(accepting) = accepting else {
            bump(&self.ctx.stats.commands_for_closed_connections, 1);
            return;
        };
        let Some(decision) = decision else {
            let unanswered = HandshakeError::Rejected {
                status: 503,
                reason: Some("no decision on this connection".into()),
            };
            return self.refuse(conn.key(), unanswered);
        };
        let service = &*self.service;
        match catch_unwind(AssertUnwindSafe(|| service.on_connect_decided(decision))) {
            Ok(decision) => self.conclude(conn.key(), accepting, Ok(decision)),
            Err(_) => self.conclude(conn.key(), accepting, Err("a deferred decision")),
        }
    }

    /// Opens or refuses as decided; `Err` names what panicked (500).
    fn conclude(
        &mut self,
        key: usize,
        accepting: Accepting,
        decision: Result<Result<Accept<S::State>, Reject>, &str>,
    ) {
        let accept = match decision {
            Ok(Ok(accept)) => accept,
            Ok(Err(reject)) => {
                let (status, reason) = reject.into_parts();
                return self.refuse(key, HandshakeError::Rejected { status, reason });
            }
            Err(what) => {
                bump(&self.ctx.stats.handler_panics, 1);
                tracing::error!(what, "on_connect panicked");
                let rejected = HandshakeError::Rejected {
                    status: 500,
                    reason: None,
                };
                return self.refuse(key, rejected);
            }
        };
        let now = self.now_tick();
        let response = handshake::switching_protocols(
            &accepting.key,
            accept.subprotocol.as_deref(),
            accepting.extensions,
        );
        let deflate = accepting.extensions.is_some();
        let slot = &mut self.conns[key];
        slot.conn.open(response, deflate, now, env(&self.ctx));
        slot.state = Some(accept.state);
        self.sync(key);
        self.call(key, |service, conn| service.on_open(conn));
        // A client may send frames right behind its request head.
        self.decode_inputs(key);
    }

    fn refuse(&mut self, key: usize, err: HandshakeError) {
        let now = self.now_tick();
        let slot = &mut self.conns[key];
        slot.conn.refuse(&err, now, env(&self.ctx));
        if let Some(buf) = &mut slot.read_buf {
            buf.clear();
        }
        self.sync(key);
    }

    // ---- Messages ----------------------------------------------------------------

    /// Hands every complete message in the read buffer to the application.
    fn decode_inputs(&mut self, key: usize) {
        loop {
            let now = self.now_tick();
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            let Some(buf) = &mut slot.read_buf else {
                return;
            };
            let Some(input) = slot.conn.next_input(buf, now, env(&self.ctx)) else {
                return self.sync(key);
            };
            // A broadcast this input's own earlier messages caused, for this
            // connection, goes out before what this input causes (a reply
            // never overtakes it).
            let conn = ConnId::new(key, self.conns[key].generation);
            if self.turn_reaches(conn, &self.conns[key].topics) {
                self.deliver_turn();
            }
            self.dispatch(key, input);
        }
    }

    fn dispatch(&mut self, key: usize, input: Input) {
        match input {
            Input::Text(text) => self.call(key, |service, conn| service.on_message(conn, text)),
            Input::Binary(data) => self.call(key, |service, conn| service.on_binary(conn, data)),
            Input::Ping(payload) => self.call(key, |service, conn| service.on_ping(conn, payload)),
            Input::Pong(payload) => self.call(key, |service, conn| service.on_pong(conn, payload)),
            Input::Close(code, reason) => {
                // The client's code and reason are the ones reported, before
                // the move to Closing would report ours.
                if self.conns[key].conn.take_close_report() {
                    self.notify_close(key, code, &reason);
                }
                self.sync(key);
            }
            Input::ProtocolError(err) => {
                tracing::debug!(%err, "protocol error");
                self.sync(key);
            }
            Input::RateLimited(text) => self.call(key, |service, conn| {
                service.on_rate_limited(conn, text.as_ref().map(Utf8Bytes::as_str));
            }),
            Input::Refused => self.sync(key),
        }
    }

    // ---- The application -----------------------------------------------------------

    /// Runs a callback for an open connection, catching panics: a panic
    /// closes the connection with 1011. Then delivers what it published and
    /// applies what it queued.
    pub(super) fn call(&mut self, key: usize, callback: impl FnOnce(&S, &mut Conn<'_, S::State>)) {
        if self.invoke(key, callback) {
            tracing::error!("a handler callback panicked; closing its connection with 1011");
            self.conns[key]
                .conn
                .close(CloseCode::INTERNAL_ERROR, "internal error");
        }
        self.deliver_publishes();
        self.sync(key);
    }

    /// Runs `callback` with the connection's [`Conn`]; returns whether it
    /// panicked (counted). Does nothing before the connection has a state.
    fn invoke(&mut self, key: usize, callback: impl FnOnce(&S, &mut Conn<'_, S::State>)) -> bool {
        let slot = &mut self.conns[key];
        let Some(state) = slot.state.as_mut() else {
            return false;
        };
        let mut conn = Conn {
            state,
            outbox: slot.conn.outbox(),
            topics: &mut slot.topics,
            id: ConnId::new(key, slot.generation),
            ctx: &mut self.ctx,
        };
        let service = &*self.service;
        let panicked = catch_unwind(AssertUnwindSafe(|| callback(service, &mut conn))).is_err();
        if panicked {
            bump(&self.ctx.stats.handler_panics, 1);
        }
        panicked
    }

    /// Tells the application the connection ended (the caller made sure it
    /// is the first time).
    pub(super) fn notify_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        bump(&self.ctx.stats.connections_closed, 1);
        if self.invoke(key, |service, conn| service.on_close(conn, code, reason)) {
            tracing::error!("on_close panicked");
        }
        self.deliver_publishes();
    }

    /// Applies what the last change to a connection asked for: flush it
    /// this turn, tell the application it is closing, arm its timer.
    pub(super) fn sync(&mut self, key: usize) {
        let now = self.now_tick();
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let sync = slot.conn.sync(now, env(&self.ctx));
        if sync.flush {
            slot.conn.outbox().mark_dirty(key, &mut self.ctx.dirty);
        }
        if let Some(tick) = sync.wake_at {
            self.arm(key, tick);
        }
        if let Some(code) = sync.closed {
            self.notify_close(key, code, "");
        }
    }
}
