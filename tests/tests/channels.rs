//! The channels layer over real sockets, speaking Phoenix V2 JSON (a small
//! tungstenite client) and Amber's protocol.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use herald::{
    Broadcast, Reject, Request, Server, ServerBuilder,
    channels::{
        Channel, ChannelContext, Channels, ConnectAnswer, Endpoint, Engine, JoinLater, JoinResult,
        LeaveReason, Reply, Socket,
    },
    protocol::phoenix::Status,
};
use herald_tests::{phoenix::Client, server::wait_until};
use serde_json::{Value, json, value::RawValue};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);
const PATH: &str = "/socket/websocket";

struct UserSocket;

struct User {
    name: String,
}

impl Socket for UserSocket {
    type Assigns = User;

    fn connect(&self, request: &Request) -> Result<User, Reject> {
        if request.query_param("token").as_deref() != Some("secret") {
            return Err(Reject::unauthorized());
        }
        let name = request.query_param("user").unwrap_or_default().into_owned();
        Ok(User { name })
    }

    fn id(&self, assigns: &User) -> Option<String> {
        Some(format!("user_socket:{}", assigns.name))
    }
}

#[derive(Default)]
struct Log {
    leaves: Mutex<Vec<(String, LeaveReason)>>,
}

struct Room {
    log: Arc<Log>,
}

impl Channel<User> for Room {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        if ctx.topic() == "room:forbidden" {
            return Err(Reply::reason("unauthorized"));
        }
        let user = ctx.assigns().name.clone();
        ctx.broadcast_from("user_joined", &json!({ "user": user }));
        Ok(Reply::json(&json!({ "welcome": ctx.topic() })).unwrap())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        event: &str,
        payload: &RawValue,
    ) {
        match event {
            "new_msg" => ctx.rebroadcast(event, payload),
            "shout" => ctx.broadcast_from(event, payload),
            "ping" => ctx.reply(Status::Ok, &Reply::json(&json!({ "pong": true })).unwrap()),
            "whisper" => ctx.push("whispered", payload),
            "crash" => panic!("the channel failed"),
            "burst" => burst(ctx, payload),
            _ => ctx.reply(Status::Error, &Reply::reason("unknown event")),
        }
    }

    fn handle_binary(&self, ctx: &mut ChannelContext<'_, '_, User>, event: &str, data: &[u8]) {
        match event {
            "echo_bin" => ctx.reply_binary(Status::Ok, data),
            _ => ctx.broadcast_binary(event, data, true),
        }
    }

    fn handle_leave(&self, ctx: &mut ChannelContext<'_, '_, User>, reason: LeaveReason) {
        self.log
            .leaves
            .lock()
            .unwrap()
            .push((ctx.topic().to_owned(), reason));
    }

    fn intercepts(&self) -> &[&str] {
        &["filtered"]
    }

    fn handle_out(&self, ctx: &mut ChannelContext<'_, '_, User>, event: &str, payload: &RawValue) {
        let value: Value = serde_json::from_str(payload.get()).unwrap();
        if value["secret_for"] != json!(ctx.assigns().name) && value["secret_for"] != Value::Null {
            return; // not for this subscriber
        }
        ctx.push(event, payload);
    }
}

/// Broadcasts `n` messages in one callback, so that they reach the loops in
/// one turn: `i % 3 == 0` to everyone, `1` to everyone but the sender, and,
/// if `intercepted`, `2` as the intercepted event `filtered` (for bob only),
/// else to everyone.
fn burst(ctx: &mut ChannelContext<'_, '_, User>, payload: &RawValue) {
    let payload: Value = serde_json::from_str(payload.get()).unwrap();
    let n = payload["n"].as_u64().unwrap();
    let intercepted = payload["intercepted"].as_bool().unwrap();
    for i in 0..n {
        match i % 3 {
            1 => ctx.broadcast_from("burst", &json!({ "i": i })),
            2 if intercepted => ctx.broadcast("filtered", &json!({ "i": i, "secret_for": "bob" })),
            _ => ctx.broadcast("burst", &json!({ "i": i })),
        }
    }
}

/// What the seed's channels do besides replying: timers, background
/// work, later replies, their own assigns, other topics, stopping.
struct Tools {
    log: Arc<Log>,
}

/// A timer's message.
struct Tick(u64);
/// A background job's answer.
struct JobDone(u64);

impl Channel<User> for Tools {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        // Phoenix's `send(self(), :after_join)`.
        ctx.send_after(Duration::ZERO, Tick(0));
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        event: &str,
        _payload: &RawValue,
    ) {
        match event {
            "later" => ctx.send_after(Duration::from_millis(50), Tick(1)),
            "background" => {
                let channel = ctx.handle();
                std::thread::spawn(move || channel.send(JobDone(7)).unwrap());
            }
            "slow_reply" => {
                let reply = ctx.reply_later().expect("a push with a ref");
                std::thread::spawn(move || {
                    let response = Reply::json(&json!({ "done": true })).unwrap();
                    reply.reply(Status::Ok, &response).unwrap();
                });
            }
            "count" => {
                let count = ctx.channel_assigns::<u64>();
                *count += 1;
                let count = *count;
                ctx.reply(
                    Status::Ok,
                    &Reply::json(&json!({ "count": count })).unwrap(),
                );
            }
            "announce" => ctx.broadcast_topic("room:news", "announced", &json!({ "by": "tools" })),
            "stop" => ctx.stop(),
            "hang_up" => ctx.close_socket(),
            "crash" => panic!("the channel failed"),
            _ => {}
        }
    }

    fn handle_app_info(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        message: &(dyn std::any::Any + Send + Sync),
    ) {
        if let Some(Tick(n)) = message.downcast_ref::<Tick>() {
            ctx.push("tick", &json!({ "n": n }));
        } else if let Some(JobDone(n)) = message.downcast_ref::<JobDone>() {
            ctx.push("job", &json!({ "n": n }));
        }
    }

    fn handle_leave(&self, ctx: &mut ChannelContext<'_, '_, User>, reason: LeaveReason) {
        self.log
            .leaves
            .lock()
            .unwrap()
            .push((ctx.topic().to_owned(), reason));
    }
}

/// Tracks each joining user's presence, keyed by name.
struct Lobby;

impl Channel<User> for Lobby {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        let name = ctx.assigns().name.clone();
        ctx.track(&name, &json!({ "via": "test" })).unwrap();
        ctx.push("welcome", &json!({}));
        Ok(Reply::json(&json!({ "joined": true })).unwrap())
    }

    fn handle_message(
        &self,
        _ctx: &mut ChannelContext<'_, '_, User>,
        _event: &str,
        _payload: &RawValue,
    ) {
    }
}

/// Subscribes on the server side to a notifications topic.
struct Notifications;

impl Channel<User> for Notifications {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        _payload: &RawValue,
    ) -> JoinResult {
        ctx.subscribe("notifications:global");
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, User>,
        event: &str,
        payload: &RawValue,
    ) {
        let payload: Value = serde_json::from_str(payload.get()).unwrap();
        let topic = payload["topic"].as_str().unwrap_or_default();
        let done = match event {
            "watch" => ctx.subscribe(topic),
            "unwatch" => {
                ctx.unsubscribe(topic);
                true
            }
            _ => false,
        };
        ctx.reply(Status::Ok, &Reply::json(&json!({ "done": done })).unwrap());
    }

    fn handle_info(&self, ctx: &mut ChannelContext<'_, '_, User>, broadcast: &Broadcast) {
        let payload = broadcast
            .payload()
            .map_or(Value::Null, |p| serde_json::from_str(p.get()).unwrap());
        ctx.push(
            "notify",
            &json!({ "via": broadcast.topic(), "payload": payload }),
        );
    }
}

fn start(builder: ServerBuilder, max_channels: usize) -> (Engine, Arc<Log>) {
    let log = Arc::new(Log::default());
    let endpoint = Endpoint::new(UserSocket)
        .channel(
            "room:*",
            Room {
                log: Arc::clone(&log),
            },
        )
        .channel("user:*", Notifications)
        .channel("lobby:*", Lobby)
        .channel(
            "tools:*",
            Tools {
                log: Arc::clone(&log),
            },
        );
    let amber_endpoint = Endpoint::new(AnyoneSocket).channel("chat_room:*", AmberRoom);
    let engine = Channels::new()
        .phoenix(PATH, endpoint)
        .amber("/amber", amber_endpoint)
        .max_channels(max_channels)
        .start(builder)
        .expect("engine starts");
    (engine, log)
}

fn builder() -> ServerBuilder {
    Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .loops(2)
        .pin_cores(false)
        .shutdown_timeout(Duration::from_millis(300))
}

fn client(engine: &Engine, user: &str) -> Client {
    Client::connect(
        engine.local_addr(),
        PATH,
        &format!("token=secret&user={user}"),
    )
    .expect("connect")
}

#[test]
fn connect_is_authorized_by_the_socket() {
    let (engine, _) = start(builder(), 100);
    match Client::connect(engine.local_addr(), PATH, "token=wrong") {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let mut ok = client(&engine, "ada");
    ok.sync();
    engine.shutdown();
}

#[test]
fn joins_are_answered_ok_error_or_unmatched() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let (_, reply) = ada.join("room:lobby", json!({}));
    assert_eq!(
        reply,
        json!({"status": "ok", "response": {"welcome": "room:lobby"}})
    );
    let (_, reply) = ada.join("room:forbidden", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );
    let (_, reply) = ada.join("nowhere:1", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    // A refused join never kills the socket.
    ada.sync();
    engine.shutdown();
}

#[test]
fn pushes_get_replies_and_pushes_to_one_client() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let (join_ref, _) = ada.join("room:lobby", json!({}));
    let msg_ref = ada.push(&join_ref, "room:lobby", "ping", json!({}));
    let (reply, _) = ada.reply_to(&msg_ref);
    assert_eq!(reply, json!({"status": "ok", "response": {"pong": true}}));
    ada.push(&join_ref, "room:lobby", "whisper", json!({"hi": 1}));
    assert_eq!(
        ada.recv(),
        json!([join_ref, null, "room:lobby", "whispered", {"hi": 1}])
    );
    // A push to a topic not joined gets the error reply.
    let msg_ref = ada.push("99", "room:other", "new_msg", json!({}));
    let (reply, _) = ada.reply_to(&msg_ref);
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    engine.shutdown();
}

#[test]
fn rebroadcast_reaches_everyone_and_broadcast_from_skips_the_sender() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let mut bob = client(&engine, "bob");
    let (ada_ref, _) = ada.join("room:lobby", json!({}));
    let (_, _) = bob.join("room:lobby", json!({}));
    // Bob's join was announced to Ada only (broadcast_from).
    assert_eq!(
        ada.recv(),
        json!([null, null, "room:lobby", "user_joined", {"user": "bob"}])
    );
    ada.push(&ada_ref, "room:lobby", "new_msg", json!({"body": "hello"}));
    let expected = json!([null, null, "room:lobby", "new_msg", {"body": "hello"}]);
    assert_eq!(ada.recv(), expected);
    assert_eq!(bob.recv(), expected);
    ada.push(&ada_ref, "room:lobby", "shout", json!({"loud": true}));
    assert_eq!(
        bob.recv(),
        json!([null, null, "room:lobby", "shout", {"loud": true}])
    );
    assert!(
        ada.sync().iter().all(|m| m[3] != "shout"),
        "the sender got its own broadcast_from"
    );
    assert!(bob.sync().is_empty());
    engine.shutdown();
}

#[test]
fn the_engine_broadcasts_from_anywhere_to_every_loop() {
    let (engine, _) = start(builder(), 100);
    let handle = engine.handle();
    let mut clients: Vec<Client> = (0..8).map(|i| client(&engine, &format!("u{i}"))).collect();
    for c in &mut clients {
        c.join("room:news", json!({}));
    }
    for c in &mut clients {
        c.sync(); // drain the user_joined notices
    }
    assert_eq!(handle.subscriber_count("room:news"), 8);
    let sent = std::thread::spawn(move || {
        handle
            .broadcast("room:news", "headline", &json!({"n": 1}))
            .unwrap()
    });
    assert!(sent.join().unwrap() >= 1);
    for c in &mut clients {
        assert_eq!(
            c.recv(),
            json!([null, null, "room:news", "headline", {"n": 1}])
        );
    }
    engine.shutdown();
}

#[test]
fn leave_and_rejoin_follow_phoenix() {
    let (engine, log) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let (first, _) = ada.join("room:a", json!({}));
    // A second join of the same topic closes the old one with ITS join ref.
    let second = ada.next_ref();
    ada.send(
        Some(&second),
        Some(&second),
        "room:a",
        "phx_join",
        json!({}),
    );
    let (reply, before) = ada.reply_to(&second);
    assert_eq!(
        before,
        vec![json!([first, first, "room:a", "phx_close", {}])]
    );
    assert_eq!(reply["status"], "ok");
    // Leave: ok reply, then broadcasts stop.
    let leave = ada.push(&second, "room:a", "phx_leave", json!({}));
    let (reply, _) = ada.reply_to(&leave);
    assert_eq!(reply["status"], "ok");
    assert_eq!(engine.handle().subscriber_count("room:a"), 0);
    engine
        .handle()
        .broadcast("room:a", "late", &json!({}))
        .unwrap();
    assert!(ada.sync().is_empty());
    assert_eq!(
        log.leaves.lock().unwrap().as_slice(),
        [
            ("room:a".to_owned(), LeaveReason::Rejoined),
            ("room:a".to_owned(), LeaveReason::Left)
        ]
    );
    drop(ada);
    engine.shutdown();
}

#[test]
fn channels_per_connection_are_limited() {
    let (engine, _) = start(builder(), 2);
    let mut ada = client(&engine, "ada");
    assert_eq!(ada.join("room:1", json!({})).1["status"], "ok");
    assert_eq!(ada.join("room:2", json!({})).1["status"], "ok");
    let (_, reply) = ada.join("room:3", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "too many channels joined"}})
    );
    engine.shutdown();
}

#[test]
fn a_crashing_channel_gets_phx_error_and_the_connection_lives() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let (join_ref, _) = ada.join("room:boom", json!({}));
    let (other_ref, _) = ada.join("room:calm", json!({}));
    ada.push(&join_ref, "room:boom", "crash", json!({}));
    assert_eq!(
        ada.recv(),
        json!([join_ref, join_ref, "room:boom", "phx_error", {"reason": "channel_crash"}])
    );
    assert_eq!(engine.handle().subscriber_count("room:boom"), 0);
    // The other channel and the socket carry on.
    ada.push(&other_ref, "room:calm", "whisper", json!(1));
    assert_eq!(ada.recv()[3], "whispered");
    engine.shutdown();
}

#[test]
fn malformed_messages_are_dropped_without_closing_the_socket() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    for junk in ["not json", "{}", "[1,2]", r#"["1","1","room:x"]"#] {
        ada.ws.send(Message::text(junk)).unwrap();
    }
    ada.sync();
    engine.shutdown();
}

#[test]
fn intercepted_events_are_filtered_per_subscriber() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let mut bob = client(&engine, "bob");
    ada.join("room:x", json!({}));
    let (bob_ref, _) = bob.join("room:x", json!({}));
    ada.sync(); // Bob's user_joined notice
    engine
        .handle()
        .broadcast("room:x", "filtered", &json!({"secret_for": "bob"}))
        .unwrap();
    // handle_out pushes it to Bob (as a push on his join), not to Ada.
    assert_eq!(
        bob.recv(),
        json!([bob_ref, null, "room:x", "filtered", {"secret_for": "bob"}])
    );
    assert!(ada.sync().is_empty(), "ada must not see bob's secret");
    // Events not intercepted go out as encoded once.
    engine
        .handle()
        .broadcast("room:x", "plain", &json!(1))
        .unwrap();
    assert_eq!(ada.recv(), json!([null, null, "room:x", "plain", 1]));
    assert_eq!(bob.recv(), json!([null, null, "room:x", "plain", 1]));
    engine.shutdown();
}

#[test]
fn server_side_subscriptions_reach_handle_info() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let (join_ref, reply) = ada.join("user:ada", json!({}));
    assert_eq!(reply["status"], "ok");
    engine
        .handle()
        .broadcast(
            "notifications:global",
            "maintenance",
            &json!({"at": "noon"}),
        )
        .unwrap();
    assert_eq!(
        ada.recv(),
        json!([join_ref, null, "user:ada", "notify", {"via": "notifications:global", "payload": {"at": "noon"}}])
    );
    engine.shutdown();
}

/// Pushes `event` with `payload` and checks the reply's response.
fn push_ok(client: &mut Client, join_ref: &str, topic: &str, event: &str, payload: Value) -> Value {
    let msg_ref = client.push(join_ref, topic, event, payload);
    let (reply, _) = client.reply_to(&msg_ref);
    assert_eq!(reply["status"], "ok", "{reply}");
    reply["response"].clone()
}

/// What a client received until a heartbeat round trip, sorted (the order
/// between a channel's `handle_info` push and the client's own frame of
/// one broadcast is not defined).
fn received_sorted(client: &mut Client) -> Vec<String> {
    let mut received: Vec<String> = client.sync().iter().map(Value::to_string).collect();
    received.sort();
    received
}

#[test]
fn a_clients_join_and_server_side_subscriptions_to_one_topic_compose() {
    let (engine, _) = start(builder(), 100);
    let handle = engine.handle();
    let mut ada = client(&engine, "ada");
    let (user_ref, _) = ada.join("user:ada", json!({}));
    let (room_ref, _) = ada.join("room:7", json!({}));
    ada.sync();
    // A server-side subscription beside the client's join of the topic,
    // and a second channel's.
    let (other_ref, _) = ada.join("user:ada-work", json!({}));
    let watch = json!({ "topic": "room:7" });
    assert_eq!(
        push_ok(&mut ada, &user_ref, "user:ada", "watch", watch.clone()),
        json!({"done": true})
    );
    assert_eq!(
        push_ok(&mut ada, &user_ref, "user:ada", "watch", watch.clone()),
        json!({"done": false})
    );
    push_ok(
        &mut ada,
        &other_ref,
        "user:ada-work",
        "watch",
        watch.clone(),
    );
    assert_eq!(handle.subscriber_count("room:7"), 1, "one connection");
    let posted = json!({"body": "hi"});
    let frame = json!([null, null, "room:7", "new_msg", posted]);
    let notify = |join_ref: &str, topic: &str| json!([join_ref, null, topic, "notify", {"via": "room:7", "payload": posted}]);
    let sorted = |values: &[Value]| {
        let mut values: Vec<String> = values.iter().map(Value::to_string).collect();
        values.sort();
        values
    };
    handle.broadcast("room:7", "new_msg", &posted).unwrap();
    assert_eq!(
        received_sorted(&mut ada),
        sorted(&[
            frame.clone(),
            notify(&user_ref, "user:ada"),
            notify(&other_ref, "user:ada-work")
        ])
    );
    // Leaving one channel ends its subscription only.
    ada.send(
        Some(&other_ref),
        Some("90"),
        "user:ada-work",
        "phx_leave",
        json!({}),
    );
    ada.reply_to("90");
    handle.broadcast("room:7", "new_msg", &posted).unwrap();
    assert_eq!(
        received_sorted(&mut ada),
        sorted(&[frame.clone(), notify(&user_ref, "user:ada")])
    );
    // Leaving the room keeps the user channel's subscription...
    ada.send(
        Some(&room_ref),
        Some("91"),
        "room:7",
        "phx_leave",
        json!({}),
    );
    ada.reply_to("91");
    handle.broadcast("room:7", "new_msg", &posted).unwrap();
    assert_eq!(
        received_sorted(&mut ada),
        sorted(&[notify(&user_ref, "user:ada")])
    );
    // ...and a join after the server-side subscription keeps both.
    let (room_ref, _) = ada.join("room:7", json!({}));
    ada.sync();
    handle.broadcast("room:7", "new_msg", &posted).unwrap();
    assert_eq!(
        received_sorted(&mut ada),
        sorted(&[frame.clone(), notify(&user_ref, "user:ada")])
    );
    // Unsubscribing leaves the client's join.
    push_ok(&mut ada, &user_ref, "user:ada", "unwatch", watch);
    handle.broadcast("room:7", "new_msg", &posted).unwrap();
    assert_eq!(received_sorted(&mut ada), sorted(&[frame]));
    ada.send(
        Some(&room_ref),
        Some("92"),
        "room:7",
        "phx_leave",
        json!({}),
    );
    ada.reply_to("92");
    assert!(wait_until(WAIT, || handle.subscriber_count("room:7") == 0));
    engine.shutdown();
}

#[test]
fn presence_state_follows_the_join_reply_and_diffs_coalesce() {
    let (engine, _) = start(builder(), 100);
    let handle = engine.handle();
    let mut ada = client(&engine, "ada");
    let join_ref = ada.next_ref();
    ada.send(
        Some(&join_ref),
        Some(&join_ref),
        "lobby:a",
        "phx_join",
        json!({}),
    );
    // The reply, then the state (with ada), then what the join pushed.
    let reply = ada.recv();
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["response"], json!({"joined": true}));
    // The state is the list as of the last diff: empty on a new topic.
    let state = ada.recv();
    assert_eq!(state[0], json!(join_ref));
    assert_eq!(state[3], "presence_state");
    assert_eq!(state[4], json!({}));
    assert_eq!(ada.recv()[3], "welcome");
    // Ada's own join, as a diff.
    let diff = ada.recv();
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["joins"]["ada"]["metas"][0]["via"], "test");
    assert!(diff[4]["joins"]["ada"]["metas"][0]["phx_ref"].is_string());
    // A later joiner's state holds ada.
    let mut late = client(&engine, "late");
    let late_ref = late.next_ref();
    late.send(
        Some(&late_ref),
        Some(&late_ref),
        "lobby:a",
        "phx_join",
        json!({}),
    );
    assert_eq!(late.recv()[3], "phx_reply");
    let state = late.recv();
    assert_eq!(state[3], "presence_state");
    assert_eq!(state[4]["ada"]["metas"][0]["via"], "test");
    assert_eq!(
        ada.recv()[4]["joins"].as_object().unwrap().len(),
        1,
        "late's join"
    );
    // Five joins within one window reach ada as one or two diffs.
    // Connected first, then all joins sent at once.
    let mut others: Vec<_> = (0..5).map(|i| client(&engine, &format!("u{i}"))).collect();
    for other in &mut others {
        other.send(Some("1"), Some("1"), "lobby:a", "phx_join", json!({}));
    }
    let mut seen = 0;
    let mut diffs = 0;
    while seen < 5 {
        let diff = ada.recv();
        assert_eq!(diff[3], "presence_diff");
        seen += diff[4]["joins"].as_object().unwrap().len();
        diffs += 1;
    }
    assert!(diffs <= 2, "{diffs} diffs for 5 joins");
    assert_eq!(handle.presence_count("lobby:a"), 7);
    drop(others);
    drop(late);
    assert!(wait_until(WAIT, || handle.presence_count("lobby:a") == 1));
    engine.shutdown();
}

#[test]
fn channels_keep_timers_background_work_later_replies_and_their_own_assigns() {
    let (engine, log) = start(builder(), 100);
    let handle = engine.handle();
    let mut ada = client(&engine, "ada");
    let (tools_ref, _) = ada.join("tools:1", json!({}));
    // The join's `after_join` message, after the reply.
    assert_eq!(ada.recv_event("tick")[4], json!({"n": 0}));
    ada.push(&tools_ref, "tools:1", "later", json!({}));
    assert_eq!(ada.recv_event("tick")[4], json!({"n": 1}));
    ada.push(&tools_ref, "tools:1", "background", json!({}));
    assert_eq!(ada.recv_event("job")[4], json!({"n": 7}));
    let slow = ada.push(&tools_ref, "tools:1", "slow_reply", json!({}));
    let (reply, _) = ada.reply_to(&slow);
    assert_eq!(reply, json!({"status": "ok", "response": {"done": true}}));
    // From any thread, by socket id and topic.
    assert_eq!(
        handle.send_info("user_socket:ada", "tools:1", JobDone(9)),
        2
    );
    assert_eq!(ada.recv_event("job")[4], json!({"n": 9}));
    // Per-channel assigns: two channels, two counts; gone with the channel.
    let (other_ref, _) = ada.join("tools:2", json!({}));
    for (join_ref, topic, expected) in [
        (&tools_ref, "tools:1", 1),
        (&tools_ref, "tools:1", 2),
        (&other_ref, "tools:2", 1),
    ] {
        let msg_ref = ada.push(join_ref, topic, "count", json!({}));
        let (reply, _) = ada.reply_to(&msg_ref);
        assert_eq!(reply["response"]["count"], expected, "{topic}");
    }
    // Another topic.
    let mut bob = client(&engine, "bob");
    bob.join("room:news", json!({}));
    ada.push(&tools_ref, "tools:1", "announce", json!({}));
    assert_eq!(bob.recv_event("announced")[4], json!({"by": "tools"}));
    // A channel that stops: phx_close to the client, handle_leave, and its
    // assigns are gone when it is joined again.
    ada.push(&other_ref, "tools:2", "stop", json!({}));
    let close = ada.recv_event("phx_close");
    assert_eq!(close[0], json!(other_ref));
    assert_eq!(close[2], "tools:2");
    assert!(
        log.leaves
            .lock()
            .unwrap()
            .contains(&("tools:2".to_owned(), LeaveReason::Stopped))
    );
    let (other_ref, _) = ada.join("tools:2", json!({}));
    let msg_ref = ada.push(&other_ref, "tools:2", "count", json!({}));
    assert_eq!(ada.reply_to(&msg_ref).0["response"]["count"], 1);
    // A panic is counted; closing the socket closes it with 1000.
    ada.push(&tools_ref, "tools:1", "crash", json!({}));
    assert_eq!(ada.recv_event("phx_error")[2], "tools:1");
    assert_eq!(handle.server().stats().handler_panics, 1);
    ada.push(&other_ref, "tools:2", "hang_up", json!({}));
    let closed = loop {
        match ada.ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(err) => panic!("expected a close frame: {err}"),
        }
    };
    assert_eq!(closed.map(|frame| u16::from(frame.code)), Some(1000));
    engine.shutdown();
}

#[test]
fn a_refused_amber_join_is_told_with_a_join_error_message() {
    let (engine, _) = start(builder(), 100);
    let addr = engine.local_addr();
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/amber")).unwrap();
    ws.send(Message::text(
        r#"{"event":"join","topic":"chat_room:forbidden"}"#,
    ))
    .unwrap();
    let Message::Text(text) = ws.read().unwrap() else {
        panic!("expected text");
    };
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"event": "message", "topic": "chat_room:forbidden", "subject": "join_error", "payload": {"reason": "unauthorized"}})
    );
    engine.shutdown();
}

#[test]
fn disconnect_by_socket_id_closes_with_1001() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let mut bob = client(&engine, "bob");
    ada.sync();
    bob.sync();
    assert!(engine.handle().disconnect("user_socket:ada") >= 1);
    loop {
        match ada.ws.read() {
            Ok(Message::Close(Some(frame))) => break assert_eq!(u16::from(frame.code), 1001),
            Ok(_) => {}
            Err(err) => panic!("expected a 1001 close, got {err:?}"),
        }
    }
    bob.sync();
    engine.shutdown();
}

// ---- Amber ----------------------------------------------------------------------

struct AnyoneSocket;

impl Socket for AnyoneSocket {
    type Assigns = ();

    fn connect(&self, _request: &Request) -> Result<(), Reject> {
        Ok(())
    }
}

struct AmberRoom;

impl Channel<()> for AmberRoom {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, ()>,
        _payload: &RawValue,
    ) -> JoinResult {
        if ctx.topic() == "chat_room:forbidden" {
            return Err(Reply::reason("unauthorized"));
        }
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, ()>,
        event: &str,
        payload: &RawValue,
    ) {
        ctx.rebroadcast(event, payload);
    }
}

#[test]
fn amber_clients_join_and_get_rebroadcasts() {
    let (engine, _) = start(builder(), 100);
    let addr = engine.local_addr();
    let connect = || {
        let (ws, _) = tungstenite::connect(format!("ws://{addr}/amber")).unwrap();
        ws
    };
    let (mut first, mut second) = (connect(), connect());
    for ws in [&mut first, &mut second] {
        ws.send(Message::text(r#"{"event":"join","topic":"chat_room:1"}"#))
            .unwrap();
    }
    assert!(wait_until(WAIT, || engine
        .handle()
        .subscriber_count("chat_room:1")
        == 2));
    first
        .send(Message::text(
            r#"{"event":"message","topic":"chat_room:1","subject":"msg:new","payload":{"message":"hi"}}"#,
        ))
        .unwrap();
    let expected = json!({"event": "message", "topic": "chat_room:1", "subject": "msg:new", "payload": {"message": "hi"}});
    for ws in [&mut first, &mut second] {
        let Message::Text(text) = ws.read().unwrap() else {
            panic!("expected text");
        };
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), expected);
    }
    engine.shutdown();
}

#[test]
fn amber_clients_get_the_ping_text_heartbeat() {
    let (engine, _) = start(builder().ping_interval(Duration::from_millis(100)), 100);
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/amber", engine.local_addr())).unwrap();
    // A WebSocket ping, then the text frame amber.js watches.
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => break assert_eq!(text.as_str(), "ping"),
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    engine.shutdown();
}

/// A binary V2 push (kind 0) as phoenix.js sends it.
fn binary_push(join_ref: &str, msg_ref: &str, topic: &str, event: &str, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![
        0,
        join_ref.len() as u8,
        msg_ref.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for field in [join_ref, msg_ref, topic, event] {
        frame.extend_from_slice(field.as_bytes());
    }
    frame.extend_from_slice(data);
    frame
}

fn read_binary(client: &mut Client) -> Vec<u8> {
    loop {
        match client.ws.read().unwrap() {
            Message::Binary(data) => return data.to_vec(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

#[test]
fn binary_v2_pushes_replies_and_broadcasts() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let mut bob = client(&engine, "bob");
    let (join_ref, _) = ada.join("room:bin", json!({}));
    bob.join("room:bin", json!({}));
    ada.sync(); // Bob's user_joined notice

    // A push with a ref gets a binary reply: kind 1, sizes, fields, data.
    let push = binary_push(&join_ref, "77", "room:bin", "echo_bin", b"\x00\x01\xff");
    ada.ws.send(Message::binary(push)).unwrap();
    let mut expected = vec![1, join_ref.len() as u8, 2, 8, 2];
    expected.extend_from_slice(format!("{join_ref}77room:binok").as_bytes());
    expected.extend_from_slice(b"\x00\x01\xff");
    assert_eq!(read_binary(&mut ada), expected);

    // A binary broadcast: kind 2, to everyone.
    let push = binary_push(&join_ref, "78", "room:bin", "blob", b"\x42");
    ada.ws.send(Message::binary(push)).unwrap();
    let expected = b"\x02\x08\x04room:binblob\x42".to_vec();
    assert_eq!(read_binary(&mut ada), expected);
    assert_eq!(read_binary(&mut bob), expected);

    // From the engine handle too.
    engine
        .handle()
        .broadcast_binary("room:bin", "blob", b"\x43")
        .unwrap();
    assert_eq!(
        read_binary(&mut bob),
        b"\x02\x08\x04room:binblob\x43".to_vec()
    );
    assert_eq!(
        read_binary(&mut ada),
        b"\x02\x08\x04room:binblob\x43".to_vec()
    );

    // A binary push to a topic not joined: the JSON error reply.
    let push = binary_push("9", "79", "room:other", "blob", b"");
    ada.ws.send(Message::binary(push)).unwrap();
    let (reply, _) = ada.reply_to("79");
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    engine.shutdown();
}

/// The `i` of the next `count` messages a client receives, with their event.
fn burst_sequence(client: &mut Client, count: usize) -> Vec<(String, u64)> {
    (0..count)
        .map(|_| {
            let message = client.recv();
            (
                message[3].as_str().unwrap().to_owned(),
                message[4]["i"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_turn_of_broadcasts_keeps_exclusions_and_interceptions_exact() {
    let (engine, _) = start(builder(), 100);
    let mut ada = client(&engine, "ada");
    let mut bob = client(&engine, "bob");
    let mut carol = client(&engine, "carol");
    let (ada_ref, _) = ada.join("room:burst", json!({}));
    let _ = bob.join("room:burst", json!({}));
    let _ = carol.join("room:burst", json!({}));
    // The joins were announced to those already there.
    for (client, joins) in [(&mut ada, 2), (&mut bob, 1)] {
        for _ in 0..joins {
            assert_eq!(client.recv()[3], "user_joined");
        }
    }
    let burst =
        |i: &[u64]| -> Vec<(String, u64)> { i.iter().map(|&i| ("burst".to_owned(), i)).collect() };

    // No intercepted event: bob and carol take each run whole; ada, whom
    // the broadcast_from messages exclude, gets the others one by one.
    ada.push(
        &ada_ref,
        "room:burst",
        "burst",
        json!({"n": 9, "intercepted": false}),
    );
    assert_eq!(
        burst_sequence(&mut bob, 9),
        burst(&[0, 1, 2, 3, 4, 5, 6, 7, 8])
    );
    assert_eq!(
        burst_sequence(&mut carol, 9),
        burst(&[0, 1, 2, 3, 4, 5, 6, 7, 8])
    );
    assert_eq!(burst_sequence(&mut ada, 6), burst(&[0, 2, 3, 5, 6, 8]));

    // With an intercepted event in the run: handle_out runs in order,
    // between the frames, for every subscriber.
    ada.push(
        &ada_ref,
        "room:burst",
        "burst",
        json!({"n": 6, "intercepted": true}),
    );
    let mut for_bob = burst(&[0, 1]);
    for_bob.push(("filtered".to_owned(), 2));
    for_bob.extend(burst(&[3, 4]));
    for_bob.push(("filtered".to_owned(), 5));
    assert_eq!(burst_sequence(&mut bob, 6), for_bob);
    assert_eq!(burst_sequence(&mut carol, 4), burst(&[0, 1, 3, 4]));
    assert_eq!(burst_sequence(&mut ada, 2), burst(&[0, 3]));
    for client in [&mut ada, &mut bob, &mut carol] {
        assert!(client.sync().is_empty(), "nothing more arrived");
    }
    engine.shutdown();
}

#[test]
fn pushes_past_the_message_rate_get_an_error_reply_then_the_socket_closes() {
    let (engine, _) = start(builder().message_rate(herald::RateLimit::new(1, 3)), 100);
    let mut ada = client(&engine, "ada");
    // The join spends one of the burst of 3.
    let (join_ref, _) = ada.join("room:rate", json!({}));
    let mut replies = Vec::new();
    for _ in 0..4 {
        let msg_ref = ada.push(&join_ref, "room:rate", "ping", json!({}));
        replies.push(ada.reply_to(&msg_ref).0);
    }
    let ok = json!({"status": "ok", "response": {"pong": true}});
    let limited = json!({"status": "error", "response": {"reason": "rate limited"}});
    assert_eq!(replies, [ok.clone(), ok, limited.clone(), limited]);
    // Going on past a burst's worth more closes the socket with 1008.
    for _ in 0..3 {
        ada.push(&join_ref, "room:rate", "ping", json!({}));
    }
    loop {
        match ada.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            Ok(_) => {}
            Err(err) => panic!("expected close 1008, got {err}"),
        }
    }
    assert!(engine.handle().server().stats().messages_rate_limited >= 3);
    engine.shutdown();
}

/// Decides connections and joins on the test's thread, through channels,
/// as a backend call would off the loop.
struct Gatekeeper {
    connects: Mutex<std::sync::mpsc::Sender<(String, ConnectAnswer<String>)>>,
}

impl Socket for Gatekeeper {
    type Assigns = String;

    fn connect(&self, request: &Request) -> Result<String, Reject> {
        Ok(request
            .query_param("token")
            .unwrap_or_default()
            .into_owned())
    }

    fn connect_later(
        &self,
        request: &Request,
        answer: ConnectAnswer<String>,
    ) -> Result<(), ConnectAnswer<String>> {
        let token = request
            .query_param("token")
            .unwrap_or_default()
            .into_owned();
        if token == "on-the-loop" {
            return Err(answer);
        }
        self.connects.lock().unwrap().send((token, answer)).unwrap();
        Ok(())
    }
}

struct Vetted {
    joins: Mutex<std::sync::mpsc::Sender<(String, JoinLater)>>,
}

impl Channel<String> for Vetted {
    fn handle_joined(&self, ctx: &mut ChannelContext<'_, '_, String>, _: &RawValue) -> JoinResult {
        let later = ctx.join_later().expect("in a join callback");
        let who = ctx.assigns().clone();
        self.joins.lock().unwrap().send((who, later)).unwrap();
        // Ignored: the answer decides.
        Ok(Reply::empty())
    }

    fn handle_join_answer(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        message: &(dyn std::any::Any + Send + Sync),
    ) -> JoinResult {
        match message.downcast_ref::<bool>() {
            Some(true) => Ok(Reply::json(&json!({ "vetted": ctx.assigns().as_str() })).unwrap()),
            _ => Err(Reply::reason("not on the list")),
        }
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, String>,
        event: &str,
        payload: &RawValue,
    ) {
        ctx.rebroadcast(event, payload);
    }
}

#[test]
fn connections_and_joins_are_decided_off_the_loop_without_stopping_it() {
    let (connects, connect_requests) = std::sync::mpsc::channel();
    let (joins, join_requests) = std::sync::mpsc::channel();
    let endpoint = Endpoint::new(Gatekeeper {
        connects: Mutex::new(connects),
    })
    .channel(
        "vip:*",
        Vetted {
            joins: Mutex::new(joins),
        },
    );
    let engine = Channels::new()
        .phoenix(PATH, endpoint)
        .start(builder().loops(1))
        .expect("engine starts");
    let addr = engine.local_addr();
    let connect = move |token: &str| {
        let params = format!("token={token}");
        std::thread::spawn(move || Client::connect(addr, PATH, &params))
    };
    let status = |result: Result<Client, tungstenite::Error>| match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => 101,
        Err(other) => panic!("unexpected {other:?}"),
    };

    // Ada waits for her decision; meanwhile the one loop serves others.
    let ada = connect("ada");
    let (token, ada_answer) = connect_requests.recv_timeout(WAIT).unwrap();
    assert_eq!(token, "ada");
    let mut quick = connect("on-the-loop")
        .join()
        .unwrap()
        .expect("decided on the loop");
    quick.sync();
    ada_answer.accept("Ada".to_owned());
    let mut ada = ada.join().unwrap().expect("accepted later");

    // Refused with a status and reason, or dropped unanswered (503).
    let mallory = connect("mallory");
    let (_, answer) = connect_requests.recv_timeout(WAIT).unwrap();
    answer.reject(Reject::forbidden().with_reason("banned"));
    assert_eq!(status(mallory.join().unwrap()), 403);
    let ghost = connect("ghost");
    drop(connect_requests.recv_timeout(WAIT).unwrap());
    assert_eq!(status(ghost.join().unwrap()), 503);

    // A join waits for its answer: no reply and no broadcast until then.
    let join_ref = ada.next_ref();
    ada.send(
        Some(&join_ref),
        Some(&join_ref),
        "vip:1",
        "phx_join",
        json!({}),
    );
    let (who, first) = join_requests.recv_timeout(WAIT).unwrap();
    assert_eq!(who, "Ada");
    engine
        .handle()
        .broadcast("vip:1", "before", &json!({}))
        .unwrap();
    let rejoin = ada.next_ref();
    ada.send(Some(&rejoin), Some(&rejoin), "vip:1", "phx_join", json!({}));
    let (_, second) = join_requests.recv_timeout(WAIT).unwrap();
    // The replaced join's answer finds nothing to finish.
    first.answer(true).unwrap();
    second.answer(true).unwrap();
    let (reply, before) = ada.reply_to(&rejoin);
    assert_eq!(
        reply,
        json!({"status": "ok", "response": {"vetted": "Ada"}})
    );
    assert!(
        before.is_empty(),
        "nothing before the join's reply: {before:?}"
    );
    engine
        .handle()
        .broadcast("vip:1", "after", &json!({}))
        .unwrap();
    assert_eq!(ada.recv()[3], "after");

    // Refused by the answer, or by dropping it.
    let (reply, _) = join_answered(&mut ada, &join_requests, "vip:2", Some(false));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "not on the list"}})
    );
    let (reply, _) = join_answered(&mut ada, &join_requests, "vip:3", None);
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "join not answered"}})
    );
    ada.sync();
    quick.sync();
    engine.shutdown();
}

/// Joins `topic` and answers the join with `answer` (`None`: drops it).
fn join_answered(
    client: &mut Client,
    requests: &std::sync::mpsc::Receiver<(String, JoinLater)>,
    topic: &str,
    answer: Option<bool>,
) -> (Value, Vec<Value>) {
    let join_ref = client.next_ref();
    client.send(
        Some(&join_ref),
        Some(&join_ref),
        topic,
        "phx_join",
        json!({}),
    );
    let (_, later) = requests.recv_timeout(WAIT).unwrap();
    match answer {
        Some(answer) => later.answer(answer).unwrap(),
        None => drop(later),
    }
    client.reply_to(&join_ref)
}
