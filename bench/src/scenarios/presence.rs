//! The `presence-storm` scenario: N Phoenix clients join one presence
//! topic, spread over a few seconds, and each keeps the topic's list from
//! the `presence_state` and `presence_diff` it receives, as phoenix.js's
//! `Presence` does. Reports when every client's list holds all N keys
//! (after the last join), how many diffs a client received against the
//! number of joins, the server's CPU (from the first join) and peak RSS,
//! and both cores' busy fraction (the load generator parses every list).
//!
//! Against the standalone `herald` (its default `room:*` rule tracks each
//! member under the join's `name`): one key per client, `u{index}`.

use std::{
    collections::HashMap,
    io::{self, ErrorKind, Read},
    time::{Duration, Instant},
};

use herald::wire::{FrameHeader, OpCode};
use herald_bench::{
    client::{Client, drive_paced},
    proc_stats::ProcessSample,
    report::Report,
};
use mio::Poll;
use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;

use super::{
    connections::{connections_within_fd_limit, open_connections},
    mib,
};
use crate::cli::options::Options;

/// What a `presence-storm` run does.
pub(crate) struct PresenceStorm {
    pub(crate) clients: usize,
    pub(crate) spread: Duration,
    pub(crate) topic: String,
}

/// One member's view of the topic.
struct Member {
    client: Client,
    /// Bytes read and not yet a whole frame.
    pending: Vec<u8>,
    /// Which keys (`u{index}`) its list holds, one bit each.
    present: Vec<u64>,
    count: usize,
    diffs: u64,
    state_received: bool,
    /// When its list first held every key.
    complete_at: Option<Instant>,
}

impl Member {
    fn set(&mut self, key: &str, present: bool) {
        let Some(index) = key.strip_prefix('u').and_then(|i| i.parse::<usize>().ok()) else {
            return;
        };
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let Some(slot) = self.present.get_mut(word) else {
            return;
        };
        let was = *slot & bit != 0;
        if present && !was {
            *slot |= bit;
            self.count += 1;
        } else if !present && was {
            *slot &= !bit;
            self.count -= 1;
        }
    }
}

#[derive(Deserialize)]
struct Diff<'a> {
    #[serde(borrow)]
    joins: HashMap<&'a str, IgnoredAny>,
    #[serde(borrow)]
    leaves: HashMap<&'a str, IgnoredAny>,
}

/// The keys of a `presence_state` payload of this scenario (keys `u{n}`,
/// metas without nested objects), found by scanning for each key's
/// `":{"metas":[` rather than parsing: a state of N keys reaches every
/// joiner, so the load generator reads about N²/2 entries in all, and a
/// full parse of each would make the figure the client's.
fn state_keys(state: &str) -> impl Iterator<Item = &str> {
    let finder = memchr::memmem::Finder::new(br#"":{"metas":["#);
    finder
        .find_iter(state.as_bytes())
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(move |end| {
            let start = memchr::memrchr(b'"', &state.as_bytes()[..end])? + 1;
            state.get(start..end)
        })
}

/// Applies one Phoenix message to a member's list.
fn apply(member: &mut Member, text: &[u8]) -> io::Result<()> {
    let invalid = |err: serde_json::Error| io::Error::new(ErrorKind::InvalidData, err);
    // A state is large: found by its event near the start, and scanned,
    // never parsed whole.
    let head = &text[..text.len().min(256)];
    if let Some(at) = memchr::memmem::find(head, br#","presence_state","#) {
        let payload = &text[at + br#","presence_state","#.len()..text.len().saturating_sub(1)];
        let payload = std::str::from_utf8(payload)
            .map_err(|err| io::Error::new(ErrorKind::InvalidData, err))?;
        member.present.fill(0);
        member.count = 0;
        for key in state_keys(payload) {
            member.set(key, true);
        }
        member.state_received = true;
        return Ok(());
    }
    let (_, _, _, event, payload): (Option<&str>, Option<&str>, &str, &str, &RawValue) =
        serde_json::from_slice(text).map_err(invalid)?;
    if event == "presence_diff" {
        let diff: Diff<'_> = serde_json::from_str(payload.get()).map_err(invalid)?;
        member.diffs += 1;
        for key in diff.joins.keys() {
            member.set(key, true);
        }
        for key in diff.leaves.keys() {
            member.set(key, false);
        }
    }
    Ok(())
}

/// Reads what a member's socket has and applies every whole frame: in
/// place in `buf` when no partial frame is kept, so that only a frame's
/// unfinished tail is ever copied.
fn read(member: &mut Member, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let n = match member.client.stream.read(buf) {
            Ok(0) => return Err(io::Error::other("the server closed a member")),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if member.pending.is_empty() {
            let used = apply_frames(member, &buf[..n])?;
            member.pending.extend_from_slice(&buf[used..n]);
        } else {
            let mut pending = std::mem::take(&mut member.pending);
            pending.extend_from_slice(&buf[..n]);
            let used = apply_frames(member, &pending)?;
            pending.drain(..used);
            if pending.is_empty() {
                // A large state's buffer is not kept per member.
                pending = Vec::new();
            }
            member.pending = pending;
        }
    }
}

/// Applies the whole frames at the start of `bytes`; returns how many
/// bytes they took.
fn apply_frames(member: &mut Member, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while let Some((header, header_len)) = FrameHeader::parse(&bytes[at..])
        .map_err(|err| io::Error::new(ErrorKind::InvalidData, err))?
    {
        let end = at + header_len + header.payload_len as usize;
        if end > bytes.len() {
            break;
        }
        if header.opcode == OpCode::Text {
            apply(member, &bytes[at + header_len..end])?;
        }
        at = end;
    }
    Ok(at)
}

pub(crate) fn presence_storm(options: &Options, plan: &PresenceStorm) -> io::Result<()> {
    let count = connections_within_fd_limit(options, plan.clients);
    let mut poll = Poll::new()?;
    let (clients, _) = open_connections(options, &mut poll, count, 256)?;
    let server_before = options.server_sample()?;
    let client_before = ProcessSample::read_self()?;
    let mut members: Vec<Member> = clients
        .into_iter()
        .map(|client| Member {
            client,
            pending: Vec::new(),
            present: vec![0; count.div_ceil(64)],
            count: 0,
            diffs: 0,
            state_received: false,
            complete_at: None,
        })
        .collect();
    let started = Instant::now();
    let gap = plan.spread.div_f64(count.max(1) as f64);
    let mut joined = 0;
    let mut last_join = started;
    let mut complete = 0;
    let mut peak_rss = 0u64;
    let mut sampled = started;
    let mut buf = vec![0u8; 1 << 20];
    let mut failure = None;
    let deadline = started + plan.spread + Duration::from_secs(30);
    drive_paced(&mut poll, deadline, Duration::from_millis(1), |token| {
        let now = Instant::now();
        match token {
            Some(token) => {
                let member = &mut members[token.0];
                if let Err(err) = read(member, &mut buf) {
                    failure = Some(err);
                    return false;
                }
                if member.complete_at.is_none() && member.count == count && member.state_received {
                    member.complete_at = Some(now);
                    complete += 1;
                }
            }
            None => {
                while joined < count && now >= started + gap.mul_f64(joined as f64) {
                    let join = format!(
                        r#"["1","1","{}","phx_join",{{"name":"u{joined}"}}]"#,
                        plan.topic
                    );
                    if let Err(err) = members[joined].client.send(OpCode::Text, join.as_bytes()) {
                        failure = Some(err);
                        return false;
                    }
                    joined += 1;
                    last_join = now;
                }
                if now.duration_since(sampled) >= Duration::from_millis(100) {
                    sampled = now;
                    if let Ok(Some(sample)) = options.server_sample() {
                        peak_rss = peak_rss.max(sample.rss_bytes);
                    }
                }
            }
        }
        complete < count
    })?;
    if let Some(err) = failure {
        return Err(err);
    }
    let converged = members
        .iter()
        .filter_map(|member| member.complete_at)
        .max()
        .map(|at| at.saturating_duration_since(last_join));
    let diffs: Vec<u64> = members.iter().map(|member| member.diffs).collect();
    let mean_diffs = diffs.iter().sum::<u64>() as f64 / count.max(1) as f64;
    let mut report = Report::new("presence-storm");
    report
        .figure("clients", count, "")
        .note(
            "joins_spread_over",
            plan.spread.as_secs_f64(),
            "s",
            format!("one join every {:.2} ms", gap.as_secs_f64() * 1e3),
        )
        .figure("complete_lists", complete, "")
        .note(
            "converged_after_last_join",
            converged.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            "ms",
            "when the last client's list held every key (-1: never)",
        )
        .note(
            "diffs_per_client",
            mean_diffs,
            "",
            format!(
                "mean; max {}; against {count} joins",
                diffs.iter().max().unwrap_or(&0)
            ),
        );
    let client_now = ProcessSample::read_self()?;
    let busy: Vec<String> = client_now
        .cores
        .busy_since(&client_before.cores)
        .iter()
        .enumerate()
        .map(|(core, busy)| format!("cpu{core} {:.0}%", busy * 100.0))
        .collect();
    report
        .figure(
            "client_cpu",
            client_now.cpu_since(&client_before).as_secs_f64(),
            "s",
        )
        .figure("cores_busy", busy.join(", "), "");
    if let (Some(now), Some(before)) = (options.server_sample()?, server_before) {
        report
            .figure("server_cpu", now.cpu_since(&before).as_secs_f64(), "s")
            .figure("server_rss_peak", mib(peak_rss.max(now.rss_bytes)), "MiB");
    }
    report.print(options.format());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_finds_every_key_as_a_parse_would() {
        let state = r#"{"u1":{"metas":[{"online_at":1,"phx_ref":"a-1"}]},"u22":{"metas":[{"phx_ref":"a-2"},{"phx_ref":"a-3"}]}}"#;
        let parsed: HashMap<&str, IgnoredAny> = serde_json::from_str(state).unwrap();
        let mut scanned: Vec<&str> = state_keys(state).collect();
        let mut keys: Vec<&str> = parsed.keys().copied().collect();
        scanned.sort();
        keys.sort();
        assert_eq!(scanned, keys);
        assert_eq!(state_keys("{}").count(), 0);
    }
}
