//! A plain WebSocket fan-out server: every connection subscribes to a topic
//! (`?topic=`, default `all`; `?subscribe=0` to only publish), and every text
//! message a connection sends is published to its topic, encoded once for
//! all subscribers. The `herald-bench fanout` scenario drives it.
//!
//! ```sh
//! cargo run --release -p herald --example fanout -- --port 9002 --loops 1
//! ```

use std::sync::Arc;

use clap::Parser;
use herald::{Accept, Conn, Handler, Reject, Request, Server, wire::Utf8Bytes};

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
    let server = builder.start(Fanout)?;
    println!(
        "herald fan-out server listening on ws://{}",
        server.local_addr()
    );
    server.join();
    Ok(())
}
