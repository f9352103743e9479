//! The chat room of the seeds, on herald's channels: a Phoenix V2 endpoint
//! at `/socket/websocket` with a `room:*` channel that announces
//! `"<name> has joined the chat!"`, rebroadcasts messages, and announces
//! `"<name> has left the chat!"`; and a small page at `/` that uses the
//! unmodified phoenix JavaScript client.
//!
//! ```sh
//! npm ci --prefix tests/js     # fetches the phoenix client the page loads
//! cargo run --release -p herald --example chat -- --port 4000
//! # then open http://127.0.0.1:4000/ in two browser tabs
//! ```

use clap::Parser;
use herald::{
    Reject, Request, Server,
    channels::{
        Channel, ChannelContext, Channels, Endpoint, JoinResult, LeaveReason, Reply, Socket,
    },
};
use serde_json::{json, value::RawValue};

/// Chat example options.
#[derive(Debug, Parser)]
#[command(about = "herald chat room example (Phoenix channels)")]
struct Options {
    /// Port to listen on.
    #[arg(long, default_value_t = 4000)]
    port: u16,
}

/// Everyone may connect; the name comes from the `name` parameter.
struct ChatSocket;

struct Member {
    name: String,
}

impl Socket for ChatSocket {
    type Assigns = Member;

    fn connect(&self, request: &Request) -> Result<Member, Reject> {
        let name = request
            .query_param("name")
            .filter(|name| !name.trim().is_empty())
            .map_or_else(
                || "anonymous".to_owned(),
                |name| name.chars().take(32).collect(),
            );
        Ok(Member { name })
    }
}

struct ChatRoom;

impl Channel<Member> for ChatRoom {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, Member>,
        _payload: &RawValue,
    ) -> JoinResult {
        let notice = format!("{} has joined the chat!", ctx.assigns().name);
        ctx.broadcast_from("notice", &json!({ "body": notice }));
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, Member>,
        event: &str,
        payload: &RawValue,
    ) {
        if event == "new_msg" {
            // Here a real application would store the message.
            ctx.rebroadcast(event, payload);
        }
    }

    fn handle_leave(&self, ctx: &mut ChannelContext<'_, '_, Member>, _reason: LeaveReason) {
        let notice = format!("{} has left the chat!", ctx.assigns().name);
        ctx.broadcast_from("notice", &json!({ "body": notice }));
    }
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let builder = Server::builder()
        .bind(([127, 0, 0, 1], options.port).into())
        .static_file(
            "/",
            "text/html; charset=utf-8",
            include_str!("chat/index.html"),
        )
        // The unmodified phoenix client (MIT), vendored for the demo pages.
        .static_file(
            "/phoenix.mjs",
            "text/javascript",
            include_str!("../assets/phoenix.mjs"),
        );
    let engine = Channels::new()
        .phoenix(
            "/socket/websocket",
            Endpoint::new(ChatSocket).channel("room:*", ChatRoom),
        )
        .start(builder)?;
    println!("herald chat: open http://{}/", engine.local_addr());
    engine.join();
    Ok(())
}
