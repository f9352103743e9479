//! Decoder and encoder tests: one per RFC 6455 rule, named after the rule,
//! plus property tests that round-trip messages through client encoding,
//! masking, fragmentation and random read chunkings.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    client_frame(&mut buf, fin, opcode, KEY, payload);
    buf
}

/// Feeds `wire` to a fresh decoder in chunks of the given sizes (cycled),
/// collecting messages until the input is exhausted or an error occurs.
fn decode_chunked(
    wire: &[u8],
    chunk_sizes: &[usize],
    config: &DecoderConfig,
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut at = 0;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    loop {
        loop {
            match decoder.decode(&mut buf, config) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return (messages, Some(err)),
            }
        }
        if at == wire.len() {
            return (messages, None);
        }
        let size = sizes.next().unwrap_or(wire.len()).max(1);
        let end = (at + size).min(wire.len());
        buf.extend_from_slice(&wire[at..end]);
        at = end;
    }
}

fn decode_all(wire: &[u8]) -> (Vec<Message>, Option<ProtocolError>) {
    decode_chunked(wire, &[wire.len()], &DecoderConfig::default())
}

#[track_caller]
fn assert_fails_with(wire: &[u8], expected: ProtocolError, code: CloseCode) {
    let (_, err) = decode_all(wire);
    assert_eq!(err, Some(expected));
    assert_eq!(expected.close_code(), code);
}

fn text(s: &str) -> Message {
    Message::Text(Utf8Bytes::from(s.to_owned()))
}

// ---- Framing -------------------------------------------------------------

#[test]
fn frames_parse_across_arbitrary_partial_reads() {
    let mut wire = frame(true, OpCode::Text, "héllo wörld".as_bytes());
    wire.extend_from_slice(&frame(true, OpCode::Binary, &[0u8; 300]));
    wire.extend_from_slice(&frame(true, OpCode::Ping, b"p"));
    let expected = vec![
        text("héllo wörld"),
        Message::Binary(Bytes::from(vec![0u8; 300])),
        Message::Ping(Bytes::from_static(b"p")),
    ];
    for chunk in 1..=wire.len() {
        let (messages, err) = decode_chunked(&wire, &[chunk], &DecoderConfig::default());
        assert_eq!(err, None, "chunk {chunk}");
        assert_eq!(messages, expected, "chunk {chunk}");
    }
}

#[test]
fn payload_lengths_of_7_16_and_64_bits_decode() {
    for len in [0, 125, 126, 65_535, 65_536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let (messages, err) = decode_all(&frame(true, OpCode::Binary, &payload));
        assert_eq!(err, None, "len {len}");
        assert_eq!(messages, vec![Message::Binary(Bytes::from(payload))]);
    }
}

#[test]
fn payload_length_with_top_bit_set_is_a_protocol_error() {
    let mut wire = vec![0x82, 0xFF];
    wire.extend_from_slice(&(u64::MAX).to_be_bytes());
    wire.extend_from_slice(&KEY);
    assert_fails_with(
        &wire,
        ProtocolError::LengthTopBitSet,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn non_minimal_payload_length_is_a_protocol_error() {
    let wire = [0x82, 0xFE, 0x00, 0x05, 1, 2, 3, 4, 0, 0, 0, 0, 0];
    assert_fails_with(
        &wire,
        ProtocolError::NonMinimalLength,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn client_frames_must_be_masked() {
    let wire = [0x81, 0x02, b'h', b'i'];
    assert_fails_with(
        &wire,
        ProtocolError::UnmaskedFrame,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn rsv_bits_must_be_zero_without_a_negotiated_extension() {
    for bits in 1..=7u8 {
        let mut wire = frame(true, OpCode::Text, b"x");
        wire[0] |= bits << 4;
        assert_fails_with(
            &wire,
            ProtocolError::ReservedBits { bits },
            CloseCode::PROTOCOL_ERROR,
        );
    }
}

#[test]
fn negotiated_rsv_bits_are_accepted_on_the_first_data_frame_only() {
    let config = DecoderConfig::default().accept_rsv_bits(0b100);
    let mut wire = frame(false, OpCode::Text, b"\xff\x00");
    wire[0] |= 0x40; // RSV1: compressed bytes, not UTF-8
    wire.extend_from_slice(&frame(true, OpCode::Continuation, b"\x01"));
    let (messages, err) = decode_chunked(&wire, &[3], &config);
    assert_eq!(err, None);
    assert_eq!(
        messages,
        vec![Message::Encoded {
            opcode: OpCode::Text,
            rsv: 0b100,
            payload: Bytes::from_static(b"\xff\x00\x01"),
        }]
    );

    // On a continuation or a control frame the same bit is an error.
    let mut wire = frame(false, OpCode::Binary, b"a");
    let mut continuation = frame(true, OpCode::Continuation, b"b");
    continuation[0] |= 0x40;
    wire.extend_from_slice(&continuation);
    let (_, err) = decode_chunked(&wire, &[64], &config);
    assert_eq!(err, Some(ProtocolError::ReservedBits { bits: 0b100 }));
    let mut ping = frame(true, OpCode::Ping, b"");
    ping[0] |= 0x40;
    let (_, err) = decode_chunked(&ping, &[64], &config);
    assert_eq!(err, Some(ProtocolError::ReservedBits { bits: 0b100 }));
    // RSV2 stays reserved.
    let mut wire = frame(true, OpCode::Binary, b"a");
    wire[0] |= 0x20;
    let (_, err) = decode_chunked(&wire, &[64], &config);
    assert_eq!(err, Some(ProtocolError::ReservedBits { bits: 0b010 }));
}

#[test]
fn reserved_opcodes_are_protocol_errors() {
    for opcode in [0x3u8, 0x7, 0xB, 0xF] {
        let wire = [0x80 | opcode, 0x80, 1, 2, 3, 4];
        assert_fails_with(
            &wire,
            ProtocolError::ReservedOpcode(opcode),
            CloseCode::PROTOCOL_ERROR,
        );
    }
}

#[test]
fn control_frames_must_have_fin_set() {
    let wire = frame(false, OpCode::Ping, b"");
    assert_fails_with(
        &wire,
        ProtocolError::FragmentedControlFrame,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn control_frames_carry_at_most_125_bytes() {
    let (messages, err) = decode_all(&frame(true, OpCode::Pong, &[7; 125]));
    assert_eq!(err, None);
    assert_eq!(messages, vec![Message::Pong(Bytes::from(vec![7; 125]))]);
    let wire = frame(true, OpCode::Ping, &[7; 126]);
    assert_fails_with(
        &wire,
        ProtocolError::ControlFrameTooLong,
        CloseCode::PROTOCOL_ERROR,
    );
}

// ---- Fragmentation -------------------------------------------------------

#[test]
fn continuation_without_an_open_message_is_a_protocol_error() {
    let wire = frame(true, OpCode::Continuation, b"orphan");
    assert_fails_with(
        &wire,
        ProtocolError::UnexpectedContinuation,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn new_data_frame_while_a_fragmented_message_is_open_is_a_protocol_error() {
    let mut wire = frame(false, OpCode::Text, b"first half");
    wire.extend_from_slice(&frame(true, OpCode::Binary, b"intruder"));
    assert_fails_with(
        &wire,
        ProtocolError::ExpectedContinuation,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn control_frames_interleaved_within_a_fragmented_message_work() {
    let mut wire = frame(false, OpCode::Text, b"Hel");
    wire.extend_from_slice(&frame(true, OpCode::Ping, b"1"));
    wire.extend_from_slice(&frame(false, OpCode::Continuation, b"lo, "));
    wire.extend_from_slice(&frame(true, OpCode::Pong, b"2"));
    wire.extend_from_slice(&frame(true, OpCode::Continuation, b"world"));
    let (messages, err) = decode_all(&wire);
    assert_eq!(err, None);
    assert_eq!(
        messages,
        vec![
            Message::Ping(Bytes::from_static(b"1")),
            Message::Pong(Bytes::from_static(b"2")),
            text("Hello, world"),
        ]
    );
}

// ---- UTF-8 ---------------------------------------------------------------

#[test]
fn text_messages_must_be_valid_utf8() {
    let wire = frame(true, OpCode::Text, b"caf\xe9");
    assert_fails_with(
        &wire,
        ProtocolError::InvalidUtf8,
        CloseCode::INVALID_PAYLOAD,
    );
    // Binary messages are not validated.
    let (messages, err) = decode_all(&frame(true, OpCode::Binary, b"caf\xe9"));
    assert_eq!(err, None);
    assert_eq!(messages.len(), 1);
}

#[test]
fn code_points_split_across_fragments_are_valid() {
    let snowman = "☃".as_bytes(); // E2 98 83
    let mut wire = frame(false, OpCode::Text, &snowman[..1]);
    wire.extend_from_slice(&frame(false, OpCode::Continuation, &snowman[1..2]));
    wire.extend_from_slice(&frame(true, OpCode::Continuation, &snowman[2..]));
    let (messages, err) = decode_all(&wire);
    assert_eq!(err, None);
    assert_eq!(messages, vec![text("☃")]);
}

#[test]
fn text_ending_inside_a_code_point_is_invalid_utf8() {
    let snowman = "☃".as_bytes();
    let mut wire = frame(false, OpCode::Text, &snowman[..1]);
    wire.extend_from_slice(&frame(true, OpCode::Continuation, &snowman[1..2]));
    assert_fails_with(
        &wire,
        ProtocolError::InvalidUtf8,
        CloseCode::INVALID_PAYLOAD,
    );
}

#[test]
fn invalid_utf8_fails_before_the_rest_of_the_frame_arrives() {
    let mut payload = b"ok \xc0".to_vec();
    payload.resize(10_000, b'a');
    let wire = frame(true, OpCode::Text, &payload);
    // Deliver the header and the first 4 payload bytes only.
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::from(&wire[..wire.len() - payload.len() + 4]);
    assert_eq!(
        decoder.decode(&mut buf, &DecoderConfig::default()),
        Err(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn invalid_utf8_fails_before_the_rest_of_the_message_arrives() {
    // First fragment valid, second starts an impossible sequence (F5), and
    // the message is never finished: the error comes with that fragment.
    let mut wire = frame(false, OpCode::Text, b"fine");
    wire.extend_from_slice(&frame(false, OpCode::Continuation, b"\xf5"));
    let (_, err) = decode_all(&wire);
    assert_eq!(err, Some(ProtocolError::InvalidUtf8));
}

// ---- Limits --------------------------------------------------------------

#[test]
fn frame_size_limit_is_enforced_from_the_header_before_the_payload() {
    let config = DecoderConfig::default().max_frame_size(1024);
    let wire = frame(true, OpCode::Binary, &[0; 1025]);
    // Only the 4-byte header and mask: no payload byte has arrived.
    let mut buf = BytesMut::from(&wire[..8]);
    let err = Decoder::new().decode(&mut buf, &config);
    assert_eq!(
        err,
        Err(ProtocolError::FrameTooLarge {
            len: 1025,
            max: 1024
        })
    );
    assert_eq!(
        ProtocolError::FrameTooLarge {
            len: 1025,
            max: 1024
        }
        .close_code(),
        CloseCode::MESSAGE_TOO_BIG
    );
    // The limit itself is fine.
    let (_, err) = decode_chunked(&frame(true, OpCode::Binary, &[0; 1024]), &[99], &config);
    assert_eq!(err, None);
}

#[test]
fn frames_over_4_gib_are_refused_whatever_the_limit() {
    let config = DecoderConfig::default()
        .max_frame_size(usize::MAX)
        .max_message_size(usize::MAX);
    let len = (u32::MAX as u64) + 1;
    let mut wire = vec![0x82, 0xFF];
    wire.extend_from_slice(&len.to_be_bytes());
    wire.extend_from_slice(&KEY);
    let (_, err) = decode_chunked(&wire, &[wire.len()], &config);
    assert_eq!(
        err,
        Some(ProtocolError::FrameTooLarge {
            len,
            max: usize::MAX
        })
    );
}

#[test]
fn message_size_limit_is_enforced_from_the_header_of_the_crossing_fragment() {
    let config = DecoderConfig::default().max_message_size(100);
    let mut wire = frame(false, OpCode::Binary, &[0; 60]);
    let second = frame(true, OpCode::Continuation, &[0; 41]);
    wire.extend_from_slice(&second[..6]); // header and mask only
    let (_, err) = decode_chunked(&wire, &[wire.len()], &config);
    assert_eq!(
        err,
        Some(ProtocolError::MessageTooLarge { len: 101, max: 100 })
    );
    // A single frame over the message limit is refused too.
    let (_, err) = decode_chunked(&frame(true, OpCode::Text, &[b'a'; 101]), &[8], &config);
    assert_eq!(
        err,
        Some(ProtocolError::MessageTooLarge { len: 101, max: 100 })
    );
}

#[test]
fn many_tiny_fragments_assemble_up_to_the_message_limit() {
    let limit = 10_000;
    let config = DecoderConfig::default().max_message_size(limit);
    let mut wire = frame(false, OpCode::Binary, &[1; 7]);
    let mut total = 7;
    while total + 7 < limit {
        wire.extend_from_slice(&frame(false, OpCode::Continuation, &[1; 7]));
        total += 7;
    }
    wire.extend_from_slice(&frame(true, OpCode::Continuation, &vec![1; limit - total]));
    let (messages, err) = decode_chunked(&wire, &[wire.len()], &config);
    assert_eq!(err, None);
    let [Message::Binary(payload)] = &messages[..] else {
        panic!("expected one binary message, got {messages:?}");
    };
    assert_eq!(payload.len(), limit);
    assert!(payload.iter().all(|&b| b == 1));
}

// ---- Close frames --------------------------------------------------------

#[test]
fn close_frame_with_empty_payload_is_valid() {
    let (messages, err) = decode_all(&frame(true, OpCode::Close, b""));
    assert_eq!(err, None);
    assert_eq!(messages, vec![Message::Close(None)]);
}

#[test]
fn close_frame_with_one_byte_payload_is_a_protocol_error() {
    let wire = frame(true, OpCode::Close, &[0x03]);
    assert_fails_with(
        &wire,
        ProtocolError::TruncatedClosePayload,
        CloseCode::PROTOCOL_ERROR,
    );
}

#[test]
fn close_codes_not_allowed_on_the_wire_are_protocol_errors() {
    for code in [
        0u16,
        999,
        1004,
        1005,
        1006,
        1015,
        1016,
        2000,
        2999,
        5000,
        u16::MAX,
    ] {
        let wire = frame(true, OpCode::Close, &code.to_be_bytes());
        assert_fails_with(
            &wire,
            ProtocolError::InvalidCloseCode(code),
            CloseCode::PROTOCOL_ERROR,
        );
    }
    for code in [1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ☃".as_bytes());
        let (messages, err) = decode_all(&frame(true, OpCode::Close, &payload));
        assert_eq!(err, None, "code {code}");
        assert_eq!(
            messages,
            vec![Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from("bye ☃".to_owned()),
            }))]
        );
    }
}

#[test]
fn close_reason_must_be_valid_utf8() {
    let wire = frame(true, OpCode::Close, b"\x03\xe8\xff");
    assert_fails_with(
        &wire,
        ProtocolError::InvalidUtf8,
        CloseCode::INVALID_PAYLOAD,
    );
}

// ---- Decoder contract ----------------------------------------------------

#[test]
fn a_failed_decoder_keeps_returning_its_error() {
    let mut decoder = Decoder::new();
    let config = DecoderConfig::default();
    let mut buf = BytesMut::from(&[0x81u8, 0x00][..]);
    assert_eq!(
        decoder.decode(&mut buf, &config),
        Err(ProtocolError::UnmaskedFrame)
    );
    buf.extend_from_slice(&frame(true, OpCode::Text, b"valid"));
    assert_eq!(
        decoder.decode(&mut buf, &config),
        Err(ProtocolError::UnmaskedFrame)
    );
}

#[test]
fn unfragmented_payloads_share_the_read_buffer() {
    let mut buf = frame(true, OpCode::Binary, &[9; 512]);
    let buffer_start = buf.as_ptr() as usize;
    let buffer_end = buffer_start + buf.len();
    let message = Decoder::new().decode(&mut buf, &DecoderConfig::default());
    let Ok(Some(Message::Binary(payload))) = message else {
        panic!("expected a binary message, got {message:?}");
    };
    let at = payload.as_ptr() as usize;
    assert!(
        (buffer_start..buffer_end).contains(&at),
        "payload was copied"
    );
}

#[test]
fn decoder_is_idle_only_between_messages() {
    let config = DecoderConfig::default();
    let mut decoder = Decoder::new();
    assert!(decoder.is_idle());
    let wire = frame(true, OpCode::Text, b"abc");
    let mut buf = BytesMut::from(&wire[..7]);
    assert_eq!(decoder.decode(&mut buf, &config), Ok(None));
    assert!(!decoder.is_idle());
    buf.extend_from_slice(&wire[7..]);
    assert!(decoder.decode(&mut buf, &config).unwrap().is_some());
    assert!(decoder.is_idle());
}

#[test]
fn decoder_state_stays_small() {
    // Every connection owns one decoder; see the connection memory budget.
    assert!(size_of::<Decoder>() <= 64, "{}", size_of::<Decoder>());
}

// ---- Encoder -------------------------------------------------------------

#[test]
fn server_frames_are_unmasked_with_minimal_length() {
    assert_eq!(&text_frame("abc")[..], b"\x81\x03abc");
    let big = binary_frame(&[0; 70_000]);
    assert_eq!(&big[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    assert_eq!(big.len(), 70_010);
}

#[test]
fn control_encoders_refuse_payloads_over_125_bytes() {
    assert_eq!(
        ping_frame(&[0; 126]),
        Err(EncodeError::ControlPayloadTooLong(126))
    );
    assert_eq!(
        pong_frame(&[0; 126]),
        Err(EncodeError::ControlPayloadTooLong(126))
    );
    let reason = "x".repeat(124);
    assert_eq!(
        close_frame(CloseCode::NORMAL, &reason),
        Err(EncodeError::ControlPayloadTooLong(126))
    );
    assert!(close_frame(CloseCode::NORMAL, &reason[..123]).is_ok());
}

#[test]
fn close_encoder_refuses_codes_not_allowed_on_the_wire() {
    for code in [1005u16, 1006, 1015, 2000] {
        assert_eq!(
            close_frame(CloseCode::from(code), ""),
            Err(EncodeError::CloseCodeNotSendable(code))
        );
    }
}

#[test]
fn frame_builder_matches_the_one_shot_encoder() {
    for len in [0, 1, 125, 126, 65_535, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut builder = FrameBuilder::with_capacity(16);
        builder.extend_from_slice(&payload);
        assert_eq!(builder.payload(), &payload[..]);
        let built = builder.finish(OpCode::Binary).unwrap();
        assert_eq!(built, server_frame(OpCode::Binary, &payload), "len {len}");
    }
    let mut builder = FrameBuilder::with_capacity(0);
    builder.extend_from_slice(&[0; 126]);
    assert_eq!(
        builder.finish(OpCode::Ping),
        Err(EncodeError::ControlPayloadTooLong(126))
    );
}

#[test]
fn header_and_payload_as_two_iovecs_equal_the_contiguous_frame() {
    let payload = Bytes::from(vec![5u8; 300]);
    let header = server_header(OpCode::Text, payload.len());
    let mut joined = header.as_bytes().to_vec();
    joined.extend_from_slice(&payload);
    assert_eq!(joined, server_frame(OpCode::Text, &payload));
}

// ---- Properties ----------------------------------------------------------

/// A message as a client would send it, with how to fragment it.
#[derive(Debug, Clone)]
enum Sent {
    Data {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        key: [u8; 4],
    },
    Control {
        opcode: OpCode,
        payload: Vec<u8>,
        key: [u8; 4],
    },
    Close {
        code: u16,
        reason: String,
        key: [u8; 4],
    },
}

fn sent_message() -> impl Strategy<Value = Sent> {
    let data = (
        any::<bool>(),
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..400),
        ],
        proptest::collection::vec(0usize..400, 0..4),
        any::<[u8; 4]>(),
    )
        .prop_map(|(text, payload, mut cuts, key)| {
            let payload = if text {
                String::from_utf8_lossy(&payload).into_owned().into_bytes()
            } else {
                payload
            };
            cuts.iter_mut().for_each(|c| *c = (*c).min(payload.len()));
            cuts.sort_unstable();
            Sent::Data {
                text,
                payload,
                cuts,
                key,
            }
        });
    let control = (
        prop_oneof![Just(OpCode::Ping), Just(OpCode::Pong)],
        proptest::collection::vec(any::<u8>(), 0..=125),
        any::<[u8; 4]>(),
    )
        .prop_map(|(opcode, payload, key)| Sent::Control {
            opcode,
            payload,
            key,
        });
    let close = (
        prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999],
        "[a-zé☃]{0,30}",
        any::<[u8; 4]>(),
    )
        .prop_map(|(code, reason, key)| Sent::Close { code, reason, key });
    prop_oneof![4 => data, 2 => control, 1 => close]
}

impl Sent {
    fn encode(&self, wire: &mut BytesMut) {
        match self {
            Self::Data {
                text,
                payload,
                cuts,
                key,
            } => {
                let first = if *text { OpCode::Text } else { OpCode::Binary };
                let mut start = 0;
                let mut opcode = first;
                for &cut in cuts {
                    client_frame(wire, false, opcode, *key, &payload[start..cut]);
                    opcode = OpCode::Continuation;
                    start = cut;
                }
                client_frame(wire, true, opcode, *key, &payload[start..]);
            }
            Self::Control {
                opcode,
                payload,
                key,
            } => client_frame(wire, true, *opcode, *key, payload),
            Self::Close { code, reason, key } => {
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                client_frame(wire, true, OpCode::Close, *key, &payload);
            }
        }
    }

    fn expected(&self) -> Message {
        match self {
            Self::Data {
                text: true,
                payload,
                ..
            } => Message::Text(Utf8Bytes::try_from_bytes(Bytes::from(payload.clone())).unwrap()),
            Self::Data { payload, .. } => Message::Binary(Bytes::from(payload.clone())),
            Self::Control {
                opcode: OpCode::Ping,
                payload,
                ..
            } => Message::Ping(Bytes::from(payload.clone())),
            Self::Control { payload, .. } => Message::Pong(Bytes::from(payload.clone())),
            Self::Close { code, reason, .. } => Message::Close(Some(CloseFrame {
                code: CloseCode::from(*code),
                reason: Utf8Bytes::from(reason.clone()),
            })),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Encode messages as a client would (masked, fragmented), feed the
    /// bytes in random chunkings, and get the same messages back.
    #[test]
    fn masked_fragmented_messages_round_trip_in_any_chunking(
        sent in proptest::collection::vec(sent_message(), 1..8),
        chunks in proptest::collection::vec(1usize..200, 1..6),
    ) {
        let mut wire = BytesMut::new();
        for message in &sent {
            message.encode(&mut wire);
        }
        let (messages, err) = decode_chunked(&wire, &chunks, &DecoderConfig::default());
        prop_assert_eq!(err, None);
        let expected: Vec<Message> = sent.iter().map(Sent::expected).collect();
        prop_assert_eq!(messages, expected);
    }

    /// Control frames may come between the fragments of a message.
    #[test]
    fn control_frames_between_fragments_round_trip(
        payload in "[a-z☃😀]{0,60}",
        cut in 0usize..240,
        ping in proptest::collection::vec(any::<u8>(), 0..=125),
        chunks in proptest::collection::vec(1usize..50, 1..4),
    ) {
        let bytes = payload.as_bytes();
        let cut = cut.min(bytes.len());
        let mut wire = BytesMut::new();
        client_frame(&mut wire, false, OpCode::Text, KEY, &bytes[..cut]);
        client_frame(&mut wire, true, OpCode::Ping, KEY, &ping);
        client_frame(&mut wire, true, OpCode::Continuation, KEY, &bytes[cut..]);
        let (messages, err) = decode_chunked(&wire, &chunks, &DecoderConfig::default());
        prop_assert_eq!(err, None);
        prop_assert_eq!(messages, vec![Message::Ping(Bytes::from(ping)), text(&payload)]);
    }

    /// Any bytes at all: chunking never changes the outcome, and nothing
    /// panics.
    #[test]
    fn arbitrary_bytes_decode_the_same_in_any_chunking(
        wire in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..40, 1..5),
    ) {
        let config = DecoderConfig::default().max_frame_size(4096).max_message_size(8192);
        let one_shot = decode_chunked(&wire, &[wire.len()], &config);
        let chunked = decode_chunked(&wire, &chunks, &config);
        prop_assert_eq!(one_shot, chunked);
    }
}
