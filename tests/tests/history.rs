//! History and recovery over real sockets, with the in-process store: a
//! client that drops its connection and joins again with its last position
//! gets exactly what it missed, in order, then the live ones; never a gap
//! or a duplicate, even when publishes race the recovery.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use herald::channels::{Channels, Endpoint, Engine, History, MAX_RECOVERED};
use herald_tests::{
    echo_room::{Anyone, EchoRoom, PATH, builder},
    phoenix::Client,
};
use serde_json::{Value, json};

fn start() -> Engine {
    Channels::new()
        .phoenix(PATH, Endpoint::new(Anyone).channel("room:*", EchoRoom))
        .history(
            "room:*",
            History::new().size(1000).ttl(Duration::from_secs(60)),
        )
        .start(builder())
        .expect("engine starts")
}

fn client(engine: &Engine) -> Client {
    Client::connect(engine.local_addr(), PATH, "").expect("connects")
}

/// The offset a broadcast carries in its ref (`"@17"`).
fn offset_of(message: &Value) -> u64 {
    let offset_ref = message[1].as_str().expect("a ref");
    offset_ref
        .strip_prefix('@')
        .and_then(|offset| offset.parse().ok())
        .unwrap_or_else(|| panic!("not an offset ref: {message}"))
}

/// The join reply's `history` summary.
fn history_of(reply: &Value) -> &Value {
    assert_eq!(reply["status"], "ok", "{reply}");
    &reply["response"]["history"]
}

fn publish(engine: &Engine, topic: &str, from: u64, to: u64) {
    for n in from..=to {
        engine
            .handle()
            .broadcast(topic, "msg", &json!({ "n": n }))
            .expect("broadcast");
    }
}

#[test]
fn a_rejoin_gets_exactly_what_it_missed_in_order_then_live_ones() {
    let engine = start();
    let mut first = client(&engine);
    let (_, reply) = first.join("room:1", json!({}));
    let summary = history_of(&reply).clone();
    assert_eq!(summary["offset"], 0);
    assert_eq!(summary["recovered"], false);
    let epoch = summary["epoch"].as_str().expect("an epoch").to_owned();
    publish(&engine, "room:1", 1, 3);
    let seen = first.sync();
    assert_eq!(seen.iter().map(offset_of).collect::<Vec<_>>(), [1, 2, 3]);
    let last = offset_of(&seen[2]);
    // The connection drops; 50 are published meanwhile.
    drop(first);
    publish(&engine, "room:1", 4, 53);

    let mut again = client(&engine);
    let join_ref = again.next_ref();
    let recover = json!({ "recover": { "epoch": epoch, "offset": last } });
    again.send(
        Some(&join_ref),
        Some(&join_ref),
        "room:1",
        "phx_join",
        recover,
    );
    let (reply, before) = again.reply_to(&join_ref);
    assert!(before.is_empty(), "nothing before the reply: {before:?}");
    let summary = history_of(&reply);
    assert_eq!(summary["recovered"], true, "{reply}");
    assert_eq!(summary["offset"], 53);
    assert_eq!(summary["epoch"], epoch.as_str());
    publish(&engine, "room:1", 54, 54);
    let got = again.sync();
    let offsets: Vec<u64> = got.iter().map(offset_of).collect();
    assert_eq!(offsets, (4..=54).collect::<Vec<_>>());
    let payloads: Vec<u64> = got.iter().map(|m| m[4]["n"].as_u64().unwrap()).collect();
    assert_eq!(payloads, (4..=54).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m[3] == "msg" && m[0].is_null()));
    let stats = engine.handle().channel_stats();
    assert_eq!(stats.recoveries, 1);
    assert_eq!(stats.recovered, 1);
    assert_eq!(stats.history_appends, 54);
    engine.shutdown();
}

#[test]
fn recovery_is_refused_whole_never_partial() {
    let engine = start();
    let mut watcher = client(&engine);
    let (_, reply) = watcher.join("room:2", json!({}));
    let epoch = history_of(&reply)["epoch"].as_str().unwrap().to_owned();
    let over_cap = MAX_RECOVERED as u64 + 1;
    publish(&engine, "room:2", 1, over_cap);

    let cases = [
        (json!({ "epoch": epoch, "offset": 0 }), "too_many"),
        (json!({ "epoch": "another", "offset": 5 }), "epoch"),
        (json!({ "epoch": epoch, "offset": 1_000_000u64 }), "gone"),
    ];
    for (missed_before, (position, reason)) in (0..).zip(cases) {
        let mut late = client(&engine);
        let (_, reply) = late.join("room:2", json!({ "recover": position }));
        let summary = history_of(&reply);
        assert_eq!(summary["recovered"], false, "{reply}");
        assert_eq!(summary["reason"], reason, "{reply}");
        assert_eq!(summary["offset"], over_cap + missed_before);
        // Nothing of the history comes; live ones do.
        publish(&engine, "room:2", 0, 0);
        let got = late.sync();
        assert_eq!(got.len(), 1, "{got:?}");
    }
    // Within the cap, from the same epoch: recovered.
    let mut near = client(&engine);
    let position = json!({ "epoch": epoch, "offset": over_cap + 3 - 300 });
    let (_, reply) = near.join("room:2", json!({ "recover": position }));
    assert_eq!(history_of(&reply)["recovered"], true, "{reply}");
    assert_eq!(near.sync().len(), 300);
    let stats = engine.handle().channel_stats();
    assert_eq!(stats.recovery_failed_too_many, 1);
    assert_eq!(stats.recovery_failed_epoch, 1);
    assert_eq!(stats.recovery_failed_gone, 1);
    engine.shutdown();
}

#[test]
fn malformed_recovery_requests_get_a_join_error() {
    let engine = start();
    let mut client = client(&engine);
    let bad = [
        json!({ "recover": { "epoch": "e", "offset": "12" } }),
        json!({ "recover": { "epoch": "e", "offset": -1 } }),
        json!({ "recover": { "epoch": "e", "offset": 1.5 } }),
        json!({ "recover": { "epoch": 7, "offset": 1 } }),
        json!({ "recover": { "offset": 1 } }),
        json!({ "recover": "yes" }),
        json!({ "recover": { "epoch": "e".repeat(65), "offset": 1 } }),
        serde_json::from_str(r#"{"recover": {"epoch": "e", "offset": 18446744073709551616}}"#)
            .unwrap(),
    ];
    for payload in bad {
        let (_, reply) = client.join("room:3", payload.clone());
        assert_eq!(reply["status"], "error", "{payload} -> {reply}");
        let reason = reply["response"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("invalid recover"), "{reason}");
    }
    // The connection is fine, and a payload that is not an object joins.
    let (_, reply) = client.join("room:3", json!([1, 2]));
    assert_eq!(reply["status"], "ok");
    engine.shutdown();
}

#[test]
fn rebroadcasts_on_a_topic_with_history_carry_offsets() {
    let engine = start();
    let mut sender = client(&engine);
    let mut other = client(&engine);
    let (sender_join, _) = sender.join("room:4", json!({}));
    other.join("room:4", json!({}));
    for n in 0..5 {
        sender.push(&sender_join, "room:4", "shout", json!({ "n": n }));
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(other.sync());
    }
    assert_eq!(
        got.iter().map(offset_of).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let (latest_position, latest) = engine.handle().history_store().latest("room:4", 2).unwrap();
    assert_eq!(latest_position.unwrap().offset, 5);
    assert_eq!(latest.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
    assert!(engine.handle().history_store().remove("room:4").unwrap());
    engine.shutdown();
}

/// Publishes from two threads while clients join with a position a little
/// behind: each must receive every offset after its position exactly
/// once, in order, whether it came from the history or live.
#[test]
fn publishes_racing_recoveries_are_delivered_exactly_once() {
    let engine = start();
    let mut seed = client(&engine);
    let (_, reply) = seed.join("room:race", json!({}));
    let epoch = history_of(&reply)["epoch"].as_str().unwrap().to_owned();
    publish(&engine, "room:race", 1, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..2)
        .map(|_| {
            let handle = engine.handle();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    handle.broadcast("room:race", "msg", &json!({})).unwrap();
                    sent += 1;
                    if sent.is_multiple_of(4) {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            })
        })
        .collect();
    let mut joiners = Vec::new();
    for _ in 0..16 {
        let (position, _) = engine
            .handle()
            .history_store()
            .latest("room:race", 0)
            .unwrap();
        let since = position.unwrap().offset.saturating_sub(50);
        let mut joiner = client(&engine);
        let recover = json!({ "recover": { "epoch": epoch, "offset": since } });
        let (_, reply) = joiner.join("room:race", recover);
        assert_eq!(history_of(&reply)["recovered"], true, "{reply}");
        joiners.push((joiner, since));
    }
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let (top, _) = engine
        .handle()
        .history_store()
        .latest("room:race", 0)
        .unwrap();
    let top = top.unwrap().offset;
    for (mut joiner, since) in joiners {
        let mut offsets = Vec::new();
        while offsets.last() != Some(&top) {
            offsets.extend(joiner.sync().iter().map(offset_of));
        }
        let expected: Vec<u64> = (since + 1..=top).collect();
        assert_eq!(offsets.len(), expected.len(), "since {since}, top {top}");
        assert_eq!(offsets, expected);
    }
    engine.shutdown();
}

/// Missed publications that would not fit in half the connection's queue
/// are refused whole (as too many): never a slow-consumer close, which
/// would repeat on every rejoin.
#[test]
fn a_recovery_too_large_for_the_queue_is_refused_not_closed() {
    let engine = Channels::new()
        .phoenix(PATH, Endpoint::new(Anyone).channel("room:*", EchoRoom))
        .history("room:*", History::new().size(1000))
        .start(builder().max_queued_bytes(64 << 10))
        .expect("engine starts");
    let mut first = client(&engine);
    let (_, reply) = first.join("room:big", json!({}));
    let epoch = history_of(&reply)["epoch"].as_str().unwrap().to_owned();
    drop(first);
    let body = "x".repeat(4000);
    for n in 0..20 {
        engine
            .handle()
            .broadcast("room:big", "msg", &json!({ "n": n, "body": body }))
            .unwrap();
    }
    let mut again = client(&engine);
    let recover = json!({ "recover": { "epoch": epoch, "offset": 0 } });
    let (_, reply) = again.join("room:big", recover);
    let summary = history_of(&reply);
    assert_eq!(summary["recovered"], false, "{reply}");
    assert_eq!(summary["reason"], "too_many", "{reply}");
    // Still connected, and live from the top.
    engine
        .handle()
        .broadcast("room:big", "msg", &json!({}))
        .unwrap();
    let got = again.sync();
    assert_eq!(got.iter().map(offset_of).collect::<Vec<_>>(), [21]);
    engine.shutdown();
}
