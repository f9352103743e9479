//! How connections and the loop end: removal, the graceful shutdown
//! (close 1001 to everyone at once) and the drain for a deploy (close 1012,
//! "service restart", in batches spread over the drain period, so that
//! clients reconnect to other nodes a few at a time instead of all at once).

use std::{sync::atomic::Ordering, time::Instant};

use super::{Service, Worker};
use crate::{
    conn::Shutdown as ShutdownStep,
    pubsub::ConnId,
    timer::{Tick, ticks},
    wire::CloseCode,
};

/// A drain in progress: the open connections still to close, a batch per
/// tick.
#[derive(Debug)]
pub(super) struct Drain {
    waiting: Vec<ConnId>,
    per_tick: usize,
    /// The tick of the next batch.
    next_tick: Tick,
}

impl<S: Service> Worker<S> {
    /// Drops a connection: the peer closed its side, the socket failed, or
    /// the connection ended. The application hears of it first (1006 if it
    /// had not yet).
    pub(super) fn remove(&mut self, key: usize) {
        if self
            .conns
            .get_mut(key)
            .is_some_and(|slot| slot.conn.take_close_report())
        {
            self.notify_close(key, CloseCode::ABNORMAL, "");
        }
        let Some(mut slot) = self.conns.try_remove(key) else {
            return;
        };
        if slot.armed != 0 {
            self.wheel.cancel(key, slot.generation, slot.armed);
        }
        let id = ConnId::new(key, slot.generation);
        for topic in slot.topics.drain(..) {
            self.ctx.topics.unsubscribe(&topic, id);
        }
        self.ctx.names.remove(id);
        if let Some(tls) = self.sessions.get_mut(key) {
            // The TLS stream's end, best effort (a peer that sent its own
            // close_notify, or closed the connection, gets one back).
            let _ = tls.end(&slot.socket);
        }
        let _ = self.poll.registry().deregister(&mut slot.socket);
        self.sessions.set(key, None);
        if let Some(buf) = slot.read_buf.take() {
            self.recycle(buf);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn begin_shutdown(&mut self) {
        let deadline = Instant::now() + self.ctx.config.shutdown_timeout;
        match self.shutdown_deadline {
            // Already shutting down.
            Some(_) if self.drain.is_none() => return,
            // A drain under way becomes a shutdown: everyone still open is
            // closed now, and the wait ends no later than a shutdown's.
            Some(earlier) => self.shutdown_deadline = Some(earlier.min(deadline)),
            None => self.shutdown_deadline = Some(deadline),
        }
        self.stop_accepting();
        self.drain = None;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns[key].conn.begin_shutdown(CloseCode::GOING_AWAY) {
                ShutdownStep::Remove => self.remove(key),
                ShutdownStep::Closing => self.sync(key),
                ShutdownStep::Nothing => {}
            }
        }
    }

    pub(super) fn shutdown_complete(&self) -> bool {
        self.shutdown_deadline
            .is_some_and(|deadline| self.conns.is_empty() || Instant::now() >= deadline)
    }

    pub(super) fn drop_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.remove(key);
        }
    }

    /// Stops accepting and closes every open connection, in batches over
    /// the drain period, with 1012; then waits for them as a shutdown does.
    pub(super) fn begin_drain(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let config = std::sync::Arc::clone(&self.ctx.config);
        self.shutdown_deadline =
            Some(Instant::now() + config.drain_period + config.shutdown_timeout);
        self.stop_accepting();
        let mut waiting = Vec::new();
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let slot = &self.conns[key];
            if slot.conn.is_handshaking() {
                self.remove(key);
            } else if slot.conn.is_open() {
                waiting.push(ConnId::new(key, slot.generation));
            }
        }
        // Close the newest first: the oldest have waited longest to be
        // spread, and popping from the end is free.
        let batches = ticks(config.drain_period) as usize;
        let per_tick = waiting.len().div_ceil(batches.max(1)).max(1);
        self.drain = Some(Drain {
            waiting,
            per_tick,
            next_tick: self.now_tick(),
        });
        self.drain_step();
    }

    /// Closes the batches that are due.
    pub(super) fn drain_step(&mut self) {
        if self.drain.is_none() {
            return;
        }
        // Broadcasts that reached the loop before a client's 1012 reach it.
        self.deliver_turn();
        let now = self.now_tick();
        let Some(drain) = &mut self.drain else {
            return;
        };
        if now < drain.next_tick {
            return;
        }
        // A batch per tick since the last, if the loop slept through some.
        let due = (now - drain.next_tick + 1) as usize * drain.per_tick;
        drain.next_tick = now + 1;
        let at = drain.waiting.len().saturating_sub(due);
        let batch: Vec<ConnId> = drain.waiting.drain(at..).collect();
        if drain.waiting.is_empty() {
            self.drain = None;
        }
        for conn in batch {
            let key = conn.key();
            let live = self
                .conns
                .get(key)
                .is_some_and(|slot| slot.generation == conn.generation());
            if live
                && self.conns[key]
                    .conn
                    .begin_shutdown(CloseCode::SERVICE_RESTART)
                    == ShutdownStep::Closing
            {
                self.sync(key);
            }
        }
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }
}
