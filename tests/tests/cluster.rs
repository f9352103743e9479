//! Several herald nodes joined through real brokers: `redis-server` and
//! `nats-server` processes started here on free ports (`tests/run.sh`
//! installs them from Debian's packages).
//!
//! Each scenario runs once per broker: cross-node broadcast exactly once,
//! `broadcast_from` across nodes, interest moving the bus subscription, a
//! broker restart in the middle of a stream, and presence across nodes (a
//! node killed with SIGKILL, a broker restart). All waits are bounded and
//! wait on observable events (a message, a counter), never on sleeps alone.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use herald::{
    Reject, Request, Server,
    channels::{
        Channel, ChannelContext, Channels, Endpoint, Engine, History, JoinResult, Reply, Socket,
    },
    cluster::{Broker, Cluster, ClusterStats},
};
use herald_tests::{phoenix::Client, server::wait_until};
use serde_json::{Value, json, value::RawValue};

const WAIT: Duration = Duration::from_secs(20);
const PATH: &str = "/socket/websocket";
/// How often the nodes count their topics for each other.
const CENSUS_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Nats,
}

/// A broker process on a fixed port, restartable.
struct BrokerProcess {
    kind: Kind,
    port: u16,
    child: Option<Child>,
}

impl BrokerProcess {
    fn start(kind: Kind) -> Self {
        let mut broker = Self {
            kind,
            port: free_port(),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = match self.kind {
            Kind::Redis => {
                let mut command = Command::new(find_binary("redis-server"));
                command.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                command
            }
            Kind::Nats => {
                let mut command = Command::new(find_binary("nats-server"));
                command.args(["-a", "127.0.0.1", "-p", &port]);
                command
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "start {:?} (install it: see tests/run.sh): {err}",
                    self.kind
                )
            });
        self.child = Some(child);
        let addr = self.addr();
        assert!(
            wait_until(WAIT, || TcpStream::connect(addr).is_ok()),
            "{:?} did not start listening on {addr}",
            self.kind
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn broker(&self) -> Broker {
        match self.kind {
            Kind::Redis => Broker::Redis {
                url: format!("redis://127.0.0.1:{}/", self.port),
            },
            Kind::Nats => Broker::Nats {
                url: format!("nats://127.0.0.1:{}", self.port),
            },
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// The binary on PATH, or in Debian's sbin directories.
fn find_binary(name: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .map_or_else(|| name.to_owned(), |found| found.display().to_string())
}

/// Everyone may connect; `?user=NAME` names the socket, for
/// `disconnect`.
struct Anyone;

impl Socket for Anyone {
    type Assigns = Option<String>;

    fn connect(&self, request: &Request) -> Result<Option<String>, Reject> {
        Ok(request.query_param("user").map(|user| user.into_owned()))
    }

    fn id(&self, user: &Option<String>) -> Option<String> {
        user.clone()
    }
}

/// `room:*`: rebroadcast. `quiet:*`: broadcast_from.
struct Room {
    include_sender: bool,
}

impl Channel<Option<String>> for Room {
    fn handle_joined(
        &self,
        _: &mut ChannelContext<'_, '_, Option<String>>,
        _: &RawValue,
    ) -> JoinResult {
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        ctx: &mut ChannelContext<'_, '_, Option<String>>,
        event: &str,
        payload: &RawValue,
    ) {
        if self.include_sender {
            ctx.rebroadcast(event, payload);
        } else {
            ctx.broadcast_from(event, payload);
        }
    }
}

/// `histp:*`: pushes `welcome` with the topic to each client it lets in.
struct Greeter;

impl Channel<Option<String>> for Greeter {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, Option<String>>,
        _: &RawValue,
    ) -> JoinResult {
        let topic = ctx.topic().to_owned();
        ctx.push("welcome", &json!({ "topic": topic }));
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        _: &mut ChannelContext<'_, '_, Option<String>>,
        _: &str,
        _: &RawValue,
    ) {
    }
}

/// `lobby:*`: tracks each member's presence under the join's `name`.
struct Lobby;

impl Channel<Option<String>> for Lobby {
    fn handle_joined(
        &self,
        ctx: &mut ChannelContext<'_, '_, Option<String>>,
        payload: &RawValue,
    ) -> JoinResult {
        let payload: Value = serde_json::from_str(payload.get()).unwrap_or_default();
        let name = payload["name"].as_str().unwrap_or("anonymous").to_owned();
        ctx.track(&name, &json!({ "device": payload["device"] }))
            .map_err(|err| Reply::reason(&err.to_string()))?;
        Ok(Reply::empty())
    }

    fn handle_message(
        &self,
        _: &mut ChannelContext<'_, '_, Option<String>>,
        _: &str,
        _: &RawValue,
    ) {
    }
}

/// A node: its engine, and its link to the others (for the bus counters).
struct Node {
    engine: Engine,
    cluster: Cluster,
}

impl std::ops::Deref for Node {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

fn node(broker: &BrokerProcess) -> Node {
    node_with(broker, Duration::from_secs(30))
}

/// A node whose peers are taken for gone after `down_after` of silence.
fn node_with(broker: &BrokerProcess, down_after: Duration) -> Node {
    let endpoint = Endpoint::new(Anyone)
        .channel(
            "room:*",
            Room {
                include_sender: true,
            },
        )
        .channel(
            "quiet:*",
            Room {
                include_sender: false,
            },
        )
        .channel("lobby:*", Lobby)
        .channel(
            "hist:*",
            Room {
                include_sender: true,
            },
        )
        .channel(
            "histq:*",
            Room {
                include_sender: false,
            },
        )
        .channel("histp:*", Greeter);
    let cluster = Cluster::new(broker.broker());
    let builder = Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .loops(1)
        .pin_cores(false);
    let mut channels = Channels::new()
        .phoenix(PATH, endpoint)
        .presence_down_after(down_after)
        .census_every(CENSUS_EVERY);
    // NATS keeps no history (see `Cluster::history_store`).
    if let Some(store) = cluster.history_store() {
        let rule = History::new().size(1000).ttl(Duration::from_secs(60));
        channels = channels
            .history("hist:*", rule)
            .history("histq:*", rule)
            .history("histp:*", rule)
            .history_store(store);
    }
    let engine = channels
        .start(cluster.attach(builder))
        .expect("start a node");
    Node { engine, cluster }
}

fn stats(node: &Node) -> ClusterStats {
    node.cluster
        .stats()
        .expect("a node with a broker has a bus")
}

fn client(engine: &Engine, topic: &str) -> (Client, String) {
    let mut client = Client::connect(engine.local_addr(), PATH, "").expect("connect");
    let (join_ref, reply) = client.join(topic, json!({}));
    assert_eq!(reply["status"], "ok", "{reply}");
    (client, join_ref)
}

/// Waits until every node's bus has subscribed to what its clients joined.
fn wait_subscribed(nodes: &[&Node], topics: u64) {
    for node in nodes {
        assert!(
            wait_until(WAIT, || {
                let stats = stats(node);
                stats.connected == 1 && stats.subscriptions >= topics
            }),
            "bus never subscribed: {:?}",
            stats(node)
        );
    }
}

/// The next broadcast a client receives: `(event, payload)`.
fn next_broadcast(client: &mut Client) -> (String, Value) {
    loop {
        let message = client.recv();
        if message[0].is_null() && message[1].is_null() {
            return (
                message[3].as_str().unwrap_or_default().to_owned(),
                message[4].clone(),
            );
        }
    }
}

fn cross_node_broadcasts_arrive_once_everywhere(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let (a, b, c) = (node(&broker), node(&broker), node(&broker));
    let (mut on_a, _) = client(&a, "room:x");
    let (mut on_b, _) = client(&b, "room:x");
    let (mut on_c, _) = client(&c, "room:x");
    wait_subscribed(&[&a, &b, &c], 1);

    a.handle()
        .broadcast("room:x", "new_msg", &json!({"n": 1}))
        .unwrap();
    assert!(
        wait_until(WAIT, || stats(&b).received >= 1 && stats(&c).received >= 1),
        "the bus did not carry n:1: a {:?}, b {:?}, c {:?}",
        stats(&a),
        stats(&b),
        stats(&c)
    );
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(next_broadcast(client), ("new_msg".into(), json!({"n": 1})));
    }
    b.handle()
        .broadcast("room:x", "new_msg", &json!({"n": 2}))
        .unwrap();
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        // A duplicate of n:1 would come before n:2.
        assert_eq!(next_broadcast(client), ("new_msg".into(), json!({"n": 2})));
    }
    // A node without subscribers still publishes to the others.
    let lonely = node(&broker);
    // Until its bus is connected, a node's broadcasts for others are
    // dropped (and counted): wait for it.
    assert!(wait_until(WAIT, || stats(&lonely).connected == 1));
    lonely
        .handle()
        .broadcast("room:x", "new_msg", &json!({"n": 3}))
        .unwrap();
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(next_broadcast(client), ("new_msg".into(), json!({"n": 3})));
    }
    assert_eq!(stats(&a).decode_errors, 0);
    assert!(stats(&b).received >= 2, "{:?}", stats(&b));
}

fn broadcast_from_excludes_the_sender_across_nodes(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let (a, b) = (node(&broker), node(&broker));
    let (mut sender, join_ref) = client(&a, "quiet:1");
    let (mut neighbour, _) = client(&a, "quiet:1");
    let (mut remote, remote_ref) = client(&b, "quiet:1");
    wait_subscribed(&[&a, &b], 1);

    sender.push(&join_ref, "quiet:1", "new_msg", json!({"from": "a"}));
    assert_eq!(next_broadcast(&mut neighbour).1, json!({"from": "a"}));
    assert_eq!(next_broadcast(&mut remote).1, json!({"from": "a"}));
    // The sender's next broadcast is the remote one: it never got its own,
    // neither locally nor back through the bus.
    remote.push(&remote_ref, "quiet:1", "new_msg", json!({"from": "b"}));
    assert_eq!(next_broadcast(&mut sender).1, json!({"from": "b"}));
    assert_eq!(next_broadcast(&mut neighbour).1, json!({"from": "b"}));
}

fn interest_moves_the_bus_subscription(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker);
    assert!(wait_until(WAIT, || stats(&a).connected == 1));
    assert_eq!(
        stats(&a).subscriptions,
        0,
        "no subscribers, no bus subscription"
    );

    let (mut first, first_ref) = client(&a, "room:moving");
    assert!(wait_until(WAIT, || stats(&a).subscriptions == 1));
    if kind == Kind::Redis {
        assert!(wait_until(WAIT, || redis_numsub(
            broker.addr(),
            "herald:room:moving"
        ) == 1));
    }
    let (second, _) = client(&a, "room:moving");
    let (reply, _) = {
        let msg_ref = first.next_ref();
        first.send(
            Some(&first_ref),
            Some(&msg_ref),
            "room:moving",
            "phx_leave",
            json!({}),
        );
        first.reply_to(&msg_ref)
    };
    assert_eq!(reply["status"], "ok");
    // One subscriber left: still subscribed.
    assert_eq!(stats(&a).subscriptions, 1);
    drop(second);
    assert!(
        wait_until(WAIT, || stats(&a).subscriptions == 0),
        "the last leave must unsubscribe: {:?}",
        stats(&a)
    );
    if kind == Kind::Redis {
        assert!(wait_until(WAIT, || redis_numsub(
            broker.addr(),
            "herald:room:moving"
        ) == 0));
    }
}

/// `PUBSUB NUMSUB channel` over RESP: how many connections subscribe.
fn redis_numsub(addr: SocketAddr, channel: &str) -> i64 {
    let mut stream = TcpStream::connect(addr).expect("connect to redis");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let command = format!(
        "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0; 256];
    // *2\r\n$N\r\nchannel\r\n:count\r\n
    while !reply.ends_with(b"\r\n") || !reply.contains(&b':') {
        let n = stream.read(&mut buf).expect("read redis reply");
        assert!(n > 0, "redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    let count = text.rsplit(':').next().unwrap_or_default().trim();
    count.parse().unwrap_or(-1)
}

fn a_broker_restart_mid_stream_is_survived(kind: Kind) {
    let mut broker = BrokerProcess::start(kind);
    let (a, b) = (node(&broker), node(&broker));
    let (mut local, _) = client(&a, "room:stream");
    let (mut remote, _) = client(&b, "room:stream");
    wait_subscribed(&[&a, &b], 1);

    // A publisher on node A, one message every 5 ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let latest = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (handle, stop, latest) = (a.handle(), Arc::clone(&stop), Arc::clone(&latest));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                handle
                    .broadcast("room:stream", "tick", &json!({"n": n}))
                    .unwrap();
                latest.store(n, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    let seq = |(_, payload): (String, Value)| payload["n"].as_u64().expect("n");
    // The stream flows across nodes.
    let first_remote = seq(next_broadcast(&mut remote));
    let _ = seq(next_broadcast(&mut remote));

    broker.stop();
    assert!(
        wait_until(WAIT, || stats(&a).connected == 0
            && stats(&a).publishes_dropped > 0),
        "node A never noticed the outage: {:?}",
        stats(&a)
    );
    broker.spawn();
    assert!(
        wait_until(WAIT, || {
            let (a, b) = (stats(&a), stats(&b));
            a.connected == 1 && b.connected == 1 && b.subscriptions >= 1
        }),
        "nodes did not reconnect: {:?} / {:?}",
        stats(&a),
        stats(&b)
    );
    // Cross-node delivery resumes: the remote client gets messages sent
    // after the reconnection (some sent during the outage were dropped, and
    // counted). Its reads time out (and fail the test) if none come.
    let mark = latest.load(Ordering::Relaxed);
    let mut last_remote = first_remote;
    while last_remote <= mark {
        let n = seq(next_broadcast(&mut remote));
        assert!(
            n > last_remote,
            "remote messages out of order: {n} after {last_remote}"
        );
        last_remote = n;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("publisher thread");
    // Local delivery never stopped: the local client got every message in
    // order, the outage included.
    for expected in 0..sent {
        assert_eq!(
            seq(next_broadcast(&mut local)),
            expected,
            "a local message was lost"
        );
    }
    let a_stats = stats(&a);
    assert!(a_stats.publishes_dropped > 0, "{a_stats:?}");
    if kind == Kind::Redis {
        assert!(
            a_stats.reconnects >= 1 && stats(&b).reconnects >= 1,
            "{a_stats:?}"
        );
    }
}

fn disconnecting_a_socket_id_reaches_every_node(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let (a, b) = (node(&broker), node(&broker));
    let mut ada = Client::connect(b.local_addr(), PATH, "user=ada").expect("connect");
    let (mut bystander, _) = client(&b, "room:d");
    // Every node listens to the control channel from the moment it
    // connects, before it subscribes to its topics.
    wait_subscribed(&[&b], 1);
    assert!(wait_until(WAIT, || stats(&a).connected == 1));
    a.handle().disconnect("ada");
    loop {
        match ada.ws.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Ok(_) => {}
            Err(err) => panic!("expected close 1001 on the other node, got {err}"),
        }
    }
    // Nobody else was touched.
    b.handle()
        .broadcast("room:d", "new_msg", &json!({"still": "here"}))
        .unwrap();
    assert_eq!(next_broadcast(&mut bystander).1, json!({"still": "here"}));
}

fn topic_counts_and_unsubscribes_span_the_nodes(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let (a, b) = (node(&broker), node(&broker));
    let (_here, _) = client(&a, "room:c");
    assert!(wait_until(WAIT, || stats(&a).connected == 1
        && stats(&b).connected == 1));
    // Two members join on B; A's count follows within a census round or
    // two (printed: the figure of the cluster-wide count's freshness).
    let joined = std::time::Instant::now();
    let mut ada = Client::connect(b.local_addr(), PATH, "user=ada").expect("connect");
    let (join_ref, reply) = ada.join("room:c", json!({}));
    assert_eq!(reply["status"], "ok");
    let (_bob, _) = client(&b, "room:c");
    assert!(wait_until(WAIT, || a
        .handle()
        .cluster_subscriber_count("room:c")
        == 3));
    eprintln!(
        "{kind:?}: B's joins counted at A after {:?}",
        joined.elapsed()
    );
    assert_eq!(a.handle().subscriber_count("room:c"), 1, "A's own");
    assert!(
        a.handle()
            .cluster_topics()
            .contains(&("room:c".to_owned(), 3))
    );
    let nodes = a.handle().nodes();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(nodes[1].connections, 2, "{nodes:?}");

    // An unsubscribe made on A reaches ada's connection on B.
    a.handle().unsubscribe("ada", "room:c");
    let closed = ada.recv_event("phx_close");
    assert_eq!(closed[0], join_ref);
    assert!(wait_until(WAIT, || a
        .handle()
        .cluster_subscriber_count("room:c")
        == 2));
}

fn a_node_starts_without_its_broker_and_joins_later(kind: Kind) {
    let mut broker = BrokerProcess::start(kind);
    broker.stop();
    let a = node(&broker);
    // Local traffic works with no broker at all.
    let (mut local, _) = client(&a, "room:early");
    a.handle()
        .broadcast("room:early", "new_msg", &json!({"n": 1}))
        .unwrap();
    assert_eq!(next_broadcast(&mut local).1, json!({"n": 1}));
    assert_eq!(stats(&a).connected, 0);
    broker.spawn();
    let b = node(&broker);
    let (mut remote, _) = client(&b, "room:early");
    wait_subscribed(&[&a, &b], 1);
    a.handle()
        .broadcast("room:early", "new_msg", &json!({"n": 2}))
        .unwrap();
    assert_eq!(next_broadcast(&mut remote).1, json!({"n": 2}));
}

/// A member of `lobby:1` on `addr`, named `name`.
fn member(addr: SocketAddr, name: &str) -> Client {
    let mut client = Client::connect(addr, PATH, "").expect("connect");
    let (_, reply) = client.join("lobby:1", json!({ "name": name }));
    assert_eq!(reply["status"], "ok", "{reply}");
    client
}

/// A client's view of `lobby:1`'s keys, kept from its presence messages.
struct View {
    keys: std::collections::BTreeMap<String, usize>,
}

impl View {
    fn new() -> Self {
        Self {
            keys: Default::default(),
        }
    }

    /// Reads messages until `done(keys)` holds.
    fn until(&mut self, client: &mut Client, done: impl Fn(&[&str]) -> bool) {
        loop {
            let names: Vec<&str> = self.keys.keys().map(String::as_str).collect();
            if done(&names) {
                return;
            }
            let message = client.recv();
            let payload = &message[4];
            match message[3].as_str() {
                Some("presence_state") => {
                    self.keys.clear();
                    self.add(payload);
                }
                Some("presence_diff") => {
                    self.add(&payload["joins"]);
                    self.remove(&payload["leaves"]);
                }
                _ => {}
            }
        }
    }

    fn add(&mut self, presences: &Value) {
        for (key, entry) in presences.as_object().into_iter().flatten() {
            *self.keys.entry(key.clone()).or_default() +=
                entry["metas"].as_array().map_or(0, Vec::len);
        }
    }

    fn remove(&mut self, presences: &Value) {
        for (key, entry) in presences.as_object().into_iter().flatten() {
            let gone = entry["metas"].as_array().map_or(0, Vec::len);
            if let Some(count) = self.keys.get_mut(key) {
                *count = count.saturating_sub(gone);
                if *count == 0 {
                    self.keys.remove(key);
                }
            }
        }
    }
}

fn presence_is_shared_between_nodes(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let a = node(&broker);
    let b = node(&broker);
    let mut ada = member(a.local_addr(), "ada");
    let mut bob = member(b.local_addr(), "bob");
    let mut ada_view = View::new();
    let mut bob_view = View::new();
    ada_view.until(&mut ada, |keys| keys == ["ada", "bob"]);
    bob_view.until(&mut bob, |keys| keys == ["ada", "bob"]);
    // Both nodes list both, and a later joiner's state has both.
    assert!(wait_until(WAIT, || a.handle().presence_count("lobby:1") == 2));
    assert!(wait_until(WAIT, || b.handle().presence_count("lobby:1") == 2));
    let mut carol = member(b.local_addr(), "carol");
    View::new().until(&mut carol, |keys| keys == ["ada", "bob", "carol"]);
    // A leave on one node reaches the other's clients.
    drop(carol);
    ada_view.until(&mut ada, |keys| keys == ["ada", "bob"]);
    drop(ada);
    bob_view.until(&mut bob, |keys| keys == ["bob"]);
}

fn a_killed_nodes_presences_leave_within_the_down_period(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    let down_after = Duration::from_millis(1500);
    let survivor = node_with(&broker, down_after);
    let url = match broker.broker() {
        Broker::Redis { url } | Broker::Nats { url } => url,
        _ => unreachable!("a broker process has a URL"),
    };
    let mut doomed = Command::new(env!("CARGO_BIN_EXE_channels-test-server"))
        .args(["--broker", &url, "--presence-down-ms", "1500"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a second node");
    let mut line = String::new();
    let stdout = doomed.stdout.as_mut().expect("piped stdout");
    let mut byte = [0u8];
    while !line.ends_with('\n') {
        stdout
            .read_exact(&mut byte)
            .expect("the node says where it listens");
        line.push(byte[0] as char);
    }
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    // The test server's lobby keys members by their `user` connect param.
    let mut ada = Client::connect(addr, PATH, "token=secret&user=ada").expect("connect");
    let (_, reply) = ada.join("lobby:1", json!({ "device": "phone" }));
    assert_eq!(reply["status"], "ok", "{reply}");
    let mut bob = member(survivor.local_addr(), "bob");
    let mut view = View::new();
    view.until(&mut bob, |keys| keys == ["ada", "bob"]);
    // kill -9: no goodbye.
    doomed.kill().expect("kill the node");
    let killed_at = std::time::Instant::now();
    let _ = doomed.wait();
    view.until(&mut bob, |keys| keys == ["bob"]);
    let took = killed_at.elapsed();
    assert!(
        took < down_after + Duration::from_secs(2),
        "the killed node's presence left after {took:?}"
    );
    drop(ada);
}

fn a_node_that_stops_cleanly_leaves_at_once(kind: Kind) {
    let broker = BrokerProcess::start(kind);
    // The default down period (30 s): only the goodbye can be this fast.
    let leaving = node(&broker);
    let staying = node(&broker);
    let _ada = member(leaving.local_addr(), "ada");
    let mut bob = member(staying.local_addr(), "bob");
    let mut view = View::new();
    view.until(&mut bob, |keys| keys == ["ada", "bob"]);
    let stopped_at = std::time::Instant::now();
    let Node { engine, .. } = leaving;
    let stopping = std::thread::spawn(move || engine.shutdown());
    view.until(&mut bob, |keys| keys == ["bob"]);
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(5), "ada left after {took:?}");
    stopping.join().unwrap();
}

fn presences_converge_after_a_broker_restart(kind: Kind) {
    let mut broker = BrokerProcess::start(kind);
    let a = node(&broker);
    let b = node(&broker);
    wait_subscribed(&[&a, &b], 0);
    let _ada = member(a.local_addr(), "ada");
    let mut bob = member(b.local_addr(), "bob");
    let mut view = View::new();
    view.until(&mut bob, |keys| keys == ["ada", "bob"]);
    // The broker goes away; carol joins node a meanwhile (its delta is
    // lost), then the broker comes back.
    broker.stop();
    assert!(wait_until(WAIT, || stats(&a).connected == 0));
    let _carol = member(a.local_addr(), "carol");
    broker.spawn();
    view.until(&mut bob, |keys| keys == ["ada", "bob", "carol"]);
    assert!(wait_until(WAIT, || b.handle().presence_count("lobby:1") == 3));
}

macro_rules! per_broker {
    ($($scenario:ident),* $(,)?) => {
        mod redis {
            $( #[test] fn $scenario() { super::$scenario(super::Kind::Redis) } )*
        }
        mod nats {
            $( #[test] fn $scenario() { super::$scenario(super::Kind::Nats) } )*
        }
    };
}

per_broker!(
    cross_node_broadcasts_arrive_once_everywhere,
    broadcast_from_excludes_the_sender_across_nodes,
    interest_moves_the_bus_subscription,
    a_broker_restart_mid_stream_is_survived,
    disconnecting_a_socket_id_reaches_every_node,
    topic_counts_and_unsubscribes_span_the_nodes,
    a_node_starts_without_its_broker_and_joins_later,
    presence_is_shared_between_nodes,
    a_killed_nodes_presences_leave_within_the_down_period,
    a_node_that_stops_cleanly_leaves_at_once,
    presences_converge_after_a_broker_restart,
);

// ---- History on Redis ----------------------------------------------------------

/// The next broadcast carrying an offset: `(offset, payload)`.
fn next_with_offset(client: &mut Client) -> (u64, Value) {
    loop {
        let message = client.recv();
        let offset = message[1].as_str().and_then(|r| r.strip_prefix('@'));
        if let (true, Some(offset)) = (message[0].is_null(), offset) {
            return (offset.parse().expect("an offset"), message[4].clone());
        }
    }
}

/// Joins `topic` with `payload`; returns the join ref and the reply's
/// `history` summary.
fn join_with(engine: &Engine, topic: &str, payload: Value) -> (Client, String, Value) {
    let mut client = Client::connect(engine.local_addr(), PATH, "").expect("connect");
    let (join_ref, reply) = client.join(topic, payload);
    assert_eq!(reply["status"], "ok", "{reply}");
    let summary = reply["response"]["history"].clone();
    (client, join_ref, summary)
}

fn publish_n(engine: &Engine, topic: &str, from: u64, to: u64) {
    for n in from..=to {
        engine
            .handle()
            .broadcast(topic, "msg", &json!({ "n": n }))
            .unwrap();
    }
}

/// Sends `PUBLISH channel message` to Redis at `addr`.
fn redis_publish(addr: SocketAddr, channel: &str, message: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect to redis");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut command = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        message.len()
    )
    .into_bytes();
    command.extend_from_slice(message);
    command.extend_from_slice(b"\r\n");
    stream.write_all(&command).unwrap();
    let mut reply = [0; 64];
    let n = stream.read(&mut reply).expect("read redis reply");
    assert_eq!(reply.first(), Some(&b':'), "{:?}", &reply[..n]);
}

mod redis_history {
    use herald::cluster::{Content, Envelope};

    use super::*;

    /// Joins answered later (the Redis store) keep their own follow-ups:
    /// each client's `welcome` push follows its own join's reply.
    #[test]
    fn joins_answered_later_keep_their_own_pushes() {
        let broker = BrokerProcess::start(Kind::Redis);
        let a = node(&broker);
        let mut client = Client::connect(a.local_addr(), PATH, "").expect("connect");
        let topics = ["histp:1", "histp:2", "histp:3"];
        // All at once, as the phoenix client rejoins after a reconnect.
        for (n, topic) in topics.iter().enumerate() {
            let join_ref = (n + 1).to_string();
            client.send(
                Some(&join_ref),
                Some(&join_ref),
                topic,
                "phx_join",
                json!({}),
            );
        }
        let mut replied = Vec::new();
        let mut welcomed = Vec::new();
        while welcomed.len() < topics.len() {
            let message = client.recv();
            let topic = message[2].as_str().unwrap().to_owned();
            match message[3].as_str().unwrap() {
                "phx_reply" => {
                    assert_eq!(message[4]["status"], "ok", "{message}");
                    replied.push(topic);
                }
                "welcome" => {
                    assert!(
                        replied.contains(&topic),
                        "welcome before its reply: {message}"
                    );
                    assert_eq!(message[4]["topic"], topic.as_str(), "{message}");
                    welcomed.push(topic);
                }
                _ => {}
            }
        }
        welcomed.sort();
        assert_eq!(welcomed, topics);
    }

    /// A publication that never reached the node (here: offset 2 is
    /// skipped on the wire) errs the channel, and the client's rejoin
    /// recovers from the history.
    #[test]
    fn a_gap_in_the_stream_errs_the_channel_so_the_client_recovers() {
        let broker = BrokerProcess::start(Kind::Redis);
        let a = node(&broker);
        let (mut client, join_ref, summary) = join_with(&a, "hist:gap", json!({}));
        let epoch = summary["epoch"].as_str().unwrap().to_owned();
        wait_subscribed(&[&a], 1);
        publish_n(&a, "hist:gap", 1, 1);
        assert_eq!(next_with_offset(&mut client).0, 1);
        // Offset 3 of the same stream, as if 2 had been lost on the way.
        let envelope = Envelope {
            origin: 42,
            topic: "hist:gap".into(),
            content: Content::Channel {
                event: "msg".into(),
                payload: RawValue::from_string(r#"{"n":3}"#.into()).unwrap(),
            },
        };
        let mut published = vec![0xFE];
        published.extend_from_slice(format!("3 {epoch} - ").as_bytes());
        published.extend_from_slice(&envelope.encode().unwrap());
        redis_publish(broker.addr(), "herald:hist:gap", &published);
        let error = client.recv_event("phx_error");
        assert_eq!(error[0], join_ref.as_str(), "{error}");
        assert_eq!(a.handle().channel_stats().gap_resyncs, 1);
        // The client joins again from offset 1: the store has nothing
        // newer (offset 3 never went through it), so nothing is missed.
        let recover = json!({ "recover": { "epoch": epoch, "offset": 1 } });
        let (_, _, summary) = join_with(&a, "hist:gap", recover);
        assert_eq!(summary["recovered"], true, "{summary}");
    }

    /// A client on node A drops; node B publishes 50; the client joins A
    /// again with its position and gets exactly those, in order, then live
    /// ones. B's own subscriber gets every publication, in offset order,
    /// through Redis.
    #[test]
    fn a_rejoin_recovers_what_another_node_published() {
        let broker = BrokerProcess::start(Kind::Redis);
        let (a, b) = (node(&broker), node(&broker));
        let (mut first, _, summary) = join_with(&a, "hist:1", json!({}));
        let epoch = summary["epoch"].as_str().expect("an epoch").to_owned();
        let (mut on_b, _, _) = join_with(&b, "hist:1", json!({}));
        wait_subscribed(&[&a, &b], 1);
        publish_n(&b, "hist:1", 1, 3);
        for expected in 1..=3 {
            assert_eq!(
                next_with_offset(&mut first),
                (expected, json!({ "n": expected }))
            );
        }
        drop(first);
        publish_n(&b, "hist:1", 4, 53);
        let recover = json!({ "recover": { "epoch": epoch, "offset": 3 } });
        let (mut again, _, summary) = join_with(&a, "hist:1", recover);
        assert_eq!(summary["recovered"], true, "{summary}");
        assert_eq!(summary["epoch"], epoch.as_str());
        // What the read saw; publications after it arrive live, in order.
        let top = summary["offset"].as_u64().unwrap();
        assert!(top >= 3, "{summary}");
        publish_n(&b, "hist:1", 54, 54);
        for expected in 4..=54 {
            assert_eq!(
                next_with_offset(&mut again),
                (expected, json!({ "n": expected }))
            );
        }
        let missing: Vec<Value> = again.sync();
        assert!(missing.is_empty(), "duplicates: {missing:?}");
        for expected in 1..=54 {
            assert_eq!(next_with_offset(&mut on_b).0, expected);
        }
        let (position, latest) = a.handle().history_store().latest("hist:1", 3).unwrap();
        assert_eq!(position.unwrap().offset, 54);
        assert_eq!(
            latest.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [52, 53, 54]
        );
    }

    /// `broadcast_from` through the history script still skips the
    /// sender, which gets its own publication neither locally nor back
    /// from Redis.
    #[test]
    fn broadcast_from_with_history_skips_the_sender() {
        let broker = BrokerProcess::start(Kind::Redis);
        let (a, b) = (node(&broker), node(&broker));
        let (mut sender, join_ref, _) = join_with(&a, "histq:1", json!({}));
        let (mut remote, remote_ref, _) = join_with(&b, "histq:1", json!({}));
        wait_subscribed(&[&a, &b], 1);
        sender.push(&join_ref, "histq:1", "msg", json!({ "from": "a" }));
        assert_eq!(next_with_offset(&mut remote), (1, json!({ "from": "a" })));
        remote.push(&remote_ref, "histq:1", "msg", json!({ "from": "b" }));
        assert_eq!(next_with_offset(&mut sender), (2, json!({ "from": "b" })));
    }

    /// Redis restarted without its data: the stream has a new epoch, and a
    /// client behind is told it cannot recover.
    #[test]
    fn redis_losing_its_data_means_a_new_epoch_and_no_recovery() {
        let mut broker = BrokerProcess::start(Kind::Redis);
        let a = node(&broker);
        let (mut first, _, summary) = join_with(&a, "hist:2", json!({}));
        let epoch = summary["epoch"].as_str().unwrap().to_owned();
        wait_subscribed(&[&a], 1);
        publish_n(&a, "hist:2", 1, 5);
        for expected in 1..=5 {
            assert_eq!(next_with_offset(&mut first).0, expected);
        }
        drop(first);
        broker.stop();
        broker.spawn();
        assert!(
            wait_until(WAIT, || stats(&a).connected == 1
                && stats(&a).reconnects >= 1),
            "{:?}",
            stats(&a)
        );
        let recover = json!({ "recover": { "epoch": epoch, "offset": 5 } });
        let (_, _, summary) = join_with(&a, "hist:2", recover);
        assert_eq!(summary["recovered"], false, "{summary}");
        assert_eq!(summary["reason"], "epoch", "{summary}");
        assert_ne!(summary["epoch"], epoch.as_str());
        assert_eq!(summary["offset"], 0);
        assert_eq!(a.handle().channel_stats().recovery_failed_epoch, 1);
    }

    /// Node B publishes without pause while clients join node A with a
    /// position a little behind: each gets every later offset exactly once.
    #[test]
    fn publishes_racing_recoveries_across_nodes_arrive_exactly_once() {
        let broker = BrokerProcess::start(Kind::Redis);
        let (a, b) = (node(&broker), node(&broker));
        let (mut seed, _, summary) = join_with(&a, "hist:race", json!({}));
        let (_keep_b, _, _) = join_with(&b, "hist:race", json!({}));
        let epoch = summary["epoch"].as_str().unwrap().to_owned();
        wait_subscribed(&[&a, &b], 1);
        publish_n(&b, "hist:race", 1, 20);
        assert_eq!(next_with_offset(&mut seed).0, 1);
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (handle, stop) = (b.handle(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..4 {
                        handle.broadcast("hist:race", "msg", &json!({})).unwrap();
                    }
                    sent += 4;
                    std::thread::sleep(Duration::from_micros(500));
                }
                sent
            })
        };
        let mut joiners = Vec::new();
        for _ in 0..10 {
            let (position, _) = a.handle().history_store().latest("hist:race", 0).unwrap();
            let since = position.unwrap().offset.saturating_sub(30);
            let recover = json!({ "recover": { "epoch": epoch, "offset": since } });
            let (joiner, _, summary) = join_with(&a, "hist:race", recover);
            assert_eq!(summary["recovered"], true, "{summary}");
            joiners.push((joiner, since));
        }
        stop.store(true, Ordering::Relaxed);
        let top = 20 + publisher.join().unwrap();
        let store = a.handle().history_store().clone();
        let all_stored = || store.latest("hist:race", 0).unwrap().0.unwrap().offset == top;
        assert!(wait_until(WAIT, all_stored), "publications lost");
        for (mut joiner, since) in joiners {
            for expected in since + 1..=top {
                assert_eq!(next_with_offset(&mut joiner).0, expected, "since {since}");
            }
            let extra = joiner.sync();
            assert!(extra.is_empty(), "duplicates: {extra:?}");
        }
    }
}
