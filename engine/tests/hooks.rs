//! Backend hooks and webhooks of the `herald` binary, against a real HTTP
//! backend this test runs (tiny_http): connect, join and message hooks that
//! allow, refuse, rewrite, hang and answer garbage; signed webhooks with
//! retries.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::Herald;

const WAIT: Duration = Duration::from_secs(10);

/// What the backend was asked: path, body (raw and read), signature.
type Calls = Arc<Mutex<Vec<Call>>>;

#[derive(Clone)]
struct Call {
    path: String,
    raw: String,
    body: Value,
    signature: Option<String>,
}

/// A backend answering hooks as `answer` says, each request on its own
/// thread (a hanging answer holds only its own).
struct Backend {
    url: String,
    calls: Calls,
}

impl Backend {
    fn start(answer: fn(&str, &Value, usize) -> (u16, String)) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("backend binds");
        let url = format!(
            "http://{}",
            server.server_addr().to_ip().expect("an IP address")
        );
        let calls: Calls = Arc::default();
        let seen = Arc::clone(&calls);
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let path = request.url().to_owned();
                let signature = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("x-herald-signature"))
                    .map(|h| h.value.to_string());
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let count = {
                    let mut calls = seen.lock().unwrap();
                    calls.push(Call {
                        path: path.clone(),
                        raw: body,
                        body: value.clone(),
                        signature,
                    });
                    calls.iter().filter(|call| call.path == path).count()
                };
                std::thread::spawn(move || {
                    let (status, body) = answer(&path, &value, count);
                    let _ = request
                        .respond(tiny_http::Response::from_string(body).with_status_code(status));
                });
            }
        });
        Self { url, calls }
    }

    fn calls_to(&self, path: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }
}

/// The hooks of the test's rules: users by token, a plan per user, a
/// message hook that shouts, refuses spam and answers late.
fn answer(path: &str, body: &Value, _: usize) -> (u16, String) {
    let reply = match path {
        "/connect" => match body["params"]["token"].as_str().unwrap_or_default() {
            "banned" => json!({"allow": false, "status": 403, "reason": "banned"}),
            "garbage" => return (200, "<html>oops</html>".into()),
            "down" => return (500, "{}".into()),
            "limited" => json!({"allow": true, "channels": ["room:public"]}),
            "hang" => {
                std::thread::sleep(Duration::from_secs(3));
                json!({"allow": true})
            }
            token => match token.strip_prefix("user-") {
                Some(user) => {
                    let plan = if user == "ada" { "pro" } else { "free" };
                    json!({"allow": true, "user": user, "assigns": {"plan": plan}})
                }
                None => json!({"allow": false, "status": 401}),
            },
        },
        "/join" if body["assigns"]["plan"] == "pro" => {
            json!({"allow": true, "reply": {"welcome": body["user"]}})
        }
        "/join" => json!({"allow": false, "reason": "upgrade to join"}),
        "/message" => match body["event"].as_str().unwrap_or_default() {
            "shout" => {
                let loud = body["payload"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_uppercase();
                json!({"allow": true, "payload": {"body": loud}, "reply": {"shouted": true}})
            }
            "spam" => json!({"allow": false, "reason": "no spam"}),
            "slow" => {
                std::thread::sleep(Duration::from_secs(3));
                json!({"allow": true})
            }
            _ => json!({"allow": true}),
        },
        _ => return (404, "{}".into()),
    };
    (200, reply.to_string())
}

fn config(backend: &Backend, extra: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-hooks-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("herald.toml");
    let url = &backend.url;
    std::fs::write(
        &path,
        format!(
            r#"
            [hooks]
            connect_url = "{url}/connect"
            timeout_ms = 500
            on_failure = "refuse"

            [[channels]]
            pattern = "vip:*"
            messages = "rebroadcast"
            join_hook = "{url}/join"
            message_hook = "{url}/message"

            [[channels]]
            pattern = "room:*"
            messages = "rebroadcast"
            presence = true
            {extra}
            "#
        ),
    )
    .unwrap();
    path
}

fn status_of(herald: &Herald, params: &str) -> u16 {
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0&{params}", herald.ws);
    match tungstenite::connect(url) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn hooks_decide_connections_joins_and_messages_off_the_loop() {
    let backend = Backend::start(answer);
    let path = config(&backend, "");
    let herald = Herald::start(&["--config", path.to_str().unwrap(), "--loops", "1"]);

    // Refused with the backend's status and reason; a backend that fails
    // (garbage, 500, slower than the timeout) refuses with 503.
    assert_eq!(status_of(&herald, "token=banned"), 403);
    assert_eq!(status_of(&herald, "token=garbage"), 503);
    assert_eq!(status_of(&herald, "token=down"), 503);

    // While one connection waits on a hanging backend, the one loop serves
    // the others: a connect, a join and a broadcast all go through.
    let ws = herald.ws;
    let hanging = std::thread::spawn(move || {
        let started = Instant::now();
        let url = format!("ws://{ws}/socket/websocket?vsn=2.0.0&token=hang");
        let status = match tungstenite::connect(url) {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        (status, started.elapsed())
    });
    wait_for_call(&backend, "/connect", |body| {
        body["params"]["token"] == "hang"
    });
    let mut ada = herald.phoenix("token=user-ada");
    let (join_ref, reply) = ada.join("vip:lounge", json!({}));
    assert_eq!(
        reply,
        json!({"status": "ok", "response": {"welcome": "ada"}})
    );
    let (status, body) = herald.api(
        "POST",
        "/api/broadcast",
        &[],
        r#"{"topic": "vip:lounge", "event": "news", "payload": {}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ada.recv()[3], "news");
    let (status, waited) = hanging.join().unwrap();
    assert_eq!(status, 503, "the hook timed out");
    assert!(
        waited < Duration::from_secs(3),
        "{waited:?}: the timeout, not the backend"
    );

    // The join hook saw who joins with the connect hook's assigns.
    let joins = backend.calls_to("/join");
    assert_eq!(joins[0].body["user"], "ada");
    assert_eq!(joins[0].body["assigns"], json!({"plan": "pro"}));
    // Patterns from the backend hold without a user too.
    let mut limited = herald.phoenix("token=limited");
    let (_, reply) = limited.join("room:private", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );
    let (_, reply) = limited.join("room:public", json!({}));
    assert_eq!(reply["status"], "ok", "{reply}");
    let mut bob = herald.phoenix("token=user-bob");
    let (_, reply) = bob.join("vip:lounge", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "upgrade to join"}})
    );

    // Messages: rewritten by the backend and published, or refused.
    let shout = ada.push(&join_ref, "vip:lounge", "shout", json!({"body": "hi"}));
    let (reply, before) = ada.reply_to(&shout);
    assert_eq!(
        reply,
        json!({"status": "ok", "response": {"shouted": true}})
    );
    assert_eq!(
        before,
        [json!([null, null, "vip:lounge", "shout", {"body": "HI"}])]
    );
    let spam = ada.push(&join_ref, "vip:lounge", "spam", json!({}));
    let (reply, before) = ada.reply_to(&spam);
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "no spam"}})
    );
    assert!(before.is_empty(), "nothing published: {before:?}");

    // One client cannot fill the queue: past 16 calls waiting, its next
    // message is refused at once (the others time out).
    let refs: Vec<String> = (0..17)
        .map(|_| ada.push(&join_ref, "vip:lounge", "slow", json!({})))
        .collect();
    let (reply, _) = ada.reply_to(&refs[16]);
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "backend busy, retry later"}})
    );
    // The others' replies come as their calls time out, in any order.
    let mut answered = Vec::new();
    while answered.len() < 16 {
        let message = ada.recv();
        if message[3] == "phx_reply" {
            assert_eq!(
                message[4]["response"]["reason"], "backend unavailable",
                "{message}"
            );
            answered.push(message[1].as_str().unwrap().to_owned());
        }
    }
    answered.sort_by_key(|r| r.parse::<u64>().unwrap());
    assert_eq!(answered, refs[..16]);

    let (_, metrics) = herald.api("GET", "/metrics", &[], "");
    for line in [
        r#"herald_hook_calls_total{hook="connect",outcome="allowed"} 3"#,
        r#"herald_hook_calls_total{hook="connect",outcome="refused"} 1"#,
        r#"herald_hook_calls_total{hook="connect",outcome="failed"} 3"#,
        r#"herald_hook_calls_total{hook="join",outcome="refused"} 1"#,
        r#"herald_hook_calls_total{hook="message",outcome="allowed"} 1"#,
        r#"herald_hook_calls_total{hook="message",outcome="refused"} 1"#,
        r#"herald_hook_calls_total{hook="message",outcome="failed"} 17"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[test]
fn with_on_failure_allow_a_dead_backend_lets_everyone_in() {
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let backend = Backend {
        url,
        calls: Arc::default(),
    };
    let path = config(&backend, "").with_file_name("allow.toml");
    let text = std::fs::read_to_string(config(&backend, "")).unwrap();
    std::fs::write(
        &path,
        text.replace(r#"on_failure = "refuse""#, r#"on_failure = "allow""#),
    )
    .unwrap();
    let herald = Herald::start(&["--config", path.to_str().unwrap()]);
    let mut client = herald.phoenix("token=anyone");
    let (join_ref, reply) = client.join("vip:lounge", json!({}));
    assert_eq!(reply["status"], "ok", "{reply}");
    let msg = client.push(
        &join_ref,
        "vip:lounge",
        "new_msg",
        json!({"body": "still here"}),
    );
    let (reply, before) = client.reply_to(&msg);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(before[0][4], json!({"body": "still here"}));
}

#[test]
fn webhooks_tell_of_occupied_and_vacated_topics_and_members_signed_and_retried() {
    // The first delivery fails: it is retried.
    fn answer_events(path: &str, body: &Value, count: usize) -> (u16, String) {
        match path {
            "/events" if count == 1 => (500, "{}".into()),
            "/events" => (200, "{}".into()),
            _ => answer(path, body, count),
        }
    }
    let backend = Backend::start(answer_events);
    let webhooks = format!(
        "[webhooks]\nurl = \"{}/events\"\nsecret = \"s3cret\"\n[broker]\ntopic_counts_ms = 50",
        backend.url
    );
    let path = config(&backend, &webhooks);
    let herald = Herald::start(&["--config", path.to_str().unwrap()]);
    let mut ada = herald.phoenix("token=user-ada");
    let join_ref = support::join(&mut ada, "room:w");
    wait_for_events(&backend, &["member_added", "topic_occupied"]);
    ada.send(Some(&join_ref), Some("9"), "room:w", "phx_leave", json!({}));
    ada.reply_to("9");
    let all = [
        "member_added",
        "member_removed",
        "topic_occupied",
        "topic_vacated",
    ];
    wait_for_events(&backend, &all);

    for call in backend.calls_to("/events") {
        let event = &call.body["events"][0];
        assert_eq!(event["topic"], "room:w", "{}", call.raw);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(call.raw.as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let signature = call.signature.as_deref();
        assert_eq!(signature, Some(format!("sha256={expected}").as_str()));
    }
    let (_, metrics) = herald.api("GET", "/metrics", &[], "");
    assert!(
        metrics.contains("herald_webhook_retries_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_webhook_deliveries_total 4"),
        "{metrics}"
    );
}

/// Waits until the backend got a call to `path` whose body passes `test`.
fn wait_for_call(backend: &Backend, path: &str, test: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !backend.calls_to(path).iter().any(|call| test(&call.body)) {
        assert!(Instant::now() < deadline, "no such call to {path}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the webhook delivered exactly `names` (sorted), each once:
/// the backend's first answer was a 500, so its event came twice.
fn wait_for_events(backend: &Backend, names: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let calls = backend.calls_to("/events");
        let mut delivered: Vec<String> = calls
            .iter()
            .skip(1)
            .map(|call| {
                call.body["events"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        delivered.sort();
        if delivered == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "delivered {delivered:?}, expected {names:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
