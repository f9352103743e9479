//! Opening the scenarios' connections: how many the descriptor limit
//! allows, which node each goes to, and their handshakes.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use herald_bench::{
    client::{Client, Stage, drive},
    proc_stats::raise_fd_limit,
    progress,
};
use indicatif::ProgressBar;
use mio::{Poll, Token};

use crate::cli::options::Options;

/// Clamps a connection count to what this process's descriptor limit
/// allows, saying so.
pub(crate) fn connections_within_fd_limit(options: &Options, wanted: usize) -> usize {
    let limit = raise_fd_limit();
    let mut usable = limit.saturating_sub(32) as usize;
    if options.embedded {
        // Both ends of every connection live in this process.
        usable /= 2;
    }
    if wanted > usable {
        eprintln!(
            "note: the file-descriptor limit here is {limit}; running {usable} connections instead of {wanted}"
        );
        return usable;
    }
    wanted
}

/// Opens `count` connections, at most `concurrency` handshakes at a time.
/// Returns the open clients and how long opening them took.
pub(crate) fn open_connections(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
) -> io::Result<(Vec<Client>, Duration)> {
    open_connections_to(options, poll, count, concurrency, &|_| options.path.clone())
}

/// The node connection `index` of `count` goes to: round-robin over
/// `--addr` and `--also`, except the last (a publisher, where a scenario
/// has one), which goes to `--addr`.
fn node_addr(options: &Options, index: usize, count: usize) -> SocketAddr {
    let nodes = 1 + options.also.len();
    if index + 1 == count || index.is_multiple_of(nodes) {
        options.addr
    } else {
        options.also[index % nodes - 1]
    }
}

/// As [`open_connections`], with a path per connection index.
pub(crate) fn open_connections_to(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
    path_of: &dyn Fn(usize) -> String,
) -> io::Result<(Vec<Client>, Duration)> {
    let progress = progress::connecting(count, !options.json);
    let opened = open_connections_with(options, poll, count, concurrency, path_of, &progress);
    progress.finish_and_clear();
    opened
}

/// As [`open_connections_to`], advancing a progress bar shared with other
/// threads.
pub(crate) fn open_connections_with(
    options: &Options,
    poll: &mut Poll,
    count: usize,
    concurrency: usize,
    path_of: &dyn Fn(usize) -> String,
    progress: &ProgressBar,
) -> io::Result<(Vec<Client>, Duration)> {
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    let (mut open, mut in_flight, mut reported) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while open < count {
        while in_flight < concurrency && clients.len() < count {
            let token = Token(clients.len());
            let addr = node_addr(options, clients.len(), count);
            clients.push(Client::connect(poll.registry(), addr, token)?);
            in_flight += 1;
        }
        let mut failure = None;
        drive(poll, Instant::now() + Duration::from_millis(100), |token| {
            let client = &mut clients[token.0];
            let before = client.stage;
            if let Err(err) = client.on_ready(&path_of(token.0), |_, _| {}) {
                failure = Some(err);
            }
            if before != Stage::Open && client.stage == Stage::Open {
                open += 1;
                in_flight -= 1;
            }
            // Back to the caller to start more once the window has room.
            in_flight == concurrency
        })?;
        progress.inc((open - reported) as u64);
        reported = open;
        if let Some(err) = failure {
            return Err(io::Error::other(format!("connection {open} failed: {err}")));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "only {open} of {count} connections opened in 120 s"
            )));
        }
    }
    Ok((clients, start.elapsed()))
}
