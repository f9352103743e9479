//! A fan-out server for `herald-bench fanout`.
//!
//! Plain WebSocket (default): every connection subscribes to a topic
//! (`?topic=`, default `all`; `?subscribe=0` to only publish), and every text
//! message a connection sends is published to its topic, encoded once for
//! all subscribers.
//!
//! `--phoenix`: a Phoenix V2 channels endpoint at `/socket/websocket` where
//! any topic can be joined and every push is broadcast to the topic's other
//! subscribers (`broadcast_from`).
//!
//! ```sh
//! cargo run --release -p herald --example fanout -- --port 9002 --loops 1
//! cargo run --release -p herald --example fanout -- --port 9003 --loops 1 --phoenix
//! ```

use std::sync::Arc;

use clap::Parser;
use herald::{
    Accept, Conn, Handler, Reject, Request, Server,
    channels::{Channel, ChannelContext, Channels, Endpoint, JoinResult, Reply, Socket},
    wire::Utf8Bytes,
};
use serde_json::value::RawValue;

/// Fan-out server options.
#[derive(Debug, Parser)]
#[command(about = "herald fan-out server: messages are published to the sender's topic")]
struct Options {
    /// Port to listen on.
    #[arg(long, default_value_t = 9002)]
    port: u16,
    /// Event loops (default: the available cores).
    #[arg(long)]
    loops: Option<usize>,
    /// Do not pin loops to cores.
    #[arg(long)]
    no_pin: bool,
    /// Serve Phoenix V2 channels instead of plain WebSocket pub/sub.
    #[arg(long)]
    phoenix: bool,
}

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

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let mut builder = Server::builder()
        .bind(([127, 0, 0, 1], options.port).into())
        .pin_cores(!options.no_pin);
    if let Some(loops) = options.loops {
        builder = builder.loops(loops);
    }
    if options.phoenix {
        let engine = Channels::new()
            .phoenix(
                "/socket/websocket",
                Endpoint::new(Anyone).channel("*", Relay),
            )
            .start(builder)?;
        println!(
            "herald fan-out (Phoenix channels) on ws://{}/socket/websocket",
            engine.local_addr()
        );
        engine.join();
        return Ok(());
    }
    let server = builder.start(Fanout)?;
    println!(
        "herald fan-out server listening on ws://{}",
        server.local_addr()
    );
    server.join();
    Ok(())
}
