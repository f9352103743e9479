//! Connections and joins decided off the loop.
//!
//! A [`Socket`](super::Socket) that must ask something slow before it lets
//! a client in (an HTTP backend, a database) takes a [`ConnectAnswer`] in
//! [`connect_later`](super::Socket::connect_later) and answers from any
//! thread; a [`Channel`](super::Channel) does the same for a join with
//! [`ChannelContext::join_later`](super::ChannelContext::join_later) and
//! finishes it in
//! [`handle_join_answer`](super::Channel::handle_join_answer). Either way
//! the loop never waits: the answer comes back through its mailbox.

use std::{any::Any, marker::PhantomData, sync::Arc};

use crate::{
    conn::SendError,
    reactor::{ConnHandle, Decision, PendingConnect, Reject},
};

/// The answer owed to one connection's upgrade request: accept it with its
/// assigns, or refuse it with an HTTP status. `Send`: answer from any
/// thread, once.
///
/// Dropped unanswered, it refuses the request with 503. The request still
/// waits no longer than the server's handshake timeout (10 s by default):
/// bound what it waits for well below that.
pub struct ConnectAnswer<A> {
    pending: PendingConnect,
    via: Via,
    _assigns: PhantomData<fn(A)>,
}

/// Where the answer goes back to: the endpoint, and whether to echo the
/// `phoenix` subprotocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Via {
    pub(crate) endpoint: u16,
    pub(crate) phoenix_subprotocol: bool,
}

/// What a [`ConnectAnswer`] sends back to the loop.
pub(crate) struct ConnectDecision {
    pub(crate) via: Via,
    /// The socket's `Result<Assigns, Reject>`, read by its endpoint.
    pub(crate) outcome: Box<dyn Any + Send>,
}

impl<A: Send + 'static> ConnectAnswer<A> {
    pub(crate) fn new(pending: PendingConnect, via: Via) -> Self {
        Self {
            pending,
            via,
            _assigns: PhantomData,
        }
    }

    /// Lets the client in with `assigns`.
    pub fn accept(self, assigns: A) {
        self.decide(Ok(assigns));
    }

    /// Refuses the client with `reject`'s status and reason.
    pub fn reject(self, reject: Reject) {
        self.decide(Err(reject));
    }

    fn decide(self, outcome: Result<A, Reject>) {
        let decision = ConnectDecision {
            via: self.via,
            outcome: Box::new(outcome),
        };
        let decision: Decision = Box::new(decision);
        self.pending.decide(decision);
    }

    /// Gives the request back to be decided on the loop after all.
    pub(crate) fn into_parts(self) -> (PendingConnect, Via) {
        (self.pending, self.via)
    }
}

impl<A> std::fmt::Debug for ConnectAnswer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectAnswer").finish_non_exhaustive()
    }
}

/// The answer owed to one join: hand the channel whatever it needs to
/// decide, from any thread, once, with [`answer`](Self::answer); the
/// channel's [`handle_join_answer`](super::Channel::handle_join_answer)
/// then accepts or refuses the join on the loop.
///
/// Until then the client waits for its join reply (the phoenix client
/// times out after 10 s and joins again, which replaces this join).
/// Dropped unanswered, the join is refused with `"join not answered"`.
#[derive(Debug)]
pub struct JoinLater {
    conn: ConnHandle,
    topic: Arc<str>,
    id: u64,
    armed: bool,
}

/// What a [`JoinLater`] sends to the connection's loop.
pub(crate) struct JoinAnswer {
    pub(crate) topic: Arc<str>,
    pub(crate) id: u64,
    /// `None`: the `JoinLater` was dropped unanswered.
    pub(crate) message: Option<Box<dyn Any + Send + Sync>>,
}

impl JoinLater {
    pub(crate) fn new(conn: ConnHandle, topic: Arc<str>, id: u64) -> Self {
        Self {
            conn,
            topic,
            id,
            armed: true,
        }
    }

    /// Sends `message` to the channel's
    /// [`handle_join_answer`](super::Channel::handle_join_answer). A
    /// connection that has gone, or a join replaced or left meanwhile,
    /// drops it.
    pub fn answer<T: Any + Send + Sync>(mut self, message: T) -> Result<(), SendError> {
        self.armed = false;
        self.post(Some(Box::new(message)))
    }

    fn post(&self, message: Option<Box<dyn Any + Send + Sync>>) -> Result<(), SendError> {
        let answer = JoinAnswer {
            topic: Arc::clone(&self.topic),
            id: self.id,
            message,
        };
        // Never refused for a full mailbox: the join waits for it, and the
        // joins waiting bound how many there are.
        self.conn.send_answer(Arc::new(answer))
    }
}

impl Drop for JoinLater {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.post(None);
        }
    }
}
