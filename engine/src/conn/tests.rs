//! The connection's life on virtual time: every rule of the handshake, the
//! heartbeat, the idle timeout and the close handshake, driven tick by tick
//! with no socket and no clock.
//!
//! One real-socket test of each remains in `tests/tests/server.rs` as an
//! integration check.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use bytes::BytesMut;

use super::*;
use crate::wire::{FrameHeader, OpCode, client_frame};

const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50_000);

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A connection and everything around it: its loop's configuration and
/// counters, the bytes the client has sent, the bytes written to it.
struct Harness {
    conn: Connection,
    config: ServerConfig,
    stats: LoopStats,
    inflater: RefCell<Inflater>,
    input: BytesMut,
    output: Vec<u8>,
    now: Tick,
}

/// 1 s handshake timeout, ping every 3 s, idle after 10 s, close after 2 s
/// (10, 30, 100 and 20 ticks).
fn config() -> ServerConfig {
    ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

impl Harness {
    fn new(config: ServerConfig) -> Self {
        let stats = LoopStats::default();
        let conn = Connection::accepted(
            PEER,
            false,
            0,
            Env {
                config: &config,
                stats: &stats,
                inflater: &RefCell::new(Inflater::new()),
            },
        );
        Self {
            conn,
            config,
            stats,
            inflater: RefCell::new(Inflater::new()),
            input: BytesMut::new(),
            output: Vec::new(),
            now: 0,
        }
    }

    fn count(&self, counter: impl Fn(&LoopStats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Relaxed)
    }

    /// A connection whose upgrade was accepted, with the 101 written.
    fn open() -> Self {
        Self::open_with(config())
    }

    /// A connection open under `config`, with the 101 written.
    fn open_with(config: ServerConfig) -> Self {
        let mut harness = Self::new(config);
        harness.input.extend_from_slice(UPGRADE);
        let HandshakeStep::Upgrade(upgrade) = harness.poll_handshake() else {
            panic!("a valid upgrade request");
        };
        let response = handshake::switching_protocols(&upgrade.key, None, None);
        let (now, env) = (
            harness.now,
            Env {
                config: &harness.config,
                stats: &harness.stats,
                inflater: &harness.inflater,
            },
        );
        harness.conn.open(response, false, now, env);
        let sync = harness.sync();
        assert_eq!(sync.wake_at, Some(30), "the first ping is due");
        harness.flush();
        assert!(harness.output.starts_with(b"HTTP/1.1 101"));
        harness.output.clear();
        harness
    }

    fn poll_handshake(&mut self) -> HandshakeStep {
        let env = Env {
            config: &self.config,
            stats: &self.stats,
            inflater: &self.inflater,
        };
        self.conn.poll_handshake(&mut self.input, self.now, env)
    }

    /// The client sends a masked frame.
    fn client_sends(&mut self, opcode: OpCode, payload: &[u8]) {
        client_frame(&mut self.input, true, opcode, [1, 2, 3, 4], payload);
        self.conn.received(self.now);
    }

    fn next_input(&mut self) -> Option<Input> {
        let env = Env {
            config: &self.config,
            stats: &self.stats,
            inflater: &self.inflater,
        };
        self.conn.next_input(&mut self.input, self.now, env)
    }

    fn sync(&mut self) -> Followup {
        let env = Env {
            config: &self.config,
            stats: &self.stats,
            inflater: &self.inflater,
        };
        self.conn.sync(self.now, env)
    }

    /// Advances virtual time to `tick` and fires the deadline if it is due.
    fn tick_to(&mut self, tick: Tick) -> Expired {
        self.now = tick;
        let env = Env {
            config: &self.config,
            stats: &self.stats,
            inflater: &self.inflater,
        };
        self.conn.on_deadline(tick, env)
    }

    /// Writes everything queued into `output`.
    fn flush(&mut self) -> AfterFlush {
        let (result, _) = self.conn.flush(&mut self.output);
        assert_eq!(result.unwrap(), Flushed::All);
        self.conn.after_flush()
    }

    /// The server frames written so far, as (opcode, payload).
    fn frames(&self) -> Vec<(OpCode, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut rest = &self.output[..];
        while let Ok(Some((header, len))) = FrameHeader::parse(rest) {
            let end = len + header.payload_len as usize;
            frames.push((header.opcode, rest[len..end].to_vec()));
            rest = &rest[end..];
        }
        assert!(rest.is_empty(), "only whole frames are written");
        frames
    }
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

#[test]
fn a_handshake_that_never_completes_times_out_at_its_deadline() {
    let mut harness = Harness::new(config());
    assert_eq!(harness.sync().wake_at, Some(10));
    harness.input.extend_from_slice(b"GET /ws HTTP/1.1\r\nHost");
    assert!(matches!(
        harness.poll_handshake(),
        HandshakeStep::Incomplete
    ));
    assert_eq!(harness.tick_to(9), Expired::Stale);
    assert_eq!(harness.tick_to(10), Expired::HandshakeTimeout);
    assert_eq!(harness.count(|s| &s.handshakes_refused), 1);
    assert!(
        !harness.conn.take_close_report(),
        "never opened, never reported"
    );
}

#[test]
fn a_bad_request_gets_its_status_then_the_connection_ends() {
    let mut harness = Harness::new(config());
    harness
        .input
        .extend_from_slice(b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(harness.poll_handshake(), HandshakeStep::Responded));
    assert_eq!(harness.count(|s| &s.handshakes_refused), 1);
    let sync = harness.sync();
    assert!(sync.flush);
    assert_eq!(sync.wake_at, Some(20), "the close timeout bounds the wait");
    assert_eq!(harness.flush(), AfterFlush::ShutdownWrite);
    assert!(harness.output.starts_with(b"HTTP/1.1 405"));
    // Whatever else the peer sends is discarded.
    harness.input.extend_from_slice(b"more bytes");
    assert!(harness.next_input().is_none());
    assert!(harness.input.is_empty());
    assert_eq!(harness.tick_to(20), Expired::CloseTimeout);
}

#[test]
fn a_head_over_the_limit_is_refused_before_it_ends() {
    let mut config = config();
    config.max_head_bytes = 512;
    let mut harness = Harness::new(config);
    harness.input.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
    harness.input.extend_from_slice(&[b'a'; 600]);
    assert!(matches!(harness.poll_handshake(), HandshakeStep::Responded));
    harness.flush();
    assert!(harness.output.starts_with(b"HTTP/1.1 431"));
}

#[test]
fn an_upgrade_past_the_connection_limit_gets_503() {
    let config = config();
    let stats = LoopStats::default();
    let mut conn = Connection::accepted(
        PEER,
        true,
        0,
        Env {
            config: &config,
            stats: &stats,
            inflater: &RefCell::new(Inflater::new()),
        },
    );
    let mut input = BytesMut::from(UPGRADE);
    let env = Env {
        config: &config,
        stats: &stats,
        inflater: &RefCell::new(Inflater::new()),
    };
    assert!(matches!(
        conn.poll_handshake(&mut input, 0, env),
        HandshakeStep::Responded
    ));
    let mut output = Vec::new();
    let _ = conn.flush(&mut output);
    assert!(output.starts_with(b"HTTP/1.1 503"));
}

#[test]
fn frames_right_behind_the_head_stay_for_the_decoder() {
    let mut harness = Harness::new(config());
    harness.input.extend_from_slice(UPGRADE);
    client_frame(&mut harness.input, true, OpCode::Text, [9; 4], b"early");
    let HandshakeStep::Upgrade(upgrade) = harness.poll_handshake() else {
        panic!("a valid upgrade request");
    };
    assert_eq!(upgrade.request.path(), "/ws");
    let env = Env {
        config: &harness.config,
        stats: &harness.stats,
        inflater: &harness.inflater,
    };
    harness.conn.open(Bytes::from_static(b"101"), false, 0, env);
    assert!(matches!(harness.next_input(), Some(Input::Text(text)) if text.as_str() == "early"));
}

#[test]
fn an_open_connection_is_pinged_every_interval_while_it_talks() {
    let mut harness = Harness::open();
    assert_eq!(harness.tick_to(29), Expired::Stale);
    assert_eq!(harness.tick_to(30), Expired::Heartbeat);
    assert_eq!(harness.sync().wake_at, Some(60));
    assert_eq!(harness.flush(), AfterFlush::Keep);
    assert_eq!(harness.frames(), [(OpCode::Ping, vec![])]);
    // The client answers; the next ping comes an interval later.
    harness.now = 31;
    harness.client_sends(OpCode::Pong, b"");
    assert!(matches!(harness.next_input(), Some(Input::Pong(_))));
    for ping in [60, 90, 120] {
        assert_eq!(harness.tick_to(ping), Expired::Heartbeat);
        harness.now = ping + 1;
        harness.client_sends(OpCode::Pong, b"");
        let _ = harness.next_input();
        let _ = harness.sync();
    }
    assert_eq!(harness.count(|s| &s.idle_timeouts), 0);
    assert!(harness.conn.is_open());
}

#[test]
fn a_silent_connection_is_closed_with_1001_at_the_idle_timeout() {
    let mut harness = Harness::open();
    // Pings at 30, 60, 90; the idle deadline (100) comes before the next.
    for ping in [30, 60, 90] {
        assert_eq!(harness.tick_to(ping), Expired::Heartbeat);
        let _ = harness.sync();
    }
    assert_eq!(
        harness.conn.deadline(),
        100,
        "idle deadline before the ping"
    );
    assert_eq!(harness.tick_to(100), Expired::IdleTimeout);
    assert_eq!(harness.count(|s| &s.idle_timeouts), 1);
    let sync = harness.sync();
    assert_eq!(sync.closed, Some(CloseCode::GOING_AWAY));
    assert_eq!(sync.wake_at, Some(120), "close timeout");
    assert!(!harness.conn.is_open());
    assert_eq!(harness.flush(), AfterFlush::ShutdownWrite);
    let ping = (OpCode::Ping, vec![]);
    let close = (OpCode::Close, close_payload(1001, "idle timeout"));
    assert_eq!(harness.frames(), [ping.clone(), ping.clone(), ping, close]);
    assert_eq!(harness.tick_to(120), Expired::CloseTimeout);
}

#[test]
fn pings_are_answered_with_pongs_before_the_application_hears() {
    let mut harness = Harness::open();
    harness.client_sends(OpCode::Ping, b"are you there");
    assert!(matches!(harness.next_input(), Some(Input::Ping(p)) if &p[..] == b"are you there"));
    assert!(harness.sync().flush);
    harness.flush();
    assert_eq!(
        harness.frames(),
        [(OpCode::Pong, b"are you there".to_vec())]
    );
}

#[test]
fn a_client_close_is_answered_with_its_code_and_reported_once() {
    let mut harness = Harness::open();
    harness.client_sends(OpCode::Close, &close_payload(4000, "bye"));
    let Some(Input::Close(code, reason)) = harness.next_input() else {
        panic!("the close is an input");
    };
    assert_eq!((u16::from(code), reason.as_str()), (4000, "bye"));
    // The loop reports it with the client's code and reason...
    assert!(harness.conn.take_close_report());
    let sync = harness.sync();
    assert_eq!(sync.closed, None, "...so the move to Closing does not");
    // The handshake is complete once our answer is written.
    assert_eq!(harness.flush(), AfterFlush::Remove);
    assert_eq!(harness.frames(), [(OpCode::Close, close_payload(4000, ""))]);
    assert!(!harness.conn.take_close_report());
}

#[test]
fn a_close_without_code_is_answered_with_an_empty_close_and_reported_as_1005() {
    let mut harness = Harness::open();
    harness.client_sends(OpCode::Close, b"");
    let Some(Input::Close(code, _)) = harness.next_input() else {
        panic!("the close is an input");
    };
    assert_eq!(code, CloseCode::NO_STATUS);
    let _ = harness.sync();
    harness.flush();
    assert_eq!(harness.frames(), [(OpCode::Close, vec![])]);
}

#[test]
fn a_server_close_waits_for_the_client_close_then_ends() {
    let mut harness = Harness::open();
    harness.now = 5;
    harness.conn.close(CloseCode::from(4001), "done");
    let sync = harness.sync();
    assert_eq!(sync.closed, Some(CloseCode::from(4001)));
    assert_eq!(sync.wake_at, Some(25));
    assert_eq!(harness.flush(), AfterFlush::ShutdownWrite);
    // Messages after our close are not for the application.
    harness.client_sends(OpCode::Text, b"late");
    harness.client_sends(OpCode::Close, &close_payload(4001, ""));
    assert!(harness.next_input().is_none());
    let sync = harness.sync();
    assert!(sync.flush, "a flush completes the close");
    assert_eq!(harness.flush(), AfterFlush::Remove);
}

#[test]
fn a_stalled_close_handshake_is_cut_off_at_the_close_timeout() {
    let mut harness = Harness::open();
    harness.conn.close(CloseCode::NORMAL, "");
    let _ = harness.sync();
    assert_eq!(harness.flush(), AfterFlush::ShutdownWrite);
    assert_eq!(harness.flush(), AfterFlush::Keep, "the FIN is sent once");
    assert_eq!(harness.tick_to(19), Expired::Stale);
    assert_eq!(harness.tick_to(20), Expired::CloseTimeout);
}

#[test]
fn protocol_errors_close_with_their_code_and_discard_the_rest() {
    let mut harness = Harness::open();
    // An unmasked frame from a client: 1002.
    harness.input.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    let Some(Input::ProtocolError(err)) = harness.next_input() else {
        panic!("a protocol error");
    };
    assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    assert_eq!(harness.count(|s| &s.protocol_errors), 1);
    assert_eq!(harness.sync().closed, Some(CloseCode::PROTOCOL_ERROR));
    harness.client_sends(OpCode::Text, b"ignored");
    assert!(harness.next_input().is_none());
    assert!(harness.input.is_empty());
    harness.flush();
    assert_eq!(harness.frames()[0].0, OpCode::Close);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let mut harness = Harness::open();
    harness.client_sends(OpCode::Text, &[0xff, 0xfe]);
    let Some(Input::ProtocolError(err)) = harness.next_input() else {
        panic!("a protocol error");
    };
    assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
}

#[test]
fn shutdown_closes_open_connections_with_1001_and_drops_handshakes() {
    let mut open = Harness::open();
    assert_eq!(
        open.conn.begin_shutdown(CloseCode::GOING_AWAY),
        Shutdown::Closing
    );
    assert_eq!(open.sync().closed, Some(CloseCode::GOING_AWAY));
    assert_eq!(
        open.conn.begin_shutdown(CloseCode::GOING_AWAY),
        Shutdown::Nothing
    );
    let mut handshaking = Harness::new(config());
    assert_eq!(
        handshaking.conn.begin_shutdown(CloseCode::GOING_AWAY),
        Shutdown::Remove
    );
    // A drain closes with 1012: reconnect, to another node.
    let mut draining = Harness::open();
    assert_eq!(
        draining.conn.begin_shutdown(CloseCode::SERVICE_RESTART),
        Shutdown::Closing
    );
    assert_eq!(draining.sync().closed, Some(CloseCode::SERVICE_RESTART));
    draining.flush();
    assert_eq!(
        draining.frames(),
        [(OpCode::Close, close_payload(1012, "server restarting"))]
    );
}

#[test]
fn an_open_connection_that_vanishes_is_reported_once_as_abnormal() {
    let mut harness = Harness::open();
    assert!(harness.conn.take_close_report(), "report it now");
    assert!(!harness.conn.take_close_report(), "and only once");
}

#[test]
fn a_message_of_an_extension_not_negotiated_is_refused_with_1003() {
    let mut config = config();
    config.decoder = config.decoder.accept_rsv_bits(0b100);
    let mut harness = Harness::open_with(config);
    // RSV1 set on a text frame, then the client's close in the same read.
    let mut frame = BytesMut::new();
    client_frame(&mut frame, true, OpCode::Text, [1, 2, 3, 4], b"x");
    frame[0] |= 0x40;
    harness.input.extend_from_slice(&frame);
    harness.client_sends(OpCode::Close, &close_payload(1000, ""));
    assert!(matches!(harness.next_input(), Some(Input::Refused)));
    assert_eq!(harness.sync().closed, Some(CloseCode::UNSUPPORTED_DATA));
    // The client's close behind it is still read: the close completes.
    assert!(harness.next_input().is_none());
    assert!(harness.sync().flush);
    assert_eq!(harness.flush(), AfterFlush::Remove);
    assert_eq!(harness.frames()[0].0, OpCode::Close);
}

#[test]
fn bytes_that_cannot_begin_a_request_get_400_at_once() {
    for garbage in [
        &b"\x00\xff\x10 binary noise"[..],
        b"hello\nworld\n",
        b"GET /ws HTTP/1.1\r\nBad Header\r\n",
    ] {
        let mut harness = Harness::new(config());
        harness.input.extend_from_slice(garbage);
        assert!(
            matches!(harness.poll_handshake(), HandshakeStep::Responded),
            "{garbage:?} waits"
        );
        harness.flush();
        assert!(harness.output.starts_with(b"HTTP/1.1 400"), "{garbage:?}");
    }
    // A request arriving a few bytes at a time still waits.
    let mut harness = Harness::new(config());
    harness.input.extend_from_slice(&UPGRADE[..20]);
    assert!(matches!(
        harness.poll_handshake(),
        HandshakeStep::Incomplete
    ));
}

#[test]
fn a_client_past_its_message_rate_is_refused_then_closed_with_1008() {
    let mut config = config();
    config.message_rate = Some(crate::admission::RateLimit::new(10, 2));
    let mut harness = Harness::open_with(config);
    for n in 0..2 {
        harness.client_sends(OpCode::Text, format!("m{n}").as_bytes());
        assert!(matches!(harness.next_input(), Some(Input::Text(_))));
    }
    // Past the rate: handed over as refused, with its text.
    harness.client_sends(OpCode::Text, b"m2");
    assert!(
        matches!(harness.next_input(), Some(Input::RateLimited(Some(t))) if t.as_str() == "m2")
    );
    harness.client_sends(OpCode::Ping, b"");
    assert!(
        matches!(harness.next_input(), Some(Input::Ping(_))),
        "control frames are not metered"
    );
    harness.client_sends(OpCode::Binary, b"b");
    assert!(matches!(
        harness.next_input(),
        Some(Input::RateLimited(None))
    ));
    // Kept up past a burst's worth more: closed with 1008.
    harness.client_sends(OpCode::Text, b"m4");
    assert!(matches!(harness.next_input(), Some(Input::Refused)));
    assert_eq!(harness.sync().closed, Some(CloseCode::POLICY_VIOLATION));
    assert_eq!(harness.count(|s| &s.messages_rate_limited), 3);
    // A tenth of a second later the client could have sent one more, but
    // the connection is closing: nothing reaches the application.
    harness.now = 1;
    harness.client_sends(OpCode::Text, b"late");
    assert!(harness.next_input().is_none());
}
