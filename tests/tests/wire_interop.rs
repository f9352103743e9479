//! The wire codec against an independent implementation, over real loopback
//! sockets: tungstenite plays the client (or, to produce unmasked frames,
//! the server), herald's decoder and encoders the other end.
//!
//! The WebSocket handshake is skipped on purpose (tungstenite's
//! `from_raw_socket`): these tests cover framing only; the handshake has its
//! own tests with the server.

use std::{
    io::{IoSlice, Write},
    net::TcpStream,
    thread,
};

use bytes::Bytes;
use herald::wire::{
    CloseCode, DecoderConfig, Message, OpCode, ProtocolError, binary_frame, close_frame,
    ping_frame, server_header, text_frame,
};
use herald_tests::{read_messages, tcp_pair};
use tungstenite::{
    Message as TMessage, WebSocket,
    protocol::{
        CloseFrame as TCloseFrame, Role,
        frame::{Frame, coding::CloseCode as TCloseCode, coding::Data, coding::OpCode as TOpCode},
    },
};

fn as_client(stream: TcpStream) -> WebSocket<TcpStream> {
    WebSocket::from_raw_socket(stream, Role::Client, None)
}

#[test]
fn tungstenite_client_messages_decode_across_small_reads() {
    let (client, mut server) = tcp_pair().unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let big_for_client = big.clone();
    let client = thread::spawn(move || {
        let mut ws = as_client(client);
        ws.send(TMessage::text("héllo ☃")).unwrap();
        ws.send(TMessage::binary(big_for_client)).unwrap();
        ws.send(TMessage::Ping(Bytes::from_static(b"are you there")))
            .unwrap();
        // A text message in three fragments, with a pong between them.
        let fragments = ["frag", "ment", "ed ✓"];
        for (i, piece) in fragments.iter().enumerate() {
            let opcode = if i == 0 {
                TOpCode::Data(Data::Text)
            } else {
                TOpCode::Data(Data::Continue)
            };
            let last = i == fragments.len() - 1;
            ws.write(TMessage::Frame(Frame::message(
                piece.as_bytes().to_vec(),
                opcode,
                last,
            )))
            .unwrap();
            if i == 1 {
                ws.write(TMessage::Pong(Bytes::from_static(b"unsolicited")))
                    .unwrap();
            }
        }
        ws.flush().unwrap();
        ws.close(Some(TCloseFrame {
            code: TCloseCode::Away,
            reason: "done".into(),
        }))
        .unwrap();
        ws.flush().unwrap();
        ws
    });

    let received = read_messages(&mut server, &DecoderConfig::default(), 1500).unwrap();
    assert_eq!(received.error, None);
    let messages = received.messages;
    assert_eq!(messages.len(), 6, "{messages:#?}");
    assert!(matches!(&messages[0], Message::Text(t) if t.as_str() == "héllo ☃"));
    assert!(matches!(&messages[1], Message::Binary(b) if b[..] == big[..]));
    assert!(matches!(&messages[2], Message::Ping(p) if &p[..] == b"are you there"));
    assert!(matches!(&messages[3], Message::Pong(p) if &p[..] == b"unsolicited"));
    assert!(matches!(&messages[4], Message::Text(t) if t.as_str() == "fragmented ✓"));
    match &messages[5] {
        Message::Close(Some(close)) => {
            assert_eq!(close.code, CloseCode::GOING_AWAY);
            assert_eq!(close.reason.as_str(), "done");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    drop(client.join().unwrap());
}

/// Writes every slice, as `write_all` does for one.
fn write_all_vectored(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) {
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).unwrap();
        assert!(written > 0, "socket closed while writing");
        IoSlice::advance_slices(&mut slices, written);
    }
}

#[test]
fn herald_server_frames_are_read_by_tungstenite() {
    let (client, mut server) = tcp_pair().unwrap();
    let payload = Bytes::from(vec![7u8; 70_000]);
    let header = server_header(OpCode::Binary, payload.len());
    server.write_all(&text_frame("from herald ✓")).unwrap();
    server.write_all(&binary_frame(b"\x00\x01\x02")).unwrap();
    // Header and payload as two iovecs: the payload is never copied.
    write_all_vectored(
        &mut server,
        &mut [IoSlice::new(header.as_bytes()), IoSlice::new(&payload)],
    );
    server.write_all(&ping_frame(b"hb").unwrap()).unwrap();
    server
        .write_all(&close_frame(CloseCode::SERVICE_RESTART, "restarting").unwrap())
        .unwrap();

    let mut ws = as_client(client);
    assert_eq!(ws.read().unwrap(), TMessage::text("from herald ✓"));
    assert_eq!(ws.read().unwrap(), TMessage::binary(&b"\x00\x01\x02"[..]));
    assert_eq!(ws.read().unwrap(), TMessage::Binary(payload));
    assert_eq!(
        ws.read().unwrap(),
        TMessage::Ping(Bytes::from_static(b"hb"))
    );
    match ws.read().unwrap() {
        TMessage::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 1012);
            assert_eq!(close.reason.as_str(), "restarting");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn unmasked_frames_from_a_peer_are_refused_with_1002() {
    let (client, mut server) = tcp_pair().unwrap();
    // tungstenite in the server role sends unmasked frames, which a client
    // must never do.
    let mut ws = WebSocket::from_raw_socket(client, Role::Server, None);
    ws.send(TMessage::text("unmasked")).unwrap();
    let received = read_messages(&mut server, &DecoderConfig::default(), 64).unwrap();
    assert!(received.messages.is_empty());
    assert_eq!(received.error, Some(ProtocolError::UnmaskedFrame));
    assert_eq!(ProtocolError::UnmaskedFrame.close_code().as_u16(), 1002);
}

#[test]
fn oversized_frames_are_refused_before_the_payload_is_sent() {
    let (client, mut server) = tcp_pair().unwrap();
    let config = DecoderConfig::default().max_frame_size(1024);
    // Only the header of a 1 MiB frame goes out; the decoder must not wait
    // for the payload.
    let mut raw = client;
    raw.write_all(&[0x82, 0xFF]).unwrap();
    raw.write_all(&(1u64 << 20).to_be_bytes()).unwrap();
    raw.write_all(&[1, 2, 3, 4]).unwrap();
    let received = read_messages(&mut server, &config, 64).unwrap();
    assert_eq!(
        received.error,
        Some(ProtocolError::FrameTooLarge {
            len: 1 << 20,
            max: 1024
        })
    );
    assert_eq!(
        received.error.unwrap().close_code(),
        CloseCode::MESSAGE_TOO_BIG
    );
}
