use std::time::Duration;

use serde_json::value::RawValue;

use super::*;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

fn position(epoch: &str, offset: u64) -> StreamPosition {
    StreamPosition {
        epoch: epoch.into(),
        offset,
    }
}

fn publications(offsets: std::ops::RangeInclusive<u64>) -> Vec<Publication> {
    offsets
        .map(|offset| Publication {
            offset,
            event: "e".into(),
            payload: raw("{}"),
        })
        .collect()
}

#[test]
fn a_recovery_is_whole_or_refused_with_its_reason() {
    let top = || position("ep", 10);
    let all = |since: u64| publications(since + 1..=10);
    let decide = |since: StreamPosition, oldest: Option<u64>| {
        Recovery::decide(Some(&since), top(), oldest, all).outcome
    };
    assert_eq!(decide(position("ep", 7), Some(1)).unwrap().len(), 3);
    assert_eq!(decide(position("ep", 10), None).unwrap().len(), 0);
    assert_eq!(
        decide(position("other", 7), Some(1)).unwrap_err(),
        NotRecovered::Epoch
    );
    assert_eq!(
        decide(position("ep", 11), Some(1)).unwrap_err(),
        NotRecovered::Gone
    );
    // Offset 8 was trimmed: 8 to 10 are not all there.
    assert_eq!(
        decide(position("ep", 7), Some(9)).unwrap_err(),
        NotRecovered::Gone
    );
    assert_eq!(
        decide(position("ep", 7), None).unwrap_err(),
        NotRecovered::Gone
    );
    // More than the cap.
    let far = Recovery::decide(
        Some(&position("ep", 0)),
        position("ep", MAX_RECOVERED as u64 + 1),
        Some(1),
        |_| unreachable!("never read"),
    );
    assert_eq!(far.outcome.unwrap_err(), NotRecovered::TooMany);
    // A store that answers with a gap is not believed.
    let gappy = Recovery::decide(Some(&position("ep", 7)), top(), Some(1), |_| {
        let mut read = publications(8..=10);
        read.remove(1);
        read
    });
    assert_eq!(gappy.outcome.unwrap_err(), NotRecovered::Gone);
    // No request: nothing to recover, the top is still reported.
    let fresh = Recovery::decide(None, top(), Some(1), all);
    assert_eq!(fresh.top.unwrap().offset, 10);
    assert!(fresh.outcome.unwrap().is_empty());
}

#[test]
fn recovery_requests_are_read_strictly() {
    let asked = |json: &str| requested(&raw(json));
    assert_eq!(asked("{}"), Ok(None));
    assert_eq!(asked(r#"{"name":"ada"}"#), Ok(None));
    assert_eq!(asked(r#"{"recover":null}"#), Ok(None));
    assert_eq!(asked("[1,2]"), Ok(None));
    assert_eq!(asked("\"text\""), Ok(None));
    assert_eq!(
        asked(r#"{"recover":{"epoch":"ep","offset":7},"name":"ada"}"#),
        Ok(Some(position("ep", 7)))
    );
    for bad in [
        r#"{"recover":{"epoch":"ep","offset":-1}}"#,
        r#"{"recover":{"epoch":"ep","offset":"7"}}"#,
        r#"{"recover":{"epoch":"ep","offset":7.5}}"#,
        r#"{"recover":{"epoch":"ep","offset":18446744073709551616}}"#,
        r#"{"recover":{"epoch":1,"offset":7}}"#,
        r#"{"recover":{"offset":7}}"#,
        r#"{"recover":true}"#,
        r#"{"recover":["ep",7]}"#,
        r#"{"recover":{"epoch":"ep","offset":7},"recover":null}"#,
    ] {
        assert_eq!(asked(bad), Err(INVALID_RECOVER), "{bad}");
    }
    let long = format!(
        r#"{{"recover":{{"epoch":"{}","offset":1}}}}"#,
        "e".repeat(65)
    );
    assert_eq!(asked(&long), Err(INVALID_RECOVER));
}

#[test]
fn the_history_summary_goes_first_in_an_object_reply() {
    let top = position("ep", 4);
    let merged = |reply: &str, failed, asked| {
        reply_with_history(&raw(reply), Some(&top), failed, asked).map(|raw| raw.get().to_owned())
    };
    assert_eq!(
        merged("{}", None, true).unwrap(),
        r#"{"history":{"epoch":"ep","offset":4,"recovered":true}}"#
    );
    assert_eq!(
        merged(r#" { "user": "ada" }"#, Some(NotRecovered::Epoch), true).unwrap(),
        r#"{"history":{"epoch":"ep","offset":4,"recovered":false,"reason":"epoch"},"user": "ada" }"#
    );
    assert_eq!(
        merged("{}", None, false).unwrap(),
        r#"{"history":{"epoch":"ep","offset":4,"recovered":false}}"#
    );
    // Not an object: left as it is.
    assert!(merged("[1]", None, true).is_none());
    assert!(merged("null", None, true).is_none());
}

fn publish(store: &MemoryHistory, topic: &str, rule: History) {
    let publish = Publish {
        topic,
        rule,
        event: "e",
        payload: raw("{}"),
        exclude: None,
    };
    store.publish(publish).unwrap();
}

#[test]
fn the_memory_store_keeps_what_the_rule_says_and_forgets_idle_topics() {
    let store = MemoryHistory::new(16, 1 << 20);
    let rule = History::new().size(3);
    for _ in 0..5 {
        publish(&store, "t", rule);
    }
    let (top, latest) = store.latest("t", 10).unwrap();
    assert_eq!(top.unwrap().offset, 5);
    assert_eq!(
        latest.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let (_, latest) = store.latest("t", 2).unwrap();
    assert_eq!(latest.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);

    // A TTL (after the last publication) drops publications but keeps
    // the epoch and offset.
    let short = History::new().ttl(Duration::from_millis(1));
    publish(&store, "brief", short);
    std::thread::sleep(Duration::from_millis(5));
    store.sweep();
    let (top, latest) = store.latest("brief", 10).unwrap();
    assert_eq!(top.unwrap().offset, 1);
    assert!(latest.is_empty());

    // 16 topics at most (one per shard): the least recently published goes.
    let store = MemoryHistory::new(16, 1 << 20);
    for topic in 0..200 {
        publish(&store, &format!("topic:{topic}"), rule);
    }
    let kept = (0..200)
        .filter(|topic| {
            store
                .latest(&format!("topic:{topic}"), 0)
                .unwrap()
                .0
                .is_some()
        })
        .count();
    assert!(kept <= 16, "{kept} topics kept");
    assert!(
        store.latest("topic:199", 0).unwrap().0.is_some(),
        "the latest stays"
    );
    assert!(store.remove("topic:199").unwrap());
    assert!(!store.remove("topic:199").unwrap());
}

#[test]
fn the_memory_store_holds_at_most_its_bytes() {
    // 16 shards of 4 KiB each.
    let store = MemoryHistory::new(1000, 64 << 10);
    let rule = History::new().size(1000);
    fn big(topic: &str, rule: History) -> Publish<'_> {
        Publish {
            topic,
            rule,
            event: "e",
            payload: raw(&format!("\"{}\"", "x".repeat(1000))),
            exclude: None,
        }
    }
    for _ in 0..50 {
        store.publish(big("one", rule)).unwrap();
    }
    let (top, kept) = store.latest("one", 1000).unwrap();
    assert_eq!(top.unwrap().offset, 50, "offsets go on");
    assert!(kept.len() <= 4, "{} kept", kept.len());
    assert_eq!(kept.last().unwrap().offset, 50, "the newest stays");
    // Another topic of the same shard takes the room of the idle one.
    let shard_mate = (0..1000)
        .map(|n| format!("t{n}"))
        .find(|topic| store.shard_index(topic) == store.shard_index("one"))
        .unwrap();
    for _ in 0..4 {
        store.publish(big(&shard_mate, rule)).unwrap();
    }
    let (_, kept) = store.latest("one", 1000).unwrap();
    assert!(kept.is_empty(), "{} kept", kept.len());
    let (_, kept) = store.latest(&shard_mate, 1000).unwrap();
    assert!(!kept.is_empty());
}

#[test]
fn publish_keys_are_claimed_once_until_they_expire() {
    let store = MemoryHistory::new(16, 1 << 20);
    let ttl = Duration::from_millis(20);
    assert!(store.claim("order-1", ttl).unwrap());
    assert!(!store.claim("order-1", ttl).unwrap());
    assert!(store.claim("order-2", ttl).unwrap());
    std::thread::sleep(Duration::from_millis(30));
    store.sweep();
    assert!(store.claim("order-1", ttl).unwrap());
}

#[test]
fn rules_match_by_pattern_first_one_wins() {
    let mut rules = HistoryRules::default();
    assert!(rules.is_empty());
    rules.push("room:private:*", None);
    assert!(rules.is_empty());
    rules.push("room:vip", Some(History::new().size(5)));
    rules.push("room:*", Some(History::new().size(50)));
    assert!(rules.rule_for("room:private:1").is_none());
    assert_eq!(rules.rule_for("room:vip").unwrap().max_size(), 5);
    assert_eq!(rules.rule_for("room:1").unwrap().max_size(), 50);
    assert!(rules.rule_for("news").is_none());
    assert_eq!(History::new().size(0).max_size(), 1);
}
