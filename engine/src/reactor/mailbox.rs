//! How other threads reach a loop: a channel of commands and a waker.
//!
//! Posting is lock-free (crossbeam's channel). The `eventfd` write that
//! wakes the loop is the expensive part, so it is coalesced: the first post
//! after the loop last drained its mailbox wakes it, later ones only queue.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::{
    broadcast::Broadcast,
    conn::SendError,
    pubsub::ConnId,
    wire::{CloseCode, binary_frame, text_frame},
};

/// What another thread asks a loop to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue `frame` on a connection.
    Send { conn: ConnId, frame: Bytes },
    /// Close a connection.
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    /// Deliver a broadcast to this loop's subscribers of its topic.
    Publish(Arc<Broadcast>),
    /// Close, with 1001, this loop's connections with this name.
    Disconnect(Arc<str>),
    /// Begin a graceful shutdown.
    Shutdown,
    /// Begin a drain: close the connections in batches with 1012.
    Drain,
}

/// The sending side of a loop's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    tx: Sender<Command>,
    waker: mio::Waker,
    wake_pending: AtomicBool,
}

impl Mailbox {
    pub(crate) fn new(waker: mio::Waker) -> (Arc<Self>, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mailbox = Self {
            tx,
            waker,
            wake_pending: AtomicBool::new(false),
        };
        (Arc::new(mailbox), rx)
    }

    /// Queues a command and wakes the loop unless a wake is already on its
    /// way.
    pub(crate) fn post(&self, command: Command) -> Result<(), SendError> {
        self.tx
            .send(command)
            .map_err(|_| SendError::ServerStopped)?;
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.waker.wake().map_err(|_| SendError::ServerStopped)?;
        }
        Ok(())
    }

    /// Called by the loop before it drains: posts from now on wake it again.
    pub(crate) fn clear_wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }
}

/// A handle to one connection, usable from any thread: cheap to clone,
/// `Send + Sync`.
///
/// Commands for a connection that has closed in the meantime are dropped
/// and counted (`commands_for_closed_connections`).
///
/// # Examples
///
/// ```no_run
/// # fn example(conn: &mut herald::Conn<'_, ()>) {
/// let handle = conn.handle();
/// std::thread::spawn(move || {
///     let _ = handle.send_text("computed elsewhere");
/// });
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) id: ConnId,
}

impl ConnHandle {
    /// Sends a text message.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send_frame(text_frame(text))
    }

    /// Sends a binary message.
    pub fn send_binary(&self, data: &[u8]) -> Result<(), SendError> {
        self.send_frame(binary_frame(data))
    }

    /// Sends a frame encoded beforehand, possibly shared with other
    /// connections.
    pub fn send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        self.mailbox.post(Command::Send {
            conn: self.id,
            frame,
        })
    }

    /// Closes the connection with `code` and `reason`.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.mailbox.post(Command::Close {
            conn: self.id,
            code,
            reason: reason.to_owned(),
        })
    }
}
