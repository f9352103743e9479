//! Channels: sockets that authorize on connect, topics routed to channel
//! handlers, join/leave, rebroadcast, and broadcasts from anywhere, over
//! the Phoenix V2 and Amber wire protocols.
//!
//! The model is Phoenix's and Amber's channels (and the seeds in the
//! project's `shared/seeds/`):
//!
//! - a [`Socket`] authorizes each connection (`connect` sees the request:
//!   params, headers, cookies, peer) and produces its *assigns*, the
//!   per-connection state every channel of that connection can read and
//!   change; it may name the connection with an id (`"user_socket:42"`) so
//!   that [`EngineHandle::disconnect`] can close every connection of a user;
//! - an [`Endpoint`] routes topic patterns (`"room:*"`, exact topics) to
//!   [`Channel`] handlers, which authorize joins (`handle_joined`), handle
//!   client messages (`handle_message`, commonly a rebroadcast), see leaves
//!   (`handle_leave`), intercept outgoing events per subscriber
//!   (`intercepts` + `handle_out`) and receive server-side subscriptions
//!   (`handle_info`);
//! - [`Channels`] mounts endpoints on paths, each speaking one wire protocol,
//!   and starts an [`Engine`] on a [`ServerBuilder`](crate::ServerBuilder);
//! - the [`EngineHandle`] (`Clone + Send + Sync`) broadcasts to a topic from
//!   anywhere, counts subscribers, and disconnects sockets by id.
//!
//! A broadcast is encoded once per wire protocol that has subscribers (the
//! shared topic index says which), reaches only the loops with subscribers,
//! and is queued to each subscriber as a refcounted frame; only events a
//! channel intercepts cost a callback per subscriber.
//!
//! # Example
//!
//! The chat room of the seeds:
//!
//! ```no_run
//! use herald::channels::{Channel, ChannelContext, Channels, Endpoint, JoinResult, Reply, Socket};
//! use herald::{Reject, Request, Server};
//! use serde_json::value::RawValue;
//!
//! struct UserSocket;
//!
//! struct User {
//!     name: String,
//! }
//!
//! impl Socket for UserSocket {
//!     type Assigns = User;
//!
//!     fn connect(&self, request: &Request) -> Result<User, Reject> {
//!         let name = request.query_param("name").ok_or(Reject::unauthorized())?;
//!         Ok(User { name: name.into_owned() })
//!     }
//! }
//!
//! struct ChatRoom;
//!
//! impl Channel<User> for ChatRoom {
//!     fn handle_joined(&self, ctx: &mut ChannelContext<'_, '_, User>, _payload: &RawValue) -> JoinResult {
//!         let notice = format!("{} has joined the chat!", ctx.assigns().name);
//!         ctx.broadcast_from("notice", &serde_json::json!({ "body": notice }));
//!         Ok(Reply::empty())
//!     }
//!
//!     fn handle_message(&self, ctx: &mut ChannelContext<'_, '_, User>, event: &str, payload: &RawValue) {
//!         ctx.rebroadcast(event, payload);
//!     }
//! }
//!
//! let engine = Channels::new()
//!     .phoenix("/socket/websocket", Endpoint::new(UserSocket).channel("room:*", ChatRoom))
//!     .start(Server::builder().bind("127.0.0.1:4000".parse()?))?;
//! engine.handle().broadcast("room:lobby", "notice", &serde_json::json!({"body": "hello"}))?;
//! engine.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod census;
mod context;
mod deferred;
mod engine;
mod handler;
pub(crate) mod history;
mod presence;
mod reply;
mod stats;
mod timers;

pub use crate::conflation::TopicPattern;
pub use census::{CENSUS_EVERY, NodeSummary, TopicEvent};
pub use context::{ChannelContext, ChannelHandle, ReplyHandle};
pub use deferred::{ConnectAnswer, JoinLater};
pub use engine::{Channels, Endpoint, Engine, EngineHandle};
pub use history::{
    History, HistoryError, HistoryStore, MAX_RECOVERED, Publication, StreamPosition,
};
pub use presence::{DIFF_WINDOW, PRESENCE_DIFF, PRESENCE_STATE, PresenceError};
pub use reply::{JoinResult, LeaveReason, Reply};
use std::any::Any;

use serde_json::value::RawValue;
pub use stats::ChannelStats;

use crate::{broadcast::Broadcast, handshake::Request, reactor::Reject};

/// Authorizes connections to an endpoint and creates their assigns.
pub trait Socket: Send + Sync + 'static {
    /// Per-connection state shared by the connection's channels (a user
    /// id, permissions).
    type Assigns: Send + 'static;

    /// Authorizes a connection: `Err` refuses it with an HTTP status.
    fn connect(&self, request: &Request) -> Result<Self::Assigns, Reject>;

    /// Authorizes a connection off the loop, when deciding needs something
    /// slow (a backend call): keep `answer`, return `Ok(())`, and
    /// [`accept`](ConnectAnswer::accept) or
    /// [`reject`](ConnectAnswer::reject) it from another thread; the
    /// client gets its `101` or refusal then. Return `Err(answer)` to
    /// decide with [`connect`](Self::connect) on the loop instead (the
    /// default).
    ///
    /// # Examples
    ///
    /// ```
    /// use herald::{Reject, Request, channels::{ConnectAnswer, Socket}};
    ///
    /// struct AskTheBackend;
    ///
    /// impl Socket for AskTheBackend {
    ///     type Assigns = String;
    ///
    ///     fn connect(&self, _: &Request) -> Result<String, Reject> {
    ///         Err(Reject::with_status(500)) // never called: see below
    ///     }
    ///
    ///     fn connect_later(
    ///         &self,
    ///         request: &Request,
    ///         answer: ConnectAnswer<String>,
    ///     ) -> Result<(), ConnectAnswer<String>> {
    ///         let token = request.query_param("token").unwrap_or_default().into_owned();
    ///         std::thread::spawn(move || {
    ///             // A slow lookup, off the loop.
    ///             match token.strip_prefix("user-") {
    ///                 Some(user) => answer.accept(user.to_owned()),
    ///                 None => answer.reject(Reject::unauthorized()),
    ///             }
    ///         });
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn connect_later(
        &self,
        request: &Request,
        answer: ConnectAnswer<Self::Assigns>,
    ) -> Result<(), ConnectAnswer<Self::Assigns>> {
        let _ = request;
        Err(answer)
    }

    /// A name for the connection, such as `"user_socket:42"`, so that
    /// [`EngineHandle::disconnect`] can close all of one user's
    /// connections. Default: none.
    fn id(&self, assigns: &Self::Assigns) -> Option<String> {
        let _ = assigns;
        None
    }
}

/// The handler of the topics one route matches, with the connection's
/// assigns of type `A`.
///
/// Callbacks run on the connection's loop thread and must not block. A
/// panic in one closes that channel (Phoenix: `phx_error` to the client)
/// and nothing else.
pub trait Channel<A>: Send + Sync + 'static {
    /// Authorizes a join of `ctx.topic()`: `Ok` with the reply's response,
    /// or `Err` with the refusal's (`{"reason": ...}` by convention). A
    /// refused join never closes the connection.
    fn handle_joined(&self, ctx: &mut ChannelContext<'_, '_, A>, payload: &RawValue) -> JoinResult;

    /// A message from the client on a joined topic. Commonly a
    /// [`rebroadcast`](ChannelContext::rebroadcast); answer a Phoenix push
    /// that carries a ref with [`reply`](ChannelContext::reply).
    fn handle_message(&self, ctx: &mut ChannelContext<'_, '_, A>, event: &str, payload: &RawValue);

    /// A binary message from the client (Phoenix binary V2 push). Default:
    /// an error reply, so that a client waiting on it does not time out.
    fn handle_binary(&self, ctx: &mut ChannelContext<'_, '_, A>, event: &str, data: &[u8]) {
        let _ = (event, data);
        ctx.reply(
            crate::protocol::phoenix::Status::Error,
            &Reply::reason("binary messages are not handled here"),
        );
    }

    /// Finishes a join that [`handle_joined`](Self::handle_joined) left
    /// for later with [`ChannelContext::join_later`]: `message` is what the
    /// [`JoinLater`] was answered with. Decide as `handle_joined` would;
    /// the channel is not joined until this returns `Ok`. Default: refuses.
    fn handle_join_answer(
        &self,
        ctx: &mut ChannelContext<'_, '_, A>,
        message: &(dyn Any + Send + Sync),
    ) -> JoinResult {
        let _ = (ctx, message);
        Err(Reply::reason("join not answered"))
    }

    /// The client left the topic, disconnected, or joined it again.
    fn handle_leave(&self, ctx: &mut ChannelContext<'_, '_, A>, reason: LeaveReason) {
        let _ = (ctx, reason);
    }

    /// Events of broadcasts to this channel's topics that
    /// [`handle_out`](Self::handle_out) sees once per subscriber, before
    /// anything is sent (Phoenix's `intercept`). Other events go out as
    /// encoded once, with no per-subscriber call.
    fn intercepts(&self) -> &[&str] {
        &[]
    }

    /// An intercepted broadcast, once per subscriber: push it (changed or
    /// not) with [`push`](ChannelContext::push), or drop it by doing
    /// nothing.
    fn handle_out(&self, ctx: &mut ChannelContext<'_, '_, A>, event: &str, payload: &RawValue) {
        ctx.push(event, payload);
    }

    /// A broadcast on a topic this channel subscribed to on the server side
    /// with [`ChannelContext::subscribe`].
    fn handle_info(&self, ctx: &mut ChannelContext<'_, '_, A>, broadcast: &Broadcast) {
        let _ = (ctx, broadcast);
    }

    /// An application message for this channel (Phoenix's `handle_info`
    /// for what is not a broadcast): from [`ChannelContext::send_after`], a
    /// [`ChannelHandle`] on any thread, or
    /// [`EngineHandle::send_info`]. Downcast it to the type sent.
    fn handle_app_info(
        &self,
        ctx: &mut ChannelContext<'_, '_, A>,
        message: &(dyn Any + Send + Sync),
    ) {
        let _ = (ctx, message);
    }
}
