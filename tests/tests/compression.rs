//! permessage-deflate (RFC 7692) over real sockets, with a client that
//! speaks frames by hand and compresses with herald's own codec: what is
//! negotiated, that a broadcast reaches compressing and plain subscribers
//! alike (compressed once, for the ones that asked), that replies are
//! compressed and small frames are not, and that bad compressed input
//! closes only its connection with the right code.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
};

use herald::{
    Compression,
    channels::Engine,
    wire::{Deflater, FrameHeader, Inflater, OpCode, RSV1, client_frame},
};
use herald_tests::{
    echo_room::{self, PATH},
    server::{raw, read_head, read_server_frame_whole, read_until_close, status_of},
};
use serde_json::{Value, json};

const MASK: [u8; 4] = [7, 1, 9, 3];

fn start() -> Engine {
    let builder = echo_room::builder()
        .compression(Compression::new().min_size(128))
        .decoder(herald::wire::DecoderConfig::default().max_message_size(64 * 1024));
    echo_room::start(builder)
}

/// A client speaking frames by hand; compresses what it sends when it
/// negotiated the extension.
struct RawClient {
    stream: TcpStream,
    deflate: bool,
    deflater: Deflater,
    inflater: Inflater,
}

impl RawClient {
    /// Connects, offering `extensions` if any; returns the client and the
    /// `Sec-WebSocket-Extensions` the server answered.
    fn connect(addr: SocketAddr, extensions: Option<&str>) -> (Self, Option<String>) {
        let mut stream = raw(addr);
        let offer = extensions.map_or(String::new(), |e| {
            format!("Sec-WebSocket-Extensions: {e}\r\n")
        });
        let request = format!(
            "GET {PATH}?vsn=2.0.0 HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let head = read_head(&mut stream);
        assert_eq!(status_of(&head), 101, "{head}");
        let answered = head
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Extensions: "))
            .map(str::to_owned);
        let client = Self {
            stream,
            deflate: answered.is_some(),
            deflater: Deflater::new(6),
            inflater: Inflater::new(),
        };
        (client, answered)
    }

    /// Sends `text`, compressed if the extension was negotiated.
    fn send(&mut self, text: &str) {
        if self.deflate {
            let frame = self.deflater.frame(OpCode::Text, text.as_bytes());
            let (_, len) = FrameHeader::parse(&frame).unwrap().unwrap();
            self.send_raw(true, &frame[len..]);
        } else {
            self.send_raw(false, text.as_bytes());
        }
    }

    /// Sends a text frame with `payload` as is, RSV1 set if `compressed`.
    fn send_raw(&mut self, compressed: bool, payload: &[u8]) {
        let mut buf = bytes::BytesMut::new();
        client_frame(&mut buf, true, OpCode::Text, MASK, payload);
        if compressed {
            buf[0] |= RSV1 << 4;
        }
        self.stream.write_all(&buf).unwrap();
    }

    /// The next text message: whether it came compressed, and its JSON.
    fn recv(&mut self) -> (bool, Value) {
        loop {
            let (header, payload) = read_server_frame_whole(&mut self.stream).unwrap();
            if header.opcode != OpCode::Text {
                continue;
            }
            let compressed = header.rsv == RSV1;
            let text = if compressed {
                self.inflater.inflate(&payload, 1 << 20).unwrap().to_vec()
            } else {
                payload
            };
            return (compressed, serde_json::from_slice(&text).unwrap());
        }
    }

    fn join(&mut self, topic: &str) {
        self.send(&json!(["1", "1", topic, "phx_join", {}]).to_string());
        let (_, reply) = self.recv();
        assert_eq!(reply[4]["status"], "ok", "{reply}");
    }
}

fn big_payload() -> Value {
    let rows: Vec<Value> = (0..20)
        .map(|i| json!({"symbol": format!("SYM{i}"), "bid": 100 + i, "ask": 101 + i, "venue": "herald"}))
        .collect();
    json!({ "rows": rows })
}

#[test]
fn offers_are_answered_without_context_takeover_or_declined() {
    let engine = start();
    let addr = engine.local_addr();
    let (_, chrome) = RawClient::connect(addr, Some("permessage-deflate; client_max_window_bits"));
    assert_eq!(
        chrome.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let (_, none) = RawClient::connect(addr, None);
    assert_eq!(none, None);
    // An offer herald cannot honour is declined, not broken.
    let (_, declined) =
        RawClient::connect(addr, Some("permessage-deflate; server_max_window_bits=10"));
    assert_eq!(declined, None);
    engine.shutdown();
}

#[test]
fn a_broadcast_reaches_compressing_and_plain_subscribers_and_replies_are_compressed() {
    let engine = start();
    let addr = engine.local_addr();
    let (mut zipped, _) = RawClient::connect(addr, Some("permessage-deflate"));
    let (mut plain, _) = RawClient::connect(addr, None);
    // The join itself travels compressed from the client.
    zipped.join("room:1");
    plain.join("room:1");
    let payload = big_payload();
    engine
        .handle()
        .broadcast("room:1", "quotes", &payload)
        .unwrap();
    let (compressed, message) = zipped.recv();
    assert!(
        compressed,
        "a large broadcast goes compressed to a client that asked"
    );
    assert_eq!(message, json!([null, null, "room:1", "quotes", payload]));
    let (compressed, message) = plain.recv();
    assert!(!compressed);
    assert_eq!(message[4], payload);
    // Small frames go as they are.
    engine
        .handle()
        .broadcast("room:1", "tick", &json!({"p": 1}))
        .unwrap();
    let (compressed, message) = zipped.recv();
    assert!(!compressed, "{message}");
    assert_eq!(plain.recv().1[3], "tick");
    // A reply to one client is compressed for it; a message it sends
    // compressed is rebroadcast to both.
    zipped.send(&json!(["1", "2", "room:1", "echo", payload]).to_string());
    let (compressed, reply) = zipped.recv();
    assert!(compressed);
    assert_eq!(reply[4], json!({"status": "ok", "response": payload}));
    zipped.send(&json!(["1", "3", "room:1", "said", {"body": "x".repeat(300)}]).to_string());
    assert_eq!(plain.recv().1[3], "said");
    assert_eq!(zipped.recv().1[3], "said");
    // The join, the echo and the message came compressed.
    assert_eq!(engine.handle().server().stats().messages_inflated, 3);

    // A message of exactly the limit (64 KiB) sent as stored blocks is a
    // little larger on the wire than its text: still accepted.
    let mut push = json!(["1", "4", "room:1", "echo", {"b": ""}]).to_string();
    let filler: String = (0..64 * 1024 - push.len())
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    push = json!(["1", "4", "room:1", "echo", {"b": filler}]).to_string();
    assert_eq!(push.len(), 64 * 1024);
    let stored = Deflater::new(0).frame(OpCode::Text, push.as_bytes());
    let (_, len) = FrameHeader::parse(&stored).unwrap().unwrap();
    assert!(
        stored.len() - len > 64 * 1024,
        "stored blocks add to the size"
    );
    zipped.send_raw(true, &stored[len..]);
    let (_, reply) = zipped.recv();
    assert_eq!(reply[1], "4");
    assert_eq!(reply[4]["status"], "ok");
    engine.shutdown();
}

#[test]
fn bad_compressed_input_closes_only_its_connection_with_its_code() {
    let engine = start();
    let addr = engine.local_addr();
    let (mut bystander, _) = RawClient::connect(addr, Some("permessage-deflate"));
    bystander.join("room:2");

    // A bomb: a few KiB on the wire, 1 MiB inflated; the limit is 64 KiB.
    let (mut bomber, _) = RawClient::connect(addr, Some("permessage-deflate"));
    let bomb = Deflater::new(9).frame(OpCode::Text, &vec![b'a'; 1 << 20]);
    let (_, len) = FrameHeader::parse(&bomb).unwrap().unwrap();
    assert!(bomb.len() - len < 64 * 1024);
    bomber.send_raw(true, &bomb[len..]);
    assert_eq!(read_until_close(&mut bomber.stream).unwrap(), Some(1009));

    let (mut garbage, _) = RawClient::connect(addr, Some("permessage-deflate"));
    garbage.send_raw(true, &[0xff; 32]);
    assert_eq!(read_until_close(&mut garbage.stream).unwrap(), Some(1007));

    // Compressed without having negotiated it: RSV1 is a protocol error.
    let (mut rogue, _) = RawClient::connect(addr, None);
    rogue.send_raw(true, b"\x01\x02");
    assert_eq!(read_until_close(&mut rogue.stream).unwrap(), Some(1002));

    // Invalid UTF-8 inside valid compression.
    let (mut liar, _) = RawClient::connect(addr, Some("permessage-deflate"));
    let frame = Deflater::new(6).frame(OpCode::Text, &[0xc3, 0x28]);
    let (_, len) = FrameHeader::parse(&frame).unwrap().unwrap();
    liar.send_raw(true, &frame[len..]);
    assert_eq!(read_until_close(&mut liar.stream).unwrap(), Some(1007));

    engine
        .handle()
        .broadcast("room:2", "still", &big_payload())
        .unwrap();
    assert_eq!(bystander.recv().1[3], "still");
    engine.shutdown();
}
