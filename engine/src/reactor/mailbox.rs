//! How other threads reach a loop: a channel of commands and a waker.
//!
//! Posting is lock-free (crossbeam's channel). The `eventfd` write that
//! wakes the loop is the expensive part, so it is coalesced: the first post
//! after the loop last drained its mailbox wakes it, later ones only queue.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

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
    /// Hand an application message to a connection's handler.
    Info { conn: ConnId, message: AppMessage },
    /// Hand an application message to this loop's connections with this
    /// name.
    InfoByName { name: Arc<str>, message: AppMessage },
    /// The decision on an upgrade request the service took off the loop
    /// (`None`: it was dropped unanswered).
    Decided {
        conn: ConnId,
        decision: Option<super::Decision>,
    },
    /// Begin a graceful shutdown.
    Shutdown,
    /// Begin a drain: close the connections in batches with 1012.
    Drain,
}

/// An application's message for a connection's handler (a channel's
/// `handle_info`), from any thread: shared, as one message may reach many
/// connections.
pub(crate) type AppMessage = Arc<dyn std::any::Any + Send + Sync>;

/// The sending side of a loop's mailbox.
///
/// Two queues: a bounded one for what other threads send at the rate of
/// their traffic (broadcasts, sends and closes for connections), so that a
/// publisher faster than the loop cannot grow memory without end (a full
/// queue refuses, and the refusal is counted and returned), and an
/// unbounded one for the rare commands that must never be refused
/// (shutdown, drain), which the loop reads first. A disconnect by name
/// goes with the traffic, in order, and takes the control queue only when
/// the traffic queue is full.
#[derive(Debug)]
pub(crate) struct Mailbox {
    data: Sender<Command>,
    control: Sender<Command>,
    waker: mio::Waker,
    wake_pending: AtomicBool,
    /// Commands refused because the bounded queue was full (written by the
    /// posting threads).
    refused: AtomicU64,
}

/// The loop's side of its mailbox.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) control: Receiver<Command>,
    pub(crate) data: Receiver<Command>,
}

impl Inbox {
    /// The next command: control commands first.
    pub(crate) fn next(&self) -> Option<Command> {
        self.control
            .try_recv()
            .or_else(|_| self.data.try_recv())
            .ok()
    }
}

impl Mailbox {
    /// A mailbox whose bounded queue holds `capacity` commands.
    pub(crate) fn new(waker: mio::Waker, capacity: usize) -> (Arc<Self>, Inbox) {
        let (data, data_rx) = crossbeam_channel::bounded(capacity);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let mailbox = Self {
            data,
            control,
            waker,
            wake_pending: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        };
        let inbox = Inbox {
            control: control_rx,
            data: data_rx,
        };
        (Arc::new(mailbox), inbox)
    }

    /// Queues a command and wakes the loop unless a wake is already on its
    /// way. A broadcast, send or close is refused with [`SendError::Busy`]
    /// (and counted) when the loop has a full queue's worth waiting.
    pub(crate) fn post(&self, command: Command) -> Result<(), SendError> {
        match command {
            Command::Shutdown | Command::Drain => self.queue(&self.control, command),
            // In order with the broadcasts before it ("you are banned", then
            // the disconnect), and never refused. A connect decision is never
            // refused either: its connection would wait for the handshake
            // timeout.
            Command::Disconnect(_) | Command::Decided { .. } => self.post_unrefused(command),
            Command::Send { .. }
            | Command::Close { .. }
            | Command::Publish(_)
            | Command::Info { .. }
            | Command::InfoByName { .. } => self.queue(&self.data, command),
        }
    }

    /// Queues a command in order with the traffic, or, past a full queue,
    /// on the control queue: for what answers work the loop started (a
    /// decision, a join's answer), whose number that work bounds.
    pub(crate) fn post_unrefused(&self, command: Command) -> Result<(), SendError> {
        match self.data.try_send(command) {
            Err(TrySendError::Full(command)) => self.queue(&self.control, command),
            Err(TrySendError::Disconnected(_)) => Err(SendError::ServerStopped),
            Ok(()) => self.wake(),
        }
    }

    fn queue(&self, queue: &Sender<Command>, command: Command) -> Result<(), SendError> {
        queue.try_send(command).map_err(|err| match err {
            TrySendError::Full(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                SendError::Busy
            }
            TrySendError::Disconnected(_) => SendError::ServerStopped,
        })?;
        self.wake()
    }

    fn wake(&self) -> Result<(), SendError> {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.waker.wake().map_err(|_| SendError::ServerStopped)?;
        }
        Ok(())
    }

    /// How full the bounded queue is, 0 to 1.
    pub(crate) fn load(&self) -> f64 {
        let capacity = self.data.capacity().unwrap_or(1).max(1);
        self.data.len() as f64 / capacity as f64
    }

    /// Commands refused so far because the queue was full.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
    /// Hands `message` to the connection's handler on its loop.
    pub(crate) fn send_info(&self, message: AppMessage) -> Result<(), SendError> {
        self.mailbox.post(Command::Info {
            conn: self.id,
            message,
        })
    }

    /// [`send_info`](Self::send_info), never refused for a full mailbox:
    /// for answers to work the connection started (see
    /// [`Mailbox::post_unrefused`]).
    pub(crate) fn send_answer(&self, message: AppMessage) -> Result<(), SendError> {
        self.mailbox.post_unrefused(Command::Info {
            conn: self.id,
            message,
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(capacity: usize) -> (Arc<Mailbox>, Inbox, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let (mailbox, inbox) = Mailbox::new(waker, capacity);
        (mailbox, inbox, poll)
    }

    fn publish() -> Command {
        Command::Publish(Arc::new(Broadcast::raw("t", text_frame("x"))))
    }

    #[test]
    fn a_full_mailbox_refuses_traffic_but_never_control() {
        let (mailbox, inbox, _poll) = mailbox(16);
        for _ in 0..16 {
            mailbox.post(publish()).unwrap();
        }
        assert_eq!(mailbox.load(), 1.0);
        // A publisher flood: refused and counted, nothing queued.
        for _ in 0..1000 {
            assert_eq!(mailbox.post(publish()), Err(SendError::Busy));
        }
        assert_eq!(mailbox.refused(), 1000);
        // Shutdown still gets through, and is read first.
        mailbox.post(Command::Shutdown).unwrap();
        assert!(matches!(inbox.next(), Some(Command::Shutdown)));
        let mut drained = 0;
        while inbox.next().is_some() {
            drained += 1;
        }
        assert_eq!(drained, 16);
        assert_eq!(mailbox.load(), 0.0);
        mailbox.post(publish()).unwrap();
    }
}
