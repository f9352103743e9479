//! The `connect` and `idle` scenarios: handshakes per second, and the
//! server's memory per idle connection.

use std::{io, time::Duration};

use herald_bench::{client::Client, proc_stats::ProcessSample, report::Report};
use mio::Poll;

use super::{
    connections::{connections_within_fd_limit, open_connections},
    mib,
};
use crate::cli::options::Options;

/// Handshakes per second: opens `connections`, at most `concurrency` at
/// once, and returns them open.
pub(crate) fn connect(
    options: &Options,
    connections: usize,
    concurrency: usize,
) -> io::Result<Vec<Client>> {
    let connections = connections_within_fd_limit(options, connections);
    let mut poll = Poll::new()?;
    let server_before = options.server_sample()?;
    let (clients, took) = open_connections(options, &mut poll, connections, concurrency)?;
    let mut report = Report::new("connect");
    report
        .note(
            "connections",
            connections,
            "",
            format!("at most {concurrency} connecting at once"),
        )
        .note(
            "handshakes",
            connections as f64 / took.as_secs_f64(),
            "/s",
            format!("{connections} in {:.2} s", took.as_secs_f64()),
        );
    if let (Some(now), Some(before)) = (options.server_sample()?, server_before) {
        let server_cpu = now.cpu_since(&before);
        report
            .figure("server_cpu", server_cpu.as_secs_f64(), "s")
            .figure(
                "server_cpu_per_connection",
                server_cpu.as_secs_f64() * 1e6 / connections as f64,
                "µs",
            );
    }
    report.print(options.format());
    Ok(clients)
}

/// The server's memory per idle connection (needs `--server-pid`).
pub(crate) fn idle(options: &Options, connections: usize, concurrency: usize) -> io::Result<()> {
    let Some(pid) = options.server_pid else {
        return Err(io::Error::other(
            "idle needs --server-pid to read the server's memory",
        ));
    };
    let before = ProcessSample::read(pid)?;
    let clients = connect(options, connections, concurrency)?;
    // Let the server finish flushing its 101 responses.
    std::thread::sleep(Duration::from_millis(500));
    let after = ProcessSample::read(pid)?;
    let grown = after.rss_bytes.saturating_sub(before.rss_bytes);
    let mut report = Report::new("idle");
    report
        .figure("connections", clients.len(), "")
        .figure("server_rss_before", mib(before.rss_bytes), "MiB")
        .figure("server_rss_after", mib(after.rss_bytes), "MiB")
        .note(
            "rss_per_connection",
            grown as f64 / clients.len() as f64,
            "B",
            "user-space RSS",
        );
    report.print(options.format());
    Ok(())
}
