//! The `joins` scenario: Phoenix clients join a fresh topic, wait for the
//! reply, leave it and join the next, for a while: joins per second and the
//! join reply's latency. Against the standalone `herald` with a rule whose
//! join hook calls a backend (`bench/hooks.sh` runs it with and without the
//! hook, interleaved), the difference is what the hook costs.
//!
//! `--path` must carry `?vsn=2.0.0`; topics are `{prefix}{client}-{n}`.

use std::{
    io,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use herald::wire::OpCode;
use herald_bench::{
    client::{PREFIX, drive},
    proc_stats::ProcessSample,
    report::Report,
};
use mio::Poll;

use super::{
    connections::{connections_within_fd_limit, open_connections},
    cpu_figures,
};
use crate::cli::options::Options;

/// What a `joins` run does.
pub(crate) struct JoinsPlan {
    /// Clients, each with one join waiting for its reply at a time.
    pub(crate) clients: usize,
    pub(crate) prefix: String,
    pub(crate) duration: Duration,
}

/// One client's place in its sequence of joins.
#[derive(Default)]
struct Joiner {
    /// The number of its current join (its ref is `j{n}`).
    n: u64,
    sent_at: Option<Instant>,
}

fn join_frame(prefix: &str, client: usize, n: u64) -> String {
    format!(r#"["j{n}","j{n}","{prefix}{client}-{n}","phx_join",{{}}]"#)
}

fn leave_frame(prefix: &str, client: usize, n: u64) -> String {
    format!(r#"["j{n}","l{n}","{prefix}{client}-{n}","phx_leave",{{}}]"#)
}

/// Whether `text` (a reply's first bytes: the status comes before the
/// response) is the reply to join `n`, and whether it said ok.
fn join_reply(text: &[u8], n: u64) -> Option<bool> {
    let text = std::str::from_utf8(text).ok()?;
    let head = format!(r#"["j{n}","j{n}","#);
    if !text.starts_with(&head) || !text.contains(r#""phx_reply""#) {
        return None;
    }
    Some(text.contains(r#""status":"ok""#))
}

pub(crate) fn joins(options: &Options, plan: &JoinsPlan) -> io::Result<()> {
    let clients = connections_within_fd_limit(options, plan.clients);
    let mut poll = Poll::new()?;
    let (mut conns, _) = open_connections(options, &mut poll, clients, 256)?;
    let mut joiners: Vec<Joiner> = (0..clients).map(|_| Joiner::default()).collect();
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    let server_before = options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let start = Instant::now();
    for (index, conn) in conns.iter_mut().enumerate() {
        joiners[index].sent_at = Some(Instant::now());
        conn.send(OpCode::Text, join_frame(&plan.prefix, index, 0).as_bytes())?;
    }
    let (mut joined, mut refused) = (0u64, 0u64);
    let mut failure = None;
    drive(&mut poll, start + plan.duration, |token| {
        let index = token.0;
        let joiner = &mut joiners[index];
        let result = conns[index].on_ready(&options.path, |conn, frame| {
            if frame.opcode != OpCode::Text {
                return;
            }
            let seen = &frame.prefix[..frame.len.min(PREFIX)];
            let Some(ok) = join_reply(seen, joiner.n) else {
                return;
            };
            if let Some(sent) = joiner.sent_at.take() {
                let _ = latency.record(sent.elapsed().as_micros() as u64);
            }
            if ok {
                joined += 1;
            } else {
                refused += 1;
            }
            let leave = leave_frame(&plan.prefix, index, joiner.n);
            joiner.n += 1;
            let join = join_frame(&plan.prefix, index, joiner.n);
            joiner.sent_at = Some(Instant::now());
            let sent = conn
                .send(OpCode::Text, leave.as_bytes())
                .and_then(|()| conn.send(OpCode::Text, join.as_bytes()));
            if let Err(err) = sent {
                failure = Some(err);
            }
        });
        if let Err(err) = result {
            failure = Some(err);
        }
        failure.is_none()
    })?;
    if let Some(err) = failure {
        return Err(err);
    }
    let elapsed = start.elapsed();
    let mut report = Report::new("joins");
    report
        .figure("clients", clients, "")
        .figure("topic_prefix", plan.prefix.clone(), "")
        .figure("joins", joined as f64 / elapsed.as_secs_f64(), "/s")
        .figure("refused", refused, "")
        .latency("join_reply", &latency);
    cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        joined + refused,
    )?;
    report.print(options.format());
    Ok(())
}
