//! The event-loop server over real sockets: handshake statuses, echo,
//! heartbeats, close codes, protocol errors, backpressure, shutdown, and
//! many connections. The client is tungstenite where a conforming client is
//! wanted, and a raw socket where the test must misbehave.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use herald::{
    Accept, Conflation, Conn, ConnHandle, Handler, RateLimit, Reject, Request, Server,
    ServerBuilder, SlowConsumerPolicy,
    wire::{CloseCode, DecoderConfig, OpCode, Utf8Bytes, client_frame},
};
use herald_tests::server::{
    connect, http_exchange, raw, raw_upgraded, read_head, read_server_frame, read_until_close,
    status_of, upgrade_request, wait_until,
};
use tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode as TCloseCode},
};

const WAIT: Duration = Duration::from_secs(10);

/// Echoes messages, with a few commands for the tests.
#[derive(Default)]
struct TestApp {
    closes: Mutex<Vec<u16>>,
    handles: Mutex<Vec<ConnHandle>>,
}

struct Session {
    summary: String,
}

impl Handler for TestApp {
    type State = Session;

    fn on_connect(&self, request: &Request) -> Result<Accept<Session>, Reject> {
        if request.path() == "/reject" {
            return Err(Reject::unauthorized());
        }
        let summary = format!(
            "path={} user={} cookie={} host={} peer_ip={}",
            request.path(),
            request.query_param("user").unwrap_or_default(),
            request.cookie("session").unwrap_or(""),
            request.header_str("host").unwrap_or(""),
            request.peer_addr().ip(),
        );
        let accept = Accept::new(Session { summary });
        Ok(match request.subprotocols().find(|p| *p == "chat") {
            Some(protocol) => accept.subprotocol(protocol),
            None => accept,
        })
    }

    fn on_open(&self, conn: &mut Conn<'_, Session>) {
        self.handles.lock().unwrap().push(conn.handle());
    }

    fn on_message(&self, conn: &mut Conn<'_, Session>, text: Utf8Bytes) {
        match text.as_str() {
            "whoami" => {
                let summary = conn.state().summary.clone();
                let _ = conn.send_text(&summary);
            }
            "panic" => panic!("the application failed"),
            command if command.starts_with("sub:") => {
                let topic = &command[4..];
                conn.subscribe(topic);
                let _ = conn.send_text(&format!("subscribed:{topic}"));
            }
            command if command.starts_with("unsub:") => {
                let topic = &command[6..];
                conn.unsubscribe(topic);
                let _ = conn.send_text(&format!("unsubscribed:{topic}"));
            }
            command if command.starts_with("burst:") => {
                // Publishes `<topic><i>` to each listed topic in turn, all in
                // one callback, so that they reach the loops in one turn.
                for (i, topic) in command[6..].split(',').enumerate() {
                    conn.publish(topic, herald::wire::text_frame(&format!("{topic}{i}")));
                }
            }
            command if command.starts_with("pub:") => {
                if let Some((topic, text)) = command[4..].split_once(':') {
                    conn.publish(topic, herald::wire::text_frame(text));
                }
            }
            command if command.starts_with("close:") => {
                let code: u16 = command[6..].parse().unwrap();
                conn.close(CloseCode::from(code), "asked to");
            }
            _ => {
                let _ = conn.send_text(&text);
            }
        }
    }

    fn on_binary(&self, conn: &mut Conn<'_, Session>, data: Bytes) {
        let _ = conn.send_binary(&data);
    }

    fn on_close(&self, _conn: &mut Conn<'_, Session>, code: CloseCode, _reason: &str) {
        self.closes.lock().unwrap().push(code.as_u16());
    }
}

fn builder() -> ServerBuilder {
    Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .loops(2)
        .pin_cores(false)
        .endpoint("/ws")
        .endpoint("/reject")
        // Most tests end with clients still connected and not reading:
        // do not wait the default 5 s for their close replies.
        .shutdown_timeout(Duration::from_millis(300))
}

fn start(builder: ServerBuilder) -> (Server, Arc<TestApp>) {
    let app = Arc::new(TestApp::default());
    let server = builder.start(Arc::clone(&app)).expect("server starts");
    (server, app)
}

// ---- Handshake ----------------------------------------------------------------

#[test]
fn handshake_succeeds_and_the_application_sees_the_request() {
    let (server, _app) = start(builder());
    let request = tungstenite::http::Request::builder()
        .uri(format!("ws://{}/ws?user=ada", server.local_addr()))
        .header("Host", "herald.test")
        .header("Cookie", "session=s3cret; theme=dark")
        .header("Sec-WebSocket-Protocol", "mqtt, chat")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, response) = tungstenite::connect(request).expect("handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    ws.send(Message::text("whoami")).unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::text("path=/ws user=ada cookie=s3cret host=herald.test peer_ip=127.0.0.1")
    );
    server.shutdown();
}

#[test]
fn handshake_rejections_get_the_right_status() {
    let (server, _app) = start(builder());
    let addr = server.local_addr();
    let good = upgrade_request("/ws");
    let cases: Vec<(String, u16)> = vec![
        (
            good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
        (good.replace("Upgrade: websocket\r\n", ""), 400),
        (upgrade_request("/elsewhere"), 404),
        (good.replacen("GET", "POST", 1), 405),
        (good.replace("Version: 13", "Version: 8"), 426),
        (
            good.replace(
                "Host: test\r\n",
                &format!("Host: test\r\nX-Big: {}\r\n", "a".repeat(9000)),
            ),
            431,
        ),
        (upgrade_request("/reject"), 401),
        (
            "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n".to_owned(),
            200,
        ),
        ("\x16\x03\x01 not http at all\r\n\r\n".to_owned(), 400),
        // RFC 6455 section 11.3.1: the key must not appear twice.
        (
            good.replace(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            ),
            400,
        ),
    ];
    for (request, expected) in cases {
        let (status, response) = http_exchange(addr, request.as_bytes());
        assert_eq!(
            status, expected,
            "request:\n{request}\nresponse:\n{response}"
        );
        if expected == 426 {
            assert!(
                response.contains("Sec-WebSocket-Version: 13\r\n"),
                "{response}"
            );
        }
    }
    server.shutdown();
}

#[test]
fn connections_past_the_limit_get_503() {
    let (server, _app) = start(builder().loops(1).max_connections(2));
    let addr = server.local_addr();
    let _first = connect(addr, "/ws");
    let _second = connect(addr, "/ws");
    let (status, _) = http_exchange(addr, upgrade_request("/ws").as_bytes());
    assert_eq!(status, 503);
    server.shutdown();
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_dropped() {
    let (server, _app) = start(builder().handshake_timeout(Duration::from_millis(200)));
    let mut stream = raw(server.local_addr());
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: slow\r\n")
        .unwrap();
    // The server closes without answering: EOF, not the 10 s read timeout.
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    server.shutdown();
}

// ---- Messages -------------------------------------------------------------------

#[test]
fn text_binary_and_fragmented_messages_echo() {
    let (server, _app) = start(builder());
    let mut ws = connect(server.local_addr(), "/ws");
    ws.send(Message::text("héllo")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    // Three fragments, reassembled by the server and echoed whole.
    use tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode as TOp},
    };
    ws.write(Message::Frame(Frame::message(
        b"frag".to_vec(),
        TOp::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::message(
        b"men".to_vec(),
        TOp::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::message(
        b"ted".to_vec(),
        TOp::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("fragmented"));
    server.shutdown();
}

#[test]
fn early_frames_behind_the_request_head_are_processed() {
    let (server, _app) = start(builder());
    let mut stream = raw(server.local_addr());
    let mut bytes = BytesMut::from(upgrade_request("/ws").as_bytes());
    client_frame(&mut bytes, true, OpCode::Text, [1, 2, 3, 4], b"eager");
    stream.write_all(&bytes).unwrap();
    assert_eq!(status_of(&read_head(&mut stream)), 101);
    assert_eq!(
        read_server_frame(&mut stream).unwrap(),
        (OpCode::Text, b"eager".to_vec())
    );
    server.shutdown();
}

// ---- Heartbeats -----------------------------------------------------------------

#[test]
fn client_pings_get_pongs() {
    let (server, _app) = start(builder());
    let mut ws = connect(server.local_addr(), "/ws");
    ws.send(Message::Ping(Bytes::from_static(b"still there?")))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Pong(Bytes::from_static(b"still there?"))
    );
    server.shutdown();
}

#[test]
fn the_server_pings_and_a_silent_client_is_closed_after_the_idle_timeout() {
    let (server, app) = start(
        builder()
            .ping_interval(Duration::from_millis(100))
            .idle_timeout(Duration::from_millis(400)),
    );
    let mut stream = raw_upgraded(server.local_addr(), "/ws");
    // The client reads but never answers: pings, then a close with 1001.
    let (opcode, payload) = read_server_frame(&mut stream).unwrap();
    assert_eq!((opcode, payload.len()), (OpCode::Ping, 0));
    assert_eq!(read_until_close(&mut stream).unwrap(), Some(1001));
    assert!(wait_until(WAIT, || server.handle().stats().idle_timeouts == 1));
    assert_eq!(app.closes.lock().unwrap().as_slice(), [1001]);
    server.shutdown();
}

#[test]
fn a_client_answering_pings_stays_connected() {
    // The idle timeout leaves room for a test thread starved on a busy CI
    // machine; the pings still span more than two of it.
    let (server, _app) = start(
        builder()
            .ping_interval(Duration::from_millis(100))
            .idle_timeout(Duration::from_millis(1000)),
    );
    let mut ws = connect(server.local_addr(), "/ws");
    // tungstenite answers each ping with a pong as it reads; after several
    // idle timeouts' worth of pings the connection still echoes.
    let mut pings = 0;
    while pings < 25 {
        if let Message::Ping(_) = ws.read().unwrap() {
            pings += 1;
            ws.flush().unwrap();
        }
    }
    ws.send(Message::text("alive")).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Ping(_) => ws.flush().unwrap(),
            other => break assert_eq!(other, Message::text("alive")),
        }
    }
    assert_eq!(server.handle().stats().idle_timeouts, 0);
    server.shutdown();
}

// ---- Close codes ----------------------------------------------------------------

#[test]
fn a_client_close_is_answered_with_the_same_code() {
    let (server, app) = start(builder());
    let mut ws = connect(server.local_addr(), "/ws");
    ws.close(Some(CloseFrame {
        code: TCloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    // Then the server closes the TCP connection.
    assert!(matches!(
        ws.read(),
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
    ));
    assert!(wait_until(WAIT, || server.handle().connections() == 0));
    assert_eq!(app.closes.lock().unwrap().as_slice(), [4001]);
    server.shutdown();
}

#[test]
fn the_application_can_close_with_its_own_code() {
    let (server, _app) = start(builder());
    let mut ws = connect(server.local_addr(), "/ws");
    ws.send(Message::text("close:4100")).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 4100),
        other => panic!("expected a close, got {other:?}"),
    }
    server.shutdown();
}

#[test]
fn protocol_errors_are_answered_with_their_close_codes() {
    let (server, _app) = start(builder().decoder(DecoderConfig::default().max_frame_size(1024)));
    let addr = server.local_addr();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Unmasked frame: 1002.
        (b"\x81\x02hi".to_vec(), 1002),
        // Reserved opcode: 1002.
        (b"\x83\x80\x00\x00\x00\x00".to_vec(), 1002),
        // Invalid UTF-8: 1007.
        (
            {
                let mut frame = BytesMut::new();
                client_frame(&mut frame, true, OpCode::Text, [9, 9, 9, 9], b"\xff\xfe");
                frame.to_vec()
            },
            1007,
        ),
        // Over the frame limit, header only: 1009.
        (vec![0x82, 0xFE, 0x08, 0x00, 1, 2, 3, 4], 1009),
    ];
    for (bytes, expected) in cases {
        let mut stream = raw_upgraded(addr, "/ws");
        stream.write_all(&bytes).unwrap();
        assert_eq!(read_until_close(&mut stream).unwrap(), Some(expected));
        // The server then ends the TCP connection.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    }
    // Other connections never noticed.
    let mut ws = connect(addr, "/ws");
    ws.send(Message::text("fine")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("fine"));
    assert_eq!(server.handle().stats().protocol_errors, 4);
    server.shutdown();
}

#[test]
fn a_panicking_handler_closes_only_its_connection_with_1011() {
    let (server, _app) = start(builder().loops(1));
    let mut bystander = connect(server.local_addr(), "/ws");
    let mut ws = connect(server.local_addr(), "/ws");
    ws.send(Message::text("panic")).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected 1011, got {other:?}"),
    }
    bystander.send(Message::text("unaffected")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("unaffected"));
    assert_eq!(server.handle().stats().handler_panics, 1);
    server.shutdown();
}

// ---- Backpressure ---------------------------------------------------------------

#[test]
fn a_slow_consumer_is_closed_while_others_keep_receiving() {
    let (server, app) = start(builder().loops(1).max_queued_bytes(256 * 1024));
    let addr = server.local_addr();
    // The slow client completes its handshake and then never reads.
    let slow = raw_upgraded(addr, "/ws");
    let mut fast = connect(addr, "/ws");
    assert!(wait_until(WAIT, || app.handles.lock().unwrap().len() == 2));
    let handles = app.handles.lock().unwrap().clone();
    let text = "x".repeat(16 * 1024);
    // In lockstep with the fast client: each message goes to both, and the
    // fast client reads it before the next. 2000 messages (32 MiB) are far
    // past the slow client's socket buffers and its 256 KiB queue cap.
    for i in 0..2000 {
        for handle in &handles {
            let _ = handle.send_text(&text);
        }
        match fast.read() {
            Ok(Message::Text(t)) => assert_eq!(t.len(), 16 * 1024, "message {i}"),
            other => panic!("fast client lost message {i}: {other:?}"),
        }
    }
    let stats = server.handle().stats();
    assert_eq!(stats.slow_consumer_closes, 1);
    assert!(stats.frames_dropped > 0);
    assert!(app.closes.lock().unwrap().contains(&1013));
    drop(slow);
    server.shutdown();
}

#[test]
fn drop_oldest_policy_keeps_a_slow_consumer_connected_and_counts_drops() {
    let (server, app) = start(
        builder()
            .loops(1)
            .max_queued_bytes(64 * 1024)
            .slow_consumer(SlowConsumerPolicy::DropOldest),
    );
    let _slow = raw_upgraded(server.local_addr(), "/ws");
    assert!(wait_until(WAIT, || app.handles.lock().unwrap().len() == 1));
    let handle = app.handles.lock().unwrap()[0].clone();
    let text = "y".repeat(8 * 1024);
    for _ in 0..2000 {
        handle.send_text(&text).unwrap();
    }
    assert!(wait_until(WAIT, || server.handle().stats().frames_dropped > 0));
    assert_eq!(server.handle().stats().slow_consumer_closes, 0);
    assert_eq!(server.handle().connections(), 1);
    server.shutdown();
}

/// Subscribes a raw connection to `topic` through the test app.
fn raw_subscribe(stream: &mut std::net::TcpStream, topic: &str) {
    let mut frame = BytesMut::new();
    let command = format!("sub:{topic}");
    client_frame(
        &mut frame,
        true,
        OpCode::Text,
        [5, 6, 7, 8],
        command.as_bytes(),
    );
    stream.write_all(&frame).unwrap();
    let (_, reply) = read_server_frame(stream).unwrap();
    assert_eq!(reply, format!("subscribed:{topic}").as_bytes());
}

#[test]
fn a_conflated_topic_gives_a_slow_reader_the_latest_value_within_its_queue_limit() {
    let (server, _app) = start(
        builder()
            .loops(1)
            .max_queued_bytes(64 * 1024)
            .conflate(Conflation::topic("ticker:*")),
    );
    let addr = server.local_addr();
    let mut conflated = raw_upgraded(addr, "/ws");
    raw_subscribe(&mut conflated, "ticker:a");
    // The same stream on a topic that does not conflate, to show that
    // without conflation this reader would be past its limit.
    let mut plain = raw_upgraded(addr, "/ws");
    raw_subscribe(&mut plain, "plain");
    let handle = server.handle();
    let value = |i: u32| format!("{i:06}:{}", "v".repeat(1024));
    const UPDATES: u32 = 20_000;
    for i in 0..UPDATES {
        let frame = herald::wire::text_frame(&value(i));
        handle.publish("ticker:a", frame.clone());
        handle.publish("plain", frame);
    }
    let handled = || handle.stats().publishes_handled >= u64::from(UPDATES) * 2;
    assert!(wait_until(WAIT, handled));
    // Only now does the reader read: it gets an increasing sequence that
    // ends with the last update, and was never closed.
    conflated.set_read_timeout(Some(WAIT)).unwrap();
    let mut received = Vec::new();
    while received.last() != Some(&(UPDATES - 1)) {
        let (opcode, payload) = read_server_frame(&mut conflated).expect("an update");
        assert_eq!(opcode, OpCode::Text);
        let seq: u32 = std::str::from_utf8(&payload[..6]).unwrap().parse().unwrap();
        received.push(seq);
    }
    assert!(received.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(
        received.len() < UPDATES as usize / 2,
        "{} updates",
        received.len()
    );
    let stats = handle.stats();
    assert_eq!(
        stats.messages_conflated,
        u64::from(UPDATES) - received.len() as u64
    );
    // The plain subscriber, same stream, same limit: closed with 1013.
    assert_eq!(stats.slow_consumer_closes, 1);
    plain.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_until_close(&mut plain).ok().flatten(), Some(1013));
    server.shutdown();
}

#[test]
fn past_the_queue_budget_the_largest_queue_is_shed_and_the_others_keep_theirs() {
    let (server, app) = start(
        builder()
            .loops(1)
            .max_queued_bytes(256 << 20)
            .queue_budget(16 << 20),
    );
    let addr = server.local_addr();
    // Two clients that do not read for now.
    let mut large = raw_upgraded(addr, "/ws");
    let mut small = raw_upgraded(addr, "/ws");
    assert!(wait_until(WAIT, || app.handles.lock().unwrap().len() == 2));
    let handles = app.handles.lock().unwrap().clone();
    let chunk = "z".repeat(64 * 1024);
    // 48 MiB to the first: past the budget on its own, whatever the
    // kernel's buffers take.
    for _ in 0..768 {
        let _ = handles[0].send_text(&chunk);
    }
    assert!(wait_until(WAIT, || server
        .handle()
        .stats()
        .queue_budget_sheds
        >= 1));
    // 8 MiB to the second: with the first shed, under the budget.
    for _ in 0..128 {
        handles[1].send_text(&chunk).unwrap();
    }
    let stats = server.handle().stats();
    assert_eq!(stats.queue_budget_sheds, 1);
    assert_eq!(stats.slow_consumer_closes, 1);
    // The second reads all it was sent.
    small.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..128 {
        let (opcode, payload) = read_server_frame(&mut small).expect("a chunk");
        assert_eq!(
            (opcode, payload.len()),
            (OpCode::Text, 64 * 1024),
            "chunk {i}"
        );
    }
    // The first reads what the kernel had taken, then its close (or a reset).
    large.set_read_timeout(Some(WAIT)).unwrap();
    let ended = read_until_close(&mut large);
    assert!(matches!(ended, Ok(Some(1013)) | Err(_)), "{ended:?}");
    assert_eq!(server.handle().stats().queue_budget_sheds, 1);
    server.shutdown();
}

#[test]
fn broadcasts_shared_by_many_backlogs_count_once_against_the_queue_budget() {
    let (server, _app) = start(
        builder()
            .loops(1)
            .max_queued_bytes(256 << 20)
            .queue_budget(16 << 20),
    );
    let addr = server.local_addr();
    // Six subscribers that do not read, one that does.
    let mut stuck: Vec<_> = (0..6).map(|_| raw_upgraded(addr, "/ws")).collect();
    for stream in &mut stuck {
        raw_subscribe(stream, "shared");
    }
    let mut reader = raw_upgraded(addr, "/ws");
    raw_subscribe(&mut reader, "shared");
    // 14 MiB of broadcasts: each backlog holds most of it, together far
    // past the budget, but the frames are the same 14 MiB.
    let chunk = herald::wire::text_frame(&"s".repeat(64 * 1024));
    reader.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..224 {
        server.handle().publish("shared", chunk.clone());
        let (opcode, payload) = read_server_frame(&mut reader).expect("a chunk");
        assert_eq!(
            (opcode, payload.len()),
            (OpCode::Text, 64 * 1024),
            "chunk {i}"
        );
    }
    let stats = server.handle().stats();
    assert_eq!(stats.queue_budget_sheds, 0);
    assert_eq!(stats.slow_consumer_closes, 0);
    assert_eq!(server.handle().connections(), 7);
    server.shutdown();
}

// ---- Shutdown and scale ---------------------------------------------------------

#[test]
fn graceful_shutdown_sends_1001_to_every_client() {
    let (server, _app) = start(builder());
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..4).map(|_| connect(addr, "/ws")).collect();
    let shutdown = thread::spawn(move || server.shutdown());
    for ws in &mut clients {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected 1001, got {other:?}"),
        }
        // tungstenite answers the close as it reads on.
        let _ = ws.read();
    }
    shutdown.join().unwrap();
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn thousands_of_connections_spread_over_the_loops() {
    let (server, _app) = start(builder().loops(2));
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for _ in 0..2000 {
        clients.push(raw_upgraded(addr, "/ws"));
    }
    for (i, stream) in clients.iter_mut().enumerate() {
        let mut frame = BytesMut::new();
        client_frame(
            &mut frame,
            true,
            OpCode::Text,
            [1, 2, 3, 4],
            format!("n{i}").as_bytes(),
        );
        stream.write_all(&frame).unwrap();
    }
    for (i, stream) in clients.iter_mut().enumerate() {
        assert_eq!(
            read_server_frame(stream).unwrap(),
            (OpCode::Text, format!("n{i}").into_bytes())
        );
    }
    let per_loop = server.handle().stats_per_loop();
    assert_eq!(
        per_loop.iter().map(|s| s.connections_opened).sum::<u64>(),
        2000
    );
    for stats in &per_loop {
        assert!(
            stats.connections_opened > 200,
            "uneven spread: {per_loop:?}"
        );
    }
    assert_eq!(server.handle().connections(), 2000);
    drop(clients);
    assert!(wait_until(WAIT, || server.handle().connections() == 0));
    server.shutdown();
}

// ---- Publish / subscribe ---------------------------------------------------------

type Client = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

#[track_caller]
fn expect_text(ws: &mut Client, expected: &str) {
    match ws.read() {
        Ok(Message::Text(text)) => assert_eq!(text.as_str(), expected),
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

/// A round trip through the echo: everything sent to this client before it
/// has been read once this returns, so nothing duplicated is still in flight.
fn drain_with_echo(ws: &mut Client) {
    ws.send(Message::text("echo-check")).unwrap();
    expect_text(ws, "echo-check");
}

#[test]
fn a_publish_reaches_every_subscriber_on_every_loop_exactly_once() {
    let (server, _app) = start(builder().loops(2));
    let addr = server.local_addr();
    let handle = server.handle();
    // SO_REUSEPORT spreads by address hash: connect until both loops hold
    // some (a handful nearly always suffices; 200 makes a miss impossible
    // in practice).
    let mut clients: Vec<Client> = Vec::new();
    while clients.len() < 10
        || (clients.len() < 200
            && handle
                .stats_per_loop()
                .iter()
                .any(|s| s.connections_opened == 0))
    {
        let mut ws = connect(addr, "/ws");
        ws.send(Message::text("sub:news")).unwrap();
        expect_text(&mut ws, "subscribed:news");
        clients.push(ws);
    }
    let n = clients.len() as u64;
    assert_eq!(handle.subscriber_count("news"), n);

    // From a connection: every other subscriber gets it, the sender does not.
    clients[0].send(Message::text("pub:news:hello")).unwrap();
    for ws in &mut clients[1..] {
        expect_text(ws, "hello");
    }
    // From any thread, through the server handle: everyone.
    assert_eq!(
        handle.publish("news", herald::wire::text_frame("from the server")),
        2
    );
    for ws in &mut clients {
        expect_text(ws, "from the server");
        drain_with_echo(ws);
    }
    assert_eq!(handle.stats().published_deliveries, (n - 1) + n);
    // A topic nobody subscribed to reaches no loop.
    assert_eq!(handle.publish("void", herald::wire::text_frame("x")), 0);
    server.shutdown();
}

#[test]
fn unsubscribing_or_disconnecting_ends_subscriptions() {
    let (server, _app) = start(builder().loops(2));
    let addr = server.local_addr();
    let mut first = connect(addr, "/ws");
    let mut second = connect(addr, "/ws");
    for ws in [&mut first, &mut second] {
        ws.send(Message::text("sub:room")).unwrap();
        expect_text(ws, "subscribed:room");
    }
    let handle = server.handle();
    assert_eq!(handle.subscriber_count("room"), 2);
    first.send(Message::text("unsub:room")).unwrap();
    expect_text(&mut first, "unsubscribed:room");
    assert_eq!(handle.subscriber_count("room"), 1);
    handle.publish("room", herald::wire::text_frame("only second"));
    expect_text(&mut second, "only second");
    drain_with_echo(&mut first);
    drop(second);
    assert!(wait_until(WAIT, || handle.subscriber_count("room") == 0));
    assert_eq!(
        handle.publish("room", herald::wire::text_frame("nobody")),
        0
    );
    server.shutdown();
}

#[test]
fn a_turn_of_broadcasts_keeps_each_connections_order_across_topics() {
    let (server, _app) = start(builder().loops(2));
    let addr = server.local_addr();
    let mut both = connect(addr, "/ws");
    let mut only_a = connect(addr, "/ws");
    let mut publisher = connect(addr, "/ws");
    for (ws, topics) in [
        (&mut both, &["a", "b"][..]),
        (&mut only_a, &["a"][..]),
        (&mut publisher, &["a", "b"][..]),
    ] {
        for topic in topics {
            ws.send(Message::text(format!("sub:{topic}"))).unwrap();
            expect_text(ws, &format!("subscribed:{topic}"));
        }
    }
    // Runs of `a` (a2, a3; a6, a7, a8) travel as one entry per subscriber;
    // `b` comes between them in the order it was published.
    publisher
        .send(Message::text("burst:a,b,a,a,b,b,a,a,a"))
        .unwrap();
    for expected in ["a0", "b1", "a2", "a3", "b4", "b5", "a6", "a7", "a8"] {
        expect_text(&mut both, expected);
    }
    for expected in ["a0", "a2", "a3", "a6", "a7", "a8"] {
        expect_text(&mut only_a, expected);
    }
    // The publisher got none of its own: the next thing it reads is its echo.
    drain_with_echo(&mut publisher);
    drain_with_echo(&mut both);
    drain_with_echo(&mut only_a);
    // Deliveries count messages, however they were batched.
    assert_eq!(server.handle().stats().published_deliveries, 9 + 6);
    server.shutdown();
}

#[test]
fn bytes_that_cannot_be_http_get_400_without_waiting_for_the_timeout() {
    // A 10 s handshake timeout: the answer must come long before it.
    let (server, _app) = start(builder().handshake_timeout(Duration::from_secs(10)));
    for garbage in [&b"\x16\x03\x01\x02\x00"[..], b"hello\nworld\n"] {
        let started = std::time::Instant::now();
        let mut stream = raw(server.local_addr());
        stream.write_all(garbage).unwrap();
        let head = read_head(&mut stream);
        assert_eq!(status_of(&head), 400, "{head}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    server.shutdown();
}

#[test]
fn a_drain_closes_every_client_with_1012_spread_over_the_period() {
    let (server, app) = start(builder().drain_period(Duration::from_millis(1000)));
    let addr = server.local_addr();
    let clients: Vec<_> = (0..20).map(|_| connect(addr, "/ws")).collect();
    let started = std::time::Instant::now();
    let drain = thread::spawn(move || server.drain());
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            thread::spawn(move || match ws.read() {
                Ok(Message::Close(Some(frame))) => {
                    let at = started.elapsed();
                    let _ = ws.read();
                    (u16::from(frame.code), at)
                }
                other => panic!("expected a close, got {other:?}"),
            })
        })
        .collect();
    let mut closes: Vec<(u16, Duration)> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    drain.join().unwrap();
    closes.sort_by_key(|&(_, at)| at);
    assert!(closes.iter().all(|&(code, _)| code == 1012), "{closes:?}");
    // Spread over the period, not all at once: the last close comes at
    // least half a period after the first.
    let spread = closes[19].1 - closes[0].1;
    assert!(spread >= Duration::from_millis(500), "{closes:?}");
    assert!(closes[19].1 < Duration::from_secs(5), "{closes:?}");
    assert_eq!(app.closes.lock().unwrap().len(), 20);
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn connection_storms_get_429_per_address_and_503_overall_with_retry_after() {
    // Per address: a burst of 2, then one a second.
    let (server, _app) = start(
        builder()
            .loops(1)
            .connect_rate_per_address(RateLimit::new(1, 2)),
    );
    let addr = server.local_addr();
    let mut open: Vec<Client> = (0..2).map(|_| connect(addr, "/ws")).collect();
    let (status, response) = http_exchange(addr, upgrade_request("/ws").as_bytes());
    assert_eq!(status, 429, "{response}");
    assert!(response.contains("Retry-After: 1\r\n"), "{response}");
    // The connections already open do not notice.
    for ws in &mut open {
        drain_with_echo(ws);
    }
    assert_eq!(server.handle().stats().connections_rate_limited, 1);
    server.shutdown();

    // Overall: the same, as 503.
    let (server, _app) = start(builder().loops(1).connect_rate(RateLimit::new(1, 1)));
    let addr = server.local_addr();
    let _first = connect(addr, "/ws");
    let (status, response) = http_exchange(addr, upgrade_request("/ws").as_bytes());
    assert_eq!(status, 503, "{response}");
    assert!(response.contains("Retry-After: 1\r\n"), "{response}");
    server.shutdown();
}

#[test]
fn a_shutdown_during_a_drain_closes_the_rest_at_once() {
    // A 30 s drain of 30 clients closes one every second...
    let (server, _app) = start(builder().loops(1).drain_period(Duration::from_secs(30)));
    let addr = server.local_addr();
    let handle = server.handle();
    let clients: Vec<_> = (0..30).map(|_| connect(addr, "/ws")).collect();
    let started = std::time::Instant::now();
    handle.drain();
    // ...until a shutdown closes everyone left, with 1001, now.
    handle.shutdown();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            thread::spawn(move || match ws.read() {
                Ok(Message::Close(Some(frame))) => {
                    let _ = ws.read();
                    u16::from(frame.code)
                }
                other => panic!("expected a close, got {other:?}"),
            })
        })
        .collect();
    let codes: Vec<u16> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    server.join();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        codes.iter().all(|&code| code == 1001 || code == 1012),
        "{codes:?}"
    );
    assert!(
        codes.iter().filter(|&&code| code == 1001).count() >= 25,
        "{codes:?}"
    );
}
