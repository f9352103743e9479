//! The two fan-out servers of `herald-bench`, shared by the `fanout`
//! example (its `main.rs`) and `herald-bench --embedded` (which includes
//! this file), so the benchmark runs one implementation in or out of
//! process.
//!
//! - [`Fanout`], plain WebSocket: every connection subscribes to a topic
//!   (`?topic=`, default `all`; `?subscribe=0` to only publish), and every
//!   text message a connection sends is published to its topic, encoded
//!   once for all subscribers.
//! - [`start`] with `phoenix`: a Phoenix V2 channels endpoint at
//!   `/socket/websocket` where any topic can be joined and every push is
//!   broadcast to the topic's other subscribers (`broadcast_from`).

use std::{io, net::SocketAddr, sync::Arc};

use herald::{
    Accept, Conn, Handler, Reject, Request, Server, ServerBuilder, ServerHandle,
    channels::{Channel, ChannelContext, Channels, Endpoint, JoinResult, Reply, Socket},
    wire::Utf8Bytes,
};
use serde_json::value::RawValue;

/// Anyone may connect.
struct Anyone;

impl Socket for Anyone {
    type Assigns = ();

    fn connect(&self, _request: &Request) -> Result<(), Reject> {
        Ok(())
    }
}

/// Joins always succeed; pushes go to the topic's other subscribers.
struct Relay;

impl Channel<()> for Relay {
    fn handle_joined(
        &self,
        _ctx: &mut ChannelContext<'_, '_, ()>,
        _payload: &RawValue,
    ) -> JoinResult {
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, ()>,
        event: &str,
        payload: &RawValue,
    ) {
        ctx.broadcast_from(event, payload);
    }
}

struct Fanout;

struct Member {
    topic: Arc<str>,
    subscribe: bool,
}

impl Handler for Fanout {
    type State = Member;

    fn on_connect(&self, request: &Request) -> Result<Accept<Member>, Reject> {
        let topic = request
            .query_param("topic")
            .map_or(Arc::from("all"), |t| Arc::from(&*t));
        let subscribe = request.query_param("subscribe").as_deref() != Some("0");
        Ok(Accept::new(Member { topic, subscribe }))
    }

    fn on_open(&self, conn: &mut Conn<'_, Member>) {
        if conn.state().subscribe {
            let topic = Arc::clone(&conn.state().topic);
            conn.subscribe(&topic);
        }
    }

    fn on_message(&self, conn: &mut Conn<'_, Member>, text: Utf8Bytes) {
        let frame = herald::wire::text_frame(&text);
        let topic = Arc::clone(&conn.state().topic);
        conn.publish(&topic, frame);
    }
}

/// A running fan-out server of either kind.
pub(crate) enum Running {
    /// The plain WebSocket server.
    Plain(Server),
    /// The Phoenix channels engine.
    Phoenix(herald::channels::Engine),
}

impl Running {
    /// Where it listens.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Plain(server) => server.local_addr(),
            Self::Phoenix(engine) => engine.local_addr(),
        }
    }

    /// A handle for stats and shutdown (herald-bench uses it; the
    /// example serves until killed).
    #[allow(dead_code)]
    pub(crate) fn handle(&self) -> ServerHandle {
        match self {
            Self::Plain(server) => server.handle(),
            Self::Phoenix(engine) => engine.handle().server().clone(),
        }
    }

    /// Serves until shut down.
    pub(crate) fn join(self) {
        match self {
            Self::Plain(server) => server.join(),
            Self::Phoenix(engine) => engine.join(),
        }
    }
}

/// Starts the plain or the Phoenix fan-out server on `builder`.
pub(crate) fn start(builder: ServerBuilder, phoenix: bool) -> io::Result<Running> {
    if phoenix {
        let endpoint = Endpoint::new(Anyone).channel("*", Relay);
        let engine = Channels::new()
            .phoenix("/socket/websocket", endpoint)
            .start(builder)?;
        return Ok(Running::Phoenix(engine));
    }
    Ok(Running::Plain(builder.start(Fanout)?))
}
