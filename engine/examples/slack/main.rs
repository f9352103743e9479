//! The Slack clone of the seeds (`003_*`), on herald's channels, with a
//! page that uses the unmodified phoenix JavaScript client:
//!
//! - `room:NAME`: a room; members post with `new_msg`, rebroadcast to the
//!   room. A message naming `@someone` also goes to `user:someone` as
//!   `room:mention`.
//! - `user:NAME`: each user's own channel (only that user may join it).
//!   It subscribes on the server side to the user's rooms, so a message in
//!   a room the user is not looking at comes to `handle_info` and becomes an
//!   `unread` push (the badge), while the client is also joined to the
//!   room it is looking at. It intercepts `room:join` (subscribe to one
//!   more room), `room:leave` and `room:mention` on its topic.
//! - `system:lobby`: who is online, with Presence (the page reads it with
//!   phoenix.js's own `Presence` class).
//!
//! ```sh
//! cargo run --release -p herald --example slack -- --port 4000
//! # then open http://127.0.0.1:4000/?name=ada and /?name=bob
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use herald::{
    Broadcast, Reject, Request, Server,
    channels::{Channel, ChannelContext, Channels, Endpoint, JoinResult, Reply, Socket},
};
use serde_json::{Value, json, value::RawValue};

/// The rooms every user belongs to (a real app keeps memberships in its
/// database).
const ROOMS: [&str; 3] = ["general", "random", "dev"];

/// Slack example options.
#[derive(Debug, Parser)]
#[command(about = "herald Slack clone example (Phoenix channels, Presence)")]
struct Options {
    /// Port to listen on.
    #[arg(long, default_value_t = 4000)]
    port: u16,
}

/// Anyone may connect under the name they give (`?name=`).
struct UserSocket;

struct User {
    name: String,
}

impl Socket for UserSocket {
    type Assigns = User;

    fn connect(&self, request: &Request) -> Result<User, Reject> {
        let name: String = request
            .query_param("name")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_alphanumeric())
            .take(32)
            .collect();
        if name.is_empty() {
            return Err(Reject::unauthorized());
        }
        Ok(User { name })
    }
}

/// A room: messages to everyone in it; mentions to the mentioned.
struct Room;

impl Channel<User> for Room {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        let room = ctx.topic().trim_start_matches("room:");
        if !ROOMS.contains(&room) {
            return Err(Reply::reason("no such room"));
        }
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        event: &str,
        payload: &RawValue,
    ) {
        if event != "new_msg" {
            return;
        }
        let body: Value = serde_json::from_str(payload.get()).unwrap_or_default();
        let text = body["body"].as_str().unwrap_or_default().chars().take(500);
        let text: String = text.collect();
        let user = ctx.assigns().name.clone();
        let room = ctx.topic().trim_start_matches("room:").to_owned();
        let message = json!({ "user": user, "body": text, "room": room });
        ctx.broadcast("new_msg", &message);
        for word in text.split_whitespace() {
            if let Some(mentioned) = word.strip_prefix('@') {
                ctx.broadcast_topic(&format!("user:{mentioned}"), "room:mention", &message);
            }
        }
    }
}

/// What a user channel remembers: the room its client is looking at.
#[derive(Default)]
struct Viewing(String);

/// A user's own channel: unread badges and mentions.
struct UserChannel;

impl Channel<User> for UserChannel {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        let own = format!("user:{}", ctx.assigns().name);
        if ctx.topic() != own {
            return Err(Reply::reason("unauthorized"));
        }
        for room in ROOMS {
            ctx.subscribe(&format!("room:{room}"));
        }
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        event: &str,
        payload: &RawValue,
    ) {
        if event == "view" {
            let payload: Value = serde_json::from_str(payload.get()).unwrap_or_default();
            let room = payload["room"].as_str().unwrap_or_default().to_owned();
            ctx.channel_assigns::<Viewing>().0 = room;
        }
    }

    fn intercepts(&self) -> &[&str] {
        &["room:join", "room:leave", "room:mention"]
    }

    fn handle_out(&self, ctx: &mut ChannelContext<'_, '_, User>, event: &str, payload: &RawValue) {
        let payload_value: Value = serde_json::from_str(payload.get()).unwrap_or_default();
        let room = payload_value["room"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match event {
            "room:join" => {
                ctx.subscribe(&format!("room:{room}"));
            }
            "room:leave" => ctx.unsubscribe(&format!("room:{room}")),
            "room:mention" => ctx.push("mention", payload),
            _ => {}
        }
    }

    fn handle_info(&self, ctx: &mut ChannelContext<'_, '_, User>, broadcast: &Broadcast) {
        if broadcast.event() != Some("new_msg") {
            return;
        }
        let room = broadcast.topic().trim_start_matches("room:").to_owned();
        if ctx.channel_assigns::<Viewing>().0 != room {
            ctx.push("unread", &json!({ "room": room }));
        }
    }
}

/// Who is online.
struct System;

impl Channel<User> for System {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        let online_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let name = ctx.assigns().name.clone();
        ctx.track(&name, &json!({ "online_at": online_at }))
            .map_err(|err| Reply::reason(&err.to_string()))?;
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        _ctx: &mut ChannelContext<'_, '_, User>,
        _event: &str,
        _payload: &RawValue,
    ) {
    }
}

fn main() -> std::io::Result<()> {
    let options = Options::parse();
    let builder = Server::builder()
        .bind(([127, 0, 0, 1], options.port).into())
        .static_file("/", "text/html; charset=utf-8", include_str!("index.html"))
        // The unmodified phoenix client (MIT), vendored for the demo pages.
        .static_file(
            "/phoenix.mjs",
            "text/javascript",
            include_str!("../../assets/phoenix.mjs"),
        );
    let endpoint = Endpoint::new(UserSocket)
        .channel("room:*", Room)
        .channel("user:*", UserChannel)
        .channel("system:*", System);
    let engine = Channels::new()
        .phoenix("/socket/websocket", endpoint)
        .start(builder)?;
    println!(
        "herald slack: open http://{}/?name=ada",
        engine.local_addr()
    );
    engine.join();
    Ok(())
}
