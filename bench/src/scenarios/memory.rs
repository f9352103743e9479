//! The memory scenarios: does what an abusive or unlucky load takes come
//! back? Each prints the server's resident memory before, during and after
//! (`--server-pid` is required):
//!
//! - `churn-rounds`: rounds of connections opened, echoed once and closed
//!   (half with a clean close, half with a TCP reset), never more than
//!   `--concurrent` at once, against any echo server;
//! - `slowloris`: sockets that send part of a request head and then
//!   nothing, held, then dropped;
//! - `stuck`: subscribers of a stream among which some never read, against
//!   the `fanout` example (`?topic=` subscribers, a `&subscribe=0`
//!   publisher), until the server closes them or the stream ends.
//!
//! Sockets are plain blocking (or non-blocking, polled) `std` sockets: the
//! figures are the server's memory, and the client's speed only sets how
//! long a run takes.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use herald::wire::{OpCode, client_frame};
use herald_bench::{proc_stats::ProcessSample, report::Report};

use super::{connections::connections_within_fd_limit, mib};
use crate::cli::options::Options;

/// A client's frames are masked; the key does not matter here.
const MASK: [u8; 4] = [0x1b, 0x2c, 0x3d, 0x4e];

/// What a `churn-rounds` run does.
pub(crate) struct ChurnRounds {
    pub(crate) rounds: usize,
    pub(crate) per_round: usize,
    pub(crate) concurrent: usize,
    pub(crate) settle: Duration,
}

/// What a `slowloris` run does.
pub(crate) struct Slowloris {
    pub(crate) sockets: usize,
    pub(crate) hold: Duration,
    pub(crate) settle: Duration,
}

/// What a `stuck` run does.
pub(crate) struct Stuck {
    pub(crate) subscribers: usize,
    pub(crate) stuck: usize,
    pub(crate) payload: usize,
    pub(crate) rate: u32,
    pub(crate) duration: Duration,
    pub(crate) settle: Duration,
}

/// The server's resident memory, in MiB.
fn rss(pid: u32) -> io::Result<f64> {
    Ok(mib(ProcessSample::read(pid)?.rss_bytes))
}

fn server_pid(options: &Options, scenario: &str) -> io::Result<u32> {
    options.server_pid.ok_or_else(|| {
        io::Error::other(format!(
            "{scenario} needs --server-pid to read the server's memory"
        ))
    })
}

/// Samples the server's RSS every 100 ms for `settle`; returns the last
/// sample and how long after the start it first came within `margin` MiB
/// of `baseline` (if it did).
fn settle(
    pid: u32,
    settle: Duration,
    baseline: f64,
    margin: f64,
) -> io::Result<(f64, Option<f64>)> {
    let start = Instant::now();
    let mut within = None;
    let mut last = rss(pid)?;
    while start.elapsed() < settle {
        last = rss(pid)?;
        if within.is_none() && last <= baseline + margin {
            within = Some(start.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((last, within))
}

/// The request head of a WebSocket upgrade to `path`.
fn upgrade_request(options: &Options, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        options.addr
    )
}

/// Reads a response head; returns whether it was a 101.
fn read_101(stream: &mut TcpStream) -> io::Result<bool> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
        if head.len() > 8192 {
            return Err(io::Error::other("response head too long"));
        }
    }
    Ok(head.starts_with(b"HTTP/1.1 101"))
}

/// Reads one short server frame (payload under 126 bytes): its opcode and
/// payload.
fn read_short_frame(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header)?;
    let len = usize::from(header[1] & 0x7f);
    if len >= 126 {
        return Err(io::Error::other("unexpected long frame"));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((header[0] & 0x0f, payload))
}

fn masked(opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut frame = BytesMut::new();
    client_frame(&mut frame, true, opcode, MASK, payload);
    frame
}

/// Ends the connection with a TCP reset instead of a FIN.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (owned by `stream`), and `linger` is a
    // valid `struct linger` whose size is passed with it.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// Opens `count` upgraded connections to `path`: all connects, then all
/// requests, then all responses, so that the server handles them together.
fn open_upgraded(options: &Options, path: &str, count: usize) -> io::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(options.addr)?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let request = upgrade_request(options, path);
    for stream in &mut streams {
        stream.write_all(request.as_bytes())?;
    }
    for stream in &mut streams {
        if !read_101(stream)? {
            return Err(io::Error::other("the server refused an upgrade"));
        }
    }
    Ok(streams)
}

/// One batch of the churn: open, echo once, close half cleanly, reset the
/// rest. Returns how many echoes came back.
fn churn_batch(options: &Options, count: usize) -> io::Result<usize> {
    let mut streams = open_upgraded(options, &options.path, count)?;
    let echo = masked(OpCode::Text, b"churn");
    for stream in &mut streams {
        stream.write_all(&echo)?;
    }
    let mut echoed = 0;
    for stream in &mut streams {
        let (opcode, payload) = read_short_frame(stream)?;
        echoed += usize::from(opcode == 1 && payload == b"churn");
    }
    let close = masked(OpCode::Close, &1000u16.to_be_bytes());
    for (index, mut stream) in streams.into_iter().enumerate() {
        if index % 2 == 0 {
            stream.write_all(&close)?;
            // The server's close reply, then its FIN.
            let _ = read_short_frame(&mut stream);
        } else {
            reset(stream);
        }
    }
    Ok(echoed)
}

/// `churn-rounds`: RSS after each round, once the server has settled.
pub(crate) fn churn_rounds(options: &Options, plan: &ChurnRounds) -> io::Result<()> {
    let pid = server_pid(options, "churn-rounds")?;
    let concurrent = connections_within_fd_limit(options, plan.concurrent).max(1);
    let before = rss(pid)?;
    let mut report = Report::new("churn-rounds");
    report.figure("server_rss_before", before, "MiB");
    let mut after_rounds = Vec::new();
    let mut peaks = Vec::new();
    let mut lost = 0;
    for round in 1..=plan.rounds {
        let started = Instant::now();
        let mut peak = 0f64;
        let mut done = 0;
        while done < plan.per_round {
            let count = concurrent.min(plan.per_round - done);
            lost += count - churn_batch(options, count)?;
            done += count;
            peak = peak.max(rss(pid)?);
        }
        let took = started.elapsed().as_secs_f64();
        let (after, _) = settle(pid, plan.settle, before, 0.0)?;
        eprintln!(
            "round {round}: {done} connections in {took:.1} s ({:.0}/s), RSS peak {peak:.1} MiB, {after:.1} MiB after {:.0} s",
            done as f64 / took,
            plan.settle.as_secs_f64()
        );
        peaks.push(peak);
        after_rounds.push(after);
    }
    let list = |values: &[f64]| {
        let values: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
        values.join(", ")
    };
    report
        .figure("server_rss_peak_per_round", list(&peaks), "MiB")
        .note(
            "server_rss_after_each_round",
            list(&after_rounds),
            "MiB",
            format!("{} s after the round", plan.settle.as_secs()),
        );
    if let [.., second_last, last] = after_rounds[..] {
        report.note(
            "growth_last_round",
            (last - second_last) * 1024.0,
            "KiB",
            "RSS after the last round minus after the one before",
        );
    }
    report.figure("echoes_lost", lost, "");
    report.print(options.format());
    Ok(())
}

/// `slowloris`: half-open handshakes held, then dropped.
pub(crate) fn slowloris(options: &Options, plan: &Slowloris) -> io::Result<()> {
    let pid = server_pid(options, "slowloris")?;
    let sockets = connections_within_fd_limit(options, plan.sockets);
    let before = rss(pid)?;
    let partial = format!("GET {} HTTP/1.1\r\nHost: x\r\nX-Slow: ", options.path);
    let mut streams = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let mut stream = TcpStream::connect(options.addr)?;
        stream.write_all(partial.as_bytes())?;
        streams.push(stream);
    }
    let held_from = Instant::now();
    thread::sleep(plan.hold.min(Duration::from_secs(1)));
    let during = rss(pid)?;
    // A client that behaves still gets in while the attack goes on.
    let handshake = Instant::now();
    let healthy = open_upgraded(options, &options.path, 1)?;
    let handshake = handshake.elapsed();
    drop(healthy);
    thread::sleep(plan.hold.saturating_sub(held_from.elapsed()));
    let open = streams
        .iter_mut()
        .map(still_open)
        .filter(|&open| open)
        .count();
    drop(streams);
    let (after, within) = settle(pid, plan.settle, before, RECOVERY_MARGIN_MIB)?;
    let mut report = Report::new("slowloris");
    report
        .figure("sockets", sockets, "")
        .note(
            "still_open_at_end",
            open,
            "",
            format!("held {:.1} s", plan.hold.as_secs_f64()),
        )
        .figure("server_rss_before", before, "MiB")
        .note(
            "server_rss_during",
            during,
            "MiB",
            format!(
                "{:.0} B per half-open socket",
                (during - before).max(0.0) * f64::from(1 << 20) / sockets.max(1) as f64
            ),
        )
        .figure("healthy_handshake", handshake.as_secs_f64() * 1e3, "ms");
    recovery_figures(&mut report, after, within, plan.settle, "the sockets");
    report.print(options.format());
    Ok(())
}

/// How close to its level before the attack the server's RSS must come.
const RECOVERY_MARGIN_MIB: f64 = 2.0;

/// The RSS `settle` after `what` closed, and when it first came back
/// within [`RECOVERY_MARGIN_MIB`] of the level before.
fn recovery_figures(
    report: &mut Report,
    after: f64,
    within: Option<f64>,
    settle: Duration,
    what: &str,
) {
    report
        .note(
            "server_rss_after",
            after,
            "MiB",
            format!("{:.0} s after {what} closed", settle.as_secs_f64()),
        )
        .note(
            "back_within_2_mib",
            within.map_or("no".to_string(), |s| format!("after {s:.1} s")),
            "",
            "of the level before",
        );
}

/// Whether the server has neither answered nor closed `stream`.
fn still_open(stream: &mut TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    matches!(stream.read(&mut [0u8; 64]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Reads whatever each socket has, without blocking; returns the bytes
/// read and whether any socket ended.
fn drain_all(streams: &mut [TcpStream], buf: &mut [u8]) -> (usize, usize) {
    let mut bytes = 0;
    let mut ended = 0;
    for stream in streams {
        loop {
            match stream.read(buf) {
                Ok(0) => {
                    ended += 1;
                    break;
                }
                Ok(n) => bytes += n,
                Err(_) => break,
            }
        }
    }
    (bytes, ended)
}

/// `stuck`: a stream to subscribers among which some never read.
pub(crate) fn stuck(options: &Options, plan: &Stuck) -> io::Result<()> {
    let pid = server_pid(options, "stuck")?;
    let separator = if options.path.contains('?') { '&' } else { '?' };
    let subscriber_path = format!("{}{separator}topic=herald-bench-stuck", options.path);
    let publisher_path = format!("{subscriber_path}&subscribe=0");
    let total = connections_within_fd_limit(options, plan.subscribers + 1) - 1;
    let stuck_count = plan.stuck.min(total);
    let before = rss(pid)?;
    let mut healthy = open_upgraded(options, &subscriber_path, total - stuck_count)?;
    let stuck = open_upgraded(options, &subscriber_path, stuck_count)?;
    let mut publisher = open_upgraded(options, &publisher_path, 1)?.remove(0);
    for stream in &healthy {
        stream.set_nonblocking(true)?;
    }
    let message = masked(OpCode::Text, &vec![b'm'; plan.payload]);
    let interval = Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1)));
    let started = Instant::now();
    let mut next = started;
    let mut sent = 0u64;
    let mut peak = before;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    let mut sampled = Instant::now();
    while started.elapsed() < plan.duration {
        while Instant::now() >= next {
            publisher.write_all(&message)?;
            sent += 1;
            next += interval;
        }
        received += drain_all(&mut healthy, &mut buf).0;
        if sampled.elapsed() >= Duration::from_millis(100) {
            peak = peak.max(rss(pid)?);
            sampled = Instant::now();
        }
        thread::sleep(Duration::from_micros(500));
    }
    // The healthy subscribers read the rest of the stream.
    let header = match plan.payload {
        0..126 => 2,
        126..65536 => 4,
        _ => 10,
    };
    let expected = sent as usize * (plan.payload + header) * healthy.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ended = 0;
    while received < expected && Instant::now() < deadline {
        let (bytes, gone) = drain_all(&mut healthy, &mut buf);
        received += bytes;
        ended += gone;
        thread::sleep(Duration::from_millis(1));
    }
    let during = rss(pid)?;
    drop(stuck);
    let (after, within) = settle(pid, plan.settle, before, RECOVERY_MARGIN_MIB)?;
    let mut report = Report::new("stuck");
    report
        .figure("subscribers", total, "")
        .figure("stuck", stuck_count, "")
        .note(
            "messages",
            sent,
            "",
            format!("{} B at {}/s", plan.payload, plan.rate),
        )
        .note(
            "healthy_missing_bytes",
            expected.saturating_sub(received),
            "B",
            format!("{ended} healthy sockets ended"),
        )
        .figure("server_rss_before", before, "MiB")
        .figure("server_rss_peak", peak, "MiB")
        .note(
            "server_rss_end_of_stream",
            during,
            "MiB",
            "stuck subscribers still connected, or closed by the policy",
        );
    recovery_figures(&mut report, after, within, plan.settle, "the stuck sockets");
    report.print(options.format());
    drop(publisher);
    Ok(())
}
