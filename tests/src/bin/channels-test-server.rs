//! A channels server for the JavaScript client tests (`tests/js`): a
//! Phoenix V2 endpoint at `/socket/websocket` whose `room:*` channel refuses
//! `room:forbidden`, answers `ping` pushes with `{"pong": true}`, and
//! rebroadcasts `new_msg`, and whose `lobby:*` channel tracks each joining
//! user's presence (the `user` connect param; meta `{"device": ...}` from
//! the join payload; a `status` push updates it, a `hide` push untracks).
//! Prints `listening on ADDR` once it accepts.
//!
//! Usage: `channels-test-server [--port PORT] [--broker URL]
//! [--presence-down-ms MS]`: port 0 (the default) is any free port; a
//! `redis://` or `nats://` broker joins it to other nodes (presence
//! included).

use std::{io::Write, time::Duration};

use herald::{
    Reject, Request, Server,
    channels::{Channel, ChannelContext, Channels, Endpoint, JoinResult, Reply, Socket},
    cluster::{Broker, Cluster},
    protocol::phoenix::Status,
};
use serde_json::{Value, json, value::RawValue};

struct TestSocket;

impl Socket for TestSocket {
    type Assigns = String;

    fn connect(&self, request: &Request) -> Result<String, Reject> {
        match request.query_param("token").as_deref() {
            Some("secret") => Ok(request.query_param("user").unwrap_or_default().into_owned()),
            _ => Err(Reject::unauthorized()),
        }
    }
}

struct Room;

impl Channel<String> for Room {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        _payload: &RawValue,
    ) -> JoinResult {
        if ctx.topic() == "room:forbidden" {
            return Err(Reply::reason("unauthorized"));
        }
        Ok(Reply::json(&json!({ "user": ctx.assigns() })).unwrap_or_else(|_| Reply::empty()))
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        event: &str,
        payload: &RawValue,
    ) {
        match event {
            "ping" => ctx.reply(
                Status::Ok,
                &Reply::json(&json!({ "pong": true })).unwrap_or_else(|_| Reply::empty()),
            ),
            "new_msg" => ctx.rebroadcast(event, payload),
            _ => ctx.reply(Status::Error, &Reply::reason("unknown event")),
        }
    }
}

/// Phoenix.Presence on every topic it routes.
struct Lobby;

impl Channel<String> for Lobby {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        payload: &RawValue,
    ) -> JoinResult {
        let payload: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        let user = ctx.assigns().clone();
        let meta = json!({ "device": payload["device"], "status": "online" });
        ctx.track(&user, &meta)
            .map_err(|err| Reply::reason(&err.to_string()))?;
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        event: &str,
        payload: &RawValue,
    ) {
        let user = ctx.assigns().clone();
        match event {
            "status" => {
                let payload: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                let meta = json!({ "device": payload["device"], "status": payload["status"] });
                let updated = ctx.update_presence(&user, &meta).unwrap_or(false);
                ctx.reply(
                    Status::Ok,
                    &Reply::json(&json!({ "updated": updated })).unwrap_or_else(|_| Reply::empty()),
                );
            }
            "hide" => {
                ctx.untrack(&user);
                ctx.reply(Status::Ok, &Reply::empty());
            }
            _ => ctx.reply(Status::Error, &Reply::reason("unknown event")),
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 0u16;
    let mut broker = Broker::Memory;
    let mut down_after = Duration::from_secs(30);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            "--broker" => {
                let url = args.next().unwrap_or_default();
                broker = if url.starts_with("nats://") {
                    Broker::Nats { url }
                } else {
                    Broker::Redis { url }
                };
            }
            "--presence-down-ms" => {
                let ms = args.next().and_then(|ms| ms.parse().ok()).unwrap_or(30_000);
                down_after = Duration::from_millis(ms);
            }
            _ => {}
        }
    }
    let cluster = Cluster::new(broker);
    let engine = Channels::new()
        .presence_down_after(down_after)
        .phoenix(
            "/socket/websocket",
            Endpoint::new(TestSocket)
                .channel("room:*", Room)
                .channel("lobby:*", Lobby),
        )
        .start(
            cluster.attach(
                Server::builder()
                    .bind(([127, 0, 0, 1], port).into())
                    .loops(2)
                    .pin_cores(false),
            ),
        )?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", engine.local_addr())?;
    stdout.flush()?;
    engine.join();
    Ok(())
}
