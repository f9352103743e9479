//! Helpers for herald's integration tests.
//!
//! Every test talks over real loopback sockets, bound to port 0, with read
//! timeouts so that a broken peer fails the test instead of hanging it.

use std::{
    io::{self, Read},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use bytes::BytesMut;
use herald::wire::{Decoder, DecoderConfig, Message, ProtocolError};

/// How long any test read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected pair of loopback TCP streams: `(client, server)`.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// let (mut client, mut server) = herald_tests::tcp_pair().unwrap();
/// client.write_all(b"ping").unwrap();
/// let mut buf = [0; 4];
/// server.read_exact(&mut buf).unwrap();
/// assert_eq!(&buf, b"ping");
/// ```
pub fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for stream in [&client, &server] {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
    }
    Ok((client, server))
}

/// What [`read_messages`] saw before it stopped.
#[derive(Debug)]
pub struct Received {
    /// The messages decoded, in order.
    pub messages: Vec<Message>,
    /// The protocol error that ended decoding, if one did.
    pub error: Option<ProtocolError>,
}

/// Reads from `stream` with herald's decoder until a close message, a
/// protocol error, or the end of the stream.
///
/// Reads land in small chunks (`read_size` bytes at most) so that frames
/// are decoded across many partial reads.
pub fn read_messages(
    stream: &mut TcpStream,
    config: &DecoderConfig,
    read_size: usize,
) -> io::Result<Received> {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; read_size.max(1)];
    let mut messages = Vec::new();
    loop {
        loop {
            match decoder.decode(&mut buf, config) {
                Ok(Some(message)) => {
                    let is_close = matches!(message, Message::Close(_));
                    messages.push(message);
                    if is_close {
                        return Ok(Received {
                            messages,
                            error: None,
                        });
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    return Ok(Received {
                        messages,
                        error: Some(err),
                    });
                }
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Received {
                messages,
                error: None,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;

/// Test helpers for a running server.
pub mod server {
    use std::{
        io::{self, Read, Write},
        net::{SocketAddr, TcpStream},
        time::{Duration, Instant},
    };

    use herald::wire::{FrameHeader, OpCode};
    use tungstenite::{WebSocket, stream::MaybeTlsStream};

    use super::READ_TIMEOUT;

    /// A tungstenite client connected to `ws://{addr}{path}`.
    pub fn connect(addr: SocketAddr, path: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
        let (ws, _response) =
            tungstenite::connect(format!("ws://{addr}{path}")).expect("WebSocket handshake");
        if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
            stream
                .set_read_timeout(Some(READ_TIMEOUT))
                .expect("set timeout");
        }
        ws
    }

    /// A raw TCP connection with the test read timeout.
    pub fn raw(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set timeout");
        stream
    }

    /// A minimal valid upgrade request for `path`.
    pub fn upgrade_request(path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    }

    /// Sends `request` and reads the whole response until the server
    /// closes; returns the status code and the full response text.
    pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
        let mut stream = raw(addr);
        stream.write_all(request).expect("send request");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        (status_of(&text), text)
    }

    /// The status code of an HTTP response's status line (0 if none).
    pub fn status_of(response: &str) -> u16 {
        response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// Reads an HTTP response head (through the blank line) from `stream`.
    pub fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Upgrades a raw connection and returns it, for tests that speak
    /// frames by hand.
    pub fn raw_upgraded(addr: SocketAddr, path: &str) -> TcpStream {
        let mut stream = raw(addr);
        stream
            .write_all(upgrade_request(path).as_bytes())
            .expect("send upgrade");
        let head = read_head(&mut stream);
        assert_eq!(status_of(&head), 101, "{head}");
        stream
    }

    /// Reads one unmasked server frame: its opcode and payload.
    pub fn read_server_frame(stream: &mut TcpStream) -> io::Result<(OpCode, Vec<u8>)> {
        read_server_frame_whole(stream).map(|(header, payload)| (header.opcode, payload))
    }

    /// Reads one unmasked server frame: its header (RSV bits included) and
    /// payload.
    pub fn read_server_frame_whole(stream: &mut TcpStream) -> io::Result<(FrameHeader, Vec<u8>)> {
        let mut header = Vec::new();
        loop {
            let mut byte = [0u8];
            stream.read_exact(&mut byte)?;
            header.push(byte[0]);
            match FrameHeader::parse(&header) {
                Ok(Some((parsed, _))) => {
                    let mut payload = vec![0u8; parsed.payload_len as usize];
                    stream.read_exact(&mut payload)?;
                    return Ok((parsed, payload));
                }
                Ok(None) => {}
                Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err)),
            }
        }
    }

    /// Reads server frames until a close frame; returns its code, if any.
    pub fn read_until_close(stream: &mut TcpStream) -> io::Result<Option<u16>> {
        loop {
            let (opcode, payload) = read_server_frame(stream)?;
            if opcode == OpCode::Close {
                return Ok(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
                );
            }
        }
    }

    /// Waits until `condition` holds, checking every few milliseconds, for
    /// at most `limit`. Returns whether it held.
    pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        condition()
    }
}

/// A minimal Phoenix V2 JSON client over tungstenite, for protocol tests
/// (the `phoenix` npm client is driven by the Node.js tests).
pub mod phoenix {
    use std::net::{SocketAddr, TcpStream};

    use serde_json::{Value, json};
    use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

    use super::READ_TIMEOUT;

    /// A Phoenix V2 client.
    #[derive(Debug)]
    pub struct Client {
        /// The WebSocket.
        pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
        next_ref: u64,
    }

    impl Client {
        /// Connects to `ws://{addr}{path}?vsn=2.0.0&{params}`.
        pub fn connect(
            addr: SocketAddr,
            path: &str,
            params: &str,
        ) -> Result<Self, tungstenite::Error> {
            let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}?vsn=2.0.0&{params}"))?;
            if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
                stream
                    .set_read_timeout(Some(READ_TIMEOUT))
                    .expect("set timeout");
            }
            Ok(Self { ws, next_ref: 0 })
        }

        /// A fresh ref.
        pub fn next_ref(&mut self) -> String {
            self.next_ref += 1;
            self.next_ref.to_string()
        }

        /// Sends `[join_ref, ref, topic, event, payload]`.
        pub fn send(
            &mut self,
            join_ref: Option<&str>,
            msg_ref: Option<&str>,
            topic: &str,
            event: &str,
            payload: Value,
        ) {
            let message = json!([join_ref, msg_ref, topic, event, payload]);
            self.ws
                .send(Message::text(message.to_string()))
                .expect("send");
        }

        /// Reads the next message as `[join_ref, ref, topic, event, payload]`.
        pub fn recv(&mut self) -> Value {
            loop {
                match self.ws.read().expect("read") {
                    Message::Text(text) => return serde_json::from_str(&text).expect("JSON array"),
                    Message::Ping(_) | Message::Pong(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }

        /// Reads until a message with `event` arrives (skipping others);
        /// returns it.
        pub fn recv_event(&mut self, event: &str) -> Value {
            loop {
                let message = self.recv();
                if message[3] == event {
                    return message;
                }
            }
        }

        /// Reads until the reply to `msg_ref`, collecting what came before.
        pub fn reply_to(&mut self, msg_ref: &str) -> (Value, Vec<Value>) {
            let mut before = Vec::new();
            loop {
                let message = self.recv();
                if message[3] == "phx_reply" && message[1] == msg_ref {
                    return (message[4].clone(), before);
                }
                before.push(message);
            }
        }

        /// Joins `topic`; returns the join ref and the reply's payload
        /// (`{"status": ..., "response": ...}`).
        pub fn join(&mut self, topic: &str, payload: Value) -> (String, Value) {
            let join_ref = self.next_ref();
            self.send(Some(&join_ref), Some(&join_ref), topic, "phx_join", payload);
            let (reply, _) = self.reply_to(&join_ref);
            (join_ref, reply)
        }

        /// Pushes an event with a ref and returns the ref.
        pub fn push(&mut self, join_ref: &str, topic: &str, event: &str, payload: Value) -> String {
            let msg_ref = self.next_ref();
            self.send(Some(join_ref), Some(&msg_ref), topic, event, payload);
            msg_ref
        }

        /// A heartbeat round trip: everything sent to this client before it
        /// has been read once this returns (and is returned).
        pub fn sync(&mut self) -> Vec<Value> {
            let msg_ref = self.next_ref();
            self.send(None, Some(&msg_ref), "phoenix", "heartbeat", json!({}));
            let (reply, before) = self.reply_to(&msg_ref);
            assert_eq!(reply, json!({"status": "ok", "response": {}}));
            before
        }
    }
}

/// A channels engine for tests that need only a room: any client may
/// connect, `room:*` may be joined, an `echo` push is answered with its own
/// payload and any other push is rebroadcast.
pub mod echo_room {
    use std::time::Duration;

    use herald::{
        Reject, Request, Server, ServerBuilder,
        channels::{
            Channel, ChannelContext, Channels, Endpoint, Engine, JoinResult, Reply, Socket,
        },
        protocol::phoenix::Status,
    };
    use serde_json::value::RawValue;

    /// Where the engine serves Phoenix V2.
    pub const PATH: &str = "/socket/websocket";

    /// Lets every client in.
    #[derive(Debug)]
    pub struct Anyone;

    impl Socket for Anyone {
        type Assigns = ();

        fn connect(&self, _: &Request) -> Result<(), Reject> {
            Ok(())
        }
    }

    /// `room:*`: `echo` replies with its payload, other events rebroadcast.
    #[derive(Debug)]
    pub struct EchoRoom;

    impl Channel<()> for EchoRoom {
        fn handle_joined(&self, _: &mut ChannelContext<'_, '_, ()>, _: &RawValue) -> JoinResult {
            Ok(Reply::empty())
        }

        fn handle_message(
            &self,
            ctx: &mut ChannelContext<'_, '_, ()>,
            event: &str,
            payload: &RawValue,
        ) {
            match event {
                "echo" => ctx.reply(Status::Ok, &Reply::raw(payload)),
                _ => ctx.rebroadcast(event, payload),
            }
        }
    }

    /// A server on a free loopback port, two loops, unpinned, with a short
    /// shutdown (test clients seldom answer its close frames).
    pub fn builder() -> ServerBuilder {
        Server::builder()
            .bind("127.0.0.1:0".parse().expect("an address"))
            .loops(2)
            .pin_cores(false)
            .shutdown_timeout(Duration::from_millis(300))
    }

    /// The echo room, started on `builder`.
    pub fn start(builder: ServerBuilder) -> Engine {
        Channels::new()
            .phoenix(PATH, Endpoint::new(Anyone).channel("room:*", EchoRoom))
            .start(builder)
            .expect("engine starts")
    }
}
