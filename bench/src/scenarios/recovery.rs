//! The `recovery-storm` scenario: N Phoenix clients join a topic with
//! history and note its position; they all drop; `behind` messages are
//! published through the HTTP API; then all N connect again at once and
//! join with `{"recover": {epoch, offset}}`. Reports when the last client
//! had its `recovered: true` reply and every missed message (offsets in
//! order, none twice), counted from the start of the reconnection, with
//! the server's CPU and peak RSS over the storm and both cores' busy
//! fraction.
//!
//! Against the standalone `herald` with a rule that keeps history for the
//! topic (and no presence: this measures recovery, not presence_state).

use std::{
    io::{self, ErrorKind},
    net::SocketAddr,
    time::{Duration, Instant},
};

use herald::wire::OpCode;
use herald_bench::{
    client::{Client, Scratch, Stage, drive_paced},
    http_publisher::HttpPublisher,
    proc_stats::ProcessSample,
    report::Report,
};
use mio::Poll;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    connections::{connections_within_fd_limit, open_connections},
    cpu_figures, mib,
};
use crate::cli::options::Options;

/// What a `recovery-storm` run does.
pub(crate) struct RecoveryStorm {
    pub(crate) clients: usize,
    pub(crate) behind: u64,
    pub(crate) topic: String,
    pub(crate) api: SocketAddr,
    pub(crate) api_key: Option<String>,
}

/// Where a topic's stream stood, as a join reply says.
#[derive(Debug, Clone, Deserialize)]
struct History {
    epoch: String,
    offset: u64,
    #[serde(default)]
    recovered: bool,
}

/// One client's progress.
#[derive(Default)]
struct Progress {
    history: Option<History>,
    /// The last offset received (none before the reply).
    last_offset: u64,
    received: u64,
    /// Offsets out of order or seen twice.
    disordered: u64,
    done_at: Option<Instant>,
}

#[derive(Deserialize)]
struct Reply {
    status: String,
    response: ReplyBody,
}

#[derive(Deserialize)]
struct ReplyBody {
    history: Option<History>,
}

/// Applies one Phoenix message to a client's progress.
fn apply(progress: &mut Progress, text: &[u8]) -> io::Result<()> {
    let invalid = |err: serde_json::Error| io::Error::new(ErrorKind::InvalidData, err);
    let (_, msg_ref, _, event, payload): (Option<&str>, Option<&str>, &str, &str, &RawValue) =
        serde_json::from_slice(text).map_err(invalid)?;
    if event == "phx_reply" {
        let reply: Reply = serde_json::from_str(payload.get()).map_err(invalid)?;
        if reply.status != "ok" {
            return Err(io::Error::other(format!("join refused: {}", payload.get())));
        }
        let history = reply
            .response
            .history
            .ok_or_else(|| io::Error::other("the topic keeps no history"))?;
        if progress.history.is_some() && !history.recovered {
            return Err(io::Error::other(format!(
                "not recovered: {}",
                payload.get()
            )));
        }
        progress.history = Some(history);
        return Ok(());
    }
    let Some(offset) = msg_ref
        .and_then(|r| r.strip_prefix('@'))
        .and_then(|o| o.parse::<u64>().ok())
    else {
        return Ok(());
    };
    if progress.history.is_none() {
        return Ok(());
    }
    if offset != progress.last_offset + 1 {
        progress.disordered += 1;
    }
    progress.last_offset = progress.last_offset.max(offset);
    progress.received += 1;
    Ok(())
}

/// Reads what a client's socket has (`Client::receive_into`: frames parsed
/// in place in the thread's scratch buffer) and applies every text frame.
fn read(
    client: &mut Client,
    path: &str,
    progress: &mut Progress,
    scratch: &mut Scratch,
) -> io::Result<()> {
    let mut outcome = Ok(());
    client.receive_into(path, scratch, |opcode, payload| {
        if opcode == OpCode::Text && outcome.is_ok() {
            outcome = apply(progress, payload);
        }
    })?;
    if client.stage == Stage::Dead {
        return Err(io::Error::other("the server closed a client"));
    }
    outcome
}

/// Sends `join` on every client and runs until `done` holds for each (or
/// 60 s pass); returns their progress. Samples the server's RSS every
/// 10 ms into `peak_rss`.
fn run_joins(
    options: &Options,
    poll: &mut Poll,
    clients: &mut [Client],
    joins: &[String],
    done: impl Fn(&Progress) -> bool,
    peak_rss: &mut u64,
) -> io::Result<Vec<Progress>> {
    let mut progress: Vec<Progress> = clients.iter().map(|_| Progress::default()).collect();
    for (client, join) in clients.iter_mut().zip(joins) {
        client.send(OpCode::Text, join.as_bytes())?;
    }
    let mut scratch = Scratch::new();
    let mut finished = 0;
    let mut failure = None;
    let mut sampled = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    drive_paced(poll, deadline, Duration::from_millis(10), |token| {
        let now = Instant::now();
        if let Some(token) = token {
            let (client, state) = (&mut clients[token.0], &mut progress[token.0]);
            if let Err(err) = read(client, &options.path, state, &mut scratch) {
                failure = Some(err);
                return false;
            }
            if state.done_at.is_none() && done(state) {
                state.done_at = Some(now);
                finished += 1;
            }
        } else if now.duration_since(sampled) >= Duration::from_millis(10) {
            sampled = now;
            if let Ok(Some(sample)) = options.server_sample() {
                *peak_rss = (*peak_rss).max(sample.rss_bytes);
            }
        }
        finished < clients.len()
    })?;
    match failure {
        Some(err) => Err(err),
        None if finished < clients.len() => Err(io::Error::other(format!(
            "{} of {} clients never finished",
            clients.len() - finished,
            clients.len()
        ))),
        None => Ok(progress),
    }
}

pub(crate) fn recovery_storm(options: &Options, plan: &RecoveryStorm) -> io::Result<()> {
    let count = connections_within_fd_limit(options, plan.clients);
    let topic = &plan.topic;
    let mut ignored_rss = 0;

    // 1. Everyone joins and notes where the stream is.
    let mut poll = Poll::new()?;
    let (mut clients, _) = open_connections(options, &mut poll, count, 256)?;
    let fresh = vec![format!(r#"["1","1","{topic}","phx_join",{{}}]"#); count];
    let joined = run_joins(
        options,
        &mut poll,
        &mut clients,
        &fresh,
        |p| p.history.is_some(),
        &mut ignored_rss,
    )?;
    let positions: Vec<History> = joined.into_iter().filter_map(|p| p.history).collect();
    // 2. Everyone drops; `behind` messages are published meanwhile.
    drop(clients);
    drop(poll);
    let publisher = HttpPublisher::start(plan.api, plan.api_key.clone())?;
    let broadcasts: Vec<String> = (0..plan.behind)
        .map(|n| format!(r#"{{"topic":"{topic}","event":"new_msg","payload":{{"n":{n}}}}}"#))
        .collect();
    publisher.publish(format!(r#"{{"broadcasts":[{}]}}"#, broadcasts.join(",")))?;
    let published = publisher.finish()?;
    if published.requests != 1 {
        return Err(io::Error::other("the API did not take the broadcasts"));
    }

    // 3. Everyone comes back at once and recovers.
    let server_before = options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let mut peak_rss = server_before.as_ref().map_or(0, |s| s.rss_bytes);
    let started = Instant::now();
    let mut poll = Poll::new()?;
    let (mut clients, connected_in) = open_connections(options, &mut poll, count, count)?;
    let recover: Vec<String> = positions
        .iter()
        .map(|h| {
            format!(
                r#"["1","1","{topic}","phx_join",{{"recover":{{"epoch":"{}","offset":{}}}}}]"#,
                h.epoch, h.offset
            )
        })
        .collect();
    let behind = plan.behind;
    let progress = run_joins(
        options,
        &mut poll,
        &mut clients,
        &recover,
        |p| p.received >= behind,
        &mut peak_rss,
    )?;
    let last_done = progress.iter().filter_map(|p| p.done_at).max();
    let all_recovered = last_done.map(|at| at.duration_since(started));
    let recovered = progress
        .iter()
        .filter(|p| p.history.as_ref().is_some_and(|h| h.recovered))
        .count();
    let received: u64 = progress.iter().map(|p| p.received).sum();
    let disordered: u64 = progress.iter().map(|p| p.disordered).sum();

    let mut report = Report::new("recovery-storm");
    report
        .figure("clients", count, "")
        .figure("behind", behind, "")
        .figure("recovered", recovered, "")
        .note(
            "all_recovered_after",
            all_recovered.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            "ms",
            "from the first reconnect to the last client's last missed message",
        )
        .figure("connected_after", connected_in.as_secs_f64() * 1e3, "ms")
        .figure("messages_recovered", received, "")
        .figure("out_of_order_or_twice", disordered, "");
    let elapsed = started.elapsed();
    let rss_before = server_before.map(|sample| sample.rss_bytes);
    cpu_figures(
        &mut report,
        options,
        server_before,
        &client_before,
        elapsed,
        received,
    )?;
    if let (Some(before), Some(now)) = (rss_before, options.server_sample()?) {
        report
            .figure("server_rss_before", mib(before), "MiB")
            .figure("server_rss_peak", mib(peak_rss.max(now.rss_bytes)), "MiB");
    }
    report.print(options.format());
    Ok(())
}
