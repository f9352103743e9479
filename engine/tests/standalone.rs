//! The `herald` binary over real sockets: configuration precedence, the
//! HTTP API and its errors, token auth, the Origin allow-list, channel
//! rules, metrics, and graceful shutdown on SIGTERM.
//!
//! Each test starts its own server process on free ports (port 0; the
//! addresses are read from its JSON log) and kills it when done.

mod support;

use std::{
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use herald_tests::server::{http_exchange, upgrade_request};
use serde_json::{Value, json};
use support::{Herald, join, json_of};
use tungstenite::{Message, protocol::frame::coding::CloseCode};

fn token(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

#[test]
fn api_broadcasts_reach_phoenix_clients_and_topics_count_them() {
    let herald = Herald::start_with_env(&[], &[("HERALD_API_KEY", "k1")]);
    let auth = "Authorization: Bearer k1";
    let mut client = herald.phoenix("");
    join(&mut client, "room:lobby");

    let (status, body) = herald.api("GET", "/api/topics/room%3Alobby", &[auth], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["subscribers"], 1);

    let one = json!({"topic": "room:lobby", "event": "new_msg", "payload": {"body": "one"}});
    let (status, body) = herald.api("POST", "/api/broadcast", &[auth], &one.to_string());
    assert_eq!(
        (status, json_of(&body)["ok"].clone()),
        (200, json!(true)),
        "{body}"
    );
    // (Presence messages of the default rule come and go meanwhile.)
    // The default `room:*` rule keeps history: the ref is the offset
    // (after the join's `user_joined` notice).
    let message = client.recv_event("new_msg");
    assert_eq!(
        message,
        json!([null, "@2", "room:lobby", "new_msg", {"body": "one"}])
    );

    let batch = json!({"broadcasts": [
        {"topic": "room:lobby", "event": "new_msg", "payload": {"n": 1}},
        {"topic": "room:lobby", "event": "new_msg", "payload": {"n": 2}},
    ]});
    let (status, body) = herald.api("POST", "/api/broadcast", &[auth], &batch.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["broadcasts"], 2);
    assert_eq!(client.recv_event("new_msg")[4], json!({"n": 1}));
    assert_eq!(client.recv_event("new_msg")[4], json!({"n": 2}));
}

#[test]
fn every_operation_the_openapi_description_lists_answers_as_documented() {
    let herald = Herald::start_with_env(&[], &[("HERALD_API_KEY", "k3")]);
    let auth = "Authorization: Bearer k3";
    // A member for the operations that act on one.
    let mut client = herald.phoenix("");
    join(&mut client, "room:1");
    let (status, body) = herald.api("GET", "/api/openapi.json", &[auth], "");
    assert_eq!(status, 200, "{body}");
    let spec = json_of(&body);
    let mut called = 0;
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let mut url = path.clone();
            let path_parameters = operation["parameters"].as_array().into_iter().flatten();
            for parameter in path_parameters.filter(|p| p["in"] == "path") {
                let name = parameter["name"].as_str().unwrap();
                let example = parameter["example"].as_str().expect("a parameter example");
                url = url.replace(&format!("{{{name}}}"), example);
            }
            let body = &operation["requestBody"]["content"]["application/json"]["example"];
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            let (status, answer) = herald.api(&method.to_uppercase(), &url, &[auth], &body);
            assert_eq!(status, 200, "{method} {url}: {answer}");
            assert!(
                operation["responses"].get("200").is_some(),
                "{method} {path} documents its 200"
            );
            if path.starts_with("/api/") {
                assert!(
                    serde_json::from_str::<Value>(&answer).is_ok(),
                    "{method} {url}: {answer}"
                );
                // Without the key: 401, as documented.
                let (status, _) = herald.api(&method.to_uppercase(), &url, &[], &body);
                assert_eq!(status, 401, "{method} {url} without the key");
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{method} {path} documents 401"
                );
            }
            called += 1;
        }
    }
    // Every route of `bin/herald/api.rs`'s table.
    assert_eq!(called, 13, "documented operations");
    // The batch's example took the member off room:1 (a socket without a
    // token has no id, so nothing of it is closed): the batch ran.
    let (status, body) = herald.api(
        "POST",
        "/api/batch",
        &[auth],
        r#"{"commands": [{"broadcast": {"topic": "room:1", "event": "phx_x", "payload": {}}}]}"#,
    );
    assert_eq!(
        status, 400,
        "a reserved event refuses the whole batch: {body}"
    );
}

#[test]
fn the_api_refuses_bad_requests_with_json_errors() {
    let herald = Herald::start(&["--api-key", "k2"]);
    let auth = "Authorization: Bearer k2";
    let valid = json!({"topic": "t", "event": "e", "payload": {}}).to_string();
    let cases = [
        ("POST", "/api/broadcast", None, valid.clone(), 401),
        (
            "POST",
            "/api/broadcast",
            Some("Authorization: Bearer nope"),
            valid.clone(),
            401,
        ),
        (
            "POST",
            "/api/broadcast",
            Some(auth),
            "{not json".to_owned(),
            400,
        ),
        (
            "POST",
            "/api/broadcast",
            Some(auth),
            r#"{"topic":"t"}"#.to_owned(),
            400,
        ),
        (
            "POST",
            "/api/broadcast",
            Some(auth),
            json!({"topic": "t", "event": "phx_reply", "payload": {}}).to_string(),
            400,
        ),
        ("GET", "/api/broadcast", Some(auth), String::new(), 405),
        ("GET", "/api/nothing", Some(auth), String::new(), 404),
        ("POST", "/api/disconnect", Some(auth), "{}".to_owned(), 400),
        (
            "POST",
            "/api/broadcast",
            Some(auth),
            "x".repeat((1 << 20) + 1),
            413,
        ),
    ];
    for (method, path, header, body, expected) in cases {
        let headers: Vec<&str> = header.into_iter().collect();
        let (status, response) = herald.api(method, path, &headers, &body);
        assert_eq!(status, expected, "{method} {path}: {response}");
        assert!(
            json_of(&response)["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{method} {path}: error body {response:?}"
        );
    }
    let (status, body) = herald.api("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("herald_api_bad_requests_total 9"), "{body}");
}

#[test]
fn flags_win_over_environment_variables() {
    let herald = Herald::start_with_env(
        &["--api-key", "from-flag"],
        &[("HERALD_API_KEY", "from-env")],
    );
    let (status, _) = herald.api(
        "GET",
        "/api/topics/x",
        &["Authorization: Bearer from-env"],
        "",
    );
    assert_eq!(status, 401);
    let (status, _) = herald.api(
        "GET",
        "/api/topics/x",
        &["Authorization: Bearer from-flag"],
        "",
    );
    assert_eq!(status, 200);
}

#[test]
fn tokens_are_checked_at_connect_and_join_and_name_the_socket() {
    let herald = Herald::start(&["--jwt-secret", "s3cret"]);
    let refused = |params: &str| {
        let path = format!("/socket/websocket?vsn=2.0.0&{params}");
        http_exchange(herald.ws, upgrade_request(&path).as_bytes())
    };
    let (status, response) = refused("");
    assert_eq!(status, 401);
    assert!(response.contains("missing token"), "{response}");
    let forged = token("other", &json!({"sub": "ada", "exp": in_an_hour()}));
    let (status, response) = refused(&format!("token={forged}"));
    assert_eq!(status, 401);
    assert!(response.contains("signature"), "{response}");
    let expired = token("s3cret", &json!({"sub": "ada", "exp": 1_000}));
    let (status, response) = refused(&format!("token={expired}"));
    assert_eq!(status, 401);
    assert!(response.contains("expired"), "{response}");

    let good = token(
        "s3cret",
        &json!({"sub": "ada", "exp": in_an_hour(), "channels": ["room:*"]}),
    );
    let mut client = herald.phoenix(&format!("token={good}"));
    let (_, reply) = client.join("room:a", json!({}));
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["response"]["user"], "ada");
    let (_, reply) = client.join("feed:x", json!({}));
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "unauthorized"}})
    );

    // The topic list, node info, then the server takes ada off room:a.
    let (status, body) = herald.api("GET", "/api/topics", &[], "");
    assert_eq!(status, 200, "{body}");
    let topics = json_of(&body);
    assert_eq!(
        topics["topics"],
        json!([{"topic": "room:a", "subscribers": 1, "here": 1}]),
        "{body}"
    );
    let (status, body) = herald.api("GET", "/api/info", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["connections"], 1, "{body}");
    let unsubscribe = r#"{"socket_id": "ada", "topic": "room:a"}"#;
    let (status, body) = herald.api("POST", "/api/unsubscribe", &[], unsubscribe);
    assert_eq!(status, 200, "{body}");
    let closed = client.recv_event("phx_close");
    assert_eq!(closed[2], "room:a");
    let (_, body) = herald.api("GET", "/api/topics", &[], "");
    assert_eq!(json_of(&body)["topics"], json!([]), "{body}");
    let (status, _) = herald.api("POST", "/api/unsubscribe", &[], r#"{"socket_id": "ada"}"#);
    assert_eq!(status, 400);

    let (status, body) = herald.api("POST", "/api/disconnect", &[], r#"{"socket_id": "ada"}"#);
    assert_eq!(status, 200, "{body}");
    loop {
        match client.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                break;
            }
            Ok(_) => {}
            Err(err) => panic!("expected a close frame, got {err}"),
        }
    }
}

#[test]
fn the_origin_allow_list_refuses_other_origins() {
    let herald = Herald::start(&[
        "--allowed-origins",
        "https://ok.example,https://also.example",
    ]);
    let request = |origin: &str| {
        let head = upgrade_request("/socket/websocket?vsn=2.0.0");
        let head = head.replacen(
            "Host: test\r\n",
            &format!("Host: test\r\nOrigin: {origin}\r\n"),
            1,
        );
        let mut stream = herald_tests::server::raw(herald.ws);
        std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
        herald_tests::server::read_head(&mut stream)
    };
    let refused = http_exchange(
        herald.ws,
        upgrade_request("/socket/websocket?vsn=2.0.0")
            .replacen(
                "Host: test\r\n",
                "Host: test\r\nOrigin: https://evil.example\r\n",
                1,
            )
            .as_bytes(),
    );
    assert_eq!(refused.0, 403);
    assert!(refused.1.contains("origin not allowed"), "{}", refused.1);
    assert!(request("https://also.example").starts_with("HTTP/1.1 101"));
}

#[test]
fn channel_rules_from_a_config_file_decide_joins_and_messages() {
    let dir = std::env::temp_dir().join(format!("herald-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("herald.toml");
    std::fs::write(
        &path,
        r#"
        [[channels]]
        pattern = "feed:*"
        messages = "refuse"

        [[channels]]
        pattern = "chat:*"
        messages = "broadcast_from"
        "#,
    )
    .unwrap();
    let herald = Herald::start(&["--config", path.to_str().unwrap()]);
    let mut alice = herald.phoenix("");
    let mut bob = herald.phoenix("");

    let (_, reply) = alice.join("room:lobby", json!({}));
    assert_eq!(reply["status"], "error", "no rule matches room:*: {reply}");

    let feed = join(&mut alice, "feed:prices");
    let msg_ref = alice.push(&feed, "feed:prices", "tick", json!({}));
    let (reply, _) = alice.reply_to(&msg_ref);
    assert_eq!(reply["status"], "error", "{reply}");

    let chat = join(&mut alice, "chat:1");
    join(&mut bob, "chat:1");
    alice.push(&chat, "chat:1", "new_msg", json!({"body": "hi"}));
    assert_eq!(
        bob.recv(),
        json!([null, null, "chat:1", "new_msg", {"body": "hi"}])
    );
    let before_sync = alice.sync();
    assert!(
        before_sync.iter().all(|m| m[3] != "new_msg"),
        "broadcast_from must skip the sender: {before_sync:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn presence_notices_and_metrics_follow_joins() {
    let herald = Herald::start(&[]);
    let mut alice = herald.phoenix("");
    let mut bob = herald.phoenix("");
    let (alice_ref, reply) = alice.join("room:1", json!({"name": "alice"}));
    assert_eq!(reply["response"]["user"], "alice");
    // Phoenix Presence: the state after the join reply, then alice's own
    // join in a diff.
    let state = alice.recv();
    assert_eq!(state[0], json!(alice_ref));
    assert_eq!(state[3], "presence_state");
    let diff = alice.recv_event("presence_diff");
    assert!(
        diff[4]["joins"]["alice"]["metas"][0]["online_at"].is_u64(),
        "{diff}"
    );
    join(&mut bob, "room:1");
    assert_eq!(
        alice.recv_event("user_joined"),
        json!([null, "@2", "room:1", "user_joined", {"user": "tester"}])
    );
    let mut diff = alice.recv_event("presence_diff");
    while diff[4]["joins"].get("tester").is_none() {
        diff = alice.recv_event("presence_diff");
    }
    let (status, body) = herald.api("GET", "/api/presence/room:1", &[], "");
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["count"], 2, "{listed}");
    assert!(listed["presences"]["tester"]["metas"][0]["phx_ref"].is_string());
    drop(bob);
    assert_eq!(
        alice.recv_event("user_left"),
        json!([null, "@3", "room:1", "user_left", {"user": "tester"}])
    );
    let mut diff = alice.recv_event("presence_diff");
    while diff[4]["leaves"].get("tester").is_none() {
        diff = alice.recv_event("presence_diff");
    }

    let (status, metrics) = herald.api("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    for line in [
        "herald_channel_joins_total 2",
        "herald_channel_leaves_total 1",
        "herald_connections 1",
        "# TYPE herald_loop_turn_seconds histogram",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[test]
fn sigterm_drains_clients_with_1012_and_exits_zero() {
    let mut herald = Herald::start(&[]);
    let mut client = herald.phoenix("");
    join(&mut client, "room:1");
    herald.send_sigterm();
    let close = loop {
        match client.ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(err) => panic!("expected a close frame, got {err}"),
        }
    };
    // A drain: "service restart", reconnect (to another node).
    assert_eq!(close.map(|frame| frame.code), Some(CloseCode::Restart));
    // tungstenite answered the close; the server has nobody left to wait for.
    let _ = client.ws.flush();
    let status = herald.child.wait().expect("wait for herald");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_bad_configuration_exits_with_status_2_and_says_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--api-listen", "0.0.0.0:0"])
        .env_remove("HERALD_API_KEY")
        .output()
        .expect("run herald");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs a key"), "{stderr}");
}

#[test]
fn history_is_read_and_removed_through_the_api_and_retried_publishes_are_made_once() {
    let herald = Herald::start(&["--api-key", "k4"]);
    let auth = "Authorization: Bearer k4";
    let mut client = herald.phoenix("");
    // The default `room:*` rule keeps history: the join says where the
    // stream is.
    let join_ref = client.next_ref();
    client.send(
        Some(&join_ref),
        Some(&join_ref),
        "room:h",
        "phx_join",
        json!({}),
    );
    let (reply, _) = client.reply_to(&join_ref);
    // Its own `user_joined` notice is the stream's first publication.
    assert_eq!(reply["response"]["history"]["offset"], 1, "{reply}");

    let publish = json!({"topic": "room:h", "event": "new_msg", "payload": {"n": 1}}).to_string();
    let key = "Idempotency-Key: order-42";
    for duplicate in [false, true] {
        let (status, body) = herald.api("POST", "/api/broadcast", &[auth, key], &publish);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            json_of(&body)["duplicate"].as_bool().unwrap_or(false),
            duplicate,
            "{body}"
        );
    }
    let message = client.recv_event("new_msg");
    assert_eq!(
        (message[1].as_str(), &message[4]),
        (Some("@2"), &json!({"n": 1}))
    );
    assert!(
        client.sync().is_empty(),
        "the retry was not published again"
    );

    let (status, body) = herald.api("GET", "/api/history/room:h?limit=5", &[auth], "");
    assert_eq!(status, 200, "{body}");
    let history = json_of(&body);
    assert_eq!(history["offset"], 2);
    let latest = &history["publications"][1];
    assert_eq!(
        latest,
        &json!({"offset": 2, "event": "new_msg", "payload": {"n": 1}})
    );
    let (status, body) = herald.api("DELETE", "/api/history/room:h", &[auth], "");
    assert_eq!(
        (status, json_of(&body)["removed"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (_, body) = herald.api("GET", "/api/history/room:h", &[auth], "");
    assert_eq!(json_of(&body)["epoch"], Value::Null, "{body}");

    // Topics without history, bad limits and bad keys are refused.
    let (status, _) = herald.api("GET", "/api/history/news", &[auth], "");
    assert_eq!(status, 404);
    let (status, _) = herald.api("GET", "/api/history/room:h?limit=1001", &[auth], "");
    assert_eq!(status, 400);
    let long_key = format!("Idempotency-Key: {}", "k".repeat(129));
    let (status, _) = herald.api("POST", "/api/broadcast", &[auth, &long_key], &publish);
    assert_eq!(status, 400);
    let (status, body) = herald.api("GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("herald_api_duplicates_total 1"), "{body}");
    assert!(body.contains("herald_history_appends_total 2"), "{body}");
}
