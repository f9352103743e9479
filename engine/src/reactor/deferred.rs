//! Connections decided off the loop.
//!
//! Some applications cannot decide an upgrade without asking something slow
//! (an HTTP backend, a database). The loop must not wait, so the service
//! may answer [`Connecting::Later`]: the connection then waits in its
//! handshake, reading nothing more than a request head's worth, and the
//! decision comes back through the loop's mailbox as a [`PendingConnect`]
//! is answered. The handshake timeout still bounds the wait, and a
//! `PendingConnect` dropped unanswered refuses with 503.

use std::{any::Any, sync::Arc};

use super::{Accept, Command, Mailbox, Reject};
use crate::pubsub::ConnId;

/// How a service decided an upgrade request.
#[derive(Debug)]
pub(crate) enum Connecting<S> {
    /// Decided on the loop.
    Now(Result<Accept<S>, Reject>),
    /// A [`PendingConnect`] from [`Later::pending`] carries the decision.
    Later,
}

/// What a decision handed to another thread is sent back as: the
/// service's own type, which only it reads
/// ([`Service::on_connect_decided`](super::Service::on_connect_decided)).
pub(crate) type Decision = Box<dyn Any + Send>;

/// Makes [`PendingConnect`]s for the request being decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Later<'a> {
    pub(crate) mailbox: &'a Arc<Mailbox>,
    pub(crate) conn: ConnId,
}

impl Later<'_> {
    /// A way to send this request's decision from any thread.
    pub(crate) fn pending(&self) -> PendingConnect {
        PendingConnect {
            mailbox: Arc::clone(self.mailbox),
            conn: self.conn,
            armed: true,
        }
    }
}

/// The decision on one upgrade request, owed to its loop: send it with
/// [`decide`](Self::decide). Dropped unanswered, it refuses the request
/// with 503; [`disarm`](Self::disarm) drops it silently (the request was
/// decided on the loop after all).
#[derive(Debug)]
pub(crate) struct PendingConnect {
    mailbox: Arc<Mailbox>,
    conn: ConnId,
    armed: bool,
}

impl PendingConnect {
    /// Sends the decision to the connection's loop. A connection that has
    /// gone meanwhile (the client hung up, the handshake timed out) drops
    /// it.
    pub(crate) fn decide(mut self, decision: Decision) {
        self.armed = false;
        self.post(Some(decision));
    }

    /// Forgets the request without answering it.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    fn post(&self, decision: Option<Decision>) {
        let command = Command::Decided {
            conn: self.conn,
            decision,
        };
        // Only a stopped server refuses a decision (see `Mailbox::post`);
        // its connections are gone anyway.
        let _ = self.mailbox.post(command);
    }
}

impl Drop for PendingConnect {
    fn drop(&mut self) {
        if self.armed {
            self.post(None);
        }
    }
}
