//! The topic index against a naive model, single-threaded and with loops
//! on real threads.

use std::{collections::HashMap, sync::Arc, thread};

use proptest::prelude::*;

use super::*;
use crate::protocol::Encoding;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sub(WireProtocol);

impl Subscription for Sub {
    fn encoding(&self) -> Encoding {
        Encoding::plain(self.0)
    }
}

const PHX: WireProtocol = WireProtocol::PhoenixV2;
const AMBER: WireProtocol = WireProtocol::Amber;

#[test]
fn first_and_last_subscribers_set_and_clear_the_loop_bit() {
    let registry = Arc::new(TopicRegistry::default());
    let mut loop0 = LoopTopics::new(0, Arc::clone(&registry));
    let mut loop3 = LoopTopics::new(3, Arc::clone(&registry));
    loop0.subscribe("room:1", ConnId::new(1, 0), Sub(PHX));
    loop0.subscribe("room:1", ConnId::new(2, 0), Sub(PHX));
    loop3.subscribe("room:1", ConnId::new(1, 0), Sub(AMBER));
    let entry = registry.lookup("room:1").unwrap();
    assert_eq!(entry.loops, [0, 0b1, 0b1000, 0, 0, 0]);
    assert_eq!(entry.subscribers, 3);
    assert_eq!(entry.all_loops(), 0b1001);

    assert_eq!(
        loop0.unsubscribe("room:1", ConnId::new(1, 0)),
        Some(Sub(PHX))
    );
    assert_eq!(
        registry.lookup("room:1").unwrap().loops,
        [0, 0b1, 0b1000, 0, 0, 0]
    );
    loop0.unsubscribe("room:1", ConnId::new(2, 0));
    assert_eq!(
        registry.lookup("room:1").unwrap().loops,
        [0, 0, 0b1000, 0, 0, 0]
    );
    loop3.unsubscribe("room:1", ConnId::new(1, 0));
    assert!(
        registry.lookup("room:1").is_none(),
        "empty topics are forgotten"
    );
    assert_eq!(registry.topic_count(), 0);
    assert_eq!(loop3.local().len("room:1"), 0);
}

#[test]
fn resubscribing_replaces_without_double_counting() {
    let registry = Arc::new(TopicRegistry::default());
    let mut topics = LoopTopics::new(1, Arc::clone(&registry));
    assert_eq!(topics.subscribe("t", ConnId::new(7, 0), Sub(PHX)), None);
    assert_eq!(
        topics.subscribe("t", ConnId::new(7, 0), Sub(PHX)),
        Some(Sub(PHX))
    );
    assert_eq!(registry.subscriber_count("t"), 1);
    // Same connection, other protocol: the bits move.
    assert_eq!(
        topics.subscribe("t", ConnId::new(7, 0), Sub(AMBER)),
        Some(Sub(PHX))
    );
    let entry = registry.lookup("t").unwrap();
    assert_eq!((entry.loops, entry.subscribers), ([0, 0, 0b10, 0, 0, 0], 1));
    assert_eq!(topics.unsubscribe("t", ConnId::new(99, 0)), None);
    assert_eq!(topics.local().subscribers("t").count(), 1);
}

/// One operation of the model test.
#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        loop_index: usize,
        conn: u64,
        topic: usize,
        amber: bool,
    },
    Unsubscribe {
        loop_index: usize,
        conn: u64,
        topic: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..6u64, 0..3usize, any::<bool>()).prop_map(
            |(loop_index, conn, topic, amber)| Op::Subscribe {
                loop_index,
                conn,
                topic,
                amber
            }
        ),
        (0..3usize, 0..6u64, 0..3usize).prop_map(|(loop_index, conn, topic)| Op::Unsubscribe {
            loop_index,
            conn,
            topic
        }),
    ]
}

proptest! {
    /// After any sequence of operations on three loops, the registry says
    /// exactly what the naive model of all subscriptions says.
    #[test]
    fn registry_matches_a_naive_model(ops in proptest::collection::vec(op(), 0..60)) {
        let registry = Arc::new(TopicRegistry::default());
        let mut loops: Vec<_> = (0..3).map(|i| LoopTopics::new(i, Arc::clone(&registry))).collect();
        let mut model: HashMap<(usize, u64, usize), WireProtocol> = HashMap::new();
        let topic_name = |t: usize| format!("topic:{t}");
        for op in ops {
            match op {
                Op::Subscribe { loop_index, conn, topic, amber } => {
                    let protocol = if amber { AMBER } else { PHX };
                    loops[loop_index].subscribe(&topic_name(topic), ConnId::from_bits(conn), Sub(protocol));
                    model.insert((loop_index, conn, topic), protocol);
                }
                Op::Unsubscribe { loop_index, conn, topic } => {
                    loops[loop_index].unsubscribe(&topic_name(topic), ConnId::from_bits(conn));
                    model.remove(&(loop_index, conn, topic));
                }
            }
        }
        for topic in 0..3 {
            let mut expected = TopicEntry::default();
            for (&(loop_index, _, t), protocol) in &model {
                if t == topic {
                    expected.subscribers += 1;
                    expected.loops[protocol.index()] |= 1 << loop_index;
                }
            }
            let actual = registry.lookup(&topic_name(topic));
            if expected.subscribers == 0 {
                prop_assert_eq!(actual, None);
            } else {
                prop_assert_eq!(actual, Some(expected));
            }
        }
    }
}

#[test]
fn loops_on_threads_keep_the_registry_consistent() {
    let registry = Arc::new(TopicRegistry::default());
    let threads: Vec<_> = (0..4)
        .map(|loop_index| {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                let mut topics = LoopTopics::new(loop_index, registry);
                for round in 0..2000u64 {
                    let topic = format!("t{}", round % 5);
                    topics.subscribe(&topic, ConnId::from_bits(round % 7), Sub(PHX));
                    if round % 3 == 0 {
                        topics.unsubscribe(&topic, ConnId::from_bits(round % 7));
                    }
                }
                // Leave exactly one subscriber on "t0" per loop.
                for round in 0..7 {
                    for t in 0..5 {
                        topics.unsubscribe(&format!("t{t}"), ConnId::from_bits(round));
                    }
                }
                topics.subscribe("t0", ConnId::from_bits(1), Sub(PHX));
                topics
            })
        })
        .collect();
    let loops: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        registry.lookup("t0"),
        Some(TopicEntry {
            loops: [0, 0b1111, 0, 0, 0, 0],
            subscribers: 4
        })
    );
    assert_eq!(registry.topic_count(), 1);
    assert_eq!(loops.iter().map(|l| l.local().len("t0")).sum::<usize>(), 4);
}
