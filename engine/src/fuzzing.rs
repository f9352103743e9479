//! Fuzzing entry points with their oracles.
//!
//! The targets in `fuzz/fuzz_targets/` are one-line shims over these
//! functions, so the oracles live next to the code they check, compile with
//! the crate, and run in its unit tests on a few inputs even where no
//! fuzzer is installed. Compiled only for tests and under `cfg(fuzzing)`
//! (set by cargo-fuzz).
//!
//! Each function interprets its input bytes itself (no `arbitrary`
//! dependency): the first bytes choose limits and chunk sizes, the rest is
//! the payload or a script of messages.

use bytes::{Bytes, BytesMut};

use crate::wire::{
    CloseCode, CloseFrame, Decoder, DecoderConfig, Message, OpCode, ProtocolError, Utf8Bytes,
    client_frame,
};

/// Decodes arbitrary bytes one-shot and in chunks and checks that:
/// nothing panics, both give the same messages and the same error, and the
/// decoder never holds more than its limits allow.
pub fn decode_in_chunks(data: &[u8]) {
    let [limits, seed, wire @ ..] = data else {
        return;
    };
    let config = DecoderConfig::default()
        .max_frame_size(64 << (limits & 0x7))
        .max_message_size(128 << (limits >> 4 & 0x7))
        .accept_rsv_bits(if limits & 0x8 != 0 { 0b100 } else { 0 });
    let one_shot = decode_with_chunks(wire, &config, &mut std::iter::repeat(wire.len().max(1)));
    let mut chunks = chunk_sizes(*seed);
    let chunked = decode_with_chunks(wire, &config, &mut chunks);
    assert_eq!(one_shot, chunked, "chunking changed the outcome");
}

/// Builds messages from a script, encodes them as a client would (masked,
/// fragmented), decodes them in chunks and checks that they come back
/// unchanged.
pub fn round_trip(data: &[u8]) {
    let Some((&seed, mut script)) = data.split_first() else {
        return;
    };
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    while let Some((message, rest)) = next_scripted_message(script, &mut wire) {
        expected.push(message);
        script = rest;
    }
    let config = DecoderConfig::default();
    let (messages, error) = decode_with_chunks(&wire, &config, &mut chunk_sizes(seed));
    assert_eq!(error, None, "a valid stream failed to decode");
    assert_eq!(messages, expected, "messages changed in the round trip");
}

/// Parses arbitrary bytes as an HTTP upgrade request head and runs every
/// check the server runs: never a panic, whatever the bytes; a complete
/// head within the limit either routes or fails with a status.
pub fn handshake(data: &[u8]) {
    use crate::handshake::{check_upgrade, head_end, parse_head, route};
    let limit = 8192;
    let Some(end) = head_end(data, 0) else {
        // Incomplete: the parser must say so, or fail, within the limit.
        let _ = parse_head(data, limit);
        return;
    };
    let Ok(Some(parsed)) = parse_head(&data[..end], limit) else {
        return;
    };
    let http_minor = parsed.http_minor;
    let request = parsed.into_request(
        Bytes::copy_from_slice(&data[..end]),
        ([127, 0, 0, 1], 0).into(),
    );
    let _ = (
        request.path(),
        request.query_params().count(),
        request.cookies().count(),
    );
    let _ = request.subprotocols().count();
    if let Ok(crate::handshake::Route::Upgrade) = route(&request, |_| true, |_| None)
        && let Ok(key) = check_upgrade(&request, http_minor)
    {
        assert_eq!(key.len(), 24, "accepted keys are the base64 of 16 bytes");
    }
}

/// Decodes arbitrary bytes as channel messages of every protocol: never a
/// panic, and what decodes re-encodes into frames without failing.
pub fn channel_messages(data: &[u8]) {
    use crate::protocol::{amber, phoenix};
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(message) = phoenix::decode_text(text)
            && let phoenix::Payload::Json(payload) = message.payload
        {
            let frame = phoenix::push(message.join_ref, &message.topic, &message.event, payload);
            assert!(frame.len() > payload.get().len());
        }
        if let Ok(message) = amber::decode(text) {
            let null = serde_json::value::RawValue::NULL;
            let _ = amber::message(
                &message.topic,
                &message.subject,
                message.payload.unwrap_or(null),
            );
        }
    }
    if let Ok(push) = phoenix::decode_binary(data) {
        let frame = phoenix::binary_broadcast(push.topic, push.event, push.data);
        assert!(frame.is_ok(), "decoded fields are at most 255 bytes");
    }
}

/// Chunk sizes from 1 to 64, from a small linear congruential sequence.
fn chunk_sizes(seed: u8) -> impl Iterator<Item = usize> {
    let mut state = u32::from(seed) | 1;
    std::iter::repeat_with(move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((state >> 16) % 64) as usize + 1
    })
}

fn decode_with_chunks(
    wire: &[u8],
    config: &DecoderConfig,
    chunks: &mut dyn Iterator<Item = usize>,
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut at = 0;
    loop {
        loop {
            let result = decoder.decode(&mut buf, config);
            assert!(decoder.assembly_capacity() <= config.message_limit());
            match result {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return (messages, Some(err)),
            }
        }
        if at == wire.len() {
            return (messages, None);
        }
        let end = (at + chunks.next().unwrap_or(1)).min(wire.len());
        buf.extend_from_slice(&wire[at..end]);
        at = end;
    }
}

/// Reads one message from the script, appends its client frames to `wire`
/// and returns what the decoder should yield for it.
fn next_scripted_message<'a>(script: &'a [u8], wire: &mut BytesMut) -> Option<(Message, &'a [u8])> {
    let [kind, len, fragments, k0, k1, k2, k3, rest @ ..] = script else {
        return None;
    };
    let key = [*k0, *k1, *k2, *k3];
    let len = usize::from(*len).min(rest.len());
    let (payload, rest) = rest.split_at(len);
    let message = match kind % 5 {
        0 => {
            let text = String::from_utf8_lossy(payload).into_owned();
            encode_fragmented(wire, OpCode::Text, text.as_bytes(), *fragments, key);
            Message::Text(Utf8Bytes::from(text))
        }
        1 => {
            encode_fragmented(wire, OpCode::Binary, payload, *fragments, key);
            Message::Binary(Bytes::copy_from_slice(payload))
        }
        2 => {
            let payload = &payload[..payload.len().min(125)];
            client_frame(wire, true, OpCode::Ping, key, payload);
            Message::Ping(Bytes::copy_from_slice(payload))
        }
        3 => {
            let payload = &payload[..payload.len().min(125)];
            client_frame(wire, true, OpCode::Pong, key, payload);
            Message::Pong(Bytes::copy_from_slice(payload))
        }
        _ => {
            let code = 3000 + u16::from(*fragments) * 7;
            let reason = String::from_utf8_lossy(&payload[..payload.len().min(40)]).into_owned();
            let mut body = code.to_be_bytes().to_vec();
            body.extend_from_slice(reason.as_bytes());
            if body.len() > 125 {
                return None;
            }
            client_frame(wire, true, OpCode::Close, key, &body);
            Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from(reason),
            }))
        }
    };
    Some((message, rest))
}

/// Splits `payload` into `1 + fragments % 4` frames at even cuts.
fn encode_fragmented(
    wire: &mut BytesMut,
    opcode: OpCode,
    payload: &[u8],
    fragments: u8,
    key: [u8; 4],
) {
    let count = 1 + usize::from(fragments % 4);
    let step = payload.len().div_ceil(count).max(1);
    let mut pieces: Vec<&[u8]> = payload.chunks(step).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let frame_opcode = if i == 0 { opcode } else { OpCode::Continuation };
        client_frame(wire, i == last, frame_opcode, key, piece);
    }
}

/// Reads arbitrary bytes as a cluster bus envelope and checks that:
/// nothing panics, and whatever decodes re-encodes to an envelope that
/// decodes the same (JSON whitespace around a payload may be normalized,
/// so the bytes themselves may differ).
pub fn envelope(data: &[u8]) {
    use crate::cluster::Envelope;
    // What the Redis history script publishes: a place in the stream,
    // then an envelope.
    #[cfg(feature = "redis")]
    if let Some(published) = crate::cluster::history::decode_published(data) {
        assert!(!published.epoch.is_empty() && !published.epoch.contains(' '));
        assert!(published.envelope.len() < data.len());
        if let Ok(envelope) = Envelope::decode(published.envelope) {
            let encoded = envelope.encode().expect("a decoded envelope re-encodes");
            assert_eq!(Envelope::decode(&encoded).ok(), Some(envelope));
        }
        return;
    }
    if let Ok(envelope) = Envelope::decode(data) {
        let encoded = envelope.encode().expect("a decoded envelope re-encodes");
        let again = Envelope::decode(&encoded).expect("a re-encoded envelope decodes");
        assert_eq!(again, envelope, "decode and encode disagree");
    }
}

/// Inflates arbitrary bytes as a compressed message (permessage-deflate)
/// and round-trips them through the compressor, and checks that: nothing
/// panics, the output never passes the limit (too large is an error, found
/// before more than a step past it is held), and what is compressed comes
/// back unchanged within the limit, or as too large past it.
pub fn inflate(data: &[u8]) {
    use crate::wire::{Deflater, FrameHeader, InflateError, Inflater};
    let [params, payload @ ..] = data else {
        return;
    };
    let limit = 16 << (params & 0x0f);
    let mut inflater = Inflater::new();
    match inflater.inflate(payload, limit) {
        Ok(inflated) => assert!(inflated.len() <= limit, "inflated past the limit"),
        Err(InflateError::TooLarge { limit: reported }) => assert_eq!(reported, limit),
        Err(InflateError::Corrupt) => {}
    }
    let level = u32::from(params >> 4) % 10;
    let frame = Deflater::new(level).frame(OpCode::Binary, payload);
    let (header, header_len) = FrameHeader::parse(&frame)
        .expect("a compressed frame parses")
        .expect("a compressed frame is whole");
    assert_eq!(header.rsv, crate::wire::RSV1);
    match inflater.inflate(&frame[header_len..], limit) {
        Ok(inflated) => assert_eq!(&inflated[..], payload, "round trip changed the message"),
        Err(InflateError::TooLarge { .. }) => assert!(payload.len() > limit),
        Err(InflateError::Corrupt) => panic!("herald's own compression was refused"),
    }
}

/// Feeds a script of compressed messages through a connection that
/// negotiated permessage-deflate, as a client sends them (masked, RSV1 on
/// the first frame, fragmented), and checks that: nothing panics, every
/// message handed on is within the message limit (inflated), text is
/// UTF-8, and a failure is a protocol error with its close code.
///
/// The script: a byte for the limit, then per message a flags byte (text
/// or binary, compressed or not, fragments) and a length byte, then that
/// many payload bytes (the compressed bytes as the fuzzer chooses them).
pub fn inflate_frames(data: &[u8]) {
    use std::cell::RefCell;

    use crate::{
        config::ServerConfig,
        conn::{Connection, Env, Input},
        metrics::LoopStats,
        wire::{Inflater, RSV1},
    };
    let [limit, script @ ..] = data else {
        return;
    };
    let mut script: &[u8] = script;
    let limit = 16usize << (limit & 0x0f);
    let config = ServerConfig {
        decoder: DecoderConfig::default().max_message_size(limit),
        ..ServerConfig::default()
    };
    let stats = LoopStats::default();
    let inflater = RefCell::new(Inflater::new());
    let env = Env {
        config: &config,
        stats: &stats,
        inflater: &inflater,
    };
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let mut conn = Connection::accepted(peer, false, 0, env);
    conn.open(Bytes::new(), true, 0, env);
    let mut wire = BytesMut::new();
    while let [flags, len, rest @ ..] = script {
        let flags = *flags;
        let len = usize::from(*len).min(rest.len());
        let (payload, next) = rest.split_at(len);
        script = next;
        let opcode = if flags & 1 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let start = wire.len();
        encode_fragmented(&mut wire, opcode, payload, flags >> 2, [1, 2, 3, 4]);
        if flags & 2 != 0 {
            wire[start] |= RSV1 << 4;
        }
    }
    while let Some(input) = conn.next_input(&mut wire, 0, env) {
        match input {
            Input::Text(text) => assert!(text.len() <= limit, "text past the limit"),
            Input::Binary(data) => assert!(data.len() <= limit, "binary past the limit"),
            Input::ProtocolError(err) => {
                let code = u16::from(err.close_code());
                assert!(
                    [1002, 1007, 1009].contains(&code),
                    "close code {code} for {err}"
                );
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflate_frames_oracle_holds_on_sample_inputs() {
        inflate_frames(&[]);
        inflate_frames(&[5, 0x02, 4, 0xf2, 0x48, 0xcd, 0xc9]);
        let frame =
            crate::wire::Deflater::new(6).frame(OpCode::Text, &b"hello hello hello".repeat(9));
        let (_, header) = crate::wire::FrameHeader::parse(&frame).unwrap().unwrap();
        let payload = &frame[header..];
        let script = [&[6u8, 0x02 | 0x04, payload.len() as u8][..], payload].concat();
        inflate_frames(&script);
        let bomb = crate::wire::Deflater::new(9).frame(OpCode::Binary, &[0u8; 1 << 16]);
        let (_, header) = crate::wire::FrameHeader::parse(&bomb).unwrap().unwrap();
        let payload = &bomb[header..];
        inflate_frames(&[&[1u8, 0x03, payload.len() as u8][..], payload].concat());
        // Found by the fuzzer: an uncompressed message past the limit on a
        // connection whose wire limits have room for compression.
        inflate_frames(include_bytes!(
            "../../fuzz/seeds/inflate_frames/uncompressed-past-the-limit"
        ));
    }

    #[test]
    fn inflate_oracle_holds_on_sample_inputs() {
        inflate(&[]);
        inflate(&[0x30]);
        inflate(&[0x6f, 0xff, 0x00, 0x01, 0x02]);
        inflate(&[0x92, 0x4b, 0x04, 0x00]);
        let text = br#"{"event":"new_msg","payload":{"body":"hello hello hello"}}"#.repeat(30);
        inflate(&[&[0x61][..], &text].concat());
        inflate(&[&[0x90][..], &text].concat());
    }

    #[test]
    fn a_sync_envelope_with_a_topic_is_refused() {
        // Found by the fuzzer: kind 4 with a topic would re-encode without it.
        envelope(&[
            0x01, 0x04, 0x23, 0, 0, 0, 0, 0x34, 0x20, 0, 0x07, 0, 0, 0x34, 0x20, 0, 0, 0, 0x20,
            0x20, 0x20, 0x20, 0x35,
        ]);
        let sync = crate::cluster::Envelope {
            origin: 1,
            topic: String::new(),
            content: crate::cluster::Content::Sync(Bytes::from_static(b"{}")),
        };
        envelope(&sync.encode().unwrap());
    }

    #[test]
    fn decode_oracle_holds_on_sample_inputs() {
        decode_in_chunks(&[]);
        decode_in_chunks(&[
            0x33, 7, 0x81, 0x85, 1, 2, 3, 4, 0x49, 0x67, 0x6f, 0x68, 0x6e,
        ]);
        let noise: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..64 {
            decode_in_chunks(&noise[start..]);
        }
    }

    #[test]
    fn envelope_oracle_holds_on_the_seeds_and_noise() {
        envelope(include_bytes!("../../fuzz/seeds/envelope/channel"));
        envelope(include_bytes!("../../fuzz/seeds/envelope/frames"));
        envelope(include_bytes!("../../fuzz/seeds/envelope/history"));
        envelope(&[]);
        envelope(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9, 9, 9, 9]);
    }

    #[test]
    fn handshake_and_channel_oracles_hold_on_sample_inputs() {
        handshake(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        handshake(b"\x00\xff\r\n\r\n");
        handshake(b"GET /");
        channel_messages(br#"["1","2","room:1","new_msg",{"a":[1,2]}]"#);
        channel_messages(br#"{"event":"message","topic":"t","subject":"s","payload":null}"#);
        channel_messages(b"\x00\x01\x01\x01\x01abcd\xff");
        channel_messages(b"\xc3");
    }

    #[test]
    fn round_trip_oracle_holds_on_sample_scripts() {
        round_trip(&[]);
        let mut script = vec![9u8];
        for kind in 0..5u8 {
            script.extend_from_slice(&[kind, 20, kind, 1, 2, 3, 4]);
            script.extend((0..20).map(|i| b'a' + i));
        }
        round_trip(&script);
    }
}
