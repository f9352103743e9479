//! The fan-out topic's messages: what a publisher sends, how a subscriber
//! counts what it receives, and the Phoenix joins.

use std::{
    io,
    time::{Duration, Instant},
};

use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Received, Scratch, drive},
    tracker::{ThreadStats, Tracker},
};
use mio::Poll;

/// The topic the fan-out scenario uses.
pub(crate) const FANOUT_TOPIC: &str = "herald-bench";

/// The message with sequence number `seq`, as the publisher sends it.
pub(crate) fn fanout_message(phoenix: bool, seq: u64, filler: &str) -> String {
    if phoenix {
        format!(r#"["1",null,"{FANOUT_TOPIC}","new_msg",{{"s":"{seq:016x}","f":"{filler}"}}]"#)
    } else {
        format!("{seq:016x}{filler}")
    }
}

/// The `POST /api/broadcast` body of message `seq`.
pub(crate) fn api_message(seq: u64, filler: &str) -> String {
    format!(
        r#"{{"topic":"{FANOUT_TOPIC}","event":"new_msg","payload":{{"s":"{seq:016x}","f":"{filler}"}}}}"#
    )
}

/// The sequence number in a received frame's leading bytes.
fn fanout_seq(phoenix: bool, prefix: &[u8]) -> Option<u64> {
    let at = if phoenix {
        prefix.windows(5).position(|w| w == br#""s":""#)? + 5
    } else {
        0
    };
    let hex = std::str::from_utf8(prefix.get(at..at + 16)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Whether a Phoenix frame is a presence message (a server whose topic
/// tracks presence sends them besides the stream), which carries no
/// sequence number.
fn is_presence(phoenix: bool, payload: &[u8]) -> bool {
    phoenix && memchr::memmem::find(&payload[..payload.len().min(96)], br#","presence_"#).is_some()
}

/// Sends a Phoenix join for the fan-out topic on every client and waits
/// for all the replies.
pub(crate) fn join_all(
    poll: &mut Poll,
    clients: &mut [Client],
    path_of: &dyn Fn(usize) -> String,
) -> io::Result<()> {
    let join = format!(r#"["1","1","{FANOUT_TOPIC}","phx_join",{{}}]"#);
    for client in clients.iter_mut() {
        client.send(OpCode::Text, join.as_bytes())?;
    }
    let mut joined = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined < clients.len() && Instant::now() < deadline {
        read_for(
            poll,
            clients,
            path_of,
            Duration::from_millis(100),
            |frame| {
                if frame.opcode == OpCode::Text
                    && frame.prefix.windows(9).any(|w| w == b"phx_reply")
                {
                    joined += 1;
                }
            },
        )?;
    }
    if joined < clients.len() {
        return Err(io::Error::other(format!(
            "only {joined} of {} joins answered",
            clients.len()
        )));
    }
    Ok(())
}

/// How long the server must have sent nothing before the joins are
/// settled.
const QUIET: Duration = Duration::from_millis(300);

/// After the joins, reads and drops what the server sends because of them
/// (on a presence topic: each joiner's `presence_state`, and the diffs every
/// member receives of every join) until it has sent nothing for [`QUIET`]
/// (at most 60 s), so that the measured window measures the stream alone.
pub(crate) fn settle(
    poll: &mut Poll,
    clients: &mut [Client],
    path_of: &dyn Fn(usize) -> String,
) -> io::Result<()> {
    let mut last = Instant::now();
    let deadline = last + Duration::from_secs(60);
    while last.elapsed() < QUIET && Instant::now() < deadline {
        read_for(poll, clients, path_of, Duration::from_millis(50), |_| {
            last = Instant::now();
        })?;
    }
    Ok(())
}

/// Reads the clients' frames for `slice`, handing each to `on_frame`;
/// returns the first connection's error, if any.
fn read_for(
    poll: &mut Poll,
    clients: &mut [Client],
    path_of: &dyn Fn(usize) -> String,
    slice: Duration,
    mut on_frame: impl FnMut(&Received),
) -> io::Result<()> {
    let mut failure = None;
    drive(poll, Instant::now() + slice, |token| {
        let result = clients[token.0].on_ready(&path_of(token.0), |_, frame| on_frame(&frame));
        if let Err(err) = result {
            failure = Some(err);
        }
        failure.is_none()
    })?;
    failure.map_or(Ok(()), Err)
}

/// Handles a subscriber's readiness: reads its frames (in place, in the
/// thread's shared buffer) and counts each sequence number it received, all
/// at the time of the read.
pub(crate) fn receive(
    client: &mut Client,
    path: &str,
    phoenix: bool,
    tracker: &Tracker,
    stats: &mut ThreadStats,
    scratch: &mut Scratch,
) -> io::Result<()> {
    let now = tracker.now();
    let mut outcome = Ok(());
    client.receive_into(path, scratch, |opcode, payload| {
        if opcode != OpCode::Text || outcome.is_err() || is_presence(phoenix, payload) {
            return;
        }
        outcome = fanout_seq(phoenix, payload)
            .ok_or_else(|| io::Error::other("a frame without a sequence number"))
            .and_then(|seq| tracker.received_at(seq, now, stats));
    })?;
    outcome
}
